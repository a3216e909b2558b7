"""The modes of the sendmail command, once argv has been parsed.

deliver (-bm, the default): intake reads the message into a spool file, then
  direct mode relays it now (exit 0 only after the relay's 250 to the end of
  DATA), and queue mode commits it to the queue (exit 0 only once it is durable).
aliases (-bi, -I, newaliases): check the aliases file, report errors by line.
verify (-bv): show how each recipient would be routed; send nothing.
list-queue (-bp, mailq), run-queue (-q): the queue tools.
smtp (-bs): an SMTP session on stdin/stdout feeding the same intake.

Queue mode (``submit``): the intake writes the message straight into a queue
file (``Queue.begin``), which is committed (fsync, link into place, fsync the
folder) before the command exits 0. A user who does not own the queue writes
into the maildrop instead, and the runner picks the file up. Exit statuses:
0 queued; 73 no file could be created in ``tmp/`` or ``maildrop/`` (the line
says to run ``pysendmail queue init``); 74 an I/O error while writing or
syncing; 75 the disk is full, or SIGTERM, SIGINT or SIGHUP arrived before the
commit (the partial file is removed). It must never exit 0 before ``commit``
returned, nor leave a partial file behind when it does not exit 0.

Hot path: queue mode must not import smtp, ssl, email, asyncio, logging or
pydantic, nor ``cli.queuecmd`` (the listing tools); each branch imports what it
needs when it is taken. Signal handling uses ``_signal``, the C module, because
``import signal`` pulls in ``enum``.
"""

import os

from pysendmail import errors

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from types import FrameType
    from typing import Any, BinaryIO

    from pysendmail.cli import Streams
    from pysendmail.cli.argv import Invocation
    from pysendmail.config import Settings
    from pysendmail.log import Logger
    from pysendmail.message.aliases import Aliases
    from pysendmail.message.envelope import Envelope
    from pysendmail.message.intake import IntakeOptions
    from pysendmail.queue import Pending, Queue
    from pysendmail.relay import DeliveryReport
else:
    # The C module: ``import signal`` would load enum on the hot path.
    import _signal


def run(inv: "Invocation", io: "Streams") -> int:
    from pysendmail.cli import argv as a

    mode = inv.mode
    if mode == a.MODE_NOTHING:
        return 0
    if mode == a.MODE_DELIVER:
        return deliver(inv, io)
    if mode == a.MODE_ALIASES:
        return newaliases(inv, io)
    if mode == a.MODE_VERIFY:
        return verify(inv, io)
    if mode == a.MODE_LIST_QUEUE:
        from pysendmail.cli import queuecmd

        return queuecmd.list_queue(load_settings(inv, io), io)
    if mode == a.MODE_RUN_QUEUE:
        from pysendmail.cli import queuecmd

        return queuecmd.run_queue(load_settings(inv, io), io, verbose=inv.verbose)
    if mode == a.MODE_SMTP:
        from pysendmail.cli import smtpin

        return smtpin.serve_stdio(inv, io)
    raise errors.UsageError(f"mode {mode} is not supported")


def load_settings(inv: "Invocation", io: "Streams") -> "Settings":
    from pysendmail.config import load_settings as load

    return load(inv.config_path, io.environ)


def logger_for(settings: "Settings", inv: "Invocation", io: "Streams") -> "Logger":
    from pysendmail.log import Logger

    return Logger(
        settings.log.target,
        settings.log.format,
        settings.log.facility,
        verbose=inv.verbose > 0,
        stream=io.stderr,
    )


def _aliases_cache_name(path: str) -> str:
    from pysendmail.config.snapshot import snapshot_name

    return snapshot_name(path).replace(".snapshot", ".aliases")


def load_aliases(settings: "Settings", environ: "dict[str, str]") -> "Aliases":
    """The aliases: compiled by newaliases when that is current, else parsed from the file."""
    import marshal

    from pysendmail.config.snapshot import file_identity, read_cache, snapshot_dirs
    from pysendmail.message.aliases import Aliases

    path = settings.general.aliases_file
    current = file_identity(path)
    # No file (the usual case in containers): no compiled form can match, so
    # the cache is not even opened.
    raw = read_cache(snapshot_dirs(environ), _aliases_cache_name(path)) if current else None
    if raw is not None:
        try:
            # Safe: read_cache only returns files that root or we wrote.
            cached_path, identity, data = marshal.loads(raw)  # noqa: S302
            if cached_path == path and identity == current:
                return Aliases.from_bytes(data)
        except (ValueError, TypeError, EOFError, errors.PysendmailError):
            pass
    return Aliases.load(path)


