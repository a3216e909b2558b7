"""RSET before a message on a reused session: pipelined when offered, and judged first.

``send_message(..., reset=True)`` is what a queue runner sends for each message
after the first on one connection. With PIPELINING the RSET goes in the same
write as MAIL, RCPT and DATA; without, it is a round trip of its own. A refused
or unanswered RSET closes the session before any byte of the message leaves
(``SMTPResetError``), even when the server's later replies include a 354.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import pytest

from pysendmail.errors import (
    SMTPMessageTooLarge,
    SMTPReadTimeout,
    SMTPResetError,
    SMTPServerDisconnected,
)
from pysendmail.smtp import SMTP
from pysendmail.smtp.protocol import Noop, Rset, State
from tests.support.smtpd import Peer, RecordingServer, ScriptedServer

ScriptedFactory = Callable[..., ScriptedServer]
ServerFactory = Callable[..., RecordingServer]
MESSAGE = b"Subject: t\r\n\r\nbody\r\n"
SIZE = len(MESSAGE)
ENVELOPE = f"MAIL FROM:<a@b.test> SIZE={SIZE}\r\nRCPT TO:<c@d.test>\r\nDATA\r\n".encode()
TIMEOUT = 0.3


def first_message(peer: Peer, pipelining: bool) -> None:
    """The handshake and one ordinary message (no RSET before the first)."""
    peer.handshake(*(["PIPELINING"] if pipelining else []), "SIZE 100000")
    if pipelining:
        assert peer.recv_until(b"DATA\r\n") == ENVELOPE
        peer.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
    else:
        peer.reply(b"MAIL", b"250 ok\r\n")
        peer.reply(b"RCPT", b"250 ok\r\n")
        peer.reply(b"DATA", b"354 go\r\n")
    peer.recv_until(b"\r\n.\r\n")
    peer.send(b"250 queued 1\r\n")


def session(server: ScriptedServer) -> SMTP:
    smtp = SMTP(server.host, server.port, open_timeout=TIMEOUT, read_timeout=TIMEOUT)
    smtp.start(helo="client.test")
    smtp.send_message(MESSAGE, "a@b.test", "c@d.test")
    return smtp


def assert_closed_without_a_body(smtp: SMTP, server: ScriptedServer) -> None:
    """The session is dead: later calls fail at once, finish() sends nothing, no "." was sent."""
    began = time.monotonic()
    with pytest.raises(SMTPServerDisconnected):
        smtp.noop()
    with pytest.raises(SMTPResetError):
        smtp.send_message(MESSAGE, "a@b.test", "c@d.test", reset=True)
    assert time.monotonic() - began < 0.1
    smtp.finish()
    server.wait()
    received = server.peer.received
    assert b"QUIT" not in received and b"NOOP" not in received
    # One message body and its end, the first one's; nothing of the second.
    assert received.count(b"\r\n.\r\n") == 1


def test_pipelined_rset_goes_in_one_write_with_the_transaction(
    scripted_server: ScriptedFactory,
) -> None:
    def script(peer: Peer) -> None:
        first_message(peer, pipelining=True)
        batch = peer.recv_until(b"DATA\r\n")
        assert batch == b"RSET\r\n" + ENVELOPE
        assert batch in peer.chunks  # RSET, MAIL, RCPT and DATA in one recv: one write
        peer.send(b"250 2.0.0 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        peer.recv_until(b"\r\n.\r\n")
        peer.send(b"250 queued 2\r\n")
        peer.reply(b"QUIT", b"221 bye\r\n")
        peer.expect_eof()

    server = scripted_server(script)
    with session(server) as smtp:
        result = smtp.send_message(MESSAGE, "a@b.test", "c@d.test", reset=True)
        assert result.response.message == "queued 2"
        assert smtp._conn is not None and smtp._conn.proto.state is State.READY
    server.wait()
    assert server.peer.received == (
        b"EHLO client.test\r\n"
        + ENVELOPE
        + b"Subject: t\r\n\r\nbody\r\n.\r\n"
        + b"RSET\r\n"
        + ENVELOPE
        + b"Subject: t\r\n\r\nbody\r\n.\r\n"
        + b"QUIT\r\n"
    )


def test_without_pipelining_rset_is_a_round_trip_of_its_own(
    scripted_server: ScriptedFactory,
) -> None:
    def script(peer: Peer) -> None:
        first_message(peer, pipelining=False)
        for verb, answer in ((b"RSET", b"250 ok\r\n"), (b"MAIL", b"250 ok\r\n")):
            line = peer.expect(verb)
            assert peer.chunks[-1] == line  # nothing came with it
            peer.send(answer)
        peer.reply(b"RCPT", b"250 ok\r\n")
        peer.reply(b"DATA", b"354 go\r\n")
        peer.recv_until(b"\r\n.\r\n")
        peer.send(b"250 queued 2\r\n")
        peer.reply(b"QUIT", b"221 bye\r\n")

    server = scripted_server(script)
    with session(server) as smtp:
        smtp.send_message(MESSAGE, "a@b.test", "c@d.test", reset=True)
    server.wait()
    assert server.peer.received.count(b"RSET\r\n") == 1


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "no-pipelining"])
@pytest.mark.parametrize("refusal", [b"451 4.3.0 not now", b"554 5.5.1 no"])
def test_a_refused_rset_closes_the_session_and_sends_nothing(
    scripted_server: ScriptedFactory, pipelining: bool, refusal: bytes
) -> None:
    def script(peer: Peer) -> None:
        first_message(peer, pipelining)
        if pipelining:
            assert peer.recv_until(b"DATA\r\n") == b"RSET\r\n" + ENVELOPE
            # A server that went on after refusing RSET: the 354 must not open a body.
            peer.send(refusal + b"\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        else:
            peer.reply(b"RSET", refusal + b"\r\n")
        peer.expect_eof()  # the client closes without another byte

    server = scripted_server(script)
    smtp = session(server)
    with pytest.raises(SMTPResetError) as info:
        smtp.send_message(MESSAGE, "a@b.test", "c@d.test", reset=True)
    error = info.value
    assert error.response is not None and error.code == int(refusal[:3])
    assert error.temporary  # about the session, not the message: a new one may carry it
    assert "refused RSET" in str(error)
    assert isinstance(error, SMTPServerDisconnected) and isinstance(error, ConnectionError)
    assert_closed_without_a_body(smtp, server)


def test_421_to_rset_is_a_reset_error(scripted_server: ScriptedFactory) -> None:
    def script(peer: Peer) -> None:
        first_message(peer, pipelining=True)
        peer.recv_until(b"DATA\r\n")
        peer.send(b"421 4.3.2 shutting down\r\n")
        peer.expect_eof()

    server = scripted_server(script)
    smtp = session(server)
    with pytest.raises(SMTPResetError) as info:
        smtp.send_message(MESSAGE, "a@b.test", "c@d.test", reset=True)
    assert info.value.code == 421
    assert_closed_without_a_body(smtp, server)


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "no-pipelining"])
def test_disconnect_before_the_rset_reply(
    scripted_server: ScriptedFactory, pipelining: bool
) -> None:
    def script(peer: Peer) -> None:
        first_message(peer, pipelining)
        peer.expect(b"RSET")
        peer.close()  # an idle connection the server dropped

    server = scripted_server(script)
    smtp = session(server)
    with pytest.raises(SMTPResetError) as info:
        smtp.send_message(MESSAGE, "a@b.test", "c@d.test", reset=True)
    assert info.value.response is None and info.value.temporary
    assert isinstance(info.value.__cause__, SMTPServerDisconnected)
    assert_closed_without_a_body(smtp, server)


def test_disconnect_after_an_accepted_rset_is_an_ordinary_lost_connection(
    scripted_server: ScriptedFactory,
) -> None:
    def script(peer: Peer) -> None:
        first_message(peer, pipelining=True)
        peer.recv_until(b"DATA\r\n")
        peer.send(b"250 ok\r\n")
        peer.close()

    server = scripted_server(script)
    smtp = session(server)
    with pytest.raises(SMTPServerDisconnected) as info:
        smtp.send_message(MESSAGE, "a@b.test", "c@d.test", reset=True)
    # The reset worked: the failure belongs to the transaction (the runner defers it).
    assert not isinstance(info.value, SMTPResetError)
    assert "MAIL" in str(info.value)
    assert_closed_without_a_body(smtp, server)


def test_a_stalled_rset_times_out_as_a_reset_error(scripted_server: ScriptedFactory) -> None:
    def script(peer: Peer) -> None:
        first_message(peer, pipelining=True)
        peer.recv_until(b"DATA\r\n")
        peer.stall()

    server = scripted_server(script)
    smtp = session(server)
    began = time.monotonic()
    with pytest.raises(SMTPResetError) as info:
        smtp.send_message(MESSAGE, "a@b.test", "c@d.test", reset=True)
    assert time.monotonic() - began < TIMEOUT + 2
    assert isinstance(info.value.__cause__, SMTPReadTimeout)
    with pytest.raises(SMTPServerDisconnected):
        smtp.noop()
    smtp.finish()
    server.stop()
    assert b"QUIT" not in server.peer.received


def test_reset_on_a_dead_session_fails_at_once(scripted_server: ScriptedFactory) -> None:
    def script(peer: Peer) -> None:
        first_message(peer, pipelining=True)
        peer.close()

    server = scripted_server(script)
    smtp = session(server)
    server.wait()
    with pytest.raises(SMTPServerDisconnected):
        smtp.noop()  # finds the connection closed
    seen = server.peer.received
    with pytest.raises(SMTPResetError, match="cannot reset"):
        smtp.send_message(MESSAGE, "a@b.test", "c@d.test", reset=True)
    assert server.peer.received == seen
    smtp.finish()


def test_a_message_over_the_size_limit_is_refused_before_the_rset(
    scripted_server: ScriptedFactory,
) -> None:
    big = b"Subject: big\r\n\r\n" + b"x" * 200_000 + b"\r\n"

    def script(peer: Peer) -> None:
        first_message(peer, pipelining=True)
        # Nothing of the refused message; the next one comes with its RSET.
        assert peer.recv_until(b"DATA\r\n") == b"RSET\r\n" + ENVELOPE
        peer.send(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        peer.recv_until(b"\r\n.\r\n")
        peer.send(b"250 queued 2\r\n")
        peer.reply(b"QUIT", b"221 bye\r\n")

    server = scripted_server(script)
    with session(server) as smtp:
        with pytest.raises(SMTPMessageTooLarge):
            smtp.send_message(big, "a@b.test", "c@d.test", reset=True)
        smtp.send_message(MESSAGE, "a@b.test", "c@d.test", reset=True)
    server.wait()


def test_rset_refused_on_its_own_closes_the_session(scripted_server: ScriptedFactory) -> None:
    def script(peer: Peer) -> None:
        first_message(peer, pipelining=True)
        peer.reply(b"RSET", b"502 5.5.2 not implemented\r\n")
        peer.expect_eof()

    server = scripted_server(script)
    smtp = session(server)
    with pytest.raises(SMTPResetError) as info:
        smtp.rset()
    assert info.value.code == 502
    assert_closed_without_a_body(smtp, server)


def test_open_message_stream_with_reset(smtpd: RecordingServer) -> None:
    trace = io.StringIO()
    with SMTP.start(smtpd.host, smtpd.port, helo="client.test") as smtp:
        smtp.send_message(MESSAGE, "a@b.test", "c@d.test")
        smtp.set_debug_output(trace)
        with smtp.open_message_stream("a@b.test", "e@f.test", reset=True) as f:
            f.write(b"Subject: streamed\r\n\r\nhello\r\n")
        assert f.result is not None and f.result.response.code == 250
    commands = smtpd.sessions[0].commands
    assert commands == [
        "EHLO client.test",
        "MAIL FROM:<a@b.test>",
        "RCPT TO:<c@d.test>",
        "DATA",
        "RSET",
        "MAIL FROM:<a@b.test>",
        "RCPT TO:<e@f.test>",
        "DATA",
        "QUIT",
    ]
    assert [e.content for e in smtpd.envelopes][1] == b"Subject: streamed\r\n\r\nhello\r\n"
    # The trace shows RSET as a command of its own, then its reply first.
    lines = trace.getvalue().splitlines()
    assert lines[:2] == ["<- 'RSET\\r\\n'", "<- 'MAIL FROM:<a@b.test>\\r\\n'"]
    assert lines[4] == "-> '250 OK\\r\\n'"


def test_a_pipeline_cut_short_by_a_refused_rset_kills_the_connection(
    scripted_server: ScriptedFactory,
) -> None:
    def script(peer: Peer) -> None:
        first_message(peer, pipelining=True)
        assert peer.recv_until(b"NOOP\r\n") == b"RSET\r\nNOOP\r\n"
        peer.send(b"554 5.5.1 no\r\n250 ok\r\n")
        peer.expect_eof()

    server = scripted_server(script)
    smtp = session(server)
    conn = smtp._conn
    assert conn is not None
    # The connection's own pipeline (no client judging RSET first): the NOOP's
    # reply is never matched, and the connection is closed, not left half read.
    with pytest.raises(SMTPServerDisconnected, match="RSET was refused"):
        conn.pipeline([Rset(), Noop()])
    assert conn.dead is not None and conn.sock is None
    smtp.finish()
    server.wait()
