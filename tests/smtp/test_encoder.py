"""The body encoder: a server reassembles exactly the normalised message, for any chunking."""

from __future__ import annotations

import array
import email.message
import fcntl
import io
import itertools
import os
import pathlib
import tracemalloc
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pysendmail.smtp.encoder import BodyEncoder, MessageSource, normalise


def encode(chunks: list[bytes]) -> tuple[bytes, BodyEncoder]:
    enc = BodyEncoder()
    wire = b"".join(enc.feed(c) for c in chunks) + enc.finish() + b".\r\n"
    return wire, enc


def server_reassemble(wire: bytes) -> bytes:
    """What an RFC 5321 server stores: CRLF lines up to the lone ".", one leading dot stripped."""
    lines = []
    pos = 0
    while True:
        end = wire.index(b"\r\n", pos)
        line = wire[pos:end]
        pos = end + 2
        assert b"\r" not in line and b"\n" not in line, f"bare CR or LF in line {line!r}"
        if line == b".":
            assert pos == len(wire), "data after the terminator line"
            break
        if line.startswith(b"."):
            line = line[1:]
        lines.append(line + b"\r\n")
    return b"".join(lines)


def assert_wire_ok(chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    wire, enc = encode(chunks)
    expected = normalise(data)
    assert server_reassemble(wire) == expected
    # No line other than the terminator is a lone "." (it would end the data early).
    assert wire.split(b"\r\n")[:-2].count(b".") == 0
    assert enc.size == len(expected)
    assert enc.eightbit == any(b >= 0x80 for b in data)


def split_at(data: bytes, points: list[int]) -> list[bytes]:
    cuts = sorted({min(max(p, 0), len(data)) for p in points})
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# Pieces that make the hard cases likely: CR, LF, CRLF, dots at line starts, 8-bit bytes.
_piece = st.sampled_from(
    [b"\r", b"\n", b"\r\n", b".", b"..", b"\n.", b"\r\n.", b"\r.", b"a", b"xy", b"\xff", b"\x00"]
)
_tricky = st.lists(_piece, max_size=40).map(b"".join)
_data = st.one_of(_tricky, st.binary(max_size=300))


@st.composite
def chunked(draw: st.DrawFn) -> list[bytes]:
    data = draw(_data)
    points = draw(st.lists(st.integers(0, len(data)), max_size=12))
    return split_at(data, points)


@given(chunked())
def test_any_chunking_reassembles_to_the_normalised_message(chunks: list[bytes]) -> None:
    assert_wire_ok(chunks)


@given(chunked())
def test_empty_chunks_change_nothing(chunks: list[bytes]) -> None:
    with_empties = [piece for c in chunks for piece in (b"", c, b"")]
    assert encode(with_empties)[0] == encode(chunks)[0]


@pytest.mark.parametrize(
    "data",
    [
        b"a\r\n.b\r\n.\r\n",
        b"\r\r\n\n.\r.\n..",
        b".\r\n.\n.\r.",
        b"x\r\n\r\n.\r\n\r\n",
    ],
)
def test_every_two_and_three_way_split(data: bytes) -> None:
    # Explicitly cut between every pair of bytes: CRLF split, "\n." split, "\r." split.
    for i in range(len(data) + 1):
        assert_wire_ok(split_at(data, [i]))
        for j in range(i, len(data) + 1):
            assert_wire_ok(split_at(data, [i, j]))


def test_byte_at_a_time() -> None:
    data = b".a\r\n.\r\n\r.\n.\r\r\n..\n"
    assert_wire_ok([bytes([b]) for b in data])


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        (b"a\nb", b"a\r\nb\r\n"),
        (b".\n", b"..\r\n"),
        (b"\r", b"\r\n"),
        (b"\r\r\n", b"\r\n\r\n"),
        (b"", b""),
        (b"a\r\n", b"a\r\n"),
        (b".", b"..\r\n"),
        (b"a\n.\nb", b"a\r\n..\r\nb\r\n"),
        (b"a\r.b", b"a\r\n..b\r\n"),
        (b"x\n\r", b"x\r\n\r\n"),
    ],
)
def test_exact_examples(data: bytes, wire: bytes) -> None:
    enc = BodyEncoder()
    assert enc.feed(data) + enc.finish() == wire
    assert normalise(data) == wire.replace(b"\r\n.", b"\r\n").removeprefix(b".")


def test_crlf_split_across_feeds_is_one_line_end() -> None:
    enc = BodyEncoder()
    assert enc.feed(b"line one\r") == b"line one"
    assert enc.feed(b"\n.dot") == b"\r\n..dot"
    assert enc.finish() == b"\r\n"
    assert enc.size == len(b"line one\r\n.dot\r\n")


