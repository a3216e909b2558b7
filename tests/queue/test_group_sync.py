"""Group commit with one ``syncfs``: durable before linked, and every failure aborts cleanly."""

from __future__ import annotations

import errno
import io
import os
import sys
from pathlib import Path

import pytest

from pysendmail.errors import CantCreateError, IOFailure
from pysendmail.message.intake import IntakeOptions, make_queue_id, receive
from pysendmail.queue import group
from pysendmail.queue.commit import Pending
from pysendmail.queue.group import commit_group, sync_file_system
from pysendmail.queue.spool import Queue

BODY = b"From: a@example.com\r\nSubject: x\r\n\r\nhello\r\n"


def _written(queue: Queue, count: int) -> list[Pending]:
    pendings = []
    for _ in range(count):
        queue_id = make_queue_id()
        options = IntakeOptions(
            dot_ends_input=False, sender="a@example.com", recipients=["b@example.org"]
        )
        options.queue_id = queue_id
        pending = queue.begin(queue_id)
        receive(io.BytesIO(BODY), pending.file, options)
        pendings.append(pending)
    return pendings


class _Calls:
    """Which files were fsynced and when syncfs ran, in order, with what was linked by then."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, queue: Queue, syncfs: object) -> None:
        self.events: list[tuple[str, int]] = []
        self.queue = queue
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            kind = "dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"
            self.events.append((f"fsync-{kind}", self.linked()))
            real_fsync(fd)

        def fake_syncfs(fd: int) -> bool:
            self.events.append(("syncfs", self.linked()))
            return syncfs(fd)  # type: ignore[operator,no-any-return]

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(group, "sync_file_system", fake_syncfs)

    def linked(self) -> int:
        return len(os.listdir(self.queue.dir("queue")))


def test_a_group_is_made_durable_by_one_syncfs_before_any_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = Queue(str(tmp_path / "spool"))
    pendings = _written(queue, 4)
    calls = _Calls(monkeypatch, queue, lambda fd: True)
    assert commit_group(pendings) == [None] * 4
    # One syncfs with nothing linked yet, no fsync of any file, then one of queue/
    # once all four links are there.
    assert calls.events == [("syncfs", 0), ("fsync-dir", 4)]
    assert sorted(os.listdir(queue.dir("queue"))) == sorted(p.queue_id for p in pendings)
    assert os.listdir(queue.dir("tmp")) == []
    assert all(p.committed for p in pendings)


def test_without_a_trustworthy_syncfs_each_file_is_fsynced_before_its_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = Queue(str(tmp_path / "spool"))
    pendings = _written(queue, 3)
    calls = _Calls(monkeypatch, queue, lambda fd: False)
    assert commit_group(pendings) == [None] * 3
    assert calls.events == [
        ("syncfs", 0),
        ("fsync-file", 0),
        ("fsync-file", 1),
        ("fsync-file", 2),
        ("fsync-dir", 3),
    ]


def test_a_lone_message_is_fsynced_not_syncfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = Queue(str(tmp_path / "spool"))
    pendings = _written(queue, 1)
    calls = _Calls(monkeypatch, queue, lambda fd: True)
    assert commit_group(pendings) == [None]
    assert calls.events == [("fsync-file", 0), ("fsync-dir", 1)]


def test_a_failed_syncfs_aborts_the_whole_group_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = Queue(str(tmp_path / "spool"))
    pendings = _written(queue, 3)

    def broken(fd: int) -> bool:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(group, "sync_file_system", broken)
    results = commit_group(pendings)
    assert all(isinstance(r, IOFailure) for r in results)
    assert "Input/output error" in str(results[0])
    assert os.listdir(queue.dir("queue")) == []
    assert os.listdir(queue.dir("tmp")) == []
    assert not any(p.committed for p in pendings)


def test_an_incomplete_file_is_refused_before_the_sync_and_the_rest_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = Queue(str(tmp_path / "spool"))
    pendings = _written(queue, 3)
    pendings[0].file.write(b"more than the envelope says")
    calls = _Calls(monkeypatch, queue, lambda fd: True)
    results = commit_group(pendings)
    assert isinstance(results[0], IOFailure) and results[1:] == [None, None]
    assert calls.events == [("syncfs", 0), ("fsync-dir", 2)]
    assert sorted(os.listdir(queue.dir("queue"))) == sorted(p.queue_id for p in pendings[1:])
    assert os.listdir(queue.dir("tmp")) == []


def test_messages_of_two_queues_get_a_sync_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = Queue(str(tmp_path / "one")), Queue(str(tmp_path / "two"))
    pendings = _written(one, 2) + _written(two, 2)
    synced: list[str] = []

    def fake(fd: int) -> bool:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return True

    monkeypatch.setattr(group, "sync_file_system", fake)
    assert commit_group(pendings) == [None] * 4
    assert [os.path.dirname(os.path.dirname(p)) for p in synced] == [
        str(tmp_path / "one"),
        str(tmp_path / "two"),
    ]
    assert len(os.listdir(one.dir("queue"))) == 2 and len(os.listdir(two.dir("queue"))) == 2


def test_sync_without_prepare_is_refused(tmp_path: Path) -> None:
    queue = Queue(str(tmp_path / "spool"))
    (pending,) = _written(queue, 1)
    with pytest.raises(ValueError, match="prepare"):
        pending.commit(sync_dir=False, sync_file=False)
    with pytest.raises(ValueError, match="prepare"):
        pending.commit(sync_dir=True, sync_file=False)
    pending.abort()


@pytest.mark.parametrize(
    ("release", "expected"),
    [
        ("6.18.44-fc-v595", True),
        ("5.8.0", True),
        ("5.10.0-28-amd64", True),
        ("5.7.19", False),
        ("4.19.0-17-amd64", False),
        ("5.8-rc1", True),
        ("5", False),
        ("", False),
        ("x.y", False),
        ("10.0", True),
    ],
)
def test_the_kernel_release_is_read_safely(release: str, expected: bool) -> None:
    assert group._kernel_at_least(release, (5, 8)) is expected


def test_an_old_kernel_gets_no_syncfs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    class _Uname:
        release = "5.4.0-150-generic"

    monkeypatch.setattr(group, "_LOOKED_UP", {})
    monkeypatch.setattr(os, "uname", lambda: _Uname())
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert sync_file_system(fd) is False
    finally:
        os.close(fd)


def test_enosys_turns_syncfs_off_for_good(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import ctypes

    calls: list[int] = []

    def refused(fd: int) -> int:
        calls.append(fd)
        ctypes.set_errno(errno.ENOSYS)
        return -1

    monkeypatch.setattr(group, "_LOOKED_UP", {"syncfs": refused})
    assert sync_file_system(3) is False
    assert sync_file_system(3) is False
    assert calls == [3]


def test_a_failing_syncfs_raises_with_its_errno(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes

    def failing(fd: int) -> int:
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(group, "_LOOKED_UP", {"syncfs": failing})
    with pytest.raises(OSError) as raised:
        sync_file_system(3)
    assert raised.value.errno == errno.EIO


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="syncfs is Linux's")
def test_the_real_syncfs_runs_here(tmp_path: Path) -> None:
    monkey = pytest.MonkeyPatch()
    monkey.setattr(group, "_LOOKED_UP", {})
    try:
        fd = os.open(tmp_path, os.O_RDONLY)
        try:
            expected = group._kernel_at_least(os.uname().release, (5, 8))
            assert sync_file_system(fd) is expected
        finally:
            os.close(fd)
    finally:
        monkey.undo()


def test_a_file_written_whole_is_checked_by_its_size_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pysendmail.message import envelope

    queue = Queue(str(tmp_path / "spool"))
    good, short = _written(queue, 2)
    for p in (good, short):
        p.file.flush()
        p.expected_size = os.fstat(p.file.fileno()).st_size
    short.expected_size += 1  # the writer wrote more than the file holds

    def unparsed(*args: object) -> object:
        raise AssertionError("the prelude was parsed again")

    monkeypatch.setattr(envelope.Envelope, "from_file", unparsed)
    results = commit_group([good, short])
    assert results[0] is None
    assert isinstance(results[1], IOFailure) and "not complete" in str(results[1])
    assert os.listdir(queue.dir("queue")) == [good.queue_id]
    assert os.listdir(queue.dir("tmp")) == []


def test_begin_looks_at_the_queue_owner_once_and_again_after_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = Queue(str(tmp_path / "spool"))
    _written(queue, 1)[0].abort()  # lays the queue out
    stats: list[str] = []
    real_stat = os.stat

    def counting(path: object, *args: object, **kwargs: object) -> os.stat_result:
        stats.append(str(path))
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", counting)
    for p in _written(queue, 3):
        p.abort()
    assert [s for s in stats if s.endswith("/queue")] == []  # known from the first
    os.rename(queue.dir("tmp"), queue.dir("tmp.gone"))
    with pytest.raises(CantCreateError):
        queue.begin(make_queue_id())
    os.rename(queue.dir("tmp.gone"), queue.dir("tmp"))
    queue.begin(make_queue_id()).abort()
    assert [s for s in stats if s.endswith("/queue")] == [queue.dir("queue")]
