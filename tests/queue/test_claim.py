"""Claims: one message goes to exactly one runner at a time, and a finished one to nobody."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import threading

import pytest

from pysendmail import errors
from pysendmail.queue import Claim, Queue
from pysendmail.queue.state import BOUNCED, SENT, State
from tests.queue.helpers import REPO, enqueue, message, new_queue, queue_files


def test_two_threads_claiming_at_once_get_the_message_exactly_once(tmp_path: pathlib.Path) -> None:
    q = new_queue(tmp_path / "spool")
    ids = [enqueue(q, message(f"m{i}")).queue_id for i in range(40)]
    for queue_id in ids:
        barrier = threading.Barrier(2)
        got: list[Claim | None] = [None, None]

        def claimer(
            slot: int,
            queue_id: str = queue_id,
            got: list[Claim | None] = got,
            barrier: threading.Barrier = barrier,
        ) -> None:
            barrier.wait()
            got[slot] = Queue(q.root).claim(queue_id)

        threads = [threading.Thread(target=claimer, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [c for c in got if c is not None]
        assert len(winners) == 1, queue_id
        winners[0].release()


def test_a_claim_is_refused_while_held_and_granted_after_release(tmp_path: pathlib.Path) -> None:
    q = new_queue(tmp_path / "spool")
    env = enqueue(q)
    first = q.claim(env.queue_id)
    assert first is not None
    assert q.claim(env.queue_id) is None
    first.release()
    second = q.claim(env.queue_id)
    assert second is not None
    assert second.envelope == env
    whole = pathlib.Path(q.path("queue", env.queue_id)).read_bytes()
    assert second.message().read() == whole[env.message_offset :]
    second.release()


def test_a_message_finished_by_one_runner_is_not_handed_to_another_that_waited(
    tmp_path: pathlib.Path,
) -> None:
    # The second claimer opened the file before the first finished, and gets
    # the lock only after the file is gone: it must not deliver it again.
    q = new_queue(tmp_path / "spool")
    env = enqueue(q)
    first = q.claim(env.queue_id)
    assert first is not None
    import fcntl

    path = q.path("queue", env.queue_id)
    early = open(path, "rb")  # noqa: SIM115 - held across the other claimer's finish
    first.done()
    fcntl.flock(early.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # the lock is free now
    early.close()
    assert q.claim(env.queue_id) is None
    assert queue_files(q) == [] and queue_files(q, "state") == []


def test_state_saved_by_a_claim_is_what_the_next_claim_sees(tmp_path: pathlib.Path) -> None:
    q = new_queue(tmp_path / "spool")
    env = enqueue(q, recipients=["bob@example.net", "carol@example.net"])
    with q.claim(env.queue_id) as claim:  # type: ignore[union-attr]
        assert [r.status for r in claim.state.recipients] == ["queued", "queued"]
        claim.state.recipients[0].status = SENT
        claim.state.recipients[0].attempts = 1
        claim.state.recipients[1].status = "deferred"
        claim.state.recipients[1].next_attempt = 2e9
        claim.save()
    with q.claim(env.queue_id) as again:  # type: ignore[union-attr]
        assert again.state.get("bob@example.net").status == SENT  # type: ignore[union-attr]
        assert [r.address for r in again.state.pending] == ["carol@example.net"]
        assert not again.state.due(1.9e9) and again.state.due(2e9)


def test_done_removes_message_and_state_and_fail_keeps_both(tmp_path: pathlib.Path) -> None:
    q = new_queue(tmp_path / "spool")
    sent, bounced = enqueue(q, message("sent")), enqueue(q, message("bounced"))
    with q.claim(sent.queue_id) as c:  # type: ignore[union-attr]
        c.state.recipients[0].status = SENT
        c.save()
        c.done()
    with q.claim(bounced.queue_id) as c:  # type: ignore[union-attr]
        c.state.recipients[0].status = BOUNCED
        c.save()
        c.fail()
    assert queue_files(q) == []
    assert queue_files(q, "failed") == [bounced.queue_id]
    assert queue_files(q, "state") == [bounced.queue_id]
    assert q.claim(bounced.queue_id) is None  # failed messages are not delivered


def test_an_unreadable_queue_file_is_moved_to_failed_with_the_reason(
    tmp_path: pathlib.Path,
) -> None:
    q = new_queue(tmp_path / "spool")
    bad = q.path("queue", "BROKEN1")
    with open(bad, "wb") as f:
        f.write(b"not a queue file at all\n")
    with pytest.raises(errors.DataError, match="BROKEN1: moved to failed/"):
        q.claim("BROKEN1")
    assert queue_files(q) == [] and queue_files(q, "failed") == ["BROKEN1"]


def test_a_damaged_state_file_fails_the_message_rather_than_resend_it(
    tmp_path: pathlib.Path,
) -> None:
    q = new_queue(tmp_path / "spool")
    env = enqueue(q)
    with open(q.path("state", env.queue_id), "wb") as f:
        f.write(b'{"format": "pysendmail-state"')
    with pytest.raises(errors.DataError, match="not valid JSON"):
        q.claim(env.queue_id)
    assert queue_files(q, "failed") == [env.queue_id]


_RUNNER = """
import sys, time
from pysendmail.queue import Queue
q = Queue(sys.argv[1])
with open(sys.argv[2], "a") as log:
    for queue_id in q.ids():
        claim = q.claim(queue_id)
        if claim is None:
            continue
        with claim:
            log.write(queue_id + "\\n")
            log.flush()
            time.sleep(0.001)
            claim.done()
