"""``general.mode = "direct-then-queue"``: relay now, queue what the relay deferred.

The caller's view: exit 0 once every recipient was either accepted by the
relay or is durable in the queue; a permanent refusal exits as direct mode
does (69, the refused recipient named). The queue's view: only the deferred
recipients are queued, so an accepted one can never be sent to twice.
"""

from __future__ import annotations

from collections.abc import Callable

from pysendmail.message.envelope import Envelope
from tests.cli.conftest import DOMAIN, Mta
from tests.support.smtpd import Peer, RecordingServer, ScriptedServer

MESSAGE = b"Subject: direct then queue\n\nbody\n"


def queued(mta: Mta) -> list[Envelope]:
    """The envelopes in the queue (committed files only)."""
    folder = mta.queue_dir / "queue"
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.iterdir()):
        with path.open("rb") as f:
            out.append(Envelope.from_file(f))
    return out


def test_all_accepted_nothing_is_queued(mta: Mta, relay: RecordingServer) -> None:
    mta.configure(relay, mode="direct-then-queue")
    result = mta.run("-i", "a@example.com", "b@example.com", stdin=MESSAGE)
    assert result.returncode == 0, result
    assert relay.envelopes[0].rcpt_tos == ["a@example.com", "b@example.com"]
    assert queued(mta) == []


def test_relay_down_queues_everything_and_exits_0(mta: Mta) -> None:
    mta.configure(None, mode="direct-then-queue")
    result = mta.run("-i", "root", "x@example.org", stdin=MESSAGE)
    assert result.returncode == 0, result
    [env] = queued(mta)
    assert [r.address for r in env.recipients] == ["admin@example.com", "x@example.org"]
    body = (mta.queue_dir / "queue" / env.queue_id).read_bytes()[env.message_offset :]
    assert body.endswith(b"\r\nbody\r\n")
    assert len(body) == env.size


def test_a_stalled_relay_is_abandoned_after_direct_timeout(
    mta: Mta, scripted_server: Callable[..., ScriptedServer]
) -> None:
    def stall(peer: Peer) -> None:
        peer.stall()  # accepts the connection and never greets

    server = scripted_server(stall)
    table = mta.relay_table(server.port, tls="none", ca_file=None, user=None, password_file=None)
    table.update(connect_timeout="30s", command_timeout="30s")
    mta.configure(table, mode="direct-then-queue", general={"direct_timeout": "1s"})
    result = mta.run("-i", "a@example.org", stdin=MESSAGE)
    assert result.returncode == 0, result
    # The relay's own timeouts (30 s) would have waited; the total bound did not.
    assert result.elapsed < 10, result
    [env] = queued(mta)
    assert [r.address for r in env.recipients] == ["a@example.org"]


def test_only_the_deferred_recipient_is_queued(
    mta: Mta, smtpd_factory: Callable[..., RecordingServer]
) -> None:
    server = smtpd_factory(
        replies={
            "RCPT TO:<later@example.org>": "451 4.3.0 try later",
        }
    )
    mta.configure(server, mode="direct-then-queue")
    result = mta.run("-v", "-i", "now@example.org", "later@example.org", stdin=MESSAGE)
    assert result.returncode == 0, result
    assert server.envelopes[0].rcpt_tos == ["now@example.org"]
    [env] = queued(mta)
    # The accepted recipient is not in the queue: the runner cannot send to it again.
    assert [r.address for r in env.recipients] == ["later@example.org"]
    # One log line each: sent for the accepted one, queued (with the 451) for the other.
    assert any("to=<now@example.org>" in ln and "status=sent" in ln for ln in result.lines)
    assert any(
        "to=<later@example.org>" in ln and "status=queued (451 4.3.0" in ln for ln in result.lines
    ), result


def test_a_permanent_refusal_exits_as_direct_mode(
    mta: Mta, smtpd_factory: Callable[..., RecordingServer]
) -> None:
    server = smtpd_factory(
        replies={
            "RCPT TO:<gone@example.org>": "550 5.1.1 no such user",
            "RCPT TO:<later@example.org>": "451 4.3.0 try later",
        }
    )
    mta.configure(server, mode="direct-then-queue")
    result = mta.run("-i", "gone@example.org", "later@example.org", "ok@example.org", stdin=MESSAGE)
    assert result.returncode == 69, result
    assert any("gone@example.org" in line and "550" in line for line in result.lines), result
    assert server.envelopes[0].rcpt_tos == ["ok@example.org"]
    [env] = queued(mta)
    assert [r.address for r in env.recipients] == ["later@example.org"]
    assert env.sender.endswith("@" + DOMAIN)
