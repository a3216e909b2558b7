"""SMTP replies: the ``Response`` a server gives, and the bounded parser that reads it.

A reply is one or more lines "DDD-text" ending with one "DDD text" (RFC 5321
section 4.2). ``ReplyParser`` turns bytes, in whatever pieces the network hands
them over, into ``Response`` objects; ``Response`` gives the code, the enhanced
status code (RFC 3463), the text and, for an EHLO reply, the extensions.

SECURITY: every byte comes from a server we do not trust. The parser never
buffers without end: a line of more than ``MAX_LINE_LENGTH`` octets or a reply
of more than ``MAX_REPLY_LINES`` lines is a protocol violation by the server,
as is a line without a three-digit code, a bad separator after the code, or a
multiline reply whose lines disagree on the code. Each raises
``SMTPProtocolError``, and the parser (and with it the session) is dead from
then on, because after a framing error nothing that follows can be trusted to
line up with the commands. Text that is not UTF-8, and control characters
that could rewrite a terminal when an error is printed, are replaced with
U+FFFD before any caller sees them.

This module does no I/O and imports nothing but the standard library and the
project's error classes.
"""

# No ``re``, ``typing`` or ``collections`` at run time, and no ``from __future__``:
# ``sendmail`` imports this module for every message it relays directly, and
# those imports alone cost more than the SMTP dialogue (see DESIGN.md,
# Performance budgets). Annotations that name typing-only things are quoted.
from _collections_abc import Mapping  # what collections.abc re-exports, without collections

from pysendmail.errors import SMTPUnknownError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = [
    "MAX_LINE_LENGTH",
    "MAX_REPLY_LINES",
    "Capabilities",
    "ReplyParser",
    "Response",
    "SMTPProtocolError",
]

#: The longest reply line accepted, in octets, line end included. RFC 5321
#: allows 512; real servers send longer EHLO and error lines, none near this.
MAX_LINE_LENGTH = 2048
#: The most lines one reply may have. The largest EHLO replies seen in the
#: wild have about 20; this bounds a reply to half a megabyte.
MAX_REPLY_LINES = 256

# C0 controls (TAB kept: some servers indent with it) and DEL, C1 controls:
# what a terminal would act on if an error message were printed.
_UNSAFE = dict.fromkeys((*range(0x09), *range(0x0A, 0x20), *range(0x7F, 0xA0)), "\ufffd")


# "250" -> 250 by a dictionary lookup, a third of the cost of int(), on
# every reply; filled as codes are seen (building it whole costs an import
# 0.7 ms), and bounded.
_CODES: dict[str, int] = {}


def _is_keyword(word: str) -> bool:
    """RFC 5321 section 4.1.1.1 ehlo-keyword: ``[A-Za-z0-9][A-Za-z0-9-]*``."""
    return word.isascii() and word[:1].isalnum() and word.replace("-", "").isalnum()


def _enhanced(text: str, klass: str) -> str | None:
    """The RFC 3463 code ``klass.subject.detail`` that starts ``text``, or None.

    Each part after the class has 1-3 digits, and the code is followed by the
    end of the text or white space (a space or a TAB).
    """
    code = text.split(" ", 1)[0].split("\t", 1)[0]
    parts = code.split(".")
    if len(parts) != 3 or parts[0] != klass or klass not in "245":
        return None
    for part in parts[1:]:
        if not 1 <= len(part) <= 3 or not part.isdecimal():
            return None
    return code


class SMTPProtocolError(SMTPUnknownError):
    """The server broke the protocol: a malformed, oversized or unexpected reply.

    The session is dead once this is raised: nothing the server sends after a
    framing error can be matched to a command with any confidence.
    """


