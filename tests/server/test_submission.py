"""What the listener does with a message: the intake, the commit before 250, and failures."""

from __future__ import annotations

import os
import smtplib
import socket
import stat
from pathlib import Path

from tests.server.helpers import InProcessServer, RawClient, closed_port, write_config
from tests.support.smtpd import RecordingServer


def queued_bytes(srv: InProcessServer, queue_id: str) -> bytes:
    envelope, _ = srv.queue.read_envelope("queue", queue_id)
    with srv.queue.open_message("queue", queue_id) as f:
        f.seek(envelope.message_offset)
        return f.read()


def leftovers(srv: InProcessServer) -> list[str]:
    """What is in tmp/ besides the runner's state files being replaced."""
    return [n for n in os.listdir(srv.queue.dir("tmp")) if ".state." not in n]


def session(client: RawClient) -> None:
    assert client.reply().startswith("220 mx.example.com ESMTP pysendmail")
    assert client.command("EHLO client.example").startswith("250-mx.example.com")


def test_the_message_is_committed_before_250(tmp_path: Path) -> None:
    config = write_config(tmp_path, closed_port())  # the relay is down: it stays queued
    long_line = b"L" * 5000
    data = (
        b"From: App <app@example.com>\r\nTo: a@example.org\r\nBcc: hidden@example.org\r\n"
        b"Subject: caf\xc3\xa9\r\n\r\nline one\r\n..leading dot\r\n" + long_line + b"\r\n"
    )
    with InProcessServer(config) as srv, RawClient(srv.smtp) as client:
        session(client)
        assert client.command("MAIL FROM:<app@example.com> BODY=8BITMIME") == "250 2.1.0 Ok"
        assert client.command("RCPT TO:<a@example.org>") == "250 2.1.5 Ok"
        assert client.command("RCPT TO:<root>") == "250 2.1.5 Ok"
        assert client.command("DATA").startswith("354 ")
        client.send(data)
        reply = client.command(".")
        assert reply.startswith("250 2.0.0 Ok: queued as ")
        queue_id = reply.rsplit(" ", 1)[1]
        # The 250 came after the commit: the file is in queue/ already, tmp/ is empty.
        assert srv.queue.ids() == [queue_id]
        assert leftovers(srv) == []
        mode = os.stat(srv.queue.path("queue", queue_id)).st_mode
        assert stat.S_IMODE(mode) == 0o600
        envelope, _ = srv.queue.read_envelope("queue", queue_id)
        assert envelope.sender == "app@example.com"
        assert [r.address for r in envelope.recipients] == ["a@example.org", "admin@example.com"]
        assert envelope.body_type == "8BITMIME"
        message = queued_bytes(srv, queue_id)
        head, _, body = message.partition(b"\r\n\r\n")
        # The server's trace field (RFC 5321 4.4): the client's HELO and address.
        assert head.startswith(
            b"Received: from client.example (unknown [127.0.0.1])\r\n"
            b"\tby mx.example.com (pysendmail) with ESMTP id " + queue_id.encode() + b";\r\n\t"
        )
        assert b"Bcc:" not in head and b"hidden@" not in message
        assert f".{queue_id}@mx.example.com>".encode() in head  # Message-ID added
        assert b"\r\nDate: " in head
        assert body == b"line one\r\n.leading dot\r\n" + long_line + b"\r\n"
        (record,) = [r for r in srv.log_records() if r.get("queue_id") == queue_id and "nrcpt" in r]
        assert record["from"] == "<app@example.com>" and record["nrcpt"] == 2
        assert record["client"] == "unknown[127.0.0.1]"


def test_the_null_sender_and_bare_names(tmp_path: Path) -> None:
    config = write_config(tmp_path, closed_port())
    with InProcessServer(config) as srv, smtplib.SMTP(*srv.smtp, timeout=10) as client:
        client.sendmail("<>", ["postmaster"], b"Subject: bounce\r\n\r\nx\r\n")
        (queue_id,) = srv.queue.ids()
        envelope, _ = srv.queue.read_envelope("queue", queue_id)
        assert envelope.sender == ""
        assert [r.address for r in envelope.recipients] == ["admin@example.com"]
        client.ehlo("client")
        assert client.mail("<>")[0] == 250
        assert client.rcpt("<>") == (501, b"5.1.3 Bad recipient address syntax")
        assert client.docmd("RCPT", "TO:<bad\x01name@example.org>")[0] == 500
        assert client.docmd("RCPT", "TO:<two words@example.org>")[0] == 553
        assert client.docmd("RCPT", "TO:a@example.org")[0] == 501  # no angle brackets
        assert client.docmd("RCPT", "TO:<a@example.org, b@example.org>")[0] == 553
        assert client.docmd("RCPT", 'TO:<"a>b"@example.org>') == (250, b"2.1.5 Ok")
        assert client.docmd("RCPT", "TO:<@relay.example:c@example.org>")[0] == 250
        assert client.docmd("BOGUS")[0] == 502


def test_a_queue_that_cannot_take_the_message_gets_451(tmp_path: Path) -> None:
    config = write_config(tmp_path, closed_port())
    with InProcessServer(config) as srv:
        # queue/ replaced by a file: the link into it fails after the data was written.
        queue_dir = srv.queue.dir("queue")
        os.rmdir(queue_dir)
        Path(queue_dir).write_bytes(b"")
        with smtplib.SMTP(*srv.smtp, timeout=10) as client:
            client.ehlo("client")
            client.mail("app@example.com")
            client.rcpt("a@example.org")
            code, text = client.data(b"Subject: x\r\n\r\nbody\r\n")
            assert code == 451 and text.startswith(b"4.3.0 Cannot queue the message now")
            assert leftovers(srv) == []  # nothing half-written left
            # The session is usable after the failure.
            assert client.mail("app@example.com")[0] == 250
        os.unlink(queue_dir)
        os.mkdir(queue_dir, 0o700)
    assert srv.metrics.accepted == 0


