"""Message intake: what a program pipes into ``sendmail`` becomes a spool file.

``receive(src, out, options)`` reads the message from ``src`` in chunks and
writes ``out``: the envelope prelude (``envelope.Envelope.to_bytes``), then the
message with CRLF line endings. Only the header block is held in memory; the
body streams through in ``CHUNK_SIZE`` pieces, so memory stays O(chunk) for a
message of any size.

What the intake does to the bytes, and nothing more:

* Line endings: LF, CRLF and a bare CR each end a line and become CRLF (PHP
  mixes CRLF headers with an LF body; a bare CR is an old Mac line end and
  may not travel alone in SMTP). So ``\\r\\r\\n`` is two line ends. A last
  line without a line end gets one. Every other byte, 8-bit ones included,
  is kept as it is.
* A leading mbox ``From `` line is dropped (Postfix does the same).
* Without ``-i``/``-oi`` a line holding a lone ``.`` ends the input (also at
  the very end without a line end, and also across chunk boundaries); with it,
  only end of file does. No other dot handling: ``..`` stays ``..``.
* The header block ends at the first empty line, or at the first line that is
  neither a header field (``Name:``) nor a continuation (white space first):
  that line starts the body, and a blank line is written before it (as
  Postfix does). A message with no body or no headers at all is fine.
* Bcc and Resent-Bcc fields are removed. Received is added first; From, Date
  and Message-ID are added at the end of the header block when missing.
  Every other header line is written as the client wrote it, in order; header
  addresses change only when ``qualify_headers`` or ``rewrite_from_header``
  ask for it.

Decisions where the RFCs leave a choice:

* Lines longer than 998 octets (RFC 5322 section 2.1.1) pass through verbatim,
  in headers and body. Re-encoding would mean rewriting MIME structure (and
  breaking signatures), splitting would change the content; relays in practice
  accept long lines (Postfix and Exim do), and one that refuses says so with a
  5xx that is reported, so nothing is ever silently corrupted.
* NUL bytes: kept as they are in the body (a cron job's binary output still
  arrives); refused in the header block (``DataError``), where C programs
  downstream would cut a field at the NUL and parse the rest as new fields.
* The header block may hold at most ``max_header_bytes`` octets (default
  1 MiB, ten times Postfix's ``header_size_limit``); beyond that the intake
  stops with ``DataError`` rather than hold more of a header bomb in memory.

SECURITY: stdin, argv values and header values are hostile. Control
characters in an address, a name or a flag value are refused with
``DataError`` naming the value through ``repr``. The sender's identity comes
from the real uid (``pwd.getpwuid``), never from ``$USER``, ``$LOGNAME`` or
``$HOME``. Nothing here may import more than ``os``, ``time``, ``pwd`` and the
package's own modules: this runs on every ``sendmail`` call.
"""

import os
import pwd
import time

from pysendmail.errors import DataError, IOFailure, UsageError
from pysendmail.message.addresses import (
    check_local_part,
    check_mailbox,
    check_text,
    find_control,
    is_dot_atom,
    mailbox_spans,
    needs_smtputf8,
    parse_address_list,
    quote_local_part,
    show,
    split_address,
)
from pysendmail.message.envelope import (
    MAX_PRELUDE,
    Envelope,
    Recipient,
    check_envid,
    check_notify,
    check_queue_id,
)
from pysendmail.message.headers import could_be_field, field_colon, format_date, mailbox

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import BinaryIO

    from pysendmail.message.aliases import Aliases

#: How much of stdin is read, normalised and written at a time.
CHUNK_SIZE = 65536
#: Default limit on the header block (octets, LF line ends).
MAX_HEADER_BYTES = 1024 * 1024
NO_RECIPIENTS = "no recipients: give them on the command line or use -t with To/Cc/Bcc headers"

