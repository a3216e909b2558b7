"""The runner against a recording SMTP server: what the smarthost sees, what the queue keeps."""

from __future__ import annotations

import io
import os
import pathlib
import signal
import threading
import time
from collections.abc import Callable
from email.message import Message

import pytest

from pysendmail import errors
from pysendmail.cli import Streams
from pysendmail.message.envelope import Recipient
from pysendmail.queue import Queue
from pysendmail.relay import BOUNCED, DEFERRED, SENT, DeliveryReport, RecipientResult
from pysendmail.runner import Runner, backoff, run_queue_main
from tests.runner.helpers import (
    T0,
    Clock,
    dsn_blocks,
    enqueue,
    make_runner,
    message_bytes,
    parse,
    queue_files,
    run_queue_once,
    settings_for,
    state_of,
    statuses,
)
from tests.runner.smtpd import DISCONNECT, STALL, RecordingServer

RETRY_MIN = 300
RETRY_MAX = 2400


def settings(tmp_path: pathlib.Path, server: RecordingServer, **queue: object) -> object:
    values: dict[str, object] = {"retry_min": RETRY_MIN, "retry_max": RETRY_MAX}
    values.update(queue)
    return settings_for(tmp_path, server.port, queue=values)


def runner(
    tmp_path: pathlib.Path,
    server: RecordingServer,
    clock: Clock,
    log: io.StringIO,
    relay: dict[str, object] | None = None,
    **queue: object,
) -> Runner:
    values: dict[str, object] = {"retry_min": RETRY_MIN, "retry_max": RETRY_MAX}
    values.update(queue)
    s = settings_for(tmp_path, server.port, queue=values, relay=relay)
    return make_runner(s, clock, log)


# --------------------------------------------------------------------------- sessions


def test_many_messages_go_over_one_connection_with_rset_between(
    tmp_path: pathlib.Path, server: RecordingServer, queue: Queue, clock: Clock, log: io.StringIO
) -> None:
    ids = [enqueue(queue, ["bob@example.net"], subject=f"m{i}") for i in range(6)]
    summary = runner(tmp_path, server, clock, log).run_once()
    assert server.connections == 1
    verbs = server.verbs()
    assert verbs.count("EHLO") == 1
    assert verbs.count("MAIL") == 6
    assert verbs.count("RSET") == 5  # between messages, not before the first
    assert verbs[-1] == "QUIT"
    subjects = sorted(parse(m.data)["Subject"] for m in server.messages)
    assert subjects == [f"m{i}" for i in range(6)]
    assert queue_files(queue) == []
    assert queue_files(queue, "state") == []
    assert (summary.sent, summary.removed, summary.deferred) == (6, 6, 0)
    for queue_id in ids:
        assert f"{queue_id}: to=<bob@example.net>, relay=127.0.0.1" in log.getvalue()
        assert f"{queue_id}: removed" in log.getvalue()
    assert "status=sent (250 2.0.0 Ok: queued as M" in log.getvalue()


def test_parallel_connections_share_the_messages(
    tmp_path: pathlib.Path, server: RecordingServer, queue: Queue, clock: Clock, log: io.StringIO
) -> None:
    server.data_delay = 0.05
    ids = [enqueue(queue, ["bob@example.net"], subject=f"p{i}") for i in range(24)]
    summary = runner(tmp_path, server, clock, log, connections=3).run_once()
    assert server.connections == 3
    assert server.most_active == 3
    subjects = sorted(parse(m.data)["Subject"] for m in server.messages)
    assert subjects == sorted(f"p{i}" for i in range(24))  # each exactly once
    assert {m.connection for m in server.messages} == {1, 2, 3}
    assert summary.removed == len(ids) == 24
    assert queue_files(queue) == []


def test_few_messages_use_one_connection_even_when_more_are_allowed(
    tmp_path: pathlib.Path, server: RecordingServer, queue: Queue, clock: Clock, log: io.StringIO
) -> None:
    for i in range(3):
        enqueue(queue, ["bob@example.net"], subject=f"f{i}")
    run = runner(tmp_path, server, clock, log, connections=4)
    assert run.workers_for(3) == 1
    assert run.workers_for(9) == 3
    assert run.workers_for(100) == 4
    run.run_once()
    assert server.connections == 1
    assert len(server.messages) == 3


# --------------------------------------------------------------------------- verdicts


