"""The SMTP side of the sidecar: an aiosmtpd protocol and the handler that feeds the queue.

One ``SMTPSession`` (an ``aiosmtpd.smtp.SMTP``) serves one connection, or one
``sendmail -bs`` session on stdin/stdout. aiosmtpd does the command loop,
EHLO, STARTTLS and the AUTH exchange; this module changes what it must not
do its own way:

* connect: a client outside ``allowed_networks``, or one too many, gets
  ``554``/``421`` and is disconnected before the greeting;
* ``MAIL FROM:<>`` (the null sender of bounces) is accepted; aiosmtpd refuses it;
* DATA streams into a spool (memory up to ``SPOOL_MEMORY``, then an unnamed
  file in the queue's ``tmp/``) instead of holding the whole message in
  memory; lines of any length pass (the intake keeps them verbatim); the size
  limit answers ``552`` after the final dot, and nothing is queued;
* end of input: commands already received are still answered (a client may
  pipeline a whole session and close its side); end of input inside DATA is
  ``451`` and nothing is kept;
* AUTH PLAIN and LOGIN check the users' password hashes in a thread (scrypt
  takes tens of milliseconds); three failures end the session.

The ``Handler`` hooks decide: ``handle_MAIL`` (rate limit, sender rules),
``handle_RCPT`` (aliases resolved, recipient domains, the recipient limit),
``handle_DATA`` (hands the spool to ``submit`` in a thread pool, so one slow
disk does not stall every client). ``submit`` is the queue commit for
``serve`` and the sendmail submission path for ``-bs``; it returns the reply,
and a ``250`` only once the message is durable (or relayed).

What this module must never do: reply 250 to DATA before ``submit`` returned
one; keep a spool file after the transaction; read an unbounded command or
AUTH line into memory; echo a password or an AUTH blob into a log line.

SECURITY: every byte from the client is hostile. Addresses are checked by the
intake's own functions (control characters refused); every reply that quotes
client input goes through ``printable`` and is cut short; the connection is
refused before a single command is read when the address is not allowed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, AnyStr, BinaryIO

import aiosmtpd.smtp as _aiosmtpd_smtp
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Session, syntax
from aiosmtpd.smtp import Envelope as _AiosmtpdEnvelope

from pysendmail import errors
from pysendmail.log import printable
from pysendmail.server.policy import Policy, RateLimiter, client_ip, client_key
from pysendmail.server.replies import reply_text

if TYPE_CHECKING:
    from pysendmail.server.metrics import Metrics

#: How much of a message is kept in memory before the spool becomes a file.
SPOOL_MEMORY = 256 * 1024
#: The longest piece of a line read at once (also the command line buffer).
READ_LIMIT = 65536
#: Failed AUTH attempts after which a session is ended.
MAX_AUTH_FAILURES = 3
#: Unrecognized commands after which a session is ended.
MAX_UNKNOWN_COMMANDS = 10
#: How aiosmtpd's address parser spells the null reverse-path for us.
NULL_PATH = "<>"
#: A reply that ``push`` does not send (the session ended without a word).
_SILENT = "\x00"


def _log_only_when_wanted(sanitize_and_log: Any) -> Any:
    """aiosmtpd's ``sanitized_log``, skipped when its logger would drop the record anyway.

    aiosmtpd passes every command line through ``sanitized_log(log.debug, ...)``
    and ``sanitized_log(log.info, ...)``, which escape the bytes before the
    logger looks at its level; serve keeps aiosmtpd's logger at CRITICAL
    (``server.main._quiet_libraries``), so that work, twice per command, was
    thrown away (about 5% of the event loop's CPU under load).
    """
    levels = {"debug": 10, "info": 20, "warning": 30, "error": 40}

    def sanitized_log(func: Any, msg: Any, *args: Any, **kwargs: Any) -> None:
        logger = getattr(func, "__self__", None)
        level = levels.get(getattr(func, "__name__", ""))
        if level is not None and logger is not None and not logger.isEnabledFor(level):
            return
        sanitize_and_log(func, msg, *args, **kwargs)

    sanitized_log.wrapped = sanitize_and_log  # type: ignore[attr-defined]
    return sanitized_log


_SANITIZED_LOG = getattr(_aiosmtpd_smtp, "sanitized_log", None)
if _SANITIZED_LOG is not None and not hasattr(_SANITIZED_LOG, "wrapped"):
    _aiosmtpd_smtp.sanitized_log = _log_only_when_wanted(_SANITIZED_LOG)


OK_SENDER = "250 2.1.0 Ok"
OK_RECIPIENT = "250 2.1.5 Ok"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"


class Spool:
    """The message data of one transaction: in memory, then in an unnamed file.

    ``directory`` is the queue's ``tmp/``: the only place a read-only container
    may write. The file has no name (``O_TMPFILE``; where that is missing, a
    name that is removed at once), so nothing is left behind whatever happens.
    """

    __slots__ = ("_buffer", "_directory", "_file", "size")

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._buffer = bytearray()
        self._file: BinaryIO | None = None
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._buffer += data
        if len(self._buffer) > SPOOL_MEMORY:
            self._file = _unnamed_file(self._directory)
            self._file.write(self._buffer)
            self._buffer = bytearray()

    def reader(self) -> BinaryIO:
        """The data from its start, as a binary file (the spool may not be written again)."""
        import io

        if self._file is None:
            return io.BytesIO(bytes(self._buffer))
        self._file.flush()
        self._file.seek(0)
        return self._file

    def memory(self) -> bytes | None:
        """The data when it is all in memory (``None`` once it went to a file)."""
        return None if self._file is not None else bytes(self._buffer)

    def close(self) -> None:
        self._buffer = bytearray()
        if self._file is not None:
            self._file.close()
            self._file = None


def _unnamed_file(directory: str) -> BinaryIO:
    flags = os.O_RDWR | os.O_CLOEXEC
    try:
        fd = os.open(directory, flags | os.O_TMPFILE, 0o600)
    except (AttributeError, OSError):
        name = os.path.join(directory, ".spool-" + os.urandom(8).hex())
        fd = os.open(name, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.unlink(name)
    return os.fdopen(fd, "w+b")


class Envelope(_AiosmtpdEnvelope):
    """aiosmtpd's envelope, with what the queue needs besides."""

    def __init__(self) -> None:
        super().__init__()
        self.body_type: str | None = None
        self.spool: Spool | None = None


class Submission:
    """One message to hand on: the envelope from MAIL and RCPT, the data, who sent it.

    ``sender`` is ``""`` for the null sender. ``submit`` must close ``spool``
    (it runs in a worker thread that may outlive the session).
    """

    __slots__ = ("body_type", "client", "helo", "login", "recipients", "sender", "spool", "trace")

    def __init__(
        self,
        sender: str,
        recipients: list[str],
        spool: Spool,
        body_type: str | None,
        client: str,
        helo: str | None,
        login: str | None,
        trace: tuple[str, str, str] | None = None,
    ) -> None:
        self.sender = sender
        self.recipients = recipients
        self.spool = spool
        self.body_type = body_type
        self.client = client
        self.helo = helo
        self.login = login
        #: (HELO name, client, protocol) for the Received field; ``None`` for ``-bs``.
        self.trace = trace


#: Takes a submission, returns the DATA reply ("250 ..." only when durable or relayed).
Submit = Callable[[Submission], str]
#: Takes a submission, returns the future of its DATA reply, or ``None`` when not taken.
GroupSubmit = Callable[[Submission], "asyncio.Future[str] | None"]


def trace_of(session: Session, login: str | None) -> tuple[str, str, str] | None:
    """(HELO name, client, protocol) of a network session, for its Received field.

    The protocol is RFC 3848's: ``SMTP`` after HELO, ``ESMTP`` after EHLO, then
    ``S`` under TLS and ``A`` once authenticated. ``None`` for ``sendmail -bs``
    (stdin), whose messages get the local form, from the user id.
    """
    peer = session.peer
    ip = client_ip(peer)
    if ip is not None:
        client = f"unknown [{ip}]"
    elif isinstance(peer, str):
        client = "unix"
    else:
        return None
    protocol = "ESMTP" if session.extended_smtp else "SMTP"
    if session.ssl is not None:
        protocol += "S"
    if login:
        protocol += "A"
    return session.host_name or "unknown", client, protocol


def describe_peer(peer: object) -> str:
    """Postfix's ``client=`` value: ``unknown[192.0.2.1]``, ``unix`` or ``stdin``."""
    ip = client_ip(peer)
    if ip is not None:
        return f"unknown[{ip}]"
    return "unix" if isinstance(peer, str) else "stdin"


class Registry:
    """The open sessions of a server, and whether it is shutting down."""

    def __init__(self) -> None:
        self.sessions: set[SMTPSession] = set()
        self.closing = False

    def __len__(self) -> int:
        return len(self.sessions)


class Handler:
    """The aiosmtpd handler: the decisions at MAIL, RCPT, DATA and AUTH.

    ``policy`` may be replaced at any time (a reload); each hook reads it once.
    """

    def __init__(
        self,
        policy: Policy,
        submit: Submit,
        executor: Executor,
        *,
        spool_dir: str,
        log: Callable[[str, str], None],
        metrics: Metrics | None = None,
        verify_executor: Executor | None = None,
        registry: Registry | None = None,
        ident: str = "ESMTP pysendmail",
    ) -> None:
        self.policy = policy
        self.submit = submit
        self.executor = executor
        #: When set: takes a submission whose data is in memory and returns the
        #: future of its reply (``None``: not taken, use ``submit`` in ``executor``).
        self.group_submit: GroupSubmit | None = None
        # Not "auth_...": aiosmtpd takes every handler attribute of that name
        # for an AUTH mechanism.
        self.verify_executor = verify_executor or executor
        self.spool_dir = spool_dir
        self.log = log
        self.metrics = metrics
        self.registry = registry if registry is not None else Registry()
        self.limiter = RateLimiter(policy.per_minute)
        self.ident = ident

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy
        self.limiter.per_minute = policy.per_minute

    def _count(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected(reason)

    # -- sessions ------------------------------------------------------------

    def protocol(self, loop: asyncio.AbstractEventLoop) -> SMTPSession:
        """A new ``SMTPSession`` with the current policy (the listeners' protocol factory)."""
        policy = self.policy
        return SMTPSession(
            self,
            hostname=policy.hostname,
            ident=self.ident,
            data_size_limit=policy.max_message_size or None,
            enable_SMTPUTF8=True,
            decode_data=False,
            tls_context=policy.tls_context,
            require_starttls=policy.require_tls,
            timeout=float(policy.timeout),
            auth_required=policy.require_auth,
            auth_require_tls=True,
            loop=loop,
        )

    def check_connect(self, peer: object) -> str | None:
        """The reply that refuses a new client, or None to let it in."""
        policy = self.policy
        if self.registry.closing:
            return SHUTTING_DOWN
        if not policy.allows_peer(peer):
            self._count("network")
            self.log(
                f"reject: connect from {describe_peer(peer)}: not in allowed_networks", "warning"
            )
            ip = client_ip(peer)
            return f"554 5.7.1 {ip} is not allowed to send mail here"
        if len(self.registry) >= policy.max_connections:
            self._count("connections")
            self.log(
                f"reject: connect from {describe_peer(peer)}: too many connections "
                f"(max_connections = {policy.max_connections})",
                "warning",
            )
            return "421 4.7.0 Too many connections, try again later"
        return None

    # -- aiosmtpd hooks ------------------------------------------------------

    async def handle_EHLO(
        self,
        server: SMTPSession,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        extensions = [r for r in responses[1:] if not r[4:].upper().startswith(("HELP", "AUTH"))]
        if len(self.policy.users) and any(r[4:].upper().startswith("AUTH") for r in responses):
            extensions.append("250-AUTH LOGIN PLAIN")
        extensions += ["250-PIPELINING", "250-ENHANCEDSTATUSCODES"]
        last = extensions.pop()
        return [responses[0], *extensions, "250 " + last[4:]]

    async def handle_AUTH(
        self, server: SMTPSession, session: Session, envelope: Envelope, args: list[str]
    ) -> object:
        if not len(self.policy.users):
            return "503 5.5.1 AUTH is not available here"
        if len(args) > 0 and args[0].upper() not in ("PLAIN", "LOGIN"):
            return "504 5.5.4 Unrecognized authentication type"
        return MISSING

    async def auth_PLAIN(self, server: SMTPSession, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            decoded = await _b64_argument(server, args[1])
            if decoded is None:
                return AuthResult(success=False, handled=True)
            blob = decoded
        assert isinstance(blob, bytes)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await server.push("501 5.5.2 Cannot split the AUTH PLAIN value")
            return AuthResult(success=False, handled=True)
        return await self._check_login(server, "PLAIN", parts[1], parts[2])

    async def auth_LOGIN(self, server: SMTPSession, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await server.challenge_auth(SMTP.AuthLoginUsernameChallenge)
            if login is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            decoded = await _b64_argument(server, args[1])
            if decoded is None:
                return AuthResult(success=False, handled=True)
            login = decoded
        password = await server.challenge_auth(SMTP.AuthLoginPasswordChallenge)
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        assert isinstance(login, bytes) and isinstance(password, bytes)
        return await self._check_login(server, "LOGIN", login, password)

    async def _check_login(
        self, server: SMTPSession, mechanism: str, login: bytes, password: bytes
    ) -> AuthResult:
        users = self.policy.users
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self.verify_executor, users.check, login, password)
        session = server.session
        client = describe_peer(session.peer if session is not None else None)
        name = printable(login.decode("utf-8", "replace"), 100)
        if ok:
            self.log(f"{client}: sasl_method={mechanism}, sasl_username={name}", "info")
            server.login = name
            return AuthResult(success=True, auth_data=name)
        server.auth_failures += 1
        self._count("auth")
        self.log(f"warning: {client}: SASL {mechanism} authentication failed", "warning")
        if server.auth_failures >= MAX_AUTH_FAILURES:
            await server.push("421 4.7.0 Too many failed authentications, goodbye")
            server.end_session()
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False)

    async def handle_MAIL(
        self,
        server: SMTPSession,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        policy = self.policy
        if self.registry.closing:
            server.end_after_reply()
            return SHUTTING_DOWN
        if not self.limiter.allows(client_key(session.peer), time.monotonic()):
            self._count("rate")
            self.log(
                f"reject: MAIL from {describe_peer(session.peer)}: more than "
                f"{policy.per_minute} messages a minute",
                "warning",
            )
            server.end_after_reply()
            return "421 4.7.0 Too many messages from you, try again later"
        sender = "" if address == NULL_PATH else address
        if sender:
            try:
                qualified = _check_sender(sender, policy.settings.general.domain)
            except errors.DataError as exc:
                return f"553 5.1.7 Bad sender address: {reply_text(exc)}"
        else:
            qualified = ""
        if not policy.allows_sender(qualified):
            self._count("sender")
            self.log(
                f"reject: MAIL from {describe_peer(session.peer)}: "
                f"sender <{printable(qualified, 300)}> is not in allowed_senders",
                "warning",
            )
            return f"553 5.7.1 <{reply_text(qualified)}>: Sender address not allowed"
        body_type = None
        for option in mail_options:
            key, _, value = option.partition("=")
            if key.upper() == "BODY":
                body_type = value.upper()
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.body_type = body_type
        return OK_SENDER

    async def handle_RCPT(
        self,
        server: SMTPSession,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        from pysendmail.message.intake import resolve_recipient

        policy = self.policy
        if address == NULL_PATH:
            return "501 5.1.3 Bad recipient address syntax"
        if len(envelope.rcpt_tos) >= policy.max_recipients:
            self._count("recipients")
            return "452 4.5.3 Too many recipients"
        try:
            finals = resolve_recipient(address, policy.recipient_options())
        except errors.PysendmailError as exc:
            return f"553 5.1.3 Bad recipient address: {reply_text(exc)}"
        if not finals:
            return f"550 5.1.1 <{reply_text(address)}>: Recipient address has no destination"
        for final in finals:
            if not policy.allows_recipient(final):
                self._count("relay")
                self.log(
                    f"reject: RCPT from {describe_peer(session.peer)}: "
                    f"<{printable(final, 300)}>: Relay access denied",
                    "warning",
                )
                return f"554 5.7.1 <{reply_text(address)}>: Relay access denied"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return OK_RECIPIENT

    async def handle_DATA(self, server: SMTPSession, session: Session, envelope: Envelope) -> str:
        spool = envelope.spool
        assert spool is not None and envelope.mail_from is not None
        envelope.spool = None
        sender = "" if envelope.mail_from == NULL_PATH else envelope.mail_from
        submission = Submission(
            sender,
            list(envelope.rcpt_tos),
            spool,
            envelope.body_type,
            describe_peer(session.peer),
            session.host_name,
            server.login,
            trace_of(session, server.login),
        )
        future = self.group_submit(submission) if self.group_submit is not None else None
        if future is not None:
            # The group committer took the data (and closed the spool); the
            # future ends with 250 only after the batch's directory fsync.
            reply = await asyncio.shield(future)
        else:
            loop = asyncio.get_running_loop()
            # The worker owns the spool from here: it closes it, even if this
            # session is gone before the commit returns.
            reply = await loop.run_in_executor(
                self.executor, _submit_guarded, self.submit, submission, self.log
            )
        if reply.startswith("250"):
            self.limiter.record(client_key(session.peer), time.monotonic())
        return reply


def _submit_guarded(submit: Submit, submission: Submission, log: Callable[[str, str], None]) -> str:
    try:
        return submit(submission)
    except Exception as exc:
        # A bug of ours: the client hears "try again", never 250.
        log(f"{submission.client}: internal error: {type(exc).__name__}: {exc}", "error")
        return "451 4.3.0 Temporary server error, try again later"
    finally:
        submission.spool.close()


async def _b64_argument(server: SMTPSession, text: str) -> bytes | None:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        await server.push("501 5.5.2 Cannot decode base64")
        return None


def _split_path(text: str) -> tuple[str, str] | None:
    """``<...>`` at the start of ``text``: (inside, rest); a ``>`` inside quotes does not end it."""
    if not text.startswith("<"):
        return None
    quoted = escaped = False
    for i in range(1, len(text)):
        c = text[i]
        if escaped:
            escaped = False
        elif quoted and c == "\\":
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == ">" and not quoted:
            return text[1:i], text[i + 1 :]
    return None


# Cached: clients send the same few MAIL FROM and RCPT TO paths again and again.
@functools.lru_cache(maxsize=4096)
def parse_path(arg: str) -> tuple[str | None, str | None]:
    """aiosmtpd's ``_getaddr`` contract, strict (see ``SMTPSession._getaddr``)."""
    from pysendmail.message.addresses import parse_address_list

    text = arg.lstrip()
    if not text.startswith("<"):
        return "", None  # no angle brackets: a syntax error (501)
    split = _split_path(text)
    if split is None:
        return None, None  # "<" without its ">": a malformed address (553)
    inside, rest = split
    if rest and not rest[0].isspace():
        return "", None
    if inside == "":
        return NULL_PATH, rest
    if inside.startswith("@"):
        # An obsolete source route (@a,@b:user@c): RFC 5321 says to ignore it.
        _, colon, inside = inside.partition(":")
        if not colon:
            return None, None
    try:
        if parse_address_list(inside) != [inside]:
            return None, None  # more than one address, or not an address at all
    except errors.DataError:
        return None, None
    return inside, rest


def _clean_argument(arg: str) -> bool:
    """No control character (C0, DEL, C1) and no undecodable byte (a lone surrogate).

    ``str.isprintable`` is false for both: control characters are category Cc
    and the surrogates that stand for undecodable bytes are Cs.
    """
    return arg.isprintable()


class _Commands(dict[str, Any]):
    """aiosmtpd's command table, looked up through ``get``: checked, and 502 for the unknown.

    aiosmtpd answers an unknown verb with 500 and passes any argument on,
    control characters and undecodable bytes included. Here an unknown verb is
    ``502 5.5.2`` (as Postfix says), and an argument with a control character
    or a byte that is not UTF-8 is ``500 5.5.2`` before any command sees it.
    """

    def __init__(self, methods: dict[str, Any], session: SMTPSession) -> None:
        super().__init__(methods)
        self._session = session
        self._wrapped: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        wrapped = self._wrapped.get(key)
        if wrapped is not None:
            return wrapped
        method = super().get(key)
        session = self._session
        if method is None:
            return session.unknown_command

        @functools.wraps(method)
        async def checked(arg: str | None) -> None:
            if arg is not None and not _clean_argument(arg):
                await session.push("500 5.5.2 Error: control characters or bad UTF-8 in the line")
                return
            await method(arg)

        self._wrapped[key] = checked
        return checked


# Cached (a refused address raises, and is never kept).
@functools.lru_cache(maxsize=4096)
def _check_sender(address: str, domain: str) -> str:
    """A MAIL FROM address checked as ``sendmail -f`` is; a bare name qualified with ``domain``."""
    from pysendmail.message.addresses import (
        check_local_part,
        check_mailbox,
        check_text,
        parse_address_list,
        split_address,
    )

    check_text(address, "sender")
    found = parse_address_list(address)
    if len(found) != 1:
        raise errors.DataError("not one address")
    local, host = split_address(found[0])
    if host is None:
        check_local_part(local)
        return check_mailbox(local + "@" + domain)
    return check_mailbox(found[0])


class SMTPSession(SMTP):
    """aiosmtpd's SMTP protocol with the changes listed in the module docstring."""

    line_length_limit = READ_LIMIT

    def __init__(self, handler: Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.handler = handler
        self.login: str | None = None
        self.auth_failures = 0
        self.in_data = False
        self._refused = False
        self._registered = False
        self._ended = False
        self._unknown = 0
        self._smtp_methods = _Commands(self._smtp_methods, self)
        self._idle_deadline = 0.0

    # -- the idle timeout ------------------------------------------------------

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd cancels its timer and makes a new one for every command;
        # under load the cancelled timers pile up in the event loop's heap.
        # Here a command only moves the deadline; the one timer, when it
        # fires early, waits for the rest (``_idle_check``).
        deadline = self.loop.time() + (duration or self._timeout_duration)
        self._idle_deadline = deadline
        handle = self._timeout_handle
        if handle is None or handle.cancelled() or handle.when() > deadline:
            if handle is not None:
                handle.cancel()
            self._timeout_handle = self.loop.call_at(deadline, self._idle_check)

    def _idle_check(self) -> None:
        deadline = self._idle_deadline
        if deadline > self.loop.time():
            self._timeout_handle = self.loop.call_at(deadline, self._idle_check)
            return
        self._timeout_cb()  # type: ignore[no-untyped-call]

    async def unknown_command(self, arg: str | None) -> None:
        self._unknown += 1
        if self._unknown > MAX_UNKNOWN_COMMANDS:
            await self.push("421 4.7.0 Too many unrecognized commands, goodbye")
            self.end_session()
            return
        await self.push("502 5.5.2 Error: command not recognized")

    # -- connection ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None and not self._registered:
            # A new connection (not the TLS layer after STARTTLS): refuse it now,
            # before the greeting, if it may not talk to us.
            refusal = self.handler.check_connect(transport.get_extra_info("peername"))
            if refusal is not None:
                self._refused = True
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(refusal.encode("ascii") + b"\r\n")
                transport.close()
                return
            self._registered = True
            self.handler.registry.sessions.add(self)
            if self.handler.metrics is not None:
                self.handler.metrics.connections = len(self.handler.registry)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._registered:
            self._registered = False
            registry = self.handler.registry
            registry.sessions.discard(self)
            if self.handler.metrics is not None:
                self.handler.metrics.connections = len(registry)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        # aiosmtpd drops the session at once, with whatever the client sent
        # before closing its side unanswered. Instead the reader ends, the
        # commands already received are answered, and the session ends when the
        # reader runs dry (handle_exception below).
        assert self.session is not None
        reader = getattr(self, "_stream_reader", None)
        if reader is not None:
            reader.feed_eof()
        return self.session.ssl is None and not getattr(self, "_over_ssl", False)

    @property
    def in_transaction(self) -> bool:
        """Between MAIL and the reply to DATA: a shutdown lets it finish."""
        envelope = self.envelope
        return self.in_data or (envelope is not None and envelope.mail_from is not None)

    def end_session(self) -> None:
        """Close the connection now; the command loop stops at its next turn."""
        self._ended = True
        transport = self.transport
        if transport is None:
            return
        self.transport = None
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        transport.close()

    def end_after_reply(self) -> None:
        """Close the connection once the reply being prepared has been sent."""
        asyncio.get_running_loop().call_soon(self.end_session)

    def say_goodbye(self, reply: str) -> None:
        """Send ``reply`` (a 421) and close, whatever the session is doing."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(reply.encode("ascii") + b"\r\n")
        self.end_session()

    async def push(self, status: AnyStr) -> None:
        if status == _SILENT or self._ended:
            return
        await super().push(status)

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, asyncio.IncompleteReadError):
            self.end_session()  # the client has closed its side and said everything
            return _SILENT
        self.handler.log(
            f"{describe_peer(self.session.peer if self.session else None)}: "
            f"internal error: {type(error).__name__}: {printable(error, 300)}",
            "error",
        )
        return "451 4.3.0 Temporary server error, try again later"

    # -- MAIL FROM:<> --------------------------------------------------------

    def _create_envelope(self) -> Envelope:
        return Envelope()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The path of MAIL/RCPT/VRFY, strictly: ``("", None)`` (501) or ``(None, None)`` (553).

        aiosmtpd's parser is the lenient one of the email package: it takes a
        path without angle brackets and "repairs" ``<two words@x>`` into a
        quoted local part. Here the path is ``<`` [source route ``:``] one
        mailbox ``>``, or ``<>`` (the null reverse-path, which aiosmtpd refuses).
        """
        return parse_path(arg)

    # -- AUTH ----------------------------------------------------------------

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        # SASL mechanism names are case-insensitive (RFC 4954 4); aiosmtpd's
        # table is upper case, so "AUTH plain" would be an unknown mechanism.
        if arg:
            mechanism, space, rest = arg.partition(" ")
            arg = mechanism.upper() + space + rest
        await super().smtp_AUTH(arg)

    # -- DATA ----------------------------------------------------------------

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        assert isinstance(envelope, Envelope)
        if not envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        spool = Spool(self.handler.spool_dir)
        self.in_data = True
        try:
            outcome = await self._receive(spool)
        except BaseException:
            spool.close()
            raise
        finally:
            self.in_data = False
        if outcome != "ok":
            spool.close()
            self.envelope = self._create_envelope()
            if outcome == "too big":
                self.handler._count("size")
                await self.push("552 5.3.4 Message size exceeds fixed maximum message size")
            else:
                await self.push("451 4.3.0 Input ended inside DATA; nothing was kept")
                self.end_session()
            return
        envelope.spool = spool
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            if envelope.spool is not None:  # the handler did not take it
                envelope.spool.close()
        self.envelope = self._create_envelope()
        await self.push(status)

    async def _receive(self, spool: Spool) -> str:
        """Read the data up to the lone dot into ``spool``: "ok", "too big" or "eof".

        Lines end only with CRLF (a bare LF or CR is data, so "\\n.\\n" ends
        nothing: no SMTP smuggling); the data ends with a line that is one dot;
        a line that begins with a dot loses that dot (RFC 5321 4.5.2). The
        stream is read up to each ".\\r\\n" (or a reader-limit's worth at a
        time), not line by line: a 2 KB message is one or two reads instead of
        forty, and nothing after the final dot is taken from the reader (a
        pipelined next command stays there).
        """
        reader = self._reader
        limit = self.data_size_limit or 0
        size = 0
        too_big = False
        pending = b""  # read but not yet written: part of one line
        start = True  # whether ``pending`` (or the next byte) begins a line
        while True:
            try:
                piece = await reader.readuntil(b".\r\n")
            except asyncio.LimitOverrunError as exc:
                piece = await reader.read(max(1, exc.consumed))
                if not piece:
                    return "eof"
            except asyncio.IncompleteReadError:
                return "eof"
            text = pending + piece if pending else piece
            ended = text.endswith(b"\r\n.\r\n") or (start and text == b".\r\n")
            if ended:
                done, pending = text[:-3], b""
            else:
                cut = text.rfind(b"\r\n") + 2  # 1 when there is none
                if cut > 1:
                    done, pending = text[:cut], text[cut:]
                elif len(text) > READ_LIMIT:
                    # A very long line: write what came, but a last CR waits
                    # for what follows it (it may begin the CRLF before the dot).
                    cut = len(text) - 1 if text.endswith(b"\r") else len(text)
                    done, pending = text[:cut], text[cut:]
                else:
                    pending = text  # one line, not finished: wait for more of it
                    continue
            if done:
                if start and done[:1] == b".":
                    done = done[1:]
                if b"\r\n." in done:
                    done = done.replace(b"\r\n.", b"\r\n")
                size += len(done)
                if not too_big:
                    if limit and size > limit:
                        too_big = True  # keep reading to the dot, keep nothing
                        spool.close()
                    else:
                        spool.write(done)
            if ended:
                return "too big" if too_big else "ok"
            start = not done or done.endswith(b"\r\n")