_RECIPIENT_FIELDS = ("to", "cc", "bcc")
_RESENT_RECIPIENT_FIELDS = ("resent-to", "resent-cc", "resent-bcc")
_REMOVED_FIELDS = ("bcc", "resent-bcc")
# Header fields whose bare local names qualify_headers rewrites.
_QUALIFIED_FIELDS = (
    "from",
    "to",
    "cc",
    "reply-to",
    "sender",
    "resent-from",
    "resent-to",
    "resent-cc",
    "resent-sender",
)
# Crockford's base 32: no I, L, O, U; in ASCII order, so ids sort by time.
_ID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class IntakeOptions:
    """What the command line and the configuration tell the intake.

    ``sender`` is the ``-f``/``-r`` value (``""`` or ``"<>"`` for the null
    sender, ``None`` when not given). ``local_hostnames`` are the names that
    mean this machine (lower-cased here); ``None`` means ``localhost``, the
    kernel's node name (full and short) and ``hostname``. ``uid`` is the
    submitter (default: the real uid). ``queue_id`` and ``now`` exist for
    callers that choose them (tests, the SMTP listener).
    """

    __slots__ = (
        "aliases",
        "body_type",
        "catchall",
        "domain",
        "dot_ends_input",
        "dsn_envid",
        "dsn_notify",
        "dsn_ret",
        "extract_recipients",
        "full_name",
        "hostname",
        "local_hostnames",
        "max_header_bytes",
        "max_message_size",
        "now",
        "qualify_headers",
        "queue_id",
        "recipients",
        "rewrite_from_header",
        "rewrite_sender",
        "sender",
        "sender_from_header",
        "trace",
        "uid",
    )

    def copy(self) -> "IntakeOptions":
        """A shallow copy: what ``copy.copy`` makes, without its generic machinery.

        serve's commit processes make one per message from a template.
        """
        new = IntakeOptions.__new__(IntakeOptions)
        for name in IntakeOptions.__slots__:  # __init__ sets every one
            setattr(new, name, getattr(self, name))
        return new

    def __init__(
        self,
        *,
        extract_recipients: bool = False,
        dot_ends_input: bool = True,
        sender: str | None = None,
        full_name: str | None = None,
        body_type: str | None = None,
        dsn_notify: str | None = None,
        dsn_ret: str | None = None,
        dsn_envid: str | None = None,
        recipients: "Iterable[str] | None" = None,
        domain: str = "localhost",
        hostname: str = "localhost",
        local_hostnames: "Iterable[str] | None" = None,
        aliases: "Aliases | None" = None,
        catchall: str | None = None,
        sender_from_header: bool = False,
        rewrite_sender: str | None = None,
        rewrite_from_header: bool = False,
        qualify_headers: bool = False,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_message_size: int = 0,
        uid: int | None = None,
        queue_id: str | None = None,
        now: float | None = None,
        trace: "tuple[str, str, str] | None" = None,
    ) -> None:
        self.extract_recipients = extract_recipients
        self.dot_ends_input = dot_ends_input
        self.sender = sender
        self.full_name = full_name
        self.body_type = body_type
        self.dsn_notify = dsn_notify
        self.dsn_ret = dsn_ret
        self.dsn_envid = dsn_envid
        self.recipients: list[str] = list(recipients or ())
        self.domain = domain
        self.hostname = hostname
        if local_hostnames is None:
            node = os.uname().nodename
            local_hostnames = {"localhost", "localhost.localdomain", hostname, node}
            local_hostnames.add(node.split(".", 1)[0])
        self.local_hostnames = frozenset(n.lower().rstrip(".") for n in local_hostnames if n)
        self.aliases = aliases
        self.catchall = catchall
        self.sender_from_header = sender_from_header
        self.rewrite_sender = rewrite_sender
        self.rewrite_from_header = rewrite_from_header
        self.qualify_headers = qualify_headers
        self.max_header_bytes = max_header_bytes
        self.max_message_size = max_message_size
        self.uid = os.getuid() if uid is None else uid
        self.queue_id = queue_id
        self.now = now
        #: A message received over SMTP: (HELO name, client, protocol), e.g.
        #: ("app.example", "unknown [192.0.2.1]", "ESMTPS"), for the server's
        #: Received field (RFC 5321 4.4); ``None``: a local submission.
        self.trace = trace


def local_hostnames(hostname: str) -> frozenset[str]:
    """The names under which an address counts as this machine's (mutt writes root@<short name>).

    ``hostname`` is ``general.hostname``; the node name counts too, each also
    by its first label.
    """
    names = {"localhost", "localhost.localdomain"}
    for raw in (os.uname().nodename, hostname):
        if raw:
            name = raw.lower().rstrip(".")
            names.add(name)
            names.add(name.split(".", 1)[0])
    return frozenset(names)


