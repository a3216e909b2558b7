"""Running the intake in tests: fixed options, in-memory files, sources that trickle."""

import io
import re
from typing import Any

from pysendmail.message.envelope import Envelope
from pysendmail.message.intake import IntakeOptions, receive

#: 2026-11-29 20:02:49 UTC, so that added Date headers are predictable.
NOW = 1795982569.0
QUEUE_ID = "TESTQUEUEID0001"
LOCAL = {"vm", "vm.example.com", "localhost"}


def options(**kw: Any) -> IntakeOptions:
    base: dict[str, Any] = {
        "domain": "example.com",
        "hostname": "vm.example.com",
        "local_hostnames": LOCAL,
        "uid": 0,
        "queue_id": QUEUE_ID,
        "now": NOW,
    }
    base.update(kw)
    return IntakeOptions(**base)


class Trickle:
    """A source that hands out the data in pieces of the given sizes (cycled), like a pipe."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data = data
        self.pos = 0
        self.sizes = [s for s in sizes if s > 0] or [1]
        self.calls = 0

    def read(self, n: int = -1) -> bytes:
        size = self.sizes[self.calls % len(self.sizes)]
        self.calls += 1
        if n is not None and n >= 0:
            size = min(size, n)
        piece = self.data[self.pos : self.pos + size]
        self.pos += len(piece)
        return piece


class Result:
    """What one intake run produced: the envelope, the prelude and the message part."""

    def __init__(self, envelope: Envelope, raw: bytes) -> None:
        self.envelope = envelope
        self.raw = raw
        self.prelude = raw[: envelope.message_offset]
        self.message = raw[envelope.message_offset :]
        head, sep, self.body = self.message.partition(b"\r\n\r\n")
        assert sep, "no blank line after the headers"
        self.header_lines = head.split(b"\r\n")

    @property
    def recipients(self) -> list[str]:
        return [r.address for r in self.envelope.recipients]

    def field(self, name: str) -> bytes | None:
        """The first line of the first field called ``name``, or None."""
        for line in self.header_lines:
            if line[:1] in (b" ", b"\t"):
                continue
            if line.split(b":", 1)[0].lower() == name.lower().encode():
                return line
        return None


def run(data: bytes | Trickle, **kw: Any) -> Result:
    src = data if isinstance(data, Trickle) else io.BytesIO(data)
    out = io.BytesIO()
    env = receive(src, out, options(**kw))  # type: ignore[arg-type]
    raw = out.getvalue()
    # Whatever the intake returns is exactly what the prelude says.
    again = Envelope.from_file(io.BytesIO(raw))
    assert again == env
    assert env.size == len(raw) - env.message_offset
    return Result(env, raw)


def reference_lf(data: bytes, dot_ends_input: bool) -> bytes:
    """What the intake should make of a stream, in LF form: an independent implementation."""
    text = re.sub(rb"\r\n|\r", b"\n", data)
    if dot_ends_input:
        lines = text.split(b"\n")
        if b"." in lines:
            cut = lines.index(b".")
            text = b"".join(line + b"\n" for line in lines[:cut])
    return text


def crlf(text: bytes) -> bytes:
    """LF text as the spool holds it: CRLF, with a line end after a last unterminated line."""
    out = text.replace(b"\n", b"\r\n")
    if out and not out.endswith(b"\r\n"):
        out += b"\r\n"
    return out
