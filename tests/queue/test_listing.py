"""What ``mailq``, ``pysendmail queue list|show`` and the admin actions show and do."""

from __future__ import annotations

import json
import os
import pathlib
import time
from collections.abc import Iterator

import pytest

from pysendmail import errors
from pysendmail.cli import queuecmd
from pysendmail.config import Settings
from pysendmail.queue import Claim, Queue
from pysendmail.queue.state import State
from tests.queue.helpers import (
    enqueue,
    err,
    message,
    new_queue,
    out,
    queue_files,
    settings_for,
    streams,
)

#: 2026-11-29 20:02:49 UTC
NOW = 1795982569.0
FAR = 4102444800.0  # 2100-01-01 00:00:00 UTC


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def spool(tmp_path: pathlib.Path) -> tuple[Queue, Settings]:
    q = new_queue(tmp_path / "spool")
    return q, settings_for(tmp_path, tmp_path / "spool")


def _listing(settings: Settings, *, as_json: bool = False) -> str:
    io = streams()
    assert queuecmd.list_queue(settings, io, as_json=as_json) == 0
    assert err(io) == ""
    return out(io)


def _every_kind(q: Queue) -> Claim:
    """A queued, a deferred, a held, a failed and an active message; returns the active claim."""
    enqueue(q, message("queued"), queue_id="AQUEUED", now=NOW)
    b = enqueue(
        q,
        message("deferred"),
        queue_id="BDEFERRED",
        now=NOW + 60,
        recipients=["bob@example.net", "carol@example.net"],
    )
    state = State.fresh(b)
    sent, deferred = state.recipients
    sent.status, sent.attempts, sent.last_attempt = "sent", 1, NOW + 120
    sent.reply = "250 2.0.0 Ok: queued as 4Xy"
    deferred.status, deferred.attempts, deferred.last_attempt = "deferred", 2, NOW + 120
    deferred.next_attempt = FAR
    deferred.reply = "451 4.7.1 Greylisted, try again later"
    q.write_state(b.queue_id, state)
    enqueue(q, message("held"), queue_id="CHELD", now=NOW + 120)
    assert q.hold("CHELD") == "CHELD: placed on hold"
    enqueue(q, message("failed"), queue_id="DFAILED", now=NOW + 180, sender="")
    with q.claim("DFAILED") as c:  # type: ignore[union-attr]
        rs = c.state.recipients[0]
        rs.status, rs.attempts, rs.notified = "bounced", 1, True
        rs.reply = "550 5.1.1 No such user"
        c.save()
        c.fail()
    enqueue(q, message("active"), queue_id="EACTIVE", now=NOW + 240)
    active = q.claim("EACTIVE")
    assert active is not None
    return active


EXPECTED = """\
-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------
AQUEUED          257 Sun Nov 29 20:02:49  root@example.com
                                          bob@example.net
                                            queued, not tried yet

BDEFERRED        263 Sun Nov 29 20:03:49  root@example.com
                                          bob@example.net
                                            sent, 1 attempt
                                            (250 2.0.0 Ok: queued as 4Xy)
                                          carol@example.net
                                            deferred, 2 attempts, next Fri Jan 01 00:00:00
                                            (451 4.7.1 Greylisted, try again later)

CHELD!           251 Sun Nov 29 20:04:49  root@example.com
                                          bob@example.net
                                            queued, not tried yet

DFAILED#         257 Sun Nov 29 20:05:49  MAILER-DAEMON
                                          bob@example.net
                                            bounced, 1 attempt, sender notified
                                            (550 5.1.1 No such user)

EACTIVE*         257 Sun Nov 29 20:06:49  root@example.com
                                          bob@example.net
                                            queued, not tried yet

-- 2 Kbytes in 5 Requests.
-- * being delivered, ! on hold, # failed
"""


def test_an_empty_queue_says_so(spool: tuple[Queue, Settings]) -> None:
    assert _listing(spool[1]) == "Mail queue is empty\n"


def test_a_queue_that_was_never_created_is_empty_too(tmp_path: pathlib.Path) -> None:
    settings = settings_for(tmp_path, tmp_path / "nowhere")
    assert _listing(settings) == "Mail queue is empty\n"
    assert not (tmp_path / "nowhere").exists()


def test_the_listing_shows_queued_deferred_held_failed_and_active_mail(
    spool: tuple[Queue, Settings],
) -> None:
    q, settings = spool
    active = _every_kind(q)
    try:
        assert _listing(settings) == EXPECTED
    finally:
        active.release()


