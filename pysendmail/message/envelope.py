"""The envelope of a queued message, and the prelude that carries it at the head of a spool file.

A spool file is the prelude (this module) followed by the message with CRLF
line endings. The prelude is text, one ``key value`` line each, so that
``head -c 600 FILE`` shows a human what is queued::

    pysendmail-envelope 1 0000000287
    id 0SB2K3M4N5P6Q7R8
    sender www-data@example.com
    rcpt admin@example.com root -
    ...
    size 00000000000000001234
    eightbit 0
    end

* Versioned and self-delimiting: the first line names the format, its version
  and the prelude's total length in octets (fixed width), so a reader knows
  before parsing how much to read and where the message starts.
* Every text value is xtext-encoded (RFC 3461 section 4: bytes outside
  ``!``..``~``, and ``+`` and ``=``, become ``+XX`` of their UTF-8 octets), so
  no byte of an address, a name or an envelope id can end a line, split a
  field or fake another key.
* ``size``, ``eightbit`` and ``body`` have fixed widths: the intake writes the
  prelude before the message and, once the body has streamed past, writes it
  again in place with the real values, without moving a byte of the message.

SECURITY: a queue file is hostile input (the maildrop accepts files from every
local user). ``Envelope.from_file`` reads at most ``max_prelude`` octets,
refuses anything it does not fully understand with ``DataError`` (unknown or
repeated keys, bad numbers, bad xtext, invalid UTF-8, control characters,
addresses outside RFC 5321) and never trusts the length field beyond that
limit. ``to_bytes`` applies the same checks, so whatever is written can be
read back. This module must not import anything beyond ``pysendmail.errors``
and the package's ``addresses`` (hot path).
"""

import os
import time

from pysendmail.errors import DataError, IOFailure
from pysendmail.message.addresses import check_mailbox, check_text, show

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

MAGIC = b"pysendmail-envelope"
VERSION = 1
#: The default (and the intake's) limit on a prelude's size.
MAX_PRELUDE = 65536

_LENGTH_DIGITS = 10
_HEAD_LEN = len(MAGIC) + 3 + _LENGTH_DIGITS + 1  # "MAGIC V LLLLLLLLLL\n"
_SIZE_DIGITS = 20
_DIGITS = b"0123456789"
_HEX_UPPER = b"0123456789ABCDEF"
# xtext characters that stand for themselves: "!" to "~" except "+" and "=".
_XSAFE = bytes(c for c in range(33, 127) if c not in b"+=")
_XCHARS = _XSAFE + b"+"
_QUEUE_ID_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
_MAX_QUEUE_ID = 64
_MAX_ENVID = 100  # RFC 3461 section 4.4
_BODY_CODES = {None: b"0", "7BIT": b"7", "8BITMIME": b"8"}
_BODY_TYPES = {v: k for k, v in _BODY_CODES.items()}
_NOTIFY_WORDS = ("SUCCESS", "FAILURE", "DELAY")
_REQUIRED = (
    b"id",
    b"sender",
    b"body",
    b"smtputf8",
    b"uid",
    b"login",
    b"arrival",
    b"size",
    b"eightbit",
)
_OPTIONAL = (b"ret", b"envid")


def check_notify(value: str) -> str:
    """A DSN NOTIFY value in canonical form (``NEVER`` or e.g. ``SUCCESS,FAILURE``).

    Raises ``DataError`` when it is neither ``NEVER`` nor a list of distinct
    ``SUCCESS``, ``FAILURE``, ``DELAY`` (RFC 3461 section 4.1).
    """
    words = [w.strip().upper() for w in value.split(",")]
    if words == ["NEVER"]:
        return "NEVER"
    if not all(w in _NOTIFY_WORDS for w in words) or len(set(words)) != len(words):
        raise DataError(
            f"DSN notify {show(value)} is not NEVER or a list of SUCCESS, FAILURE, DELAY"
        )
    return ",".join(words)


