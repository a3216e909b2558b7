"""Group commit: each message durable and linked, a failing one aborted alone."""

from __future__ import annotations

import asyncio
import errno
import io
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from pysendmail.errors import IOFailure
from pysendmail.message.intake import IntakeOptions, make_queue_id, receive
from pysendmail.queue.commit import Pending
from pysendmail.queue.group import commit_group
from pysendmail.queue.spool import Queue
from pysendmail.server.commitchild import commit_written, write_one
from pysendmail.server.committer import GroupCommitter
from pysendmail.server.listener import Spool, Submission
from tests.support.unmeasured import unmeasured

BODY = b"From: a@example.com\r\nSubject: x\r\n\r\nhello\r\n"


def _options(queue_id: str) -> IntakeOptions:
    options = IntakeOptions(
        dot_ends_input=False, sender="a@example.com", recipients=["b@example.org"]
    )
    options.queue_id = queue_id
    return options


def _written(queue: Queue, count: int) -> list[Pending]:
    """``count`` messages written into ``tmp/`` by the intake, not committed."""
    pendings = []
    for _ in range(count):
        queue_id = make_queue_id()
        pending = queue.begin(queue_id)
        receive(io.BytesIO(BODY), pending.file, _options(queue_id))
        pendings.append(pending)
    return pendings


def test_commit_group_links_all_and_aborts_an_incomplete_one(tmp_path: Path) -> None:
    queue = Queue(str(tmp_path / "spool"))
    pendings = _written(queue, 3)
    pendings[1].file.write(b"trailing garbage")  # no longer the size its envelope says
    results = commit_group(pendings)
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], IOFailure)
    queued = sorted(os.listdir(queue.dir("queue")))
    assert queued == sorted([pendings[0].queue_id, pendings[2].queue_id])
    assert os.listdir(queue.dir("tmp")) == []


def test_process_batch_answers_250_only_for_committed_messages(tmp_path: Path) -> None:
    queue = Queue(str(tmp_path / "spool"))
    queue.begin(make_queue_id()).abort()  # lays the personal queue out
    template = IntakeOptions(dot_ends_input=False)
    jobs = [
        (7, "a@example.com", ["b@example.org"], None, BODY),
        (8, "a@example.com", ["b@example.org"], None, b"Subject: \x00\r\n\r\nx\r\n"),
    ]
    written = [write_one(queue, template, *job) for job in jobs]
    assert os.listdir(queue.dir("queue")) == []  # written is not committed
    results = commit_written(written)
    assert [r[0] for r in results] == [7, 8]
    assert results[0][1].startswith("250 ") and results[0][4] in os.listdir(queue.dir("queue"))
    assert results[1][1].startswith("554 ")
    assert len(os.listdir(queue.dir("queue"))) == 1
    assert os.listdir(queue.dir("tmp")) == []


def test_a_failed_folder_sync_withdraws_every_linked_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pysendmail.queue import group

    queue = Queue(str(tmp_path / "spool"))
    pendings = _written(queue, 3)

    def broken(path: str) -> None:
        raise OSError(errno.EIO, "Input/output error", path)

    monkeypatch.setattr(group, "fsync_dir", broken)
    results = commit_group(pendings)
    assert all(isinstance(r, IOFailure) for r in results)
    assert os.listdir(queue.dir("queue")) == []
    assert os.listdir(queue.dir("tmp")) == []
    assert not any(p.committed for p in pendings)


def test_commit_without_the_folder_sync_is_not_a_commit_until_confirmed(tmp_path: Path) -> None:
    queue = Queue(str(tmp_path / "spool"))
    queue_id = make_queue_id()
    pending = queue.begin(queue_id)
    receive(io.BytesIO(BODY), pending.file, _options(queue_id))
    final = pending.commit(sync_dir=False)
    assert os.path.exists(final) and pending.linked and not pending.committed
    pending.confirm()
    assert pending.committed
    pending.abort()  # a committed message is never taken back
    assert os.path.exists(final)

    other = queue.begin(make_queue_id())
    receive(io.BytesIO(BODY), other.file, _options(other.queue_id))
    linked = other.commit(sync_dir=False)
    other.withdraw()
    assert not os.path.exists(linked) and os.listdir(queue.dir("tmp")) == []
    with queue.begin(make_queue_id()) as fresh, pytest.raises(ValueError, match="after commit"):
        fresh.confirm()


