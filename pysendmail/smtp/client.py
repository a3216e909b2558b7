"""The blocking SMTP client: Ruby's Net::SMTP spelled in Python, driving ``ClientProtocol``.

``SMTP`` holds the settings of a session and, while started, one
``Connection`` (socket, ``ClientProtocol``, deadlines: ``connection``).
Everything about the protocol (checks, parameters, state, reply framing) is
decided by the protocol object; this module decides which commands to send
and what their replies mean to the caller::

    with SMTP.start("smtp.example.com", 587, helo="client.example.com",
                    user="me", secret="pw") as smtp:
        smtp.send_message(message, "from@example.com", "to@example.com")

What it adds to the protocol object:

* Connecting: ``open_timeout`` bounds the TCP connect, the TLS handshake and
  the greeting together; TCP_NODELAY is set because every command goes out in
  one ``sendall`` and waiting for a delayed ACK costs ~40 ms per round trip.
* TLS: certificates are verified by default (``ssl.create_default_context``),
  against ``tls_hostname`` when given; implicit TLS or STARTTLS ("auto" uses
  it when offered, "always" refuses to go on without it). After STARTTLS the
  protocol drops any plaintext and EHLO is sent again.
* AUTH: never over a connection without TLS unless ``allow_plaintext_auth``
  was given; never with a mechanism the server did not offer; both refused
  before a byte is sent.
* Transactions: with PIPELINING, MAIL, every RCPT and DATA go out in one
  write and the replies are matched per recipient; without, one command per
  round trip. When no recipient is accepted no message byte is sent, and the
  transaction is reset before the error is raised. The body is streamed in
  64 KiB writes from whatever the caller gave; nothing is read whole.
* Reuse: ``send_message(..., reset=True)`` starts with RSET, for a session
  that carries one message after another (a queue runner). With PIPELINING
  the RSET goes in the same write as MAIL, RCPT and DATA (RFC 2920 section
  3.1), so reuse costs no round trip of its own; without, it is one more
  round trip. Its reply is judged before any other: when RSET is refused or
  goes unanswered the session is closed, no byte of the message is sent
  (any 354 in the same batch is never answered), and ``SMTPResetError``
  says that a new session may carry the message.

SECURITY and failure rules this module must keep:

* After any I/O error, timeout or protocol violation the session is dead: the
  socket is closed, every later command raises ``SMTPServerDisconnected`` at
  once, and ``finish`` closes without QUIT and without raising. Nothing is ever
  retried or faked (Net::SMTP answers a made-up "200 dummy reply code").
* A message body interrupted half way (the caller's file failed, the ``with``
  block raised) is never ended with "." — that would deliver a truncated
  message — the connection is dropped instead.
* The debug trace (a text stream, else ``logging`` at DEBUG on the logger
  "pysendmail.smtp") shows every command and reply except AUTH payloads, shown
  as ``<redacted>``, and the message, shown as its size. ``repr`` shows no
  credentials; the secret is never stored on the object.
"""

# Imported by every ``sendmail`` that relays directly, so nothing at run time
# but the project's own modules: no ``typing``, ``functools``, ``contextlib``,
# ``base64`` or ``from __future__`` (annotations naming typing-only things are
# quoted), and ``ssl`` only when TLS is actually used: implicit TLS, or a
# STARTTLS the server offers. "auto" against a server without STARTTLS never
# loads it. ``auth`` and ``binascii`` only when authenticating.
import sys

# The ABC ``collections.abc`` re-exports, without importing ``collections``.
from _collections_abc import Iterable as _Iterable

