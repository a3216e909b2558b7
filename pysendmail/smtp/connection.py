"""One live SMTP connection: a socket, the ``ClientProtocol`` on it, time limits, the trace.

``Connection`` is the blocking network backend of ``SMTP`` (``client``): it
opens the TCP connection, runs the TLS handshake, writes command bytes in one
``sendall`` each, reads until the protocol has a whole reply, and streams
message bodies in ``WRITE_SIZE`` writes. ``client.SMTP`` decides what to send;
this module decides nothing about SMTP, it moves bytes under deadlines.
``MessageWriter`` (the object ``data()`` and ``open_message_stream`` hand out)
lives here because it only ever talks to the connection.

The rule it exists to keep: after any I/O error, timeout, protocol violation
or 421, the connection is dead. The socket is closed at once, the reason is
kept, and every later use raises ``SMTPServerDisconnected`` without touching
the network. Foreign exceptions (``OSError``, ``ssl.SSLError``,
``TimeoutError``) are translated here and nowhere else, ``raise ... from``
the original. A message body is never ended with "." unless all of it was
sent: when the caller's data fails half way the connection is dropped instead,
so no truncated message is ever delivered.

The trace (``Trace``) shows commands and replies as ``repr`` strings, which
escapes anything a hostile server might send to a terminal; AUTH payloads
arrive here already redacted (``Command.trace``), and the body only as its
size. Nothing here stores credentials.

What it imports, and when: ``_socket`` (the C module under ``socket``; the
``socket`` module itself brings ``enum``, ``selectors`` and ``collections``,
about 10 ms per ``sendmail`` run), the project's own modules, and nothing
else until it is needed. ``ssl`` is imported by the TLS handshake only, so a
plain-TCP session never loads it. ``logging`` is never imported here: with no
debug stream set, the trace goes to the "pysendmail.smtp" logger only if the
program has loaded ``logging`` itself. A program that never imported it
cannot have configured that logger, and under logging's defaults (the root
logger at WARNING) a DEBUG record is dropped anyway, so nothing is lost.

A plain TCP socket is non-blocking, and the time limits are kept here: a
write is tried at once and waits (``select.poll``, up to what is left of the
deadline) only when the socket's buffer is full; a read is tried at once or
waits first, as the link has shown to pay (``_recv_plain``). A socket with a
timeout would ``poll`` before every ``send`` and ``recv``, whose buffers
are almost never full, and whose replies on a loopback are mostly there.
A TLS socket keeps Python's timeouts (an ``SSLSocket`` manages its own
reads), set only when they change: ``settimeout`` is a system call too.
"""

# No ``from __future__``, ``typing``, ``dataclasses``, ``contextlib``,
# ``socket``, ``ssl`` or ``logging`` at run time; see the module docstring.
import _socket
import sys
import time

from pysendmail.errors import (
    SMTPConnectError,
    SMTPError,
    SMTPOpenTimeout,
    SMTPReadTimeout,
    SMTPServerDisconnected,
    SMTPTLSError,
    SMTPWriteTimeout,
    error_for_reply,
)
from pysendmail.smtp.protocol import CLOSED, ClientProtocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    import ssl
    from collections.abc import Iterable, Sequence
    from types import TracebackType
    from typing import IO, Any

    from pysendmail.errors import SMTPTimeoutError
    from pysendmail.smtp.encoder import MessageSource
    from pysendmail.smtp.protocol import Command
    from pysendmail.smtp.reply import Response

__all__ = ["WRITE_SIZE", "Connection", "MessageWriter", "SendResult", "Timeouts", "Trace"]

LOGGER_NAME = "pysendmail.smtp"
_DEBUG = 10  # logging.DEBUG

#: Octets of message data gathered before one write: large enough that a big
#: message costs few system calls, small enough that memory stays flat.
WRITE_SIZE = 65536
_RECV_SIZE = 65536
# What Connection._timeout holds when the socket's timeout is not known.
_UNKNOWN = -1.0
# select.POLLIN and select.POLLOUT, the same on every system with poll(2).
_POLLIN = 0x001
_POLLOUT = 0x004