def test_dot_at_start_of_a_chunk_after_a_line_end() -> None:
    enc = BodyEncoder()
    assert enc.feed(b"a\n") == b"a\r\n"
    assert enc.feed(b".b\n") == b"..b\r\n"
    assert enc.feed(b".") == b".."
    assert enc.finish() == b"\r\n"


def test_size_and_eightbit_are_counted_before_dot_stuffing() -> None:
    enc = BodyEncoder()
    enc.feed(b".\n..\n\xc3\xa9")
    assert enc.eightbit
    assert enc.finish() == b"\r\n"
    assert enc.size == len(b".\r\n..\r\n\xc3\xa9\r\n")


def test_feed_accepts_bytearray_and_memoryview() -> None:
    enc = BodyEncoder()
    assert enc.feed(bytearray(b"a\n")) + enc.feed(memoryview(b".b")) + enc.finish() == (
        b"a\r\n..b\r\n"
    )


def test_finish_twice_and_feed_after_finish() -> None:
    enc = BodyEncoder()
    enc.feed(b"a")
    assert enc.finish() == b"\r\n"
    assert enc.finish() == b""
    with pytest.raises(ValueError, match="after finish"):
        enc.feed(b"more")


def test_normalise_accepts_bytes_like() -> None:
    assert normalise(bytearray(b"a\rb")) == b"a\r\nb\r\n"
    assert normalise(memoryview(b"a\n")) == b"a\r\n"


# --------------------------------------------------------------------------- MessageSource


def collect(src: MessageSource) -> bytes:
    return b"".join(src.chunks())


@pytest.mark.parametrize(
    ("msg", "raw"),
    [
        ("Subject: é\n\nbody", "Subject: é\n\nbody".encode()),
        (b"a\r\nb", b"a\r\nb"),
        (bytearray(b"x\n.\n"), b"x\n.\n"),
        (memoryview(b"\xffz\r"), b"\xffz\r"),
        (b"", b""),
        ("", b""),
    ],
)
def test_in_memory_sources_know_size_and_eightbit(msg: str | bytes, raw: bytes) -> None:
    src = MessageSource.of(msg)
    assert src.size == len(normalise(raw))
    assert src.eightbit == (not raw.isascii())
    assert collect(src) == raw


def test_memoryview_of_wider_items_is_sent_as_its_bytes() -> None:
    arr = array.array("I", [0x0A0D4142, 0x80])
    src = MessageSource.of(memoryview(arr), chunk_size=3)
    assert collect(src) == arr.tobytes()
    assert src.size == len(normalise(arr.tobytes()))
    assert src.eightbit is True


@given(_data, st.integers(1, 17))
def test_measured_size_matches_normalise_for_any_chunk_size(data: bytes, chunk_size: int) -> None:
    expected = len(normalise(data))
    for msg in (data, bytearray(data), memoryview(data), io.BytesIO(data)):
        src = MessageSource.of(msg, chunk_size=chunk_size)
        assert src.size == expected
        assert src.eightbit == (not data.isascii())
        chunks = list(src.chunks())
        assert b"".join(chunks) == data
        assert all(0 < len(c) <= chunk_size for c in chunks)


