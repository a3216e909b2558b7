"""The delivery processes of ``pysendmail serve``: the runner's connections, each a process.

The runner's loop stays in ``serve``'s process (``Runner.watch`` in a thread:
woken by every commit through the trigger FIFO and by retry times; it takes
the maildrop in, removes stale files and decides which messages are due).
The deliveries themselves — claiming a message, sending it, saving its state,
bouncing — run in ``queue.connections`` worker processes that it started,
the same work a one-shot ``queue run`` gives its worker processes.

Why processes: delivering a message costs about as much interpreter time as
accepting one, and a thread of serve's interpreter shares its lock with the
event loop that answers the clients; measured with the listener under load,
a runner thread held serve's accept rate to 0.30x of the bare aiosmtpd sink
against 0.42x with the deliveries in another process. Each worker also keeps
its ``Relay`` (one session per route) open between runs for ``KEEP_OPEN``
seconds, so mail arriving a message at a time still travels over one
connection, with RSET between messages.

The protocol, over one socket pair per worker (``frames``): serve sends
``("settings", Settings)`` as soon as the worker starts and after a reload
(the worker answers ``("ready",)`` once it has its runner), then ``("run",
ids, forced)``; the worker answers with its log lines, ``("lines", [("event",
queue_id, level, fields) or ("line", text, level), ...])`` in batches
(``_Forwarder``: within ``FLUSH_AFTER`` seconds; serve writes them to its own
log, which also counts the metrics), then ``("done", counts, error)``: its
``RunSummary`` and the error that stopped it, if any.

What it must never do: give a message to two workers in one run (each id is
dealt once; a claim is a lock anyway, DESIGN.md invariant 4); lose a
message when a worker dies (its claims end with it and its messages stay
queued for the next run, which a new worker takes).

Priority: a worker adds ``server.delivery_nice`` to its nice value before
anything else (an argument of its command line). Accepting is what clients
wait for; delivering can wait for a burst to end, the queue holds the mail
meanwhile. Measured on two cores under the serve benchmark's burst: at the
same priority as the listener serve accepted 0.5x the bare sink's rate while
delivering, at nice 19 about 0.6-0.7x, and the burst was still delivered as
fast. A nice value cannot be lowered again without privilege, so after a
reload that changes it the pool replaces its workers between two runs.

Signals: a worker ignores SIGINT and SIGHUP (they are serve's); SIGTERM makes
it stop after the message under way, as serve does on SIGTERM. It exits at
the end of file on its socket, closing its connections with QUIT.
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any

from pysendmail import errors
from pysendmail.log import Logger
from pysendmail.runner import Runner, RunSummary, StateWriteError, reported_error
from pysendmail.server.frames import FrameBuffer, FrameError, frame, read_frame, start_helper

if TYPE_CHECKING:
    from pysendmail.config import Settings
    from pysendmail.message.envelope import Envelope
    from pysendmail.relay import DeliveryReport, Relay

#: A worker closes its connections after this many seconds without a message.
KEEP_OPEN = 5.0
#: A worker sends its log lines to serve in batches of at most this many ...
BATCH = 64
#: ... at most this many seconds after the first line of a batch.
FLUSH_AFTER = 0.2
#: A worker that cannot be started is tried again after this many seconds.
RESTART_DELAY = 5.0


# --------------------------------------------------------------------------- the worker


class _Forwarder(Logger):
    """The worker's logger: its lines go to serve, which writes them (and counts them).

    Lines travel in batches, one frame ``("lines", [item, ...])`` each: a
    batch leaves when ``BATCH`` lines wait, at the latest ``FLUSH_AFTER``
    seconds after its first line (a timer thread, so that a delivery that
    stalls does not hold back the lines before it), and always before the
    ``done`` of a run (``send``). One frame per line cost a system call here
    and a wake-up of serve's runner thread for every message.
    """

    __slots__ = ("broken", "cond", "first_at", "pending", "sock", "thread")

    def __init__(self, sock: socket.socket) -> None:
        super().__init__("stderr", "text")
        self.sock = sock
        self.cond = threading.Condition()
        self.pending: list[tuple[object, ...]] = []
        self.first_at = 0.0
        self.thread: threading.Thread | None = None
        self.broken = False

    def event(self, queue_id: str, level: str = "info", /, **fields: object) -> None:
        plain = {
            key: value if value is None or isinstance(value, str | int | float) else str(value)
            for key, value in fields.items()
        }
        self._add(("event", queue_id, level, plain))

    def line(self, text: str, level: str = "info") -> None:
        self._add(("line", str(text), level))

    def _add(self, item: tuple[object, ...]) -> None:
        with self.cond:
            if not self.pending:
                self.first_at = time.monotonic()
            self.pending.append(item)
            if len(self.pending) >= BATCH:
                self._flush_locked()
                return
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._timer, name="pysendmail-log-flush", daemon=True
                )
                self.thread.start()
            self.cond.notify()

    def send(self, data: bytes) -> None:
        """Send ``data`` (a frame) after every line logged before it."""
        with self.cond:
            self._flush_locked()
            self.sock.sendall(data)

    def _flush_locked(self) -> None:
        if self.pending:
            batch, self.pending = self.pending, []
            self.sock.sendall(frame(("lines", batch)))

    def _timer(self) -> None:
        with self.cond:
            while not self.broken:
                if not self.pending:
                    self.cond.wait()
                    continue
                left = self.first_at + FLUSH_AFTER - time.monotonic()
                if left > 0:
                    self.cond.wait(left)
                    continue
                try:
                    self._flush_locked()
                except OSError:
                    # serve is gone: the main thread finds out on its next read.
                    self.broken = True


class _KeptRelay:
    """One ``Relay`` for many runs: ``close()`` at the end of a run keeps it open."""

    def __init__(self, make: Any) -> None:
        self.make = make
        self.relay: Relay | None = None
        self.last_used = 0.0

    def send(
        self, envelope: Envelope, message: IO[bytes], recipients: list[str] | None = None
    ) -> DeliveryReport:
        if self.relay is None:
            self.relay = self.make()
        self.last_used = time.monotonic()
        return self.relay.send(envelope, message, recipients)

    def close(self) -> None:
        self.last_used = time.monotonic()

    def really_close(self) -> None:
        relay, self.relay = self.relay, None
        if relay is not None:
            relay.close()


class WorkerRunner(Runner):
    """A worker's runner: one relay kept between runs, stops after the message under way."""

    def __init__(self, settings: Settings, log: Logger, stopping: threading.Event) -> None:
        self.kept = _KeptRelay(self._default_relay)
        super().__init__(settings, logger=log, relay_factory=lambda: self.kept, stopping=stopping)