def trace_word(text: str, limit: int = 255, extra: str = "") -> str:
    """A value for a Received field (a client's HELO name is hostile), made safe.

    Only ASCII letters, digits, ``.-_:[]`` and the characters of ``extra`` are
    kept — no CR, LF, space, parenthesis or ``;`` that could end the clause
    or forge another field — at most ``limit`` of them; ``unknown`` when
    nothing is left.
    """
    text = text[:limit]
    table = _TRACE_TABLES.get(extra)
    if table is None:
        table = _TRACE_TABLES[extra] = str.maketrans("", "", _TRACE_ALLOWED + extra)
    if text.translate(table):  # something that is not allowed: keep only the rest
        allowed = ".-_:[]" + extra
        text = "".join(c for c in text if c.isascii() and (c.isalnum() or c in allowed))
    return text.strip() or "unknown"


_TRACE_ALLOWED = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:[]"
#: For each ``extra``: a translation table that deletes every allowed character
#: (so a word made only of them translates to "").
_TRACE_TABLES: "dict[str, dict[int, int | None]]" = {}


def make_queue_id() -> str:
    """A new queue id: 16 characters of ``[0-9A-Z]``, sortable by time, unique.

    11 characters of microseconds since the epoch, then 25 bits of which 10
    come from the pid and 15 from ``os.urandom``: two processes would have to
    start a message in the same microsecond with the same low pid bits and
    draw the same random number to collide (and the queue creates files with
    ``O_EXCL`` anyway).
    """
    micros = time.time_ns() // 1000
    tail = ((os.getpid() & 0x3FF) << 15) | (int.from_bytes(os.urandom(2), "big") & 0x7FFF)
    n = (micros << 25) | tail
    chars = []
    for _ in range(16):
        chars.append(_ID_ALPHABET[n & 31])
        n >>= 5
    return "".join(reversed(chars))


# --------------------------------------------------------------------------- reading


def _lf(data: bytes) -> bytes:
    """CRLF and bare CR to LF: the internal form, turned into CRLF on the way out."""
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
        if b"\r" in data:  # a bare CR is rare: one search is cheaper than a copy
            data = data.replace(b"\r", b"\n")
    return data


class _Reader:
    """Chunks of the input with LF line ends, ending at EOF or (without -i) at a lone "."."""

    __slots__ = ("_at_line_start", "_done", "_dot", "_pending", "_size", "_src")

    def __init__(self, src: "BinaryIO", dot_ends_input: bool, size: int = CHUNK_SIZE) -> None:
        self._src = src
        self._dot = dot_ends_input
        self._size = size
        # Bytes that cannot be judged before the next chunk: a CR that may be
        # half of a CRLF, a "." at a line start that may be the whole line.
        self._pending = b""
        self._at_line_start = True
        self._done = False

    def read(self) -> bytes:
        """The next piece of the message, never empty before the end; ``b""`` at the end."""
        while not self._done:
            try:
                data = self._src.read(self._size)
            except OSError as exc:
                raise IOFailure(f"reading the message failed: {exc.strerror or exc}") from None
            if data is None:
                raise IOFailure("reading the message failed: standard input is non-blocking")
            if not data:
                return self._finish()
            if self._pending:
                data = self._pending + data
                self._pending = b""
            if data[-1:] == b"\r":
                self._pending = b"\r"
                data = data[:-1]
            out = _lf(data)
            if self._dot:
                if self._at_line_start and out[:2] == b".\n":
                    self._done = True
                    return b""
                cut = out.find(b"\n.\n")
                if cut >= 0:
                    self._done = True
                    self._pending = b""
                    self._at_line_start = True
                    return out[: cut + 1]
                if out[-2:] == b"\n." or (self._at_line_start and out == b"."):
                    self._pending = b"." + self._pending
                    out = out[:-1]
            if out:
                self._at_line_start = out[-1:] == b"\n"
                return out
        return b""

    def _finish(self) -> bytes:
        self._done = True
        out = _lf(self._pending)
        self._pending = b""
        if self._dot and self._at_line_start and out in (b".", b".\n"):
            return b""  # the terminating "." of a message that ends without a line end
        return out


