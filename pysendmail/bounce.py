"""Bounces: RFC 3464 delivery status notifications for mail that could not be delivered.

When the runner gives up on recipients (a 5xx reply, or 4xx replies until the
queue lifetime ran out) it tells the envelope sender with a DSN: a
``multipart/report; report-type=delivery-status`` message made of

1. a human-readable ``text/plain`` part: which recipients failed, what the
   server said, how long and how often it was tried;
2. a ``message/delivery-status`` part (RFC 3464): ``Reporting-MTA``,
   ``Arrival-Date``, then per recipient ``Final-Recipient``,
   ``Original-Recipient`` (when the envelope knows what was written),
   ``Action: failed``, ``Status``, ``Remote-MTA``, ``Diagnostic-Code``,
   ``Last-Attempt-Date``;
3. the original message's header block as ``text/rfc822-headers`` or, when
   the sender asked for ``RET=FULL`` and the message is at most
   ``RET_FULL_LIMIT`` bytes, the whole message as ``message/rfc822``.

This module only writes bytes to a file; the runner decides who gets a bounce
(the bounce policy, never the null sender) and queues it.

Status codes: a refusal keeps the enhanced status code of the server's reply
when it has a 5.x.x one, else ``5.0.0``; a recipient given up because the queue
lifetime ran out gets ``4.4.7`` (delivery time expired, RFC 3463), whatever
its last reply said (the reply itself is in ``Diagnostic-Code``).

What this module must never do: read a whole message into memory (the
original is copied in chunks; only the header block, at most
``HEADERS_LIMIT`` bytes, is held), or write a line that is not CRLF-terminated
or longer than 998 bytes in the parts it generates.

SECURITY: every value written here may come from a hostile peer or a hostile
submitter: server replies, addresses, the original message. Replies and
addresses are made printable (no control characters, so no header or
boundary injection), non-ASCII in the report fields is encoded (RFC 6533
``utf-8`` address type, ``?`` in diagnostics), and the MIME boundary carries
128 random bits, so the copied original cannot end a part early.
"""

from __future__ import annotations

import binascii
import os
import re
from typing import IO

from pysendmail.message.envelope import Envelope, Recipient

#: The largest original message returned whole for RET=FULL; above it only the
#: header block is returned (Postfix's ``bounce_size_limit`` idea, set higher:
#: the copy is streamed, so the cost is disk and bandwidth, not memory).
RET_FULL_LIMIT = 10 * 1024 * 1024
#: The most of the original header block that is returned.
HEADERS_LIMIT = 64 * 1024
#: The longest server reply quoted in a report field.
REPLY_LIMIT = 900
#: Returned by ``status_for`` for recipients whose queue lifetime ran out.
EXPIRED_STATUS = "4.4.7"

_CHUNK = 64 * 1024
_ENHANCED = re.compile(r"^[245]\d\d[ -]([245]\.\d{1,3}\.\d{1,3})(?:\s|$)")
_REPLY_CODE = re.compile(r"^[245]\d\d(?:[ -]|$)")


class Failure:
    """One recipient that is being given up, and why.

    ``reply`` is the last server reply (or, for local failures such as a refused
    connection, the error text); ``remote_mta`` is the relay as logged
    (``host[ip]:port``) or ``None``; ``expired`` is true when the recipient is
    given up because the queue lifetime ran out rather than because of a 5xx.
    """

    __slots__ = (
        "address",
        "attempts",
        "expired",
        "first_attempt",
        "last_attempt",
        "original",
        "remote_mta",
        "reply",
    )

    def __init__(
        self,
        address: str,
        reply: str,
        *,
        original: str | None = None,
        remote_mta: str | None = None,
        attempts: int = 1,
        first_attempt: float | None = None,
        last_attempt: float | None = None,
        expired: bool = False,
    ) -> None:
        self.address = address
        self.reply = reply
        self.original = original
        self.remote_mta = remote_mta
        self.attempts = attempts
        self.first_attempt = first_attempt
        self.last_attempt = last_attempt
        self.expired = expired

    @property
    def status(self) -> str:
        return status_for(self.reply, expired=self.expired)

    def __repr__(self) -> str:
        return f"Failure({self.address!r}, {self.reply!r}, expired={self.expired})"


