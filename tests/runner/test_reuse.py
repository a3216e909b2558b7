"""Many messages over one connection, RSET between them: when it works and when RSET fails.

With PIPELINING the relay sends RSET in the same write as the next MAIL, RCPT
and DATA; without, in a round trip of its own. Either way a failed RSET
(refused, 421, the connection dropped, no answer) costs the message nothing:
it goes over a fresh connection, exactly once, and its attempt counts once.
"""

from __future__ import annotations

import io
import pathlib
import time

import pytest

from pysendmail.queue import Queue
from tests.runner.helpers import Clock, enqueue, make_runner, parse, queue_files, settings_for
from tests.runner.smtpd import DISCONNECT, STALL, RecordingServer

PIPELINING = pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "plain"])


def run(
    tmp_path: pathlib.Path,
    server: RecordingServer,
    clock: Clock,
    log: io.StringIO,
    relay: dict[str, object] | None = None,
) -> None:
    settings = settings_for(tmp_path, server.port, queue={"connections": 1}, relay=relay)
    make_runner(settings, clock, log).run_once()


def delivered_once(server: RecordingServer, subjects: list[str], log: io.StringIO) -> None:
    """Every message arrived exactly once, whole, and was logged sent on its first try."""
    got = sorted(parse(m.data)["Subject"] for m in server.messages)
    assert got == sorted(subjects)
    assert all(b"Hello." in m.data for m in server.messages)  # no empty or cut message
    sent = [line for line in log.getvalue().splitlines() if "status=sent" in line]
    assert len(sent) == len(subjects)
    assert all("tries=1," in line for line in sent)


@PIPELINING
def test_rset_between_messages_on_one_connection(
    tmp_path: pathlib.Path,
    server: RecordingServer,
    queue: Queue,
    clock: Clock,
    log: io.StringIO,
    pipelining: bool,
) -> None:
    server.pipelining = pipelining
    subjects = [f"m{i}" for i in range(5)]
    for subject in subjects:
        enqueue(queue, ["bob@example.net"], subject=subject)
    run(tmp_path, server, clock, log)
    assert server.connections == 1
    transaction = ["MAIL", "RCPT", "DATA"]
    assert server.verbs() == [
        "EHLO",
        *transaction,
        *(["RSET", *transaction] * 4),
        "QUIT",
    ]
    delivered_once(server, subjects, log)
    assert queue_files(queue) == []


@PIPELINING
@pytest.mark.parametrize(
    "fault", ["554 5.5.1 no", "451 4.3.0 not now", "421 4.3.2 shutting down", DISCONNECT]
)
def test_a_failed_rset_sends_the_message_over_a_new_connection(
    tmp_path: pathlib.Path,
    server: RecordingServer,
    queue: Queue,
    clock: Clock,
    log: io.StringIO,
    pipelining: bool,
    fault: str,
) -> None:
    server.pipelining = pipelining
    server.faults["RSET"] = fault
    subjects = [f"r{i}" for i in range(4)]
    for subject in subjects:
        enqueue(queue, ["bob@example.net"], subject=subject)
    run(tmp_path, server, clock, log)
    # Every reuse failed at its RSET, so each message after the first took a
    # new connection; none was sent twice, none was lost or sent empty.
    assert server.connections == 4
    for connection in range(1, 5):
        verbs = server.verbs(connection)
        assert verbs[:4] == ["EHLO", "MAIL", "RCPT", "DATA"]
        assert "QUIT" not in verbs or connection == 4
    delivered_once(server, subjects, log)
    assert queue_files(queue) == []
    assert queue_files(queue, "state") == []


def test_an_unanswered_rset_times_out_and_the_message_goes_on_a_new_connection(
    tmp_path: pathlib.Path, server: RecordingServer, queue: Queue, clock: Clock, log: io.StringIO
) -> None:
    server.pipelining = True
    server.faults["RSET"] = STALL
    subjects = ["a", "b"]
    for subject in subjects:
        enqueue(queue, ["bob@example.net"], subject=subject)
    started = time.monotonic()
    run(tmp_path, server, clock, log, relay={"command_timeout": 1})
    assert time.monotonic() - started < 5
    assert server.connections == 2
    delivered_once(server, subjects, log)
    assert queue_files(queue) == []


def test_new_settings_route_the_next_run_anew(
    tmp_path: pathlib.Path, server: RecordingServer, queue: Queue, clock: Clock, log: io.StringIO
) -> None:
    # The sidecar's reload assigns runner.settings: the runs after it deliver
    # through the new relays (the runner remembers each sender's route, and
    # forgets them when the settings change).
    settings = settings_for(tmp_path, server.port, queue={"connections": 1})
    runner = make_runner(settings, clock, log)
    enqueue(queue, ["bob@example.net"], subject="old route")
    runner.run_once()
    with RecordingServer() as other:
        runner.settings = settings_for(tmp_path, other.port, queue={"connections": 1})
        enqueue(queue, ["bob@example.net"], subject="new route")
        runner.run_once()
        assert [parse(m.data)["Subject"] for m in other.messages] == ["new route"]
    assert [parse(m.data)["Subject"] for m in server.messages] == ["old route"]
    assert queue_files(queue) == []
