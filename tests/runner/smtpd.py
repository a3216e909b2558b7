"""A recording aiosmtpd server on 127.0.0.1 for the runner's tests, with injectable faults.

It records every connection, every command line and every message it accepted
(only once it is about to answer 250 to the end of DATA), and can be told to
misbehave at one stage of the session:

* ``greeting``, ``EHLO``, ``MAIL``, ``RCPT``, ``DATA`` (the command), ``body``
  (after the 354, once the client started sending the message), ``end``
  (after the final dot, instead of the 250), ``RSET``;
* with a reply (``"421 4.3.2 shutting down"``, ``"550 5.7.1 no"``), by closing
  the connection (``DISCONNECT``) or by never answering (``STALL``).

``rcpt_replies`` answers chosen recipients with chosen replies (mixed
250/450/550 in one transaction); ``data_delay`` makes every accepted message
take a while, so that parallel connections really overlap; ``pipelining``
announces PIPELINING in the EHLO reply (aiosmtpd reads pipelined commands
either way; without it the client sends one command per round trip).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

DISCONNECT = "disconnect"
STALL = "stall"


class Received:
    """One message the server accepted."""

    __slots__ = ("connection", "data", "mail_from", "mail_options", "rcpt_tos")

    def __init__(
        self,
        connection: int,
        mail_from: str,
        rcpt_tos: list[str],
        data: bytes,
        mail_options: list[str],
    ) -> None:
        self.connection = connection
        self.mail_from = mail_from
        self.rcpt_tos = rcpt_tos
        self.data = data
        self.mail_options = mail_options

    def __repr__(self) -> str:
        return f"Received(#{self.connection}, {self.mail_from!r} -> {self.rcpt_tos!r})"


class _Handler:
    def __init__(self, server: RecordingServer) -> None:
        self.server = server

    async def handle_EHLO(
        self, smtp: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if not self.server.pipelining:
            return responses
        # "250-mx.test" first, then PIPELINING among the rest, the last with "250 ".
        lines = [responses[0][4:], "PIPELINING", *(r[4:] for r in responses[1:])]
        return [f"250{'-' if i < len(lines) - 1 else ' '}{line}" for i, line in enumerate(lines)]

    async def handle_RCPT(
        self,
        smtp: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self.server.rcpt_replies.get(address)
        if reply is not None and not reply.startswith("2"):
            return reply
        envelope.rcpt_tos.append(address)
        return reply or "250 2.1.5 Ok"

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(smtp, _Session)
        fault = self.server.faults.get("end")
        if fault is not None:
            return await smtp.misbehave(fault) or ""
        if self.server.data_delay:
            await asyncio.sleep(self.server.data_delay)
        data = envelope.original_content
        assert isinstance(data, bytes)
        assert isinstance(envelope.mail_from, str)
        with self.server.lock:
            self.server.messages.append(
                Received(
                    smtp.number,
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    data,
                    list(envelope.mail_options),
                )
            )
            count = len(self.server.messages)
        return f"250 2.0.0 Ok: queued as M{count}"


class _Session(SMTP):
    def __init__(self, server: RecordingServer, number: int) -> None:
        super().__init__(
            _Handler(server),
            hostname="mx.test",
            enable_SMTPUTF8=True,
            loop=server.loop,
            timeout=server.idle_timeout,
        )
        self.server = server
        self.number = number
        self._greeted = False
        self._silent = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.server.transports.append(transport)
        with self.server.lock:
            self.server.active += 1
            self.server.most_active = max(self.server.most_active, self.server.active)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        with self.server.lock:
            self.server.active -= 1
        super().connection_lost(error)

    async def push(self, status: Any) -> None:
        if self._silent:
            return
        if not self._greeted:
            self._greeted = True
            fault = self.server.faults.get("greeting")
            if fault is not None:
                reply = await self.misbehave(fault)
                if reply is not None:
                    await super().push(reply)
                    if reply.startswith(("421", "5")):
                        self._close()
                return
        await super().push(status)

    def _close(self) -> None:
        self._silent = True
        if self.transport is not None:
            self.transport.close()

    async def misbehave(self, fault: str) -> str | None:
        """Act out ``fault``; return the reply to send, or None when nothing is to be sent."""
        if fault == DISCONNECT:
            self._close()
            await asyncio.sleep(3600)  # cancelled when the connection is gone
            return None
        if fault == STALL:
            await asyncio.sleep(3600)
            return None
        return fault

    async def _command(self, verb: str, arg: str | None) -> bool:
        """Record a command; True when a fault answered it instead of the server."""
        self.server.record(self.number, f"{verb} {arg}" if arg else verb)
        fault = self.server.faults.get(verb)
        if fault is None:
            return False
        reply = await self.misbehave(fault)
        if reply is not None:
            await super().push(reply)
            if reply.startswith("421"):
                self._close()
        return True

    async def smtp_EHLO(self, arg: str) -> None:
        if not await self._command("EHLO", arg):
            await super().smtp_EHLO(arg)

    async def smtp_HELO(self, arg: str) -> None:
        if not await self._command("HELO", arg):
            await super().smtp_HELO(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        if not await self._command("MAIL", arg):
            await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if not await self._command("RCPT", arg):
            await super().smtp_RCPT(arg)

    async def smtp_RSET(self, arg: str) -> None:
        if not await self._command("RSET", arg):
            await super().smtp_RSET(arg)

    async def smtp_QUIT(self, arg: str) -> None:
        if not await self._command("QUIT", arg):
            await super().smtp_QUIT(arg)

    async def smtp_DATA(self, arg: str) -> None:
        if await self._command("DATA", arg):
            return
        fault = self.server.faults.get("body")
        if fault is None or not (self.envelope and self.envelope.rcpt_tos):
            await super().smtp_DATA(arg)
            return
        await super().push("354 End data with <CR><LF>.<CR><LF>")
        await self._reader.read(1)  # the client has started on the message
        reply = await self.misbehave(fault)
        if reply is not None:
            await super().push(reply)
            self._close()


class RecordingServer:
    """Start with ``with RecordingServer() as server:``; ``server.port`` is its port."""

    def __init__(self, idle_timeout: float = 30.0) -> None:
        self.idle_timeout = idle_timeout
        self.faults: dict[str, str] = {}
        self.rcpt_replies: dict[str, str] = {}
        self.messages: list[Received] = []
        self.commands: list[tuple[int, str]] = []
        self.connections = 0
        self.active = 0  # connections open now
        self.most_active = 0  # the most connections that were open at once
        self.data_delay = 0.0  # seconds to think before answering the end of DATA
        self.pipelining = False  # announce PIPELINING
        self.lock = threading.Lock()
        self.transports: list[asyncio.BaseTransport] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    def record(self, connection: int, line: str) -> None:
        with self.lock:
            self.commands.append((connection, line))

    def verbs(self, connection: int | None = None) -> list[str]:
        """The command verbs received, on one connection or on all."""
        with self.lock:
            return [
                line.split(" ", 1)[0]
                for n, line in self.commands
                if connection is None or n == connection
            ]

    def _factory(self) -> _Session:
        with self.lock:
            self.connections += 1
            number = self.connections
        return _Session(self, number)

    async def _start(self) -> None:
        self._server = await self.loop.create_server(self._factory, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for transport in self.transports:
            transport.close()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    def start(self) -> RecordingServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> RecordingServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