class _Field:
    """One header field: its lower-case name and its lines as written (no line ends)."""

    __slots__ = ("lines", "name")

    def __init__(self, name: str, line: bytes) -> None:
        self.name = name
        self.lines = [line]

    def value(self) -> str:
        """The field body with folding kept as CRLF, decoded (undecodable bytes as surrogates)."""
        first = self.lines[0]
        raw = b"\r\n".join([first[first.index(b":") + 1 :], *self.lines[1:]])
        return raw.decode("utf-8", "surrogateescape")

    def set_value(self, value: str) -> None:
        first = self.lines[0]
        raw = first[: first.index(b":") + 1] + value.encode("utf-8", "surrogateescape")
        self.lines = raw.split(b"\r\n")

    def label(self) -> str:
        first = self.lines[0]
        return first[: first.index(b":")].decode("ascii").rstrip(" \t")


def _read_header_block(reader: _Reader, limit: int) -> tuple[list[_Field], bytes]:
    """The header fields, and what was read past the header block (the body's start)."""
    fields: list[_Field] = []
    buf = b""
    first = True
    used = 0  # octets of the header block before buf, for the limit
    while True:
        chunk = reader.read()
        buf = buf + chunk if buf else chunk
        pos = 0
        body: bytes | None = None
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            line = buf[pos:nl]
            if first:
                first = False
                if line[:5] == b"From ":
                    pos = nl + 1
                    continue  # the mbox separator line is no part of the message
            if not line:
                body = buf[nl + 1 :]
                break
            if not _add_line(fields, line):
                body = buf[pos:]
                break
            pos = nl + 1
        if used + pos > limit:
            raise _header_block_too_big(limit)
        if body is not None:
            return fields, body
        rest = buf[pos:]
        used += pos
        if not chunk:
            # End of input inside the header block: the last line has no line end.
            if not rest or (first and rest[:5] == b"From "):
                return fields, b""
            if not _add_line(fields, rest):
                return fields, rest
            if used + len(rest) > limit:
                raise _header_block_too_big(limit)
            return fields, b""
        if rest and not (first and b"From "[: len(rest)] == rest[:5]):
            if rest[:1] in (b" ", b"\t"):
                if not fields:
                    return fields, rest
            elif not could_be_field(rest):
                return fields, rest
        if used + len(rest) > limit:
            raise _header_block_too_big(limit)
        buf = rest


def _header_block_too_big(limit: int) -> DataError:
    return DataError(
        f"the header block is larger than {limit} octets"
        " (is the blank line between the headers and the body missing?)"
    )


def _add_line(fields: list[_Field], line: bytes) -> bool:
    """Add a header line to ``fields``; ``False`` when it is no header line (the body starts)."""
    if line[:1] in (b" ", b"\t"):
        if not fields:
            return False
        fields[-1].lines.append(line)
    else:
        colon = field_colon(line)
        if colon < 0:
            return False
        name = line[:colon].rstrip(b" \t").decode("ascii").lower()
        fields.append(_Field(name, line))
    if b"\0" in line:
        raise DataError(f"NUL byte in the header block, in {show(line.decode('latin-1'))}")
    return True


# --------------------------------------------------------------------------- addresses


def _address_key(address: str) -> str:
    local, domain = split_address(address)
    return local if domain is None else local + "@" + domain.lower()


def _is_local(domain: str | None, options: IntakeOptions) -> bool:
    return domain is None or domain.lower().rstrip(".") in options.local_hostnames


def _qualify(address: str, options: IntakeOptions) -> str:
    """A final address: a local name (bare or at this host) at ``domain``; others checked."""
    local, domain = split_address(address)
    if _is_local(domain, options):
        check_local_part(local)
        return check_mailbox(local + "@" + options.domain)
    return check_mailbox(address)


def _local_targets(local: str, options: IntakeOptions) -> list[str]:
    aliases = options.aliases
    if aliases is not None and local in aliases:
        return aliases.expand(local)
    catchall = options.catchall
    if catchall:
        if aliases is not None and split_address(catchall)[1] is None and catchall in aliases:
            return aliases.expand(catchall)
        return [catchall]
    return [local]


