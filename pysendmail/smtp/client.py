"""The blocking SMTP client: Ruby's Net::SMTP spelled in Python, driving ``ClientProtocol``.

``SMTP`` owns one socket and one ``ClientProtocol``; everything about the
protocol (checks, parameters, state, reply framing) is decided there, and this
module only moves bytes and time::

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

from __future__ import annotations

import base64
import binascii
import functools
import logging
import socket
import ssl
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from types import TracebackType
from typing import (
    IO,
    TYPE_CHECKING,
    Any,
    Literal,
    Protocol,
    Self,
    TypeAlias,
    TypeVar,
    cast,
    overload,
)

from pysendmail.errors import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPError,
    SMTPOpenTimeout,
    SMTPReadTimeout,
    SMTPRecipientsRefused,
    SMTPSecurityError,
    SMTPServerDisconnected,
    SMTPTimeoutError,
    SMTPTLSError,
    SMTPUnsupportedCommand,
    SMTPWriteTimeout,
    error_for_reply,
)
from pysendmail.smtp import auth
from pysendmail.smtp.address import Address, check_argument, coerce
from pysendmail.smtp.encoder import MessageInput, MessageSource
from pysendmail.smtp.protocol import (
    Auth,
    AuthCancel,
    AuthResponse,
    ClientProtocol,
    Command,
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
from pysendmail.smtp.reply import Capabilities, Response

if TYPE_CHECKING:
    from pysendmail.errors import Reply

__all__ = ["SMTP", "MessageWriter", "SendResult", "StartTLSMode"]

logger = logging.getLogger("pysendmail.smtp")

#: Octets of message data gathered before one write: large enough that a big
#: message costs few system calls, small enough that memory stays flat.
WRITE_SIZE = 65536
_RECV_SIZE = 65536
#: A hostile server could send 334 for ever; no real mechanism needs more.
MAX_AUTH_CHALLENGES = 8

StartTLSMode: TypeAlias = Literal["auto", "always", False]
_QUIT_STATES = frozenset({State.CONNECTED, State.READY, State.MAIL, State.RCPT})


@dataclass(frozen=True)
class SendResult:
    """What a sent message got: the final reply and the recipients the server refused.

    ``refused`` maps each refused address to the reply that refused it; it is
    empty when every recipient was accepted.
    """

    response: Response
    refused: dict[str, Response] = field(default_factory=dict)


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


class _StartDescriptor:
    """``SMTP.start(address, ...)`` creates and starts; ``smtp.start(...)`` starts ``smtp``.

    Net::SMTP has both, under one name; Python needs a descriptor for that.
    """

    @overload
    def __get__(self, obj: None, objtype: type[_S]) -> _ClassStart[_S]: ...
    @overload
    def __get__(self, obj: _S, objtype: type[_S] | None = None) -> _InstanceStart[_S]: ...
    def __get__(self, obj: SMTP | None, objtype: type[SMTP] | None = None) -> Any:
        if obj is not None:
            return obj._start
        assert objtype is not None
        return functools.partial(_create_and_start, objtype)


def _create_and_start(
    cls: type[_S],
    address: str,
    port: int | None = None,
    *,
    helo: str = "localhost",
    user: str | None = None,
    secret: str | None = None,
    authtype: str | None = None,
    **constructor_keywords: Any,
) -> _S:
    return cls(address, port, **constructor_keywords)._start(
        helo=helo, user=user, secret=secret, authtype=authtype
    )


def _flatten(items: Iterable[object]) -> list[Address]:
    out: list[Address] = []
    for item in items:
        if isinstance(item, str | Address):
            out.append(coerce(item))
        elif isinstance(item, bytes | bytearray) or not isinstance(item, Iterable):
            raise TypeError(f"a recipient must be str or Address, not {type(item).__name__}")
        else:
            out.extend(_flatten(item))
    return out


def _tls_version(value: ssl.TLSVersion | str) -> ssl.TLSVersion:
    if isinstance(value, ssl.TLSVersion):
        return value
    name = value.upper().replace("TLSV", "").replace("TLS", "").replace("_", ".").strip(" v.")
    versions = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
    if name not in versions:
        raise ValueError(f"tls_min_version must be TLSv1.2 or TLSv1.3, not {value!r}")
    return versions[name]


class MessageWriter:
    """The message body being written after DATA: streamed, normalised and dot-stuffed.

    ``write`` takes str (encoded UTF-8) or bytes; line ends may be CRLF, LF
    or CR, and may be split across writes. ``close()`` ends the message and
    returns the server's reply; leaving a ``with`` block does the same, unless
    the block raised, in which case the connection is dropped so that no
    truncated message is delivered.
    """

    def __init__(self, client: SMTP, refused: dict[str, Response]) -> None:
        self._client = client
        self._buffer = bytearray()
        self._closed = False
        #: Recipients the server refused (address -> reply); set before the first write.
        self.refused = refused
        #: The reply to the end of the message, once closed.
        self.response: Response | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def result(self) -> SendResult | None:
        """The final reply and the refused recipients, once the message is closed."""
        return None if self.response is None else SendResult(self.response, self.refused)

    def write(self, data: str | bytes | bytearray | memoryview) -> int:
        """Add ``data`` to the message; returns how many characters or octets were taken."""
        if self._closed:
            raise ValueError("write to a closed message")
        raw = data.encode("utf-8") if isinstance(data, str) else data
        self._buffer += self._client._body_bytes(raw)
        if len(self._buffer) >= WRITE_SIZE:
            self._client._write(self._buffer)
            self._buffer.clear()
        return len(data)

    def writelines(self, lines: Iterable[str | bytes | bytearray | memoryview]) -> None:
        """Write each item in turn (like ``IO.writelines``: no line ends are added)."""
        for line in lines:
            self.write(line)

    def print(self, *args: object, sep: str = " ", end: str = "\n") -> None:
        """Like ``print(*args, file=...)``: the arguments as text, then a line end."""
        self.write(sep.join(str(arg) for arg in args) + end)

    def close(self) -> Response:
        """End the message and return the reply; raises the reply's error when it is not 2xx."""
        if self._closed:
            if self.response is None:
                raise ValueError("the message was abandoned and not sent")
            return self.response
        self._closed = True
        buffer, self._buffer = self._buffer, bytearray()
        self.response = self._client._end_body(buffer)
        return self.response

    def abort(self) -> None:
        """Drop the connection without ending the message: nothing of it is delivered."""
        if not self._closed:
            self._closed = True
            self._buffer.clear()
            self._client._kill("the message was abandoned while being written")

    def __enter__(self) -> MessageWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()


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
        starttls: StartTLSMode = "auto",
        tls_verify: bool = True,
        tls_hostname: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        ca_file: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        tls_min_version: ssl.TLSVersion | str | None = None,
        source_address: tuple[str, int] | None = None,
        allow_plaintext_auth: bool = False,
        open_timeout: float | None = 30.0,
        read_timeout: float | None = 60.0,
        write_timeout: float | None = 60.0,
        esmtp: bool = True,
        debug_output: IO[str] | None = None,
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
        self.tls_min_version = None if tls_min_version is None else _tls_version(tls_min_version)
        self.source_address = source_address
        self.allow_plaintext_auth = allow_plaintext_auth
        self.open_timeout = open_timeout
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.esmtp = esmtp
        self._debug: IO[str] | None = debug_output
        self._sock: socket.socket | None = None
        self._proto: ClientProtocol | None = None
        self._started = False
        self._encrypted = False
        # Why the session is over, once it is: every later command says so.
        self._dead: str | None = None
        self._helo_name = "localhost"
        # Built on first use and kept: every session of this object shares it.
        self._context: ssl.SSLContext | None = None

    # ------------------------------------------------------------------ attributes

    def __repr__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"<{type(self).__name__} {host}:{self.port} started={self._started}>"

    @property
    def started(self) -> bool:
        """True from a successful ``start`` until ``finish``."""
        return self._started

    @property
    def encrypted(self) -> bool:
        """Whether the connection is protected by TLS now (implicit or after STARTTLS)."""
        return self._encrypted and self._sock is not None

    @property
    def capabilities(self) -> Capabilities:
        """The extensions of the last EHLO reply; lookups are case-insensitive."""
        return self._proto.capabilities if self._proto is not None else Capabilities()

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
    def debug_output(self) -> IO[str] | None:
        """The text stream the trace goes to; None sends it to ``logging`` at DEBUG."""
        return self._debug

    @debug_output.setter
    def debug_output(self, stream: IO[str] | None) -> None:
        self._debug = stream

    def set_debug_output(self, stream: IO[str] | None) -> None:
        """Send the trace to ``stream`` (None: back to ``logging``)."""
        self._debug = stream

    def _tracing(self) -> bool:
        return self._debug is not None or logger.isEnabledFor(logging.DEBUG)

    def _trace(self, text: str) -> None:
        if self._debug is not None:
            self._debug.write(text + "\n")
        else:
            logger.debug("%s", text)

    # ------------------------------------------------------------------ start and finish

    def _start(
        self,
        *,
        helo: str = "localhost",
        user: str | None = None,
        secret: str | None = None,
        authtype: str | None = None,
    ) -> Self:
        if self._started or self._sock is not None:
            raise LocalProtocolError("the SMTP session is already started")
        if (user is None) != (secret is None):
            raise ValueError("user and secret must be given together")
        # Everything the caller gave is checked before a connection is made.
        ClientProtocol().encode(Ehlo(helo))
        if user is not None:
            check_argument(user, "AUTH user")
            if authtype is not None:
                auth.canonical_name(authtype)
        # Loading the system's CA store costs ~40 ms: only when TLS is certain.
        context = self._tls_context() if self.tls else None
        self._dead = None
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
            self._abandon()
            raise
        self._started = True
        return self

    def _abandon(self) -> None:
        """After a failed start: QUIT when the server can still take it, then close."""
        proto = self._proto
        if (
            self._sock is not None
            and self._dead is None
            and proto is not None
            and proto.state in _QUIT_STATES
            and not proto.pending
        ):
            with suppress(SMTPError, LocalProtocolError):
                self.quit()
        self._close_socket()
        self._dead = None

    def finish(self) -> None:
        """Send QUIT (when the session is alive) and close; OSError when not started.

        A dead session is closed without QUIT, and nothing is raised: the
        error that killed it was raised already.
        """
        if not self._started:
            raise SMTPServerDisconnected("the SMTP session is not started")
        try:
            proto = self._proto
            if (
                self._sock is not None
                and self._dead is None
                and proto is not None
                and proto.state in _QUIT_STATES
                and not proto.pending
            ):
                try:
                    self.quit()
                except SMTPError as exc:
                    # The messages are sent or not already; a failed goodbye
                    # changes nothing for the caller.
                    if self._tracing():
                        self._trace(f"-- QUIT failed: {exc}")
        finally:
            self._close_socket()
            self._started = False

    def __enter__(self) -> SMTP:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._started:
            self.finish()

    # ------------------------------------------------------------------ sockets

    def _tls_context(self) -> ssl.SSLContext:
        if self.ssl_context is not None:
            return self.ssl_context
        if self._context is not None:
            return self._context
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

    def _deadline(self, timeout: float | None) -> float | None:
        return None if timeout is None else time.monotonic() + timeout

    @staticmethod
    def _remaining(deadline: float | None) -> float | None:
        if deadline is None:
            return None
        return max(deadline - time.monotonic(), 0.0)

    def _connect(self, context: ssl.SSLContext | None) -> None:
        deadline = self._deadline(self.open_timeout)
        where = f"{self.address}:{self.port}"
        if self._tracing():
            self._trace(f"-- connecting to {where}")
        try:
            sock = socket.create_connection(
                (self.address, self.port),
                timeout=self.open_timeout,
                source_address=self.source_address,
            )
        except TimeoutError as exc:
            raise SMTPOpenTimeout(f"connecting to {where} timed out") from exc
        except OSError as exc:
            raise SMTPConnectError(f"cannot connect to {where}: {exc}") from exc
        with suppress(OSError):  # not TCP after all: latency, not correctness
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._proto = ClientProtocol()
        self._encrypted = False
        if self.tls:
            assert context is not None
            self._wrap(context, deadline)
        greeting = self._read_reply(deadline=deadline, timeout_error=SMTPOpenTimeout)
        if greeting.code != 220:
            raise error_for_reply(greeting)

    def _wrap(self, context: ssl.SSLContext, deadline: float | None) -> None:
        sock = self._sock
        assert sock is not None
        hostname = self.tls_hostname or self.address
        try:
            sock.settimeout(self._remaining(deadline))
            self._sock = context.wrap_socket(sock, server_hostname=hostname)
        except TimeoutError as exc:
            self._kill("TLS handshake timed out")
            raise SMTPOpenTimeout(f"the TLS handshake with {hostname} timed out") from exc
        except ssl.SSLError as exc:
            # Certificate verification failures land here too.
            self._kill(f"TLS handshake failed: {exc}")
            raise SMTPTLSError(f"TLS with {hostname} failed: {exc}") from exc
        except OSError as exc:
            self._kill(f"connection lost during the TLS handshake: {exc}")
            raise SMTPServerDisconnected(
                f"the connection was lost during the TLS handshake with {hostname}: {exc}"
            ) from exc
        self._encrypted = True
        if self._tracing():
            tls_sock = self._sock
            assert isinstance(tls_sock, ssl.SSLSocket)
            self._trace(f"-- TLS established: {tls_sock.version()} {tls_sock.cipher()}")

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        self._encrypted = False
        if sock is not None:
            with suppress(OSError):
                sock.close()

    def _kill(self, reason: str) -> None:
        """The session is dead: remember why, close the socket, refuse everything after."""
        if self._dead is None:
            self._dead = reason
            if self._tracing():
                self._trace(f"-- session dead: {reason}")
        if self._proto is not None:
            self._proto.connection_lost(reason)
        self._close_socket()

    def _live(self) -> tuple[socket.socket, ClientProtocol]:
        if self._dead is not None:
            raise SMTPServerDisconnected(f"the SMTP session is over: {self._dead}")
        if self._sock is None or self._proto is None:
            raise SMTPServerDisconnected("the SMTP session is not connected; call start() first")
        return self._sock, self._proto

    def _write(self, data: bytes | bytearray, traces: Iterable[str] = ()) -> None:
        sock, _ = self._live()
        if self._tracing():
            for text in traces:
                self._trace(f"<- {text!r}")
        try:
            sock.settimeout(self.write_timeout)
            sock.sendall(data)
        except TimeoutError as exc:
            self._kill("write timed out")
            raise SMTPWriteTimeout(
                f"writing to {self.address}:{self.port} took longer than {self.write_timeout} s"
            ) from exc
        except OSError as exc:
            self._kill(f"write failed: {exc}")
            raise SMTPServerDisconnected(
                f"the connection to {self.address}:{self.port} was lost while writing: {exc}"
            ) from exc
        except BaseException:
            # Interrupted half way: nobody knows what the server received.
            self._kill("interrupted while writing")
            raise

    def _read_reply(
        self,
        *,
        deadline: float | None = None,
        timeout_error: type[SMTPTimeoutError] = SMTPReadTimeout,
    ) -> Response:
        sock, proto = self._live()
        started = False
        while True:
            try:
                reply = proto.next_reply()
            except SMTPError as exc:
                self._kill(str(exc))
                raise
            if reply is not None:
                break
            if not started:
                started = True
                if deadline is None:
                    # One deadline for the whole reply: a server dribbling a
                    # byte at a time cannot stretch it.
                    deadline = self._deadline(self.read_timeout)
            remaining = self._remaining(deadline)
            try:
                if remaining is not None and remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                data = sock.recv(_RECV_SIZE)
            except TimeoutError as exc:
                self._kill("timed out waiting for a reply")
                raise timeout_error(
                    f"no complete reply from {self.address}:{self.port} in time"
                ) from exc
            except OSError as exc:
                self._kill(f"read failed: {exc}")
                raise SMTPServerDisconnected(
                    f"the connection to {self.address}:{self.port} was lost: {exc}"
                ) from exc
            except BaseException:
                self._kill("interrupted while reading")
                raise
            proto.receive_data(data)
        if self._tracing():
            self._trace(f"-> {reply.string!r}")
        if reply.code == 421:
            # The server is closing the transmission channel (RFC 5321 3.8).
            self._kill(f"the server is closing: {reply}")
            raise error_for_reply(reply)
        return reply

    def _send(self, command: Command) -> bytes:
        _, proto = self._live()
        try:
            return proto.send(command)
        except SMTPError as exc:
            if proto.state is State.CLOSED:
                self._kill(str(exc))
            raise

    def _exchange(self, command: Command) -> Response:
        """Send one command in one write and return its reply, whatever it is."""
        data = self._send(command)
        self._write(data, (command.trace(data),))
        return self._read_reply()

    def _getok(self, command: Command) -> Response:
        reply = self._exchange(command)
        if not reply.success:
            raise error_for_reply(reply)
        return reply

    # ------------------------------------------------------------------ commands

    def ehlo(self, domain: str) -> Response:
        """EHLO; the reply's extensions become ``capabilities``."""
        reply = self._getok(Ehlo(domain))
        self._helo_name = domain
        return reply

    def helo(self, domain: str) -> Response:
        """HELO, for servers without ESMTP; ``capabilities`` becomes empty."""
        reply = self._getok(Helo(domain))
        self._helo_name = domain
        return reply

    def _hello(self, domain: str) -> None:
        if self.esmtp:
            reply = self._exchange(Ehlo(domain))
            if reply.success:
                self._helo_name = domain
                return
            # RFC 5321 section 3.2: a server that does not know EHLO gets HELO.
            self.esmtp = False
        self.helo(domain)

    def starttls(self) -> Response:
        """STARTTLS: upgrade the connection, drop any plaintext after the 220, EHLO again.

        Returns the 220 reply. SMTPUnsupportedCommand when the server does not
        offer STARTTLS; SMTPTLSError (the session is then dead) when the
        handshake or the certificate check fails.
        """
        return self._starttls(None)

    def _starttls(self, context: ssl.SSLContext | None) -> Response:
        self._live()
        if self._encrypted:
            raise LocalProtocolError("the connection is already encrypted")
        if not self.capable("STARTTLS"):
            raise SMTPUnsupportedCommand("the server does not offer STARTTLS")
        context = context or self._tls_context()
        reply = self._exchange(StartTLS())
        if reply.code != 220:
            raise error_for_reply(reply)
        self._wrap(context, self._deadline(self.open_timeout))
        _, proto = self._live()
        proto.tls_started()
        self._hello(self._helo_name)
        return reply

    def authenticate(self, user: str, secret: str, authtype: str | None = None) -> Response:
        """AUTH with ``authtype`` (or the best the server offers: CRAM-MD5, PLAIN, LOGIN).

        Refused before anything is sent: over a connection without TLS
        (SMTPSecurityError, unless ``allow_plaintext_auth``), a mechanism the
        server does not offer (SMTPUnsupportedCommand), a user name with a
        control character (ValueError). A refusal by the server raises
        SMTPAuthenticationError (5xx) or SMTPServerBusy (4xx).
        """
        self._live()
        if not self.encrypted and not self.allow_plaintext_auth:
            raise SMTPSecurityError(
                "refusing to send credentials over a connection without TLS "
                "(use TLS, or allow_plaintext_auth=True on a trusted network)"
            )
        offered = self.capable_auth_types
        name = auth.select(offered, authtype)
        if name is None:
            wanted = auth.canonical_name(authtype) if authtype else "a supported mechanism"
            listed = " ".join(offered) if offered else "none"
            raise SMTPUnsupportedCommand(
                f"the server does not offer AUTH {wanted} (it offers: {listed})"
            )
        mechanism = auth.mechanism(name, user, secret)
        reply = self._exchange(Auth(name, mechanism.initial_response()))
        challenges = 0
        while reply.code == 334:
            challenges += 1
            try:
                if challenges > MAX_AUTH_CHALLENGES:
                    raise ValueError("the server keeps sending challenges")
                challenge = base64.b64decode(reply.message.strip(), validate=True)
                answer = mechanism.respond(challenge)
            except (binascii.Error, ValueError) as exc:
                # Cancel the exchange (RFC 4954 section 4) so the session stays usable.
                cancel = self._exchange(AuthCancel())
                raise SMTPAuthenticationError(
                    f"AUTH {name} abandoned: {exc} (the server answered the cancel with {cancel})",
                    cancel,
                ) from exc
            reply = self._exchange(AuthResponse(answer))
        if not reply.success:
            raise error_for_reply(reply, during_auth=True)
        return reply

    def mailfrom(
        self,
        from_addr: str | Address,
        *,
        size: int | None = None,
        eightbit: bool = False,
        smtputf8: bool = False,
    ) -> Response:
        """MAIL FROM; SIZE, BODY and SMTPUTF8 are added as the server allows."""
        return self._getok(Mail(coerce(from_addr), size, eightbit, smtputf8))

    def rcptto(self, to_addr: str | Address) -> Response:
        """RCPT TO; raises the reply's error when the recipient is refused."""
        return self._getok(Rcpt(coerce(to_addr)))

    def rcptto_list(self, to_addrs: Iterable[str | Address]) -> dict[str, Response]:
        """RCPT TO for each address (in one write with PIPELINING); returns the refused ones.

        Raises SMTPRecipientsRefused when every one was refused.
        """
        recipients = _flatten(to_addrs)
        if not recipients:
            raise ValueError("no recipients given")
        _, proto = self._live()
        commands = [Rcpt(r) for r in recipients]
        for command in commands:
            proto.encode(command)
        if proto.pipelining:
            replies = self._pipeline(commands)
        else:
            replies = [self._exchange(c) for c in commands]
        refused = {
            r.address: rep for r, rep in zip(recipients, replies, strict=True) if not rep.success
        }
        if len(refused) == len(recipients):
            raise SMTPRecipientsRefused(cast("dict[str, Reply]", refused))
        return refused

    @overload
    def data(self, msg: None = None) -> MessageWriter: ...
    @overload
    def data(self, msg: MessageInput) -> Response: ...
    def data(self, msg: MessageInput | None = None) -> MessageWriter | Response:
        """DATA. With ``msg``: send it and return the final reply. Without: a writer."""
        source = None if msg is None else MessageSource.of(msg)
        reply = self._exchange(Data())
        if reply.code != 354:
            raise error_for_reply(reply)
        if source is None:
            return MessageWriter(self, {})
        return self._send_body(source)

    def rset(self) -> Response:
        """RSET: abandon the mail transaction."""
        return self._getok(Rset())

    def noop(self) -> Response:
        """NOOP: checks that the server is there."""
        return self._getok(Noop())

    def quit(self) -> Response:
        """QUIT; the connection is closed after the reply. ``finish`` is the usual way."""
        try:
            reply = self._exchange(Quit())
        finally:
            if self._dead is None:
                self._dead = "QUIT was sent"
            self._close_socket()
        return reply

    # ------------------------------------------------------------------ messages

    def send_message(
        self,
        msg: MessageInput,
        from_addr: str | Address,
        *to_addrs: str | Address | Iterable[str | Address],
        eightbit: bool | None = None,
    ) -> SendResult:
        """Send one message to the recipients, streamed; see ``SendResult``.

        ``msg`` is str, bytes, a binary file or an iterable of byte chunks;
        ``eightbit`` declares an 8-bit body whose content is not known in
        advance (BODY=8BITMIME). Raises SMTPRecipientsRefused, sending no
        message data, when no recipient is accepted.
        """
        self._live()
        source = MessageSource.of(msg)
        if eightbit is None:
            eightbit = bool(source.eightbit)
        sender = coerce(from_addr)
        recipients = self._recipients(to_addrs)
        refused = self._transaction(sender, recipients, source.size, eightbit)
        return SendResult(self._send_body(source), refused)

    send_mail = send_message
    sendmail = send_message

    @contextmanager
    def open_message_stream(
        self,
        from_addr: str | Address,
        *to_addrs: str | Address | Iterable[str | Address],
        eightbit: bool | None = None,
    ) -> Iterator[MessageWriter]:
        """A writer for one message of unknown length: the message ends when the block ends.

        ``with smtp.open_message_stream(frm, to) as f: f.write(...)``; after the
        block, ``f.result`` holds the final reply and the refused recipients.
        If the block raises, the connection is dropped and nothing is delivered.
        """
        self._live()
        sender = coerce(from_addr)
        recipients = self._recipients(to_addrs)
        refused = self._transaction(sender, recipients, None, bool(eightbit))
        writer = MessageWriter(self, refused)
        try:
            yield writer
        except BaseException:
            writer.abort()
            raise
        writer.close()

    ready = open_message_stream

    def _recipients(self, to_addrs: Iterable[object]) -> list[Address]:
        recipients = _flatten(to_addrs)
        if not recipients:
            raise ValueError("no recipients given")
        return recipients

    def _pipeline(self, commands: Sequence[Command]) -> list[Response]:
        wire = bytearray()
        traces = []
        for command in commands:
            data = self._send(command)
            wire += data
            traces.append(command.trace(data))
        self._write(wire, traces)
        return [self._read_reply() for _ in commands]

    def _transaction(
        self, sender: Address, recipients: list[Address], size: int | None, eightbit: bool
    ) -> dict[str, Response]:
        """MAIL, RCPT for each recipient, DATA; returns the refused ones once 354 arrived.

        On any refusal that ends the transaction, it is cleaned up (the empty
        body ended after a stray 354, RSET) before the error is raised.
        """
        _, proto = self._live()
        smtputf8 = any(r.needs_smtputf8() for r in recipients)
        mail = Mail(sender, size, eightbit, smtputf8)
        rcpts = [Rcpt(r) for r in recipients]
        # Every command is checked before the first byte is sent.
        for command in (mail, *rcpts):
            proto.encode(command)
        data_reply: Response | None = None
        if proto.pipelining:
            replies = self._pipeline([mail, *rcpts, Data()])
            mail_reply, rcpt_replies, data_reply = replies[0], replies[1:-1], replies[-1]
        else:
            mail_reply = self._exchange(mail)
            if not mail_reply.success:
                raise error_for_reply(mail_reply)
            rcpt_replies = [self._exchange(c) for c in rcpts]
            if any(r.success for r in rcpt_replies):
                data_reply = self._exchange(Data())
        refused = {
            r.address: rep
            for r, rep in zip(recipients, rcpt_replies, strict=True)
            if not rep.success
        }
        error: SMTPError | None = None
        if not mail_reply.success:
            error = error_for_reply(mail_reply)
        elif len(refused) == len(recipients):
            error = SMTPRecipientsRefused(cast("dict[str, Reply]", refused))
        elif data_reply is not None and data_reply.code != 354:
            error = error_for_reply(data_reply)
        if error is not None:
            self._reset_after(data_reply)
            raise error
        return refused

    def _reset_after(self, data_reply: Response | None) -> None:
        """Leave a failed transaction cleanly, so the session can send the next message."""
        try:
            _, proto = self._live()
            if data_reply is not None and data_reply.code == 354:
                # RFC 2920 section 3.1: a 354 with no accepted recipient is
                # answered with an empty message, which the server refuses.
                end = proto.end_body()
                self._write(end, (end.decode("ascii"),))
                self._read_reply()
            if proto.state in (State.MAIL, State.RCPT):
                self._exchange(Rset())
        except SMTPError:
            pass  # the session is dead now and says so on the next command

    def _body_bytes(self, data: bytes | bytearray | memoryview) -> bytes:
        _, proto = self._live()
        return proto.send_body(data)

    def _send_body(self, source: MessageSource) -> Response:
        buffer = bytearray()
        try:
            for chunk in source.chunks():
                buffer += self._body_bytes(chunk)
                if len(buffer) >= WRITE_SIZE:
                    self._write(buffer)
                    buffer.clear()
        except SMTPError:
            raise
        except BaseException:
            # The caller's file or iterable failed half way: ending the message
            # now would deliver it truncated, so the connection is dropped.
            self._kill("the message source failed while being sent")
            raise
        return self._end_body(buffer)

    def _end_body(self, buffer: bytearray) -> Response:
        _, proto = self._live()
        end = proto.end_body()
        buffer += end
        if self._tracing():
            self._trace(f"<- [message data: {proto.body_octets} octets]")
        self._write(buffer, (".\r\n",))
        reply = self._read_reply()
        if not reply.success:
            raise error_for_reply(reply)
        return reply
