"""The group committer of ``pysendmail serve``: intake and commit in a child process.

Why a process: the intake (header completion, aliases, the queue file) costs
about as much CPU as the SMTP dialogue, and threads of the listener's own
interpreter share its lock with the event loop. The child runs them on the
other core and makes the messages durable in groups, with one fsync of
``queue/`` per group (``pysendmail.queue.group.commit_group``).

Why a pipeline: the child has two stages, so that a message never waits for
the disk work of messages that came before it to start its own intake. Its
main thread reads each message as soon as the listener has it and runs the
intake into ``tmp/`` (CPU); its commit thread takes whatever the intake has
finished, fsyncs and links each file, fsyncs ``queue/`` once for the group and
answers (disk: the interpreter lock is free meanwhile). A group is whatever
arrived while the previous one was being synced, so the group size follows
the load and a lone message is committed at once.

The protocol, over a socket pair; every frame is 4 octets of length, then a
pickle. The listener sends ``("options", IntakeOptions)`` when the intake
options changed (first, and after a reload) and ``("job", seq, sender,
recipients, body_type, data, trace)`` for each message; the child answers each group
with one frame: a list of ``(seq, reply, log_text, level, queue_id, sender,
size, nrcpt)``.

What it must never do: answer a 250 for a message before ``commit_group``
returned ``None`` for it (after its group's directory fsync). When the child
dies, every message not yet answered gets 451 (the client sends it again; one
that was committed meanwhile may then be queued twice, as when serve itself
dies between the commit and the 250).

The child ignores SIGINT, SIGTERM and SIGHUP (they are for serve, which may
share its process group) and exits when its socket reaches end of file, after
committing and answering every message it has read.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any

from pysendmail.server.frames import FrameBuffer, FrameError, frame, start_helper

if TYPE_CHECKING:
    from pysendmail.message.intake import IntakeOptions
    from pysendmail.queue.commit import Pending
    from pysendmail.queue.spool import Queue
    from pysendmail.server.listener import Submission
    from pysendmail.server.policy import Policy
    from pysendmail.server.submit import QueueSubmitter

#: ``(seq, reply, log_text, level, queue_id, sender, size, nrcpt)``
Result = tuple[int, str, "str | None", str, str, str, int, int]
#: What the intake left for the commit stage: the file, or the answer already.
Written = tuple[int, "Pending | None", "Result | None", str, int, int]


def write_one(
    queue: Queue,
    template: IntakeOptions,
    seq: int,
    sender: str,
    recipients: list[str],
    body_type: str | None,
    data: bytes,
    trace: tuple[str, str, str] | None = None,
) -> Written:
    """The intake of one message into ``tmp/`` (not yet durable), or its refusal."""
    from pysendmail.message.intake import make_queue_id, receive
    from pysendmail.server.submit import failure

    queue_id = make_queue_id()
    options = template.copy()
    options.sender = sender
    options.recipients = list(recipients)
    options.body_type = body_type
    options.queue_id = queue_id
    options.trace = trace
    try:
        pending = queue.begin(queue_id)
        try:
            # The file is built in memory (the message is, already) and written
            # once: the intake's seeks and tells would each be a system call.
            built = io.BytesIO()
            envelope = receive(io.BytesIO(data), built, options)
            written = built.getbuffer()
            pending.file.write(written)
            pending.expected_size = len(written)
        except BaseException:
            pending.abort()
            raise
    except Exception as exc:
        reply, text, level = failure(exc)
        if text is None:
            text = f"internal error: {type(exc).__name__}: {exc}"
        return seq, None, (seq, reply, text, level, queue_id, sender, 0, 0), "", 0, 0
    return seq, pending, None, envelope.sender, envelope.size, len(envelope.recipients)


def commit_written(items: list[Written]) -> list[Result]:
    """Commit the files of ``items`` as one group; the answer of every item."""
    from pysendmail.queue.group import commit_group
    from pysendmail.server.submit import failure

    pendings = [item[1] for item in items if item[1] is not None]
    try:
        outcomes = iter(commit_group(pendings))
    except BaseException:
        for p in pendings:
            p.abort()
        raise
    results: list[Result] = []
    for seq, pending, answered, sender, size, nrcpt in items:
        if pending is None:
            assert answered is not None
            results.append(answered)
            continue
        queue_id = pending.queue_id
        problem = next(outcomes)
        if problem is None:
            reply = f"250 2.0.0 Ok: queued as {queue_id}"
            results.append((seq, reply, None, "info", queue_id, sender, size, nrcpt))
        else:
            reply, text, level = failure(problem)
            text = text or f"not queued: {problem}"
            results.append((seq, reply, text, level, queue_id, sender, 0, 0))
    return results


class CommitStage(threading.Thread):
    """The child's second stage: commits what the intake wrote, a group at a time, and answers."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(name="pysendmail-commit", daemon=True)
        self.sock = sock
        self.cond = threading.Condition()
        self.items: list[Written] = []
        self.closing = False
        self.failed: BaseException | None = None

    def put(self, item: Written) -> None:
        with self.cond:
            self.items.append(item)
            self.cond.notify()

    def finish(self) -> None:
        """Commit and answer what is left, then stop."""
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.join()

    def run(self) -> None:
        while True:
            with self.cond:
                while not self.items and not self.closing:
                    self.cond.wait()
                if not self.items:
                    return
                group, self.items = self.items, []
            try:
                answers = commit_written(group)
                self.sock.sendall(frame(answers))
            except BaseException as exc:
                # The listener is gone, or a bug: stop the child. Whatever was
                # not answered gets 451 from the listener (or nobody is left
                # to tell); files not committed are cleaned up as stale.
                self.failed = exc
                with contextlib.suppress(Exception):
                    print(
                        f"pysendmail: commit process: {type(exc).__name__}: {exc}",
                        file=sys.stderr,
                        flush=True,
                    )
                os._exit(75)