from pysendmail.errors import (
    SMTPAuthenticationError,
    SMTPError,
    SMTPOpenTimeout,
    SMTPRecipientsRefused,
    SMTPResetError,
    SMTPSecurityError,
    SMTPServerDisconnected,
    SMTPUnsupportedCommand,
    err_text,
    error_for_reply,
)
from pysendmail.smtp.address import Address, check_argument, coerce
from pysendmail.smtp.connection import Connection, MessageWriter, SendResult, Timeouts, Trace
from pysendmail.smtp.encoder import DEFAULT_CHUNK_SIZE, MessageSource, encode_text, normalise
from pysendmail.smtp.protocol import (
    DATA,
    MAIL,
    RCPT,
    Auth,
    AuthCancel,
    AuthResponse,
    ClientProtocol,
    Data,
    Ehlo,
    Helo,
    LocalProtocolError,
    Mail,
    Noop,
    Quit,
    Rcpt,
    Rset,
    StartTLS,
    State,
)
from pysendmail.smtp.reply import Capabilities

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from collections.abc import Iterable
    from contextlib import AbstractContextManager
    from types import TracebackType
    from typing import IO, Any, Literal, NoReturn, Protocol, Self, TypeAlias, TypeVar

    from pysendmail.smtp.encoder import MessageInput
    from pysendmail.smtp.protocol import Command
    from pysendmail.smtp.reply import Response

    StartTLSMode: TypeAlias = Literal["auto", "always", False]

    _S = TypeVar("_S", bound="SMTP")
    _S_co = TypeVar("_S_co", bound="SMTP", covariant=True)

    class _ClassStart(Protocol[_S_co]):
        def __call__(
            self,
            address: str,
            port: int | None = None,
            *,
            helo: str = "localhost",
            user: str | None = None,
            secret: str | None = None,
            authtype: str | None = None,
            **constructor_keywords: Any,
        ) -> _S_co: ...

    class _InstanceStart(Protocol[_S_co]):
        def __call__(
            self,
            *,
            helo: str = "localhost",
            user: str | None = None,
            secret: str | None = None,
            authtype: str | None = None,
        ) -> _S_co: ...


if not TYPE_CHECKING:

    def overload(func: object) -> object:
        """``typing.overload`` for the type checker; nothing at run time."""
        return func


if TYPE_CHECKING:
    from typing import overload


# StartTLSMode is a name for type checkers only (it needs typing.Literal).
# SMTPResetError lives in ``pysendmail.errors``; it is re-exported for the
# callers that import it from here, where it used to be defined.
__all__ = ["SMTP", "MessageWriter", "SMTPResetError", "SendResult"]

#: A hostile server could send 334 for ever; no real mechanism needs more.
MAX_AUTH_CHALLENGES = 8

_QUIT_STATES = (State.CONNECTED, State.READY, State.MAIL, State.RCPT)
_TLS_VERSIONS = {"1.2": "TLSv1_2", "1.3": "TLSv1_3"}
#: RSET has no argument: one object serves every reset.
_RSET = Rset()


class _StartDescriptor:
    """``SMTP.start(address, ...)`` creates and starts; ``smtp.start(...)`` starts ``smtp``.

    Net::SMTP has both under one name; in Python that takes a descriptor.
    """

    @overload
    def __get__(self, obj: None, objtype: "type[_S]") -> "_ClassStart[_S]": ...
    @overload
    def __get__(self, obj: "_S", objtype: "type[_S] | None" = None) -> "_InstanceStart[_S]": ...
    def __get__(self, obj: "SMTP | None", objtype: "type[SMTP] | None" = None) -> "Any":
        if obj is not None:
            return obj._start
        assert objtype is not None
        cls = objtype

        def create_and_start(
            address: str,
            port: int | None = None,
            *,
            helo: str = "localhost",
            user: str | None = None,
            secret: str | None = None,
            authtype: str | None = None,
            **constructor_keywords: "Any",
        ) -> SMTP:
            return cls(address, port, **constructor_keywords)._start(
                helo=helo, user=user, secret=secret, authtype=authtype
            )

        return create_and_start


# A queue runner sends from the same few senders to the same recipients over
# and over; an Address made here is never changed, so it is shared. Bounded:
# emptied when full, which costs a few re-parses (an LRU needs functools).
_ADDRESS_CACHE: dict[str, Address] = {}
_ADDRESS_CACHE_SIZE = 512


def _address(item: "str | Address") -> Address:
    if type(item) is not str:
        return coerce(item)
    address = _ADDRESS_CACHE.get(item)
    if address is None:
        address = coerce(item)
        if len(_ADDRESS_CACHE) >= _ADDRESS_CACHE_SIZE:
            _ADDRESS_CACHE.clear()
        _ADDRESS_CACHE[item] = address
    return address


_ADDRESS_TYPES = (str, Address)


def _flatten(items: "Iterable[object]") -> list[Address]:
    out: list[Address] = []
    for item in items:
        if isinstance(item, _ADDRESS_TYPES):
            out.append(_address(item))
        elif isinstance(item, bytes | bytearray) or not isinstance(item, _Iterable):
            raise TypeError(f"a recipient must be str or Address, not {type(item).__name__}")
        else:
            out.extend(_flatten(item))
    return out


def _recipients(to_addrs: "Iterable[object]") -> list[Address]:
    recipients = _flatten(to_addrs)
    if not recipients:
        raise ValueError("no recipients given")
    return recipients