def _resolve(address: str, options: IntakeOptions) -> list[str]:
    """The final addresses of one addr-spec: aliases and qualification for local ones."""
    local, domain = split_address(address)
    if not _is_local(domain, options):
        return [check_mailbox(address)]
    check_local_part(local)
    return [_qualify(t, options) for t in _local_targets(local, options)]


def resolve_recipient(word: str, options: IntakeOptions) -> list[str]:
    """What one recipient word (``root``, ``a@x, b@y``, ``Name <a@x>``) is delivered to.

    The same resolution ``receive`` applies to argv recipients, for ``-bv``.
    """
    check_text(word, "recipient")
    found: list[str] = []
    seen: set[str] = set()
    for address in parse_address_list(word):
        for final in _resolve(address, options):
            key = _address_key(final)
            if key not in seen:
                seen.add(key)
                found.append(final)
    return found


#: ``_submitter`` of the uids seen: a long-running server reads the password
#: database once per uid, not once per message.
_SUBMITTERS: dict[int, tuple[str, str]] = {}


def _submitter(uid: int) -> tuple[str, str]:
    """Login name and full name of ``uid`` from the password database (never the environment)."""
    found = _SUBMITTERS.get(uid)
    if found is None:
        found = _SUBMITTERS[uid] = _look_up_submitter(uid)
    return found


def _look_up_submitter(uid: int) -> tuple[str, str]:
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        # A container's arbitrary uid has no passwd entry: the number stands in.
        return str(uid), ""
    login = entry.pw_name
    try:
        check_text(login, "login")
    except DataError:
        login = str(uid)
    name = entry.pw_gecos.split(",", 1)[0].strip()
    if "&" in name:
        # BSD gecos convention: "&" stands for the capitalised login name.
        name = name.replace("&", login[:1].upper() + login[1:])
    try:
        check_text(name, "full name")
    except DataError:
        name = ""  # chfn refuses such names; whatever put one there, leave it out
    return login, name


def _header_error(field: _Field, exc: DataError) -> DataError:
    return DataError(f"{field.label()} header: {exc}")


def _rewrite_addresses(field: _Field, new: "Callable[[str], str | None]") -> None:
    """Replace the addresses ``new`` has a replacement for; keep the rest as written."""
    value = field.value()
    spans = mailbox_spans(value)
    changed = False
    for address, start, end in reversed(spans):
        replacement = new(address)
        if replacement is not None and replacement != address:
            value = value[:start] + replacement + value[end:]
            changed = True
    if changed:
        field.set_value(value)


# --------------------------------------------------------------------------- receive


class _Checked:
    """The option values after checking, in the form the envelope wants."""

    __slots__ = ("body_type", "envid", "notify", "ret")

    def __init__(self, options: IntakeOptions) -> None:
        for what, value in (
            ("full name (-F)", options.full_name),
            ("sender (-f)", options.sender),
            ("catch-all address", options.catchall),
            ("rewrite sender address", options.rewrite_sender),
        ):
            if value is not None:
                check_text(value, what)
        body_type = options.body_type
        if body_type is not None:
            body_type = check_text(body_type, "-B value").upper()
            if body_type not in ("7BIT", "8BITMIME"):
                raise UsageError(f"-B {show(options.body_type or '')}: use 7BIT or 8BITMIME")
        self.body_type = body_type
        notify = options.dsn_notify
        if notify is not None:
            check_text(notify, "-N value")
            try:
                notify = check_notify(notify)
            except DataError:
                raise UsageError(
                    f"-N {show(notify)}: use NEVER or a list of SUCCESS, FAILURE, DELAY"
                ) from None
        self.notify = notify
        ret = options.dsn_ret
        if ret is not None:
            ret = check_text(ret, "-R value").upper()
            if ret not in ("FULL", "HDRS"):
                raise UsageError(f"-R {show(options.dsn_ret or '')}: use FULL or HDRS")
        self.ret = ret
        self.envid = check_envid(options.dsn_envid) if options.dsn_envid is not None else None
        check_text(options.hostname, "hostname")
        if not is_dot_atom(options.hostname):
            raise DataError(f"hostname {show(options.hostname)} is not a host name")
        check_text(options.domain, "domain")
        try:
            check_mailbox("postmaster@" + options.domain)
        except DataError:
            raise DataError(f"domain {show(options.domain)} is not a mail domain") from None