def child_main(fd: int, queue_root: str) -> int:
    from pysendmail.queue.spool import Queue

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    queue = Queue(queue_root)
    stage = CommitStage(sock)
    stage.start()
    template: Any = None
    # Read whatever has arrived (under load, several messages per system call)
    # rather than a frame at a time (two calls per message).
    frames = FrameBuffer()
    try:
        while True:
            data = sock.recv(1 << 16)
            if not data:
                break
            for item in frames.feed(data):
                got: Any = item
                if got[0] == "options":
                    template = got[1]
                    continue
                _, seq, sender, recipients, body_type, body, trace = got
                stage.put(
                    write_one(queue, template, seq, sender, recipients, body_type, body, trace)
                )
    finally:
        stage.finish()
    return 0


# --------------------------------------------------------------------------- the listener's side


#: How many commit processes: each runs the intake and commits on a core of
#: its own; two keep the disk busy while one of them computes.
COMMIT_PROCESSES = max(1, min(2, os.cpu_count() or 1))

_TRY_AGAIN = "451 4.3.0 Cannot queue the message now, try again later"


class _Child(asyncio.Protocol):
    """One commit process, seen from the listener: its socket and its messages under way."""

    def __init__(self, owner: GroupCommitter, proc: subprocess.Popen[bytes]) -> None:
        self.owner = owner
        self.proc = proc
        self.transport: asyncio.Transport | None = None
        self.outstanding: dict[int, tuple[Submission, asyncio.Future[str]]] = {}
        self.sent_policy: Policy | None = None
        self.frames = FrameBuffer()
        #: Frames for it made during this turn of the event loop, sent together.
        self.unsent: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            found = self.frames.feed(data)
        except FrameError as exc:
            self.owner._died(self, f"a commit process sent {exc}")
            return
        for results in found:
            self.owner._answer(self, results)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.owner.closing or self.outstanding:
            self.owner._died(self, "a commit process is gone")


