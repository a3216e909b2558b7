"""PIPELINING, SIZE, 8BITMIME, SMTPUTF8 and DSN as a server sees them; injection refused."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pysendmail.errors import SMTPMessageTooLarge, SMTPUnsupportedCommand
from pysendmail.smtp import SMTP, Address
from pysendmail.smtp.encoder import normalise
from tests.support.smtpd import Peer, RecordingServer, ScriptedServer

ServerFactory = Callable[..., RecordingServer]
ScriptedFactory = Callable[..., ScriptedServer]
MESSAGE = b"Subject: t\n\nline\n.dot\n"


def mail_lines(server: RecordingServer) -> list[str]:
    return [c for c in server.commands if c.startswith("MAIL")]


def test_pipelining_sends_the_envelope_in_one_write(scripted_server: ScriptedFactory) -> None:
    def script(peer: Peer) -> None:
        peer.handshake("PIPELINING", "SIZE 100000")
        envelope = peer.recv_until(b"DATA\r\n")
        assert envelope == (
            b"MAIL FROM:<a@b.test> SIZE=26\r\n"
            b"RCPT TO:<c@d.test>\r\n"
            b"RCPT TO:<no@d.test>\r\n"
            b"RCPT TO:<e@f.test>\r\n"
            b"DATA\r\n"
        )
        # Everything came in one segment: one write, one round trip.
        assert envelope in peer.chunks
        peer.send(b"250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n354 go\r\n")
        body = peer.recv_until(b"\r\n.\r\n")
        assert body == b"Subject: t\r\n\r\nline\r\n..dot\r\n.\r\n"
        assert body in peer.chunks  # a small body and its end: one write too
        peer.send(b"250 queued\r\n")
        peer.reply(b"QUIT", b"221 bye\r\n")

    server = scripted_server(script)
    with SMTP.start(server.host, server.port) as smtp:
        result = smtp.send_message(MESSAGE, "a@b.test", "c@d.test", "no@d.test", "e@f.test")
    server.wait()
    assert list(result.refused) == ["no@d.test"]
    assert result.refused["no@d.test"].enhanced == "5.1.1"


def test_without_pipelining_one_command_per_round_trip(scripted_server: ScriptedFactory) -> None:
    def script(peer: Peer) -> None:
        peer.handshake("8BITMIME")
        for command in (b"MAIL", b"RCPT", b"RCPT", b"DATA"):
            line = peer.expect(command)
            assert peer.chunks[-1] == line  # nothing else came with it
            peer.send(b"354 go\r\n" if command == b"DATA" else b"250 ok\r\n")
        peer.recv_until(b"\r\n.\r\n")
        peer.send(b"250 queued\r\n")
        peer.reply(b"QUIT", b"221 bye\r\n")

    server = scripted_server(script)
    with SMTP.start(server.host, server.port) as smtp:
        smtp.send_message(MESSAGE, "a@b.test", "c@d.test", "e@f.test")
    server.wait()


def test_each_command_is_one_write(scripted_server: ScriptedFactory) -> None:
    def script(peer: Peer) -> None:
        peer.send(b"220 mx.test\r\n")
        line = peer.expect(b"EHLO")
        assert peer.chunks == [line]
        peer.send(b"250 mx.test\r\n")
        line = peer.expect(b"NOOP")
        assert peer.chunks[-1] == line
        peer.send(b"250 ok\r\n")
        peer.reply(b"QUIT", b"221 bye\r\n")

    server = scripted_server(script)
    with SMTP.start(server.host, server.port, helo="a-rather-long-client-name.example") as smtp:
        smtp.noop()
    server.wait()


def test_nagle_is_off(smtpd: RecordingServer) -> None:
    import socket

    with SMTP.start(smtpd.host, smtpd.port) as smtp:
        assert smtp._conn is not None
        sock = smtp._conn.sock
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_size_is_declared_when_known(smtpd_factory: ServerFactory, tmp_path: Path) -> None:
    server = smtpd_factory(size=10_000)
    path = tmp_path / "m.eml"
    path.write_bytes(MESSAGE)
    size = len(normalise(MESSAGE))  # after CRLF, before dot-stuffing
    with SMTP.start(server.host, server.port) as smtp:
        smtp.send_message(MESSAGE, "a@b.test", "c@d.test")
        smtp.send_message(MESSAGE.decode(), "a@b.test", "c@d.test")
        with path.open("rb") as f:
            smtp.send_message(f, "a@b.test", "c@d.test")
        smtp.send_message(iter([MESSAGE]), "a@b.test", "c@d.test")  # unknown length
        with smtp.open_message_stream("a@b.test", "c@d.test") as w:
            w.write(MESSAGE)
    assert (
        mail_lines(server)
        == [f"MAIL FROM:<a@b.test> SIZE={size}"] * 3 + ["MAIL FROM:<a@b.test>"] * 2
    )


def test_too_large_is_refused_before_mail(smtpd_factory: ServerFactory) -> None:
    server = smtpd_factory(size=100)
    with SMTP.start(server.host, server.port) as smtp:
        with pytest.raises(SMTPMessageTooLarge, match="at most 100") as info:
            smtp.send_message(b"x" * 99 + b"\n", "a@b.test", "c@d.test")  # 101 with CRLF
        assert not info.value.temporary
        smtp.send_message(b"x" * 97 + b"\n", "a@b.test", "c@d.test")  # 99 octets: fits
    assert mail_lines(server) == ["MAIL FROM:<a@b.test> SIZE=99"]


def test_8bitmime(smtpd_factory: ServerFactory) -> None:
    server = smtpd_factory()
    with SMTP.start(server.host, server.port) as smtp:
        smtp.send_message("Subject: Grüße\n\nä\n", "a@b.test", "c@d.test")
        smtp.send_message(b"Subject: ascii\n\n", "a@b.test", "c@d.test")
        smtp.send_message(iter([b"\xff\n"]), "a@b.test", "c@d.test")  # unknown: not declared
        smtp.send_message(iter([b"\xff\n"]), "a@b.test", "c@d.test", eightbit=True)
        with smtp.open_message_stream("a@b.test", "c@d.test", eightbit=True) as w:
            w.write("ü\n")
    assert mail_lines(server) == [
        "MAIL FROM:<a@b.test> BODY=8BITMIME",
        "MAIL FROM:<a@b.test>",
        "MAIL FROM:<a@b.test>",
        "MAIL FROM:<a@b.test> BODY=8BITMIME",
        "MAIL FROM:<a@b.test> BODY=8BITMIME",
    ]
    assert server.envelopes[0].data == "Subject: Grüße\r\n\r\nä\r\n".encode()


def test_no_body_parameter_when_8bitmime_is_not_offered(smtpd_factory: ServerFactory) -> None:
    server = smtpd_factory(eightbitmime=False)
    with SMTP.start(server.host, server.port) as smtp:
        assert not smtp.capable("8BITMIME")
        smtp.send_message("Subject: Grüße\n\n", "a@b.test", "c@d.test")
    assert mail_lines(server) == ["MAIL FROM:<a@b.test>"]


def test_smtputf8_added_when_an_address_needs_it(smtpd_factory: ServerFactory) -> None:
    server = smtpd_factory()
    with SMTP.start(server.host, server.port) as smtp:
        smtp.send_message(MESSAGE, "a@b.test", "jörg@d.test")
        smtp.send_message(MESSAGE, "пример@b.test", "c@d.test")
    assert mail_lines(server) == [
        "MAIL FROM:<a@b.test> SMTPUTF8",
        "MAIL FROM:<пример@b.test> SMTPUTF8",
    ]
    assert server.envelopes[0].rcpt_tos == ["jörg@d.test"]


def test_smtputf8_needed_but_not_offered(smtpd_factory: ServerFactory) -> None:
    server = smtpd_factory(smtputf8=False)
    with SMTP.start(server.host, server.port) as smtp:
        with pytest.raises(SMTPUnsupportedCommand, match="SMTPUTF8"):
            smtp.send_message(MESSAGE, "a@b.test", "c@d.test", "jörg@d.test")
        smtp.noop()
    # Nothing of the transaction was sent: Net::SMTP would send raw UTF-8 here.
    assert server.commands == ["EHLO localhost", "NOOP", "QUIT"]


def test_dsn_parameters_when_offered(smtpd_factory: ServerFactory) -> None:
    server = smtpd_factory(dsn=True)
    sender = Address("a@b.test", ret="HDRS", envid="QUEUE+ID=1")
    recipients: list[str | Address] = [
        Address("c@d.test", notify="SUCCESS,FAILURE", orcpt="rfc822;c@d.test"),
        Address("e@f.test", notify="NEVER"),
        "g@h.test",
    ]
    with SMTP.start(server.host, server.port) as smtp:
        smtp.send_message(MESSAGE, sender, recipients)
    assert server.commands[1:5] == [
        "MAIL FROM:<a@b.test> RET=HDRS ENVID=QUEUE+2BID+3D1",
        "RCPT TO:<c@d.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@d.test",
        "RCPT TO:<e@f.test> NOTIFY=NEVER",
        "RCPT TO:<g@h.test>",
    ]


def test_dsn_parameters_dropped_when_not_offered(smtpd: RecordingServer) -> None:
    with SMTP.start(smtpd.host, smtpd.port) as smtp:
        smtp.send_message(
            MESSAGE,
            Address("a@b.test", ret="FULL", envid="x"),
            Address("c@d.test", notify="SUCCESS"),
        )
    assert smtpd.commands[1:3] == ["MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>"]
    assert len(smtpd.envelopes) == 1


INJECTIONS = ["a@b.test\r\nRCPT TO:<evil@x.test>", "a@b\n.test", "a\0@b.test", "a\t@b.test"]


@pytest.mark.parametrize("bad", INJECTIONS)
def test_injection_in_addresses_sends_nothing(smtpd: RecordingServer, bad: str) -> None:
    with SMTP.start(smtpd.host, smtpd.port) as smtp:
        before = bytes(smtpd.sessions[0].transcript)
        with pytest.raises(ValueError):
            smtp.send_message(MESSAGE, bad, "c@d.test")
        with pytest.raises(ValueError):
            smtp.send_message(MESSAGE, "a@b.test", "c@d.test", bad)
        with pytest.raises(ValueError):
            smtp.mailfrom(bad)
        with pytest.raises(ValueError), smtp.open_message_stream("a@b.test", bad):
            pass
        smtp.noop()
        assert bytes(smtpd.sessions[0].transcript) == before + b"NOOP\r\n"
    assert smtpd.envelopes == []


@pytest.mark.parametrize(
    "params",
    [("NOTIFY=SUCCESS\r\nRSET",), ("X-A=1\tB",), ("X-B=\0",)],
)
def test_injection_in_parameters_is_refused(params: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        Address("c@d.test", *params)


@pytest.mark.parametrize("helo", ["evil\r\nMAIL FROM:<x@y>", "a\0b", "tab\there", "sp ace"])
def test_injection_in_helo_connects_to_nobody(smtpd: RecordingServer, helo: str) -> None:
    with pytest.raises(ValueError):
        SMTP.start(smtpd.host, smtpd.port, helo=helo)
    assert smtpd.sessions == []
    with SMTP.start(smtpd.host, smtpd.port) as smtp, pytest.raises(ValueError):
        smtp.ehlo(helo)
    assert smtpd.commands == ["EHLO localhost", "QUIT"]


def test_rcptto_list_is_pipelined(scripted_server: ScriptedFactory) -> None:
    def script(peer: Peer) -> None:
        peer.handshake("PIPELINING")
        peer.reply(b"MAIL", b"250 ok\r\n")
        batch = peer.recv_until(b"RCPT TO:<e@f.test>\r\n")
        assert batch == b"RCPT TO:<c@d.test>\r\nRCPT TO:<e@f.test>\r\n" and batch in peer.chunks
        peer.send(b"250 ok\r\n550 no\r\n")
        peer.reply(b"QUIT", b"221 bye\r\n")

    server = scripted_server(script)
    with SMTP.start(server.host, server.port) as smtp:
        smtp.mailfrom("a@b.test")
        assert list(smtp.rcptto_list(["c@d.test", "e@f.test"])) == ["e@f.test"]
    server.wait()


def test_many_messages_on_one_connection(smtpd: RecordingServer) -> None:
    def messages() -> Iterator[bytes]:
        for i in range(50):
            yield f"Subject: {i}\n\nbody {i}\n".encode()

    with SMTP.start(smtpd.host, smtpd.port) as smtp:
        for message in messages():
            smtp.send_message(io.BytesIO(message), "a@b.test", "c@d.test")
    assert [e.data for e in smtpd.envelopes] == [normalise(m) for m in messages()]
    assert len(smtpd.sessions) == 1