# --------------------------------------------------------------------------- the child process


class _Submitter:
    def __init__(self) -> None:
        self.queued: list[str] = []

    def accepted(self, submission: Any, queue_id: str, *_: object) -> None:
        self.queued.append(queue_id)


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def line(self, text: str, level: str = "info") -> None:
        self.lines.append((text, level))


class _Policy:
    def __init__(self) -> None:
        self.made = 0

    def intake_options(self, *_: object) -> IntakeOptions:
        self.made += 1
        return IntakeOptions(dot_ends_input=False)


def _submission(tmp_path: Path, data: bytes) -> Submission:
    spool = Spool(str(tmp_path))
    spool.write(data)
    return Submission("a@example.com", ["b@example.org"], spool, None, "unix", None, None)


def _committer(
    queue: Queue, processes: int = 2
) -> tuple[GroupCommitter, _Submitter, _Log, _Policy]:
    submitter, log, policy = _Submitter(), _Log(), _Policy()
    group = GroupCommitter(queue.root, policy, submitter, log, processes)  # type: ignore[arg-type]
    return group, submitter, log, policy


def test_the_commit_process_answers_each_message_after_its_commit(tmp_path: Path) -> None:
    queue = Queue(str(tmp_path / "spool"))
    queue.begin(make_queue_id()).abort()  # lays the queue out

    async def main() -> list[str]:
        group, submitter, log, policy = _committer(queue)
        await group.start(asyncio.get_running_loop())
        futures = [group(_submission(tmp_path, BODY)) for _ in range(30)]
        futures.append(group(_submission(tmp_path, b"Subject: \x00\r\n\r\nx\r\n")))
        assert all(f is not None for f in futures)
        replies = list(await asyncio.gather(*[f for f in futures if f is not None]))
        assert len(group.children) == 2
        await group.close()
        assert policy.made == 1  # the options were made once, sent to each process once
        assert len(submitter.queued) == 30
        assert [level for _, level in log.lines] == ["warning"]  # the refused one
        return replies

    replies = asyncio.run(main())
    assert all(r.startswith("250 2.0.0 Ok: queued as ") for r in replies[:30])
    assert replies[30].startswith("554 ")
    queued = sorted(os.listdir(queue.dir("queue")))
    assert queued == sorted(r.rsplit(" ", 1)[1] for r in replies[:30])
    assert os.listdir(queue.dir("tmp")) == []


def test_a_dead_commit_process_means_451_then_threads(tmp_path: Path) -> None:
    queue = Queue(str(tmp_path / "spool"))
    queue.begin(make_queue_id()).abort()

    async def main() -> None:
        group, _submitter, log, _policy = _committer(queue, processes=1)
        await group.start(asyncio.get_running_loop())
        (child,) = group.children
        first = group(_submission(tmp_path, BODY))
        assert first is not None
        assert (await first).startswith("250 ")
        child.proc.send_signal(signal.SIGSTOP)  # it cannot answer what comes next
        pending = group(_submission(tmp_path, BODY))
        assert pending is not None
        child.proc.kill()
        assert await asyncio.wait_for(pending, 30) == (
            "451 4.3.0 Cannot queue the message now, try again later"
        )
        assert any("a commit process is gone; committing in threads" in t for t, _ in log.lines)
        assert group(_submission(tmp_path, BODY)) is None  # the caller commits in a thread
        await group.close()

    asyncio.run(main())


def test_when_one_commit_process_dies_the_other_goes_on(tmp_path: Path) -> None:
    queue = Queue(str(tmp_path / "spool"))
    queue.begin(make_queue_id()).abort()

    async def main() -> None:
        group, _submitter, log, _policy = _committer(queue, processes=2)
        await group.start(asyncio.get_running_loop())
        victim = group.children[0]
        victim.proc.kill()
        victim.proc.wait()
        await asyncio.sleep(0.2)  # its socket's end reaches the loop
        assert group.children == [c for c in group.children if c is not victim]
        futures = [group(_submission(tmp_path, BODY)) for _ in range(5)]
        assert all(f is not None for f in futures)
        replies = await asyncio.gather(*[f for f in futures if f is not None])
        assert all(r.startswith("250 ") for r in replies)
        assert any("a commit process is gone; the others go on" in t for t, _ in log.lines)
        await group.close()

    asyncio.run(main())