def _sender(options: IntakeOptions, fields: list[_Field], own: str) -> str:
    """The sender before masquerading: -f, else (when configured) From, else the uid's address."""
    given = options.sender
    if given is not None:
        if given in ("", "<>"):
            return ""
        found = parse_address_list(given)
        if len(found) != 1:
            raise DataError(f"sender {show(given)} is not one address")
        sender = _qualify_sender(found[0], options)
    else:
        sender = own
        if options.sender_from_header:
            for field in fields:
                if field.name == "from":
                    try:
                        found = parse_address_list(field.value())
                    except DataError as exc:
                        raise _header_error(field, exc) from None
                    if found:
                        sender = _qualify_sender(found[0], options)
                    break
    return sender


def _qualify_sender(address: str, options: IntakeOptions) -> str:
    """A sender as given, checked; only a bare name is qualified (with ``domain``)."""
    local, domain = split_address(address)
    if domain is None:
        check_local_part(local)
        return check_mailbox(local + "@" + options.domain)
    return check_mailbox(address)


class _Recipients:
    """The envelope recipients in order, deduplicated by final address."""

    __slots__ = ("found", "notify", "options", "seen")

    def __init__(self, options: IntakeOptions, notify: str | None) -> None:
        self.options = options
        self.notify = notify
        self.found: list[Recipient] = []
        self.seen: set[str] = set()

    def add(self, address: str) -> None:
        for final in _resolve(address, self.options):
            key = _address_key(final)
            if key not in self.seen:
                self.seen.add(key)
                self.found.append(Recipient(final, address, self.notify))

    def add_words(self, words: list[str]) -> None:
        for word in words:
            check_text(word, "recipient")
            for address in parse_address_list(word):
                self.add(address)

    def add_headers(self, fields: list[_Field]) -> None:
        """-t: To, Cc and Bcc, or their Resent- forms when the message has any Resent- field."""
        names = _RECIPIENT_FIELDS
        if any(f.name.startswith("resent-") for f in fields):
            names = _RESENT_RECIPIENT_FIELDS
        for field in fields:
            if field.name in names:
                try:
                    for address in parse_address_list(field.value()):
                        self.add(address)
                except DataError as exc:
                    raise _header_error(field, exc) from None


def _write(out: "BinaryIO", data: bytes) -> None:
    try:
        written = out.write(data)
        # A raw file may take less than everything; a buffered one never does.
        while written is not None and written < len(data):
            data = data[written:]
            written = out.write(data)
    except OSError as exc:
        raise IOFailure(f"writing the spool file failed: {exc.strerror or exc}") from None


