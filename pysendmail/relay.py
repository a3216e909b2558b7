"""Relay: choose the route for a message, open a session to the smarthost, send, judge.

The relay turns "this envelope and these message bytes" into a verdict per
recipient: sent (the server said 2xx to RCPT and to the end of DATA), bounced
(a 5xx, permanent) or deferred (a 4xx, a timeout, a lost connection: try again
later). It never decides exit statuses or retry times; the CLI and the runner
do, from the verdicts.

Routes: the ``[[relay]]`` list is tried in order. A relay whose ``senders``
patterns match the envelope sender is preferred; relays without patterns are the
default route. The next relay is tried when a relay cannot be reached, its TLS
fails, or it greets with 4xx (what "failover" means for a smarthost: the
message was not handed over, so nothing can be duplicated).

Sessions are reused: ``Relay`` keeps one open session per route and sends
``RSET`` between messages, so draining a queue costs one connection per route,
not one per message. The RSET goes in the same write as the next MAIL, RCPT
and DATA when the server offers PIPELINING (``send_message(..., reset=True)``),
so a reused session costs two round trips per message, not three. When the
RSET is refused or unanswered (the server dropped an idle connection, timed
out, said 421), the session core closes the session before any byte of the
message is sent (``SMTPResetError``), and the message goes over a fresh
session to the same relay, as if none had been cached. As Postfix does, a
session whose RSET failed is never used again.

SECURITY: the relay password is fetched only when a session actually
authenticates, and never logged; the session core redacts AUTH in its trace.
"""

import io
import time

from pysendmail import errors
from pysendmail.smtp.address import Address
from pysendmail.smtp.client import SMTP
from pysendmail.smtp.encoder import DEFAULT_CHUNK_SIZE

# Direct mode imports this module on every message: no typing, collections or
# __future__ at run time (see DESIGN.md, Performance), hence quoted annotations.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import IO, Protocol

    from pysendmail.message.envelope import Envelope, Recipient

    class RelayConfig(Protocol):
        """What the relay needs of one ``[[relay]]`` entry (the config snapshot's relay object)."""

        host: str
        port: int
        tls: str
        tls_verify: bool
        tls_hostname: str | None
        ca_file: str | None
        client_cert: str | None
        client_key: str | None
        tls_min_version: str | None
        user: str | None
        auth: str
        allow_plaintext_auth: bool
        connect_timeout: float
        command_timeout: float
        data_timeout: float
        helo: str | None
        senders: "list[str] | tuple[str, ...]"

    PasswordGetter = Callable[[RelayConfig], "str | None"]

SENT = "sent"
BOUNCED = "bounced"
DEFERRED = "deferred"


class RecipientResult:
    """The verdict for one envelope recipient."""

    __slots__ = ("address", "reply", "status")

    def __init__(self, address: str, status: str, reply: str) -> None:
        self.address = address
        self.status = status
        self.reply = reply

    def __repr__(self) -> str:
        return f"RecipientResult({self.address!r}, {self.status!r}, {self.reply!r})"


