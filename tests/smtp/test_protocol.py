"""The sans-I/O protocol, driven with scripted bytes: exact wire bytes, states, refusals."""

from __future__ import annotations

import pytest

from pysendmail.errors import (
    SMTPMessageTooLarge,
    SMTPServerDisconnected,
    SMTPUnsupportedCommand,
)
from pysendmail.smtp.address import Address
from pysendmail.smtp.protocol import (
    Auth,
    AuthCancel,
    AuthResponse,
    ClientProtocol,
    Command,
    Data,
    Ehlo,
    Helo,
    LocalProtocolError,
    Mail,
    Noop,
    Quit,
    Rcpt,
    Rset,
    StartTLS,
    State,
)
from pysendmail.smtp.reply import Response, SMTPProtocolError

EHLO_REPLY = (
    b"250-mx.test Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n"
    b"250-SMTPUTF8\r\n250-DSN\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n"
)


def state(proto: ClientProtocol) -> State:
    # A call, so that mypy does not narrow the attribute across commands.
    return proto.state


def reply(proto: ClientProtocol, data: bytes) -> Response:
    proto.receive_data(data)
    r = proto.next_reply()
    assert r is not None
    return r


def ready(ehlo_reply: bytes = EHLO_REPLY) -> ClientProtocol:
    proto = ClientProtocol()
    assert state(proto) is State.GREETING and proto.pending == 1
    assert reply(proto, b"220 mx.test ESMTP\r\n").code == 220
    assert state(proto) is State.CONNECTED
    assert proto.send(Ehlo("client.test")) == b"EHLO client.test\r\n"
    reply(proto, ehlo_reply)
    assert state(proto) is State.READY
    return proto


def test_greeting_then_ehlo_learns_the_capabilities() -> None:
    proto = ready()
    assert proto.esmtp
    assert proto.pipelining
    assert proto.max_size == 1000
    assert proto.auth_mechanisms == ["PLAIN", "LOGIN"]
    assert "starttls" in proto.capabilities


def test_helo_forgets_capabilities() -> None:
    proto = ready()
    assert proto.send(Helo("client.test")) == b"HELO client.test\r\n"
    reply(proto, b"250 mx.test\r\n")
    assert not proto.esmtp and proto.capabilities == {}
    assert state(proto) is State.READY


def test_failed_ehlo_leaves_session_waiting_for_helo() -> None:
    proto = ClientProtocol()
    reply(proto, b"220 hi\r\n")
    proto.send(Ehlo("c.test"))
    assert reply(proto, b"502 5.5.2 what?\r\n").code == 502
    assert state(proto) is State.CONNECTED
    with pytest.raises(LocalProtocolError):
        proto.send(Mail(Address("a@b.test")))
    proto.send(Helo("c.test"))
    reply(proto, b"250 ok\r\n")
    assert state(proto) is State.READY


@pytest.mark.parametrize(
    ("command", "wire"),
    [
        (Mail(Address("a@b.test")), b"MAIL FROM:<a@b.test>\r\n"),
        (Mail(Address("")), b"MAIL FROM:<>\r\n"),
        (Mail(Address("a@b.test"), size=999), b"MAIL FROM:<a@b.test> SIZE=999\r\n"),
        (
            Mail(Address("a@b.test"), size=10, eightbit=True),
            b"MAIL FROM:<a@b.test> SIZE=10 BODY=8BITMIME\r\n",
        ),
        (
            Mail(Address("a@b.test", ret="HDRS", envid="id+1 x"), smtputf8=True),
            b"MAIL FROM:<a@b.test> RET=HDRS ENVID=id+2B1+20x SMTPUTF8\r\n",
        ),
        (
            Mail(Address("pel\u00e9@b.test")),
            "MAIL FROM:<pel\u00e9@b.test> SMTPUTF8\r\n".encode(),
        ),
        (
            Rcpt(Address("c@d.test", notify="SUCCESS,FAILURE", orcpt="rfc822;c@d.test")),
            b"RCPT TO:<c@d.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@d.test\r\n",
        ),
        (Auth("plain", b"\0u\0p"), b"AUTH PLAIN AHUAcA==\r\n"),
        (Auth("PLAIN", b""), b"AUTH PLAIN =\r\n"),
        (Auth("LOGIN"), b"AUTH LOGIN\r\n"),
        (AuthResponse(b"user"), b"dXNlcg==\r\n"),
        (AuthResponse(b""), b"\r\n"),
        (AuthCancel(), b"*\r\n"),
        (StartTLS(), b"STARTTLS\r\n"),
        (Data(), b"DATA\r\n"),
        (Rset(), b"RSET\r\n"),
        (Noop(), b"NOOP\r\n"),
        (Quit(), b"QUIT\r\n"),
        (Ehlo("[127.0.0.1]"), b"EHLO [127.0.0.1]\r\n"),
    ],
)
def test_exact_wire_bytes(command: Command, wire: bytes) -> None:
    assert ready().encode(command) == wire


