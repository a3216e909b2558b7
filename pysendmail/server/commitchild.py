"""A commit process of ``pysendmail serve``: the intake and the group commit, off the event loop.

``serve`` starts it (``committer.GroupCommitter``) as ``python -m
pysendmail.server.commitchild FD QUEUE_ROOT``; see ``committer`` for why it is
a process and the protocol. This module is the process's side alone: it
imports the intake and the queue, and nothing of the listener (no asyncio, no
aiosmtpd), so that it starts quickly and small.

Start-up: once its imports are done it says ``"ready"`` (one frame);
``serve`` opens its listeners when every commit process has said so, so the
first clients do not wait for an interpreter to load.

Its main thread reads each message as soon as the listener has it and runs the
intake into ``tmp/`` (CPU); its commit thread (``CommitStage``) takes whatever
the intake has finished, commits it as one group (``commit_group``) and
answers the group with one frame.

What it must never do: answer a 250 for a message before ``commit_group``
returned ``None`` for it (after its group's directory fsync).

It ignores SIGINT, SIGTERM and SIGHUP (they are for serve, which may share
its process group) and exits when its socket reaches end of file, after
committing and answering every message it has read.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import sys
import threading
from typing import TYPE_CHECKING, Any

from pysendmail.message.intake import make_queue_id, receive
from pysendmail.queue.group import commit_group
from pysendmail.queue.spool import Queue
from pysendmail.server.frames import FrameBuffer, frame
from pysendmail.server.replies import failure

if TYPE_CHECKING:
    from pysendmail.message.intake import IntakeOptions
    from pysendmail.queue.commit import Pending

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
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    queue = Queue(queue_root)
    stage = CommitStage(sock)
    stage.start()
    sock.sendall(frame("ready"))
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


if __name__ == "__main__":
    sys.exit(child_main(int(sys.argv[1]), sys.argv[2]))
