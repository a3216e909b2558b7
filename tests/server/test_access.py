"""Who may send through the sidecar: networks, connections, senders, recipients, limits, size."""

from __future__ import annotations

import os
import smtplib
import time
from pathlib import Path

import pytest

from tests.server.helpers import InProcessServer, RawClient, closed_port, write_config
from tests.support.smtpd import RecordingServer

MESSAGE = b"Subject: hello\r\n\r\nbody\r\n"


def tmp_files(srv: InProcessServer) -> list[str]:
    return [n for n in os.listdir(srv.queue.dir("tmp")) if ".state." not in n]


def test_a_client_outside_allowed_networks_is_refused_at_connect(
    tmp_path: Path, relay: RecordingServer
) -> None:
    # 127.0.0.1 is not in the list: the greeting is a 554, then the server hangs up.
    config = write_config(
        tmp_path, relay.port, server={"allowed_networks": ["10.0.0.0/8", "::1/128"]}
    )
    with InProcessServer(config) as srv, RawClient(srv.smtp) as client:
        assert client.reply() == "554 5.7.1 127.0.0.1 is not allowed to send mail here"
        assert client.closed()
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP(*srv.smtp, timeout=10)
        assert refused.value.smtp_code == 554
        srv.wait_for(lambda: srv.metrics.rejections["network"] == 2)
        assert srv.queue.ids() == [] and relay.envelopes == []
        assert "reject: connect from unknown[127.0.0.1]: not in allowed_networks" in srv.messages()


def test_loopback_is_allowed_by_default(tmp_path: Path, relay: RecordingServer) -> None:
    config = write_config(tmp_path, relay.port)
    with InProcessServer(config) as srv, smtplib.SMTP(*srv.smtp, timeout=10) as client:
        code, text = client.ehlo("client.example.com")
        assert code == 250
        assert b"PIPELINING" in text and b"8BITMIME" in text and b"SIZE 52428800" in text
        assert b"AUTH" not in text  # no users, no TLS: AUTH is never offered
        assert client.docmd("AUTH", "PLAIN AGFwcABwdw==")[0] == 538


def test_connections_beyond_the_limit_get_421(tmp_path: Path, relay: RecordingServer) -> None:
    config = write_config(tmp_path, relay.port, server={"max_connections": 2})
    with InProcessServer(config) as srv:
        first, second = RawClient(srv.smtp), RawClient(srv.smtp)
        with first, second:
            assert first.reply().startswith("220 mx.example.com ESMTP")
            assert second.reply().startswith("220 ")
            with RawClient(srv.smtp) as third:
                assert third.reply() == "421 4.7.0 Too many connections, try again later"
                assert third.closed()
            assert first.command("NOOP").startswith("250")
        srv.wait_for(lambda: srv.metrics.connections == 0)
        with RawClient(srv.smtp) as again:  # the slots are free again
            assert again.reply().startswith("220 ")


def test_allowed_senders(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, closed_port(), server={"allowed_senders": ["*@example.com", "<>"]}
    )
    with InProcessServer(config) as srv, smtplib.SMTP(*srv.smtp, timeout=10) as client:
        client.ehlo("client")
        code, text = client.mail("someone@evil.example")
        assert (code, text) == (553, b"5.7.1 <someone@evil.example>: Sender address not allowed")
        assert client.mail("app@EXAMPLE.com")[0] == 250
        client.rset()
        assert client.mail("app")[0] == 250  # a bare name counts as app@example.com
        client.rset()
        assert client.mail("<>")[0] == 250  # the null sender, as "<>" allows
        client.rset()
        # A control character never reaches the rules: the line is refused as it is.
        code, text = client.mail("bad\x01name@example.com")
        assert (code, text) == (500, b"5.5.2 Error: control characters or bad UTF-8 in the line")
        assert srv.metrics.rejections["sender"] == 1


def test_allowed_recipient_domains_after_aliases(tmp_path: Path) -> None:
    (tmp_path / "aliases").write_text("root: admin@example.com\nfriend: someone@example.org\n")
    config = write_config(
        tmp_path,
        closed_port(),
        server={"allowed_recipient_domains": ["example.com", "*.example.net"]},
    )
    with InProcessServer(config) as srv, smtplib.SMTP(*srv.smtp, timeout=10) as client:
        client.ehlo("client")
        client.mail("app@example.com")
        assert client.rcpt("x@example.org") == (554, b"5.7.1 <x@example.org>: Relay access denied")
        assert client.rcpt("x@example.net")[0] == 554  # only its subdomains
        assert client.rcpt("friend")[0] == 554  # the alias leads outside
        assert client.rcpt("x@Example.COM")[0] == 250
        assert client.rcpt("a@b.example.net")[0] == 250
        assert client.rcpt("root")[0] == 250  # root is admin@example.com
        assert client.data(MESSAGE)[0] == 250
        (queue_id,) = srv.queue.ids()
        envelope, _ = srv.queue.read_envelope("queue", queue_id)
        assert [r.address for r in envelope.recipients] == [
            "x@Example.COM",
            "a@b.example.net",
            "admin@example.com",
        ]
        assert srv.metrics.rejections["relay"] == 3