def test_extensions_not_offered_are_left_out() -> None:
    proto = ready(b"250-mx\r\n250 HELP\r\n")
    mail = Mail(Address("a@b.test", ret="FULL", envid="x"), size=10**9, eightbit=True)
    assert proto.encode(mail) == b"MAIL FROM:<a@b.test>\r\n"
    rcpt = Rcpt(Address("c@d.test", "X-KEEP=1", notify="NEVER", orcpt="c@d.test"))
    assert proto.encode(rcpt) == b"RCPT TO:<c@d.test> X-KEEP=1\r\n"


def test_callers_own_parameter_wins_over_the_computed_one() -> None:
    proto = ready()
    mail = Mail(Address("a@b.test", "BODY=7BIT", size="5"), size=10, eightbit=True)
    assert proto.encode(mail) == b"MAIL FROM:<a@b.test> BODY=7BIT SIZE=5\r\n"


def test_message_over_the_size_limit_is_refused_before_mail() -> None:
    proto = ready()
    with pytest.raises(SMTPMessageTooLarge, match="1001 octets") as info:
        proto.send(Mail(Address("a@b.test"), size=1001))
    assert not info.value.temporary
    assert proto.pending == 0 and state(proto) is State.READY


def test_size_zero_means_no_limit() -> None:
    proto = ready(b"250-mx\r\n250 SIZE 0\r\n")
    assert proto.max_size is None
    assert proto.encode(Mail(Address("a@b.test"), size=10**9)) == (
        b"MAIL FROM:<a@b.test> SIZE=1000000000\r\n"
    )


def test_smtputf8_needed_but_not_offered() -> None:
    proto = ready(b"250-mx\r\n250 8BITMIME\r\n")
    with pytest.raises(SMTPUnsupportedCommand, match="SMTPUTF8"):
        proto.encode(Mail(Address("pel\u00e9@b.test")))
    with pytest.raises(SMTPUnsupportedCommand, match="SMTPUTF8"):
        proto.encode(Mail(Address("a@b.test"), smtputf8=True))
    with pytest.raises(SMTPUnsupportedCommand, match="SMTPUTF8"):
        proto.encode(Rcpt(Address("\u00fc@b.test")))


@pytest.mark.parametrize(
    "command",
    [
        Ehlo("evil\r\nRCPT TO:<x@y>"),
        Ehlo("tab\there"),
        Ehlo("nul\0"),
        Ehlo("two words"),
        Ehlo(""),
        Ehlo("b\u00fccher.test"),
        Helo("a\nb"),
        Auth("PLAIN\r\nQUIT"),
        Auth("PL AIN"),
    ],
)
def test_injection_is_refused_and_nothing_is_queued(command: Command) -> None:
    proto = ready()
    with pytest.raises(ValueError):
        proto.send(command)
    assert proto.pending == 0 and state(proto) is State.READY