def check_envid(value: str) -> str:
    """A DSN envelope id: printable US-ASCII, at most 100 characters (RFC 3461 section 4.4)."""
    check_text(value, "DSN envelope id")
    if not value.isascii() or len(value) > _MAX_ENVID:
        raise DataError(
            f"DSN envelope id {show(value)} must be printable ASCII"
            f" of at most {_MAX_ENVID} characters"
        )
    return value


def check_queue_id(value: str) -> str:
    """A queue id: 1 to 64 letters, digits, ``_`` or ``-`` (it names files)."""
    raw = value.encode("utf-8", "surrogateescape")
    if not raw or len(raw) > _MAX_QUEUE_ID or raw.translate(None, _QUEUE_ID_CHARS):
        raise DataError(f"queue id {show(value)} is not 1 to 64 letters, digits, '_' or '-'")
    return value


def _xtext(value: str) -> bytes:
    raw = value.encode("utf-8")
    if not raw.translate(None, _XSAFE):
        return raw
    return b"".join(bytes((c,)) if c in _XSAFE else b"+%02X" % c for c in raw)


def _unxtext(value: bytes, what: str) -> str:
    if value.translate(None, _XCHARS):
        raise DataError(f"queue file: {what} holds a character xtext does not allow")
    if b"+" in value:
        parts = value.split(b"+")
        out = bytearray(parts[0])
        for part in parts[1:]:
            code = part[:2]
            if len(code) != 2 or code.translate(None, _HEX_UPPER):
                raise DataError(f"queue file: {what} holds a malformed +XX escape")
            out.append(int(code, 16))
            out += part[2:]
        value = bytes(out)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"queue file: {what} is not valid UTF-8") from None


def _number(value: bytes, what: str, digits: int) -> int:
    if not value or len(value) > digits or value.translate(None, _DIGITS):
        raise DataError(f"queue file: {what} is not a number of at most {digits} digits")
    return int(value)


def _flag(value: bytes, what: str) -> bool:
    if value not in (b"0", b"1"):
        raise DataError(f"queue file: {what} is not 0 or 1")
    return value == b"1"


def _read_exact(f: "BinaryIO", n: int) -> bytes:
    parts: list[bytes] = []
    while n > 0:
        try:
            data = f.read(n)
        except OSError as exc:
            raise IOFailure(f"reading the queue file failed: {exc.strerror or exc}") from None
        if not data:
            break
        parts.append(data)
        n -= len(data)
    return b"".join(parts)


