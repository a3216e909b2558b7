"""The DATA reader: the lone dot, dot-unstuffing, the size limit, and nothing read past the end."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pysendmail.server import listener
from pysendmail.server.listener import SMTPSession, Spool


def reference(stream: bytes, limit: int) -> tuple[str, bytes, bytes]:
    """What RFC 5321 4.5.2 says, on the whole stream: (outcome, data, what follows the dot)."""
    virtual = b"\r\n" + stream  # the data begins at the start of a line
    end = virtual.find(b"\r\n.\r\n")
    if end < 0:
        return "eof", b"", b""
    content = virtual[: end + 2]  # the leading CRLF, the lines, the CRLF before the dot
    data = content.replace(b"\r\n.", b"\r\n")[2:]
    rest = virtual[end + 5 :]
    if limit and len(data) > limit:
        return "too big", b"", rest
    return "ok", data, rest


class _Session:
    def __init__(self, reader: asyncio.StreamReader, limit: int) -> None:
        self._reader = reader
        self.data_size_limit = limit


async def _run(
    stream: bytes, cuts: list[int], limit: int, spool_dir: str
) -> tuple[str, bytes, bytes]:
    reader = asyncio.StreamReader(limit=listener.READ_LIMIT)

    async def feed() -> None:
        last = 0
        for cut in sorted(c % (len(stream) + 1) for c in cuts):
            reader.feed_data(stream[last:cut])
            last = cut
            await asyncio.sleep(0)
        reader.feed_data(stream[last:])
        reader.feed_eof()

    feeder = asyncio.ensure_future(feed())
    spool = Spool(spool_dir)
    outcome = await SMTPSession._receive(_Session(reader, limit), spool)  # type: ignore[arg-type]
    await feeder
    data = spool.memory() or b"" if outcome == "ok" else b""
    spool.close()
    rest = await reader.read() if outcome != "eof" else b""
    return outcome, data, rest


TOKENS = [b"a", b"bc", b".", b"..", b"\r", b"\n", b"\r\n", b".\r\n", b"\r\n.\r\n", b"\r\n..", b" "]


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    parts=st.lists(st.sampled_from(TOKENS), max_size=60),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    limit=st.sampled_from([0, 0, 5, 20]),
    small=st.booleans(),
)
def test_the_reader_does_what_the_rfc_says(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    parts: list[bytes],
    cuts: list[int],
    limit: int,
    small: bool,
) -> None:
    # A small reader limit sends long lines through the piece-by-piece path.
    monkeypatch.setattr(listener, "READ_LIMIT", 8 if small else 65536)
    stream = b"".join(parts)
    got = asyncio.run(_run(stream, cuts, limit, str(tmp_path)))
    assert got == reference(stream, limit)


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b".\r\n", ("ok", b"", b"")),
        (b"hello\r\n.\r\nQUIT\r\n", ("ok", b"hello\r\n", b"QUIT\r\n")),
        (b"..\r\n.\r\n", ("ok", b".\r\n", b"")),
        (b"a\n.\nb\r\n.\r\n", ("ok", b"a\n.\nb\r\n", b"")),  # bare LF ends nothing
        (b"a\r\n.\nb\r\n.\r\n", ("ok", b"a\r\n\nb\r\n", b"")),  # a dot line, unstuffed
        (b"end.\r\n.\r\n", ("ok", b"end.\r\n", b"")),
        (b"no end\r\n", ("eof", b"", b"")),
    ],
)
def test_known_streams(tmp_path: Path, stream: bytes, expected: tuple[str, bytes, bytes]) -> None:
    assert asyncio.run(_run(stream, [1, 3, 7], 0, str(tmp_path))) == expected
    assert reference(stream, 0) == expected


def test_a_line_longer_than_the_reader_limit_keeps_its_bytes(tmp_path: Path) -> None:
    line = b"x" * (3 * listener.READ_LIMIT + 5) + b"\r"
    stream = line + b"\n.\r\n"
    assert asyncio.run(_run(stream, [1000, 70000], 0, str(tmp_path))) == (
        "ok",
        line + b"\n",
        b"",
    )
