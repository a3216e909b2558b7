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

MAX_COMMAND = 1000  # RFC 5321 4.5.3.1.4: 512 octets, with room for ESMTP parameters
MAX_RECIPIENTS = 1000


class _Session:
    def __init__(self, inv: Invocation, io: Streams, settings: Settings) -> None:
        self.inv = inv
        self.io = io
        self.settings = settings
        self.out = getattr(io.stdout, "buffer", None)
        self.reset()
        self.helo: str | None = None

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
            else:
                s.sender = parsed[0]
                s.reply("250 2.1.0 sender ok")
        elif verb == "RCPT":
            parsed = _path_arg(arg, "TO:")
            if s.sender is None:
                s.reply("503 5.5.1 need MAIL first")
            elif parsed is None or not parsed[0]:
                s.reply("501 5.5.4 syntax: RCPT TO:<address>")
            elif len(s.recipients) >= MAX_RECIPIENTS:
                s.reply("452 4.5.3 too many recipients")
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
    """Copy DATA lines (un-dot-stuffed) into ``spool``; False when the input ended early."""
    stdin = s.io.stdin
    while True:
        line = stdin.readline(65536)
        if not line:
            return False
        if line in (b".\r\n", b".\n"):
            return True
        if line.startswith(b"."):
            line = line[1:]
        spool.write(line)


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