def test_recipients_beyond_the_limit_get_452(tmp_path: Path) -> None:
    config = write_config(tmp_path, closed_port(), server={"max_recipients": 3})
    with InProcessServer(config) as srv, smtplib.SMTP(*srv.smtp, timeout=10) as client:
        client.ehlo("client")
        client.mail("app@example.com")
        for n in range(3):
            assert client.rcpt(f"r{n}@example.org")[0] == 250
        assert client.rcpt("r3@example.org") == (452, b"4.5.3 Too many recipients")
        assert client.data(MESSAGE)[0] == 250
        (queue_id,) = srv.queue.ids()
        envelope, _ = srv.queue.read_envelope("queue", queue_id)
        assert len(envelope.recipients) == 3


def test_messages_beyond_the_rate_get_421(tmp_path: Path) -> None:
    config = write_config(tmp_path, closed_port(), server={"max_messages_per_minute": 2})
    with InProcessServer(config) as srv:
        with smtplib.SMTP(*srv.smtp, timeout=10) as client:
            client.sendmail("app@example.com", ["a@example.org"], MESSAGE)
            client.sendmail("app@example.com", ["a@example.org"], MESSAGE)
            code, text = client.mail("app@example.com")
            assert (code, text) == (421, b"4.7.0 Too many messages from you, try again later")
            with pytest.raises(smtplib.SMTPServerDisconnected):
                client.noop()
        with RawClient(srv.smtp) as again:  # still over the limit on a new connection
            again.reply()
            again.command("EHLO client")
            assert again.command("MAIL FROM:<app@example.com>").startswith("421 4.7.0")
            assert again.closed()
        assert len(srv.queue.ids()) == 2
        assert srv.metrics.rejections["rate"] == 2


def test_an_oversized_message_gets_552_and_nothing_is_queued(tmp_path: Path) -> None:
    config = write_config(tmp_path, closed_port(), server={"max_message_size": 1000})
    with InProcessServer(config) as srv, RawClient(srv.smtp) as client:
        client.reply()
        assert "250-SIZE 1000" in client.command("EHLO client").split("\n")
        # Announced too big: refused at MAIL.
        assert client.command("MAIL FROM:<app@example.com> SIZE=5000").startswith("552")
        # Not announced: the data is read to the end, then refused.
        assert client.command("MAIL FROM:<app@example.com>") == "250 2.1.0 Ok"
        assert client.command("RCPT TO:<a@example.org>") == "250 2.1.5 Ok"
        assert client.command("DATA").startswith("354")
        client.send(b"Subject: big\r\n\r\n" + b"x" * 78 + b"\r\n" * 1 + (b"y" * 78 + b"\r\n") * 60)
        assert client.command(".") == "552 5.3.4 Message size exceeds fixed maximum message size"
        assert srv.queue.ids() == [] and tmp_files(srv) == []
        assert srv.metrics.accepted == 0 and srv.metrics.rejections["size"] == 1
        # The session goes on: a message within the limit is taken.
        assert client.command("MAIL FROM:<app@example.com>") == "250 2.1.0 Ok"
        assert client.command("RCPT TO:<a@example.org>") == "250 2.1.5 Ok"
        assert client.command("DATA").startswith("354")
        client.send(MESSAGE)
        assert client.command(".").startswith("250 2.0.0 Ok: queued as ")
        assert len(srv.queue.ids()) == 1


def test_an_idle_client_is_disconnected_after_the_timeout(tmp_path: Path) -> None:
    config = write_config(tmp_path, closed_port(), server={"timeout": 1})
    with InProcessServer(config) as srv, RawClient(srv.smtp) as client:
        client.reply()
        started = time.monotonic()
        assert client.closed()
        assert 0.5 < time.monotonic() - started < 5


def test_a_busy_client_stays_and_goes_once_it_falls_idle(tmp_path: Path) -> None:
    config = write_config(tmp_path, closed_port(), server={"timeout": 1})
    with InProcessServer(config) as srv, RawClient(srv.smtp) as client:
        client.reply()
        for _ in range(6):  # 2.4 s of commands, each well within the timeout
            time.sleep(0.4)
            assert client.command("NOOP").startswith("250")
        started = time.monotonic()
        assert client.closed()
        assert 0.5 < time.monotonic() - started < 5
