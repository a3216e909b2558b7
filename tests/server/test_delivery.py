"""The delivery processes of ``serve``: deliveries out of the listener's process, none lost."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.helpers import InProcessServer, write_config
from tests.support.smtpd import RecordingServer


def send(srv: InProcessServer, to: str, subject: str) -> None:
    with smtplib.SMTP(*srv.smtp, timeout=10) as client:
        client.sendmail("app@example.com", [to], f"Subject: {subject}\r\n\r\nx\r\n".encode())


def test_deliveries_run_in_worker_processes_and_report_back(
    tmp_path: Path, smtpd_factory: type[RecordingServer]
) -> None:
    relay = smtpd_factory(replies={"RCPT TO:<hard": "550 5.1.1 No such user"})
    config = write_config(tmp_path, relay.port, queue={"connections": 2})
    with InProcessServer(config) as srv:
        workers = srv.app.pool.workers
        assert len(workers) == 2
        assert all(w.proc.poll() is None and w.proc.pid != os.getpid() for w in workers)
        for n in range(3):
            send(srv, f"ok{n}@example.org", f"ok {n}")
        send(srv, "hard@example.org", "bounced")
        srv.wait_for(lambda: len(relay.envelopes) == 4)  # three, and the DSN to app@
        srv.wait_for(lambda: srv.metrics.bounced == 1 and srv.metrics.delivered == 4)
        # The workers' log lines reach serve's log, one per recipient per attempt.
        delivered = [r for r in srv.log_records() if r.get("status", "").startswith("sent")]
        bounced = [r for r in srv.log_records() if r.get("status", "").startswith("bounced")]
        assert len(delivered) == 4 and len(bounced) == 1
        assert srv.metrics.relay_errors["5xx"] == 1


def test_a_connection_stays_open_between_runs(
    tmp_path: Path, smtpd_factory: type[RecordingServer]
) -> None:
    relay = smtpd_factory()
    config = write_config(tmp_path, relay.port, queue={"connections": 1})
    with InProcessServer(config) as srv:
        for n in range(3):
            send(srv, f"u{n}@example.org", f"one at a time {n}")
            srv.wait_for(lambda n=n: len(relay.envelopes) == n + 1)
            time.sleep(0.2)
    assert len(relay.sessions) == 1  # three runs, one session: RSET between
    assert sum(c.startswith("RSET") for c in relay.commands) == 2


def test_a_killed_worker_is_replaced_and_loses_nothing(
    tmp_path: Path, smtpd_factory: type[RecordingServer]
) -> None:
    relay = smtpd_factory()
    config = write_config(tmp_path, relay.port, queue={"connections": 1})
    with InProcessServer(config) as srv:
        send(srv, "first@example.org", "before")
        # Delivered and removed (the relay has it a moment before the worker has
        # its 250): the kill below is between messages.
        srv.wait_for(lambda: len(relay.envelopes) == 1 and srv.queue.ids() == [])
        old = srv.app.pool.workers[0].proc
        old.send_signal(signal.SIGKILL)
        old.wait()
        send(srv, "second@example.org", "after")
        srv.wait_for(lambda: len(relay.envelopes) == 2 and srv.queue.ids() == [], timeout=60)
        assert srv.app.pool.workers and srv.app.pool.workers[0].proc is not old
        assert [e.rcpt_tos for e in relay.envelopes] == [
            ["first@example.org"],
            ["second@example.org"],
        ]
        said = " ".join(srv.messages())
        assert "a delivery process ended by signal 9" in said


def test_sigterm_lets_the_workers_finish_and_go(
    tmp_path: Path, smtpd_factory: type[RecordingServer]
) -> None:
    relay = smtpd_factory()
    config = write_config(tmp_path, relay.port)
    srv = InProcessServer(config).start()
    send(srv, "x@example.org", "last")
    srv.wait_for(lambda: len(relay.envelopes) == 1)
    procs = [w.proc for w in srv.app.pool.workers]
    assert srv.stop() == 0
    assert procs and all(p.poll() is not None for p in procs)


def _nice_of(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


def test_the_workers_run_nicer_and_a_reload_replaces_them(
    tmp_path: Path, smtpd_factory: type[RecordingServer]
) -> None:
    relay = smtpd_factory()
    base = _nice_of(0)
    config = write_config(
        tmp_path, relay.port, queue={"connections": 2}, server={"delivery_nice": 5}
    )
    with InProcessServer(config) as srv:
        first = list(srv.app.pool.workers)
        assert len(first) == 2
        # Each worker lowers its own priority first thing (before any delivery).
        srv.wait_for(lambda: all(_nice_of(w.proc.pid) == min(19, base + 5) for w in first))
        send(srv, "a@example.org", "niced")
        srv.wait_for(lambda: len(relay.envelopes) == 1)
        assert srv.app.pool.workers == first  # the same workers, run after run
        write_config(tmp_path, relay.port, queue={"connections": 2}, server={"delivery_nice": 0})
        assert srv.reload()
        send(srv, "b@example.org", "after the reload")
        srv.wait_for(lambda: len(relay.envelopes) == 2)
        # A nice value cannot be lowered back: the workers were replaced before the run.
        second = list(srv.app.pool.workers)
        assert len(second) == 2 and not set(map(id, second)) & set(map(id, first))
        assert all(_nice_of(w.proc.pid) == base for w in second)
        srv.wait_for(lambda: all(w.proc.poll() is not None for w in first))
    assert [e.rcpt_tos for e in relay.envelopes] == [["a@example.org"], ["b@example.org"]]


def test_a_worker_that_may_not_lower_its_priority_says_so_and_delivers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pysendmail.server import delivery

    def refused(increment: int) -> int:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "nice", refused)
    assert delivery._nicer(5) == "Operation not permitted"
    assert delivery._nicer(0) is None  # nothing asked, nothing tried


def _frames(sock: socket.socket) -> list[object]:
    from pysendmail.server.frames import FrameBuffer

    buffer, found = FrameBuffer(), []
    sock.settimeout(0.05)
    while True:
        try:
            data = sock.recv(1 << 16)
        except TimeoutError:
            return found
        if not data:
            return found
        found.extend(buffer.feed(data))


def test_a_workers_lines_travel_in_batches_before_its_done() -> None:
    from pysendmail.server import delivery
    from pysendmail.server.frames import frame

    here, there = socket.socketpair()
    with here, there:
        log = delivery._Forwarder(there)
        log.event("ABC123", "info", to="<a@example.org>", status="sent (250 ok)", delay=0.5)
        log.line("runner: something", "warning")
        log.send(frame(("done", {}, None)))
        assert _frames(here) == [
            (
                "lines",
                [
                    (
                        "event",
                        "ABC123",
                        "info",
                        {"to": "<a@example.org>", "status": "sent (250 ok)", "delay": 0.5},
                    ),
                    ("line", "runner: something", "warning"),
                ],
            ),
            ("done", {}, None),
        ]


def test_lines_leave_within_the_flush_delay_and_a_full_batch_at_once() -> None:
    from pysendmail.server import delivery

    here, there = socket.socketpair()
    with here, there:
        log = delivery._Forwarder(there)
        started = time.monotonic()
        log.line("first")
        (got,) = [f for f in _wait_frames(here, 1)]
        assert got == ("lines", [("line", "first", "info")])
        assert time.monotonic() - started < delivery.FLUSH_AFTER + 2
        for n in range(delivery.BATCH):
            log.line(f"line {n}")
        (full,) = _frames(here)  # sent by the caller itself, without waiting for the timer
        assert isinstance(full, tuple) and len(full[1]) == delivery.BATCH


def _wait_frames(sock: socket.socket, count: int) -> list[object]:
    found: list[object] = []
    deadline = time.monotonic() + 5
    while len(found) < count and time.monotonic() < deadline:
        found.extend(_frames(sock))
    return found


def test_a_flush_to_a_closed_serve_stops_the_timer_quietly() -> None:
    from pysendmail.server import delivery

    here, there = socket.socketpair()
    with there:
        log = delivery._Forwarder(there)
        here.close()
        log.line("nobody reads this")
        deadline = time.monotonic() + 5
        while not log.broken and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log.broken
        assert log.thread is not None
        log.thread.join(1)
        assert not log.thread.is_alive()


def test_the_workers_get_their_settings_at_start_and_say_ready(
    tmp_path: Path, smtpd_factory: type[RecordingServer]
) -> None:
    relay = smtpd_factory()
    config = write_config(tmp_path, relay.port, queue={"connections": 2})
    with InProcessServer(config) as srv:
        pool = srv.app.pool
        # Ready before the listeners accepted anybody: nothing was delivered yet.
        assert len(pool.workers) == 2 and all(w.ready for w in pool.workers)
        assert all(w.settings is srv.app.runner.settings for w in pool.workers)
        assert relay.envelopes == []
        send(srv, "x@example.org", "after the start")
        srv.wait_for(lambda: len(relay.envelopes) == 1)


def test_waiting_for_workers_drops_a_dead_one_and_bounds_a_stopped_one(tmp_path: Path) -> None:
    from pysendmail.log import Logger
    from pysendmail.server.delivery import DeliveryPool
    from pysendmail.server.main import load

    class _Log(Logger):
        def __init__(self) -> None:
            super().__init__("stderr")
            self.said: list[str] = []

        def line(self, text: str, level: str = "info") -> None:
            self.said.append(text)

    log = _Log()
    settings = load(str(write_config(tmp_path, 9)), {}).settings  # the relay is never used
    pool = DeliveryPool(2, log)
    pool.start()
    dead, stopped = pool.workers
    try:
        dead.proc.kill()
        dead.proc.wait()
        stopped.proc.send_signal(signal.SIGSTOP)
        pool.prepare(settings)  # the dead one's socket may still take the frame
        started = time.monotonic()
        assert pool.wait_ready(0.5) is False  # the stopped one never answers
        assert 0.4 < time.monotonic() - started < 5
        assert pool.workers == [stopped]
        assert any("a delivery process ended by signal 9" in t for t in log.said)
        stopped.proc.send_signal(signal.SIGCONT)
        assert pool.wait_ready(30) is True and stopped.ready
    finally:
        stopped.proc.send_signal(signal.SIGCONT)
        pool.close(10)


@pytest.fixture
def held_start(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Hold serve's wait for its delivery processes until the event is set."""
    from pysendmail.server.delivery import DeliveryPool

    release = threading.Event()
    real_wait = DeliveryPool.wait_ready

    def held(self: DeliveryPool, timeout: float) -> bool:
        release.wait(30)
        return real_wait(self, timeout)

    monkeypatch.setattr(DeliveryPool, "wait_ready", held)
    yield release
    release.set()