class Recipient:
    """One envelope recipient.

    ``address`` is final and qualified (what RCPT TO names); ``original`` is the
    address as the user wrote it, before aliases and qualification (for ORCPT
    and logs); ``notify`` is the DSN NOTIFY value, or ``None`` for the server's
    default.
    """

    __slots__ = ("address", "notify", "original")

    def __init__(
        self, address: str, original: str | None = None, notify: str | None = None
    ) -> None:
        self.address = address
        self.original = address if original is None else original
        self.notify = notify

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Recipient):
            return NotImplemented
        return (self.address, self.original, self.notify) == (
            other.address,
            other.original,
            other.notify,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        return f"Recipient({self.address!r}, original={self.original!r}, notify={self.notify!r})"


class Envelope:
    """Everything about a message that is not in the message: who sent it, to whom, how.

    ``sender`` is ``""`` for the null sender. ``body_type`` is what MAIL FROM
    declares as BODY= (``"8BITMIME"`` whenever the message has 8-bit octets).
    ``smtputf8`` says an address needs the SMTPUTF8 extension. ``size`` counts
    the octets of the message part of the spool file (CRLF line endings), which
    starts at ``message_offset``. ``arrival`` is a ``time.time()`` value.
    """

    __slots__ = (
        "arrival",
        "body_type",
        "dsn_envid",
        "dsn_ret",
        "eightbit",
        "message_offset",
        "queue_id",
        "recipients",
        "sender",
        "size",
        "smtputf8",
        "submitter_login",
        "submitter_uid",
    )

    def __init__(
        self,
        *,
        queue_id: str,
        sender: str,
        recipients: list[Recipient],
        dsn_ret: str | None = None,
        dsn_envid: str | None = None,
        body_type: str | None = None,
        smtputf8: bool = False,
        submitter_uid: int | None = None,
        submitter_login: str = "",
        arrival: float | None = None,
        message_offset: int = 0,
        size: int = 0,
        eightbit: bool = False,
    ) -> None:
        self.queue_id = queue_id
        self.sender = sender
        self.recipients = recipients
        self.dsn_ret = dsn_ret
        self.dsn_envid = dsn_envid
        self.body_type = body_type
        self.smtputf8 = smtputf8
        self.submitter_uid = os.getuid() if submitter_uid is None else submitter_uid
        self.submitter_login = submitter_login
        self.arrival = time.time() if arrival is None else arrival
        self.message_offset = message_offset
        self.size = size
        self.eightbit = eightbit

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Envelope):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Envelope({fields})"

    def check(self) -> None:
        """Refuse (``DataError``) any value the prelude cannot carry or a relay must not see."""
        check_queue_id(self.queue_id)
        if self.sender:
            check_mailbox(self.sender)
        for r in self.recipients:
            check_mailbox(r.address)
            check_text(r.original, "original recipient")
            if r.notify is not None and check_notify(r.notify) != r.notify:
                raise DataError(f"DSN notify {show(r.notify)} is not in canonical form")
        if self.dsn_ret not in (None, "FULL", "HDRS"):
            raise DataError(f"DSN return {show(str(self.dsn_ret))} is not FULL or HDRS")
        if self.dsn_envid is not None:
            check_envid(self.dsn_envid)
        if self.body_type not in _BODY_CODES:
            raise DataError(f"body type {show(str(self.body_type))} is not 7BIT or 8BITMIME")
        if not 0 <= self.submitter_uid < 1 << 32:
            raise DataError(f"submitter uid {self.submitter_uid} is out of range")
        check_text(self.submitter_login, "submitter login")
        arrival = self.arrival
        if not (arrival >= 0 and arrival < float("inf")):  # also refuses NaN
            raise DataError(f"arrival time {arrival!r} is not a time")
        if not 0 <= self.size < 10**_SIZE_DIGITS:
            raise DataError(f"message size {self.size} is out of range")

    def to_bytes(self, checked: bool = False) -> bytes:
        """The prelude: versioned, self-delimiting, every value xtext-encoded.

        Its length depends neither on ``size`` nor on ``eightbit`` nor on
        ``body_type``, so it can be written again in place once they are known.
        ``checked=True``: ``check()`` passed already and only those three
        values changed since; they alone are checked again.
        """
        if not checked:
            self.check()
        elif self.body_type not in _BODY_CODES or not 0 <= self.size < 10**_SIZE_DIGITS:
            self.check()  # raises, naming the value
        lines = [b"id " + self.queue_id.encode("ascii"), b"sender " + _xtext(self.sender)]
        for r in self.recipients:
            notify = r.notify.encode("ascii") if r.notify is not None else b"-"
            lines.append(b"rcpt " + _xtext(r.address) + b" " + _xtext(r.original) + b" " + notify)
        if self.dsn_ret is not None:
            lines.append(b"ret " + self.dsn_ret.encode("ascii"))
        if self.dsn_envid is not None:
            lines.append(b"envid " + _xtext(self.dsn_envid))
        lines += [
            b"body " + _BODY_CODES[self.body_type],
            b"smtputf8 " + (b"1" if self.smtputf8 else b"0"),
            b"uid %d" % self.submitter_uid,
            b"login " + _xtext(self.submitter_login),
            b"arrival " + repr(float(self.arrival)).encode("ascii"),
            b"size %0*d" % (_SIZE_DIGITS, self.size),
            b"eightbit " + (b"1" if self.eightbit else b"0"),
            b"end",
            b"",
        ]
        body = b"\n".join(lines)
        total = _HEAD_LEN + len(body)
        head = b"%s %d %0*d\n" % (MAGIC, VERSION, _LENGTH_DIGITS, total)
        return head + body

    @classmethod
    def from_file(cls, f: "BinaryIO", max_prelude: int = MAX_PRELUDE) -> "Envelope":
        """Parse the prelude at ``f``'s position and leave ``f`` where the message starts.

        Raises ``DataError`` for anything truncated, oversized, of another
        version or malformed in any way, and ``IOFailure`` when reading fails.
        """
        head = _read_exact(f, _HEAD_LEN)
        if len(head) < _HEAD_LEN:
            raise DataError("queue file is truncated: no complete envelope")
        fields = head[:-1].split(b" ")
        if len(fields) != 3 or fields[0] != MAGIC or head[-1:] != b"\n":
            raise DataError("queue file does not start with a pysendmail envelope")
        version, length = fields[1], fields[2]
        if version != b"%d" % VERSION:
            raise DataError(
                f"queue file envelope has version {show(version.decode('latin-1'))},"
                f" this pysendmail reads version {VERSION}"
            )
        total = _number(length, "envelope length", _LENGTH_DIGITS)
        if total > max_prelude:
            raise DataError(f"queue file envelope is larger than {max_prelude} octets")
        if total < _HEAD_LEN + 4:
            raise DataError("queue file envelope is too short")
        body = _read_exact(f, total - _HEAD_LEN)
        if len(body) < total - _HEAD_LEN:
            raise DataError("queue file is truncated inside the envelope")
        if not body.endswith(b"\n"):
            raise DataError("queue file envelope does not end with a line end")
        lines = body[:-1].split(b"\n")
        if lines[-1] != b"end":
            raise DataError("queue file envelope has no end line")
        values: dict[bytes, bytes] = {}
        rcpts: list[Recipient] = []
        for line in lines[:-1]:
            key, sep, value = line.partition(b" ")
            if not sep:
                raise DataError(
                    f"queue file envelope line {show(line.decode('latin-1'))} has no value"
                )
            if key == b"rcpt":
                rcpts.append(_recipient(value))
                continue
            if key not in _REQUIRED and key not in _OPTIONAL:
                raise DataError(
                    f"queue file envelope has an unknown key {show(key.decode('latin-1'))}"
                )
            if key in values:
                raise DataError(f"queue file envelope repeats the key {key.decode('ascii')}")
            values[key] = value
        for key in _REQUIRED:
            if key not in values:
                raise DataError(f"queue file envelope lacks the key {key.decode('ascii')}")
        body_code = values[b"body"]
        if body_code not in _BODY_TYPES:
            raise DataError("queue file envelope has an unknown body type")
        ret = values.get(b"ret")
        envid = values.get(b"envid")
        env = cls(
            queue_id=_unxtext(values[b"id"], "id"),
            sender=_unxtext(values[b"sender"], "sender"),
            recipients=rcpts,
            dsn_ret=ret.decode("latin-1") if ret is not None else None,
            dsn_envid=_unxtext(envid, "envid") if envid is not None else None,
            body_type=_BODY_TYPES[body_code],
            smtputf8=_flag(values[b"smtputf8"], "smtputf8"),
            submitter_uid=_number(values[b"uid"], "uid", 10),
            submitter_login=_unxtext(values[b"login"], "login"),
            arrival=_arrival(values[b"arrival"]),
            size=_number(values[b"size"], "size", _SIZE_DIGITS),
            eightbit=_flag(values[b"eightbit"], "eightbit"),
        )
        try:
            env.message_offset = f.tell()
        except (OSError, ValueError):
            env.message_offset = total
        try:
            env.check()
        except DataError as exc:
            raise DataError(f"queue file envelope: {exc}") from None
        return env


def _recipient(value: bytes) -> Recipient:
    parts = value.split(b" ")
    if len(parts) != 3:
        raise DataError("queue file envelope has a malformed rcpt line")
    address = _unxtext(parts[0], "recipient")
    original = _unxtext(parts[1], "original recipient")
    notify = None if parts[2] == b"-" else parts[2].decode("latin-1")
    return Recipient(address, original, notify)


def _arrival(value: bytes) -> float:
    if not value or len(value) > 32 or value.translate(None, b"0123456789.e+-"):
        raise DataError("queue file: arrival is not a time")
    try:
        return float(value)
    except ValueError:
        raise DataError("queue file: arrival is not a time") from None