def worker_main(fd: int, nice: int = 0) -> int:
    """A worker's life: settings, then runs, until its socket ends.

    ``nice`` is added to its nice value first (``server.delivery_nice``).
    """
    stopping = threading.Event()
    niced = _nicer(nice)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stopping.set())
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    log = _Forwarder(sock)
    runner: WorkerRunner | None = None
    try:
        if niced is not None:
            log.line(f"runner: delivery process: cannot lower its CPU priority: {niced}", "warning")
        while True:
            if runner is not None and runner.kept.relay is not None:
                idle = KEEP_OPEN - (time.monotonic() - runner.kept.last_used)
                ready, _, _ = select.select([sock], [], [], max(0.0, idle))
                if not ready:
                    runner.kept.really_close()
                    continue
            got: Any = read_frame(sock)
            if got is None:
                return 0
            if got[0] == "settings":
                if runner is not None:
                    runner.kept.really_close()
                runner = WorkerRunner(got[1], log, stopping)
                log.send(frame(("ready",)))
            elif got[0] == "run" and runner is not None:
                summary, error = runner.deliver(list(got[1]), forced=bool(got[2]))
                log.send(frame(("done", summary.counts(), error)))
    except (OSError, FrameError):
        return 0  # serve is gone: nothing is left to report to
    finally:
        if runner is not None:
            with contextlib.suppress(Exception):
                runner.kept.really_close()