def test_mixed_rcpt_replies_leave_each_recipient_in_its_state(
    tmp_path: pathlib.Path, server: RecordingServer, queue: Queue, clock: Clock, log: io.StringIO
) -> None:
    server.rcpt_replies["later@example.net"] = "450 4.2.1 mailbox busy"
    server.rcpt_replies["gone@example.net"] = "550 5.1.1 no such user"
    rcpts = ["ok@example.net", "later@example.net", "gone@example.net"]
    queue_id = enqueue(queue, rcpts, subject="mixed")
    run = runner(tmp_path, server, clock, log)
    summary = run.run_once()

    state = state_of(queue, queue_id)
    ok, later, gone = (state.get(a) for a in rcpts)
    assert ok is not None and later is not None and gone is not None
    assert (ok.status, ok.attempts, ok.next_attempt) == (SENT, 1, None)
    assert (later.status, later.attempts) == (DEFERRED, 1)
    assert later.next_attempt == T0 + RETRY_MIN
    assert later.reply == "450 4.2.1 mailbox busy"
    assert (gone.status, gone.notified) == (BOUNCED, True)
    assert gone.reply == "550 5.1.1 no such user"
    assert (summary.sent, summary.deferred, summary.bounced, summary.bounces) == (2, 1, 1, 1)

    # The smarthost got the message once, for the one accepted recipient, and
    # the sender got a DSN about the refused one, from the null sender.
    first, dsn = server.messages
    assert first.rcpt_tos == ["ok@example.net"]
    assert (dsn.mail_from, dsn.rcpt_tos) == ("<>", ["alice@example.com"])
    _, failed = dsn_blocks(dsn.data)
    assert failed["Final-Recipient"] == "rfc822; gone@example.net"
    assert failed["Status"] == "5.1.1"
    assert failed["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    assert failed["Remote-MTA"] == "dns; 127.0.0.1"
    assert queue_files(queue) == [queue_id]  # still waiting for later@

    # Not due before its time: nothing happens.
    clock.now = T0 + RETRY_MIN - 1
    assert run.run_once().due == 0
    # At its time only the deferred recipient is tried: the accepted one never again.
    del server.rcpt_replies["later@example.net"]
    clock.now = T0 + RETRY_MIN
    summary = run.run_once()
    assert server.messages[-1].rcpt_tos == ["later@example.net"]
    assert [m.rcpt_tos for m in server.messages].count(["ok@example.net"]) == 1
    assert summary.bounces == 0  # gone@ was bounced once, not again
    # Finished with a bounced recipient: kept in failed/ for inspection.
    assert queue_files(queue) == []
    assert queue_files(queue, "failed") == [queue_id]
    assert f"{queue_id}: moved to failed/" in log.getvalue()


# Each fault, and what every recipient of each of two messages must be left as.
FAULTS = [
    ("greeting", "421 4.3.2 shutting down", DEFERRED),
    ("greeting", "554 5.3.2 not for you", DEFERRED),  # the site refuses us, not the message
    ("EHLO", "421 4.3.2 bye", DEFERRED),
    ("MAIL", "451 4.3.0 try later", DEFERRED),
    ("MAIL", "550 5.7.1 sender refused", BOUNCED),
    ("RCPT", "452 4.5.3 too many recipients", DEFERRED),
    ("RCPT", "550 5.1.1 no such user", BOUNCED),
    ("DATA", "451 4.3.0 try later", DEFERRED),
    ("DATA", "554 5.3.0 no data for you", BOUNCED),
    ("end", "451 4.7.1 greylisted", DEFERRED),
    ("end", "554 5.7.1 spam", BOUNCED),
    ("greeting", DISCONNECT, DEFERRED),
    ("EHLO", DISCONNECT, DEFERRED),
    ("MAIL", DISCONNECT, DEFERRED),
    ("RCPT", DISCONNECT, DEFERRED),
    ("DATA", DISCONNECT, DEFERRED),
    ("body", DISCONNECT, DEFERRED),
    ("end", DISCONNECT, DEFERRED),
]


@pytest.mark.parametrize(("stage", "fault", "verdict"), FAULTS)
def test_a_fault_at_each_stage_leaves_every_recipient_right(
    tmp_path: pathlib.Path,
    server: RecordingServer,
    queue: Queue,
    clock: Clock,
    log: io.StringIO,
    stage: str,
    fault: str,
    verdict: str,
) -> None:
    rcpts = ["bob@example.net", "carol@example.net"]
    ids = [enqueue(queue, rcpts, subject=f"s{i}") for i in range(2)]
    server.faults[stage] = fault
    runner(tmp_path, server, clock, log).run_once()
    assert [m for m in server.messages if m.mail_from != "<>"] == []  # nothing accepted
    for queue_id in ids:
        state = state_of(queue, queue_id)
        for rs in state.recipients:
            assert rs.status == verdict, (queue_id, rs)
            assert rs.attempts == 1
            if fault != DISCONNECT:
                assert rs.reply.endswith(
                    fault
                )  # "delivery temporarily suspended: " after the first
            if verdict == DEFERRED:
                assert rs.next_attempt == T0 + RETRY_MIN
                assert not rs.notified
            else:
                assert rs.next_attempt is None
                assert rs.notified
        if verdict == DEFERRED:
            assert queue_files(queue).count(queue_id) == 1
        else:
            assert queue_id in queue_files(queue, "failed")
    lines = [line for line in log.getvalue().splitlines() if "to=<" in line]
    assert len(lines) >= 4  # one per recipient per attempt
    assert all(f"status={verdict}" in line for line in lines[:4])


def test_a_fault_then_recovery_delivers_exactly_once(
    tmp_path: pathlib.Path, server: RecordingServer, queue: Queue, clock: Clock, log: io.StringIO
) -> None:
    queue_id = enqueue(queue, ["bob@example.net"], subject="again")
    server.faults["end"] = DISCONNECT
    run = runner(tmp_path, server, clock, log)
    run.run_once()
    assert statuses(queue, queue_id) == {"bob@example.net": DEFERRED}
    server.faults.clear()
    clock.now = T0 + RETRY_MIN
    run.run_once()
    assert [parse(m.data)["Subject"] for m in server.messages] == ["again"]
    assert queue_files(queue) == []
    assert "tries=2, status=sent" in log.getvalue()


@pytest.mark.parametrize("stage", ["greeting", "EHLO", "MAIL", "RCPT", "DATA", "body", "end"])
def test_a_stalled_server_times_out_and_defers(
    tmp_path: pathlib.Path,
    server: RecordingServer,
    queue: Queue,
    clock: Clock,
    log: io.StringIO,
    stage: str,
) -> None:
    ids = [enqueue(queue, ["bob@example.net"], subject=f"t{i}") for i in range(2)]
    server.faults[stage] = STALL
    timeouts: dict[str, object] = {"connect_timeout": 1, "command_timeout": 1, "data_timeout": 1}
    started = time.monotonic()
    runner(tmp_path, server, clock, log, relay=timeouts).run_once()
    took = time.monotonic() - started
    assert took < 6
    assert server.messages == []
    for queue_id in ids:
        rs = state_of(queue, queue_id).recipients[0]
        assert (rs.status, rs.attempts, rs.next_attempt) == (DEFERRED, 1, T0 + RETRY_MIN)
        assert "in time" in rs.reply


def test_an_unreachable_smarthost_is_tried_once_per_run_not_once_per_message(
    tmp_path: pathlib.Path, server: RecordingServer, queue: Queue, clock: Clock, log: io.StringIO
) -> None:
    ids = [enqueue(queue, ["bob@example.net"], subject=f"u{i}") for i in range(5)]
    server.faults["greeting"] = STALL
    started = time.monotonic()
    runner(tmp_path, server, clock, log, relay={"connect_timeout": 1}).run_once()
    assert time.monotonic() - started < 3  # one timeout, not five
    assert server.connections == 1
    for queue_id in ids:
        rs = state_of(queue, queue_id).recipients[0]
        assert (rs.status, rs.attempts, rs.next_attempt) == (DEFERRED, 1, T0 + RETRY_MIN)
    assert log.getvalue().count("delivery temporarily suspended") == 4


def test_a_refused_connection_defers_with_the_reason(
    tmp_path: pathlib.Path, queue: Queue, clock: Clock, log: io.StringIO
) -> None:
    with RecordingServer() as gone:
        port = gone.port
    s = settings_for(tmp_path, port, queue={"retry_min": RETRY_MIN, "retry_max": RETRY_MAX})
    queue_id = enqueue(queue, ["bob@example.net"])
    make_runner(s, clock, log).run_once()
    rs = state_of(queue, queue_id).recipients[0]
    assert (rs.status, rs.next_attempt) == (DEFERRED, T0 + RETRY_MIN)
    assert "refused" in rs.reply.lower()
    assert "status=deferred" in log.getvalue()


# --------------------------------------------------------------------------- retries


def test_backoff_doubles_from_retry_min_up_to_retry_max() -> None:
    assert [backoff(n, 300, 2400) for n in range(1, 7)] == [300, 600, 1200, 2400, 2400, 2400]
    assert backoff(10_000, 300, 14400) == 14400  # no overflow for absurd counts


def test_retries_back_off_and_the_lifetime_ends_in_an_expiry_bounce(
    tmp_path: pathlib.Path, server: RecordingServer, queue: Queue, clock: Clock, log: io.StringIO
) -> None:
    lifetime = 6000
    server.faults["MAIL"] = "451 4.3.0 try later"
    queue_id = enqueue(queue, ["bob@example.net"], subject="expiring")
    run = runner(tmp_path, server, clock, log, lifetime=lifetime)
    seen = []
    while queue_id in queue_files(queue):
        run.run_once()
        seen.append(clock.now - T0)
        rs = state_of(queue, queue_id).recipients[0] if queue_id in queue_files(queue) else None
        if rs is None or rs.next_attempt is None:
            break
        clock.now = rs.next_attempt
        assert len(seen) < 20
    # 300, then doubling, then capped at 2400, then cut at the end of the lifetime.
    assert seen == [0, 300, 900, 2100, 4500, 6000]
    assert server.verbs().count("MAIL") == 6 + 1  # six attempts, then the bounce
    assert queue_files(queue, "failed") == [queue_id]
    rs = state_of(queue, queue_id).recipients[0]
    assert (rs.status, rs.notified, rs.attempts) == (BOUNCED, True, 6)
    assert "status=expired" in log.getvalue()
    assert "sender non-delivery notification" in log.getvalue()
    # The DSN says the time ran out, with the last reply.
    dsn = [m for m in server.messages if m.mail_from == "<>"]
    assert len(dsn) == 0  # the bounce itself was refused by the same MAIL fault ...
    server.faults.clear()
    clock.now += RETRY_MIN
    run.run_once()  # ... and goes out once the server takes mail again
    (dsn_message,) = [m for m in server.messages if m.mail_from == "<>"]
    _, failed = dsn_blocks(dsn_message.data)
    assert failed["Status"] == "4.4.7"
    assert failed["Action"] == "failed"
    assert failed["Diagnostic-Code"] == "smtp; 451 4.3.0 try later"


def test_a_message_first_tried_after_its_lifetime_gets_one_attempt(
    tmp_path: pathlib.Path, server: RecordingServer, queue: Queue, clock: Clock, log: io.StringIO
) -> None:
    queue_id = enqueue(queue, ["bob@example.net"], subject="late")
    clock.now = T0 + 10 * 86400
    runner(tmp_path, server, clock, log).run_once()
    assert server.messages[0].rcpt_tos == ["bob@example.net"]
    assert queue_id not in queue_files(queue) + queue_files(queue, "failed")


# --------------------------------------------------------------------------- bounces


def dsn_messages(server: RecordingServer) -> list[bytes]:
    return [m.data for m in server.messages if m.mail_from == "<>"]


def test_null_sender_mail_is_never_bounced(
    tmp_path: pathlib.Path, server: RecordingServer, queue: Queue, clock: Clock, log: io.StringIO
) -> None:
    server.rcpt_replies["bob@example.net"] = "550 5.1.1 no such user"
    queue_id = enqueue(queue, ["bob@example.net"], sender="")
    summary = runner(tmp_path, server, clock, log).run_once()
    assert summary.bounces == 0
    assert dsn_messages(server) == []
    assert server.verbs().count("MAIL") == 1
    assert queue_files(queue) == []
    assert queue_files(queue, "failed") == [queue_id]
    assert "null sender is not bounced" in log.getvalue()


@pytest.mark.parametrize("ret", ["FULL", "HDRS", None])
def test_the_dsn_returns_the_whole_message_only_for_ret_full(
    tmp_path: pathlib.Path,
    server: RecordingServer,
    queue: Queue,
    clock: Clock,
    log: io.StringIO,
    ret: str | None,
) -> None:
    server.rcpt_replies["bob@example.net"] = "550 5.1.1 no such user"
    enqueue(queue, ["bob@example.net"], subject="returned", body="BODY-MARK\r\n", dsn_ret=ret)
    runner(tmp_path, server, clock, log).run_once()
    (dsn,) = dsn_messages(server)
    parts = parse(dsn).get_payload()
    assert isinstance(parts, list)
    returned = parts[2]
    assert isinstance(returned, Message)
    if ret == "FULL":
        assert returned.get_content_type() == "message/rfc822"
        assert b"BODY-MARK" in dsn
    else:
        assert returned.get_content_type() == "text/rfc822-headers"
        assert b"BODY-MARK" not in dsn
    assert b"Subject: returned" in dsn


def test_admin_policy_sends_the_dsn_to_the_admin(
    tmp_path: pathlib.Path, server: RecordingServer, queue: Queue, clock: Clock, log: io.StringIO
) -> None:
    server.rcpt_replies["bob@example.net"] = "550 5.1.1 no such user"
    enqueue(queue, ["bob@example.net"])
    run = runner(
        tmp_path, server, clock, log, bounce="admin", admin_address="postmaster@example.com"
    )
    run.run_once()
    (dsn,) = [m for m in server.messages if m.mail_from == "<>"]
    assert dsn.rcpt_tos == ["postmaster@example.com"]
    assert parse(dsn.data)["To"] == "<postmaster@example.com>"


def test_log_policy_only_logs(
    tmp_path: pathlib.Path, server: RecordingServer, queue: Queue, clock: Clock, log: io.StringIO
) -> None:
    server.rcpt_replies["bob@example.net"] = "550 5.1.1 no such user"
    queue_id = enqueue(queue, ["bob@example.net"])
    summary = runner(tmp_path, server, clock, log, bounce="log").run_once()
    assert summary.bounces == 0
    assert dsn_messages(server) == []
    assert queue_files(queue, "failed") == [queue_id]
    assert "notification not sent: queue.bounce is log" in log.getvalue()
    assert "status=bounced (550 5.1.1 no such user)" in log.getvalue()


def test_notify_never_means_no_dsn(
    tmp_path: pathlib.Path, server: RecordingServer, queue: Queue, clock: Clock, log: io.StringIO
) -> None:
    server.rcpt_replies["bob@example.net"] = "550 5.1.1 no such user"
    server.rcpt_replies["carol@example.net"] = "550 5.1.1 no such user"
    rcpts = [Recipient("bob@example.net", notify="NEVER"), Recipient("carol@example.net")]
    enqueue(queue, rcpts)
    runner(tmp_path, server, clock, log).run_once()
    (dsn,) = dsn_messages(server)
    finals = [b["Final-Recipient"] for b in dsn_blocks(dsn)[1:]]
    assert finals == ["rfc822; carol@example.net"]


def test_a_bounce_lost_to_a_crash_is_sent_on_the_next_run(
    tmp_path: pathlib.Path, server: RecordingServer, queue: Queue, clock: Clock, log: io.StringIO
) -> None:
    # A run died after recording the 5xx but before queueing the DSN.
    server.rcpt_replies["bob@example.net"] = "550 5.1.1 no such user"
    server.rcpt_replies["carol@example.net"] = "450 4.2.0 later"
    queue_id = enqueue(queue, ["bob@example.net", "carol@example.net"])
    run = runner(tmp_path, server, clock, log, bounce="log")
    run.run_once()
    state = state_of(queue, queue_id)
    bob = state.get("bob@example.net")
    assert bob is not None
    bob.notified = False
    queue.write_state(queue_id, state)
    server.messages.clear()
    again = runner(tmp_path, server, clock, log)
    again.run_once(ids=[queue_id])
    (dsn,) = dsn_messages(server)
    assert [b["Final-Recipient"] for b in dsn_blocks(dsn)[1:]] == ["rfc822; bob@example.net"]
    bob = state_of(queue, queue_id).get("bob@example.net")
    assert bob is not None and bob.notified


# --------------------------------------------------------------------------- site errors


class ScriptedRelay:
    """A relay whose verdicts the test chooses (for errors aiosmtpd cannot produce)."""

    def __init__(self, error: errors.PysendmailError, status: str) -> None:
        self.error = error
        self.status = status
        self.sent = 0

    def send(
        self, envelope: object, message: object, recipients: list[str] | None = None
    ) -> DeliveryReport:
        self.sent += 1
        report = DeliveryReport(time.monotonic())
        report.relay = "smtp.example.net[192.0.2.1]:587"
        report.error = self.error
        report.recipients = [
            RecipientResult(a, self.status, str(self.error)) for a in recipients or []
        ]
        return report

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    "error",
    [
        errors.SMTPAuthenticationError("535 5.7.8 authentication failed"),
        errors.SMTPSecurityError("refusing AUTH over an unencrypted connection"),
        errors.ConfigError("relay[0].password_file: not readable"),
    ],
)
def test_a_site_problem_defers_instead_of_bouncing(
    tmp_path: pathlib.Path,
    server: RecordingServer,
    queue: Queue,
    clock: Clock,
    log: io.StringIO,
    error: errors.PysendmailError,
) -> None:
    queue_id = enqueue(queue, ["bob@example.net"])
    scripted = ScriptedRelay(error, BOUNCED)
    s = settings_for(tmp_path, server.port, queue={"retry_min": RETRY_MIN, "retry_max": RETRY_MAX})
    make_runner(s, clock, log, relay_factory=lambda: scripted).run_once()
    rs = state_of(queue, queue_id).recipients[0]
    assert (rs.status, rs.next_attempt) == (DEFERRED, T0 + RETRY_MIN)
    assert server.messages == []


