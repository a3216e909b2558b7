"""The few pieces of RFC 5322 and RFC 2047 that the intake writes or recognises itself.

* ``field_colon`` / ``could_be_field``: whether a line of the header block is a
  header field (``Name: value``), decided on bytes without decoding, so that
  the intake can tell where the header block ends, also for a line it has only
  partly read.
* ``format_date``: an RFC 5322 date with English day and month names and the
  numeric local offset, computed without the locale (``strftime`` would
  follow ``LC_TIME`` and write ``So, 29 Nov`` under a German locale).
* ``phrase``: a display name for a From header pysendmail adds: as written when
  it is plain words, quoted when it holds specials, RFC 2047 encoded words
  when it is not ASCII.

Nothing here touches a header the client wrote; it must never import more than
the standard ``time`` module, and ``binascii`` only for non-ASCII names (hot path).
"""

import time

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# RFC 5322 ftext: printable US-ASCII except ":"; the set is deleted with
# bytes.translate, so whatever is left over is a character a name cannot hold.
_FTEXT = bytes(range(33, 127)).replace(b":", b"")
_WSP = b" \t"
_ATEXT = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
# An encoded word is at most 75 characters (RFC 2047 section 2): "=?UTF-8?B?"
# and "?=" leave 63 for base64, i.e. 60, which carry 45 octets.
_EW_OCTETS = 45


def field_colon(line: bytes) -> int:
    """Index of the colon ending the field name when ``line`` is a header field, else -1.

    White space between the name and the colon is accepted (RFC 5322 obs-syntax,
    ``Subject : x``); a name of anything but printable ASCII is not a name.
    """
    colon = line.find(b":")
    if colon <= 0:
        return -1
    name = line[:colon].rstrip(_WSP)
    if not name or name.translate(None, _FTEXT):
        return -1
    return colon


def could_be_field(partial: bytes) -> bool:
    """Whether the start of a line, read only in part, may still be a header field."""
    if b":" in partial:
        return field_colon(partial) > 0
    name = partial.rstrip(_WSP)
    return bool(name) and not name.translate(None, _FTEXT)


def format_date(when: float) -> str:
    """``when`` as an RFC 5322 date-time in local time: ``Sun, 29 Nov 2026 21:47:40 +0100``."""
    tm = time.localtime(when)
    offset = (tm.tm_gmtoff or 0) // 60
    sign = "+"
    if offset < 0:
        sign = "-"
        offset = -offset
    day = f"{_DAYS[tm.tm_wday]}, {tm.tm_mday:02d} {_MONTHS[tm.tm_mon - 1]} {tm.tm_year:04d}"
    clock = f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"
    return f"{day} {clock} {sign}{offset // 60:02d}{offset % 60:02d}"


def _encoded_words(name: str) -> list[str]:
    # binascii is a shared library (a dlopen): only names that need it pay for it.
    import binascii

    pieces: list[bytes] = []
    chunk = bytearray()
    for c in name:
        b = c.encode("utf-8")
        # Never split a character: each encoded word must decode on its own.
        if len(chunk) + len(b) > _EW_OCTETS:
            pieces.append(bytes(chunk))
            chunk = bytearray()
        chunk += b
    if chunk:
        pieces.append(bytes(chunk))
    return [
        "=?UTF-8?B?" + binascii.b2a_base64(p, newline=False).decode("ascii") + "?=" for p in pieces
    ]


def phrase(name: str) -> str:
    """A display name as it goes before ``<addr>`` in a header pysendmail writes.

    The caller has refused control characters already. Several encoded words
    are folded onto continuation lines (``\\r\\n `` between them), so no line
    grows past the 78 characters RFC 5322 asks for.
    """
    if name.isascii():
        words = name.split(" ")
        if all(w and all(c in _ATEXT for c in w) for w in words):
            return name
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "\r\n ".join(_encoded_words(name))


def mailbox(name: str, addr: str) -> str:
    """``Name <addr>``, or ``addr`` alone when there is no name."""
    if not name:
        return addr
    return f"{phrase(name)} <{addr}>"