def receive(src: "BinaryIO", out: "BinaryIO", options: IntakeOptions) -> Envelope:
    """Read a message from ``src`` and write the prelude and the message to ``out``.

    ``out`` must be seekable: the prelude is written first and written again in
    place once the size and the 8-bit flag are known. Returns the envelope with
    ``message_offset``, ``size``, ``eightbit`` and ``body_type`` set. Raises
    ``DataError``, ``UsageError`` (no recipients, bad -B/-N/-R values) or
    ``IOFailure``; on error the caller removes ``out``.
    """
    now = time.time() if options.now is None else options.now
    queue_id = check_queue_id(options.queue_id) if options.queue_id else make_queue_id()
    checked = _Checked(options)
    try:
        start = out.tell()
    except (OSError, ValueError):
        raise IOFailure("the spool file must be a seekable file") from None
    if not options.recipients and not options.extract_recipients:
        raise UsageError(NO_RECIPIENTS)
    login, gecos = _submitter(options.uid)
    own = check_mailbox(quote_local_part(login) + "@" + options.domain)
    # argv recipients and -f are checked before a byte of the message is read.
    recipients = _Recipients(options, checked.notify)
    recipients.add_words(options.recipients)
    # -f does not depend on the header: its check now is its value later.
    given = _sender(options, [], own) if options.sender is not None else None

    reader = _Reader(src, options.dot_ends_input)
    fields, body = _read_header_block(reader, options.max_header_bytes)

    if options.extract_recipients:
        recipients.add_headers(fields)
    if not recipients.found:
        raise UsageError(NO_RECIPIENTS)
    author = given if given is not None else _sender(options, fields, own)
    sender = author
    masquerade = None
    if options.rewrite_sender:
        masquerade = _qualify_sender(options.rewrite_sender, options)
        if sender:
            # The null sender stays null: masquerading a bounce could make it bounce back.
            sender = masquerade

    if options.qualify_headers:
        domain = options.domain

        def qualified(address: str) -> str | None:
            local, host = split_address(address)
            if _is_local(host, options) and find_control(local) is None:
                return local + "@" + domain
            return None

        for field in fields:
            if field.name in _QUALIFIED_FIELDS:
                # contextlib.suppress would cost an import on the hot path.
                try:  # noqa: SIM105
                    _rewrite_addresses(field, qualified)
                except DataError:
                    pass  # a field we cannot parse is left exactly as written
    if options.rewrite_from_header and masquerade:
        for field in fields:
            if field.name == "from":
                try:
                    _rewrite_addresses(field, lambda _address: masquerade)
                except DataError as exc:
                    raise _header_error(field, exc) from None

    present = {f.name for f in fields}
    date = format_date(now)
    if options.trace is None:
        received = (
            f"Received: by {options.hostname} (pysendmail, from userid {options.uid})\r\n"
            f"\tid {queue_id}; {date}"
        )
    else:
        helo, client, protocol = options.trace
        received = (
            f"Received: from {trace_word(helo)} ({trace_word(client, extra=' ')})\r\n"
            f"\tby {options.hostname} (pysendmail) with {trace_word(protocol)} id {queue_id};\r\n"
            f"\t{date}"
        )
    lines = [received.encode()]
    lines.extend(b"\r\n".join(f.lines) for f in fields if f.name not in _REMOVED_FIELDS)
    if "message-id" not in present:
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))  # digits only: no locale
        lines.append(f"Message-ID: <{stamp}.{queue_id}@{options.hostname}>".encode())
    if "date" not in present:
        lines.append(b"Date: " + date.encode("ascii"))
    if "from" not in present:
        if options.rewrite_from_header and masquerade:
            author = masquerade
        elif not author:
            author = own
        name = options.full_name if options.full_name is not None else gecos
        lines.append(b"From: " + mailbox(name, author).encode("utf-8"))
    head = b"\r\n".join(lines) + b"\r\n\r\n"

    smtputf8 = needs_smtputf8(sender) or any(needs_smtputf8(r.address) for r in recipients.found)
    envelope = Envelope(
        queue_id=queue_id,
        sender=sender,
        recipients=recipients.found,
        dsn_ret=checked.ret,
        dsn_envid=checked.envid,
        body_type=checked.body_type,
        smtputf8=smtputf8,
        submitter_uid=options.uid,
        submitter_login=login,
        arrival=now,
    )
    prelude = envelope.to_bytes()
    if len(prelude) > MAX_PRELUDE:
        raise DataError(
            f"too many recipients ({len(recipients.found)}): the envelope would exceed"
            f" {MAX_PRELUDE} octets; send the message in parts"
        )
    _write(out, prelude)

    limit = options.max_message_size
    size = len(head)
    eightbit = not head.isascii()
    _write(out, head)
    last = b"\n"
    if not body:
        body = reader.read()
    while body:
        data = body.replace(b"\n", b"\r\n")
        size += len(data)
        if limit and size > limit:
            raise DataError(f"the message is larger than the size limit of {limit} octets")
        if not eightbit and not data.isascii():
            eightbit = True
        _write(out, data)
        last = body[-1:]
        body = reader.read()
    if last != b"\n":
        _write(out, b"\r\n")
        size += 2

    envelope.size = size
    envelope.eightbit = eightbit
    if eightbit:
        envelope.body_type = "8BITMIME"
    final = envelope.to_bytes(checked=True)  # the same length (Envelope.to_bytes)
    try:
        end = out.tell()
        out.seek(start)
        _write(out, final)
        out.seek(end)
    except (OSError, ValueError) as exc:
        raise IOFailure(f"writing the spool file failed: {exc}") from None
    envelope.message_offset = start + len(prelude)
    return envelope