def test_a_password_that_cannot_be_read_defers_the_mail(
    tmp_path: pathlib.Path, server: RecordingServer, queue: Queue, clock: Clock, log: io.StringIO
) -> None:
    s = settings_for(
        tmp_path,
        server.port,
        relay={"user": "me", "password": "pw", "allow_plaintext_auth": True},
        queue={"retry_min": RETRY_MIN, "retry_max": RETRY_MAX},
    )

    def password(relay: object, settings: object) -> str:
        raise errors.ConfigError("relay[0].password_file: Permission denied")

    queue_id = enqueue(queue, ["bob@example.net"])
    make_runner(s, clock, log, password=password).run_once()
    rs = state_of(queue, queue_id).recipients[0]
    assert rs.status == DEFERRED
    assert "Permission denied" in rs.reply


# --------------------------------------------------------------------------- damage


def test_a_damaged_queue_file_is_set_aside_and_the_run_goes_on(
    tmp_path: pathlib.Path, server: RecordingServer, queue: Queue, clock: Clock, log: io.StringIO
) -> None:
    good = enqueue(queue, ["bob@example.net"], subject="good")
    bad = enqueue(queue, ["bob@example.net"], subject="bad")
    with open(queue.path("queue", bad), "r+b") as f:
        f.write(b"garbage!")
    summary = runner(tmp_path, server, clock, log).run_once()
    assert [parse(m.data)["Subject"] for m in server.messages] == ["good"]
    assert summary.problems == 1
    assert queue_files(queue, "failed") == [bad]
    assert good not in queue_files(queue)
    assert f"{bad}" in log.getvalue() and "moved to failed/" in log.getvalue()


