"""The blocking client against a real server: the Net::SMTP API as a caller uses it."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from pysendmail.errors import SMTPServerDisconnected
from pysendmail.smtp import SMTP, Address, LocalProtocolError, SendResult
from pysendmail.smtp.encoder import normalise
from tests.support.smtpd import Peer, RecordingServer, ScriptedServer

MESSAGE = b"From: a@b.test\nTo: c@d.test\nSubject: hi\n\nHello.\n.leading dot\n"

ScriptedFactory = Callable[..., ScriptedServer]
ServerFactory = Callable[..., RecordingServer]


def test_start_as_classmethod_sends_and_finishes(smtpd: RecordingServer) -> None:
    with SMTP.start(smtpd.host, smtpd.port, helo="client.test") as smtp:
        assert smtp.started
        result = smtp.send_message(MESSAGE, "a@b.test", "c@d.test")
        assert isinstance(result, SendResult)
        assert result.response.code == 250 and result.refused == {}
    assert not smtp.started
    [envelope] = smtpd.envelopes
    assert envelope.mail_from == "a@b.test"
    assert envelope.rcpt_tos == ["c@d.test"]
    assert envelope.data == normalise(MESSAGE)
    assert smtpd.commands[0] == "EHLO client.test"
    assert smtpd.commands[-1] == "QUIT"


def test_start_on_an_instance_returns_it(smtpd: RecordingServer) -> None:
    smtp = SMTP(smtpd.host, smtpd.port)
    assert not smtp.started and smtpd.sessions == []  # created, not connected
    smtp.open_timeout = 5
    smtp.read_timeout = 5
    assert smtp.start(helo="mail.from.domain") is smtp
    assert smtp.started
    smtp.send_message("Subject: x\n\nbody\n", "a@b.test", "c@d.test")
    smtp.finish()
    assert not smtp.started
    assert smtpd.commands[0] == "EHLO mail.from.domain"
    assert smtpd.commands[-1] == "QUIT"
    # Net::SMTP raises IOError for finish() when not started; so does this.
    with pytest.raises(OSError):
        smtp.finish()
    with pytest.raises(SMTPServerDisconnected):
        smtp.noop()


def test_a_started_session_cannot_start_again(smtpd: RecordingServer) -> None:
    with SMTP.start(smtpd.host, smtpd.port) as smtp, pytest.raises(LocalProtocolError):
        smtp.start()


def test_a_finished_session_can_start_again(smtpd: RecordingServer) -> None:
    smtp = SMTP(smtpd.host, smtpd.port)
    smtp.start().finish()
    with smtp.start():
        smtp.noop()
    assert len(smtpd.sessions) == 2


def test_context_manager_finishes_and_does_not_hide_the_error(smtpd: RecordingServer) -> None:
    with pytest.raises(KeyError, match="mine"), SMTP.start(smtpd.host, smtpd.port) as smtp:
        raise KeyError("mine")
    assert not smtp.started
    assert smtpd.commands[-1] == "QUIT"


def test_defaults_and_constructor_checks() -> None:
    assert (SMTP.default_port, SMTP.default_submission_port, SMTP.default_tls_port) == (
        25,
        587,
        465,
    )
    assert SMTP("mx.test").port == 25
    assert SMTP("mx.test", tls=True).port == 465
    assert SMTP("mx.test", 2525).port == 2525
    smtp = SMTP("mx.test")
    assert smtp.open_timeout == 30 and smtp.read_timeout == 60 and smtp.esmtp
    assert smtp.starttls_mode == "auto" and smtp.tls is False
    assert smtp.capabilities == {} and smtp.capable_auth_types == []
    with pytest.raises(ValueError, match="exclude"):
        SMTP("mx.test", tls=True, starttls="always")
    with pytest.raises(ValueError, match="starttls"):
        SMTP("mx.test", starttls="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keyfile"):
        SMTP("mx.test", keyfile="k.pem")
    with pytest.raises(ValueError, match="tls_min_version"):
        SMTP("mx.test", tls_min_version="SSLv3")
    with pytest.raises(ValueError):
        SMTP("mx.test\r\n")


def test_repr_shows_host_port_and_state_never_credentials(smtpd_factory: ServerFactory) -> None:
    server = smtpd_factory(auth=("PLAIN",), credentials={"alice": "s3cret"}, auth_require_tls=False)
    smtp = SMTP(server.host, server.port, allow_plaintext_auth=True)
    assert repr(smtp) == f"<SMTP 127.0.0.1:{server.port} started=False>"
    smtp.start(user="alice", secret="s3cret")
    assert repr(smtp) == f"<SMTP 127.0.0.1:{server.port} started=True>"
    assert "s3cret" not in repr(smtp) and "alice" not in repr(smtp)
    assert "s3cret" not in str(vars(smtp))
    smtp.finish()
    assert repr(SMTP("::1", 25)) == "<SMTP [::1]:25 started=False>"


def test_recipients_may_be_lists_and_addresses(smtpd: RecordingServer) -> None:
    with SMTP.start(smtpd.host, smtpd.port) as smtp:
        smtp.sendmail(MESSAGE, "a@b.test", ["c@d.test", Address("e@f.test")], ("g@h.test",))
        smtp.send_mail(MESSAGE, Address("a@b.test"), "i@j.test")
    assert [e.rcpt_tos for e in smtpd.envelopes] == [
        ["c@d.test", "e@f.test", "g@h.test"],
        ["i@j.test"],
    ]
    with SMTP.start(smtpd.host, smtpd.port) as smtp:
        with pytest.raises(ValueError, match="no recipients"):
            smtp.send_message(MESSAGE, "a@b.test")
        with pytest.raises(ValueError, match="no recipients"):
            smtp.send_message(MESSAGE, "a@b.test", [])
        with pytest.raises(TypeError):
            smtp.send_message(MESSAGE, "a@b.test", b"c@d.test")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            smtp.send_message(MESSAGE, "a@b.test", 42)  # type: ignore[arg-type]


def test_message_input_types_arrive_normalised(smtpd: RecordingServer, tmp_path: Path) -> None:
    path = tmp_path / "msg.eml"
    path.write_bytes(MESSAGE)
    text = "Subject: Grüße\r\n\r\nbare CR\r.x\nend"
    with SMTP.start(smtpd.host, smtpd.port) as smtp:
        smtp.send_message(MESSAGE, "a@b.test", "c@d.test")
        smtp.send_message(MESSAGE.decode(), "a@b.test", "c@d.test")
        smtp.send_message(bytearray(MESSAGE), "a@b.test", "c@d.test")
        with path.open("rb") as f:
            smtp.send_message(f, "a@b.test", "c@d.test")
        smtp.send_message(io.BytesIO(MESSAGE), "a@b.test", "c@d.test")
        smtp.send_message(iter([MESSAGE[:7], MESSAGE[7:30], MESSAGE[30:]]), "a@b.test", "c@d.test")
        smtp.send_message(text, "a@b.test", "c@d.test")
        smtp.send_message(b"", "a@b.test", "c@d.test")
    data = [e.data for e in smtpd.envelopes]
    assert data[:6] == [normalise(MESSAGE)] * 6
    assert data[6] == b"Subject: Gr\xc3\xbc\xc3\x9fe\r\n\r\nbare CR\r\n.x\r\nend\r\n"
    # An empty message is an empty body: DATA followed at once by ".".
    assert data[7] == b""


def test_open_message_stream_writer(smtpd: RecordingServer) -> None:
    with SMTP.start(smtpd.host, smtpd.port) as smtp:
        with smtp.open_message_stream("a@b.test", "c@d.test", ["e@f.test"]) as f:
            f.write(b"Subject: streamed\r")  # CRLF split across two writes
            f.write(b"\n\r\n")
            f.writelines(["line one\n", b".dot line\n"])
            f.print("printed", 42, sep="-")
            f.print()
            assert f.write("tail") == 4
        assert f.closed
        assert f.result is not None and f.result.response.code == 250
        assert f.refused == {}
        with smtp.ready("a@b.test", "g@h.test") as g:
            g.write(memoryview(b"x\n"))
    assert smtpd.envelopes[0].data == (
        b"Subject: streamed\r\n\r\nline one\r\n.dot line\r\nprinted-42\r\n\r\ntail\r\n"
    )
    assert smtpd.envelopes[0].rcpt_tos == ["c@d.test", "e@f.test"]
    assert smtpd.envelopes[1].data == b"x\r\n"
    with pytest.raises(ValueError, match="closed"):
        f.write(b"more")
    assert f.close() is f.response


def test_low_level_commands(smtpd: RecordingServer) -> None:
    with SMTP.start(smtpd.host, smtpd.port, helo="client.test") as smtp:
        assert smtp.noop().code == 250
        assert smtp.ehlo("again.test").code == 250
        assert smtp.helo("old.test").code == 250
        assert smtp.capabilities == {}  # HELO: no extensions
        assert smtp.ehlo("client.test").success
        assert smtp.mailfrom("a@b.test").code == 250
        assert smtp.rcptto("c@d.test").code == 250
        assert smtp.rset().code == 250
        smtp.mailfrom("a@b.test")
        assert smtp.rcptto_list(["c@d.test", "e@f.test"]) == {}
        assert smtp.data(MESSAGE).code == 250
        smtp.mailfrom("a@b.test")
        smtp.rcptto("c@d.test")
        writer = smtp.data()
        writer.write(b"Subject: low\n\nlevel")
        assert writer.close().code == 250
        assert smtp.quit().code == 221
        with pytest.raises(SMTPServerDisconnected, match="QUIT"):
            smtp.noop()
    assert smtpd.commands == [
        "EHLO client.test",
        "NOOP",
        "EHLO again.test",
        "HELO old.test",
        "EHLO client.test",
        "MAIL FROM:<a@b.test>",
        "RCPT TO:<c@d.test>",
        "RSET",
        "MAIL FROM:<a@b.test>",
        "RCPT TO:<c@d.test>",
        "RCPT TO:<e@f.test>",
        "DATA",
        "MAIL FROM:<a@b.test>",
        "RCPT TO:<c@d.test>",
        "DATA",
        "QUIT",
    ]
    assert [e.data for e in smtpd.envelopes] == [
        normalise(MESSAGE),
        b"Subject: low\r\n\r\nlevel\r\n",
    ]


def test_commands_in_the_wrong_order_are_refused_locally(smtpd: RecordingServer) -> None:
    with SMTP.start(smtpd.host, smtpd.port) as smtp:
        with pytest.raises(LocalProtocolError):
            smtp.rcptto("c@d.test")
        with pytest.raises(LocalProtocolError):
            smtp.data(MESSAGE)
        # Refused before sending: the session is fine.
        assert smtp.noop().code == 250
    assert smtpd.commands == ["EHLO localhost", "NOOP", "QUIT"]


def test_helo_fallback_when_ehlo_is_refused(smtpd_factory: ServerFactory) -> None:
    server = smtpd_factory(replies={"EHLO": "502 5.5.2 Error: command not recognized"})
    with SMTP.start(server.host, server.port, helo="client.test") as smtp:
        assert smtp.esmtp is False
        assert smtp.capabilities == {}
        smtp.send_message(MESSAGE, "a@b.test", "c@d.test")
    # No ESMTP: no SIZE or BODY parameters on MAIL.
    assert server.commands[:3] == ["EHLO client.test", "HELO client.test", "MAIL FROM:<a@b.test>"]
    assert server.envelopes[0].data == normalise(MESSAGE)


def test_esmtp_false_sends_helo_only(smtpd: RecordingServer) -> None:
    with SMTP.start(smtpd.host, smtpd.port, helo="client.test", esmtp=False) as smtp:
        assert not smtp.esmtp
        smtp.send_message(MESSAGE, "a@b.test", "c@d.test")
    assert smtpd.commands[0] == "HELO client.test"


def test_capabilities_after_ehlo(smtpd_factory: ServerFactory) -> None:
    server = smtpd_factory(size=5000, dsn=True, extra_ehlo=["X-Custom a b"])
    with SMTP.start(server.host, server.port) as smtp:
        caps = smtp.capabilities
        assert caps["size"] == ["5000"] and caps["X-CUSTOM"] == ["a", "b"]
        assert smtp.capable("pipelining") and smtp.capable("DSN")
        assert not smtp.capable("STARTTLS")
        assert not smtp.auth_capable("plain")


def test_exact_bytes_on_the_wire(scripted_server: ScriptedFactory) -> None:
    def script(peer: Peer) -> None:
        peer.send(b"220 mx.test ESMTP\r\n")
        peer.reply(b"EHLO", b"250-mx.test\r\n250-SIZE 100000\r\n250 8BITMIME\r\n")
        peer.reply(b"MAIL", b"250 2.1.0 Ok\r\n")
        peer.reply(b"RCPT", b"250 2.1.5 Ok\r\n")
        peer.reply(b"DATA", b"354 End data with <CR><LF>.<CR><LF>\r\n")
        peer.recv_until(b"\r\n.\r\n")
        peer.send(b"250 2.0.0 Ok: queued as 12345\r\n")
        peer.reply(b"NOOP", b"250 2.0.0 Ok\r\n")
        peer.reply(b"RSET", b"250 2.0.0 Ok\r\n")
        peer.reply(b"QUIT", b"221 2.0.0 Bye\r\n")
        peer.expect_eof()

    server = scripted_server(script)
    with SMTP.start(server.host, server.port, helo="client.example") as smtp:
        result = smtp.send_message(b"Subject: t\n\n.\n..x\nlast", "from@b.test", "to@d.test")
        assert result.response.string == "250 2.0.0 Ok: queued as 12345\r\n"
        assert result.response.enhanced == "2.0.0"
        smtp.noop()
        smtp.rset()
    server.wait()
    assert server.peer.received == (
        b"EHLO client.example\r\n"
        b"MAIL FROM:<from@b.test> SIZE=28\r\n"
        b"RCPT TO:<to@d.test>\r\n"
        b"DATA\r\n"
        b"Subject: t\r\n\r\n..\r\n...x\r\nlast\r\n.\r\n"
        b"NOOP\r\n"
        b"RSET\r\n"
        b"QUIT\r\n"
    )


def test_debug_trace_to_a_stream(smtpd: RecordingServer) -> None:
    trace = io.StringIO()
    smtp = SMTP(smtpd.host, smtpd.port, debug_output=trace)
    assert smtp.debug_output is trace
    with smtp.start(helo="client.test"):
        smtp.send_message(MESSAGE, "a@b.test", "c@d.test")
    text = trace.getvalue()
    assert "<- 'EHLO client.test\\r\\n'" in text
    assert "<- 'MAIL FROM:<a@b.test>\\r\\n'" in text
    assert "-> '250 2.0.0 OK: queued\\r\\n'" in text
    # The body is shown as its size, never its content.
    assert f"[message data: {len(normalise(MESSAGE))} octets]" in text
    assert "Hello." not in text


def test_debug_trace_goes_to_logging_without_a_stream(
    smtpd: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    smtp = SMTP(smtpd.host, smtpd.port)
    smtp.set_debug_output(io.StringIO())
    smtp.set_debug_output(None)
    with caplog.at_level(logging.DEBUG, logger="pysendmail.smtp"), smtp.start():
        smtp.noop()
    messages = [r.getMessage() for r in caplog.records if r.name == "pysendmail.smtp"]
    assert "<- 'NOOP\\r\\n'" in messages
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "pysendmail.smtp")


def test_peer_address_for_log_lines(smtpd: RecordingServer) -> None:
    smtp = SMTP("localhost", smtpd.port)
    assert smtp.peer_address is None
    with smtp.start():
        assert smtp.peer_address == "127.0.0.1"
    # Kept after finish, for the line that reports the delivery.
    assert smtp.peer_address == "127.0.0.1"