def compile_aliases(path: str, aliases: "Aliases", environ: "dict[str, str]") -> "str | None":
    """Store the compiled aliases where sendmail looks first; its path, or None."""
    import marshal

    from pysendmail.config.snapshot import file_identity, snapshot_dirs, write_snapshot

    payload = marshal.dumps((path, file_identity(path), aliases.to_bytes()))
    return write_snapshot(snapshot_dirs(environ), _aliases_cache_name(path), payload)


def intake_options(inv: "Invocation", settings: "Settings", io: "Streams") -> "IntakeOptions":
    from pysendmail.message.intake import IntakeOptions, local_hostnames

    general = settings.general
    rewrite = settings.rewrite
    return IntakeOptions(
        extract_recipients=inv.extract_recipients,
        dot_ends_input=inv.dot_ends_input,
        sender=inv.sender,
        full_name=inv.full_name,
        body_type=inv.body_type,
        dsn_notify=inv.dsn_notify,
        dsn_ret=inv.dsn_ret,
        dsn_envid=inv.dsn_envid,
        recipients=list(inv.recipients),
        domain=general.domain,
        hostname=general.hostname,
        local_hostnames=local_hostnames(general.hostname),
        aliases=load_aliases(settings, io.environ),
        catchall=general.catchall,
        sender_from_header=general.sender_from_header,
        rewrite_sender=rewrite.sender,
        rewrite_from_header=rewrite.from_header,
        qualify_headers=rewrite.qualify_headers,
        max_message_size=general.max_message_size,
    )


# --------------------------------------------------------------------------- deliver


def deliver(inv: "Invocation", io: "Streams") -> int:
    if not inv.recipients and not inv.extract_recipients:
        # Checked before anything is read: Postfix's wording, and no header
        # recipient counts without -t.
        raise errors.UsageError(
            "no recipients: give them on the command line or use -t to take them from the headers"
        )
    settings = load_settings(inv, io)
    options = intake_options(inv, settings, io)
    envelope, report = submit_from(inv, io, settings, options)
    if report is None or envelope is None:
        return 0
    return report_status(inv, io, settings, envelope, report)


def submit_from(
    inv: "Invocation", io: "Streams", settings: "Settings", options: "IntakeOptions"
) -> "tuple[Envelope | None, DeliveryReport | None]":
    """Take the message on ``io.stdin`` through intake into the queue or to the relay.

    Returns the envelope and, in direct mode, the relay's report; raises a
    PysendmailError when the message could not be accepted at all.
    """
    mode = settings.general.mode
    if mode in ("direct", "direct-then-queue"):
        with private_spool(io.environ) as spool:
            envelope = receive(inv, io, options, spool)
            spool.flush()
            spool.seek(envelope.message_offset)
            if mode == "direct":
                return envelope, relay_now(inv, io, settings, envelope, spool)
            report = relay_within(inv, io, settings, envelope, spool)
            queue_deferred(settings, envelope, report, spool)
            return envelope, report
    status = submit(inv, io, settings, options)
    if status != 0:
        raise errors.TemporaryFailure("the message could not be queued")
    return None, None


# --------------------------------------------------------------------------- queue mode

_SIGNAL_NAMES = {1: "SIGHUP", 2: "SIGINT", 15: "SIGTERM"}