def test_a_state_that_cannot_be_written_stops_the_run(
    tmp_path: pathlib.Path,
    server: RecordingServer,
    queue: Queue,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One recipient accepted, one deferred: the state file must say which.
    server.rcpt_replies["later@example.net"] = "450 4.2.0 later"
    for i in range(3):
        enqueue(queue, ["bob@example.net", "later@example.net"], subject=f"w{i}")

    def full(self: Queue, queue_id: str, state: object, *, sync: bool = True) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Queue, "write_state", full)
    status, err = run_queue_once(settings_for(tmp_path, server.port))
    assert status == errors.EX_TEMPFAIL
    assert len(server.messages) == 1  # the first was sent; the run stopped there
    assert "cannot record the delivery state" in err
    assert "No space left on device" in err


def test_a_delivered_message_that_cannot_be_removed_stops_the_run(
    tmp_path: pathlib.Path,
    server: RecordingServer,
    queue: Queue,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pysendmail.queue import Claim

    for i in range(3):
        enqueue(queue, ["bob@example.net"], subject=f"r{i}")

    def broken(self: Claim) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Claim, "done", broken)
    status, err = run_queue_once(settings_for(tmp_path, server.port))
    assert status == errors.EX_TEMPFAIL
    assert len(server.messages) == 1
    assert "delivered, but cannot remove it from the queue" in err
    assert len(queue.ids()) == 3  # the next run sends the first again: the permitted duplicate