class DsnInfo:
    """What the writer learnt about the DSN it wrote, for the bounce's own envelope.

    ``eightbit``: some part carries 8-bit bytes (the bounce must go with
    ``BODY=8BITMIME``); ``smtputf8``: a header carries a UTF-8 address;
    ``size``: bytes written; ``full``: the whole original was returned.
    """

    __slots__ = ("eightbit", "full", "message_id", "size", "smtputf8")

    def __init__(self) -> None:
        self.eightbit = False
        self.smtputf8 = False
        self.full = False
        self.size = 0
        self.message_id = ""


def status_for(reply: str, *, expired: bool = False) -> str:
    """The RFC 3463 status of a failed recipient: from its reply, or derived."""
    if expired:
        return EXPIRED_STATUS
    match = _ENHANCED.match(reply)
    if match and match.group(1).startswith("5"):
        return match.group(1)
    return "5.0.0"


def clean(value: object, limit: int = REPLY_LIMIT) -> str:
    """``value`` as one line of printable ASCII (``?`` for anything else), cut at ``limit``."""
    text = str(value)
    out = "".join(ch if " " <= ch <= "~" else "?" for ch in text[:limit])
    return out + ("..." if len(text) > limit else "")


def printable_text(value: object, limit: int = REPLY_LIMIT) -> str:
    """``value`` as one line with no control characters (Unicode kept), cut at ``limit``."""
    text = str(value)
    out = "".join(ch if ch.isprintable() else "?" for ch in text[:limit])
    return out + ("..." if len(text) > limit else "")


def address_type_and_value(address: str) -> str:
    """An address for a DSN field: ``rfc822; a@b``, or RFC 6533 ``utf-8; ...`` with ``\\x{HEX}``."""
    if all(" " < ch <= "~" for ch in address) and address:
        return "rfc822; " + address
    parts = []
    for ch in address:
        # QCHAR of RFC 6533: printable ASCII except "+", "=" and "\"; the rest is escaped.
        if "!" <= ch <= "~" and ch not in "+=\\":
            parts.append(ch)
        else:
            parts.append(f"\\x{{{ord(ch):X}}}")
    return "utf-8; " + "".join(parts)


def fold(name: str, value: str, width: int = 78) -> bytes:
    """One header-style field, folded at spaces to ``width``; a word past 900 bytes is split."""
    pieces: list[str] = []
    for word in value.split(" "):
        pieces.extend(word[i : i + 900] for i in range(0, len(word), 900))
    lines: list[str] = []
    line = name + ":"
    has_word = False
    for piece in pieces:
        if has_word and len(line) + 1 + len(piece) > width:
            lines.append(line)
            line = ""
        line = f"{line} {piece}"
        has_word = True
    lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _date(when: float) -> str:
    # Imported here, as textwrap below: every queue run imports this module,
    # few write a bounce, and email.utils alone (socket, datetime, random,
    # email.charset) costs ~14 ms of each run's start.
    import email.utils

    return email.utils.formatdate(when, localtime=True)


def _remote_host(remote_mta: str | None) -> str | None:
    if not remote_mta or remote_mta == "none":
        return None
    host = remote_mta.split("[", 1)[0]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = clean(host, 255)
    return host or None


def duration_text(seconds: float) -> str:
    """A rough duration for people: "90 seconds", "45 minutes", "30 hours", "5 days"."""
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} seconds"
    if seconds < 2 * 3600:
        return f"{seconds // 60} minutes"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} hours"
    return f"{seconds // 86400} days"


def human_text(
    envelope: Envelope,
    failures: list[Failure],
    *,
    hostname: str,
    now: float,
    returned: str,
) -> str:
    """The human-readable part, as text with ``\\n`` line ends."""
    import textwrap  # only when a bounce is written (see _date)

    lines = [
        f"This is the mail system at host {printable_text(hostname, 255)}.",
        "",
        "Your message could not be delivered to one or more recipients.",
        f"It was received on {_date(envelope.arrival)} with queue id "
        f"{printable_text(envelope.queue_id, 64)}.",
        returned,
        "",
    ]
    for failure in failures:
        who = f"<{printable_text(failure.address, 500)}>"
        if failure.original and failure.original != failure.address:
            who += f" (written as <{printable_text(failure.original, 500)}>)"
        tries = "once" if failure.attempts == 1 else f"{failure.attempts} times"
        host = printable_text(failure.remote_mta, 300) if failure.remote_mta else None
        if failure.expired:
            since = now - envelope.arrival
            head = (
                f"{who}: not delivered in {duration_text(since)} (tried {tries}); "
                "the queue gave up. The last attempt"
            )
            head += f" through {host} ended with:" if host else " ended with:"
        else:
            head = f"{who}: refused permanently"
            head += f" by {host}" if host else ""
            head += f" (tried {tries}):"
        lines.extend(textwrap.wrap(head, 76, break_long_words=True, break_on_hyphens=False))
        reply = printable_text(failure.reply or "no reply", 2000)
        lines.extend(
            textwrap.wrap(
                reply,
                76,
                initial_indent="    ",
                subsequent_indent="    ",
                break_long_words=True,
                break_on_hyphens=False,
            )
        )
        lines.append("")
    lines.append("The report for mail programs and the original message follow.")
    return "\n".join(lines) + "\n"


