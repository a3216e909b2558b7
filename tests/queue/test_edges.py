"""Less travelled paths: odd files and folders, busy messages, show's details, signals."""

from __future__ import annotations

import errno
import os
import pathlib
import signal
import threading
import time
from typing import Any

import pytest

from pysendmail import errors
from pysendmail.cli import queuecmd
from pysendmail.queue import Queue
from pysendmail.queue.state import State
from tests.queue.helpers import (
    NO_USER,
    drop_spool,
    enqueue,
    err,
    message,
    new_queue,
    options,
    out,
    queue_files,
    settings_for,
    streams,
)


class _SignalOnRead:
    """A stdin that sends this process ``signum`` once ``after`` octets have been read."""

    def __init__(self, data: bytes, after: int, signum: int) -> None:
        self.data, self.pos, self.after, self.signum = data, 0, after, signum

    def read(self, n: int = -1) -> bytes:
        if self.pos >= self.after and self.signum:
            signum, self.signum = self.signum, 0
            os.kill(os.getpid(), signum)
        n = len(self.data) if n < 0 else min(n, 16)
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk

    readinto = None


def test_sigterm_in_process_is_75_and_the_old_handler_comes_back(tmp_path: pathlib.Path) -> None:
    spool = tmp_path / "spool"
    q = new_queue(spool)
    settings = settings_for(tmp_path, spool)
    before = signal.getsignal(signal.SIGTERM)
    io = streams()
    io.stdin = _SignalOnRead(message("term", b"x" * 500), 40, signal.SIGTERM)
    with pytest.raises(errors.TemporaryFailure, match="stopped by SIGTERM") as e:
        queuecmd.submit(None, io, settings, options())  # type: ignore[arg-type]
    assert e.value.exit_status == 75
    assert signal.getsignal(signal.SIGTERM) == before
    assert queue_files(q, "tmp") == [] and queue_files(q) == []


def test_submit_from_a_thread_queues_without_touching_signals(tmp_path: pathlib.Path) -> None:
    # The sidecar may submit from a worker thread, where signals are not ours.
    spool = tmp_path / "spool"
    q = new_queue(spool)
    settings = settings_for(tmp_path, spool)
    status: list[int] = []
    t = threading.Thread(
        target=lambda: status.append(
            queuecmd.submit(None, streams(message("thread")), settings, options())  # type: ignore[arg-type]
        )
    )
    t.start()
    t.join(30)
    assert status == [0] and len(queue_files(q)) == 1


def test_an_intake_write_error_other_than_a_full_disk_is_74(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    q = new_queue(spool)
    settings = settings_for(tmp_path, spool)
    real_fdopen = os.fdopen

    class Broken:
        def __init__(self, real: Any) -> None:
            self.real = real

        def write(self, data: Any) -> int:
            raise OSError(errno.EIO, "Input/output error")

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: Broken(real_fdopen(fd, *a, **k)))
    with pytest.raises(errors.IOFailure, match="Input/output error") as e:
        queuecmd.submit(None, streams(message("eio")), settings, options())  # type: ignore[arg-type]
    monkeypatch.undo()
    assert e.value.exit_status == 74
    assert queue_files(q, "tmp") == [] and queue_files(q) == []


