"""Removals in batches: a finished message is gone at once, durable by the end of the run.

The order that keeps the invariants: the message is unlinked under its lock,
then one fsync of queue/ per batch, and only then are state files removed
(a crash must never leave the message without the state that says which
recipients were accepted already).
"""

from __future__ import annotations

import os
import pathlib
import threading

import pytest

from pysendmail.queue import Queue
from pysendmail.queue.removals import Removals
from pysendmail.queue.state import SENT, State
from tests.queue.helpers import enqueue, message, new_queue, queue_files


def _claim_done(q: Queue, queue_id: str, removals: Removals) -> None:
    claim = q.claim(queue_id, removals=removals)
    assert claim is not None
    with claim:
        claim.done()


def test_a_done_message_is_gone_at_once_and_cannot_be_claimed_again(
    tmp_path: pathlib.Path,
) -> None:
    q = new_queue(tmp_path / "spool")
    env = enqueue(q)
    with Removals(q, batch_delay=60) as removals:
        claim = q.claim(env.queue_id, removals=removals)
        assert claim is not None
        with claim:
            claim.done()
        # Not yet made durable (the batch waits), but gone for every runner.
        assert queue_files(q) == []
        assert q.claim(env.queue_id) is None
        assert Queue(q.root).claim(env.queue_id) is None
    assert queue_files(q) == [] and queue_files(q, "state") == []


def test_state_files_are_removed_only_after_the_fsync_of_the_queue_folder(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = new_queue(tmp_path / "spool")
    ids = [enqueue(q, message(f"m{i}")).queue_id for i in range(5)]
    for queue_id in ids:
        claim = q.claim(queue_id)
        assert claim is not None
        with claim:
            state = State.fresh(claim.envelope)
            state.recipients[0].status = SENT
            claim.save(state)
    assert len(queue_files(q, "state")) == 5
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    real_fsync, real_unlink = os.fsync, os.unlink
    queue_dir = os.path.realpath(q.dir("queue"))

    def fsync(fd: int) -> None:
        path = os.path.realpath(f"/proc/self/fd/{fd}")
        with lock:
            events.append(("fsync", "queue" if path == queue_dir else path))
        real_fsync(fd)

    def unlink(path: str, *args: object, **kw: object) -> None:
        with lock:
            events.append(("unlink", os.path.basename(os.path.dirname(str(path)))))
        real_unlink(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "unlink", unlink)
    with Removals(q, batch_size=2, batch_delay=60) as removals:
        for queue_id in ids:
            _claim_done(q, queue_id, removals)
    monkeypatch.undo()
    assert queue_files(q) == [] and queue_files(q, "state") == []
    # Every state file is unlinked after an fsync of queue/ that followed its
    # message's unlink.
    messages_unlinked = states_unlinked = 0
    synced = 0
    for what, where in events:
        if (what, where) == ("unlink", "queue"):
            messages_unlinked += 1
        elif (what, where) == ("fsync", "queue"):
            synced = messages_unlinked
        elif (what, where) == ("unlink", "state"):
            states_unlinked += 1
            assert states_unlinked <= synced, events
    assert (messages_unlinked, states_unlinked) == (5, 5)
    # Batched: fewer fsyncs than messages.
    assert 1 <= events.count(("fsync", "queue")) < 5


def test_a_failed_fsync_keeps_the_state_files_and_is_raised(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = new_queue(tmp_path / "spool")
    env = enqueue(q)
    claim = q.claim(env.queue_id)
    assert claim is not None
    with claim:
        claim.save(State.fresh(claim.envelope))

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    removals = Removals(q, batch_delay=60)
    _claim_done(q, env.queue_id, removals)
    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="Input/output error"):
        removals.close()
    monkeypatch.undo()
    assert queue_files(q) == []
    assert queue_files(q, "state") == [env.queue_id]  # the next clean-up takes it


def test_a_failed_batch_stops_the_next_hand_over(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = new_queue(tmp_path / "spool")
    first, second = (enqueue(q, message(f"m{i}")).queue_id for i in range(2))
    failed = threading.Event()

    def broken(fd: int) -> None:
        failed.set()
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    removals = Removals(q, batch_size=1, batch_delay=0)
    _claim_done(q, first, removals)
    assert failed.wait(5)
    for _ in range(500):  # the background pass records the error just after
        if removals._error is not None:
            break
        threading.Event().wait(0.01)
    monkeypatch.undo()
    claim = q.claim(second, removals=removals)
    assert claim is not None
    with claim, pytest.raises(OSError, match="Input/output error"):
        claim.done()
    removals.close()  # reported once; this removal was made durable at once
    assert queue_files(q) == []


def test_many_removals_from_threads_keep_few_files_open(tmp_path: pathlib.Path) -> None:
    q = new_queue(tmp_path / "spool")
    ids = [enqueue(q, message(f"m{i}")).queue_id for i in range(60)]
    before = len(os.listdir("/proc/self/fd"))
    with Removals(q, max_pending=8, batch_size=4, batch_delay=0.001) as removals:
        peak = 0

        def work(mine: list[str]) -> None:
            nonlocal peak
            for queue_id in mine:
                _claim_done(q, queue_id, removals)
                peak = max(peak, len(os.listdir("/proc/self/fd")) - before)

        threads = [threading.Thread(target=work, args=(ids[n::3],)) for n in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert queue_files(q) == []
    # At most max_pending handed-over files, plus one being claimed per thread
    # and a descriptor or two of the moment (the fsync's, the listing's).
    assert peak <= 8 + 3 + 3
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_state_file_is_removed_when_the_claim_saved_one_and_not_looked_for_otherwise(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = new_queue(tmp_path / "spool")
    fresh, saved = (enqueue(q, message(f"m{i}")).queue_id for i in range(2))
    unlinked: list[str] = []
    real_unlink = os.unlink

    def unlink(path: str, *args: object, **kw: object) -> None:
        unlinked.append(str(path))
        real_unlink(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", unlink)
    with Removals(q) as removals:
        _claim_done(q, fresh, removals)
        claim = q.claim(saved, removals=removals)
        assert claim is not None
        with claim:
            claim.save(State.fresh(claim.envelope))
            claim.done()
    monkeypatch.undo()
    # Every writer of a state file holds the message's lock: a claim that found
    # none and saved none has none to remove.
    assert q.path("state", fresh) not in unlinked
    assert q.path("state", saved) in unlinked
    assert queue_files(q) == [] and queue_files(q, "state") == []
