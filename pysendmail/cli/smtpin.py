"""``sendmail -bs``: an SMTP session on stdin/stdout that feeds the same intake.

Some programs speak SMTP to sendmail through a pipe instead of passing argv
(Postfix runs ``smtpd -S`` for this, nullmailer ``nullmailer-smtpd``). Each
message accepted here goes through exactly the path of ``sendmail -i -f SENDER
RCPT...``: intake (headers completed, aliases and qualification), then the
queue (queue mode) or the relay (direct mode). 250 is sent only when the
message is durable in the queue, or the relay accepted it.

Direct mode cannot express "some recipients accepted, others refused" after
DATA in SMTP: when the relay refuses only some, the reply is 250 and its text
names the refused recipients (each is also logged), because a 4xx/5xx would make
the client send the message again to those who already have it.

Addresses are checked when they arrive: a MAIL or RCPT path that is not one
RFC 5321 mailbox (or a bare local name) gets 553 at once, so one bad recipient
never fails the whole message at DATA. Parameters other than those announced
(SIZE, BODY, SMTPUTF8 on MAIL; none on RCPT) get 555, and a SIZE above the
limit 552, as Postfix answers.

The DATA ends only at ``CRLF . CRLF``: a "." line ended by a bare LF, or a "."
that merely starts a read chunk inside a long line, is message content. A
looser rule would let text inside one message end it early and have its rest
read as SMTP commands (the "SMTP smuggling" of CVE-2023-51764), and a local
program may be passing on mail written by someone else.

It never reads more than a bounded line (1000 octets for commands) into memory,
and the DATA is spooled to an anonymous file, never held whole in memory.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING

from pysendmail import __version__, errors

if TYPE_CHECKING:
    from pysendmail.cli import Streams
    from pysendmail.cli.argv import Invocation
    from pysendmail.config import Settings
    from pysendmail.message.intake import IntakeOptions

MAX_COMMAND = 1000  # RFC 5321 4.5.3.1.4: 512 octets, with room for ESMTP parameters
MAX_RECIPIENTS = 1000
#: How much of a DATA line is read at a time (a longer line arrives in pieces).
DATA_CHUNK = 65536
#: The MAIL parameters that the EHLO reply announces (RFC 1870, 6152, 6531).
_MAIL_PARAMS = ("SIZE", "BODY", "SMTPUTF8")


class _Session:
    def __init__(self, inv: Invocation, io: Streams, settings: Settings) -> None:
        self.inv = inv
        self.io = io
        self.settings = settings
        self.out = getattr(io.stdout, "buffer", None)
        self.reset()
        self.helo: str | None = None
        self._options: IntakeOptions | None = None

    def reset(self) -> None:
        self.sender: str | None = None
        self.recipients: list[str] = []

    def reply(self, text: str) -> None:
        data = (text + "\r\n").encode("utf-8", "replace")
        if self.out is not None:
            self.out.write(data)
            self.out.flush()
        else:
            self.io.stdout.write(text + "\r\n")
            self.io.stdout.flush()

    def options(self) -> IntakeOptions:
        """The intake options of this session (aliases loaded once), for checking recipients."""
        if self._options is None:
            from pysendmail.cli import sendmail

            self._options = sendmail.intake_options(self.inv, self.settings, self.io)
        return self._options

    def readline(self) -> bytes | None:
        line = self.io.stdin.readline(MAX_COMMAND + 2)
        if not line:
            return None
        if not line.endswith(b"\n"):
            # Too long: swallow the rest of the line, then refuse it.
            while line and not line.endswith(b"\n"):
                line = self.io.stdin.readline(MAX_COMMAND + 2)
            return b""
        return line.rstrip(b"\r\n")


def _path_arg(arg: str, keyword: str) -> tuple[str, list[str]] | None:
    """Parse ``FROM:<addr> PARAMS`` / ``TO:<addr> PARAMS``; None when malformed."""
    if not arg.upper().startswith(keyword):
        return None
    rest = arg[len(keyword) :].strip()
    if not rest.startswith("<"):
        return None
    end = rest.find(">")
    if end < 0:
        return None
    return rest[1:end], rest[end + 1 :].split()


def _check_sender(path: str) -> str | None:
    """Why ``path`` cannot be a MAIL FROM path (None: it can); ``""`` is the null sender."""
    from pysendmail.message.addresses import check_local_part, check_mailbox, split_address

    if not path:
        return None
    try:
        if split_address(path)[1] is None:
            check_local_part(path)  # a bare name, qualified by the intake
        else:
            check_mailbox(path)
    except errors.PysendmailError as exc:
        return str(exc)
    return None


def _check_recipient(s: _Session, path: str) -> str | None:
    """Why ``path`` cannot be a RCPT TO path (None: it can), after aliases and qualification."""
    from pysendmail.message.addresses import parse_address_list
    from pysendmail.message.intake import resolve_recipient

    try:
        if parse_address_list(path) != [path]:
            return f"<{path}> is not one address"
        resolve_recipient(path, s.options())
    except errors.PysendmailError as exc:
        return str(exc)
    return None


def _mail_params_problem(params: list[str], max_size: int) -> str | None:
    """The reply for MAIL parameters we did not announce or cannot take; None when fine."""
    for param in params:
        key, _, value = param.partition("=")
        key = key.upper()
        if key not in _MAIL_PARAMS:
            return f"555 5.5.4 unsupported parameter {param[:40]}"
        if key == "SIZE":
            if not value.isdigit() or len(value) > 20:
                return "501 5.5.4 SIZE needs a number"
            if max_size and int(value) > max_size:
                return f"552 5.3.4 the message is larger than {max_size} octets"
        elif key == "BODY" and value.upper() not in ("7BIT", "8BITMIME"):
            return "501 5.5.4 BODY must be 7BIT or 8BITMIME"
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())[:400]


def serve_stdio(inv: Invocation, io: Streams) -> int:
    from pysendmail.cli import sendmail

    settings = sendmail.load_settings(inv, io)
    s = _Session(inv, io, settings)
    hostname = settings.general.hostname
    s.reply(f"220 {hostname} ESMTP pysendmail {__version__}")
    max_size = settings.general.max_message_size
    while True:
        raw = s.readline()
        if raw is None:
            return 0
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            s.reply("500 5.5.2 command is not valid UTF-8")
            continue
        if not line or not line.isprintable():
            s.reply("500 5.5.2 line too long or has control characters")
            continue
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        if verb in ("EHLO", "HELO"):
            s.helo = arg.strip() or "unknown"
            s.reset()
            if verb == "HELO":
                s.reply(f"250 {hostname}")
            else:
                size = f"250-SIZE {max_size}" if max_size else "250-SIZE"
                s.reply(f"250-{hostname}")
                for ext in ("PIPELINING", size[4:], "8BITMIME", "ENHANCEDSTATUSCODES"):
                    s.reply(f"250-{ext}")
                s.reply("250 SMTPUTF8")
        elif verb == "MAIL":
            parsed = _path_arg(arg, "FROM:")
            if s.sender is not None:
                s.reply("503 5.5.1 nested MAIL command")
            elif parsed is None:
                s.reply("501 5.5.4 syntax: MAIL FROM:<address>")
            elif (problem := _mail_params_problem(parsed[1], max_size)) is not None:
                s.reply(problem)
            elif (why := _check_sender(parsed[0])) is not None:
                s.reply(f"553 5.1.7 {_one_line(why)}")
            else:
                s.sender = parsed[0]
                s.reply("250 2.1.0 sender ok")
        elif verb == "RCPT":
            parsed = _path_arg(arg, "TO:")
            if s.sender is None:
                s.reply("503 5.5.1 need MAIL first")
            elif parsed is None or not parsed[0]:
                s.reply("501 5.5.4 syntax: RCPT TO:<address>")
            elif parsed[1]:
                s.reply(f"555 5.5.4 unsupported parameter {parsed[1][0][:40]}")
            elif len(s.recipients) >= MAX_RECIPIENTS:
                s.reply("452 4.5.3 too many recipients")
            elif (why := _check_recipient(s, parsed[0])) is not None:
                s.reply(f"553 5.1.3 {_one_line(why)}")
            else:
                s.recipients.append(parsed[0])
                s.reply("250 2.1.5 recipient ok")
        elif verb == "DATA":
            if s.sender is None or not s.recipients:
                s.reply("503 5.5.1 need MAIL and RCPT first")
                continue
            s.reply("354 end data with <CR><LF>.<CR><LF>")
            s.reply(_data(s))
            s.reset()
        elif verb == "RSET":
            s.reset()
            s.reply("250 2.0.0 ok")
        elif verb == "NOOP":
            s.reply("250 2.0.0 ok")
        elif verb == "VRFY":
            s.reply("252 2.5.2 cannot verify, but will try to deliver")
        elif verb == "QUIT":
            s.reply(f"221 2.0.0 {hostname} closing")
            return 0
        else:
            s.reply("502 5.5.2 command not implemented")


def _read_data(s: _Session, spool: IO[bytes]) -> bool:
    """Copy DATA lines (un-dot-stuffed) into ``spool``; False when the input ended early.

    Only a line that starts after a CRLF and is exactly ``.`` CRLF ends the
    data, and only a dot at the start of a line is unstuffed: a long line comes
    in several reads, and a read that starts inside a line is plain content.
    """
    stdin = s.io.stdin
    at_line_start = True
    after_crlf = True  # the CRLF that ended the DATA command
    pending_cr = False  # the last read ended in CR: its LF may start the next one
    while True:
        line = stdin.readline(DATA_CHUNK)
        if not line:
            return False
        if at_line_start and line[:1] == b".":
            if line == b".\r\n" and after_crlf:
                return True
            if line not in (b".\r\n", b".\n"):
                line = line[1:]
        spool.write(line)
        at_line_start = line.endswith(b"\n")
        if at_line_start:
            after_crlf = line.endswith(b"\r\n") or (line == b"\n" and pending_cr)
        pending_cr = line.endswith(b"\r")


def _data(s: _Session) -> str:
    from pysendmail.cli import Streams, sendmail
    from pysendmail.message.intake import make_queue_id

    spool = sendmail.private_spool(s.io.environ)
    with spool:
        if not _read_data(s, spool):
            return "451 4.3.0 input ended inside DATA; nothing was kept"
        spool.seek(0)
        inv = s.inv
        inv.sender = s.sender
        inv.recipients = list(s.recipients)
        inv.extract_recipients = False
        inv.dot_ends_input = False
        io = Streams(spool, s.io.stdout, s.io.stderr, s.io.environ)
        try:
            options = sendmail.intake_options(inv, s.settings, io)
            options.queue_id = make_queue_id()
            envelope, report = sendmail.submit_from(inv, io, s.settings, options)
        except errors.PysendmailError as exc:
            temporary = exc.exit_status in (
                errors.EX_TEMPFAIL,
                errors.EX_CANTCREAT,
                errors.EX_IOERR,
            )
            code = "451 4.3.0" if temporary else "554 5.6.0"
            return f"{code} {' '.join(str(exc).split())}"
    if report is None or envelope is None:
        return f"250 2.0.0 Ok: queued as {options.queue_id}"
    from pysendmail.relay import SENT

    sendmail.report_status(inv, s.io, s.settings, envelope, report)
    failed = [r for r in report.recipients if r.status != SENT]
    if not failed:
        return f"250 2.0.0 Ok: relayed as {envelope.queue_id}"
    if len(failed) == len(report.recipients):
        first = failed[0].reply
        code = "451 4.4.0" if failed[0].status == "deferred" else "554 5.0.0"
        return f"{code} {' '.join(first.split()) or 'relay refused the message'}"
    names = "; ".join(f"<{r.address}> {' '.join(r.reply.split())}" for r in failed)
    return f"250 2.0.0 {envelope.queue_id} accepted; not delivered to: {names}"
