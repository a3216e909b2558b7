"""``GET /healthz`` and ``GET /metrics``: the values match the queue and what happened."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import time
from pathlib import Path

from pysendmail import errors
from tests.server.helpers import (
    PYSENDMAIL,
    InProcessServer,
    clean_environ,
    parse_metrics,
    write_config,
)
from tests.support.smtpd import RecordingServer


def send(srv: InProcessServer, to: str, subject: str) -> None:
    with smtplib.SMTP(*srv.smtp, timeout=10) as client:
        client.sendmail("app@example.com", [to], f"Subject: {subject}\r\n\r\nx\r\n".encode())


def queue_listing(config: Path, tmp_path: Path) -> list[dict[str, object]]:
    """``pysendmail queue list --json``: the queue as the admin sees it."""
    done = subprocess.run(
        [str(PYSENDMAIL), "-C", str(config), "queue", "list", "--json"],
        capture_output=True,
        env=clean_environ(tmp_path),
        timeout=60,
        check=True,
    )
    messages: list[dict[str, object]] = json.loads(done.stdout)["messages"]
    return messages


def test_metrics_match_the_queue_and_the_deliveries(
    tmp_path: Path, smtpd_factory: type[RecordingServer]
) -> None:
    relay = smtpd_factory(
        replies={
            "RCPT TO:<soft": "451 4.3.0 Try again later",
            "RCPT TO:<hard": "550 5.1.1 No such user",
        }
    )
    # Retries far away: after the first attempts nothing moves while we look.
    config = write_config(tmp_path, relay.port, queue={"retry_min": "1h", "retry_max": "4h"})
    with InProcessServer(config) as srv:
        for n in range(3):
            send(srv, f"ok{n}@example.org", f"ok {n}")
        send(srv, "soft1@example.org", "deferred")
        send(srv, "soft2@example.org", "to be held")
        send(srv, "hard@example.org", "bounced")
        # Delivered: the three, and the bounce to app@example.com.
        srv.wait_for(lambda: len(relay.envelopes) == 4)
        srv.wait_for(lambda: len(srv.queue.ids("failed")) == 1)
        srv.wait_for(lambda: srv.metrics.deferred >= 2)
        held = None
        for queue_id in srv.queue.ids():
            envelope, _ = srv.queue.read_envelope("queue", queue_id)
            if envelope.recipients[0].address == "soft2@example.org":
                held = queue_id
        assert held is not None
        deadline = time.monotonic() + 10
        while True:
            try:
                srv.queue.hold(held)
                break
            except errors.TemporaryFailure:  # being delivered this instant
                assert time.monotonic() < deadline
                time.sleep(0.05)

        status, kind, text = srv.http_get("/metrics")
        assert status == 200 and kind == "text/plain; version=0.0.4; charset=utf-8"
        values = parse_metrics(text)
        listing = queue_listing(config, tmp_path)

    # Postfix's words for what is in queue/: incoming (never tried), active, deferred.
    in_queue = [m for m in listing if m["queue_name"] in ("incoming", "active", "deferred")]
    deferred = [
        m
        for m in in_queue
        if any(r["status"] == "deferred" for r in m["recipients"])  # type: ignore[attr-defined]
    ]
    assert values["pysendmail_queue_queued_messages"] == len(in_queue) == 1
    assert values["pysendmail_queue_deferred_messages"] == len(deferred) == 1
    assert values["pysendmail_queue_held_messages"] == 1
    assert values["pysendmail_queue_failed_messages"] == 1
    assert [m["queue_name"] for m in listing].count("hold") == 1
    assert [m["queue_name"] for m in listing].count("failed") == 1
    oldest = min(float(m["arrival_time"]) for m in in_queue)  # type: ignore[arg-type]
    age = values["pysendmail_queue_oldest_message_age_seconds"]
    assert abs((time.time() - oldest) - age) < 5

    assert values["pysendmail_messages_accepted_total"] == 6
    assert values["pysendmail_delivered_total"] == 4  # three, and the bounce
    assert values["pysendmail_bounced_total"] == 1
    assert values["pysendmail_deferred_total"] == 2
    assert values['pysendmail_relay_errors_total{class="5xx"}'] == 1
    assert values['pysendmail_relay_errors_total{class="4xx"}'] == 2
    assert values['pysendmail_relay_errors_total{class="network"}'] == 0
    assert values["pysendmail_delivery_latency_seconds_count"] == 4
    assert values['pysendmail_delivery_latency_seconds_bucket{le="+Inf"}'] == 4
    assert 0 < values["pysendmail_delivery_latency_seconds_sum"] < 60
    buckets = [
        v for k, v in values.items() if k.startswith("pysendmail_delivery_latency_seconds_b")
    ]
    assert buckets == sorted(buckets)  # cumulative
    assert values["pysendmail_up"] == 1


def test_relay_down_counts_as_network_errors(tmp_path: Path) -> None:
    from tests.server.helpers import closed_port

    config = write_config(tmp_path, closed_port(), queue={"retry_min": "1h", "retry_max": "4h"})
    with InProcessServer(config) as srv:
        send(srv, "a@example.org", "down")
        srv.wait_for(lambda: srv.metrics.deferred == 1)
        values = parse_metrics(srv.http_get("/metrics")[2])
    assert values['pysendmail_relay_errors_total{class="network"}'] == 1
    assert values["pysendmail_queue_deferred_messages"] == 1


def test_healthz(tmp_path: Path, relay: RecordingServer) -> None:
    config = write_config(tmp_path, relay.port)
    with InProcessServer(config) as srv:
        assert srv.http_get("/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
        assert srv.http_get("/healthz", "HEAD")[:2] == (200, "text/plain; charset=utf-8")
        assert srv.http_get("/nothing")[0] == 404
        assert srv.http_get("/healthz", "POST")[0] == 405
        # A queue that cannot be written is not healthy.
        tmp_dir = srv.queue.dir("tmp")
        os.rename(tmp_dir, tmp_dir + ".away")
        try:
            status, _, body = srv.http_get("/healthz")
            assert status == 503
            assert body.startswith("the queue is not writable: ")
            assert parse_metrics(srv.http_get("/metrics")[2])["pysendmail_up"] == 0
        finally:
            os.rename(tmp_dir + ".away", tmp_dir)
        assert srv.http_get("/healthz")[0] == 200
        # Once it stops accepting, it says so.
        srv.app.registry.closing = True
        assert srv.app.health_problems() == ["shutting down"]
        srv.app.registry.closing = False


def test_a_slow_or_malformed_request_gets_an_error(tmp_path: Path, relay: RecordingServer) -> None:
    import socket

    config = write_config(tmp_path, relay.port)
    with InProcessServer(config) as srv:
        with socket.create_connection(srv.http, timeout=10) as sock:
            sock.sendall(b"NONSENSE\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 400 Bad Request\r\n")
        with socket.create_connection(srv.http, timeout=10) as sock:
            sock.sendall(b"GET /" + b"x" * 9000)  # longer than any request we read
            assert sock.recv(100).startswith(b"HTTP/1.1 400 ")
