"""The real ``pysendmail serve`` under load: 20 clients × 200 messages, and a SIGTERM in the middle.

The relay is a ``RecordingServer`` in this process; every message carries a
Message-ID of our own, so what arrived can be matched one to one with what
was acknowledged.
"""

from __future__ import annotations

import collections
import signal
import smtplib
import threading
import time
from pathlib import Path

from pysendmail.queue.spool import Queue
from tests.server.helpers import ServeProcess, message_ids, write_config
from tests.support.smtpd import RecordingServer

CLIENTS = 20
MESSAGES = 200
#: The whole load must be delivered within this (it takes about 20 s here).
DRAIN_TIMEOUT = 180.0


def message(client: int, n: int) -> tuple[str, bytes]:
    message_id = f"<load-{client}-{n}@test.example>"
    body = "".join(f"line {i} of message {n} from client {client}\r\n" for i in range(20))
    data = (
        f"From: client{client}@example.com\r\nTo: sink@example.org\r\n"
        f"Message-ID: {message_id}\r\nSubject: load {client}/{n}\r\n\r\n{body}"
    ).encode()
    return message_id, data


class Clients:
    """``CLIENTS`` threads, each sending its ``MESSAGES`` over one connection.

    ``acknowledged`` holds the Message-IDs that got a 250; a client stops at
    the first error (a 421 or a closed connection during a shutdown).
    """

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.acknowledged: list[str] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(c,), daemon=True) for c in range(CLIENTS)
        ]

    def _run(self, client: int) -> None:
        try:
            with smtplib.SMTP(*self.address, timeout=60) as smtp:
                for n in range(MESSAGES):
                    message_id, data = message(client, n)
                    smtp.sendmail(f"client{client}@example.com", ["sink@example.org"], data)
                    with self._lock:
                        self.acknowledged.append(message_id)
        except (smtplib.SMTPException, OSError) as exc:
            with self._lock:
                self.errors.append(f"client {client}: {type(exc).__name__}: {exc}")

    def start(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def join(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "a client hung"


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.1)


def check_delivered(relay: RecordingServer, sent: set[str]) -> collections.Counter[str]:
    """Every delivered message is one we sent, complete; returns how often each arrived."""
    counts = collections.Counter(message_ids(relay.envelopes))
    assert set(counts) <= sent
    for envelope in relay.envelopes:
        data = envelope.data
        message_id = message_ids([envelope])[0]
        _, client, n = message_id.strip("<>").split("@")[0].split("-")
        expected = message(int(client), int(n))[1]
        # Whole: every header line the client wrote (the intake adds Received and
        # Date) and exactly its body.
        head, _, body = data.partition(b"\r\n\r\n")
        sent_head, _, sent_body = expected.partition(b"\r\n\r\n")
        assert body == sent_body, f"{message_id} arrived damaged"
        assert set(sent_head.split(b"\r\n")) <= set(head.split(b"\r\n")), message_id
    return counts


def test_20_clients_200_messages_each_all_delivered_exactly_once(
    tmp_path: Path, relay: RecordingServer
) -> None:
    config = write_config(tmp_path, relay.port, queue={"connections": 8})
    started = time.monotonic()
    with ServeProcess(config, tmp_path) as serve:
        clients = Clients(serve.smtp).start()
        clients.join()
        accepted = time.monotonic() - started
        assert clients.errors == []
        assert len(clients.acknowledged) == CLIENTS * MESSAGES
        wait_until(lambda: len(relay.envelopes) >= CLIENTS * MESSAGES, DRAIN_TIMEOUT, "delivery")
        assert serve.stop() == 0
    delivered = time.monotonic() - started
    sent = {message(c, n)[0] for c in range(CLIENTS) for n in range(MESSAGES)}
    counts = check_delivered(relay, sent)
    assert set(counts) == sent and set(counts.values()) == {1}
    assert Queue(str(tmp_path / "spool")).ids() == []
    print(f"\n4000 messages: accepted in {accepted:.1f}s, delivered in {delivered:.1f}s")
    assert serve.stderr == b""


def test_sigterm_in_the_middle_then_restart_loses_nothing(
    tmp_path: Path, relay: RecordingServer
) -> None:
    config = write_config(tmp_path, relay.port, queue={"connections": 8})
    sent = {message(c, n)[0] for c in range(CLIENTS) for n in range(MESSAGES)}
    with ServeProcess(config, tmp_path) as serve:
        clients = Clients(serve.smtp).start()
        wait_until(lambda: len(clients.acknowledged) >= 1500, 120, "1500 messages accepted")
        stopping = time.monotonic()
        serve.signal(signal.SIGTERM)
        status = serve.stop()
        stop_time = time.monotonic() - stopping
        clients.join()
        delivered_at_stop = len(relay.envelopes)
    assert status == 0
    assert stop_time < 15  # shutdown_timeout is 10 s
    assert serve.stderr == b""
    messages = [r.get("message", "") for r in serve.lines]
    assert "stopping: no new connections; finishing transactions" in messages
    assert messages[-1] == "stopped"
    acknowledged = set(clients.acknowledged)
    assert 1500 <= len(acknowledged) < CLIENTS * MESSAGES  # it really stopped in the middle
    # The clients were told: a 421 or a closed connection, never a silent loss.
    assert clients.errors

    with ServeProcess(config, tmp_path) as again:
        queue = Queue(str(tmp_path / "spool"))
        wait_until(lambda: queue.ids() == [], DRAIN_TIMEOUT, "the queue drained after restart")
        assert again.stop() == 0
    counts = check_delivered(relay, sent)
    assert acknowledged <= set(counts), "an acknowledged message was lost"
    assert set(counts.values()) == {1}, "a message was delivered twice"
    print(
        f"\nSIGTERM after {len(acknowledged)} acknowledged: {delivered_at_stop} delivered "
        f"before the stop, {sum(counts.values())} after the restart; stop took {stop_time:.1f}s"
    )
