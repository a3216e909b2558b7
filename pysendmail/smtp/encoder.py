"""The message body on its way to DATA: line endings, dot-stuffing, and the sources it comes from.

SMTP carries a message as CRLF-terminated lines ended by a line holding a lone
".", so every message is changed in exactly two ways before it goes on the
wire (RFC 5321 sections 2.3.8 and 4.5.2):

* newline normalisation: a bare CR and a bare LF each become CRLF, CRLF stays
  as it is, and a non-empty message that does not end with a line end gets one;
* dot-stuffing: a line that starts with "." gets a second "." in front, so the
  server cannot mistake it for the end of the data and strips it again.

``BodyEncoder`` does both, incrementally, for any chunking of the input: a CRLF
split across two chunks stays one line end, and a "." at the start of a chunk
that follows a line end is stuffed. It works on whole chunks with ``bytes``
methods, because this runs over 100 MB messages and thousands of small ones a
second, where a Python loop over bytes would be the bottleneck.

``MessageSource`` turns whatever the caller hands to ``send_message`` into raw
byte chunks and, where it can be known before sending, the normalised size
(what MAIL FROM declares as SIZE=) and whether the body has 8-bit bytes.

This module must never read a file or an iterable whole into memory: memory
stays proportional to the chunk size, whatever the size of the message. It
does no I/O beyond reading the caller's file object, and imports only the
standard library.
"""

# No ``typing``, no ``collections.abc`` and no ``from __future__`` at run time
# (this is on the path of every ``sendmail`` that relays directly), and ``os``
# only for file objects. Annotations naming typing-only things are quoted.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import IO, Any, Protocol, TypeAlias

    class SupportsRead(Protocol):
        """A file-like object: ``read(size)`` gives bytes (or str), b"" at the end."""

        def read(self, size: int, /) -> bytes | str | None: ...

    #: Everything ``MessageSource.of`` accepts.
    MessageInput: TypeAlias = (
        str
        | bytes
        | bytearray
        | memoryview
        | IO[bytes]
        | IO[str]
        | SupportsRead
        | Iterable[bytes | bytearray | memoryview | str]
        | "MessageSource"
    )

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "BodyEncoder",
    "MessageSource",
    "encode_text",
    "message_size",
    "normalise",
]

DEFAULT_CHUNK_SIZE = 65536

_CR = b"\r"
_LF = b"\n"
_CRLF = b"\r\n"


def _normalise_chunk(data: bytes) -> bytes:
    """Bare CR and bare LF to CRLF in one chunk; a CR at its very end counts as bare."""
    if _CR not in data:
        # LF-only text (the Unix case) needs one pass.
        return data.replace(_LF, _CRLF)
    n_crlf = data.count(_CRLF)
    if data.count(_CR) == n_crlf and data.count(_LF) == n_crlf:
        # Every CR is followed by LF and every LF preceded by CR: already on the
        # wire form, and counting is cheaper than copying three times.
        return data
    return data.replace(_CRLF, _LF).replace(_CR, _LF).replace(_LF, _CRLF)


def _normalised_length(data: bytes | bytearray) -> int:
    """The length of ``_normalise_chunk(data)`` without building it (no final CRLF added)."""
    # A CRLF stays two octets; a bare CR or bare LF grows by one.
    if _CR not in data:
        return len(data) + data.count(_LF)
    n_crlf = data.count(_CRLF)
    return len(data) + data.count(_CR) + data.count(_LF) - 2 * n_crlf


def message_size(data: bytes | bytearray) -> int:
    """The size SIZE= declares for a whole message: normalised, final CRLF included."""
    size = _normalised_length(data)
    if data and data[-1] not in (0x0A, 0x0D):
        size += 2
    return size


