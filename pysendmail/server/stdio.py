"""One SMTP session on standard input and output, for ``sendmail -bs``.

The same ``SMTPSession`` and ``Handler`` as the sidecar's listeners, driven
by a transport made of the process's stdin and stdout: a thread reads stdin
(a pipe, a file, a terminal or a socket alike; asyncio's pipe transports
take pipes only) and hands each chunk to the protocol on the event loop;
replies are written to stdout as they are produced.

End of input is the client closing its side: the commands already read are
still answered (a program may write a whole session and close its end), then
the session ends; end of input inside DATA is ``451`` and nothing is kept.

What it must never do: hold a lock of ``sys.stdin`` in the reading thread
(stdin is read with ``os.read`` on its descriptor: a daemon thread blocked in
a buffered read would stop the interpreter's exit), or buffer more than the
protocol's limit (reading pauses when the protocol asks).

SECURITY: stdin is as hostile as a network peer: the session applies the
same command checks; only the access rules of the sidecar (networks, senders,
domains, rate) do not apply, as they do not to ``sendmail`` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, BinaryIO, TypeVar

from pysendmail.server.listener import Handler, SMTPSession

T = TypeVar("T")

READ_SIZE = 65536


class InlineExecutor(Executor):
    """Runs each call at once, in the caller's thread (the event loop's, the main thread).

    ``sendmail -bs`` serves one client: its submission may as well block the
    loop, and it must run in the main thread, where the direct-then-queue
    timer (a signal) can be armed.
    """

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)
        return future


class StdioTransport(asyncio.Transport):
    """stdin and stdout as one transport for a protocol on the running loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol: asyncio.Protocol,
        stdin: BinaryIO,
        stdout: BinaryIO,
    ) -> None:
        super().__init__()
        self._loop = loop
        self._protocol = protocol
        self._stdin = stdin
        self._stdout = stdout
        self._closing = False
        self._reading = threading.Event()
        self._reading.set()
        self._thread = threading.Thread(target=self._read, name="pysendmail-stdin", daemon=True)

    def start(self) -> None:
        self._protocol.connection_made(self)
        self._thread.start()

    def _read_chunk(self) -> bytes:
        try:
            fd = self._stdin.fileno()
        except (AttributeError, OSError, ValueError):
            read1 = getattr(self._stdin, "read1", None)
            data = read1(READ_SIZE) if read1 is not None else self._stdin.read(READ_SIZE)
            return bytes(data or b"")
        return os.read(fd, READ_SIZE)

    def _read(self) -> None:
        while True:
            self._reading.wait()
            if self._closing:
                return
            try:
                data = self._read_chunk()
            except OSError:
                data = b""
            try:
                if not data:
                    self._loop.call_soon_threadsafe(self._eof)
                    return
                self._loop.call_soon_threadsafe(self._deliver, data)
            except RuntimeError:
                return  # the loop is closed: the session is over

    def _deliver(self, data: bytes) -> None:
        if not self._closing:
            self._protocol.data_received(data)

    def _eof(self) -> None:
        if not self._closing:
            self._protocol.eof_received()

    # -- the transport API ---------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        try:
            self._stdout.write(bytes(data))
            self._stdout.flush()
        except (OSError, ValueError):
            self.close()  # the client went away (EPIPE): nobody to answer

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._reading.set()
        self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # no peer address: "stdin" in the log

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def is_reading(self) -> bool:
        return self._reading.is_set()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


async def run_session(handler: Handler, stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Serve one SMTP session on ``stdin``/``stdout`` until QUIT or end of input."""
    loop = asyncio.get_running_loop()
    protocol: SMTPSession = handler.protocol(loop)
    transport = StdioTransport(loop, protocol, stdin, stdout)
    transport.start()
    task = protocol._handler_coroutine
    if task is not None:
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await task
    transport.close()
    await asyncio.sleep(0)  # let connection_lost run