def _nicer(increment: int) -> str | None:
    """Add ``increment`` to this process's nice value; why it could not, or None."""
    if increment <= 0:
        return None
    try:
        os.nice(increment)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


# --------------------------------------------------------------------------- serve's side


class _Worker:
    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket, nice: int) -> None:
        self.proc = proc
        self.sock = sock
        self.nice = nice  # the increment it was started with
        self.settings: object = None  # the settings object it was sent last
        self.ready = False  # it answered those settings
        self.frames = FrameBuffer()


class DeliveryPool:
    """Serve's end: the worker processes, and a run dealt out to them.

    Used from the runner's thread only (``run``), except ``interrupt`` (any
    thread) and ``close``.
    """

    def __init__(self, size: int, log: Logger, nice: int = 0) -> None:
        self.size = max(1, size)
        self.log = log
        #: ``server.delivery_nice``: a worker started with another value (before a
        #: reload) is replaced between runs (a nice value cannot be lowered back).
        self.nice = nice
        self.workers: list[_Worker] = []
        #: Replaced workers, told to exit (their socket closed), not yet reaped.
        self.retired: list[_Worker] = []
        self.lock = threading.Lock()
        self.closed = False
        self.next_start = 0.0

    def _start_one(self) -> _Worker:
        nice = self.nice
        proc, parent = start_helper("pysendmail.server.delivery", str(nice))
        return _Worker(proc, parent, nice)

    def start(self) -> None:
        """Start the workers that are missing. Raises ``OSError`` when none can run."""
        with self.lock:
            while not self.closed and len(self.workers) < self.size:
                self.workers.append(self._start_one())

    def prepare(self, settings: object) -> None:
        """Send ``settings`` to the workers that do not have them yet (before their first run)."""
        with self.lock:
            workers = list(self.workers)
        for worker in workers:
            if worker.settings is settings:
                continue
            try:
                worker.sock.sendall(frame(("settings", settings)))
            except OSError as exc:
                self.log.line(str(self._lost(worker, f"cannot reach it: {exc}")), "error")
                continue
            worker.settings = settings
            worker.ready = False

    def wait_ready(self, timeout: float) -> bool:
        """Wait until every worker answered its settings (at most ``timeout`` s); whether all did.

        Serve calls it once at start, before the runner's thread runs (the pool
        is then used by that thread alone). A worker that ends meanwhile is
        dropped; the next run starts another.
        """
        deadline = time.monotonic() + timeout
        summary = RunSummary()
        with selectors.DefaultSelector() as selector:
            waiting: dict[int, _Worker] = {}
            for worker in list(self.workers):
                if worker.settings is not None and not worker.ready:
                    waiting[worker.sock.fileno()] = worker
                    selector.register(worker.sock, selectors.EVENT_READ)
            while waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                for key, _ in selector.select(left):
                    worker = waiting[key.fd]
                    outcome = self._read(worker, summary)
                    if worker.ready or outcome is not None:
                        selector.unregister(key.fd)
                        del waiting[key.fd]
                    if isinstance(outcome, errors.PysendmailError):
                        self.log.line(str(outcome), "error")
        return True

    def available(self) -> bool:
        """Whether a run can go to the workers (else the runner delivers in its own thread)."""
        if self.closed:
            return False
        self._retire_stale()
        if len(self.workers) < self.size and time.monotonic() >= self.next_start:
            try:
                self.start()
            except OSError as exc:
                self.next_start = time.monotonic() + RESTART_DELAY
                self.log.line(f"runner: cannot start a delivery process: {exc}", "error")
        return bool(self.workers)

    def _retire_stale(self) -> None:
        """Let workers started with another ``nice`` go (between runs), and reap the retired."""
        with self.lock:
            stale = [w for w in self.workers if w.nice != self.nice]
            for worker in stale:
                self.workers.remove(worker)
            self.retired.extend(stale)
        for worker in stale:
            with contextlib.suppress(OSError):
                worker.sock.close()  # at end of file it QUITs and exits
        with self.lock:
            self.retired = [w for w in self.retired if w.proc.poll() is None]

    def run(
        self, runner: Runner, ids: list[str], forced: bool, summary: RunSummary
    ) -> errors.PysendmailError | None:
        """Deal ``ids`` to the workers, wait for every one; the first failure, if any."""
        with self.lock:
            workers = list(self.workers)
        count = max(1, min(len(workers), runner.workers_for(len(ids))))
        busy: dict[int, _Worker] = {}
        failure: errors.PysendmailError | None = None
        for n, worker in enumerate(workers[:count]):
            share = ids[n::count]
            try:
                if worker.settings is not runner.settings:
                    worker.sock.sendall(frame(("settings", runner.settings)))
                    worker.settings = runner.settings
                worker.sock.sendall(frame(("run", share, forced)))
            except OSError as exc:
                failure = failure or self._lost(worker, f"cannot reach it: {exc}")
                continue
            busy[worker.sock.fileno()] = worker
        with selectors.DefaultSelector() as selector:
            for fd in busy:
                selector.register(fd, selectors.EVENT_READ)
            while busy:
                for key, _ in selector.select():
                    worker = busy[key.fd]
                    outcome = self._read(worker, summary)
                    if outcome is None:
                        continue
                    selector.unregister(key.fd)
                    del busy[key.fd]
                    if isinstance(outcome, errors.PysendmailError):
                        failure = failure or outcome
        return failure

    def _read(self, worker: _Worker, summary: RunSummary) -> object | None:
        """Handle what ``worker`` sent; ``None`` while its run goes on, else its outcome."""
        try:
            data = worker.sock.recv(1 << 16)
            found = worker.frames.feed(data) if data else None
        except (OSError, FrameError) as exc:
            return self._lost(worker, str(exc))
        if found is None:
            return self._lost(worker, "it ended")
        outcome: object | None = None
        for item in found:
            got: Any = item
            kind = got[0]
            if kind == "lines":
                for line in got[1]:
                    if line[0] == "event":
                        _, queue_id, level, fields = line
                        self.log.event(queue_id, level, **fields)
                    else:
                        self.log.line(line[1], line[2])
            elif kind == "ready":
                worker.ready = True
            elif kind == "done":
                _, counts, error = got
                summary.add(RunSummary.from_counts(counts))
                outcome = True if error is None else reported_error(error)
        return outcome

    def _lost(self, worker: _Worker, why: str) -> StateWriteError:
        with self.lock:
            if worker in self.workers:
                self.workers.remove(worker)
        with contextlib.suppress(OSError):
            worker.sock.close()
        status = worker.proc.poll()
        if status is None:
            worker.proc.kill()
            status = worker.proc.wait()
        how = f"signal {-status}" if status < 0 else f"status {status}"
        # Said once, by the watch loop that gets this error back.
        return StateWriteError(
            f"a delivery process ended by {how} ({why}); its messages stay queued"
        )

    def interrupt(self) -> None:
        """Ask every worker to stop after the message under way (serve is stopping)."""
        with self.lock:
            workers = list(self.workers)
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.proc.send_signal(signal.SIGTERM)

    def close(self, timeout: float) -> None:
        """Close the sockets (the workers QUIT and exit); kill whichever outlives ``timeout``."""
        with self.lock:
            self.closed = True
            workers, self.workers = self.workers + self.retired, []
            self.retired = []
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.sock.close()
        deadline = time.monotonic() + timeout
        for worker in workers:
            try:
                worker.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()


if __name__ == "__main__":
    sys.exit(worker_main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0))
