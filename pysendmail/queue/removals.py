"""Group commit of finished messages: a runner's removals made durable in batches.

When every recipient of a message was accepted, removing ``queue/ID`` is the
record of it (``Claim.done``). Alone, ``done`` makes that removal durable at
once: ``fsync`` of ``queue/`` (about half a millisecond here, more on a busy
disk), then the state file is removed and the file closed, and closing the
last descriptor of an unlinked file is when the file system frees it (another
fifth of a millisecond of waiting on ext4). A runner draining a backlog would
spend most of its time there.

Inside ``Removals`` (``Queue.claim(..., removals=r)``), ``done`` only unlinks
``queue/ID`` and hands the claim's file to a background thread, which then, for
everything handed over since its last pass: fsyncs ``queue/`` once, removes the
state files, and closes the files (releasing their locks and freeing them).

Why this keeps the queue invariants (DESIGN.md):

* The unlink happens at once, under the claim's lock: no other runner can take
  the message after it (``Queue._lock`` finds the name gone), and a runner
  that crashes leaves nothing to send again. Only a crash of the *machine*
  (power, kernel) before the batch's fsync can bring the file back; it is
  then delivered again. That is the duplicate invariant 2 allows: a message
  whose 250 arrived but whose record was not yet durable. The window is one
  batch, at most a few milliseconds, and ``close()`` (the end of a run) waits
  for every removal to be durable.
* A state file (it exists when an earlier attempt left recipients accepted
  or deferred) is removed only after the fsync that made the message's
  removal durable, so no crash can leave the message without its state
  (which would send again to the recipients already accepted; invariant 3).
* The lock is held until the file is closed, which is after the unlink: it
  changes nothing, as the name is gone.
* A failed fsync keeps the state files and is raised by the next ``add`` or
  by ``close``: the runner stops, as it does when a removal fails.

The number of files waiting is bounded (``max_pending``): a hand-over waits
for the background pass when it is reached, so descriptors stay few.

Why a thread: the closes are mostly waiting on the file system, which the
thread overlaps with the sending. Doing the same batches in the sending
thread spared some CPU (no switches between threads) but drained a 2,000
message queue about 15% slower here (690 against 809 msg/s, 8 rounds each).

What this module must never do: remove a state file before the removal of
its message is durable; swallow a failed fsync. It is the runner's, never
imported by ``sendmail``.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from pysendmail.queue.commit import close_quietly, fsync_dir, unlink_quietly

if TYPE_CHECKING:
    from typing import BinaryIO

    from pysendmail.queue.spool import Queue

#: Files handed over and not yet closed, at most (a hand-over waits beyond it).
MAX_PENDING = 256
#: A batch is made durable once it holds this many removals ...
BATCH_SIZE = 64
#: ... or this many seconds after its first one (the window in which a crash of
#: the machine can bring a delivered message back).
BATCH_DELAY = 0.02


class NotDurable(OSError):
    """The fsync of a batch failed: removals made before it may not survive a crash."""


class Removals:
    """Makes the removals of one runner's finished messages durable in batches.

    Use as a context manager around a run; ``add`` is called by ``Claim.done``
    from any worker thread.
    """

    def __init__(
        self,
        queue: Queue,
        *,
        max_pending: int = MAX_PENDING,
        batch_size: int = BATCH_SIZE,
        batch_delay: float = BATCH_DELAY,
    ) -> None:
        self.queue = queue
        self.max_pending = max(1, max_pending)
        self.batch_size = max(1, min(batch_size, self.max_pending))
        self.batch_delay = batch_delay
        self._cond = threading.Condition()
        self._pending: list[tuple[BinaryIO, str | None]] = []
        self._first_at = 0.0  # when the first removal of the pending batch came
        self._busy = 0  # files taken by the background pass, not yet closed
        self._closing = False
        self._error: OSError | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Removals:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, file: BinaryIO, state_path: str | None) -> None:
        """Take over ``file`` (of a message just unlinked) and ``state/ID`` to remove (if any).

        Raises ``NotDurable`` when an earlier batch failed (the run must stop).
        """
        with self._cond:
            while (
                self._error is None
                and not self._closing
                and len(self._pending) + self._busy >= self.max_pending
            ):
                self._cond.wait()
            error, self._error = self._error, None  # reported once, here
            if error is None and not self._closing:
                pending = self._pending
                pending.append((file, state_path))
                if len(pending) == 1:
                    self._first_at = time.monotonic()
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._loop, name="pysendmail-removals", daemon=True
                    )
                    self._thread.start()
                # Waking the thread for every removal would cost each one a
                # switch between threads: only when a batch starts or is full.
                if len(pending) == 1 or len(pending) >= self.batch_size:
                    self._cond.notify_all()
                return
        # Not taken over: make this one durable here, then report the failure.
        try:
            self._sync([(file, state_path)])
        except OSError as exc:
            raise _not_durable(exc) from None
        if error is not None:
            raise error

    def close(self) -> None:
        """Wait until every removal handed over is durable; ``NotDurable`` if one batch failed."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        with self._cond:
            rest, self._pending = self._pending, []
        if rest:
            try:
                self._sync(rest)
            except OSError as exc:
                if self._error is None:
                    self._error = _not_durable(exc)
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                while len(self._pending) < self.batch_size and not self._closing:
                    left = self._first_at + self.batch_delay - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch, self._pending = self._pending, []
                self._busy = len(batch)
            try:
                self._sync(batch)
            except OSError as exc:
                with self._cond:
                    if self._error is None:
                        self._error = _not_durable(exc)
            finally:
                with self._cond:
                    self._busy = 0
                    self._cond.notify_all()

    def _sync(self, batch: list[tuple[BinaryIO, str | None]]) -> None:
        """fsync queue/ once for ``batch``; then remove its state files; close its files."""
        try:
            fsync_dir(self.queue.dir("queue"))
            for _file, state_path in batch:
                if state_path is not None:
                    unlink_quietly(state_path)
        finally:
            for file, _state_path in batch:
                close_quietly(file)


def _not_durable(exc: OSError) -> NotDurable:
    if isinstance(exc, NotDurable):
        return exc
    return NotDurable(exc.errno, exc.strerror or str(exc), exc.filename)