def test_the_json_listing_carries_every_recipient_state(spool: tuple[Queue, Settings]) -> None:
    q, settings = spool
    active = _every_kind(q)
    try:
        doc = json.loads(_listing(settings, as_json=True))
    finally:
        active.release()
    assert doc["queue_dir"] == q.root and doc["maildrop_waiting"] == 0
    by_id = {m["queue_id"]: m for m in doc["messages"]}
    assert {k: m["queue_name"] for k, m in by_id.items()} == {
        "AQUEUED": "incoming",
        "BDEFERRED": "deferred",
        "CHELD": "hold",
        "DFAILED": "failed",
        "EACTIVE": "active",
    }
    carol = by_id["BDEFERRED"]["recipients"][1]
    assert carol == {
        "address": "carol@example.net",
        "status": "deferred",
        "attempts": 2,
        "last_attempt": NOW + 120,
        "next_attempt": FAR,
        "last_reply": "451 4.7.1 Greylisted, try again later",
        "notified": False,
    }
    assert by_id["DFAILED"]["sender"] == ""
    assert by_id["AQUEUED"]["arrival_time"] == NOW and by_id["AQUEUED"]["message_size"] == 257


def test_an_unreadable_queue_file_is_listed_with_its_reason(spool: tuple[Queue, Settings]) -> None:
    q, settings = spool
    pathlib.Path(q.path("queue", "GARBAGE1")).write_bytes(b"\x00\x01 not a queue file" * 10)
    text = _listing(settings)
    assert text.startswith("-Queue ID-")
    assert "GARBAGE1" in text and "(unreadable: queue file does not start with a pysendmail" in text


def test_mail_waiting_in_the_maildrop_is_counted(spool: tuple[Queue, Settings]) -> None:
    q, settings = spool
    pathlib.Path(q.path("maildrop", "WAITING1")).write_bytes(b"x")
    pathlib.Path(q.path("maildrop", ".BEINGWRITTEN")).write_bytes(b"x")
    assert _listing(settings) == (
        "Mail queue is empty\n-- 1 message in the maildrop, waiting for pickup\n"
    )


def test_show_prints_envelope_state_and_headers(spool: tuple[Queue, Settings]) -> None:
    q, settings = spool
    enqueue(
        q,
        message("shown", b"the body is not shown\r\n"),
        queue_id="SHOWN1",
        now=NOW,
        recipients=["root"],
        sender="alice@example.com",
        dsn_ret="HDRS",
    )
    io = streams()
    assert queuecmd.show(settings, io, "SHOWN1") == 0
    assert out(io) == (
        f"Queue ID:   SHOWN1 (queued; {q.path('queue', 'SHOWN1')})\n"
        "Arrival:    Sun Nov 29 20:02:49 2026\n"
        "Size:       269 octets\n"
        "Submitter:  uid 0 (root)\n"
        "Sender:     <alice@example.com>\n"
        "Options:    RET=HDRS\n"
        "Recipients:\n"
        "  <root@example.com> (written as root)\n"
        "    queued, not tried yet\n"
        "Headers:\n"
        "  Received: by mx.example.com (pysendmail, from userid 0)\n"
        "  \tid SHOWN1; Sun, 29 Nov 2026 20:02:49 +0000\n"
        "  From: Alice <alice@example.com>\n"
        "  To: bob@example.net\n"
        "  Date: Sun, 29 Nov 2026 20:02:49 +0000\n"
        "  Message-ID: <shown@example.com>\n"
        "  Subject: shown\n"
    )


def test_show_escapes_control_characters_in_headers(spool: tuple[Queue, Settings]) -> None:
    q, settings = spool
    enqueue(
        q, b"Subject: \x1b[31mred\x1b[0m \xff\r\nTo: b@example.net\r\n\r\nx\r\n", queue_id="ESC1"
    )
    io = streams()
    queuecmd.show(settings, io, "ESC1")
    assert "  Subject: \\x1b[31mred\\x1b[0m \\xff\n" in out(io)
    assert "\x1b" not in out(io)


def test_show_of_an_unknown_id_is_66_and_a_bad_id_is_64(spool: tuple[Queue, Settings]) -> None:
    with pytest.raises(errors.PysendmailError, match="NOSUCH1: no such queue id") as e:
        queuecmd.show(spool[1], streams(), "NOSUCH1")
    assert e.value.exit_status == 66
    with pytest.raises(errors.UsageError, match="is not a queue id"):
        queuecmd.show(spool[1], streams(), "../../etc/passwd")


def test_hold_then_release_puts_a_message_back_due_now(spool: tuple[Queue, Settings]) -> None:
    q, settings = spool
    env = enqueue(q)
    io = streams()
    assert queuecmd.admin(settings, io, "hold", [env.queue_id]) == 0
    assert queue_files(q) == [] and queue_files(q, "hold") == [env.queue_id]
    assert q.claim(env.queue_id) is None  # a runner never sees held mail
    assert queuecmd.admin(settings, io, "release", [env.queue_id]) == 0
    assert out(io) == f"{env.queue_id}: placed on hold\n{env.queue_id}: released from hold\n"
    assert queue_files(q) == [env.queue_id] and queue_files(q, "hold") == []
    state = q.read_state(env.queue_id)
    assert state is not None and state.due(time.time())