def test_empty_recipient_is_refused() -> None:
    proto = ready()
    proto.send(Mail(Address("a@b.test")))
    with pytest.raises(ValueError, match="empty"):
        proto.send(Rcpt(Address("")))


def test_pipelined_transaction_matches_replies_per_command() -> None:
    proto = ready()
    wire = b"".join(
        proto.send(c)
        for c in (
            Mail(Address("a@b.test")),
            Rcpt(Address("ok@d.test")),
            Rcpt(Address("no@d.test")),
            Data(),
        )
    )
    assert wire == (
        b"MAIL FROM:<a@b.test>\r\nRCPT TO:<ok@d.test>\r\nRCPT TO:<no@d.test>\r\nDATA\r\n"
    )
    assert proto.pending == 4
    # The replies arrive together, in one segment.
    proto.receive_data(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n354 go\r\n")
    codes = []
    while proto.pending:
        r = proto.next_reply()
        assert r is not None
        codes.append(r.code)
    assert codes == [250, 250, 550, 354]
    assert state(proto) is State.BODY
    body = proto.send_body(b"Subject: x\n\n.dot\n") + proto.send_body(b"end")
    assert body == b"Subject: x\r\n\r\n..dot\r\nend"
    assert proto.end_body() == b"\r\n.\r\n"
    assert proto.body_octets == len(b"Subject: x\r\n\r\n.dot\r\nend\r\n")
    assert reply(proto, b"250 2.0.0 queued\r\n").code == 250
    assert state(proto) is State.READY


def test_without_pipelining_one_command_per_round_trip() -> None:
    proto = ready(b"250-mx\r\n250 8BITMIME\r\n")
    proto.send(Mail(Address("a@b.test")))
    with pytest.raises(LocalProtocolError, match="PIPELINING"):
        proto.send(Rcpt(Address("c@d.test")))
    reply(proto, b"250 ok\r\n")
    proto.send(Rcpt(Address("c@d.test")))


def test_refused_mail_rolls_back_the_pipelined_state() -> None:
    proto = ready()
    for c in (Mail(Address("a@b.test")), Rcpt(Address("c@d.test")), Data()):
        proto.send(c)
    proto.receive_data(b"451 4.3.0 later\r\n503 5.5.1 no mail\r\n503 5.5.1 no rcpt\r\n")
    assert [proto.next_reply().code for _ in range(3)] == [451, 503, 503]  # type: ignore[union-attr]
    assert state(proto) is State.READY
    # Nothing of the failed transaction lingers: a new one can start.
    proto.send(Mail(Address("a@b.test")))


def test_all_recipients_refused_leaves_the_transaction_open_for_rset() -> None:
    proto = ready()
    for c in (Mail(Address("a@b.test")), Rcpt(Address("c@d.test")), Data()):
        proto.send(c)
    proto.receive_data(b"250 ok\r\n550 no\r\n554 5.5.1 no valid recipients\r\n")
    for _ in range(3):
        proto.next_reply()
    assert state(proto) is State.MAIL
    with pytest.raises(LocalProtocolError):
        proto.send_body(b"x")
    with pytest.raises(LocalProtocolError):
        proto.send(Mail(Address("a@b.test")))
    proto.send(Rset())
    reply(proto, b"250 ok\r\n")
    assert state(proto) is State.READY


def test_354_without_accepted_recipients_is_ended_with_an_empty_body() -> None:
    proto = ready()
    for c in (Mail(Address("a@b.test")), Rcpt(Address("c@d.test")), Data()):
        proto.send(c)
    proto.receive_data(b"250 ok\r\n550 no\r\n354 go anyway\r\n")
    for _ in range(3):
        proto.next_reply()
    assert state(proto) is State.BODY
    assert proto.end_body() == b".\r\n"
    assert reply(proto, b"554 no recipients\r\n").code == 554
    assert state(proto) is State.READY


@pytest.mark.parametrize(
    "command", [Ehlo("c.test"), Noop(), Rset(), Quit(), Mail(Address("a@b.test"))]
)
def test_nothing_may_interrupt_the_body(command: Command) -> None:
    proto = ready()
    for c in (Mail(Address("a@b.test")), Rcpt(Address("c@d.test")), Data()):
        proto.send(c)
    proto.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    for _ in range(3):
        proto.next_reply()
    proto.send_body(b"partial")
    with pytest.raises(LocalProtocolError):
        proto.send(command)


def test_out_of_order_commands_are_local_errors() -> None:
    proto = ready()
    with pytest.raises(LocalProtocolError, match="RCPT"):
        proto.send(Rcpt(Address("c@d.test")))
    with pytest.raises(LocalProtocolError, match="DATA"):
        proto.send(Data())
    with pytest.raises(LocalProtocolError):
        proto.send_body(b"x")
    with pytest.raises(LocalProtocolError):
        proto.end_body()
    with pytest.raises(LocalProtocolError):
        proto.send(AuthResponse(b"x"))
    with pytest.raises(LocalProtocolError):
        proto.tls_started()
    with pytest.raises(LocalProtocolError, match="not a command"):
        proto.send(Command())
    with pytest.raises(LocalProtocolError, match="not a command"):
        proto.encode(Command())
    with pytest.raises(LocalProtocolError, match="no reply is due"):
        proto.next_reply()


def test_auth_exchange_and_redacted_trace() -> None:
    proto = ready()
    auth = Auth("LOGIN")
    assert auth.trace(proto.send(auth)) == "AUTH LOGIN\r\n"
    assert reply(proto, b"334 VXNlcm5hbWU6\r\n").message == "VXNlcm5hbWU6"
    assert state(proto) is State.AUTH
    # Nothing else may be sent while the server waits for the answer.
    with pytest.raises(LocalProtocolError):
        proto.send(Noop())
    answer = AuthResponse(b"secret-user")
    line = proto.send(answer)
    assert answer.trace(line) == "<redacted>\r\n"
    assert "secret" not in repr(answer)
    reply(proto, b"334 UGFzc3dvcmQ6\r\n")
    proto.send(AuthResponse(b"pw"))
    reply(proto, b"235 2.7.0 ok\r\n")
    assert proto.authenticated and state(proto) is State.READY
    plain = Auth("PLAIN", b"\0u\0hunter2")
    assert plain.trace(proto.encode(plain)) == "AUTH PLAIN <redacted>\r\n"
    assert "hunter2" not in repr(plain)


def test_auth_failure_returns_to_ready() -> None:
    proto = ready()
    proto.send(Auth("PLAIN", b"\0u\0p"))
    assert reply(proto, b"535 5.7.8 bad\r\n").code == 535
    assert state(proto) is State.READY and not proto.authenticated


def test_auth_and_starttls_wait_for_earlier_replies() -> None:
    proto = ready()
    proto.send(Noop())
    with pytest.raises(LocalProtocolError, match="wait"):
        proto.send(StartTLS())
    with pytest.raises(LocalProtocolError, match="wait"):
        proto.send(Auth("PLAIN", b"x"))


def test_starttls_drops_injected_plaintext_and_forgets_capabilities() -> None:
    proto = ready()
    proto.send(StartTLS())
    # A man in the middle appends a forged reply after the 220.
    proto.receive_data(b"220 go ahead\r\n250-evil\r\n250 AUTH PLAIN\r\n")
    assert proto.next_reply().code == 220  # type: ignore[union-attr]
    assert state(proto) is State.TLS
    with pytest.raises(LocalProtocolError):
        proto.send(Ehlo("c.test"))
    proto.tls_started()
    assert state(proto) is State.CONNECTED
    assert proto.capabilities == {} and not proto.esmtp
    proto.send(Ehlo("c.test"))
    assert reply(proto, b"250-mx\r\n250 AUTH LOGIN\r\n").lines == ("mx", "AUTH LOGIN")
    assert proto.auth_mechanisms == ["LOGIN"]


def test_plaintext_arriving_after_the_220_is_dropped_too() -> None:
    proto = ready()
    proto.send(StartTLS())
    reply(proto, b"220 go ahead\r\n")
    proto.receive_data(b"250 forged\r\n")
    proto.tls_started()
    proto.send(Ehlo("c.test"))
    assert reply(proto, b"250 real\r\n").message == "real"


def test_refused_starttls_stays_in_plaintext_ready() -> None:
    proto = ready()
    proto.send(StartTLS())
    assert reply(proto, b"454 4.7.0 TLS not available\r\n").code == 454
    assert state(proto) is State.READY


def test_421_closes_the_session_at_any_point() -> None:
    proto = ready()
    for c in (Mail(Address("a@b.test")), Rcpt(Address("c@d.test")), Data()):
        proto.send(c)
    assert reply(proto, b"421 4.3.2 shutting down\r\n").code == 421
    assert state(proto) is State.CLOSED and proto.pending == 0
    with pytest.raises(SMTPServerDisconnected, match="shutting down"):
        proto.send(Rset())


def test_421_greeting_closes() -> None:
    proto = ClientProtocol()
    assert reply(proto, b"421 busy\r\n").code == 421
    with pytest.raises(SMTPServerDisconnected):
        proto.send(Ehlo("c.test"))


def test_554_greeting_still_allows_quit() -> None:
    proto = ClientProtocol()
    assert reply(proto, b"554 no service\r\n").code == 554
    assert proto.send(Quit()) == b"QUIT\r\n"
    reply(proto, b"221 bye\r\n")
    assert state(proto) is State.CLOSED
    with pytest.raises(SMTPServerDisconnected):
        proto.send(Noop())


def test_eof_in_the_middle_of_a_reply() -> None:
    proto = ready()
    proto.send(Noop())
    proto.receive_data(b"250-partial\r\n")
    assert proto.next_reply() is None
    proto.receive_data(b"")
    with pytest.raises(SMTPServerDisconnected, match="middle of a reply"):
        proto.next_reply()
    assert state(proto) is State.CLOSED
    with pytest.raises(SMTPServerDisconnected):
        proto.send(Noop())


def test_complete_replies_before_eof_are_still_delivered() -> None:
    proto = ready()
    proto.send(Quit())
    proto.receive_data(b"221 bye\r\n")
    proto.receive_data(b"")
    assert proto.next_reply().code == 221  # type: ignore[union-attr]


def test_malformed_reply_kills_the_session() -> None:
    proto = ready()
    proto.send(Noop())
    proto.receive_data(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(SMTPProtocolError):
        proto.next_reply()
    assert state(proto) is State.CLOSED
    with pytest.raises(SMTPServerDisconnected):
        proto.send(Noop())


def test_unsolicited_reply_is_a_protocol_error() -> None:
    proto = ready()
    proto.send(Noop())
    proto.receive_data(b"250 ok\r\n250 extra\r\n")
    proto.next_reply()
    with pytest.raises(SMTPProtocolError, match="nobody asked"):
        proto.send(Noop())
    assert state(proto) is State.CLOSED


def test_unsolicited_421_answers_the_next_command() -> None:
    proto = ready()
    proto.receive_data(b"421 4.4.2 idle timeout\r\n")
    proto.send(Noop())
    assert proto.next_reply().code == 421  # type: ignore[union-attr]
    assert state(proto) is State.CLOSED


def test_connection_lost_closes() -> None:
    proto = ready()
    proto.connection_lost("read timeout")
    with pytest.raises(SMTPServerDisconnected, match="read timeout"):
        proto.send(Noop())
    with pytest.raises(SMTPServerDisconnected):
        proto.send_body(b"x")


def test_rset_before_hello_keeps_the_session_waiting_for_hello() -> None:
    proto = ClientProtocol()
    reply(proto, b"220 hi\r\n")
    proto.send(Rset())
    reply(proto, b"250 ok\r\n")
    assert state(proto) is State.CONNECTED


def test_ehlo_mid_transaction_resets_it() -> None:
    proto = ready()
    proto.send(Mail(Address("a@b.test")))
    reply(proto, b"250 ok\r\n")
    proto.send(Ehlo("c.test"))
    reply(proto, EHLO_REPLY)
    assert state(proto) is State.READY


def test_send_many_queues_all_or_nothing() -> None:
    proto = ready()
    batch = [Mail(Address("a@b.test")), Rcpt(Address("c@d.test")), Ehlo("bad\r\nQUIT")]
    with pytest.raises(ValueError):
        proto.send_many(batch)
    assert proto.pending == 0 and state(proto) is State.READY
    with pytest.raises(LocalProtocolError, match="DATA"):
        proto.send_many([Mail(Address("a@b.test")), Data()])
    assert proto.pending == 0
    # The session is untouched: a correct batch goes through.
    wire = proto.send_many([Mail(Address("a@b.test")), Rcpt(Address("c@d.test")), Data()])
    assert wire == b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"
    assert proto.pending == 3


def test_send_many_needs_pipelining() -> None:
    proto = ready(b"250-mx\r\n250 8BITMIME\r\n")
    with pytest.raises(LocalProtocolError, match="PIPELINING"):
        proto.send_many([Mail(Address("a@b.test")), Rcpt(Address("c@d.test"))])
    assert proto.pending == 0


# --------------------------------------------------------------------------- RSET on reuse


def test_rset_may_lead_a_pipelined_transaction() -> None:
    proto = ready()
    wire = proto.send_many([Rset(), Mail(Address("a@b.test")), Rcpt(Address("c@d.test")), Data()])
    assert wire == b"RSET\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"
    assert proto.pending == 4
    proto.receive_data(b"250 2.0.0 Ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    assert [proto.next_reply().code for _ in range(4)] == [250, 250, 250, 354]  # type: ignore[union-attr]
    assert state(proto) is State.BODY


@pytest.mark.parametrize("refusal", [b"451 4.3.0 not now\r\n", b"554 5.5.1 no\r\n"])
def test_a_refused_rset_closes_the_session_and_forgets_the_batch(refusal: bytes) -> None:
    proto = ready()
    proto.send_many([Rset(), Mail(Address("a@b.test")), Rcpt(Address("c@d.test")), Data()])
    # The server refused RSET and went on: its 354 must not open a body.
    proto.receive_data(refusal + b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert proto.next_reply().code == int(refusal[:3])  # type: ignore[union-attr]
    assert state(proto) is State.CLOSED
    assert proto.pending == 0
    assert "RSET was refused" in proto.closed_reason
    with pytest.raises(LocalProtocolError, match="no reply is due"):
        proto.next_reply()
    with pytest.raises(SMTPServerDisconnected, match="RSET was refused"):
        proto.send(Mail(Address("a@b.test")))
    with pytest.raises(SMTPServerDisconnected):
        proto.send_body(b"x")


def test_a_refused_rset_on_its_own_closes_the_session() -> None:
    proto = ready()
    proto.send(Rset())
    assert reply(proto, b"502 5.5.2 not implemented\r\n").code == 502
    assert state(proto) is State.CLOSED
    with pytest.raises(SMTPServerDisconnected):
        proto.send(Noop())


def test_a_refused_rset_before_hello_closes_the_session_too() -> None:
    proto = ClientProtocol()
    reply(proto, b"220 hi\r\n")
    proto.send(Rset())
    reply(proto, b"500 what\r\n")
    assert state(proto) is State.CLOSED


def test_421_to_rset_says_what_the_server_said() -> None:
    proto = ready()
    proto.send_many([Rset(), Mail(Address("a@b.test"))])
    proto.receive_data(b"421 4.3.2 shutting down\r\n")
    assert proto.next_reply().code == 421  # type: ignore[union-attr]
    assert state(proto) is State.CLOSED and proto.pending == 0
    assert proto.closed_reason.startswith("the server said: 421")


def test_closed_reason_is_empty_while_open() -> None:
    assert ready().closed_reason == ""
