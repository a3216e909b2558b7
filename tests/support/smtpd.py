"""Test SMTP servers on 127.0.0.1: a recording aiosmtpd server and a scripted raw server.

Both bind 127.0.0.1 on a port the kernel picks, run in a thread, and stop
cleanly (``stop()`` or leaving a ``with`` block). Nothing here ever talks to
another address.

``RecordingServer`` — a real SMTP server (aiosmtpd) configured per test::

    with RecordingServer(pipelining=True, size=1000, auth=("PLAIN",),
                         credentials={"u": "pw"}, tls="starttls",
                         certificates=certs, replies={"RCPT TO:<x@y>": "550 no"}) as srv:
        ...  # talk to srv.host, srv.port
        srv.envelopes[0].content      # the exact DATA bytes (dot-unstuffed, CRLF kept)
        srv.envelopes[0].rcpts        # [(address, [options...]), ...]
        srv.sessions[0].commands      # every command line, e.g. "MAIL FROM:<a@b> SIZE=10"
        srv.sessions[0].transcript    # every byte the client sent, decrypted after STARTTLS

  Options: ``tls`` None | "starttls" | "implicit" (with ``certificates``, a
  ``Certificates``); ``auth`` the mechanisms offered (PLAIN, LOGIN, CRAM-MD5,
  XOAUTH2; CRAM-MD5 and XOAUTH2 are added here, aiosmtpd lacks them) and
  ``credentials`` {user: password-or-token}; ``auth_require_tls`` (default:
  True when TLS is configured); ``size`` the SIZE limit (None: not announced);
  ``pipelining``, ``eightbitmime``, ``smtputf8``, ``dsn`` announced or not;
  ``extra_ehlo`` more EHLO lines; ``replies`` injected replies: the key is
  matched case-insensitively against the start of the command line ("MAIL",
  "RCPT TO:<x@y>", "DATA", "EHLO", "STARTTLS", "AUTH", "NOOP"...) or is "."
  for the reply after the end of DATA; a 421 closes the connection after it.

``ScriptedServer`` — a plain socket server for byte-exact scripts, stalls,
disconnects and hostile replies that a real server would never send::

    def script(peer: Peer) -> None:
        peer.send(b"220 hi\\r\\n")
        peer.expect(b"EHLO")
        peer.send(b"250 ok\\r\\n")
        peer.stall()                  # never answer; returns when the server stops

    with ScriptedServer(script) as srv:
        ...
        srv.wait()                    # the script finished; re-raises its failure
        srv.peer.chunks               # every recv() result, to check what came in one write

  Assertions failing inside the script are re-raised by ``wait()``/``stop()``,
  so a script that did not see what it expected fails the test.

``Certificates`` (trustme) makes a test CA and a certificate for "localhost"
and 127.0.0.1; ``server_context()`` and ``ca_file`` are what the servers and
the clients need.

The pytest fixtures that wrap these live in ``tests.support.fixtures``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AiosmtpdSMTP
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword

__all__ = [
    "LOOPBACK",
    "Certificates",
    "Peer",
    "RecordedEnvelope",
    "RecordedSession",
    "RecordingServer",
    "ScriptedServer",
]

LOOPBACK = "127.0.0.1"
TLSMode = Literal["starttls", "implicit"] | None
_DSN_KEYS = frozenset({"RET", "ENVID", "NOTIFY", "ORCPT"})


# --------------------------------------------------------------------------- certificates


class Certificates:
    """A throw-away CA and a server certificate for localhost and 127.0.0.1 (trustme)."""

    def __init__(self, directory: Path, hostnames: Sequence[str] = ("localhost", LOOPBACK)):
        self.ca = trustme.CA()
        self.server_cert = self.ca.issue_cert(*hostnames)
        self.ca_file = str(directory / "test-ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


# --------------------------------------------------------------------------- recording server


@dataclass
class RecordedSession:
    """One client connection as the recording server saw it."""

    commands: list[str] = field(default_factory=list)
    transcript: bytearray = field(default_factory=bytearray)
    tls: bool = False
    user: str | None = None


class RecordedEnvelope(Envelope):
    """aiosmtpd's Envelope, plus each recipient with its own options and the final reply."""

    def __init__(self) -> None:
        super().__init__()
        self.rcpts: list[tuple[str, list[str]]] = []
        self.reply: str = ""

    @property
    def data(self) -> bytes:
        """The message as it arrived: dot-unstuffed, CRLF line ends kept."""
        return bytes(self.original_content or b"")