def test_requeue_brings_failed_mail_back_with_a_new_lifetime(spool: tuple[Queue, Settings]) -> None:
    q, settings = spool
    env = enqueue(q, recipients=["bob@example.net", "carol@example.net"], now=NOW)
    with q.claim(env.queue_id) as c:  # type: ignore[union-attr]
        c.state.recipients[0].status = "sent"
        c.state.recipients[1].status = "bounced"
        c.state.recipients[1].attempts = 9
        c.state.recipients[1].notified = True
        c.save()
        c.fail()
    io = streams()
    assert queuecmd.admin(settings, io, "requeue", ["ALL"]) == 0
    assert out(io) == f"{env.queue_id}: requeued\n"
    state = q.read_state(env.queue_id)
    assert state is not None
    assert [(r.status, r.attempts) for r in state.recipients] == [("sent", 0), ("queued", 0)]
    assert state.since > NOW
    assert queue_files(q) == [env.queue_id] and queue_files(q, "failed") == []


def test_flush_makes_deferred_recipients_due_now(spool: tuple[Queue, Settings]) -> None:
    q, settings = spool
    env = enqueue(q)
    state = State.fresh(env)
    state.recipients[0].status = "deferred"
    state.recipients[0].next_attempt = FAR
    q.write_state(env.queue_id, state)
    io = streams()
    assert queuecmd.admin(settings, io, "flush", []) == 0
    assert out(io) == f"{env.queue_id}: due now\n"
    back = q.read_state(env.queue_id)
    assert back is not None and back.due(time.time())


def test_delete_removes_message_and_state_from_any_folder(spool: tuple[Queue, Settings]) -> None:
    q, settings = spool
    a, b = enqueue(q, message("a")), enqueue(q, message("b"))
    q.write_state(a.queue_id, State.fresh(a))
    q.hold(b.queue_id)
    io = streams()
    assert queuecmd.admin(settings, io, "delete", [a.queue_id, b.queue_id]) == 0
    assert out(io) == f"{a.queue_id}: deleted\n{b.queue_id}: deleted\n"
    for folder in ("queue", "hold", "state"):
        assert queue_files(q, folder) == []


def test_unknown_ids_are_named_and_exit_66_while_the_others_are_done(
    spool: tuple[Queue, Settings],
) -> None:
    q, settings = spool
    env = enqueue(q)
    io = streams()
    assert queuecmd.admin(settings, io, "hold", ["NOSUCH1", env.queue_id, "bad/id"]) == 66
    assert err(io) == (
        "pysendmail: NOSUCH1: no such queue id\npysendmail: 'bad/id' is not a queue id\n"
    )
    assert out(io) == f"{env.queue_id}: placed on hold\n"


def test_a_message_being_delivered_cannot_be_deleted_from_under_the_runner(
    spool: tuple[Queue, Settings],
) -> None:
    q, settings = spool
    env = enqueue(q)
    claim = q.claim(env.queue_id)
    assert claim is not None
    io = streams()
    try:
        assert queuecmd.admin(settings, io, "delete", [env.queue_id]) == 75
    finally:
        claim.release()
    assert "is being delivered right now; try again in a moment" in err(io)
    assert queue_files(q) == [env.queue_id]


def test_admin_needs_an_id_except_for_flush(spool: tuple[Queue, Settings]) -> None:
    with pytest.raises(errors.UsageError, match="give at least one queue id"):
        queuecmd.admin(spool[1], streams(), "delete", [])


def test_permission_to_read_the_queue_is_checked_by_the_kernel_not_by_us(
    spool: tuple[Queue, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As root every folder is readable; what a denied listdir becomes is the
    # point here (test_maildrop runs mailq as nobody for the real thing).
    q, settings = spool
    real = os.listdir

    def listdir(path: str) -> list[str]:
        if path == q.dir("queue"):
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(os, "listdir", listdir)
    with pytest.raises(errors.PermissionDeniedError, match="readable only by root") as e:
        queuecmd.list_queue(settings, streams())
    assert e.value.exit_status == 77


def test_the_real_mailq_and_sendmail_bp_print_the_listing(tmp_path: pathlib.Path) -> None:
    import subprocess

    from tests.queue.helpers import REPO, write_config

    spool = tmp_path / "spool"
    q = new_queue(spool)
    config = write_config(tmp_path, spool)
    env = {"PATH": os.environ.get("PATH", ""), "PYSENDMAIL_CACHE_DIR": str(tmp_path), "TZ": "UTC"}
    bin_ = REPO / ".venv" / "bin"
    for argv in ([bin_ / "mailq", "-C", config], [bin_ / "sendmail", "-bp", "-C", config]):
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        assert (done.returncode, done.stdout, done.stderr) == (0, "Mail queue is empty\n", "")
    enqueue(q, queue_id="LISTED1", now=NOW)
    done = subprocess.run([bin_ / "mailq", "-C", config], capture_output=True, text=True, env=env)
    assert done.returncode == 0
    assert done.stdout.splitlines()[1] == (
        "LISTED1          249 Sun Nov 29 20:02:49  root@example.com"
    )