def normalise(data: bytes | bytearray | memoryview) -> bytes:
    """The whole message with every line end as CRLF and a final CRLF (no dot-stuffing).

    ``b""`` stays ``b""``: an empty message has no line to end.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    if not data:
        return b""
    out = _normalise_chunk(data)
    if not out.endswith(_LF):
        out += _CRLF
    return out


class BodyEncoder:
    """Incremental CRLF normalisation + dot-stuffing of a message for DATA.

    ``feed`` each chunk and send what it returns, then send what ``finish``
    returns, then the ``.\\r\\n`` terminator (the client adds that). ``size``
    counts the octets after normalisation and before dot-stuffing, the number
    that SIZE= declares; ``eightbit`` says whether any byte was >= 0x80.
    """

    __slots__ = ("_at_line_start", "_finished", "_held_cr", "_started", "eightbit", "size")

    def __init__(self) -> None:
        self.size = 0
        self.eightbit = False
        # The output so far ends with CRLF, or nothing was sent yet: a "." that
        # comes next starts a line and must be stuffed.
        self._at_line_start = True
        # A chunk ended with CR: it may be the first half of a CRLF whose LF is
        # in the next chunk, so it is sent only once that chunk is known.
        self._held_cr = False
        self._started = False
        self._finished = False

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        """The wire bytes for this chunk.

        A trailing CR is held back until the next chunk or finish() shows
        whether it is half of a CRLF.
        """
        if self._finished:
            raise ValueError("BodyEncoder.feed() called after finish()")
        if not isinstance(data, bytes):
            data = bytes(data)
        if not data:
            return b""
        self._started = True
        if not self.eightbit and not data.isascii():
            self.eightbit = True
        if self._held_cr:
            data = _CR + data
            self._held_cr = False
        if data.endswith(_CR):
            self._held_cr = True
            data = data[:-1]
            if not data:
                return b""
        out = _normalise_chunk(data)
        self.size += len(out)
        if self._at_line_start and out.startswith(b"."):
            out = b"." + out
        out = out.replace(b"\r\n.", b"\r\n..")
        self._at_line_start = out.endswith(_LF)
        return out

    def finish(self) -> bytes:
        """The held-back CR and a final CRLF where needed; ``b""`` for an empty message.

        Calling it again returns ``b""``; the ".\\r\\n" terminator is not included.
        """
        if self._finished:
            return b""
        self._finished = True
        if self._held_cr or (self._started and not self._at_line_start):
            # A held CR is a bare CR at the very end: it becomes the final CRLF.
            self._held_cr = False
            self._at_line_start = True
            self.size += 2
            return _CRLF
        return b""


# --------------------------------------------------------------------------- sources


class _Meter:
    """Counts the normalised size and 8-bit bytes of a message fed in chunks, keeping nothing."""

    __slots__ = ("eightbit", "last", "size")

    def __init__(self) -> None:
        self.size = 0
        self.eightbit = False
        self.last = -1  # the last byte seen, -1 before any

    def feed(self, chunk: bytes) -> None:
        # Chunks are never empty: _split and the view slicing yield none.
        self.size += _normalised_length(chunk)
        if self.last == 0x0D and chunk[0] == 0x0A:
            # A CRLF split across chunks was counted as a bare CR and a bare LF.
            self.size -= 2
        self.last = chunk[-1]
        if not self.eightbit and not chunk.isascii():
            self.eightbit = True

    def total(self) -> int:
        # A message that ends without a line end gets a final CRLF; a final bare
        # CR already counted as one.
        if self.last not in (-1, 0x0A, 0x0D):
            return self.size + 2
        return self.size


def _split(chunk: bytes, chunk_size: int) -> "Iterator[bytes]":
    if len(chunk) <= chunk_size:
        yield chunk
        return
    for start in range(0, len(chunk), chunk_size):
        yield chunk[start : start + chunk_size]


def _as_bytes(item: object, where: str) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return _encode_str(item)
    if isinstance(item, bytearray | memoryview):
        return bytes(item)
    raise TypeError(f"{where} gave {type(item).__name__}; expected bytes or str")


def encode_text(text: str) -> bytes:
    """A message given as ``str``, as the octets sent: UTF-8 (ValueError when it cannot be)."""
    return _encode_str(text)


def _encode_str(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # Lone surrogates (from surrogateescape decoding) have no UTF-8 form.
        raise ValueError(
            f"the message text cannot be encoded as UTF-8 at character {exc.start}: {exc.reason}"
        ) from exc


def _is_measurable_file(fobj: "Any") -> bool:
    """A file whose length is finite and which can be read twice: measured before sending."""
    try:
        if not fobj.seekable():
            return False
    except (AttributeError, OSError, ValueError):
        return False
    try:
        fd = fobj.fileno()
    except (AttributeError, OSError, ValueError):
        # In-memory files (BytesIO, StringIO) have no descriptor and are finite.
        return True
    import os

    try:
        # /dev/zero and block devices claim to be seekable; only a regular file
        # has an end that one streaming pass can reach (S_ISREG, without ``stat``).
        return os.fstat(fd).st_mode & 0o170000 == 0o100000
    except OSError:
        return False


def _read_chunks(fobj: "IO[Any]", chunk_size: int) -> "Iterator[bytes]":
    while True:
        data = fobj.read(chunk_size)
        if data is None:
            raise ValueError("the message file is non-blocking and has no data ready")
        if not data:
            return
        yield from _split(_as_bytes(data, "the message file's read()"), chunk_size)


class MessageSource:
    """What send_message accepts, turned into raw byte chunks.

    A file or an iterable is never read whole into memory.

    ``size`` is the normalised size (after newline normalisation, including the
    final CRLF, before dot-stuffing) when it is known in advance, else None;
    ``eightbit`` is known exactly when ``size`` is. ``chunks()`` gives the raw,
    not yet encoded, chunks, each at most ``chunk_size`` octets where the
    source allows, and can be used once. ``whole`` is the message itself when
    it is ``bytes`` (or ``str``) of at most ``chunk_size`` octets, so that a
    small message can be encoded in one step; else None.
    """

    __slots__ = ("_chunks", "chunk_size", "eightbit", "size", "whole")

    def __init__(
        self,
        chunks: "Callable[[], Iterator[bytes]]",
        *,
        size: int | None = None,
        eightbit: bool | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        whole: bytes | None = None,
    ) -> None:
        self._chunks: Callable[[], Iterator[bytes]] | None = chunks
        self.size = size
        self.eightbit = eightbit
        self.chunk_size = chunk_size
        self.whole = whole

    def __repr__(self) -> str:
        return f"<MessageSource size={self.size!r} eightbit={self.eightbit!r}>"

    @classmethod
    def of(cls, msg: "MessageInput", chunk_size: int = DEFAULT_CHUNK_SIZE) -> "MessageSource":
        """Wrap a str, bytes, bytearray, memoryview, file object or iterable of bytes/str chunks.

        A str is encoded UTF-8; a text file is encoded UTF-8 chunk by chunk; an
        iterable may yield bytes or str. A regular (or in-memory) seekable file
        is measured in one streaming pass and then read again from where it
        was. A MessageSource is returned as it is. Anything else: TypeError.
        """
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, not {chunk_size!r}")
        if isinstance(msg, MessageSource):
            return msg
        if isinstance(msg, str):
            return cls._of_buffer(_encode_str(msg), chunk_size)
        if isinstance(msg, bytes | bytearray):
            return cls._of_buffer(msg, chunk_size)
        if isinstance(msg, memoryview):
            return cls._of_view(msg, chunk_size)
        if callable(getattr(msg, "read", None)):
            return cls._of_file(msg, chunk_size)
        # Both are easy mistakes that would otherwise fail late or, worse,
        # succeed: an email.message.Message iterates over its header names.
        if hasattr(msg, "as_bytes"):
            raise TypeError(
                f"a message cannot be a {type(msg).__name__} object; pass msg.as_bytes() instead"
            )
        import os

        if isinstance(msg, os.PathLike):
            raise TypeError(
                "a message cannot be a path; open the file in binary mode and pass the file object"
            )
        try:
            iterator: Iterator[object] = iter(msg)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                "a message must be str, bytes, bytearray, memoryview, a file object or an "
                f"iterable of bytes; got {type(msg).__name__}"
            ) from None

        def from_iterable() -> "Iterator[bytes]":
            for item in iterator:
                data = _as_bytes(item, "the message iterable")
                if data:
                    yield from _split(data, chunk_size)

        return cls(from_iterable, chunk_size=chunk_size)

    @classmethod
    def _of_buffer(cls, data: bytes | bytearray, chunk_size: int) -> "MessageSource":
        # Measured now: a bytearray changed after this call is sent as it is
        # then, with the size declared from now.
        size = message_size(data)

        def from_buffer() -> "Iterator[bytes]":
            if isinstance(data, bytes) and len(data) <= chunk_size:
                if data:
                    yield data
                return
            view = memoryview(data)
            for start in range(0, len(view), chunk_size):
                yield view[start : start + chunk_size].tobytes()

        whole = data if isinstance(data, bytes) and len(data) <= chunk_size else None
        return cls(
            from_buffer,
            size=size,
            eightbit=not data.isascii(),
            chunk_size=chunk_size,
            whole=whole,
        )

    @classmethod
    def _of_view(cls, msg: memoryview, chunk_size: int) -> "MessageSource":
        try:
            view = msg if msg.format == "B" and msg.ndim == 1 else msg.cast("B")
        except TypeError as exc:
            raise TypeError(f"a message memoryview must be contiguous: {exc}") from None

        def from_view() -> "Iterator[bytes]":
            for start in range(0, len(view), chunk_size):
                yield view[start : start + chunk_size].tobytes()

        meter = _Meter()
        for chunk in from_view():
            meter.feed(chunk)
        return cls(from_view, size=meter.total(), eightbit=meter.eightbit, chunk_size=chunk_size)

    @classmethod
    def _of_file(cls, fobj: "Any", chunk_size: int) -> "MessageSource":
        start = None
        if _is_measurable_file(fobj):
            try:
                start = fobj.tell()
            except (OSError, ValueError):
                start = None
        if start is None:
            # A pipe, a socket or a device: streamed once, size unknown.
            return cls(lambda: _read_chunks(fobj, chunk_size), chunk_size=chunk_size)
        meter = _Meter()
        try:
            for chunk in _read_chunks(fobj, chunk_size):
                meter.feed(chunk)
        finally:
            fobj.seek(start)
        return cls(
            lambda: _read_chunks(fobj, chunk_size),
            size=meter.total(),
            eightbit=meter.eightbit,
            chunk_size=chunk_size,
        )

    def take_whole(self) -> bytes | None:
        """``whole``, using the source up as ``chunks()`` does; None when there is none.

        None also when the source was used already: ``chunks()`` then says so.
        """
        whole = self.whole
        if whole is None or self._chunks is None:
            return None
        self._chunks = None
        return whole

    def chunks(self) -> "Iterator[bytes]":
        """The raw chunks of the message, in order; a second call raises RuntimeError."""
        factory = self._chunks
        if factory is None:
            raise RuntimeError("MessageSource.chunks() can be used only once")
        self._chunks = None
        return factory()