class _Handler:
    """aiosmtpd hooks: EHLO lines, per-recipient records, AUTH CRAM-MD5/XOAUTH2, DATA."""

    def __init__(self, server: RecordingServer) -> None:
        self._server = server

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        config = self._server
        session.host_name = hostname
        # aiosmtpd announces "AUTH" with no mechanism when none is left.
        lines = [r[4:] for r in responses if r[4:].strip() != "AUTH"]
        if not config.eightbitmime:
            lines = [line for line in lines if line != "8BITMIME"]
        extra = []
        if config.pipelining:
            extra.append("PIPELINING")
        if config.dsn:
            extra.append("DSN")
        extra.extend(config.extra_ehlo)
        lines = [lines[0], *extra, *lines[1:]]
        return [f"250{'-' if i < len(lines) - 1 else ' '}{line}" for i, line in enumerate(lines)]

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        envelope.rcpts.append((address, list(rcpt_options)))
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = self._server._injected(".") or "250 2.0.0 OK: queued"
        envelope.reply = reply
        self._server.envelopes.append(envelope)
        return reply

    async def auth_CRAM__MD5(self, server: Any, args: list[str]) -> AuthResult:
        challenge = f"<{os.getpid()}.{time.monotonic_ns()}@mx.test>".encode()
        answer = await server.challenge_auth(challenge)
        if not isinstance(answer, bytes):
            return AuthResult(success=False, handled=True)
        user, _, digest = answer.decode("utf-8", "replace").rpartition(" ")
        secret = self._server.credentials.get(user)
        if secret is None:
            return AuthResult(success=False, handled=False)
        expected = hmac.new(secret.encode(), challenge, "md5").hexdigest()
        ok = hmac.compare_digest(expected, digest)
        return self._server._auth_result(server, ok, user)

    async def auth_XOAUTH2(self, server: Any, args: list[str]) -> AuthResult:
        if len(args) > 1:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except ValueError:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        else:
            answer = await server.challenge_auth("")
            if not isinstance(answer, bytes):
                return AuthResult(success=False, handled=True)
            blob = answer
        fields = dict(
            part.split("=", 1) for part in blob.decode("utf-8", "replace").split("\x01") if part
        )
        user = fields.get("user", "")
        token = self._server.credentials.get(user)
        ok = token is not None and fields.get("auth") == f"Bearer {token}"
        if not ok:
            # Google's way: a 334 with a JSON error, an empty answer, then 535.
            await server.challenge_auth('{"status":"401","schemes":"bearer"}')
            return AuthResult(
                success=False, handled=False, message="535 5.7.8 Username and Password not accepted"
            )
        return self._server._auth_result(server, True, user)