def _tls_version_name(value: "ssl.TLSVersion | str") -> str:
    """The ``ssl.TLSVersion`` member name for ``value``, checked without importing ``ssl``."""
    ssl = sys.modules.get("ssl")
    if ssl is not None and isinstance(value, ssl.TLSVersion):
        # Only a program that loaded ssl can hold a TLSVersion.
        return str(value.name)
    if not isinstance(value, str):
        raise ValueError(f"tls_min_version must be TLSv1.2 or TLSv1.3, not {value!r}")
    name = value.upper().replace("TLSV", "").replace("TLS", "").replace("_", ".").strip(" v.")
    if name not in _TLS_VERSIONS:
        raise ValueError(f"tls_min_version must be TLSv1.2 or TLSv1.3, not {value!r}")
    return _TLS_VERSIONS[name]


class _MessageStream:
    """What ``open_message_stream`` returns: the transaction starts on entering the block."""

    __slots__ = ("_args", "_smtp", "_writer")

    def __init__(
        self, smtp: "SMTP", args: "tuple[str | Address, tuple[object, ...], bool | None, bool]"
    ) -> None:
        self._smtp = smtp
        self._args = args
        self._writer: MessageWriter | None = None

    def __enter__(self) -> MessageWriter:
        smtp = self._smtp
        from_addr, to_addrs, eightbit, reset = self._args
        conn = smtp._live_to_reset() if reset else smtp._live()
        refused = smtp._transaction(
            conn, _address(from_addr), _recipients(to_addrs), None, bool(eightbit), reset=reset
        )
        self._writer = MessageWriter(conn, refused)
        return self._writer

    def __exit__(
        self,
        exc_type: "type[BaseException] | None",
        exc: "BaseException | None",
        tb: "TracebackType | None",
    ) -> None:
        writer = self._writer
        assert writer is not None
        if exc_type is not None:
            writer.abort()
        else:
            writer.close()