class Capabilities(Mapping[str, list[str]]):
    """The extensions of an EHLO reply: keyword (upper-case) -> its parameters.

    Lookups are case-insensitive: ``caps["starttls"]`` and ``"Size" in caps``
    work. The old "AUTH=LOGIN PLAIN" form of AUTH is merged into AUTH, and AUTH
    mechanism names are upper-cased (they are case-insensitive names). Lines
    whose keyword is not RFC 5321 syntax are ignored.
    """

    __slots__ = ("_items",)

    def __init__(self, lines: "Iterable[str]" = ()) -> None:
        items: dict[str, list[str]] = {}
        for line in lines:
            words = line.split()
            if not words:
                continue
            keyword, params = words[0], words[1:]
            if keyword[:5].upper() == "AUTH=":
                # Pre-RFC 2554 servers announce "AUTH=LOGIN PLAIN": the same list.
                keyword, params = "AUTH", [keyword[5:], *params]
            if not _is_keyword(keyword):
                continue
            keyword = keyword.upper()
            if keyword == "AUTH":
                params = [p.upper() for p in params if p]
            known = items.setdefault(keyword, [])
            known.extend(p for p in params if p not in known)
        self._items = items

    def __getitem__(self, key: str) -> list[str]:
        if not isinstance(key, str):
            raise KeyError(key)
        return self._items[key.upper()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.upper() in self._items

    def __iter__(self) -> "Iterator[str]":
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Capabilities({self._items!r})"


class Response:
    """One SMTP reply.

    ``status`` is the three-digit code as text ("250") and ``code`` as a
    number, ``lines`` the text of each line after the code and its separator,
    and ``string`` the whole reply as received ("250-first\\r\\n250 last\\r\\n";
    unsafe characters replaced, see the module docstring). Build one from the
    wire with ``Response.parse``. Treat it as immutable; two replies are equal
    when their text is.
    """

    __slots__ = ("code", "lines", "status", "string")

    status: str
    code: int
    lines: tuple[str, ...]
    string: str

    def __init__(self, status: str, lines: tuple[str, ...], string: str) -> None:
        self.status = status
        code = _CODES.get(status)
        if code is None:
            code = int(status)
            if len(_CODES) < 1000:
                _CODES[status] = code
        self.code = code
        self.lines = lines
        self.string = string

    @classmethod
    def parse(cls, data: bytes | str) -> "Response":
        """The one complete reply in ``data``; SMTPProtocolError for anything else."""
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        parser = ReplyParser()
        parser.feed(raw)
        reply = parser.next_reply()
        if reply is None or parser.buffered:
            raise SMTPProtocolError(f"not exactly one complete SMTP reply: {raw[:80]!r}")
        return reply

    @property
    def message(self) -> str:
        """The text of the first line, without the code ("2.1.0 Ok")."""
        return self.lines[0]

    @property
    def enhanced(self) -> str | None:
        """The RFC 3463 enhanced status code of the first line ("2.1.5"), or None.

        Taken only when its class agrees with the reply code's first digit:
        "550 2.1.5 ..." is a server bug, and trusting the 2 would turn a
        refusal into a success when deciding temporary versus permanent.
        """
        return _enhanced(self.lines[0], self.status[0])

    @property
    def success(self) -> bool:
        """A 2xx reply."""
        return 200 <= self.code < 300

    @property
    def continuation(self) -> bool:
        """A 3xx reply: the server waits for more (354 to DATA, 334 during AUTH)."""
        return 300 <= self.code < 400

    @property
    def capabilities(self) -> "Capabilities":
        """For an EHLO reply, the extensions its lines after the first announce."""
        return Capabilities(self.lines[1:])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return self.string == other.string

    def __hash__(self) -> int:
        return hash(self.string)

    def __repr__(self) -> str:
        return f"Response({self.status!r}, {self.lines!r})"

    def __str__(self) -> str:
        return self.string.rstrip("\r\n").replace("\r\n", " / ")


def _clean(line: bytes | bytearray) -> str:
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        text = line.decode("utf-8", "replace")
    if text.isprintable():
        # Nothing unsafe is printable: the common case, in one C call.
        return text
    return text.translate(_UNSAFE)


class ReplyParser:
    """Incremental, bounded reply parser: ``feed`` bytes, take ``next_reply`` until None.

    Accepts CRLF and, being liberal where it costs nothing, a bare LF as the
    line end. After an ``SMTPProtocolError`` every call raises it again.
    """

    __slots__ = ("_buffer", "_error", "_held", "_lines", "_scanned", "_status")

    def __init__(self) -> None:
        self._buffer = bytearray()
        # The lines of the reply being received, code included, cleaned.
        self._lines: list[str] = []
        self._held = 0
        self._status: bytes | None = None
        # How far the buffer has been searched for a line end without finding
        # one, so a reply arriving byte by byte is not scanned quadratically.
        self._scanned = 0
        self._error: SMTPProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Octets received and not yet part of a returned reply."""
        return len(self._buffer) + self._held

    def feed(self, data: bytes) -> None:
        """Add bytes received from the server."""
        if self._error is not None:
            raise self._error
        self._buffer += data

    def clear(self) -> None:
        """Forget everything buffered: after STARTTLS, plaintext is never to be read."""
        self._buffer.clear()
        self._lines.clear()
        self._held = 0
        self._status = None
        self._scanned = 0

    def peek_status(self) -> bytes | None:
        """The code of the reply being received, if its first three octets have arrived."""
        if self._status is not None:
            return self._status
        head = bytes(self._buffer[:3])
        return head if len(head) == 3 else None

    def next_reply(self) -> Response | None:
        """The next complete reply, or None when more bytes are needed."""
        buffer = self._buffer
        if not buffer:
            # After an error the buffer is empty for good (feed refuses).
            if self._error is not None:
                raise self._error
            return None
        if not self._lines:
            # The common case, a one-line reply of printable ASCII ending in
            # CRLF ("250 2.1.0 Ok"), with a few C calls; anything else (a TAB,
            # 8-bit text, a bare LF, a continuation line, a malformed line)
            # takes the general path, which gives the same reply.
            end = buffer.find(b"\n", self._scanned)
            if 4 <= end < MAX_LINE_LENGTH and buffer[end - 1] == 0x0D:
                try:
                    text = buffer[: end - 1].decode("ascii")
                except UnicodeDecodeError:
                    text = ""  # 8-bit text: the general path cleans it
                status = text[:3]
                if status.isdigit() and (end == 4 or text[3] == " ") and text.isprintable():
                    del buffer[: end + 1]
                    self._scanned = 0
                    return Response(status, (text[4:],), text + "\r\n")
        try:
            return self._next_reply()
        except SMTPProtocolError as exc:
            self._error = exc
            self.clear()
            raise

    def _next_reply(self) -> Response | None:
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n", self._scanned)
            if end < 0:
                if len(buffer) > MAX_LINE_LENGTH:
                    raise SMTPProtocolError(
                        f"the server sent a reply line longer than {MAX_LINE_LENGTH} octets"
                    )
                self._scanned = len(buffer)
                return None
            self._scanned = 0
            if end >= MAX_LINE_LENGTH:
                raise SMTPProtocolError(
                    f"the server sent a reply line longer than {MAX_LINE_LENGTH} octets"
                )
            stop = end - 1 if end and buffer[end - 1] == 0x0D else end
            line = buffer[:stop]
            del buffer[: end + 1]
            status = bytes(line[:3])
            if len(status) != 3 or not status.isdigit():
                raise SMTPProtocolError(
                    f"the server sent a line without a reply code: {bytes(line)!r}"
                )
            if self._status is not None and status != self._status:
                raise SMTPProtocolError(
                    "the server mixed reply codes in one multiline reply: "
                    f"{self._status.decode()} then {status.decode()}"
                )
            separator = line[3:4]
            if separator == b"-":
                if len(self._lines) >= MAX_REPLY_LINES - 1:
                    raise SMTPProtocolError(
                        f"the server sent a reply of more than {MAX_REPLY_LINES} lines"
                    )
                self._status = status
                self._lines.append(_clean(line))
                self._held += end + 1
                continue
            if separator != b" " and separator:
                raise SMTPProtocolError(
                    f"the server sent a reply code followed by {bytes(separator)!r}: "
                    f"{bytes(line)!r}"
                )
            last = _clean(line)
            code = status.decode("ascii")
            if not self._lines:
                # The common case, a one-line reply, without the list work.
                return Response(code, (last[4:],), last + "\r\n")
            lines = self._lines
            lines.append(last)
            self._lines = []
            self._held = 0
            self._status = None
            return Response(
                code, tuple(raw[4:] for raw in lines), "".join(raw + "\r\n" for raw in lines)
            )