class _RecordingSMTP(AiosmtpdSMTP):
    # Long message lines are the client's business, not this test server's.
    line_length_limit = 1 << 20

    def __init__(self, handler: _Handler, owner: RecordingServer, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._owner = owner
        self._record = RecordedSession()
        for name, method in list(self._smtp_methods.items()):
            self._smtp_methods[name] = self._wrap(name, method)

    def _wrap(self, name: str, method: Callable[[str | None], Any]) -> Callable[[str | None], Any]:
        async def command(arg: str | None) -> None:
            line = name if arg is None else f"{name} {arg}"
            self._record.commands.append(line)
            reply = self._owner._injected(line)
            if reply is None:
                await method(arg)
                return
            await self.push(reply)
            if reply.startswith("421") and self.transport is not None:
                self.transport.close()

        return command

    def _create_envelope(self) -> RecordedEnvelope:
        return RecordedEnvelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None and self.transport is None:
            self._owner.sessions.append(self._record)
        else:
            self._record.tls = True
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._record.transcript += data
        super().data_received(data)

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        result: dict[str, str | bool] | None = super()._getparams(params)
        if result is not None and self._owner.dsn:
            # aiosmtpd knows no DSN: accept its parameters when DSN is announced.
            for key in _DSN_KEYS:
                result.pop(key, None)
        return result


class _Controller(Controller):
    def __init__(self, owner: RecordingServer, **kwargs: Any) -> None:
        self._owner = owner
        super().__init__(**kwargs)

    def factory(self) -> _RecordingSMTP:
        return _RecordingSMTP(self.handler, self._owner, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        # Port 0 asked the kernel for a port: learn it before connecting to it.
        server: Any = self.server
        self.port = server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


class RecordingServer:
    """An aiosmtpd server on 127.0.0.1 that records everything; see the module docstring."""

    def __init__(
        self,
        *,
        tls: TLSMode = None,
        certificates: Certificates | None = None,
        auth: Iterable[str] = (),
        credentials: Mapping[str, str] | None = None,
        auth_require_tls: bool | None = None,
        size: int | None = None,
        pipelining: bool = True,
        eightbitmime: bool = True,
        smtputf8: bool = True,
        dsn: bool = False,
        extra_ehlo: Sequence[str] = (),
        replies: Mapping[str, str] | None = None,
        hostname: str = "mx.test",
    ) -> None:
        if tls is not None and certificates is None:
            raise ValueError("TLS needs certificates")
        self.host = LOOPBACK
        self.port = 0
        self.tls = tls
        self.auth = tuple(m.upper() for m in auth)
        self.credentials = dict(credentials or {})
        self.pipelining = pipelining
        self.eightbitmime = eightbitmime
        self.dsn = dsn
        self.extra_ehlo = list(extra_ehlo)
        self.replies = dict(replies or {})
        self.sessions: list[RecordedSession] = []
        self.envelopes: list[RecordedEnvelope] = []
        known = {"PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2"}
        if not set(self.auth) <= known:
            raise ValueError(f"unknown mechanisms: {set(self.auth) - known}")
        server_context = certificates.server_context() if certificates is not None else None
        kwargs: dict[str, Any] = {
            "hostname": LOOPBACK,
            "port": 0,
            "server_hostname": hostname,
            "data_size_limit": size or 0,
            "enable_SMTPUTF8": smtputf8,
            "auth_exclude_mechanism": sorted(known - set(self.auth)),
            "authenticator": self._authenticate,
            "auth_require_tls": tls is not None if auth_require_tls is None else auth_require_tls,
            # A client that vanishes must not keep a server coroutine alive long.
            "timeout": 5,
        }
        if tls == "starttls":
            kwargs["tls_context"] = server_context
        elif tls == "implicit":
            kwargs["ssl_context"] = server_context
        self._controller = _Controller(self, handler=_Handler(self), **kwargs)

    def _injected(self, line: str) -> str | None:
        upper = line.upper()
        for key, reply in self.replies.items():
            if key == ".":
                if line == ".":
                    return reply
            elif upper.startswith(key.upper()):
                return reply
        return None

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        user = auth_data.login.decode("utf-8", "replace")
        ok = self.credentials.get(user) == auth_data.password.decode("utf-8", "replace")
        return self._auth_result(server, ok, user)

    def _auth_result(self, server: Any, ok: bool, user: str) -> AuthResult:
        if ok:
            server._record.user = user
            return AuthResult(success=True, auth_data=user)
        return AuthResult(success=False, handled=False)

    @property
    def commands(self) -> list[str]:
        """Every command line of every session, in order."""
        return [line for session in self.sessions for line in session.commands]

    def start(self) -> RecordingServer:
        self._controller.start()
        self.port = self._controller.port
        # The controller's own readiness probe is not a client session.
        self.sessions.clear()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> RecordingServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- scripted server


class Peer:
    """The server side of one connection, for a script to drive byte by byte."""

    #: How long a script waits for the client before it gives up (and fails).
    patience = 5.0

    def __init__(self, sock: socket.socket, stopping: threading.Event) -> None:
        self.sock: socket.socket = sock
        self._stopping = stopping
        self._buffer = bytearray()
        #: Every recv() result in order: what arrived together.
        self.chunks: list[bytes] = []
        self.closed_by_client = False

    @property
    def received(self) -> bytes:
        """Everything the client sent on this connection so far."""
        return b"".join(self.chunks)

    def _fill(self) -> bool:
        self.sock.settimeout(self.patience)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        if not data:
            self.closed_by_client = True
            return False
        self.chunks.append(data)
        self._buffer += data
        return True

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_line(self) -> bytes:
        """The next line the client sent, CRLF included; b"" when the client closed."""
        while b"\n" not in self._buffer:
            if not self._fill():
                line = bytes(self._buffer)
                self._buffer.clear()
                return line
        end = self._buffer.index(b"\n") + 1
        line = bytes(self._buffer[:end])
        del self._buffer[:end]
        return line

    def recv_until(self, marker: bytes) -> bytes:
        """Everything up to and including ``marker`` (e.g. b"\\r\\n.\\r\\n")."""
        while marker not in self._buffer:
            if not self._fill():
                raise AssertionError(f"the client closed before sending {marker!r}")
        end = self._buffer.index(marker) + len(marker)
        data = bytes(self._buffer[:end])
        del self._buffer[:end]
        return data

    def discard_data(self) -> tuple[int, str]:
        """Read a message body up to its "\r\n.\r\n" without keeping it in memory.

        Returns the octet count and SHA-256 (hex) of the wire bytes before the
        terminator, for tests of big messages where the server must stay small.
        """
        marker = b"\r\n.\r\n"
        digest = hashlib.sha256()
        count = 0
        pending = bytes(self._buffer)
        self._buffer.clear()
        self.sock.settimeout(self.patience)
        while True:
            end = pending.find(marker)
            if end >= 0:
                digest.update(pending[: end + 2])
                count += end + 2
                self._buffer += pending[end + len(marker) :]
                return count, digest.hexdigest()
            # Keep a tail that could hold the start of a split marker.
            keep = len(marker) - 1
            digest.update(pending[:-keep])
            count += max(len(pending) - keep, 0)
            pending = pending[-keep:] if len(pending) >= keep else pending
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError("the client closed in the middle of the message")
            pending += data

    def expect(self, prefix: bytes) -> bytes:
        """The next line, which must start with ``prefix`` (case-insensitive)."""
        line = self.recv_line()
        if not line.upper().startswith(prefix.upper()):
            raise AssertionError(f"expected {prefix!r}, the client sent {line!r}")
        return line

    def reply(self, prefix: bytes, response: bytes) -> bytes:
        """``expect(prefix)``, then send ``response``; returns the line received."""
        line = self.expect(prefix)
        self.send(response)
        return line

    def handshake(self, *extensions: str, greeting: bytes = b"220 mx.test ESMTP\r\n") -> None:
        """Greet, and answer EHLO with ``extensions``."""
        self.send(greeting)
        lines = ["mx.test", *extensions]
        self.reply(
            b"EHLO",
            b"".join(
                f"250{'-' if i < len(lines) - 1 else ' '}{line}\r\n".encode()
                for i, line in enumerate(lines)
            ),
        )

    def expect_eof(self) -> None:
        """The client must close the connection without sending anything more."""
        while self._fill():
            pass
        if self._buffer:
            raise AssertionError(f"the client sent {bytes(self._buffer)!r} before closing")

    def stall(self) -> None:
        """Answer nothing until the server is stopped."""
        self._stopping.wait()

    def start_tls(self, context: ssl.SSLContext) -> None:
        """Wrap the connection in TLS (server side), after a 220 to STARTTLS."""
        self.sock.settimeout(self.patience)
        self.sock = context.wrap_socket(self.sock, server_side=True)
        self._buffer.clear()

    def close(self) -> None:
        self.sock.close()


class ScriptedServer:
    """A raw TCP server on 127.0.0.1 running ``script(peer)`` for each connection."""

    def __init__(
        self,
        script: Callable[[Peer], None],
        *,
        connections: int = 1,
        tls_context: ssl.SSLContext | None = None,
        receive_buffer: int | None = None,
    ) -> None:
        self._script = script
        self._connections = connections
        self._tls_context = tls_context
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if receive_buffer is not None:
            # Inherited by accepted sockets: lets a test fill the path quickly.
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(8)
        self.host = LOOPBACK
        self.port: int = self._listener.getsockname()[1]
        self.peers: list[Peer] = []
        self._stopping = threading.Event()
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="scripted-smtpd", daemon=True)

    @property
    def peer(self) -> Peer:
        """The first connection's peer."""
        if not self.peers:
            raise AssertionError("no client connected")
        return self.peers[0]

    def _run(self) -> None:
        try:
            for _ in range(self._connections):
                self._listener.settimeout(0.05)
                while True:
                    if self._stopping.is_set():
                        return
                    try:
                        conn, _ = self._listener.accept()
                        break
                    except TimeoutError:
                        continue
                if self._tls_context is not None:
                    conn.settimeout(Peer.patience)
                    try:
                        conn = self._tls_context.wrap_socket(conn, server_side=True)
                    except (ssl.SSLError, OSError):
                        # The client refused our certificate: that is the test.
                        conn.close()
                        continue
                peer = Peer(conn, self._stopping)
                self.peers.append(peer)
                try:
                    self._script(peer)
                finally:
                    peer.close()
        except BaseException as exc:  # reported by wait() or stop()
            self._errors.append(exc)

    def start(self) -> ScriptedServer:
        self._thread.start()
        return self

    def wait(self, timeout: float = 10.0) -> None:
        """Wait for the script to end; re-raise what failed in it."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("the server script did not finish")
        self._raise()

    def _raise(self) -> None:
        if self._errors:
            error = self._errors[0]
            self._errors.clear()
            raise error

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(10)
        self._listener.close()
        self._raise()

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.stop()
        else:
            # The test failed already: its error matters more than the script's.
            self._stopping.set()
            self._thread.join(10)
            self._listener.close()