def test_a_message_the_intake_refuses_gets_554(tmp_path: Path) -> None:
    config = write_config(tmp_path, closed_port())
    with InProcessServer(config) as srv, smtplib.SMTP(*srv.smtp, timeout=10) as client:
        client.ehlo("client")
        client.mail("app@example.com")
        client.rcpt("a@example.org")
        code, text = client.data(b"Subject: a\x00nul\r\n\r\nbody\r\n")
        assert code == 554 and b"NUL byte in the header block" in text
        assert srv.queue.ids() == [] and leftovers(srv) == []


def test_end_of_input_inside_data_keeps_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path, closed_port())
    with InProcessServer(config) as srv:
        with RawClient(srv.smtp) as client:
            session(client)
            client.command("MAIL FROM:<app@example.com>")
            client.command("RCPT TO:<a@example.org>")
            assert client.command("DATA").startswith("354")
            client.send(b"Subject: cut\r\n\r\nhalf a mess")
            client.sock.shutdown(socket.SHUT_WR)
            assert client.reply() == "451 4.3.0 Input ended inside DATA; nothing was kept"
            assert client.closed()
        assert srv.queue.ids() == [] and leftovers(srv) == []


def test_a_pipelined_session_is_answered_in_full_after_the_client_closes(
    tmp_path: Path, relay: RecordingServer
) -> None:
    config = write_config(tmp_path, relay.port)
    script = (
        b"EHLO client\r\nMAIL FROM:<app@example.com>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n"
        b"Subject: one\r\n\r\nfirst\r\n.\r\n"
        b"MAIL FROM:<app@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
        b"Subject: two\r\n\r\nsecond\r\n.\r\nQUIT\r\n"
    )
    with InProcessServer(config) as srv:
        with RawClient(srv.smtp) as client:
            client.send(script)
            client.sock.shutdown(socket.SHUT_WR)  # all said, like `printf ... | nc`
            replies = [client.reply() for _ in range(11)]
            assert client.closed()
        codes = [r[:3] for r in replies]
        assert codes == [
            "220",
            "250",
            "250",
            "250",
            "354",
            "250",
            "250",
            "250",
            "354",
            "250",
            "221",
        ]
        srv.wait_for(lambda: len(relay.envelopes) == 2)
        srv.wait_for(lambda: srv.queue.ids() == [])
    subjects = sorted(e.data.split(b"Subject: ")[1].split(b"\r\n")[0] for e in relay.envelopes)
    assert subjects == [b"one", b"two"]


def test_a_large_message_is_spooled_to_disk_and_arrives_whole(
    tmp_path: Path, relay: RecordingServer
) -> None:
    config = write_config(tmp_path, relay.port)
    lines = [f"{n:08d} ".encode() + b"z" * 70 + b"\r\n" for n in range(40000)]  # 3.2 MB
    body = b"".join(lines)
    with InProcessServer(config) as srv, smtplib.SMTP(*srv.smtp, timeout=30) as client:
        client.sendmail("app@example.com", ["a@example.org"], b"Subject: big\r\n\r\n" + body)
        srv.wait_for(lambda: len(relay.envelopes) == 1)
        assert leftovers(srv) == []
    assert relay.envelopes[0].data.endswith(b"\r\n\r\n" + body)


def test_the_unix_socket_listener(tmp_path: Path) -> None:
    sock = tmp_path / "smtp.sock"
    config = write_config(
        tmp_path,
        closed_port(),
        server={
            "listen": [],
            "unix_socket": str(sock),
            "unix_socket_mode": "0600",
            # No network admitted: the socket's mode decides who connects.
            "allowed_networks": ["192.0.2.0/24"],
        },
    )
    with InProcessServer(config) as srv:
        assert srv.app.addresses[0] == str(sock)
        assert stat.S_ISSOCK(os.lstat(sock).st_mode)
        assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600
        with RawClient(str(sock)) as client:
            session(client)
            assert client.command("MAIL FROM:<app@example.com>") == "250 2.1.0 Ok"
            assert client.command("RCPT TO:<a@example.org>") == "250 2.1.5 Ok"
            assert client.command("DATA").startswith("354")
            client.send(b"Subject: via unix\r\n\r\nx\r\n")
            assert client.command(".").startswith("250 2.0.0 Ok: queued as ")
        (record,) = [r for r in srv.log_records() if "nrcpt" in r]
        assert record["client"] == "unix"
    assert not sock.exists()  # removed on the way out


def test_the_received_field_cannot_be_forged_through_helo(tmp_path: Path) -> None:
    config = write_config(tmp_path, closed_port())
    with InProcessServer(config) as srv, RawClient(srv.smtp) as client:
        assert client.reply().startswith("220 ")
        assert client.command("HELO evil(x); Bcc: a@b").startswith("250")
        assert client.command("MAIL FROM:<app@example.com>") == "250 2.1.0 Ok"
        assert client.command("RCPT TO:<a@example.org>") == "250 2.1.5 Ok"
        assert client.command("DATA").startswith("354 ")
        client.send(b"Subject: x\r\n\r\nx\r\n")
        queue_id = client.command(".").rsplit(" ", 1)[1]
        head = queued_bytes(srv, queue_id).partition(b"\r\n\r\n")[0]
        received = head.split(b"\r\nSubject:")[0]
        assert received.startswith(b"Received: from evilxBcc:ab (unknown [127.0.0.1])\r\n")
        assert b"with SMTP id" in received  # HELO, not EHLO