def delivery_status(
    envelope: Envelope,
    failures: list[Failure],
    *,
    hostname: str,
) -> bytes:
    """The ``message/delivery-status`` body (RFC 3464 section 2)."""
    out = bytearray()
    out += fold("Reporting-MTA", "dns; " + clean(hostname, 255))
    if envelope.dsn_envid:
        out += fold("Original-Envelope-Id", clean(envelope.dsn_envid, 100))
    out += fold("Arrival-Date", _date(envelope.arrival))
    for failure in failures:
        out += b"\r\n"
        out += fold("Final-Recipient", address_type_and_value(failure.address))
        if failure.original and failure.original != failure.address:
            out += fold("Original-Recipient", address_type_and_value(failure.original))
        out += fold("Action", "failed")
        out += fold("Status", failure.status)
        host = _remote_host(failure.remote_mta)
        if host:
            out += fold("Remote-MTA", "dns; " + host)
        reply = clean(failure.reply) if failure.reply else ""
        if reply and _REPLY_CODE.match(reply):
            out += fold("Diagnostic-Code", "smtp; " + reply)
        elif reply:
            out += fold("Diagnostic-Code", "X-Pysendmail; " + reply)
        if failure.last_attempt is not None:
            out += fold("Last-Attempt-Date", _date(failure.last_attempt))
    return bytes(out)


def read_header_block(message: IO[bytes], limit: int = HEADERS_LIMIT) -> bytes:
    """The header block of the message at ``message``'s position, without the blank line.

    At most ``limit`` bytes, cut at a line end; each line ends with CRLF.
    """
    out = bytearray()
    while len(out) < limit:
        line = message.readline(limit - len(out) + 2)
        if not line or line in (b"\r\n", b"\n"):
            break
        if not line.endswith(b"\n"):
            if len(out) + len(line) > limit:
                break  # a line longer than what is left: stop at the last whole one
            line += b"\r\n"
        elif not line.endswith(b"\r\n"):
            line = line[:-1] + b"\r\n"
        out += line
    return bytes(out)


def _has_8bit(data: bytes) -> bool:
    return not data.isascii()


def _scan_8bit(message: IO[bytes], size: int) -> bool:
    start = message.tell()
    left = size
    found = False
    while left > 0:
        chunk = message.read(min(_CHUNK, left))
        if not chunk:
            break
        left -= len(chunk)
        if _has_8bit(chunk):
            found = True
            break
    message.seek(start)
    return found


def _message_length(message: IO[bytes]) -> int:
    start = message.tell()
    end = message.seek(0, os.SEEK_END)
    message.seek(start)
    return end - start