class DeliveryReport:
    """What happened to one message on one attempt."""

    __slots__ = ("error", "opened", "recipients", "relay", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.relay = "none"
        self.recipients: list[RecipientResult] = []
        #: The error that ended the attempt for every recipient not yet judged.
        self.error: errors.PysendmailError | None = None
        #: False when no session could be opened (connect, greeting, EHLO, TLS,
        #: AUTH): the error is about the smarthost, not about this message.
        self.opened = False

    @property
    def delay(self) -> float:
        return time.monotonic() - self.started

    def by_status(self, status: str) -> list[RecipientResult]:
        return [r for r in self.recipients if r.status == status]


def reply_text(response: "errors.Reply | None") -> str:
    if response is None:
        return ""
    return errors.err_text(response)


def routes_for(sender: str, relays: "Sequence[RelayConfig]") -> "list[RelayConfig]":
    """The relays to try for ``sender``, in order: by-sender routes first, else the default ones."""
    matching = []
    if any(r.senders for r in relays):
        # fnmatch costs re: only configurations with by-sender routes pay for it.
        from fnmatch import fnmatchcase

        lowered = sender.lower()
        matching = [
            r
            for r in relays
            if r.senders and any(fnmatchcase(lowered, p.lower()) for p in r.senders)
        ]
    if matching:
        return matching
    return [r for r in relays if not r.senders]


def _in_memory(message: "IO[bytes]") -> "bytes | IO[bytes]":
    """The rest of ``message`` as bytes when it is already in memory and small, else ``message``.

    The queue hands over a claimed small message as ``io.BytesIO``; given as
    bytes, the session core sends it on its fast path (normalised and
    dot-stuffed in a few calls over the whole) instead of the streaming one.
    ``getvalue`` of a ``BytesIO`` made from bytes returns those bytes, uncopied.
    """
    if type(message) is not io.BytesIO:
        return message
    start = message.tell()
    whole = message.getvalue()
    if len(whole) - start > DEFAULT_CHUNK_SIZE:
        return message
    return whole[start:] if start else whole


def _describe(relay: "RelayConfig", smtp: SMTP | None = None) -> str:
    peer = getattr(smtp, "peer_address", None) if smtp is not None else None
    ip = f"[{peer}]" if peer else ""
    return f"{relay.host}{ip}:{relay.port}"


def _verdict(exc: errors.SMTPError) -> str:
    return DEFERRED if exc.temporary else BOUNCED


# Errors while opening a session mean "this relay never took the message", so the
# next relay may be tried without any risk of a duplicate. Authentication and
# local security refusals are not among them: they are configuration problems
# that the user must see, not paper over.
_FAILOVER = (
    errors.SMTPConnectError,
    errors.SMTPTLSError,
    errors.SMTPOpenTimeout,
    errors.SMTPReadTimeout,
    errors.SMTPServerDisconnected,
    errors.SMTPServerBusy,
    errors.SMTPUnsupportedCommand,
)


class Relay:
    """Sends messages through the configured smarthosts, reusing one session per route."""

    def __init__(
        self,
        relays: "Sequence[RelayConfig]",
        *,
        helo: str,
        password: "PasswordGetter",
        debug_output: "IO[str] | None" = None,
    ) -> None:
        if not relays:
            raise errors.ConfigError("no [[relay]] is configured: nothing to send the mail to")
        self.relays = relays
        self.helo = helo
        self._password = password
        self._debug_output = debug_output
        self._sessions: dict[int, SMTP] = {}

    # -- sessions --------------------------------------------------------------

    def _open(self, relay: "RelayConfig") -> SMTP:
        tls_mode = relay.tls
        smtp = SMTP(
            relay.host,
            relay.port,
            tls=tls_mode == "implicit",
            starttls="always" if tls_mode == "starttls" else False,
            tls_verify=relay.tls_verify,
            tls_hostname=relay.tls_hostname,
            ca_file=relay.ca_file,
            certfile=relay.client_cert,
            keyfile=relay.client_key,
            tls_min_version=relay.tls_min_version,
            allow_plaintext_auth=relay.allow_plaintext_auth,
        )
        smtp.open_timeout = relay.connect_timeout
        smtp.read_timeout = relay.command_timeout
        smtp.write_timeout = relay.data_timeout
        if self._debug_output is not None:
            smtp.set_debug_output(self._debug_output)
        user = relay.user
        secret = self._password(relay) if user else None
        authtype = None if relay.auth == "auto" else relay.auth
        smtp.start(helo=relay.helo or self.helo, user=user, secret=secret, authtype=authtype)
        return smtp

    def _drop(self, key: int) -> None:
        smtp = self._sessions.pop(key, None)
        if smtp is not None:
            smtp.finish()

    def close(self) -> None:
        for key in list(self._sessions):
            self._drop(key)

    def __enter__(self) -> "Relay":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending ---------------------------------------------------------------

    def send(
        self,
        envelope: "Envelope",
        message: "IO[bytes]",
        recipients: list[str] | None = None,
    ) -> DeliveryReport:
        """Send ``message`` (positioned at its first byte) to ``recipients``.

        ``recipients`` defaults to every envelope recipient; the runner passes only
        those not yet accepted. The file must be seekable: a failover rewinds it.
        """
        report = DeliveryReport(time.monotonic())
        wanted = recipients if recipients is not None else [r.address for r in envelope.recipients]
        by_address = {r.address: r for r in envelope.recipients}
        start = message.tell()
        routes = routes_for(envelope.sender, self.relays)
        if not routes:
            report.error = errors.ConfigError(
                f"no [[relay]] route matches the sender <{envelope.sender}>"
            )
            report.recipients = [RecipientResult(a, DEFERRED, str(report.error)) for a in wanted]
            return report
        last_exc: errors.SMTPError | None = None
        for relay in routes:
            key = id(relay)
            report.relay = _describe(relay)
            smtp = self._sessions.get(key)
            if smtp is not None:
                # A cached session: RSET first, as Postfix does when it reuses
                # a connection (it forgets whatever a refused transaction left).
                report.relay = _describe(relay, smtp)
                report.opened = True
                message.seek(start)
                try:
                    self._transaction(smtp, envelope, by_address, wanted, message, report, True)
                except errors.SMTPResetError:
                    # Closed before any byte of the message was sent: nothing can
                    # be duplicated, so a fresh session carries it.
                    self._drop(key)
                    report.opened = False
                except errors.SMTPError as exc:
                    self._failed(key, exc, report, wanted)
                    return report
                else:
                    return report
                report.relay = _describe(relay)
            try:
                smtp = self._open(relay)
            except errors.SMTPError as exc:
                last_exc = exc
                if isinstance(exc, _FAILOVER):
                    continue
                break
            self._sessions[key] = smtp
            report.relay = _describe(relay, smtp)
            report.opened = True
            message.seek(start)
            try:
                self._transaction(smtp, envelope, by_address, wanted, message, report, False)
            except errors.SMTPError as exc:
                self._failed(key, exc, report, wanted)
            return report
        report.error = last_exc
        verdict = DEFERRED if last_exc is None else _verdict(last_exc)
        text = str(last_exc) if last_exc is not None else "no relay could be reached"
        report.recipients = [RecipientResult(a, verdict, text) for a in wanted]
        return report

    def _failed(
        self, key: int, exc: errors.SMTPError, report: DeliveryReport, wanted: list[str]
    ) -> None:
        """Judge an attempt that ended in ``exc`` once the transaction had started."""
        # Never fail over once MAIL went out: the first relay may already hold
        # the message, and a second copy is worse than a retry. An ordinary
        # refusal leaves the session usable (RSET comes before the next
        # message); a lost, timed-out or closing (421) session does not.
        if exc.response is None or exc.code == 421:
            self._drop(key)
        report.error = exc
        if not report.recipients:
            text = reply_text(exc.response) or str(exc)
            report.recipients = [RecipientResult(a, _verdict(exc), text) for a in wanted]

    def _transaction(
        self,
        smtp: SMTP,
        envelope: "Envelope",
        by_address: "dict[str, Recipient]",
        wanted: list[str],
        message: "IO[bytes]",
        report: DeliveryReport,
        reset: bool,
    ) -> None:
        # Addresses without ESMTP parameters (the usual case) go as str: the
        # session core keeps the ones it has parsed, and the queue repeats them.
        sender: str | Address = envelope.sender
        if envelope.dsn_ret or envelope.dsn_envid:
            mail_params: dict[str, str | None] = {}
            if envelope.dsn_ret:
                mail_params["RET"] = envelope.dsn_ret
            if envelope.dsn_envid:
                mail_params["ENVID"] = envelope.dsn_envid
            sender = Address(envelope.sender, **mail_params)
        rcpts: list[str | Address] = []
        for addr in wanted:
            rcpt = by_address.get(addr)
            notify = rcpt.notify if rcpt is not None else None
            if not notify:
                rcpts.append(addr)
                continue
            original = (rcpt.original if rcpt is not None else None) or addr
            rcpts.append(Address(addr, NOTIFY=notify, ORCPT="rfc822;" + original))
        eightbit = True if envelope.body_type == "8BITMIME" else None
        try:
            result = smtp.send_message(
                _in_memory(message), sender, *rcpts, eightbit=eightbit, reset=reset
            )
        except errors.SMTPRecipientsRefused as exc:
            for addr in wanted:
                resp = exc.refused.get(addr)
                status = DEFERRED if resp is None else _verdict(errors.SMTPError("", resp))
                report.recipients.append(RecipientResult(addr, status, reply_text(resp)))
            return
        final = reply_text(result.response)
        for addr in wanted:
            resp = result.refused.get(addr)
            if resp is None:
                report.recipients.append(RecipientResult(addr, SENT, final))
            else:
                status = _verdict(errors.SMTPError("", resp))
                report.recipients.append(RecipientResult(addr, status, reply_text(resp)))
