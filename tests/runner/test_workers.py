"""Parallel connections as processes (``queue run``): each message once, counts summed.

``run_queue_main`` (one run of a command of its own) runs ``queue.connections``
workers as processes; a ``Runner`` made by a program with threads of its own
(the sidecar, the tests above) keeps threads.
"""

from __future__ import annotations

import io
import os
import pathlib
import signal
import time

import pytest

from pysendmail import errors
from pysendmail.cli import Streams
from pysendmail.queue import Queue
from pysendmail.runner import Runner, RunSummary, StateWriteError, run_queue_main
from tests.runner.helpers import Clock, enqueue, make_runner, parse, queue_files, settings_for
from tests.runner.smtpd import RecordingServer


def _runner(tmp_path: pathlib.Path, server: RecordingServer, log: io.StringIO) -> Runner:
    settings = settings_for(tmp_path, server.port, queue={"connections": 2})
    return make_runner(settings, Clock(), log, processes=True)


def test_two_processes_deliver_every_message_once_and_sum_their_counts(
    tmp_path: pathlib.Path, server: RecordingServer, queue: Queue
) -> None:
    ids = [enqueue(queue, ["bob@example.net"], subject=f"w{i}") for i in range(20)]
    log = io.StringIO()
    summary = _runner(tmp_path, server, log).run_once()
    subjects = sorted(parse(m.data)["Subject"] for m in server.messages)
    assert subjects == sorted(f"w{i}" for i in range(20))  # each exactly once
    assert server.connections == 2
    assert {m.connection for m in server.messages} == {1, 2}
    assert (summary.due, summary.tried, summary.sent, summary.removed) == (20, 20, 20, 20)
    assert queue_files(queue) == [] and queue_files(queue, "state") == []
    # The parent logs its own half; the child's lines go to its copy of the stream.
    assert sum(f"{queue_id}: removed" in log.getvalue() for queue_id in ids) == 10


def test_the_command_runs_its_connections_as_processes_and_logs_from_each(
    tmp_path: pathlib.Path, server: RecordingServer, queue: Queue
) -> None:
    ids = [enqueue(queue, ["bob@example.net"], subject=f"c{i}") for i in range(12)]
    settings = settings_for(tmp_path, server.port, queue={"connections": 2})
    with open(tmp_path / "stderr", "w+") as err:
        status = run_queue_main(settings, Streams(stdout=io.StringIO(), stderr=err, environ={}))
        err.seek(0)
        text = err.read()
    assert status == 0
    assert len(server.messages) == 12 and queue_files(queue) == []
    for queue_id in ids:
        assert f"{queue_id}: removed" in text
    pids = {line.split("]", 1)[0] for line in text.splitlines() if line.endswith(": removed")}
    assert len(pids) == 2  # pysendmail[PARENT] and pysendmail[CHILD]


def test_a_state_that_cannot_be_written_in_a_child_stops_the_run_with_75(
    tmp_path: pathlib.Path,
    server: RecordingServer,
    queue: Queue,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server.rcpt_replies["later@example.net"] = "450 4.2.0 later"
    for i in range(8):
        enqueue(queue, ["bob@example.net", "later@example.net"], subject=f"s{i}")

    def full(self: Queue, queue_id: str, state: object, *, sync: bool = True) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Queue, "write_state", full)
    settings = settings_for(tmp_path, server.port, queue={"connections": 2})
    with open(tmp_path / "stderr", "w+") as err:
        status = run_queue_main(settings, Streams(stdout=io.StringIO(), stderr=err, environ={}))
        err.seek(0)
        text = err.read()
    assert status == errors.EX_TEMPFAIL
    assert "cannot record the delivery state" in text
    assert len(server.messages) == 2  # one per process; each stopped at its first
    assert len(queue.ids()) == 8


def test_a_worker_process_that_dies_leaves_its_messages_queued_and_is_told(
    tmp_path: pathlib.Path,
    server: RecordingServer,
    queue: Queue,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for i in range(8):
        enqueue(queue, ["bob@example.net"], subject=f"k{i}")
    parent = os.getpid()
    real = Runner._work

    def work(self: Runner, feed: object, summary: RunSummary) -> None:
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        real(self, feed, summary)  # type: ignore[arg-type]

    monkeypatch.setattr(Runner, "_work", work)
    log = io.StringIO()
    with pytest.raises(StateWriteError, match="a worker process ended by signal 9"):
        _runner(tmp_path, server, log).run_once()
    assert "its messages stay queued" in log.getvalue()
    assert len(server.messages) == 4  # the parent's share
    assert len(queue.ids()) == 4  # the child's, for the next run
    monkeypatch.undo()
    assert _runner(tmp_path, server, io.StringIO()).run_once().removed == 4
    assert len(server.messages) == 8 and queue_files(queue) == []


def test_killing_the_run_kills_its_worker_processes(tmp_path: pathlib.Path) -> None:
    from tests.runner.test_processes import child, child_log, settings_file

    with RecordingServer() as server:
        server.data_delay = 0.1  # a worker left alive would deliver for 3 seconds more
        path = settings_file(tmp_path, server.port, connections=2)
        queue = Queue(str(tmp_path / "spool"))
        queue.ensure()
        for i in range(60):
            enqueue(queue, ["bob@example.net"], subject=f"kill-{i}", arrival=time.time())
        proc = child("run", path)
        deadline = time.monotonic() + 30
        while server.most_active < 2 or len(server.messages) < 4:
            assert time.monotonic() < deadline and proc.poll() is None, child_log(path)
            time.sleep(0.005)
        proc.kill()
        proc.wait()
        settle = time.monotonic() + 1
        while server.active and time.monotonic() < settle:
            time.sleep(0.01)
        assert server.active == 0  # the worker's connection went with it
        delivered = len(server.messages)
        time.sleep(0.5)
        assert len(server.messages) == delivered  # nobody goes on delivering
        assert delivered < 20