"""


def test_two_runner_processes_deliver_each_message_once(tmp_path: pathlib.Path) -> None:
    q = new_queue(tmp_path / "spool")
    ids = {enqueue(q, message(f"p{i}")).queue_id for i in range(150)}
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [
        subprocess.Popen([sys.executable, "-c", _RUNNER, q.root, str(log)], cwd=REPO)
        for log in logs
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    delivered = [line for log in logs for line in log.read_text().split()]
    assert sorted(delivered) == sorted(ids)
    assert all(log.read_text() for log in logs), "both runners should have taken some"
    assert queue_files(q) == []


def test_locked_file_survives_the_process_that_died_holding_it(tmp_path: pathlib.Path) -> None:
    q = new_queue(tmp_path / "spool")
    env = enqueue(q)
    code = (
        "import os, sys; from pysendmail.queue import Queue;"
        f"c = Queue({q.root!r}).claim({env.queue_id!r}); assert c is not None;"
        "os.kill(os.getpid(), 9)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == -9
    claim = q.claim(env.queue_id)
    assert claim is not None  # the kernel dropped the dead runner's lock
    claim.release()
    assert os.path.exists(q.path("queue", env.queue_id))


def test_state_written_for_another_id_is_refused(tmp_path: pathlib.Path) -> None:
    q = new_queue(tmp_path / "spool")
    env = enqueue(q)
    other = State.fresh(env)
    other.queue_id = "OTHERID"
    with pytest.raises(errors.DataError):
        q.write_state(env.queue_id, other)


def test_a_small_message_is_read_with_its_envelope(tmp_path: pathlib.Path) -> None:
    q = new_queue(tmp_path / "spool")
    env = enqueue(q, message("small"))
    big = enqueue(q, message("big", b"x" * 100 + b"\r\n" * 40000))
    whole = pathlib.Path(q.path("queue", env.queue_id)).read_bytes()
    claim = q.claim(env.queue_id)
    assert claim is not None
    with claim:
        first = claim.message()
        assert first is not claim.file
        assert first.read() == whole[env.message_offset :]
        assert claim.message().read() == whole[env.message_offset :]  # again from the start
    big_whole = pathlib.Path(q.path("queue", big.queue_id)).read_bytes()
    claim = q.claim(big.queue_id)
    assert claim is not None
    with claim:
        assert claim.message() is claim.file  # streamed
        assert claim.message().read() == big_whole[big.message_offset :]
