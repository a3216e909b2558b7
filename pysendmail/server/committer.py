"""The group committer of ``pysendmail serve``: intake and commit in a child process.

Why a process: the intake (header completion, aliases, the queue file) costs
about as much CPU as the SMTP dialogue, and threads of the listener's own
interpreter share its lock with the event loop. The child runs them on the
other core, a batch at a time, and commits each batch with one fsync of
``queue/`` (``pysendmail.queue.group.commit_group``).

The protocol, over a socket pair: the listener sends a frame (4 octets of
length, then a pickle) ``(options, jobs)``: the intake options when they
changed (else ``None``) and a list of ``(sender, recipients, body_type,
data)``; the child answers with one frame: for each job ``(reply, log_text,
level, queue_id, sender, size, nrcpt)``. One batch is in flight at a time;
what arrives meanwhile forms the next batch.

What it must never do: answer a 250 for a message before ``commit_group``
returned ``None`` for it (after the batch's directory fsync). When the child
dies, every message of its batch gets 451 (the client sends it again; one that
was committed meanwhile may then be queued twice, as when serve itself dies
between the commit and the 250).

The child ignores SIGINT, SIGTERM and SIGHUP (they are for serve, which may
share its process group) and exits when its socket reaches end of file, after
the batch under way.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import pickle
import signal
import socket
import struct
import subprocess
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pysendmail.message.intake import IntakeOptions
    from pysendmail.server.listener import Submission
    from pysendmail.server.policy import Policy
    from pysendmail.server.submit import QueueSubmitter

_HEAD = struct.Struct("!I")
#: A batch holds at most this many octets of message data (bigger waits a turn).
BATCH_BYTES = 4 * 1024 * 1024
Job = tuple[str, list[str], "str | None", bytes]
Result = tuple[str, "str | None", str, str, str, int, int]


def _frame(obj: object) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEAD.pack(len(data)) + data


# --------------------------------------------------------------------------- the child


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def process_batch(queue_root: str, template: IntakeOptions, jobs: list[Job]) -> list[Result]:
    """Intake every job into ``tmp/``, commit them as one group; the result of each."""
    from pysendmail.message.intake import make_queue_id, receive
    from pysendmail.queue.commit import Pending
    from pysendmail.queue.group import commit_group
    from pysendmail.queue.spool import Queue
    from pysendmail.server.submit import failure

    queue = Queue(queue_root)
    results: list[Result | None] = [None] * len(jobs)
    pendings: list[Pending] = []
    where: list[tuple[int, str, str, int, int]] = []
    try:
        for i, (sender, recipients, body_type, data) in enumerate(jobs):
            queue_id = make_queue_id()
            options = copy.copy(template)
            options.sender = sender
            options.recipients = list(recipients)
            options.body_type = body_type
            options.queue_id = queue_id
            try:
                pending = queue.begin(queue_id)
                try:
                    envelope = receive(io.BytesIO(data), pending.file, options)
                except BaseException:
                    pending.abort()
                    raise
            except Exception as exc:
                reply, text, level = failure(exc)
                if text is None:
                    text = f"internal error: {type(exc).__name__}: {exc}"
                results[i] = (reply, text, level, queue_id, sender, 0, 0)
                continue
            pendings.append(pending)
            where.append((i, queue_id, envelope.sender, envelope.size, len(envelope.recipients)))
        outcomes = commit_group(pendings)
    except BaseException:
        for pending in pendings:
            pending.abort()
        raise
    for (i, queue_id, sender, size, nrcpt), problem in zip(where, outcomes, strict=True):
        if problem is None:
            results[i] = (
                f"250 2.0.0 Ok: queued as {queue_id}",
                None,
                "info",
                queue_id,
                sender,
                size,
                nrcpt,
            )
        else:
            reply, text, level = failure(problem)
            results[i] = (reply, text or f"not queued: {problem}", level, queue_id, sender, 0, 0)
    return [r for r in results if r is not None]


def child_main(fd: int, queue_root: str) -> int:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    template: Any = None
    while True:
        head = _read_exactly(sock, _HEAD.size)
        if head is None:
            return 0
        body = _read_exactly(sock, _HEAD.unpack(head)[0])
        if body is None:
            return 0
        options, jobs = pickle.loads(body)  # noqa: S301 - our own parent, over a socket pair
        if options is not None:
            template = options
        sock.sendall(_frame(process_batch(queue_root, template, jobs)))


# --------------------------------------------------------------------------- the listener's side


class GroupCommitter:
    """The listener's end: batches submissions to the child, resolves their replies.

    ``__call__`` is the ``group_submit`` of ``Handler``: it takes a
    submission whose data is in memory and returns the future of its reply,
    or ``None`` (the data is in a file, or the child is gone) so that the
    caller commits it in a thread as before. Runs in the event loop's thread.
    """

    def __init__(
        self, queue_root: str, policy: Policy, submitter: QueueSubmitter, log: Any
    ) -> None:
        self.queue_root = queue_root
        self.policy = policy
        self.submitter = submitter
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.waiting: list[tuple[Submission, Job, asyncio.Future[str]]] = []
        self.in_flight: list[tuple[Submission, Job, asyncio.Future[str]]] = []
        self.sent_policy: Policy | None = None
        self.buffer = bytearray()
        self.idle: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        parent, child = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pysendmail.server.committer",
                    str(child.fileno()),
                    self.queue_root,
                ],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        parent.setblocking(False)
        self.sock = parent
        self.loop = loop
        self.idle = asyncio.Event()
        self.idle.set()
        loop.add_reader(parent.fileno(), self._readable)

    def __call__(self, submission: Submission) -> asyncio.Future[str] | None:
        if self.sock is None or self.loop is None:
            return None
        data = submission.spool.memory()
        if data is None:
            return None
        submission.spool.close()
        future: asyncio.Future[str] = self.loop.create_future()
        job: Job = (submission.sender, submission.recipients, submission.body_type, data)
        self.waiting.append((submission, job, future))
        if not self.in_flight:
            self._send()
        return future

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy

    def _send(self) -> None:
        assert self.sock is not None and self.idle is not None
        batch: list[tuple[Submission, Job, asyncio.Future[str]]] = []
        size = 0
        while self.waiting and (not batch or size + len(self.waiting[0][1][3]) <= BATCH_BYTES):
            item = self.waiting.pop(0)
            batch.append(item)
            size += len(item[1][3])
        options = None
        if self.sent_policy is not self.policy:
            options = self.policy.intake_options(None, [], None)
            self.sent_policy = self.policy
        frame = _frame((options, [job for _, job, _ in batch]))
        self.in_flight = batch
        self.idle.clear()
        try:
            self.sock.setblocking(True)
            self.sock.sendall(frame)
            self.sock.setblocking(False)
        except OSError as exc:
            self._died(f"cannot reach the commit process: {exc}")

    def _readable(self) -> None:
        assert self.sock is not None
        try:
            chunk = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError as exc:
            self._died(f"the commit process is gone: {exc}")
            return
        if not chunk:
            self._died("the commit process is gone")
            return
        self.buffer += chunk
        if len(self.buffer) < _HEAD.size:
            return
        need = _HEAD.unpack_from(self.buffer)[0] + _HEAD.size
        if len(self.buffer) < need:
            return
        results: list[Result] = pickle.loads(  # noqa: S301 - our own child
            bytes(self.buffer[_HEAD.size : need])
        )
        del self.buffer[:need]
        batch, self.in_flight = self.in_flight, []
        for (submission, _job, future), result in zip(batch, results, strict=True):
            reply, text, level, queue_id, sender, size, nrcpt = result
            if text is not None:
                self.log.line(f"{submission.client}: {text}", level)
            else:
                self.submitter.accepted(submission, queue_id, sender, size, nrcpt)
            if not future.done():
                future.set_result(reply)
        if self.waiting:
            self._send()
        elif self.idle is not None:
            self.idle.set()

    def _died(self, why: str) -> None:
        self.log.line(f"{why}; committing in threads from now on", "error")
        if self.sock is not None and self.loop is not None:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
        self.sock = None
        for _submission, _job, future in self.in_flight + self.waiting:
            if not future.done():
                future.set_result("451 4.3.0 Cannot queue the message now, try again later")
        self.in_flight, self.waiting = [], []
        if self.idle is not None:
            self.idle.set()

    async def close(self) -> None:
        """Wait for the batches under way, then let the child finish and exit."""
        if self.idle is not None:
            await self.idle.wait()
        if self.sock is not None and self.loop is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            proc, self.proc = self.proc, None
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, proc.wait)


if __name__ == "__main__":
    sys.exit(child_main(int(sys.argv[1]), sys.argv[2]))