def test_removals_that_cannot_be_made_durable_stop_the_run_with_75(
    tmp_path: pathlib.Path,
    server: RecordingServer,
    queue: Queue,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pysendmail.queue import removals

    for i in range(3):
        enqueue(queue, ["bob@example.net"], subject=f"d{i}")

    def broken(path: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(removals, "fsync_dir", broken)
    status, err = run_queue_once(settings_for(tmp_path, server.port))
    assert status == errors.EX_TEMPFAIL
    # Delivered and removed, but maybe not durably: the run says so and stops.
    assert 1 <= len(server.messages) <= 3
    assert "the removal could not be made durable" in err
    assert "Input/output error" in err
    assert len(queue.ids()) == 3 - len(server.messages)


# --------------------------------------------------------------------------- CLI


def test_run_queue_main_exit_statuses(
    tmp_path: pathlib.Path, server: RecordingServer, queue: Queue
) -> None:
    def streams() -> tuple[Streams, io.StringIO]:
        err = io.StringIO()
        return Streams(stdout=io.StringIO(), stderr=err, environ={}), err

    s = settings_for(tmp_path, server.port)
    server.faults["MAIL"] = "451 4.3.0 later"
    enqueue(queue, ["bob@example.net"])
    io_, _ = streams()
    assert run_queue_main(s, io_) == 0  # deferred mail is not a failed run

    no_relay = settings_for(tmp_path, server.port)
    object.__setattr__(no_relay, "relays", ())
    io_, err = streams()
    assert run_queue_main(no_relay, io_) == errors.EX_CONFIG
    assert "no relay is configured" in err.getvalue()

    blocked = tmp_path / "blocked"
    blocked.write_text("not a directory")
    (tmp_path / "b").mkdir()
    bad = settings_for(tmp_path / "b", server.port)
    object.__setattr__(bad.general, "queue_dir", str(blocked))
    io_, err = streams()
    assert run_queue_main(bad, io_) == errors.EX_TEMPFAIL
    assert "cannot read the queue" in err.getvalue()


def test_flush_delivers_the_named_messages_before_their_time(
    tmp_path: pathlib.Path, server: RecordingServer, queue: Queue
) -> None:
    s = settings_for(tmp_path, server.port)
    server.faults["MAIL"] = "451 4.3.0 later"
    first = enqueue(queue, ["bob@example.net"], subject="first", arrival=time.time())
    second = enqueue(queue, ["bob@example.net"], subject="second", arrival=time.time())
    quiet = Streams(stdout=io.StringIO(), stderr=io.StringIO(), environ={})
    assert run_queue_main(s, quiet) == 0
    assert statuses(queue, first)["bob@example.net"] == DEFERRED
    server.faults.clear()
    assert run_queue_main(s, quiet) == 0  # nothing due yet
    assert server.messages == []
    assert run_queue_main(s, quiet, ids=[second, "NOSUCHID"]) == 0
    assert [parse(m.data)["Subject"] for m in server.messages] == ["second"]
    assert queue_files(queue) == [first]


# --------------------------------------------------------------------------- maildrop, watch


def test_the_maildrop_is_picked_up_and_delivered_in_the_same_run(
    tmp_path: pathlib.Path, server: RecordingServer, queue: Queue, clock: Clock, log: io.StringIO
) -> None:
    from pysendmail.message.envelope import Envelope
    from pysendmail.queue import make_queue_id

    queue_id = make_queue_id()
    data = message_bytes("dropped")
    env = Envelope(
        queue_id=queue_id,
        sender="www-data@example.com",
        recipients=[Recipient("bob@example.net")],
        size=len(data),
        submitter_uid=os.getuid(),
    )
    path = queue.path("maildrop", queue_id)
    with open(path, "wb") as f:
        f.write(env.to_bytes() + data)
    os.chmod(path, 0o640)
    summary = runner(tmp_path, server, clock, log).run_once()
    assert summary.picked_up == 1
    assert [parse(m.data)["Subject"] for m in server.messages] == ["dropped"]
    assert os.listdir(queue.dir("maildrop")) == []


def test_watch_delivers_as_soon_as_a_message_is_committed(
    tmp_path: pathlib.Path, server: RecordingServer, queue: Queue, log: io.StringIO
) -> None:
    s = settings_for(tmp_path, server.port)
    watcher = make_runner(s, Clock(time.time()), log)
    watcher.clock = time.time
    stop = threading.Event()
    thread = threading.Thread(target=watcher.watch, args=(stop,))
    thread.start()
    try:
        time.sleep(0.3)  # the first, empty, run is over; it waits on the trigger
        started = time.monotonic()
        enqueue(queue, ["bob@example.net"], subject="poked", arrival=time.time())
        while not server.messages and time.monotonic() - started < 10:
            time.sleep(0.01)
        took = time.monotonic() - started
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()  # stops within a slice of its wait
    assert [parse(m.data)["Subject"] for m in server.messages] == ["poked"]
    assert took < 2  # the commit's poke, not the 60 s fallback


def watch_in_thread(run: Runner) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=run.watch, args=(stop,))
    thread.start()
    return thread, stop


def wait_for(predicate: Callable[[], bool], seconds: float) -> float:
    """Poll ``predicate`` until it holds; return how long that took (or ``seconds``)."""
    started = time.monotonic()
    while not predicate() and time.monotonic() - started < seconds:
        time.sleep(0.01)
    return time.monotonic() - started


def test_watch_retries_a_deferred_message_when_it_falls_due(
    tmp_path: pathlib.Path, server: RecordingServer, queue: Queue, log: io.StringIO
) -> None:
    s = settings_for(tmp_path, server.port, queue={"retry_min": 1, "retry_max": 60})
    server.rcpt_replies["bob@example.net"] = "451 4.3.0 try again in a second"
    watcher = make_runner(s, Clock(), log)
    watcher.clock = time.time
    queue_id = enqueue(queue, ["bob@example.net"], subject="due", arrival=time.time())
    thread, stop = watch_in_thread(watcher)
    try:
        wait_for(lambda: os.path.exists(queue.path("state", queue_id)), 5)
        del server.rcpt_replies["bob@example.net"]
        took = wait_for(lambda: bool(server.messages), 10)
    finally:
        stop.set()
        thread.join(5)
    assert [parse(m.data)["Subject"] for m in server.messages] == ["due"]
    assert 0.3 < took < 5  # at its next attempt, about a second later, without a poke
    assert "tries=2, status=sent" in log.getvalue()


def test_watch_without_a_trigger_polls(
    tmp_path: pathlib.Path,
    server: RecordingServer,
    queue: Queue,
    log: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pysendmail.runner

    monkeypatch.setattr(pysendmail.runner, "WATCH_POLL", 0.2)
    os.unlink(os.path.join(queue.root, "trigger"))
    watcher = make_runner(settings_for(tmp_path, server.port), Clock(), log)
    watcher.clock = time.time
    thread, stop = watch_in_thread(watcher)
    try:
        time.sleep(0.1)
        enqueue(queue, ["bob@example.net"], subject="polled", arrival=time.time())
        took = wait_for(lambda: bool(server.messages), 5)
    finally:
        stop.set()
        thread.join(5)
    assert [parse(m.data)["Subject"] for m in server.messages] == ["polled"]
    assert took < 2
    assert "no trigger to watch" in log.getvalue()


def test_queue_run_watch_stops_cleanly_on_sigterm(
    tmp_path: pathlib.Path, server: RecordingServer, queue: Queue
) -> None:
    from tests.runner.test_processes import child, settings_file

    path = settings_file(tmp_path, server.port)
    proc = child("watch", path)
    try:
        time.sleep(0.5)
        enqueue(queue, ["bob@example.net"], subject="watched", arrival=time.time())
        wait_for(lambda: bool(server.messages), 10)
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(10)
    assert status == 0
    assert [parse(m.data)["Subject"] for m in server.messages] == ["watched"]


def test_parallel_workers_all_stop_when_a_state_cannot_be_written(
    tmp_path: pathlib.Path,
    server: RecordingServer,
    queue: Queue,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server.data_delay = 0.02
    server.rcpt_replies["later@example.net"] = "450 4.2.0 later"
    for i in range(16):
        enqueue(queue, ["bob@example.net", "later@example.net"], subject=f"par{i}")

    def full(self: Queue, queue_id: str, state: object, *, sync: bool = True) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Queue, "write_state", full)
    status, _ = run_queue_once(settings_for(tmp_path, server.port, queue={"connections": 4}))
    assert status == errors.EX_TEMPFAIL
    # Each worker sent the message in its hands, and no worker took another.
    assert 1 <= len(server.messages) <= 4
    assert len(queue.ids()) == 16


def test_next_due_is_now_for_a_message_never_tried_without_reading_any_state(
    tmp_path: pathlib.Path,
    server: RecordingServer,
    queue: Queue,
    clock: Clock,
    log: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = runner(tmp_path, server, clock, log)
    assert run.next_due() is None  # an empty queue: nothing pending
    server.faults["MAIL"] = "451 4.3.0 try later"
    deferred = enqueue(queue, ["bob@example.net"], subject="deferred")
    run.run_once()
    assert run.next_due() == T0 + RETRY_MIN  # the deferred one, at its next attempt
    enqueue(queue, ["carol@example.net"], subject="new")

    def unread(self: Queue, queue_id: str) -> object:
        raise AssertionError(f"read the state of {queue_id}")

    monkeypatch.setattr(Queue, "read_state", unread)
    assert run.next_due() == T0  # the new one is due now; no state file was opened
    assert deferred in queue_files(queue)