class GroupCommitter:
    """The listener's end: hands each submission to a commit process, resolves its reply.

    ``__call__`` is the ``group_submit`` of ``Handler``: it takes a
    submission whose data is in memory and returns the future of its reply,
    or ``None`` (the data is in a file, or every commit process is gone) so
    that the caller commits it in a thread as before. A message goes to the
    process with the fewest messages under way. Runs in the event loop's thread.
    """

    def __init__(
        self,
        queue_root: str,
        policy: Policy,
        submitter: QueueSubmitter,
        log: Any,
        processes: int = COMMIT_PROCESSES,
    ) -> None:
        self.queue_root = queue_root
        self.policy = policy
        self.submitter = submitter
        self.log = log
        self.processes = max(1, processes)
        self.children: list[_Child] = []
        self.dead: list[subprocess.Popen[bytes]] = []
        #: The intake options of a policy, as a frame (made once per policy).
        self._options: tuple[Policy | None, bytes] = (None, b"")
        self.seq = 0
        self.idle: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closing = False

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the commit processes. Raises ``OSError`` when none can start."""
        self.loop = loop
        self.idle = asyncio.Event()
        self.idle.set()
        for _ in range(self.processes):
            try:
                proc, parent = start_helper("pysendmail.server.committer", self.queue_root)
            except OSError:
                if self.children:
                    break  # fewer processes: still a group commit
                raise
            one = _Child(self, proc)
            self.children.append(one)
            await loop.connect_accepted_socket(lambda one=one: one, sock=parent)  # type: ignore[misc]

    # -- the listener's calls --------------------------------------------------

    def __call__(self, submission: Submission) -> asyncio.Future[str] | None:
        loop = self.loop
        if loop is None or self.closing:
            return None
        live = [
            c for c in self.children if c.transport is not None and not c.transport.is_closing()
        ]
        if not live:
            return None
        data = submission.spool.memory()
        if data is None:
            return None
        child = min(live, key=lambda c: len(c.outstanding))
        transport = child.transport
        assert transport is not None
        submission.spool.close()
        if child.sent_policy is not self.policy:
            if self._options[0] is not self.policy:
                options = self.policy.intake_options(None, [], None)
                self._options = (self.policy, frame(("options", options)))
            self._send(loop, child, self._options[1])
            child.sent_policy = self.policy
        self.seq += 1
        seq = self.seq
        future: asyncio.Future[str] = loop.create_future()
        child.outstanding[seq] = (submission, future)
        if self.idle is not None:
            self.idle.clear()
        job = (
            "job",
            seq,
            submission.sender,
            submission.recipients,
            submission.body_type,
            data,
            submission.trace,
        )
        self._send(loop, child, frame(job))
        return future

    def _send(self, loop: asyncio.AbstractEventLoop, child: _Child, data: bytes) -> None:
        # The messages that finish in one turn of the loop go to a commit process
        # in one write (one system call, one wake-up of the process), at the end
        # of that turn.
        if not child.unsent:
            loop.call_soon(self._flush, child)
        child.unsent.append(data)

    def _flush(self, child: _Child) -> None:
        unsent, child.unsent = child.unsent, []
        transport = child.transport
        if transport is not None and not transport.is_closing():
            transport.write(b"".join(unsent))
        # Else the process is gone: _died answered 451 to its messages already.

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy

    @property
    def outstanding(self) -> int:
        """Messages handed to a commit process and not answered yet."""
        return sum(len(c.outstanding) for c in self.children)

    def _answer(self, child: _Child, results: list[Result]) -> None:
        for seq, reply, text, level, queue_id, sender, size, nrcpt in results:
            item = child.outstanding.pop(seq, None)
            if item is None:
                continue
            submission, future = item
            if text is not None:
                self.log.line(f"{submission.client}: {text}", level)
            else:
                self.submitter.accepted(submission, queue_id, sender, size, nrcpt)
            if not future.done():
                future.set_result(reply)
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if self.idle is not None and not any(c.outstanding for c in self.children):
            self.idle.set()

    def _died(self, child: _Child, why: str) -> None:
        if child in self.children:
            self.children.remove(child)
        if not self.closing:
            rest = "the others go on" if self.children else "committing in threads from now on"
            self.log.line(f"{why}; {rest}", "error")
        transport, child.transport = child.transport, None
        if transport is not None:
            transport.abort()
        outstanding, child.outstanding = child.outstanding, {}
        for _submission, future in outstanding.values():
            if not future.done():
                future.set_result(_TRY_AGAIN)
        if child.proc.poll() is None and not self.closing:
            child.proc.kill()
        self.dead.append(child.proc)  # reaped by close()
        self._maybe_idle()

    async def close(self) -> None:
        """Wait for the messages under way, then let the processes finish and exit."""
        if self.idle is not None:
            await self.idle.wait()
        self.closing = True
        children = list(self.children)
        for child in children:
            transport, child.transport = child.transport, None
            if transport is not None:
                transport.close()
        loop = asyncio.get_running_loop()
        for proc in [c.proc for c in children] + self.dead:
            await loop.run_in_executor(None, proc.wait)
        self.children, self.dead = [], []


if __name__ == "__main__":
    sys.exit(child_main(int(sys.argv[1]), sys.argv[2]))
