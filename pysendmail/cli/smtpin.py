"""``sendmail -bs``: an SMTP session on stdin/stdout, served by the sidecar's SMTP handler.

Some programs speak SMTP to sendmail through a pipe instead of passing argv
(Postfix runs ``smtpd -S`` for this, nullmailer ``nullmailer-smtpd``). The
session is the very protocol of ``pysendmail serve`` (``pysendmail.server``:
aiosmtpd with our handler), over stdin and stdout (``server.stdio``); only
the sidecar's access rules are left out, as they are for ``sendmail``
itself. Each message accepted goes through exactly the path of ``sendmail
-i -f SENDER RCPT...``: intake (headers completed, aliases and
qualification), then the queue (queue mode) or the relay (direct mode). 250
is sent only when the message is durable in the queue, or the relay
accepted it.

Direct mode cannot express "some recipients accepted, others refused" after
DATA in SMTP: when the relay refuses only some, the reply is 250 and its text
names the refused recipients (each is also logged), because a 4xx/5xx would make
the client send the message again to those who already have it.

What the shared protocol guarantees (``server.listener``): addresses are
checked when they arrive (a MAIL or RCPT path that is not one RFC 5321
mailbox in angle brackets, or a bare local name, gets 553 or 501 at once, so
one bad recipient never fails the whole message at DATA); parameters other
than those announced get 555, a SIZE above the limit 552; a line with a
control character or a byte that is not UTF-8 gets 500, an unknown command
502. The DATA ends only at ``CRLF . CRLF``: a "." line ended by a bare LF, or
a "." inside a long line, is message content (no "SMTP smuggling",
CVE-2023-51764). End of input inside DATA is 451 and nothing is kept.

It never reads more than a bounded line into memory; the DATA is kept in
memory up to 256 KiB, beyond that in an unnamed file in ``$TMPDIR``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, BinaryIO

from pysendmail import __version__, errors

if TYPE_CHECKING:
    from pysendmail.cli import Streams
    from pysendmail.cli.argv import Invocation
    from pysendmail.config import Settings
    from pysendmail.server.listener import Submission


class _TextOut:
    """A binary writer over a text stream (stdout replaced by a StringIO in a test)."""

    def __init__(self, stream: object) -> None:
        self._stream = stream

    def write(self, data: bytes) -> int:
        self._stream.write(data.decode("utf-8", "replace"))  # type: ignore[attr-defined]
        return len(data)

    def flush(self) -> None:
        self._stream.flush()  # type: ignore[attr-defined]


class _Submitter:
    """The handler's ``submit`` for ``-bs``: the sendmail submission path, queue or relay."""

    def __init__(self, inv: Invocation, io: Streams, settings: Settings) -> None:
        self.inv = inv
        self.io = io
        self.settings = settings

    def __call__(self, submission: Submission) -> str:
        from pysendmail.cli import Streams, sendmail
        from pysendmail.message.intake import make_queue_id

        inv = self.inv
        inv.sender = submission.sender
        inv.recipients = list(submission.recipients)
        inv.extract_recipients = False
        inv.dot_ends_input = False
        io = Streams(submission.spool.reader(), self.io.stdout, self.io.stderr, self.io.environ)
        try:
            options = sendmail.intake_options(inv, self.settings, io)
            options.queue_id = make_queue_id()
            envelope, report = sendmail.submit_from(inv, io, self.settings, options)
        except errors.PysendmailError as exc:
            temporary = exc.exit_status in (
                errors.EX_TEMPFAIL,
                errors.EX_CANTCREAT,
                errors.EX_IOERR,
            )
            code = "451 4.3.0" if temporary else "554 5.6.0"
            return f"{code} {_one_line(str(exc))}"
        if report is None or envelope is None:
            return f"250 2.0.0 Ok: queued as {options.queue_id}"
        from pysendmail.relay import SENT

        sendmail.report_status(inv, self.io, self.settings, envelope, report)
        failed = [r for r in report.recipients if r.status != SENT]
        if not failed:
            return f"250 2.0.0 Ok: relayed as {envelope.queue_id}"
        if len(failed) == len(report.recipients):
            first = failed[0].reply
            code = "451 4.4.0" if failed[0].status == "deferred" else "554 5.0.0"
            return f"{code} {_one_line(first) or 'relay refused the message'}"
        names = "; ".join(f"<{r.address}> {_one_line(r.reply)}" for r in failed)
        return f"250 2.0.0 {envelope.queue_id} accepted; not delivered to: {names}"


def _one_line(text: str) -> str:
    return " ".join(text.split())[:400]


def _spool_dir(environ: dict[str, str]) -> str:
    import os

    tmpdir = environ.get("TMPDIR") or "/tmp"  # noqa: S108 - unnamed files only (O_TMPFILE)
    return tmpdir if os.path.isdir(tmpdir) else "/tmp"  # noqa: S108


def serve_stdio(inv: Invocation, io: Streams) -> int:
    """Serve one SMTP session on ``io.stdin``/``io.stdout``; 0 when it ended (QUIT or EOF)."""
    import asyncio
    import logging

    from pysendmail.cli import sendmail
    from pysendmail.server.listener import Handler
    from pysendmail.server.policy import Policy
    from pysendmail.server.stdio import InlineExecutor, run_session

    settings = sendmail.load_settings(inv, io)
    policy = Policy.local(settings, sendmail.load_aliases(settings, io.environ))
    logger = sendmail.logger_for(settings, inv, io)
    # aiosmtpd logs every command at info and client mistakes as warnings.
    mail_log = logging.getLogger("mail.log")
    mail_log.addHandler(logging.NullHandler())
    mail_log.propagate = False
    handler = Handler(
        policy,
        _Submitter(inv, io, settings),
        InlineExecutor(),
        spool_dir=_spool_dir(io.environ),
        log=logger.line,
        ident=f"ESMTP pysendmail {__version__}",
    )
    out: BinaryIO = getattr(io.stdout, "buffer", None) or _TextOut(io.stdout)  # type: ignore[assignment]
    asyncio.run(run_session(handler, io.stdin, out))
    return 0