class SMTP:
    """One SMTP session to one server. See the module docstring.

    ``SMTP(address, port)`` creates it without connecting; ``start`` connects,
    greets, upgrades to TLS and authenticates as asked; ``finish`` (or leaving
    a ``with`` block) sends QUIT and closes.
    """

    default_port = 25
    default_submission_port = 587
    default_tls_port = 465

    start = _StartDescriptor()

    def __init__(
        self,
        address: str,
        port: int | None = None,
        *,
        tls: bool = False,
        starttls: "StartTLSMode" = "auto",
        tls_verify: bool = True,
        tls_hostname: str | None = None,
        ssl_context: "ssl.SSLContext | None" = None,
        ca_file: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        tls_min_version: "ssl.TLSVersion | str | None" = None,
        source_address: "tuple[str, int] | None" = None,
        allow_plaintext_auth: bool = False,
        open_timeout: float | None = 30.0,
        read_timeout: float | None = 60.0,
        write_timeout: float | None = 60.0,
        esmtp: bool = True,
        debug_output: "IO[str] | None" = None,
    ) -> None:
        if starttls not in ("auto", "always", False):
            raise ValueError(f'starttls must be "auto", "always" or False, not {starttls!r}')
        if tls and starttls == "always":
            raise ValueError('tls=True (implicit TLS) and starttls="always" exclude each other')
        if ssl_context is not None and (
            ca_file or certfile or keyfile or tls_min_version or not tls_verify
        ):
            raise ValueError(
                "give either ssl_context or tls_verify/ca_file/certfile/keyfile/tls_min_version"
            )
        if keyfile and not certfile:
            raise ValueError("keyfile needs certfile")
        check_argument(address, "server address")
        self.address = address
        self.port = (
            port if port is not None else (self.default_tls_port if tls else self.default_port)
        )
        self.tls = tls
        #: "auto", "always" or False: the ``starttls`` constructor keyword
        #: (the name ``starttls`` itself is the command method).
        self.starttls_mode: StartTLSMode = starttls
        self.tls_verify = tls_verify
        self.tls_hostname = tls_hostname
        self.ssl_context = ssl_context
        self.ca_file = ca_file
        self.certfile = certfile
        self.keyfile = keyfile
        # The TLSVersion member's name: ``ssl`` is loaded only when TLS is used.
        self._tls_min_version = (
            None if tls_min_version is None else _tls_version_name(tls_min_version)
        )
        self.source_address = source_address
        self.allow_plaintext_auth = allow_plaintext_auth
        self._timeouts = Timeouts(open_timeout, read_timeout, write_timeout)
        self.esmtp = esmtp
        self._trace = Trace(debug_output)
        self._conn: Connection | None = None
        self._started = False
        self._helo_name = "localhost"
        self._peer: str | None = None
        # Built on first use and kept: every session of this object shares it.
        self._context: ssl.SSLContext | None = None

    @property
    def tls_min_version(self) -> "ssl.TLSVersion | None":
        """The lowest TLS version accepted (``ssl.TLSVersion``), or None for OpenSSL's default."""
        if self._tls_min_version is None:
            return None
        import ssl

        return ssl.TLSVersion[self._tls_min_version]

    @tls_min_version.setter
    def tls_min_version(self, value: "ssl.TLSVersion | str | None") -> None:
        self._tls_min_version = None if value is None else _tls_version_name(value)

    # ------------------------------------------------------------------ attributes

    def __repr__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"<{type(self).__name__} {host}:{self.port} started={self._started}>"

    @property
    def open_timeout(self) -> float | None:
        """Seconds for the TCP connect, the TLS handshake and the greeting together."""
        return self._timeouts.open

    @open_timeout.setter
    def open_timeout(self, value: float | None) -> None:
        self._timeouts.open = value

    @property
    def read_timeout(self) -> float | None:
        """Seconds for each whole reply; a change applies to the next reply of a live session."""
        return self._timeouts.read

    @read_timeout.setter
    def read_timeout(self, value: float | None) -> None:
        self._timeouts.read = value

    @property
    def write_timeout(self) -> float | None:
        """Seconds for each write (a command, a batch, 64 KiB of message)."""
        return self._timeouts.write

    @write_timeout.setter
    def write_timeout(self, value: float | None) -> None:
        self._timeouts.write = value

    @property
    def started(self) -> bool:
        """True from a successful ``start`` until ``finish``."""
        return self._started

    @property
    def peer_address(self) -> str | None:
        """The IP address of the server connected to (None before ``start``).

        Kept after ``finish``, for the log line that reports the delivery.
        """
        return self._peer

    @property
    def encrypted(self) -> bool:
        """Whether the connection is protected by TLS now (implicit or after STARTTLS)."""
        conn = self._conn
        return conn is not None and conn.encrypted and conn.dead is None

    @property
    def capabilities(self) -> Capabilities:
        """The extensions of the last EHLO reply; lookups are case-insensitive."""
        return self._conn.proto.capabilities if self._conn is not None else Capabilities()

    def capable(self, name: str) -> bool:
        """Whether the server announced the extension ``name`` (STARTTLS, SIZE, ...)."""
        return name in self.capabilities

    def auth_capable(self, mechanism: str) -> bool:
        """Whether the server offers the AUTH mechanism ``mechanism``."""
        return mechanism.upper() in self.capable_auth_types

    @property
    def capable_auth_types(self) -> list[str]:
        """The AUTH mechanisms the server offers, upper-case, in its order."""
        return list(self.capabilities.get("AUTH", ()))

    @property
    def debug_output(self) -> "IO[str] | None":
        """The text stream the trace goes to; None sends it to ``logging`` at DEBUG."""
        return self._trace.stream

    @debug_output.setter
    def debug_output(self, stream: "IO[str] | None") -> None:
        self._trace.stream = stream

    def set_debug_output(self, stream: "IO[str] | None") -> None:
        """Send the trace to ``stream`` (None: back to ``logging``)."""
        self._trace.stream = stream

    # ------------------------------------------------------------------ start and finish

    def _start(
        self,
        *,
        helo: str = "localhost",
        user: str | None = None,
        secret: str | None = None,
        authtype: str | None = None,
    ) -> "Self":
        if self._started or self._conn is not None:
            raise LocalProtocolError("the SMTP session is already started")
        if (user is None) != (secret is None):
            raise ValueError("user and secret must be given together")
        # Everything the caller gave is checked before a connection is made.
        ClientProtocol().encode(Ehlo(helo))
        if user is not None:
            check_argument(user, "AUTH user")
            if authtype is not None:
                from pysendmail.smtp import auth  # only when authenticating

                auth.canonical_name(authtype)
        # Loading the system's CA store costs ~40 ms: only when TLS is certain.
        context = self._tls_context() if self.tls else None
        self._helo_name = helo
        try:
            self._connect(context)
            self._hello(helo)
            if not self.tls and self.starttls_mode:
                if self.capable("STARTTLS"):
                    self._starttls(context)
                elif self.starttls_mode == "always":
                    raise SMTPUnsupportedCommand(
                        f'the server does not offer STARTTLS and starttls="always" was asked '
                        f"({self.address}:{self.port})"
                    )
            if user is not None:
                assert secret is not None
                self.authenticate(user, secret, authtype)
        except BaseException:
            self._goodbye()
            raise
        self._started = True
        return self

    def _goodbye(self) -> None:
        """QUIT when the server can still take it, then close, whatever happens."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            proto = conn.proto
            if conn.dead is None and proto.state in _QUIT_STATES and not proto.pending:
                try:
                    conn.exchange(Quit())
                except SMTPError as exc:
                    # The messages are sent or not already; a failed goodbye
                    # changes nothing for the caller.
                    if self._trace.on:
                        self._trace(f"-- QUIT failed: {exc}")
        finally:
            conn.close()

    def finish(self) -> None:
        """Send QUIT (when the session is alive) and close; OSError when not started.

        A dead session is closed without QUIT, and nothing is raised: the
        error that killed it was raised already.
        """
        if not self._started:
            raise SMTPServerDisconnected("the SMTP session is not started")
        try:
            self._goodbye()
        finally:
            self._started = False

    def __enter__(self) -> "Self":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: "TracebackType | None",
    ) -> None:
        if self._started:
            self.finish()

    def _tls_context(self) -> "ssl.SSLContext":
        if self.ssl_context is not None:
            return self.ssl_context
        if self._context is not None:
            return self._context
        import ssl  # TLS is certain now

        context = ssl.create_default_context(cafile=self.ca_file)
        if self.certfile:
            context.load_cert_chain(self.certfile, self.keyfile)
        if self.tls_min_version is not None:
            context.minimum_version = self.tls_min_version
        if not self.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self._context = context
        return context

    def _connect(self, context: "ssl.SSLContext | None") -> None:
        # One deadline for the connect, the TLS handshake and the greeting.
        deadline = Connection.deadline(self.open_timeout)
        conn = Connection.open(
            self.address,
            self.port,
            timeouts=self._timeouts,
            trace=self._trace,
            source_address=self.source_address,
            deadline=deadline,
        )
        self._conn = conn
        self._peer = conn.peer
        if context is not None:
            conn.start_tls(context, self.tls_hostname or self.address, deadline)
        greeting = conn.read_reply(deadline=deadline, timeout_error=SMTPOpenTimeout)
        if greeting.code != 220:
            raise error_for_reply(greeting)

    def _live(self) -> Connection:
        conn = self._conn
        if conn is None:
            raise SMTPServerDisconnected("the SMTP session is not connected; call start() first")
        conn.live()
        return conn

    def _live_to_reset(self) -> Connection:
        """``_live()`` for a message that starts with RSET: a dead session cannot be reset."""
        conn = self._conn
        if conn is not None and (conn.dead is not None or conn.sock is None):
            raise SMTPResetError(
                f"cannot reset the SMTP session for the next message: {conn.dead or 'closed'}"
            )
        return self._live()

    def _getok(self, command: "Command") -> "Response":
        reply = self._live().exchange(command)
        if not reply.success:
            raise error_for_reply(reply)
        return reply

    # ------------------------------------------------------------------ commands

    def ehlo(self, domain: str) -> "Response":
        """EHLO; the reply's extensions become ``capabilities``."""
        reply = self._getok(Ehlo(domain))
        self._helo_name = domain
        return reply

    def helo(self, domain: str) -> "Response":
        """HELO, for servers without ESMTP; ``capabilities`` becomes empty."""
        reply = self._getok(Helo(domain))
        self._helo_name = domain
        return reply

    def _hello(self, domain: str) -> None:
        if self.esmtp:
            reply = self._live().exchange(Ehlo(domain))
            if reply.success:
                self._helo_name = domain
                return
            # RFC 5321 section 3.2: a server that does not know EHLO gets HELO.
            self.esmtp = False
        self.helo(domain)

    def starttls(self) -> "Response":
        """STARTTLS: upgrade the connection, drop any plaintext after the 220, EHLO again.

        Returns the 220 reply. SMTPUnsupportedCommand when the server does not
        offer STARTTLS; SMTPTLSError (the session is then dead) when the
        handshake or the certificate check fails.
        """
        return self._starttls(None)

    def _starttls(self, context: "ssl.SSLContext | None") -> "Response":
        conn = self._live()
        if conn.encrypted:
            raise LocalProtocolError("the connection is already encrypted")
        if not self.capable("STARTTLS"):
            raise SMTPUnsupportedCommand("the server does not offer STARTTLS")
        context = context or self._tls_context()
        reply = conn.exchange(StartTLS())
        if reply.code != 220:
            raise error_for_reply(reply)
        conn.start_tls(context, self.tls_hostname or self.address, conn.deadline(self.open_timeout))
        conn.proto.tls_started()
        self._hello(self._helo_name)
        return reply

    def authenticate(self, user: str, secret: str, authtype: str | None = None) -> "Response":
        """AUTH with ``authtype`` (or the best the server offers: CRAM-MD5, PLAIN, LOGIN).

        Refused before anything is sent: over a connection without TLS
        (SMTPSecurityError, unless ``allow_plaintext_auth``), a mechanism the
        server does not offer (SMTPUnsupportedCommand), a user name with a
        control character (ValueError). A refusal by the server raises
        SMTPAuthenticationError (5xx) or SMTPServerBusy (4xx).
        """
        conn = self._live()
        if not conn.encrypted and not self.allow_plaintext_auth:
            raise SMTPSecurityError(
                "refusing to send credentials over a connection without TLS "
                "(use TLS, or allow_plaintext_auth=True on a trusted network)"
            )
        from pysendmail.smtp import auth  # only when authenticating

        offered = self.capable_auth_types
        name = auth.select(offered, authtype)
        if name is None:
            wanted = auth.canonical_name(authtype) if authtype else "a supported mechanism"
            listed = " ".join(offered) if offered else "none"
            raise SMTPUnsupportedCommand(
                f"the server does not offer AUTH {wanted} (it offers: {listed})"
            )
        mechanism = auth.mechanism(name, user, secret)
        import binascii  # base64 without ``base64``, which imports ``re``

        reply = conn.exchange(Auth(name, mechanism.initial_response()))
        challenges = 0
        while reply.code == 334:
            challenges += 1
            try:
                if challenges > MAX_AUTH_CHALLENGES:
                    raise ValueError("the server keeps sending challenges")
                challenge = binascii.a2b_base64(reply.message.strip(), strict_mode=True)
                answer = mechanism.respond(challenge)
            except (binascii.Error, ValueError) as exc:
                # Cancel the exchange (RFC 4954 section 4) so the session stays usable.
                cancel = conn.exchange(AuthCancel())
                raise SMTPAuthenticationError(
                    f"AUTH {name} abandoned: {exc} (the server answered the cancel with {cancel})",
                    cancel,
                ) from exc
            reply = conn.exchange(AuthResponse(answer))
        if not reply.success:
            raise error_for_reply(reply, during_auth=True)
        return reply

    def mailfrom(
        self,
        from_addr: "str | Address",
        *,
        size: int | None = None,
        eightbit: bool = False,
        smtputf8: bool = False,
    ) -> "Response":
        """MAIL FROM; SIZE, BODY and SMTPUTF8 are added as the server allows."""
        return self._getok(Mail(coerce(from_addr), size, eightbit, smtputf8))

    def rcptto(self, to_addr: "str | Address") -> "Response":
        """RCPT TO; raises the reply's error when the recipient is refused."""
        return self._getok(Rcpt(coerce(to_addr)))

    def rcptto_list(self, to_addrs: "Iterable[str | Address]") -> "dict[str, Response]":
        """RCPT TO for each address (in one write with PIPELINING); returns the refused ones.

        Raises SMTPRecipientsRefused when every one was refused.
        """
        recipients = _recipients(to_addrs)
        conn = self._live()
        commands = [Rcpt(r) for r in recipients]
        if conn.proto.pipelining:
            replies = conn.pipeline(commands)
        else:
            for command in commands:
                conn.proto.encode(command)
            replies = [conn.exchange(c) for c in commands]
        refused = {
            r.address: rep for r, rep in zip(recipients, replies, strict=True) if not rep.success
        }
        if len(refused) == len(recipients):
            raise SMTPRecipientsRefused(refused)
        return refused

    @overload
    def data(self, msg: None = None) -> MessageWriter: ...
    @overload
    def data(self, msg: "MessageInput") -> "Response": ...
    def data(self, msg: "MessageInput | None" = None) -> "MessageWriter | Response":
        """DATA. With ``msg``: send it and return the final reply. Without: a writer."""
        source = None if msg is None else MessageSource.of(msg)
        conn = self._live()
        reply = conn.exchange(Data())
        if reply.code != 354:
            raise error_for_reply(reply)
        if source is None:
            return MessageWriter(conn, {})
        return conn.send_body(source)

    def rset(self) -> "Response":
        """RSET: abandon the mail transaction.

        A refused RSET closes the session (SMTPResetError): a server that will
        not forget a transaction cannot be trusted with the next one.
        """
        conn = self._live()
        reply = conn.exchange(_RSET)
        if not 200 <= reply.code < 300:
            self._refused_reset(conn, reply)
        return reply

    @staticmethod
    def _refused_reset(conn: Connection, reply: "Response") -> "NoReturn":
        """Close the session after a refused RSET (the protocol has closed it) and say so."""
        conn.kill(conn.proto.closed_reason or f"RSET was refused ({reply})")
        raise SMTPResetError(
            f"the server refused RSET ({err_text(reply)}); the session is closed", reply
        )

    @classmethod
    def _reset(cls, conn: Connection) -> None:
        """RSET in its own round trip (no PIPELINING), before a message on a reused session."""
        try:
            reply = conn.exchange(_RSET)
        except SMTPError as exc:
            raise SMTPResetError(
                f"RSET before the next message failed: {exc}", exc.response
            ) from exc
        if not 200 <= reply.code < 300:
            cls._refused_reset(conn, reply)

    @classmethod
    def _reset_and_pipeline(
        cls, conn: Connection, commands: "list[Command]", tracing: bool | None
    ) -> "list[Response]":
        """RSET and ``commands`` in one write; the replies to ``commands``, once RSET's is good.

        Everything is checked before a byte is written, as for any pipeline
        (a message over the SIZE limit raises its own error, and the session
        stays as it was). The reply to RSET is read first: if it is not 2xx,
        or does not come, the session is closed before any later reply is
        looked at, so not even a 354 among them leads to a byte of the message.
        """
        if tracing is None:
            tracing = conn.trace.on
        commands = [_RSET, *commands]
        wire = conn.send(*commands)
        try:
            conn.write_commands(commands, wire, tracing)
            reply = conn.read_replies(1, tracing)[0]
        except SMTPError as exc:
            raise SMTPResetError(
                f"RSET before the next message failed: {exc}", exc.response
            ) from exc
        if not 200 <= reply.code < 300:
            cls._refused_reset(conn, reply)
        return conn.read_replies(len(commands) - 1, tracing)

    def noop(self) -> "Response":
        """NOOP: checks that the server is there."""
        return self._getok(Noop())

    def quit(self) -> "Response":
        """QUIT; the connection is closed after the reply. ``finish`` is the usual way."""
        conn = self._live()
        try:
            return conn.exchange(Quit())
        finally:
            if conn.dead is None:
                conn.dead = "QUIT was sent"
            conn.close()

    # ------------------------------------------------------------------ messages

    def send_message(
        self,
        msg: "MessageInput",
        from_addr: "str | Address",
        *to_addrs: "str | Address | Iterable[str | Address]",
        eightbit: bool | None = None,
        reset: bool = False,
    ) -> SendResult:
        """Send one message to the recipients, streamed; see ``SendResult``.

        ``msg`` is str, bytes, a binary file or an iterable of byte chunks;
        ``eightbit`` declares an 8-bit body whose content is not known in
        advance (BODY=8BITMIME). Raises SMTPRecipientsRefused, sending no
        message data, when no recipient is accepted.

        ``reset``: start with RSET, for a session reused for one message after
        another; with PIPELINING it costs no round trip of its own (see the
        module docstring). SMTPResetError when the session could not be reset:
        it is then closed and nothing of the message was sent.
        """
        conn = self._live_to_reset() if reset else self._live()
        if type(msg) is str:
            msg = encode_text(msg)
        if type(msg) is bytes and len(msg) <= DEFAULT_CHUNK_SIZE:
            # A small message in memory, the common case: normalised once,
            # measured from that (the size MessageSource would declare), and
            # dot-stuffed in one step after the 354.
            body = normalise(msg)
            if eightbit is None:
                eightbit = not msg.isascii()
            # Whether the trace is on, asked once for the whole message.
            tracing = self._trace.on
            # _address and _recipients, inline for the usual one sender and
            # one recipient given as str, already parsed.
            sender = _ADDRESS_CACHE.get(from_addr) if type(from_addr) is str else None
            if sender is None:
                sender = _address(from_addr)
            recipient = None
            if len(to_addrs) == 1 and type(to_addrs[0]) is str:
                recipient = _ADDRESS_CACHE.get(to_addrs[0])
            recipients = _recipients(to_addrs) if recipient is None else [recipient]
            refused = self._transaction(
                conn, sender, recipients, len(body), eightbit, tracing, reset=reset
            )
            return SendResult(conn.send_whole_body(body, normalised=True, tracing=tracing), refused)
        source = MessageSource.of(msg)
        if eightbit is None:
            eightbit = bool(source.eightbit)
        refused = self._transaction(
            conn, _address(from_addr), _recipients(to_addrs), source.size, eightbit, reset=reset
        )
        return SendResult(conn.send_body(source), refused)

    send_mail = send_message
    sendmail = send_message

    def open_message_stream(
        self,
        from_addr: "str | Address",
        *to_addrs: "str | Address | Iterable[str | Address]",
        eightbit: bool | None = None,
        reset: bool = False,
    ) -> "AbstractContextManager[MessageWriter]":
        """A writer for one message of unknown length: the message ends when the block ends.

        ``with smtp.open_message_stream(frm, to) as f: f.write(...)``; after the
        block, ``f.result`` holds the final reply and the refused recipients.
        If the block raises, the connection is dropped and nothing is delivered.
        ``reset`` as for ``send_message``.
        """
        return _MessageStream(self, (from_addr, to_addrs, eightbit, reset))

    ready = open_message_stream

    def _transaction(
        self,
        conn: Connection,
        sender: Address,
        recipients: list[Address],
        size: int | None,
        eightbit: bool,
        tracing: bool | None = None,
        *,
        reset: bool = False,
    ) -> "dict[str, Response]":
        """[RSET,] MAIL, RCPT for each recipient, DATA; returns the refused ones once 354 arrived.

        On any refusal that ends the transaction, it is cleaned up (the empty
        body ended after a stray 354, RSET) before the error is raised. A
        failed ``reset`` raises SMTPResetError before MAIL's reply is looked at.
        """
        proto = conn.proto
        smtputf8 = False
        rcpts: list[Command] = []
        for recipient in recipients:
            rcpts.append(Rcpt(recipient))
            if not smtputf8 and recipient.needs_smtputf8():
                smtputf8 = True
        mail = Mail(sender, size, eightbit, smtputf8)
        data_reply: Response | None = None
        if proto.pipelining:
            # All checked before any is queued, and sent in one write.
            rcpts.insert(0, mail)
            rcpts.append(DATA)
            if reset:
                replies = self._reset_and_pipeline(conn, rcpts, tracing)
            else:
                replies = conn.pipeline(rcpts, tracing)
            mail_reply, rcpt_replies, data_reply = replies[0], replies[1:-1], replies[-1]
        else:
            # Every command is checked before the first one is sent.
            for command in (mail, *rcpts):
                proto.encode(command)
            if reset:
                self._reset(conn)
            mail_reply = conn.exchange(mail)
            if not mail_reply.success:
                raise error_for_reply(mail_reply)
            rcpt_replies = [conn.exchange(c) for c in rcpts]
            if any(r.success for r in rcpt_replies):
                data_reply = conn.exchange(Data())
        refused: dict[str, Response] = {}
        for recipient, rcpt_reply in zip(recipients, rcpt_replies, strict=True):
            if not 200 <= rcpt_reply.code < 300:  # Response.success, inline
                refused[recipient.address] = rcpt_reply
        error: SMTPError | None = None
        if not 200 <= mail_reply.code < 300:
            error = error_for_reply(mail_reply)
        elif len(refused) == len(recipients):
            error = SMTPRecipientsRefused(refused)
        elif data_reply is not None and data_reply.code != 354:
            error = error_for_reply(data_reply)
        if error is not None:
            self._reset_after(conn, data_reply)
            raise error
        return refused

    @staticmethod
    def _reset_after(conn: Connection, data_reply: "Response | None") -> None:
        """Leave a failed transaction cleanly, so the session can send the next message."""
        try:
            if data_reply is not None and data_reply.code == 354:
                # RFC 2920 section 3.1: a 354 with no accepted recipient is
                # answered with an empty message, which the server refuses.
                end = conn.live().end_body()
                conn.write(end, (end.decode("ascii"),))
                conn.read_reply()
            if conn.proto.state in (MAIL, RCPT):
                reply = conn.exchange(_RSET)
                if not 200 <= reply.code < 300:
                    # Closed by the protocol; the next command says so.
                    conn.kill(conn.proto.closed_reason)
        except SMTPError:
            pass  # a dead session says so on the next command