class Trace:
    """Where the debug trace goes: a text stream when set, else ``logging`` at DEBUG.

    ``logging`` is used only when the program has imported it (see the module
    docstring); it is never imported here.
    """

    __slots__ = ("stream",)

    # The "pysendmail.smtp" logger, once ``logging`` is loaded.
    _logger: "logging.Logger | None" = None

    def __init__(self, stream: "IO[str] | None" = None) -> None:
        self.stream = stream

    @classmethod
    def _debug_logger(cls) -> "logging.Logger | None":
        """The logger if it would emit a DEBUG record now, else None."""
        logger = cls._logger
        if logger is None:
            logging = sys.modules.get("logging")
            if logging is None:
                return None
            logger = cls._logger = logging.getLogger(LOGGER_NAME)
        return logger if logger.isEnabledFor(_DEBUG) else None

    @property
    def on(self) -> bool:
        """Whether anybody listens; callers skip building trace text when not."""
        return self.stream is not None or self._debug_logger() is not None

    def __call__(self, text: str) -> None:
        if self.stream is not None:
            self.stream.write(text + "\n")
        else:
            logger = self._debug_logger()
            if logger is not None:
                logger.debug("%s", text)


class Timeouts:
    """The three time limits in seconds (None: wait for ever), read at each operation.

    Shared between ``SMTP`` and its connection, so that changing
    ``smtp.read_timeout`` on a live session applies to the next reply.
    """

    __slots__ = ("open", "read", "write")

    def __init__(
        self,
        open: float | None = 30.0,
        read: float | None = 60.0,
        write: float | None = 60.0,
    ) -> None:
        self.open = open
        self.read = read
        self.write = write

    def __repr__(self) -> str:
        return f"Timeouts(open={self.open!r}, read={self.read!r}, write={self.write!r})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not Timeouts:
            return NotImplemented
        return (self.open, self.read, self.write) == (other.open, other.read, other.write)

    __hash__ = None  # type: ignore[assignment]  # mutable, equal by value


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


class SendResult:
    """What a sent message got: the final reply and the recipients the server refused.

    ``refused`` maps each refused address to the reply that refused it; it is
    empty when every recipient was accepted. Immutable.
    """

    __slots__ = ("refused", "response")

    response: "Response"
    refused: "dict[str, Response]"

    def __init__(self, response: "Response", refused: "dict[str, Response] | None" = None) -> None:
        object.__setattr__(self, "response", response)
        object.__setattr__(self, "refused", {} if refused is None else refused)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: SendResult is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: SendResult is immutable")

    def __repr__(self) -> str:
        return f"SendResult(response={self.response!r}, refused={self.refused!r})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not SendResult:
            return NotImplemented
        return self.response == other.response and self.refused == other.refused

    def __hash__(self) -> int:
        return hash((self.response, self.refused))


def _host_bytes(host: str) -> bytes | str:
    """``host`` as ``getaddrinfo`` would encode it, for an ASCII name; else ``host`` itself.

    Given a ``str``, ``getaddrinfo`` runs the "idna" codec, whose first use
    imports ``encodings.idna``, ``stringprep``, ``re`` and ``enum`` (about
    10 ms) even for "127.0.0.1". For an ASCII name that codec only checks the
    label lengths and returns the ASCII bytes: the same checks, here. A name
    that fails them goes to the codec, which raises what it always raised.
    """
    if not host.isascii():
        return host
    raw = host.encode("ascii")
    labels = raw.split(b".")
    if len(labels[-1]) >= 64 or any(not 0 < len(label) < 64 for label in labels[:-1]):
        return host
    return raw


def _create_connection(
    host: str, port: int, timeout: float | None, source_address: "tuple[str, int] | None"
) -> "_socket.socket":
    """``socket.create_connection`` on ``_socket``: each address in turn, the last error raised."""
    error: OSError | None = None
    for family, kind, proto, _name, address in _socket.getaddrinfo(
        _host_bytes(host), port, 0, _socket.SOCK_STREAM
    ):
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(address)
        except OSError as exc:
            error = exc
            sock.close()
            continue
        return sock
    raise error if error is not None else OSError("getaddrinfo returns an empty list")


