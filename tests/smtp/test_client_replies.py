"""Every reply class on every command: the right error, nothing sent that should not be, and a
session that can go on when the server allows it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pysendmail.errors import (
    SMTPAuthenticationError,
    SMTPError,
    SMTPFatalError,
    SMTPRecipientsRefused,
    SMTPServerBusy,
    SMTPServerDisconnected,
    SMTPSyntaxError,
    SMTPUnknownError,
)
from pysendmail.smtp import SMTP
from tests.support.smtpd import Peer, RecordingServer, ScriptedServer

ServerFactory = Callable[..., RecordingServer]
ScriptedFactory = Callable[..., ScriptedServer]
MESSAGE = b"Subject: test\r\n\r\nbody\r\n"
BODY_MARK = b"Subject: test"


def send(server: RecordingServer, *recipients: str) -> None:
    with SMTP.start(server.host, server.port) as smtp:
        smtp.send_message(MESSAGE, "a@b.test", *recipients)


@pytest.fixture(params=[True, False], ids=["pipelining", "no-pipelining"])
def pipelining(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.mark.parametrize(
    ("reply", "error", "temporary"),
    [
        ("451 4.3.0 Try again later", SMTPServerBusy, True),
        ("550 5.7.1 Sender rejected", SMTPFatalError, False),
        ("501 5.1.7 Bad sender address syntax", SMTPSyntaxError, False),
        ("530 5.7.0 Authentication required", SMTPAuthenticationError, False),
    ],
)
def test_refused_mail_from(
    smtpd_factory: ServerFactory,
    pipelining: bool,
    reply: str,
    error: type[SMTPError],
    temporary: bool,
) -> None:
    server = smtpd_factory(pipelining=pipelining, replies={"MAIL": reply})
    with SMTP.start(server.host, server.port) as smtp:
        with pytest.raises(error) as info:
            smtp.send_message(MESSAGE, "a@b.test", "c@d.test")
        assert type(info.value) is error
        assert info.value.response is not None and info.value.response.string == reply + "\r\n"
        assert info.value.temporary is temporary
        smtp.noop()  # the session goes on
    assert server.envelopes == []
    assert BODY_MARK not in server.sessions[0].transcript
    if not pipelining:
        # One round trip at a time: nothing after the refused MAIL.
        assert server.commands == ["EHLO localhost", "MAIL FROM:<a@b.test>", "NOOP", "QUIT"]


@pytest.mark.parametrize(
    ("reply", "temporary"),
    [("550 5.1.1 <x@y.test>: no such user", False), ("450 4.2.1 <x@y.test>: try later", True)],
)
def test_one_refused_recipient(
    smtpd_factory: ServerFactory, pipelining: bool, reply: str, temporary: bool
) -> None:
    server = smtpd_factory(pipelining=pipelining, replies={"RCPT TO:<x@y.test>": reply})
    with SMTP.start(server.host, server.port) as smtp:
        result = smtp.send_message(MESSAGE, "a@b.test", "c@d.test", "x@y.test", "e@f.test")
    assert list(result.refused) == ["x@y.test"]
    refusal = result.refused["x@y.test"]
    assert refusal.string == reply + "\r\n"
    assert SMTPError("", refusal).temporary is temporary
    assert result.response.code == 250
    [envelope] = server.envelopes
    assert envelope.rcpt_tos == ["c@d.test", "e@f.test"]
    assert envelope.data == MESSAGE


@pytest.mark.parametrize(("code", "temporary"), [("550 5.1.1", False), ("451 4.3.0", True)])
def test_all_recipients_refused(
    smtpd_factory: ServerFactory, pipelining: bool, code: str, temporary: bool
) -> None:
    refusal = f"{code} no"
    server = smtpd_factory(
        pipelining=pipelining,
        replies={"RCPT TO:<c@d.test>": refusal, "RCPT TO:<e@f.test>": refusal},
    )
    with SMTP.start(server.host, server.port) as smtp:
        with pytest.raises(SMTPRecipientsRefused) as info:
            smtp.send_message(MESSAGE, "a@b.test", "c@d.test", "e@f.test")
        assert sorted(info.value.refused) == ["c@d.test", "e@f.test"]
        assert all(r.code == int(code[:3]) for r in info.value.refused.values())
        assert info.value.temporary is temporary
        # The transaction was reset: the next message goes through.
        smtp.send_message(MESSAGE, "a@b.test", "ok@g.test")
    session = server.sessions[0]
    assert BODY_MARK in session.transcript  # only the second message
    assert session.transcript.count(BODY_MARK) == 1
    assert "RSET" in session.commands
    assert [e.rcpt_tos for e in server.envelopes] == [["ok@g.test"]]
    if not pipelining:
        # Without pipelining DATA is never sent when nobody was accepted.
        assert session.commands[:5] == [
            "EHLO localhost",
            "MAIL FROM:<a@b.test>",
            "RCPT TO:<c@d.test>",
            "RCPT TO:<e@f.test>",
            "RSET",
        ]


@pytest.mark.parametrize(
    ("reply", "error"),
    [("451 4.3.0 not now", SMTPServerBusy), ("554 5.5.1 no valid recipients", SMTPFatalError)],
)
def test_refused_data(
    smtpd_factory: ServerFactory, pipelining: bool, reply: str, error: type[SMTPError]
) -> None:
    server = smtpd_factory(pipelining=pipelining, replies={"DATA": reply})
    with SMTP.start(server.host, server.port) as smtp:
        with pytest.raises(error, match=reply[:3]):
            smtp.send_message(MESSAGE, "a@b.test", "c@d.test")
        smtp.noop()
    session = server.sessions[0]
    assert BODY_MARK not in session.transcript
    assert session.commands[-3:] == ["RSET", "NOOP", "QUIT"]


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ("554 5.7.1 Message rejected as spam", SMTPFatalError),
        ("452 4.3.1 Insufficient system storage", SMTPServerBusy),
    ],
)
def test_refused_after_the_end_of_data(
    smtpd_factory: ServerFactory, reply: str, error: type[SMTPError]
) -> None:
    server = smtpd_factory(replies={".": reply})
    with SMTP.start(server.host, server.port) as smtp:
        with pytest.raises(error) as info:
            smtp.send_message(MESSAGE, "a@b.test", "c@d.test")
        assert info.value.code == int(reply[:3])
        with pytest.raises(error), smtp.open_message_stream("a@b.test", "c@d.test") as f:
            f.write(MESSAGE)
        assert f.response is None and f.closed
        smtp.noop()  # the transaction is over either way; no RSET needed
    assert "RSET" not in server.commands
    assert [e.data for e in server.envelopes] == [MESSAGE, MESSAGE]


def test_421_on_mail_kills_the_session(smtpd_factory: ServerFactory) -> None:
    server = smtpd_factory(replies={"MAIL": "421 4.3.2 Service shutting down"})
    smtp = SMTP.start(server.host, server.port)
    with pytest.raises(SMTPServerBusy, match="421"):
        smtp.send_message(MESSAGE, "a@b.test", "c@d.test")
    with pytest.raises(SMTPServerDisconnected, match="closing"):
        smtp.noop()
    smtp.finish()
    assert "QUIT" not in server.commands


def test_554_greeting(scripted_server: ScriptedFactory) -> None:
    def script(peer: Peer) -> None:
        peer.send(b"554 5.3.2 No SMTP service here\r\n")
        peer.reply(b"QUIT", b"221 bye\r\n")
        peer.expect_eof()

    server = scripted_server(script)
    smtp = SMTP(server.host, server.port)
    with pytest.raises(SMTPFatalError, match="No SMTP service"):
        smtp.start()
    assert not smtp.started
    server.wait()


def test_421_greeting_gets_no_quit(scripted_server: ScriptedFactory) -> None:
    def script(peer: Peer) -> None:
        peer.send(b"421 4.3.2 Too many connections\r\n")
        peer.expect_eof()

    server = scripted_server(script)
    with pytest.raises(SMTPServerBusy, match="Too many") as info:
        SMTP.start(server.host, server.port)
    assert info.value.temporary
    server.wait()


def test_unexpected_reply_class_is_unknown_error(scripted_server: ScriptedFactory) -> None:
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.reply(b"NOOP", b"354 what?\r\n")
        peer.reply(b"QUIT", b"221 bye\r\n")

    server = scripted_server(script)
    with SMTP.start(server.host, server.port) as smtp, pytest.raises(SMTPUnknownError):
        smtp.noop()
    server.wait()


def test_354_without_accepted_recipients_ends_an_empty_message(
    scripted_server: ScriptedFactory,
) -> None:
    def script(peer: Peer) -> None:
        peer.handshake("PIPELINING")
        peer.expect(b"MAIL")
        peer.expect(b"RCPT")
        peer.expect(b"DATA")
        peer.send(b"250 ok\r\n550 5.1.1 no such user\r\n354 go ahead anyway\r\n")
        # RFC 2920: the client ends the message at once, without a byte of it;
        # the end of the message ends the transaction, so no RSET is due.
        peer.reply(b".\r\n", b"554 5.5.1 no valid recipients\r\n")
        peer.reply(b"QUIT", b"221 bye\r\n")

    server = scripted_server(script)
    with SMTP.start(server.host, server.port) as smtp, pytest.raises(SMTPRecipientsRefused):
        smtp.send_message(MESSAGE, "a@b.test", "x@y.test")
    server.wait()
    assert BODY_MARK not in server.peer.received


def test_low_level_refusals_raise(smtpd_factory: ServerFactory) -> None:
    server = smtpd_factory(
        replies={"RCPT TO:<x@y.test>": "550 5.1.1 no", "NOOP": "502 5.5.1 not here"}
    )
    with SMTP.start(server.host, server.port) as smtp:
        with pytest.raises(SMTPSyntaxError):
            smtp.noop()
        smtp.mailfrom("a@b.test")
        with pytest.raises(SMTPFatalError):
            smtp.rcptto("x@y.test")
        with pytest.raises(SMTPRecipientsRefused):
            smtp.rcptto_list(["x@y.test"])
        assert list(smtp.rcptto_list(["x@y.test", "c@d.test"])) == ["x@y.test"]
        assert smtp.data(MESSAGE).code == 250
    assert server.envelopes[0].rcpt_tos == ["c@d.test"]