def write_dsn(
    out: IO[bytes],
    envelope: Envelope,
    failures: list[Failure],
    message: IO[bytes],
    *,
    to: str,
    hostname: str,
    domain: str,
    now: float,
    ret_full_limit: int = RET_FULL_LIMIT,
) -> DsnInfo:
    """Write a DSN about ``failures`` of ``envelope``'s message to ``out``; CRLF lines.

    ``message`` is the original message, positioned at its first byte and
    seekable; ``to`` is the bounce recipient (the original sender or an admin).
    """
    info = DsnInfo()
    boundary = "=_pysendmail_" + os.urandom(16).hex()
    length = _message_length(message)
    full = (envelope.dsn_ret or "").upper() == "FULL" and length <= ret_full_limit
    info.full = full
    headers = b""
    original_8bit = False
    if full:
        original_8bit = _scan_8bit(message, length)
    else:
        headers = read_header_block(message)
        original_8bit = _has_8bit(headers)
    if full:
        returned = "The whole message is attached."
    elif (envelope.dsn_ret or "").upper() == "FULL":
        returned = f"It is larger than {ret_full_limit} bytes, so only its headers are attached."
    else:
        returned = "Its headers are attached."
    text = human_text(envelope, failures, hostname=hostname, now=now, returned=returned)
    sender_domain = clean(domain or hostname, 255)
    to_clean = printable_text(to, 998 - 10)
    info.smtputf8 = not to_clean.isascii()
    info.eightbit = original_8bit
    info.message_id = (
        f"<{os.urandom(12).hex()}.{clean(envelope.queue_id, 64)}@{clean(hostname, 255)}>"
    )

    def write(data: bytes) -> None:
        out.write(data)
        info.size += len(data)

    write(fold("From", f"MAILER-DAEMON@{sender_domain} (Mail Delivery System)"))
    write(f"To: <{to_clean}>\r\n".encode())
    subject = "Undelivered Mail Returned to Sender"
    write(fold("Subject", subject))
    write(fold("Date", _date(now)))
    write(fold("Message-ID", info.message_id))
    write(b"Auto-Submitted: auto-replied\r\n")
    write(b"MIME-Version: 1.0\r\n")
    write(
        b"Content-Type: multipart/report; report-type=delivery-status;\r\n"
        + f'\tboundary="{boundary}"\r\n'.encode()
    )
    write(b"Content-Transfer-Encoding: " + (b"8bit" if info.eightbit else b"7bit") + b"\r\n")
    write(b"\r\n")
    write(b"This is a MIME-encapsulated message.\r\n")
    delim = f"\r\n--{boundary}\r\n".encode()

    # 1. For people.
    write(delim)
    write(b"Content-Description: Notification\r\n")
    if text.isascii():
        write(b"Content-Type: text/plain; charset=us-ascii\r\n")
        write(b"Content-Transfer-Encoding: 7bit\r\n\r\n")
        write(text.replace("\n", "\r\n").encode("ascii"))
    else:
        write(b"Content-Type: text/plain; charset=utf-8\r\n")
        write(b"Content-Transfer-Encoding: quoted-printable\r\n\r\n")
        body = binascii.b2a_qp(text.replace("\n", "\r\n").encode("utf-8"), istext=True)
        write(body)
        if not body.endswith(b"\r\n"):
            write(b"\r\n")

    # 2. For programs.
    write(delim)
    write(b"Content-Description: Delivery report\r\n")
    write(b"Content-Type: message/delivery-status\r\n\r\n")
    write(delivery_status(envelope, failures, hostname=hostname))

    # 3. The original, or its headers.
    write(delim)
    if full:
        write(b"Content-Description: Undelivered Message\r\n")
        write(b"Content-Type: message/rfc822\r\n")
        write(b"Content-Transfer-Encoding: " + (b"8bit" if original_8bit else b"7bit") + b"\r\n")
        write(b"\r\n")
        left = length
        last = b""
        while left > 0:
            chunk = message.read(min(_CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            write(chunk)
            last = chunk
        if last and not last.endswith(b"\r\n"):
            write(b"\r\n")
    else:
        write(b"Content-Description: Undelivered Message Headers\r\n")
        write(b"Content-Type: text/rfc822-headers\r\n")
        write(b"Content-Transfer-Encoding: " + (b"8bit" if original_8bit else b"7bit") + b"\r\n")
        write(b"\r\n")
        write(headers)
    write(f"\r\n--{boundary}--\r\n".encode())
    return info


def write_bounce(
    out: IO[bytes],
    envelope: Envelope,
    failures: list[Failure],
    message: IO[bytes],
    *,
    queue_id: str,
    to: str,
    hostname: str,
    domain: str,
    now: float,
    ret_full_limit: int = RET_FULL_LIMIT,
) -> Envelope:
    """Write a whole spool file for the bounce to ``out`` (empty, seekable): prelude, then DSN.

    The bounce's envelope has the null sender (so it never bounces itself) and
    the one recipient ``to``; it is returned with its final size.
    """
    bounce = Envelope(
        queue_id=queue_id,
        sender="",
        recipients=[Recipient(to)],
        submitter_login="MAILER-DAEMON",
        arrival=now,
    )
    start = out.tell()
    prelude = bounce.to_bytes()
    out.write(prelude)
    info = write_dsn(
        out,
        envelope,
        failures,
        message,
        to=to,
        hostname=hostname,
        domain=domain,
        now=now,
        ret_full_limit=ret_full_limit,
    )
    bounce.size = info.size
    bounce.eightbit = info.eightbit
    bounce.body_type = "8BITMIME" if info.eightbit else None
    bounce.smtputf8 = info.smtputf8
    bounce.message_offset = start + len(prelude)
    # The prelude's length does not depend on these values: rewrite it in place.
    end = out.tell()
    out.seek(start)
    out.write(bounce.to_bytes())
    out.seek(end)
    return bounce
