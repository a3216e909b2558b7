"""Commit discipline: acknowledged only once durable; an abort leaves nothing behind."""

from __future__ import annotations

import errno
import os
import pathlib
import signal
import stat
import subprocess
import threading
import time
from typing import IO, Any

import pytest

from pysendmail import errors
from pysendmail.cli import queuecmd
from pysendmail.message.envelope import Envelope
from pysendmail.queue import Queue
from tests.queue.helpers import (
    REPO,
    enqueue,
    message,
    new_queue,
    options,
    queue_files,
    settings_for,
    streams,
    write_config,
)


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def test_commit_fsyncs_the_file_links_it_then_fsyncs_the_folder_before_returning(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    q = new_queue(spool)
    settings = settings_for(tmp_path, spool)
    events: list[tuple[str, str]] = []
    real_fsync, real_link, real_rename = os.fsync, os.link, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", _fd_path(fd)))
        real_fsync(fd)

    def link(src: str, dst: str, **kw: Any) -> None:
        events.append(("link", f"{src} -> {dst}"))
        real_link(src, dst, **kw)

    def rename(src: str, dst: str, **kw: Any) -> None:
        events.append(("rename", f"{src} -> {dst}"))
        real_rename(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "rename", rename)
    opts = options(queue_id="ORDER1")
    status = queuecmd.submit(None, streams(message("order")), settings, opts)  # type: ignore[arg-type]
    events.append(("exit", str(status)))
    monkeypatch.undo()

    tmp_file, queue_file = q.path("tmp", "ORDER1"), q.path("queue", "ORDER1")
    assert events == [
        ("fsync", tmp_file),
        ("link", f"{tmp_file} -> {queue_file}"),
        ("fsync", q.dir("queue")),
        ("exit", "0"),
    ]
    assert queue_files(q) == ["ORDER1"]
    assert queue_files(q, "tmp") == []


def test_queue_file_is_0600_in_folders_of_0700_and_the_maildrop_is_3733(
    tmp_path: pathlib.Path,
) -> None:
    q = new_queue(tmp_path / "spool")
    env = enqueue(q)
    mode = stat.S_IMODE(os.stat(q.path("queue", env.queue_id)).st_mode)
    assert mode == 0o600
    for folder in ("tmp", "queue", "state", "hold", "failed"):
        assert stat.S_IMODE(os.stat(q.dir(folder)).st_mode) == 0o700, folder
    assert stat.S_IMODE(os.stat(q.dir("maildrop")).st_mode) == 0o3733
    assert stat.S_IMODE(os.stat(q.root).st_mode) == 0o711
    assert stat.S_ISFIFO(os.stat(os.path.join(q.root, "trigger")).st_mode)


def test_the_queued_file_is_the_prelude_and_the_message_intact(tmp_path: pathlib.Path) -> None:
    q = new_queue(tmp_path / "spool")
    data = message("intact", b"line one\r\n\xc3\xa9 8-bit\r\n")
    env = enqueue(q, data)
    with open(q.path("queue", env.queue_id), "rb") as f:
        back = Envelope.from_file(f)
        body = f.read()
    assert back == env
    assert body.startswith(b"Received: by mx.example.com")
    assert body.endswith(data)
    assert len(body) == env.size


def test_an_exception_while_writing_leaves_nothing_behind(tmp_path: pathlib.Path) -> None:
    q = new_queue(tmp_path / "spool")
    with pytest.raises(RuntimeError), q.begin("ABORT1") as pending:
        pending.file.write(b"half a message")
        assert queue_files(q, "tmp") == ["ABORT1"]
        raise RuntimeError("the intake failed")
    assert queue_files(q, "tmp") == []
    assert queue_files(q) == []


def test_a_message_that_the_intake_refuses_leaves_nothing_behind(tmp_path: pathlib.Path) -> None:
    spool = tmp_path / "spool"
    q = new_queue(spool)
    settings = settings_for(tmp_path, spool)
    with pytest.raises(errors.DataError):
        queuecmd.submit(None, streams(b"Subject: x\0y\r\n\r\n"), settings, options())  # type: ignore[arg-type]
    assert queue_files(q, "tmp") == [] and queue_files(q) == []


def test_an_unfinished_spool_file_is_never_committed(tmp_path: pathlib.Path) -> None:
    q = new_queue(tmp_path / "spool")
    with q.begin("SHORT1") as pending:
        env = Envelope(queue_id="SHORT1", sender="", recipients=[], size=100)
        pending.file.write(env.to_bytes() + b"only forty octets of the promised hundred")
        with pytest.raises(errors.IOFailure, match="not complete"):
            pending.commit()
    assert queue_files(q, "tmp") == [] and queue_files(q) == []


def test_a_queue_id_in_use_is_never_replaced(tmp_path: pathlib.Path) -> None:
    q = new_queue(tmp_path / "spool")
    first = enqueue(q, message("first"), queue_id="SAME1")
    with pytest.raises(errors.CantCreateError, match="already in use"):
        enqueue(q, message("second"), queue_id="SAME1")
    with open(q.path("queue", "SAME1"), "rb") as f:
        assert Envelope.from_file(f) == first
        assert f.read().endswith(message("first"))
    assert queue_files(q, "tmp") == []


@pytest.mark.parametrize(
    ("code", "exc", "status"),
    [(errno.ENOSPC, errors.TemporaryFailure, 75), (errno.EIO, errors.IOFailure, 74)],
)
def test_fsync_failure_exits_75_for_a_full_disk_and_74_otherwise(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    exc: type[errors.PysendmailError],
    status: int,
) -> None:
    spool = tmp_path / "spool"
    q = new_queue(spool)
    settings = settings_for(tmp_path, spool)

    def fsync(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(exc) as caught:
        queuecmd.submit(None, streams(message("x")), settings, options())  # type: ignore[arg-type]
    monkeypatch.undo()
    assert caught.value.exit_status == status
    assert "nothing was queued" in str(caught.value)
    assert queue_files(q, "tmp") == [] and queue_files(q) == []


def test_folder_fsync_failure_takes_the_message_back(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = new_queue(tmp_path / "spool")
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.path.isdir(_fd_path(fd)):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(errors.IOFailure):
        enqueue(q)
    monkeypatch.undo()
    assert queue_files(q, "tmp") == [] and queue_files(q) == []


class _FullDisk:
    """A spool file on a disk that fills up after ``room`` octets."""

    def __init__(self, real: Any, room: int) -> None:
        self.real = real
        self.room = room

    def write(self, data: Any) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        written: int = self.real.write(data)
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_disk_full_while_the_intake_writes_exits_75_and_removes_the_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    q = new_queue(spool)
    settings = settings_for(tmp_path, spool)
    real_fdopen = os.fdopen

    def fdopen(fd: int, *args: Any, **kw: Any) -> Any:
        return _FullDisk(real_fdopen(fd, *args, **kw), 200)

    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(errors.TemporaryFailure, match="No space left on device"):
        queuecmd.submit(None, streams(message("big", b"x" * 5000)), settings, options())  # type: ignore[arg-type]
    monkeypatch.undo()
    assert queue_files(q, "tmp") == [] and queue_files(q) == []


def test_no_queue_exits_73_and_says_to_run_queue_init(tmp_path: pathlib.Path) -> None:
    # A system queue that is not there: its parent is not the user's own.
    (tmp_path / "var").mkdir()
    os.chown(tmp_path / "var", 1, 1)
    q = Queue(str(tmp_path / "var" / "spool"))
    with pytest.raises(errors.CantCreateError, match=r"run `pysendmail queue init` as root") as e:
        q.begin("NOQ1")
    assert e.value.exit_status == 73
    assert not (tmp_path / "var" / "spool").exists()


def test_a_personal_queue_is_created_on_first_use(tmp_path: pathlib.Path) -> None:
    q = Queue(str(tmp_path / "spool"))
    env = enqueue(q)
    assert queue_files(q) == [env.queue_id]


def test_commit_pokes_a_watching_runner(tmp_path: pathlib.Path) -> None:
    q = new_queue(tmp_path / "spool")
    with q.watch() as trigger:
        assert not trigger.wait(0)
        enqueue(q)
        assert trigger.wait(1)
        assert not trigger.wait(0)  # every poke was consumed
    assert not q.poke()  # nobody listens any more: a no-op, never a block


# --------------------------------------------------------------------------- signals

SENDMAIL = str(REPO / ".venv" / "bin" / "sendmail")


def _submitter(tmp_path: pathlib.Path) -> tuple[Queue, list[str], dict[str, str]]:
    """A queue, and the real ``sendmail`` command line that queues into it."""
    spool = tmp_path / "spool"
    q = new_queue(spool)
    config = write_config(tmp_path, spool)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYSENDMAIL_CACHE_DIR": str(tmp_path)}
    return q, [SENDMAIL, "-C", str(config), "-i", "bob@example.net"], env


def _wait_for(predicate: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_while_reading_removes_the_file_and_exits_75(
    tmp_path: pathlib.Path, signum: int
) -> None:
    q, argv, env = _submitter(tmp_path)
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert proc.stdin is not None
    proc.stdin.write(message("sig")[:60])
    proc.stdin.flush()
    _wait_for(lambda: queue_files(q, "tmp") != [])
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=20)
    name = signal.Signals(signum).name
    assert proc.returncode == 75
    assert (
        stderr.decode()
        == f"sendmail: stopped by {name} while reading the message; nothing was queued\n"
    )
    assert queue_files(q, "tmp") == [] and queue_files(q) == []


def test_an_ignored_sighup_stays_ignored_as_under_nohup(tmp_path: pathlib.Path) -> None:
    q, argv, env = _submitter(tmp_path)
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),
    )
    assert proc.stdin is not None
    data = message("nohup")
    proc.stdin.write(data[:60])
    proc.stdin.flush()
    _wait_for(lambda: queue_files(q, "tmp") != [])
    proc.send_signal(signal.SIGHUP)
    proc.stdin.write(data[60:])
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert len(queue_files(q)) == 1


def _feed(stdin: IO[bytes], data: bytes) -> None:
    """Write ``data`` in two parts 100 ms apart, then close the pipe, whatever happens.

    A child that the signal has stopped already has closed its end, so a write
    fails with EPIPE (Python ignores SIGPIPE): an expected outcome, not an
    error. The pipe must be unbuffered: a buffered one whose ``flush`` failed
    kept the octets, stayed open, and its ResourceWarning when collected
    failed the test under -W error. Unbuffered, each ``write`` is one write(2)
    of fewer than PIPE_BUF octets (atomic: all or EPIPE) and ``close`` has
    nothing to flush, so it cannot fail and always runs.
    """
    head, tail = data[:60], data[60:]
    try:
        assert stdin.write(head) == len(head)
        time.sleep(0.1)
        assert stdin.write(tail) == len(tail)
    except BrokenPipeError:
        pass
    finally:
        stdin.close()


def test_a_signal_at_any_instant_never_leaves_a_partial_file(tmp_path: pathlib.Path) -> None:
    # SIGTERM, SIGINT or SIGHUP at a random moment of a run, 60 times: each run
    # ends queued (exit 0), or with nothing kept (75, or killed by the default
    # action before or after our handlers were in place); never a stray file.
    # The input arrives in two parts 100 ms apart, so that the reading stretch
    # is long enough to be hit, and the delays span a whole run as measured here.
    import random
    from concurrent.futures import ThreadPoolExecutor

    q, argv, env = _submitter(tmp_path)
    rng = random.Random(75)
    signals = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]

    def one(subject: str, delay: float | None, signum: int) -> tuple[str, int, int]:
        data = message(subject, b"x" * 70 + b"\r\n")
        # Unbuffered: see _feed. The ``with`` reaps the child on every way out.
        with subprocess.Popen(
            argv, stdin=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, bufsize=0
        ) as proc:
            timer = None
            if delay is not None:
                timer = threading.Timer(delay, proc.send_signal, (signum,))
                timer.start()
            try:
                assert proc.stdin is not None
                _feed(proc.stdin, data)
                code = proc.wait(30)
            finally:
                if timer is not None:
                    # A timer that already fired may still be signalling:
                    # never let it outlive the run it belongs to.
                    timer.cancel()
                    timer.join()
                if proc.returncode is None:  # the wait timed out or the feed failed
                    proc.kill()
        return subject, code, signum

    one("warm", None, 0)
    started = time.monotonic()
    assert one("probe", None, 0)[1] == 0
    span = (time.monotonic() - started) * 1.3

    def run(n: int) -> tuple[str, int, int]:
        return one(f"sig-{n}", rng.uniform(0, span), rng.choice(signals))

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(run, range(60)))
    queued = set()
    for name in queue_files(q):
        with open(q.path("queue", name), "rb") as f:
            Envelope.from_file(f)
            queued.add(f.read().split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode())
    for subject, code, signum in results:
        # SIGINT while the interpreter itself starts (before any of our code):
        # Python prints KeyboardInterrupt and exits 1, having created nothing.
        started = code == 1 and signum == signal.SIGINT
        assert code in (0, 75) or code < 0 or started, (subject, code)
        if code == 0:
            assert subject in queued
        if code == 75:
            assert subject not in queued
    assert queue_files(q, "tmp") == []
    codes = sorted(c for _, c, _ in results)
    print(f"\nexit statuses of 60 signalled runs: {codes}")
    assert 75 in codes, "no run was stopped by a signal"