class _Interrupted(BaseException):
    """A signal asked us to stop before the commit (a BaseException, like KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _SignalGuard:
    """While the message is written, SIGTERM, SIGINT and SIGHUP abort it cleanly.

    The handler raises ``_Interrupted`` so the ``with`` blocks unwind and the
    temporary file is removed. Where raising could skip that clean-up (while
    ``begin`` creates the file and until its ``with`` block owns it, and while
    an abort is removing it) the signal is only noted and raised a moment
    later. Once the commit has begun, a signal is noted and the commit
    finishes: a message on its way to disk is worth keeping, and the exit
    status then tells the truth (0, queued). A signal that the caller ignores
    (``nohup``) stays ignored; the handlers in force before are restored on the
    way out.
    """

    def __init__(self) -> None:
        self.pending: Pending | None = None
        self.previous: dict[int, Any] = {}
        self.deferred: int | None = None
        self.hold = False

    def _handler(self, signum: int, frame: "FrameType | None") -> None:
        if self.deferred is not None:
            return  # already stopping: let the clean-up run
        self.deferred = signum
        p = self.pending
        if self.hold or (p is not None and (p.committing or p.aborting)):
            return
        raise _Interrupted(signum)

    def release(self) -> None:
        """End a stretch where signals were only noted; raise for one that came meanwhile."""
        self.hold = False
        if self.deferred is not None:
            raise _Interrupted(self.deferred)

    def __enter__(self) -> "_SignalGuard":
        for signum in _SIGNAL_NAMES:
            try:
                if _signal.getsignal(signum) == _signal.SIG_IGN:
                    continue
                self.previous[signum] = _signal.signal(signum, self._handler)
            except ValueError:
                break  # not the main thread: signals are not ours to handle
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            _signal.signal(signum, handler)
        self.previous.clear()


def submit(inv: "Invocation", io: "Streams", settings: "Settings", options: "IntakeOptions") -> int:
    """Queue mode: take the message on stdin into the queue; 0 only once it is durable.

    Raises a ``PysendmailError`` (one line, one status) when it is not queued.
    """
    from pysendmail.message import intake
    from pysendmail.queue import Queue

    queue = Queue(settings.general.queue_dir)
    if not options.queue_id:
        options.queue_id = intake.make_queue_id()
    guard = _SignalGuard()
    try:
        with guard:
            guard.hold = True
            pending = queue.begin(options.queue_id)
            with pending:
                guard.pending = pending
                guard.release()
                try:
                    intake.receive(io.stdin, pending.file, options)
                except errors.IOFailure as exc:
                    raise _write_failure(exc, queue) from None
                pending.commit()
    except _Interrupted as exc:
        name = _SIGNAL_NAMES.get(exc.signum, f"signal {exc.signum}")
        raise errors.TemporaryFailure(
            f"stopped by {name} while reading the message; nothing was queued"
        ) from None
    return 0


def _write_failure(exc: errors.IOFailure, queue: "Queue") -> errors.PysendmailError:
    # The intake reports a failed write as IOFailure; a full disk is worth
    # retrying (75), a failing one is not (74). The OSError is its context.
    cause = exc.__context__
    if isinstance(cause, OSError) and cause.errno in (28, 122):  # ENOSPC, EDQUOT
        return errors.TemporaryFailure(
            f"{queue.root}: {cause.strerror}; nothing was queued, try again later"
        )
    return exc


class DirectTimeout(errors.TemporaryFailure):
    """direct-then-queue: the relay did not finish within general.direct_timeout."""


def relay_within(
    inv: "Invocation",
    io: "Streams",
    settings: "Settings",
    envelope: "Envelope",
    spool: "BinaryIO",
) -> "DeliveryReport":
    """Relay now, but give up after ``general.direct_timeout`` seconds in all.

    A timer signal ends the attempt wherever it is (connect, TLS, a reply), so
    the bound holds however many round trips remain. Every recipient not yet
    judged is then deferred, and the caller queues the message for them.
    """
    import signal
    import time

    from pysendmail.relay import DEFERRED, DeliveryReport, RecipientResult

    def expired(signum: int, frame: object) -> None:
        raise DirectTimeout(f"the relay did not answer within {settings.general.direct_timeout}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, max(0.001, float(settings.general.direct_timeout)))
    try:
        return relay_now(inv, io, settings, envelope, spool)
    except DirectTimeout as exc:
        report = DeliveryReport(time.monotonic() - float(settings.general.direct_timeout))
        report.error = exc
        report.recipients = [
            RecipientResult(r.address, DEFERRED, str(exc)) for r in envelope.recipients
        ]
        return report
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def queue_deferred(
    settings: "Settings", envelope: "Envelope", report: "DeliveryReport", spool: "BinaryIO"
) -> None:
    """Queue the message for the recipients the relay deferred, and only for them.

    Recipients already accepted are left out of the queued envelope, so the
    runner can never send to them again (queue invariant 3), whatever user
    submitted the message (the maildrop has no state to record them in).
    """
    from pysendmail.message.envelope import Envelope
    from pysendmail.queue import Queue
    from pysendmail.relay import DEFERRED

    deferred = {r.address for r in report.recipients if r.status == DEFERRED}
    if not deferred:
        return
    queued = Envelope(
        queue_id=envelope.queue_id,
        sender=envelope.sender,
        recipients=[r for r in envelope.recipients if r.address in deferred],
        dsn_ret=envelope.dsn_ret,
        dsn_envid=envelope.dsn_envid,
        body_type=envelope.body_type,
        smtputf8=envelope.smtputf8,
        submitter_uid=envelope.submitter_uid,
        submitter_login=envelope.submitter_login,
        arrival=envelope.arrival,
        size=envelope.size,
        eightbit=envelope.eightbit,
    )
    prelude = queued.to_bytes()
    with Queue(settings.general.queue_dir).begin(queued.queue_id) as pending:
        pending.file.write(prelude)
        spool.seek(envelope.message_offset)
        while chunk := spool.read(1 << 16):
            pending.file.write(chunk)
        pending.commit()
    for result in report.recipients:
        if result.status == DEFERRED:
            result.status = QUEUED


#: A recipient that direct-then-queue handed to the queue: success for the caller.
QUEUED = "queued"


def private_spool(environ: "dict[str, str]") -> "BinaryIO":
    """An anonymous file for direct mode: it vanishes when closed, whatever happens."""
    tmpdir = environ.get("TMPDIR") or "/tmp"  # noqa: S108 - O_TMPFILE/unlinked, mode 0600
    if not os.path.isdir(tmpdir):
        tmpdir = "/tmp"  # noqa: S108
    flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmpdir, flags | os.O_TMPFILE, 0o600)
    except (AttributeError, OSError):
        name = os.path.join(tmpdir, ".pysendmail-" + os.urandom(9).hex())
        fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600)
        os.unlink(name)
    return os.fdopen(fd, "w+b")


def receive(
    inv: "Invocation", io: "Streams", options: "IntakeOptions", out: "BinaryIO"
) -> "Envelope":
    from pysendmail.message import intake

    return intake.receive(io.stdin, out, options)


def relay_now(
    inv: "Invocation",
    io: "Streams",
    settings: "Settings",
    envelope: "Envelope",
    spool: "BinaryIO",
) -> "DeliveryReport":
    from pysendmail.config.secrets import resolve_password
    from pysendmail.relay import Relay

    def password(relay: object) -> "str | None":
        return resolve_password(relay, settings)  # type: ignore[arg-type]

    debug = io.stderr if inv.verbose else None
    with Relay(
        settings.relays,  # type: ignore[arg-type]
        helo=settings.general.hostname,
        password=password,
        debug_output=debug,
    ) as relay:
        return relay.send(envelope, spool)


def report_status(
    inv: "Invocation",
    io: "Streams",
    settings: "Settings",
    envelope: "Envelope",
    report: "DeliveryReport",
) -> int:
    """Log each recipient, name the failures on stderr, and choose the exit status."""
    from pysendmail.log import delivery_fields
    from pysendmail.relay import BOUNCED, SENT

    log = logger_for(settings, inv, io)
    originals = {r.address: r.original for r in envelope.recipients}
    failed = []
    for result in report.recipients:
        fields = delivery_fields(
            result.address,
            originals.get(result.address),
            report.relay,
            report.delay,
            1,
            result.status,
            result.reply,
        )
        ok = result.status in (SENT, QUEUED)
        log.event(envelope.queue_id, "info" if ok else "warning", **fields)
        if not ok:
            failed.append(result)
    if not failed:
        return 0
    prog = os.path.basename(inv.prog) or "sendmail"
    err = report.error
    if isinstance(err, errors.SMTPAuthenticationError | errors.SMTPSecurityError):
        status = errors.EX_NOPERM
    elif isinstance(err, errors.ConfigError):
        status = errors.EX_CONFIG
    elif any(r.status == BOUNCED for r in failed):
        status = errors.EX_UNAVAILABLE
    else:
        status = errors.EX_TEMPFAIL
    if err is not None and len(failed) == len(report.recipients):
        # The session failed as a whole (no relay reachable, TLS, login, the
        # message refused after DATA): one line for the message, not one per
        # recipient repeating the same reason.
        _stderr(io, f"{prog}: {_session_failure(status, report.relay, err)}")
        return status
    # The relay judged recipients one by one: name each refused one with its
    # reply; recipients with the same reply share a line.
    groups: dict[tuple[str, str], list[str]] = {}
    for result in failed:
        verb = "refused" if result.status == BOUNCED else "deferred"
        groups.setdefault((verb, result.reply), []).append(f"<{result.address}>")
    for (verb, reply), names in groups.items():
        shown = ", ".join(names[:_NAMES_SHOWN])
        if len(names) > _NAMES_SHOWN:
            shown += f" and {len(names) - _NAMES_SHOWN} more"
        _stderr(io, f"{prog}: {shown}: {verb} by {report.relay}: {reply or 'no reply'}")
    return status


#: How many recipients one stderr line names before it says "and N more".
_NAMES_SHOWN = 10


def _session_failure(status: int, relay: str, err: "errors.PysendmailError") -> str:
    """One line that says why nothing was sent and what to do about it."""
    reason = " ".join(str(err).split()) or type(err).__name__
    if status == errors.EX_NOPERM:
        return (
            f"not sent: {relay}: {reason}; check the user and password of this [[relay]]"
            " in the configuration"
        )
    if status == errors.EX_CONFIG:
        return f"not sent: {reason}"
    if status == errors.EX_TEMPFAIL:
        return f"not sent, try again later: {reason}"
    return f"not sent: {relay}: {reason}"


def _stderr(io: "Streams", line: str) -> None:
    from pysendmail.log import printable

    try:
        io.stderr.write(printable(line, 4000) + "\n")
        io.stderr.flush()
    except (OSError, ValueError):
        pass


# --------------------------------------------------------------------------- other modes


def newaliases(inv: "Invocation", io: "Streams") -> int:
    """Check the aliases file and report every bad line; exit 65 when there is one."""
    from pysendmail.message.aliases import Aliases

    settings = load_settings(inv, io)
    path = settings.general.aliases_file
    if not os.path.exists(path):
        domain = settings.general.domain
        io.stdout.write(f"{path}: no aliases file; bare names are qualified with {domain}\n")
        return 0
    aliases = Aliases.load(path)
    for line in aliases.errors:
        _stderr(io, line)
    if aliases.errors:
        _stderr(io, f"{path}: {len(aliases.errors)} error(s); fix them and run newaliases again")
        return errors.EX_DATAERR
    compiled = compile_aliases(path, aliases, io.environ)
    where = f"; compiled into {compiled}" if compiled else "; not compiled (no writable cache)"
    io.stdout.write(f"{path}: {len(aliases)} aliases, no errors{where}\n")
    return 0


def verify(inv: "Invocation", io: "Streams") -> int:
    """``-bv``: how each recipient would be routed; nothing is read from stdin or sent."""
    from pysendmail.message.intake import resolve_recipient
    from pysendmail.relay import routes_for

    settings = load_settings(inv, io)
    options = intake_options(inv, settings, io)
    sender = options.sender
    status = 0
    for word in inv.recipients:
        try:
            targets = resolve_recipient(word, options)
        except errors.PysendmailError as exc:
            io.stdout.write(f"{word}: undeliverable: {exc}\n")
            status = exc.exit_status
            continue
        for target in targets:
            via = routes_for(sender or "", settings.relays)  # type: ignore[arg-type]
            route = ", ".join(f"{r.host}:{r.port} ({r.tls})" for r in via) or "no relay"
            shown = word if target == word else f"{word} -> {target}"
            io.stdout.write(f"{shown}: deliverable via {route}\n")
    return status