def test_a_file_system_without_hard_links_still_commits_without_replacing(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = new_queue(tmp_path / "spool")

    def no_link(src: str, dst: str, **kw: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    env = enqueue(q, message("one"), queue_id="NOLINK1")
    with pytest.raises(errors.CantCreateError, match="already in use"):
        enqueue(q, message("two"), queue_id="NOLINK1")
    monkeypatch.undo()
    assert queue_files(q) == [env.queue_id] and queue_files(q, "tmp") == []
    assert pathlib.Path(q.path("queue", "NOLINK1")).read_bytes().endswith(message("one"))


def test_a_tmp_folder_that_cannot_be_written_is_73_with_the_folder_named(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = new_queue(tmp_path / "spool")
    real_open = os.open

    def deny(path: Any, *a: Any, **k: Any) -> int:
        if str(path).startswith(q.dir("tmp")):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(errors.CantCreateError) as e:
        q.begin("DENIED1")
    monkeypatch.undo()
    assert str(e.value) == (
        f"cannot create a file in {q.dir('tmp')}: Permission denied;"
        " run `pysendmail queue init` as root"
    )


def test_an_invalid_queue_id_is_refused_before_anything_is_created(tmp_path: pathlib.Path) -> None:
    q = new_queue(tmp_path / "spool")
    for bad in ("", "../x", "a/b", "x" * 65, ".hidden"):
        with pytest.raises(errors.DataError):
            q.begin(bad)
    assert queue_files(q, "tmp") == [] and queue_files(q, "maildrop") == []


def test_names_that_are_not_queue_ids_are_not_listed(tmp_path: pathlib.Path) -> None:
    q = new_queue(tmp_path / "spool")
    env = enqueue(q)
    pathlib.Path(q.path("queue", ".hidden")).write_bytes(b"x")
    pathlib.Path(q.path("queue", "has space")).write_bytes(b"x")
    assert q.ids() == [env.queue_id]


def test_a_fifo_or_link_in_the_queue_is_never_opened_as_a_message(tmp_path: pathlib.Path) -> None:
    q = new_queue(tmp_path / "spool")
    os.mkfifo(q.path("queue", "FIFO1"))
    os.symlink("/etc/passwd", q.path("queue", "LINK1"))
    with pytest.raises(errors.DataError, match="not a regular file"):
        q.claim("FIFO1")
    with pytest.raises(errors.DataError, match="a symbolic link, not a message"):
        q.claim("LINK1")
    assert q.locate("FIFO1") is None and q.locate("LINK1") is None


def test_a_state_file_that_is_not_a_regular_file_or_too_large_is_refused(
    tmp_path: pathlib.Path,
) -> None:
    q = new_queue(tmp_path / "spool")
    os.mkfifo(q.path("state", "FIFO2"))
    with pytest.raises(errors.DataError, match="not a regular file"):
        q.read_state("FIFO2")
    big = pathlib.Path(q.path("state", "BIG2"))
    with big.open("wb") as f:
        f.truncate(5 * 1024 * 1024)
    with pytest.raises(errors.DataError, match="larger than"):
        q.read_state("BIG2")


def test_flush_and_release_and_hold_say_what_they_did_not_do(tmp_path: pathlib.Path) -> None:
    spool = tmp_path / "spool"
    q = new_queue(spool)
    settings = settings_for(tmp_path, spool)
    held, failed, busy = (
        enqueue(q, message("h")),
        enqueue(q, message("f")),
        enqueue(q, message("b")),
    )
    q.hold(held.queue_id)
    with q.claim(failed.queue_id) as c:  # type: ignore[union-attr]
        c.fail()
    claim = q.claim(busy.queue_id)
    io = streams()
    try:
        assert queuecmd.admin(settings, io, "flush", [held.queue_id, busy.queue_id]) == 0
        assert queuecmd.admin(settings, io, "hold", [failed.queue_id, held.queue_id]) == 0
        assert queuecmd.admin(settings, io, "hold", [busy.queue_id]) == 75
    finally:
        assert claim is not None
        claim.release()
    assert queuecmd.admin(settings, io, "release", [busy.queue_id]) == 0
    assert out(io).splitlines() == [
        f"{held.queue_id}: not flushed: it is in hold/ (release or requeue it first)",
        f"{busy.queue_id}: being delivered now",
        f"{failed.queue_id}: not held: it is in failed/ (requeue or delete it)",
        f"{held.queue_id}: already in hold/",
        f"{busy.queue_id}: already in queue/",
    ]
    assert err(io) == (
        f"pysendmail: {busy.queue_id} is being delivered right now; try again in a moment\n"
    )
    with pytest.raises(errors.UsageError, match="unknown queue action"):
        queuecmd.admin(settings, io, "explode", ["X"])


def test_show_names_the_folder_and_every_envelope_option(tmp_path: pathlib.Path) -> None:
    spool = tmp_path / "spool"
    q = new_queue(spool)
    settings = settings_for(tmp_path, spool)
    env = enqueue(
        q,
        message("opts", b"caf\xc3\xa9\r\n"),
        queue_id="OPTS1",
        dsn_envid="env-1",
        dsn_notify="SUCCESS,FAILURE",
        recipients=["bob@example.net"],
    )
    state = State.fresh(env)
    state.requeue(env.arrival + 3600)
    state.recipients[0].last_attempt = env.arrival + 60
    q.write_state(env.queue_id, state)
    q.hold("OPTS1")
    io = streams()
    queuecmd.show(settings, io, "OPTS1")
    text = out(io)
    assert text.startswith(f"Queue ID:   OPTS1 (on hold; {q.path('hold', 'OPTS1')})\n")
    assert "Requeued:   " in text
    assert "Options:    BODY=8BITMIME ENVID=env-1\n" in text
    assert "  <bob@example.net> NOTIFY=SUCCESS,FAILURE\n" in text
    assert "    last attempt " in text


def test_show_cuts_a_header_block_that_never_ends(tmp_path: pathlib.Path) -> None:
    spool = tmp_path / "spool"
    q = new_queue(spool)
    settings = settings_for(tmp_path, spool)
    lines = b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"y" * 60) for i in range(2000))
    enqueue(q, lines + b"To: b@example.net\r\n\r\nbody\r\n", queue_id="HUGEHDR1")
    io = streams()
    queuecmd.show(settings, io, "HUGEHDR1")
    assert out(io).endswith("  ... (header block longer than 65536 octets)\n")
    assert len(out(io)) < 80000


def test_show_marks_a_message_being_delivered(tmp_path: pathlib.Path) -> None:
    spool = tmp_path / "spool"
    q = new_queue(spool)
    settings = settings_for(tmp_path, spool)
    env = enqueue(q)
    claim = q.claim(env.queue_id)
    assert claim is not None
    with claim:
        io = streams()
        queuecmd.show(settings, io, env.queue_id)
    assert out(io).startswith(f"Queue ID:   {env.queue_id} (being delivered; ")


def test_poke_is_a_no_op_when_the_trigger_is_not_a_fifo(tmp_path: pathlib.Path) -> None:
    q = new_queue(tmp_path / "spool")
    trigger = os.path.join(q.root, "trigger")
    os.unlink(trigger)
    assert not q.poke()
    pathlib.Path(trigger).write_bytes(b"")
    assert not q.poke()
    assert pathlib.Path(trigger).read_bytes() == b""  # never written into
    with pytest.raises(errors.CantCreateError, match="not a FIFO"):
        q.watch()


def test_the_runner_side_run_is_the_runners(tmp_path: pathlib.Path) -> None:
    # sendmail -q goes to the runner; without a relay it says how to add one.
    settings = settings_for(tmp_path, tmp_path / "spool")
    io = streams()
    assert queuecmd.run_queue(settings, io) == 78
    assert "no relay is configured" in err(io)


def test_ensure_creates_missing_parents_and_reports_them(tmp_path: pathlib.Path) -> None:
    q = Queue(str(tmp_path / "a" / "b" / "spool"))
    changes = q.ensure(NO_USER)
    assert changes[0] == f"created {tmp_path / 'a' / 'b'}"
    assert queue_files(q) == []


def test_pickup_leaves_a_file_it_may_not_read_and_refuses_it(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = new_queue(tmp_path / "spool")
    path = drop_spool(q, "SECRET1")
    real_open = os.open

    def deny(p: Any, *a: Any, **k: Any) -> int:
        if str(p) == path:
            raise PermissionError(errno.EACCES, "Permission denied", p)
        return real_open(p, *a, **k)

    monkeypatch.setattr(os, "open", deny)
    (result,) = q.pickup(0)
    monkeypatch.undo()
    assert (result.outcome, result.reason) == ("refused", "cannot be read: Permission denied")
    assert queue_files(q, "maildrop") == []


def test_a_maildrop_folder_holding_files_is_left_inert(tmp_path: pathlib.Path) -> None:
    q = new_queue(tmp_path / "spool")
    os.makedirs(q.path("maildrop", "NEST1"))
    pathlib.Path(q.path("maildrop", "NEST1"), "inner").write_bytes(b"x")
    (result,) = q.pickup(0)
    assert (result.outcome, result.reason) == ("left", "a directory that is not empty")
    assert queue_files(q) == []


def test_clean_tmp_ignores_folders(tmp_path: pathlib.Path) -> None:
    q = new_queue(tmp_path / "spool")
    os.mkdir(q.path("tmp", "adir"))
    assert q.clean_tmp(0, now=time.time() + 10) == []
    assert os.path.isdir(q.path("tmp", "adir"))
