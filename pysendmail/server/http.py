"""``GET /healthz`` and ``GET /metrics``: a tiny HTTP/1.1 server on its own address.

Only what a probe and a Prometheus scraper send is understood: one request
per connection (``Connection: close``), ``GET`` or ``HEAD``, no body. The
answers:

* ``/healthz``: ``200 ok`` when the queue is writable (a file can be created
  and removed in ``tmp/``), every listener is serving and the runner is
  alive; otherwise ``503`` with one line per problem. A server that is
  shutting down answers 503, so an orchestrator stops sending it traffic.
* ``/metrics``: the Prometheus text (``metrics.Metrics.render``).

What it must never do: read more than ``MAX_REQUEST`` octets or wait more
than ``REQUEST_TIMEOUT`` seconds for a request, run the disk work (the
health probe, counting the queue) on the event loop, or answer anything but
these two paths.

SECURITY: the request is hostile: the head is bounded, only the request line
is parsed, and nothing from it is echoed back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

MAX_REQUEST = 8192
REQUEST_TIMEOUT = 5.0
MAX_CLIENTS = 32

#: (status, content type, body) for a path; runs on the event loop, may await.
Route = Callable[[], Awaitable[tuple[int, str, str]]]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


class HTTPServer:
    """Serves ``routes`` (path → coroutine) on one address."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.server: asyncio.Server | None = None
        self._clients = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._serve, host, port, limit=MAX_REQUEST)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def wait_closed(self) -> None:
        if self.server is not None:
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients += 1
        try:
            if self._clients > MAX_CLIENTS:
                return
            status, kind, body, head_only = await self._answer(reader)
            data = body.encode("utf-8")
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                f"Content-Type: {kind}\r\n"
                f"Content-Length: {len(data)}\r\n"
                "Cache-Control: no-store\r\n"
                "Connection: close\r\n\r\n"
            ).encode("ascii")
            writer.write(head if head_only else head + data)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self._clients -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, str, str, bool]:
        plain = "text/plain; charset=utf-8"
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return 400, plain, "bad request\n", False
        line = head.split(b"\r\n", 1)[0]
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return 400, plain, "bad request\n", False
        method, target = parts[0], parts[1]
        head_only = method == b"HEAD"
        if method not in (b"GET", b"HEAD"):
            return 405, plain, "only GET and HEAD\n", False
        path = target.split(b"?", 1)[0].decode("ascii", "replace")
        route = self.routes.get(path)
        if route is None:
            return 404, plain, "not found: try /healthz or /metrics\n", head_only
        status, kind, body = await route()
        return status, kind, body, head_only