def test_regular_file_is_measured_then_streamed_from_where_it_was(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "msg.eml"
    # The CRLF at offset 9..10 straddles the 10-octet chunk boundary of the measuring pass.
    content = b"SKIP|head\r\nline\nline\r\xe9\r\n.dot"
    path.write_bytes(content)
    with path.open("rb") as f:
        f.read(5)
        src = MessageSource.of(f, chunk_size=6)
        assert f.tell() == 5
        rest = content[5:]
        assert src.size == len(normalise(rest))
        assert src.eightbit is True
        chunks = list(src.chunks())
    assert b"".join(chunks) == rest
    assert max(map(len, chunks)) <= 6


def test_unbuffered_regular_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "msg.eml"
    path.write_bytes(b"a\nb")
    with path.open("rb", buffering=0) as f:
        src = MessageSource.of(f)
        assert src.size == 6
        assert collect(src) == b"a\nb"


def test_text_file_is_encoded_utf8(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "msg.txt"
    path.write_text("Subject: ünïcode\n\n" + "é" * 50, encoding="utf-8")
    with path.open(encoding="utf-8") as f:
        src = MessageSource.of(f, chunk_size=16)
        expected = ("Subject: ünïcode\n\n" + "é" * 50).encode()
        assert src.size == len(normalise(expected))
        assert src.eightbit is True
        chunks = list(src.chunks())
    assert b"".join(chunks) == expected
    assert max(map(len, chunks)) <= 16


def test_pipe_has_unknown_size() -> None:
    r, w = os.pipe()
    os.write(w, b"From: a\n\nbody\xff\n")
    os.close(w)
    with os.fdopen(r, "rb") as f:
        src = MessageSource.of(f)
        assert src.size is None
        assert src.eightbit is None
        assert collect(src) == b"From: a\n\nbody\xff\n"


def test_nonblocking_pipe_without_data_is_an_error_not_an_empty_message() -> None:
    r, w = os.pipe()
    try:
        fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_NONBLOCK)
        with os.fdopen(r, "rb") as f, pytest.raises(ValueError, match="non-blocking"):
            collect(MessageSource.of(f))
    finally:
        os.close(w)


class Reader:
    """A file-like object with read() alone, as some socket and HTTP wrappers are."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def read(self, n: int) -> bytes:
        return self._buf.read(n)


class TellFails(io.BytesIO):
    def tell(self) -> int:
        raise OSError("illegal seek")


@pytest.mark.parametrize("fobj", [Reader(b"a\nb"), TellFails(b"a\nb")])
def test_file_likes_that_cannot_be_measured_are_streamed(fobj: Reader | io.BytesIO) -> None:
    src = MessageSource.of(fobj)
    assert src.size is None
    assert collect(src) == b"a\nb"


def test_non_contiguous_memoryview_of_wide_items_is_refused() -> None:
    with pytest.raises(TypeError, match="contiguous"):
        MessageSource.of(memoryview(array.array("I", [1, 2, 3, 4]))[::2])


def test_endless_device_is_not_measured() -> None:
    # /dev/zero claims to be seekable; measuring it would never end.
    with open("/dev/zero", "rb") as f:
        src = MessageSource.of(f, chunk_size=1000)
        assert src.size is None
        assert next(src.chunks()) == b"\0" * 1000


def test_generator_has_unknown_size_and_bounded_chunks() -> None:
    def gen() -> Iterator[bytes | bytearray | memoryview | str]:
        yield b"a" * 2500
        yield "é\n"
        yield b""
        yield bytearray(b"e")
        yield memoryview(b"nd")

    src = MessageSource.of(gen(), chunk_size=1000)
    assert src.size is None
    assert src.eightbit is None
    chunks = list(src.chunks())
    assert b"".join(chunks) == b"a" * 2500 + "é\n".encode() + b"end"
    assert [len(c) for c in chunks] == [1000, 1000, 500, 3, 1, 2]


def test_iterable_with_a_wrong_item_type() -> None:
    src = MessageSource.of([b"ok", 42])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="gave int"):
        collect(src)


@pytest.mark.parametrize(
    ("msg", "hint"),
    [
        (42, "got int"),
        (None, "got NoneType"),
        (email.message.Message(), "as_bytes"),
        (pathlib.Path("/etc/hosts"), "open the file"),
    ],
)
def test_unsupported_types_are_refused_with_a_hint(msg: object, hint: str) -> None:
    with pytest.raises(TypeError, match=hint):
        MessageSource.of(msg)  # type: ignore[arg-type]


def test_unencodable_str_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        MessageSource.of("bad \udcff surrogate")


@pytest.mark.parametrize("size", [0, -1, True])
def test_chunk_size_must_be_positive(size: int) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        MessageSource.of(b"x", chunk_size=size)


def test_chunks_usable_once_and_source_passes_through() -> None:
    src = MessageSource.of(b"x")
    assert MessageSource.of(src) is src
    assert collect(src) == b"x"
    with pytest.raises(RuntimeError, match="only once"):
        src.chunks()
    assert repr(src) == "<MessageSource size=3 eightbit=False>"


def test_large_file_streams_in_memory_of_the_chunk_size(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "big.eml"
    line = b"." + b"x" * 70 + b"\n"
    with path.open("wb") as f:
        for _ in range(8):
            f.write(line * 15000)  # about 1 MB per write, 8.6 MB in all
    total = 0
    tracemalloc.start()
    try:
        with path.open("rb") as f:
            src = MessageSource.of(f)
            enc = BodyEncoder()
            for chunk in src.chunks():
                total += len(enc.feed(chunk))
            total += len(enc.finish())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    lines = 8 * 15000
    assert src.size == lines * (len(line) + 1)
    assert total == lines * (len(line) + 2)  # CRLF and a stuffed dot on every line
    assert peak < 1_000_000