def test_serve_greets_nobody_until_its_helpers_have_started(
    tmp_path: Path,
    smtpd_factory: type[RecordingServer],
    monkeypatch: pytest.MonkeyPatch,
    held_start: threading.Event,
) -> None:
    from pysendmail.server import main
    from pysendmail.server.delivery import DeliveryPool

    release = held_start
    relay = smtpd_factory()
    path = tmp_path / "smtp.sock"
    srv = InProcessServer(write_config(tmp_path, relay.port, server={"unix_socket": str(path)}))
    srv._thread.start()
    try:
        srv.wait_for(lambda: str(path) in srv.app.addresses)
        by_path = socket.socket(socket.AF_UNIX)
        by_path.connect(str(path))  # queued too, not refused
        by_path.close()
        # The kernel takes the connection (no client is refused while serve
        # starts), but nobody greets it until the helpers are ready.
        early = socket.create_connection(srv.smtp, 5)
        try:
            early.settimeout(0.5)
            with pytest.raises(TimeoutError):
                early.recv(100)
            assert not srv.app.ready.is_set()
            release.set()
            early.settimeout(10)
            assert early.recv(100).startswith(b"220 ")
        finally:
            early.close()
        srv.wait_for(srv.app.ready.is_set)
        send(srv, "x@example.org", "once ready")
        srv.wait_for(lambda: len(relay.envelopes) == 1)
        assert not any("did not start" in m for m in srv.messages())
    finally:
        release.set()
        srv.stop()

    # Helpers that take longer than the bound: serve says so and accepts anyway.
    monkeypatch.setattr(main, "HELPER_START_WAIT", 0.2)
    monkeypatch.setattr(DeliveryPool, "wait_ready", lambda self, timeout: False)
    (tmp_path / "late").mkdir()
    with InProcessServer(write_config(tmp_path / "late", relay.port)) as late:
        send(late, "y@example.org", "late helpers")
        late.wait_for(lambda: len(relay.envelopes) == 2)
        said = [m for m in late.messages() if "did not start" in m]
        # The commit processes may be late too (0.2 s on a loaded machine).
        assert len(said) == 1 and said[0].endswith(
            "delivery processes did not start within 0.2s: accepting anyway"
        )


def test_a_stop_while_the_helpers_start_ends_serve_cleanly(
    tmp_path: Path, smtpd_factory: type[RecordingServer], held_start: threading.Event
) -> None:
    release = held_start
    relay = smtpd_factory()
    srv = InProcessServer(write_config(tmp_path, relay.port))
    srv._thread.start()
    srv.wait_for(lambda: srv.app.loop is not None and srv.app.pool.workers)
    workers = [w.proc for w in srv.app.pool.workers]
    srv.app.stop_soon()  # SIGTERM's handler, before serve has accepted anybody
    release.set()
    assert srv.stop() == 0
    assert not srv.app.ready.is_set()
    assert all(p.poll() is not None for p in workers)  # the helpers went with it
    assert not any("serving on" in m for m in srv.messages())
