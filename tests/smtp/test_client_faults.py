"""Servers that vanish, stall or lie: the right error, fast, and a session that is dead after."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest

from pysendmail.errors import (
    SMTPConnectError,
    SMTPError,
    SMTPOpenTimeout,
    SMTPReadTimeout,
    SMTPServerDisconnected,
    SMTPTimeoutError,
    SMTPWriteTimeout,
)
from pysendmail.smtp import SMTP, SMTPProtocolError
from tests.support.smtpd import Peer, ScriptedServer

ScriptedFactory = Callable[..., ScriptedServer]
MESSAGE = b"Subject: t\r\n\r\nbody\r\n"
TIMEOUT = 0.2
# Generous: a loaded CI machine is slow, but nowhere near a default 60 s timeout.
FAST = 2.0


def until(stage: str) -> Callable[[Peer], None]:
    """A server that plays a normal session up to ``stage`` and returns there."""

    def script(peer: Peer) -> None:
        if stage == "greeting":
            return
        peer.handshake("PIPELINING" if stage.endswith("-pipelined") else "8BITMIME")
        if stage == "ehlo":
            return
        if stage.endswith("-pipelined"):
            peer.expect(b"MAIL")
            peer.expect(b"RCPT")
            peer.expect(b"DATA")
            if stage == "mail-pipelined":
                return
            peer.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
        else:
            peer.reply(b"MAIL", b"250 ok\r\n")
            peer.expect(b"RCPT")
            if stage == "rcpt":
                return
            peer.send(b"250 ok\r\n")
            peer.expect(b"DATA")
            if stage == "data":
                return
            peer.send(b"354 go\r\n")
        peer.recv_until(b"\r\n.\r\n")
        if stage == "end-of-data":
            return
        raise AssertionError(f"unknown stage {stage}")

    return script


STAGES = ["ehlo", "rcpt", "data", "mail-pipelined", "end-of-data"]


def then_close(script: Callable[[Peer], None]) -> Callable[[Peer], None]:
    def run(peer: Peer) -> None:
        script(peer)
        peer.close()

    return run


def then_stall(script: Callable[[Peer], None]) -> Callable[[Peer], None]:
    def run(peer: Peer) -> None:
        script(peer)
        peer.stall()

    return run


def session(server: ScriptedServer, write_timeout: float = 60.0) -> SMTP:
    return SMTP(
        server.host,
        server.port,
        open_timeout=TIMEOUT,
        read_timeout=TIMEOUT,
        write_timeout=write_timeout,
    )


def run_to(smtp: SMTP, stage: str) -> None:
    smtp.start()
    smtp.send_message(MESSAGE, "a@b.test", "c@d.test")


def assert_dead(smtp: SMTP, server: ScriptedServer) -> None:
    """The dead-session rule: SMTPServerDisconnected at once; a quiet finish(), no QUIT."""
    seen = server.peer.received
    began = time.monotonic()
    with pytest.raises(SMTPServerDisconnected):
        smtp.noop()
    with pytest.raises(SMTPServerDisconnected):
        smtp.send_message(MESSAGE, "a@b.test", "c@d.test")
    assert time.monotonic() - began < 0.1
    if smtp.started:
        smtp.finish()
        assert not smtp.started
    server.stop()
    received = server.peer.received
    assert b"QUIT" not in received
    assert received.count(b"NOOP") == seen.count(b"NOOP")
    assert received.count(b"MAIL FROM") == seen.count(b"MAIL FROM")


def test_disconnect_at_the_greeting(scripted_server: ScriptedFactory) -> None:
    server = scripted_server(then_close(until("greeting")))
    smtp = session(server)
    with pytest.raises(SMTPServerDisconnected, match="closed the connection"):
        smtp.start()
    assert not smtp.started


@pytest.mark.parametrize("stage", STAGES)
def test_disconnect_at_each_stage(scripted_server: ScriptedFactory, stage: str) -> None:
    server = scripted_server(then_close(until(stage)))
    smtp = session(server)
    with pytest.raises(SMTPServerDisconnected) as info:
        run_to(smtp, stage)
    # Also a ConnectionError, for callers that catch the builtin.
    assert isinstance(info.value, ConnectionError) and info.value.temporary
    assert_dead(smtp, server)


def test_stall_at_the_greeting_is_an_open_timeout(scripted_server: ScriptedFactory) -> None:
    server = scripted_server(then_stall(until("greeting")))
    smtp = session(server)
    began = time.monotonic()
    with pytest.raises(SMTPOpenTimeout) as info:
        smtp.start()
    assert time.monotonic() - began < FAST
    assert isinstance(info.value, TimeoutError) and info.value.temporary


@pytest.mark.parametrize("stage", STAGES)
def test_stall_at_each_stage_is_a_read_timeout(
    scripted_server: ScriptedFactory, stage: str
) -> None:
    server = scripted_server(then_stall(until(stage)))
    smtp = session(server)
    began = time.monotonic()
    with pytest.raises(SMTPReadTimeout) as info:
        run_to(smtp, stage)
    assert time.monotonic() - began < FAST
    assert isinstance(info.value, TimeoutError)
    assert_dead(smtp, server)


def test_read_timeout_is_settable_on_a_live_session(scripted_server: ScriptedFactory) -> None:
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.expect(b"NOOP")
        time.sleep(0.3)
        peer.send(b"250 slow but fine\r\n")
        peer.stall()

    server = scripted_server(script)
    smtp = SMTP(server.host, server.port, read_timeout=0.1)
    smtp.start()
    smtp.read_timeout = 2
    assert smtp.noop().message == "slow but fine"
    smtp.read_timeout = TIMEOUT
    with pytest.raises(SMTPReadTimeout):
        smtp.noop()
    assert_dead(smtp, server)


def test_a_dribbling_server_cannot_stretch_the_read_timeout(
    scripted_server: ScriptedFactory,
) -> None:
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.expect(b"NOOP")
        try:
            for byte in b"250 this reply takes far too long\r\n":
                peer.send(bytes([byte]))
                time.sleep(0.05)
        except OSError:
            pass  # the client gave up, as it should

    server = scripted_server(script)
    smtp = session(server)
    smtp.start()
    began = time.monotonic()
    with pytest.raises(SMTPReadTimeout):
        smtp.noop()
    assert time.monotonic() - began < 0.5
    assert_dead(smtp, server)


def test_a_server_that_stops_reading_is_a_write_timeout(scripted_server: ScriptedFactory) -> None:
    def script(peer: Peer) -> None:
        until("data")(peer)
        peer.send(b"354 go\r\n")
        peer.stall()  # never reads the body

    def endless() -> Iterator[bytes]:
        chunk = b"x" * 1000 + b"\r\n"
        for _ in range(64 * 1024):  # up to 64 MB, never all in memory
            yield chunk

    server = scripted_server(script, receive_buffer=4096)
    smtp = session(server, write_timeout=TIMEOUT)
    smtp.start()
    began = time.monotonic()
    with pytest.raises(SMTPWriteTimeout) as info:
        smtp.send_message(endless(), "a@b.test", "c@d.test")
    assert time.monotonic() - began < FAST
    assert isinstance(info.value, SMTPTimeoutError)
    assert_dead(smtp, server)


def test_connection_refused(scripted_server: ScriptedFactory) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on that port now.
    with pytest.raises(SMTPConnectError) as info:
        SMTP.start("127.0.0.1", port, open_timeout=TIMEOUT)
    assert isinstance(info.value, ConnectionError) and info.value.temporary


@pytest.mark.parametrize(
    "garbage",
    [
        b"HTTP/1.1 400 Bad Request\r\n",
        b"250-a\r\n251 b\r\n",
        b"250 " + b"x" * 5000,  # no line end ever comes
        b"250-x\r\n" * 1000,
        b"2500 ok\r\n",
    ],
    ids=["http", "mixed-codes", "endless-line", "endless-reply", "bad-separator"],
)
def test_garbage_replies_kill_the_session(scripted_server: ScriptedFactory, garbage: bytes) -> None:
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.expect(b"NOOP")
        peer.send(garbage)
        peer.stall()

    server = scripted_server(script)
    smtp = session(server)
    smtp.start()
    began = time.monotonic()
    with pytest.raises(SMTPProtocolError):
        smtp.noop()
    assert time.monotonic() - began < FAST
    assert_dead(smtp, server)


def test_a_reply_nobody_asked_for_kills_the_session(scripted_server: ScriptedFactory) -> None:
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.reply(b"NOOP", b"250 ok\r\n250 and a forged extra\r\n")
        peer.stall()

    server = scripted_server(script)
    smtp = session(server)
    smtp.start()
    smtp.noop()
    with pytest.raises(SMTPProtocolError, match="nobody asked"):
        smtp.noop()
    assert_dead(smtp, server)


def test_a_failing_message_source_never_ends_the_message(scripted_server: ScriptedFactory) -> None:
    def script(peer: Peer) -> None:
        until("data")(peer)
        peer.send(b"354 go\r\n")
        peer.expect_eof()

    def failing() -> Iterator[bytes]:
        yield b"Subject: half\r\n\r\nfirst half\r\n"
        raise OSError("disk gone")

    server = scripted_server(script)
    smtp = session(server)
    smtp.start()
    with pytest.raises(OSError, match="disk gone"):
        smtp.send_message(failing(), "a@b.test", "c@d.test")
    assert_dead(smtp, server)
    # A truncated message was never ended with ".": the server delivers nothing.
    assert not server.peer.received.endswith(b"\r\n.\r\n")


def test_an_error_in_the_stream_block_never_ends_the_message(
    scripted_server: ScriptedFactory,
) -> None:
    def script(peer: Peer) -> None:
        until("data")(peer)
        peer.send(b"354 go\r\n")
        peer.expect_eof()

    server = scripted_server(script)
    smtp = session(server)
    smtp.start()
    with (
        pytest.raises(RuntimeError, match="caller"),
        smtp.open_message_stream("a@b.test", "c@d.test") as f,
    ):
        f.write(b"Subject: half\r\n\r\n")
        raise RuntimeError("the caller failed")
    assert f.response is None
    assert_dead(smtp, server)
    assert b"\r\n.\r\n" not in server.peer.received


def test_errors_are_smtp_errors_for_one_except_clause(scripted_server: ScriptedFactory) -> None:
    server = scripted_server(then_close(until("ehlo")))
    smtp = session(server)
    smtp.start()
    with pytest.raises(SMTPError):
        smtp.noop()