def test_the_messages_of_one_loop_turn_reach_a_process_in_one_write(tmp_path: Path) -> None:
    queue = Queue(str(tmp_path / "spool"))
    queue.begin(make_queue_id()).abort()

    async def main() -> tuple[list[int], list[str]]:
        group, _submitter, _log, _policy = _committer(queue, processes=1)
        await group.start(asyncio.get_running_loop())
        (child,) = group.children
        assert child.transport is not None
        writes: list[int] = []
        real_write = child.transport.write

        def counting(data: bytes) -> None:
            writes.append(len(data))
            real_write(data)

        child.transport.write = counting  # type: ignore[method-assign]
        futures = [group(_submission(tmp_path, BODY)) for _ in range(5)]  # one turn
        replies = list(await asyncio.gather(*[f for f in futures if f is not None]))
        await group.close()
        return writes, replies

    writes, replies = asyncio.run(main())
    assert len(writes) == 1  # the options and five messages, together
    assert all(r.startswith("250 2.0.0 Ok: queued as ") for r in replies)
    assert len(os.listdir(queue.dir("queue"))) == 5


def test_a_commit_process_says_ready_after_loading_the_intake_alone(tmp_path: Path) -> None:
    queue = Queue(str(tmp_path / "spool"))
    queue.begin(make_queue_id()).abort()

    async def main() -> None:
        group, _submitter, _log, policy = _committer(queue, processes=2)
        await group.start(asyncio.get_running_loop())
        assert policy.made == 1  # the options went out at start, before any message
        assert await group.wait_ready(30)
        assert all(c.ready.done() for c in group.children) and len(group.children) == 2
        await group.close()

    asyncio.run(main())
    # What the process loads: the intake and the queue, not the listener's stack.
    code = (
        "import sys, pysendmail.server.commitchild\n"
        "print(sorted(m for m in ('asyncio', 'aiosmtpd', 'ssl', 'pydantic') if m in sys.modules))"
    )
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=unmeasured()
    )
    assert out.stdout.strip() == "[]"


def test_waiting_for_a_commit_process_that_died_at_start_ends_at_once(tmp_path: Path) -> None:
    queue = Queue(str(tmp_path / "spool"))
    queue.begin(make_queue_id()).abort()

    async def main() -> tuple[bool, float]:
        group, _submitter, log, _policy = _committer(queue, processes=1)
        await group.start(asyncio.get_running_loop())
        (child,) = group.children
        child.proc.kill()  # before it could say ready
        loop = asyncio.get_running_loop()
        started = loop.time()
        ready = await group.wait_ready(30)
        took = loop.time() - started
        assert group.children == []
        assert any("a commit process is gone" in t for t, _ in log.lines)
        await group.close()
        return ready, took

    ready, took = asyncio.run(main())
    assert ready  # nobody left to wait for: the listener commits in threads
    assert took < 10


def test_waiting_for_a_silent_commit_process_gives_up_after_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket
    import subprocess
    import sys

    from pysendmail.server import committer

    def silent(module: str, *args: str) -> tuple[subprocess.Popen[bytes], socket.socket]:
        parent, child = socket.socketpair()
        proc = subprocess.Popen(  # holds its end open and never says a word
            [sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=(child.fileno(),)
        )
        child.close()
        return proc, parent

    monkeypatch.setattr(committer, "start_helper", silent)
    queue = Queue(str(tmp_path / "spool"))

    async def main() -> tuple[bool, float]:
        group, _submitter, _log, _policy = _committer(queue, processes=1)
        await group.start(asyncio.get_running_loop())
        loop = asyncio.get_running_loop()
        started = loop.time()
        ready = await group.wait_ready(0.3)
        took = loop.time() - started
        group.children[0].proc.kill()
        await group.close()
        return ready, took

    ready, took = asyncio.run(main())
    assert ready is False
    assert 0.25 < took < 5
