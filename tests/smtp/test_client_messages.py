"""Message bodies end to end: any bytes arrive as the normalised message; big ones stream."""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pysendmail.smtp import SMTP
from pysendmail.smtp.encoder import BodyEncoder, normalise
from tests.support.smtpd import Peer, RecordingServer, ScriptedServer

ScriptedFactory = Callable[..., ScriptedServer]


@pytest.fixture(scope="module")
def shared_server() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


@pytest.fixture(scope="module")
def shared_session(shared_server: RecordingServer) -> Iterator[SMTP]:
    with SMTP.start(shared_server.host, shared_server.port, read_timeout=10) as smtp:
        yield smtp


# Pieces that stress line ends and dot-stuffing, mixed with arbitrary bytes.
PIECES = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [
            b"\r",
            b"\n",
            b"\r\n",
            b".",
            b"..",
            b"\r\n.",
            b"\n.\n",
            b".\r\n",
            b"\r\r\n",
            b"\xff",
            b"\0",
        ]
    ),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    pieces=st.lists(PIECES, max_size=25),
    form=st.sampled_from(["bytes", "chunks", "file", "stream"]),
)
def test_any_bytes_arrive_as_the_normalised_message(
    shared_server: RecordingServer, shared_session: SMTP, pieces: list[bytes], form: str
) -> None:
    message = b"".join(pieces)
    before = len(shared_server.envelopes)
    if form == "bytes":
        shared_session.send_message(message, "a@b.test", "c@d.test")
    elif form == "chunks":
        # The split points are the pieces': a CRLF may well be cut in two.
        shared_session.send_message(iter(pieces), "a@b.test", "c@d.test")
    elif form == "file":
        shared_session.send_message(io.BytesIO(message), "a@b.test", "c@d.test")
    else:
        with shared_session.open_message_stream("a@b.test", "c@d.test") as f:
            for piece in pieces:
                f.write(piece)
    assert len(shared_server.envelopes) == before + 1
    assert shared_server.envelopes[-1].data == normalise(message)


def big_message(path: Path, megabytes: int) -> bytes:
    """A message with every kind of line end and leading dots, written to ``path``."""
    line = b"x" * 70
    block = b"".join(
        [b"Subject: big\n\n", line + b"\n", b"." + line + b"\r\n", line + b"\r", b"..\n"] * 200
    )
    with path.open("wb") as f:
        written = 0
        while written < megabytes * 1024 * 1024:
            f.write(block)
            written += len(block)
    return path.read_bytes()


def test_a_5_mb_file_arrives_intact(
    smtpd_factory: Callable[..., RecordingServer], tmp_path: Path
) -> None:
    smtpd = smtpd_factory(size=32 * 1024 * 1024)
    path = tmp_path / "big.eml"
    content = big_message(path, 5)
    with SMTP.start(smtpd.host, smtpd.port) as smtp, path.open("rb") as f:
        result = smtp.send_message(f, "a@b.test", "c@d.test")
    assert result.response.code == 250
    expected = normalise(content)
    assert smtpd.commands[1] == f"MAIL FROM:<a@b.test> SIZE={len(expected)}"
    received = smtpd.envelopes[0].data
    assert len(received) == len(expected)
    assert hashlib.sha256(received).digest() == hashlib.sha256(expected).digest()


def test_a_big_file_is_streamed_not_loaded(
    scripted_server: ScriptedFactory, tmp_path: Path
) -> None:
    path = tmp_path / "big.eml"
    content = big_message(path, 5)
    encoder = BodyEncoder()
    wire = encoder.feed(content) + encoder.finish()
    measured: list[tuple[int, str]] = []

    def script(peer: Peer) -> None:
        peer.handshake("PIPELINING", "SIZE 100000000")
        peer.recv_until(b"DATA\r\n")
        peer.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
        measured.append(peer.discard_data())
        peer.send(b"250 ok\r\n")
        peer.reply(b"QUIT", b"221 bye\r\n")

    server = scripted_server(script)
    smtp = SMTP.start(server.host, server.port)
    del content
    tracemalloc.start()
    try:
        with path.open("rb") as f:
            smtp.send_message(f, "a@b.test", "c@d.test")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    smtp.finish()
    server.wait()
    assert measured == [(len(wire), hashlib.sha256(wire).hexdigest())]
    # 5 MiB went through; memory stayed at the size of a few 64 KiB chunks.
    assert peak < 1024 * 1024, peak
    assert os.path.getsize(path) > 5 * 1024 * 1024