class Connection:
    """A connected socket and the protocol state on it; see the module docstring."""

    __slots__ = (
        "_misses",
        "_plain",
        "_pollers",
        "_sock",
        "_timeout",
        "_wait_first",
        "dead",
        "encrypted",
        "peer",
        "proto",
        "timeouts",
        "trace",
        "where",
    )

    def __init__(
        self, sock: "_socket.socket", where: str, timeouts: Timeouts, trace: Trace
    ) -> None:
        self._sock: _socket.socket | None = sock
        # The timeout last set on the socket (settimeout is a system call).
        self._timeout: float | None = _UNKNOWN
        # Plain TCP: non-blocking, deadlines kept here (see the module docstring).
        self._plain = False
        self._pollers: dict[int, Any] = {}
        # Reads that wait before trying, and the misses behind it (_recv_plain).
        self._wait_first = 0
        self._misses = 0
        #: The server's IP address, as connected (for logs: "relay=host[ip]:port").
        self.peer: str | None
        try:
            self.peer = str(sock.getpeername()[0])
        except (OSError, IndexError, TypeError):
            self.peer = None
        self.proto = ClientProtocol()
        self.where = where
        self.timeouts = timeouts
        self.trace = trace
        #: Why the connection is over, once it is.
        self.dead: str | None = None
        self.encrypted = False

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        *,
        timeouts: Timeouts,
        trace: Trace,
        source_address: "tuple[str, int] | None" = None,
        deadline: float | None = None,
    ) -> "Connection":
        """Connect over TCP (TCP_NODELAY set); SMTPConnectError or SMTPOpenTimeout.

        ``deadline`` (monotonic) bounds the connect; without it, the open timeout does.
        """
        where = f"{host}:{port}"
        if trace.on:
            trace(f"-- connecting to {where}")
        timeout = timeouts.open if deadline is None else _remaining(deadline)
        try:
            sock = _create_connection(host, port, timeout, source_address)
        except TimeoutError as exc:
            raise SMTPOpenTimeout(f"connecting to {where} timed out") from exc
        except OSError as exc:
            raise SMTPConnectError(f"cannot connect to {where}: {exc}") from exc
        # Every command is one write and waits for its reply: Nagle's algorithm
        # would hold each one back for a delayed ACK (~40 ms on Linux).
        try:  # noqa: SIM105  (contextlib.suppress would cost an import)
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        except OSError:
            pass  # slower without it, not wrong
        conn = cls(sock, where, timeouts, trace)
        try:
            sock.settimeout(0.0)
        except OSError as exc:
            sock.close()
            raise SMTPConnectError(f"cannot use the connection to {where}: {exc}") from exc
        conn._plain = True
        conn._timeout = 0.0
        return conn

    # ------------------------------------------------------------------ life and death

    def live(self) -> ClientProtocol:
        """The protocol, if the connection is alive; else SMTPServerDisconnected at once."""
        if self.dead is not None or self._sock is None:
            raise SMTPServerDisconnected(f"the SMTP session is over: {self.dead or 'closed'}")
        return self.proto

    def kill(self, reason: str) -> None:
        """The connection is dead: remember why, close the socket, refuse everything after."""
        if self.dead is None:
            self.dead = reason
            if self.trace.on:
                self.trace(f"-- session dead: {reason}")
        self.proto.connection_lost(reason)
        self.close()

    def close(self) -> None:
        """Close the socket (idempotent); the reason, if any, stays."""
        sock, self._sock = self._sock, None
        if sock is not None:
            try:  # noqa: SIM105  (contextlib.suppress would cost an import)
                sock.close()
            except OSError:
                pass

    @staticmethod
    def deadline(timeout: float | None) -> float | None:
        """The monotonic instant ``timeout`` seconds from now (None: no deadline)."""
        return _deadline(timeout)

    @property
    def sock(self) -> "_socket.socket | None":
        """The socket, while open (for inspection; never write to it directly)."""
        return self._sock

    def start_tls(self, context: "ssl.SSLContext", hostname: str, deadline: float | None) -> None:
        """The TLS handshake (implicit TLS, or after a 220 to STARTTLS), verified by ``context``."""
        import ssl  # only here: a plain-TCP session never loads it

        sock = self._sock
        if sock is None:
            raise SMTPServerDisconnected(f"the SMTP session is over: {self.dead or 'closed'}")
        # An SSLSocket keeps Python's timeouts (see the module docstring).
        self._plain = False
        self._timeout = _UNKNOWN
        try:
            sock.settimeout(_remaining(deadline))
            # wrap_socket takes any stream socket object; _socket's will do.
            tls = context.wrap_socket(sock, server_hostname=hostname)  # type: ignore[arg-type]
        except TimeoutError as exc:
            self.kill("TLS handshake timed out")
            raise SMTPOpenTimeout(f"the TLS handshake with {hostname} timed out") from exc
        except ssl.SSLError as exc:
            # Certificate verification failures land here too.
            self.kill(f"TLS handshake failed: {exc}")
            raise SMTPTLSError(f"TLS with {hostname} failed: {exc}") from exc
        except OSError as exc:
            self.kill(f"connection lost during the TLS handshake: {exc}")
            raise SMTPServerDisconnected(
                f"the connection was lost during the TLS handshake with {hostname}: {exc}"
            ) from exc
        self._sock = tls
        self.encrypted = True
        if self.trace.on:
            self.trace(f"-- TLS established: {tls.version()} {tls.cipher()}")

    # ------------------------------------------------------------------ bytes

    def write(self, data: bytes | bytearray, traces: "Iterable[str]" = ()) -> None:
        """One ``sendall`` under the write timeout; ``traces`` are what the trace shows."""
        sock = self._sock
        if sock is None or self.dead is not None:
            raise SMTPServerDisconnected(f"the SMTP session is over: {self.dead or 'closed'}")
        if traces and self.trace.on:
            for text in traces:
                self.trace(f"<- {text!r}")
        self._write(sock, data)

    def _write(self, sock: "_socket.socket", data: bytes | bytearray) -> None:
        timeout = self.timeouts.write
        try:
            if self._plain:
                # Tried at once: there is almost always room for it.
                try:
                    sent = sock.send(data)
                except BlockingIOError:
                    sent = 0
                if sent != len(data):
                    self._send_rest(sock, data, sent, timeout)
            else:
                if timeout != self._timeout:
                    self._timeout = _UNKNOWN
                    sock.settimeout(timeout)
                    self._timeout = timeout
                sock.sendall(data)
        except TimeoutError as exc:
            self.kill("write timed out")
            raise SMTPWriteTimeout(f"writing to {self.where} took longer than {timeout} s") from exc
        except OSError as exc:
            self.kill(f"write failed: {exc}")
            raise SMTPServerDisconnected(
                f"the connection to {self.where} was lost while writing: {exc}"
            ) from exc
        except BaseException:
            # Interrupted half way: nobody knows what the server received.
            self.kill("interrupted while writing")
            raise

    def _recv_plain(self, sock: "_socket.socket", timeout: float | None) -> bytes | None:
        """What the server sent, waiting up to ``timeout`` (TimeoutError); None if nothing came.

        Whether to read before waiting is learnt from the link. A server on
        the same machine has often answered before the client asks (it ran
        while the command was sent): reading at once then saves the poll().
        Over a network the reply is never there yet, and the failed read
        costs a system call and an exception: after each miss, that many
        more reads (doubling, up to 64) wait first.
        """
        if self._wait_first:
            self._wait_first -= 1
        else:
            try:
                data = sock.recv(_RECV_SIZE)
            except BlockingIOError:
                self._misses = self._wait_first = min(self._misses * 2 or 1, 64)
            else:
                self._misses = 0
                return data
        poller = self._pollers.get(_POLLIN) or self._poller(sock, _POLLIN)
        # poll() takes milliseconds, rounded up; it resumes after a signal
        # with what is left of the time (PEP 475).
        if not poller.poll(None if timeout is None else timeout * 1000):
            raise TimeoutError
        try:
            return sock.recv(_RECV_SIZE)
        except BlockingIOError:
            return None

    def _send_rest(
        self, sock: "_socket.socket", data: bytes | bytearray, sent: int, timeout: float | None
    ) -> None:
        """The rest of a write the socket's buffer had no room for, within ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # Released on the way out, also on an error: a traceback holding the
        # view would keep the caller's bytearray from being cleared.
        with memoryview(data) as view:
            while sent < len(data):
                if not self._wait(sock, _POLLOUT, _remaining(deadline)):
                    raise TimeoutError
                try:
                    sent += sock.send(view[sent:])
                except BlockingIOError:
                    continue  # woken for nothing: wait again

    def _wait(self, sock: "_socket.socket", events: int, timeout: float | None) -> bool:
        """Whether ``sock`` became ready for ``events`` within ``timeout`` seconds (None: ever)."""
        if timeout is not None and timeout <= 0:
            return False
        poller = self._pollers.get(events) or self._poller(sock, events)
        # poll() takes milliseconds, rounded up; it resumes after a signal
        # with what is left of the time (PEP 475).
        return bool(poller.poll(None if timeout is None else timeout * 1000))

    def _poller(self, sock: "_socket.socket", events: int) -> "Any":
        """The poll object for ``events`` on ``sock``: one per kind of wait, registered once."""
        import select

        poller = self._pollers[events] = select.poll()
        poller.register(sock, events)
        return poller

    def read_replies(self, count: int, tracing: bool | None = None) -> "list[Response]":
        """The replies to the next ``count`` commands awaited, each as ``read_reply`` reads it.

        ``tracing``: see ``pipeline``.
        """
        return self._read_replies(count, self.trace.on if tracing is None else tracing)

    def read_reply(
        self,
        *,
        deadline: float | None = None,
        timeout_error: "type[SMTPTimeoutError]" = SMTPReadTimeout,
    ) -> "Response":
        """The next reply, within ``deadline`` (default: the read timeout from now).

        A 421 kills the connection and is raised (the server is closing the
        channel, RFC 5321 section 3.8); any other reply is returned.
        """
        return self._read_replies(1, self.trace.on, deadline, timeout_error)[0]

    def _read_replies(
        self,
        count: int,
        tracing: bool,
        deadline: float | None = None,
        timeout_error: "type[SMTPTimeoutError]" = SMTPReadTimeout,
    ) -> "list[Response]":
        """The next ``count`` replies, as ``read_reply`` reads each (``deadline``: the first's)."""
        sock = self._sock
        if sock is None or self.dead is not None:
            raise SMTPServerDisconnected(f"the SMTP session is over: {self.dead or 'closed'}")
        proto = self.proto
        replies: list[Response] = []
        while True:
            try:
                reply = proto.next_reply()
            except SMTPError as exc:
                self.kill(str(exc))
                raise
            if reply is None:
                # Nothing buffered answers yet: wait for the network.
                reply = self._receive(sock, proto, deadline, timeout_error)
            if tracing:
                self.trace(f"-> {reply.string!r}")
            if reply.code == 421:
                self.kill(f"the server is closing: {reply}")
                raise error_for_reply(reply)
            replies.append(reply)
            if len(replies) == count:
                return replies
            if proto.state is CLOSED:
                # The reply closed the session (a refused RSET) with commands
                # still unanswered: their replies no longer count.
                reason = proto.closed_reason
                self.kill(reason)
                raise SMTPServerDisconnected(
                    f"the SMTP session with {self.where} is over: {reason}"
                )
            deadline = None

    def _receive(
        self,
        sock: "_socket.socket",
        proto: ClientProtocol,
        deadline: float | None,
        timeout_error: "type[SMTPTimeoutError]",
    ) -> "Response":
        if deadline is None:
            # One deadline for the whole reply: a server dribbling a byte at a
            # time cannot stretch it. The first read waits the whole timeout.
            timeout = self.timeouts.read
            if timeout is not None:
                deadline = time.monotonic() + timeout
        else:
            timeout = _remaining(deadline)
        plain = self._plain
        while True:
            try:
                if timeout is not None and timeout <= 0:
                    raise TimeoutError
                if plain:
                    data = self._recv_plain(sock, timeout)
                    if data is None:
                        timeout = _remaining(deadline)
                        continue  # woken for nothing: wait again
                else:
                    if timeout != self._timeout:
                        self._timeout = _UNKNOWN
                        sock.settimeout(timeout)
                        self._timeout = timeout
                    data = sock.recv(_RECV_SIZE)
            except TimeoutError as exc:
                self.kill("timed out waiting for a reply")
                raise timeout_error(f"no complete reply from {self.where} in time") from exc
            except OSError as exc:
                self.kill(f"read failed: {exc}")
                raise SMTPServerDisconnected(
                    f"the connection to {self.where} was lost: {exc}"
                ) from exc
            except BaseException:
                self.kill("interrupted while reading")
                raise
            proto.receive_data(data)
            try:
                reply = proto.next_reply()
            except SMTPError as exc:
                self.kill(str(exc))
                raise
            if reply is not None:
                return reply
            timeout = _remaining(deadline)

    # ------------------------------------------------------------------ commands

    def send(self, *commands: "Command") -> bytes:
        """The checked bytes of ``commands``, now awaited by the protocol (nothing written)."""
        return self._send(commands)

    def _send(self, commands: "Sequence[Command]") -> bytes:
        proto = self.proto
        if self.dead is not None or self._sock is None:
            raise SMTPServerDisconnected(f"the SMTP session is over: {self.dead or 'closed'}")
        try:
            return proto.send_many(commands)
        except SMTPError as exc:
            if proto.state is CLOSED:
                self.kill(str(exc))
            raise

    def exchange(self, command: "Command") -> "Response":
        """Send one command in one write and return its reply, whatever it is."""
        data = self._send((command,))
        tracing = self.trace.on
        self.write(data, (command.trace(data),) if tracing else ())
        return self._read_replies(1, tracing)[0]

    def pipeline(
        self, commands: "Sequence[Command]", tracing: bool | None = None
    ) -> "list[Response]":
        """Send ``commands`` in one write (PIPELINING) and return their replies in order.

        ``tracing``: whether the trace is on, when the caller knows (else looked up).
        """
        wire = self._send(commands)
        if tracing is None:
            tracing = self.trace.on
        self.write_commands(commands, wire, tracing)
        return self._read_replies(len(commands), tracing)

    def write_commands(self, commands: "Sequence[Command]", wire: bytes, tracing: bool) -> None:
        """Write ``wire``, the bytes ``send(*commands)`` returned, in one write.

        For a caller that reads the replies itself (``read_replies``), such as
        one that must judge the first reply before the others.
        """
        if tracing:
            # Each command's own line, for the trace (AUTH never comes here).
            lines = wire.split(b"\r\n")
            traces = [c.trace(line + b"\r\n") for c, line in zip(commands, lines, strict=False)]
            self.write(wire, traces)
        else:
            sock = self._sock
            if sock is None or self.dead is not None:
                raise SMTPServerDisconnected(f"the SMTP session is over: {self.dead or 'closed'}")
            self._write(sock, wire)

    # ------------------------------------------------------------------ message bodies

    def body_bytes(self, data: bytes | bytearray | memoryview) -> bytes:
        """Wire bytes for a piece of the message (normalised, dot-stuffed)."""
        # The protocol refuses once the connection is dead (connection_lost).
        return self.proto.send_body(data)

    def send_whole_body(
        self, data: bytes, *, normalised: bool = False, tracing: bool | None = None
    ) -> "Response":
        """``send_body`` for a message held whole in memory: encoded and written at once.

        ``normalised``: see ``ClientProtocol.send_whole_body``; ``tracing``:
        see ``pipeline``.
        """
        # The protocol refuses once the connection is dead (connection_lost).
        proto = self.proto
        return self._end(proto, proto.send_whole_body(data, normalised=normalised), tracing)

    def send_body(self, source: "MessageSource") -> "Response":
        """Stream the whole message after a 354, end it, and return the 2xx reply."""
        whole = source.take_whole()
        if whole is not None:
            return self.send_whole_body(whole)
        buffer = bytearray()
        try:
            for chunk in source.chunks():
                buffer += self.body_bytes(chunk)
                if len(buffer) >= WRITE_SIZE:
                    self.write(buffer)
                    buffer.clear()
        except SMTPError:
            raise
        except BaseException:
            # The caller's file or iterable failed half way: ending the message
            # now would deliver it truncated, so the connection is dropped.
            self.kill("the message source failed while being sent")
            raise
        return self.end_body(buffer)

    def end_body(self, buffer: bytearray) -> "Response":
        """Write what is buffered and the end of the message; the reply, raised unless 2xx."""
        proto = self.live()
        buffer += proto.end_body()
        return self._end(proto, buffer)

    def _end(
        self, proto: ClientProtocol, wire: bytes | bytearray, tracing: bool | None = None
    ) -> "Response":
        if tracing is None:
            tracing = self.trace.on
        if tracing:
            self.trace(f"<- [message data: {proto.body_octets} octets]")
            self.write(wire, (".\r\n",))
        else:
            sock = self._sock
            if sock is None or self.dead is not None:
                raise SMTPServerDisconnected(f"the SMTP session is over: {self.dead or 'closed'}")
            self._write(sock, wire)
        reply = self._read_replies(1, tracing)[0]
        if not 200 <= reply.code < 300:
            raise error_for_reply(reply)
        return reply


class MessageWriter:
    """The message body being written after DATA: streamed, normalised and dot-stuffed.

    ``write`` takes str (encoded UTF-8) or bytes; line ends may be CRLF, LF
    or CR, and may be split across writes. ``close()`` ends the message and
    returns the server's reply; leaving a ``with`` block does the same, unless
    the block raised, in which case the connection is dropped so that no
    truncated message is delivered.
    """

    def __init__(self, connection: Connection, refused: "dict[str, Response]") -> None:
        self._connection = connection
        self._buffer = bytearray()
        self._closed = False
        #: Recipients the server refused (address -> reply); known before the first write.
        self.refused = refused
        #: The reply to the end of the message, once closed.
        self.response: Response | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def result(self) -> "SendResult | None":
        """The final reply and the refused recipients, once the message is closed."""
        return None if self.response is None else SendResult(self.response, self.refused)

    def write(self, data: str | bytes | bytearray | memoryview) -> int:
        """Add ``data`` to the message; returns how many characters or octets were taken."""
        if self._closed:
            raise ValueError("write to a closed message")
        raw = data.encode("utf-8") if isinstance(data, str) else data
        self._buffer += self._connection.body_bytes(raw)
        if len(self._buffer) >= WRITE_SIZE:
            self._connection.write(self._buffer)
            self._buffer.clear()
        return len(data)

    def writelines(self, lines: "Iterable[str | bytes | bytearray | memoryview]") -> None:
        """Write each item in turn (like ``IO.writelines``: no line ends are added)."""
        for line in lines:
            self.write(line)

    def print(self, *args: object, sep: str = " ", end: str = "\n") -> None:
        """Like ``print(*args, file=...)``: the arguments as text, then a line end."""
        self.write(sep.join(str(arg) for arg in args) + end)

    def close(self) -> "Response":
        """End the message and return the reply; raises the reply's error when it is not 2xx."""
        if self._closed:
            if self.response is None:
                raise ValueError("the message was abandoned and not sent")
            return self.response
        self._closed = True
        buffer, self._buffer = self._buffer, bytearray()
        self.response = self._connection.end_body(buffer)
        return self.response

    def abort(self) -> None:
        """Drop the connection without ending the message: nothing of it is delivered."""
        if not self._closed:
            self._closed = True
            self._buffer.clear()
            self._connection.kill("the message was abandoned while being written")

    def __enter__(self) -> "MessageWriter":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: "TracebackType | None",
    ) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()
