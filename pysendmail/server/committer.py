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
pickle. The child (``commitchild``: its own module, so that it loads neither
asyncio nor aiosmtpd) says ``"ready"`` once it has loaded what it needs. The
listener sends ``("options", IntakeOptions)`` at once and whenever the intake
options change (after a reload), and ``("job", seq, sender, recipients,
body_type, data, trace)`` for each message; the child answers each group with
one frame: a list of ``(seq, reply, log_text, level, queue_id, sender, size,
nrcpt)``. ``serve`` opens its listeners only when every child is ready
(``wait_ready``), so the first clients do not wait for interpreters to start.

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
import os
import subprocess
from typing import TYPE_CHECKING, Any

from pysendmail.server.frames import FrameBuffer, FrameError, frame, start_helper

if TYPE_CHECKING:
    from pysendmail.server.commitchild import Result
    from pysendmail.server.listener import Submission
    from pysendmail.server.policy import Policy
    from pysendmail.server.submit import QueueSubmitter

#: How many commit processes: each runs the intake and commits on a core of
#: its own; two keep the disk busy while one of them computes.
COMMIT_PROCESSES = max(1, min(2, os.cpu_count() or 1))

_TRY_AGAIN = "451 4.3.0 Cannot queue the message now, try again later"


class _Child(asyncio.Protocol):
    """One commit process, seen from the listener: its socket and its messages under way."""

    def __init__(
        self, owner: GroupCommitter, proc: subprocess.Popen[bytes], ready: asyncio.Future[None]
    ) -> None:
        self.owner = owner
        self.proc = proc
        #: Done when the process said it is ready (or ended before it could).
        self.ready = ready
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
            if results == "ready":
                if not self.ready.done():
                    self.ready.set_result(None)
                continue
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
                proc, parent = start_helper("pysendmail.server.commitchild", self.queue_root)
            except OSError:
                if self.children:
                    break  # fewer processes: still a group commit
                raise
            one = _Child(self, proc, loop.create_future())
            self.children.append(one)
            await loop.connect_accepted_socket(lambda one=one: one, sock=parent)  # type: ignore[misc]
            # Its options now, so that it has loaded them before the first message.
            self._send_options(loop, one)

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until every commit process is ready (at most ``timeout`` s); whether they are."""
        waiting = [c.ready for c in self.children if not c.ready.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)
        return all(c.ready.done() for c in self.children)

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
            self._send_options(loop, child)
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

    def _send_options(self, loop: asyncio.AbstractEventLoop, child: _Child) -> None:
        """Send ``child`` the intake options of the current policy (made once per policy)."""
        if self._options[0] is not self.policy:
            options = self.policy.intake_options(None, [], None)
            self._options = (self.policy, frame(("options", options)))
        self._send(loop, child, self._options[1])
        child.sent_policy = self.policy

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
        if not child.ready.done():
            child.ready.set_result(None)  # nobody waits for it any longer
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
