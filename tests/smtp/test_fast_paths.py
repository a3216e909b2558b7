"""The fast paths for small messages agree, byte for byte, with the general ones.

``send_message`` with ``bytes`` or ``str`` of up to 64 KiB measures and encodes
the whole message in one step (``ClientProtocol.send_whole_body``) instead of
streaming it through ``BodyEncoder``; the reply parser reads a one-line
printable reply without its general machinery. Both must give exactly what
the general path gives, for any input.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pysendmail.errors import SMTPWriteTimeout
from pysendmail.smtp import SMTP
from pysendmail.smtp.address import Address
from pysendmail.smtp.connection import Connection, Timeouts, Trace
from pysendmail.smtp.encoder import DEFAULT_CHUNK_SIZE, MessageSource, message_size, normalise
from pysendmail.smtp.protocol import ClientProtocol, Data, Ehlo, Mail, Rcpt
from tests.support.smtpd import Peer, ScriptedServer

ScriptedFactory = Callable[..., ScriptedServer]

PIECES = st.one_of(
    st.binary(max_size=30),
    st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"\r\n.", b"\n.\n", b".\r\n", b"\xff"]),
)
MESSAGES = st.lists(PIECES, max_size=20).map(b"".join)


def in_body() -> ClientProtocol:
    """A protocol that has just received 354 to DATA."""
    proto = ClientProtocol()
    proto.receive_data(b"220 mx.test\r\n")
    proto.next_reply()
    proto.send(Ehlo("c.test"))
    proto.receive_data(b"250-mx.test\r\n250 PIPELINING\r\n")
    proto.next_reply()
    proto.send_many([Mail(Address("a@b.test")), Rcpt(Address("c@d.test")), Data()])
    proto.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    for _ in range(3):
        proto.next_reply()
    return proto


@settings(max_examples=300, deadline=None)
@given(MESSAGES)
def test_whole_body_is_the_streamed_body(data: bytes) -> None:
    streamed = in_body()
    wire = streamed.send_body(data) + streamed.end_body()
    whole = in_body()
    assert whole.send_whole_body(data) == wire
    assert whole.body_octets == streamed.body_octets
    measured = in_body()
    assert measured.send_whole_body(normalise(data), normalised=True) == wire
    assert measured.body_octets == streamed.body_octets
    # What send_message declares as SIZE= on its fast path, and on the general one.
    assert len(normalise(data)) == message_size(data) == MessageSource.of(data).size


def test_whole_body_after_streaming_started_keeps_streaming() -> None:
    proto = in_body()
    head = proto.send_body(b"Subject: x\r")
    assert head + proto.send_whole_body(b"\n.dot\n") == b"Subject: x\r\n..dot\r\n.\r\n"


def test_a_source_is_sent_once_also_on_the_whole_body_path() -> None:
    source = MessageSource.of(b"x\r\n")
    assert source.take_whole() == b"x\r\n"
    assert source.take_whole() is None
    with pytest.raises(RuntimeError):
        source.chunks()


def size_checking_session(sizes: list[int]) -> Callable[[Peer], None]:
    def script(peer: Peer) -> None:
        peer.handshake("PIPELINING", "SIZE 1000000")
        for size in sizes:
            peer.expect(f"MAIL FROM:<a@b.test> SIZE={size}\r\n".encode())
            peer.expect(b"RCPT TO:<c@d.test>")
            peer.expect(b"DATA")
            peer.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
            peer.recv_until(b"\r\n.\r\n")
            peer.send(b"250 2.0.0 queued\r\n")
        peer.reply(b"QUIT", b"221 bye\r\n")

    return script


@pytest.mark.parametrize(
    "length", [DEFAULT_CHUNK_SIZE - 1, DEFAULT_CHUNK_SIZE, DEFAULT_CHUNK_SIZE + 1]
)
def test_size_is_the_same_on_both_sides_of_the_fast_path_limit(
    scripted_server: ScriptedFactory, length: int
) -> None:
    # LF line ends: every line grows by one octet on the wire.
    message = (b"x" * 99 + b"\n") * (length // 100) + b"y" * (length % 100)
    assert len(message) == length
    size = len(normalise(message))
    server = scripted_server(size_checking_session([size, size]))
    with SMTP.start(server.host, server.port, starttls=False) as smtp:
        assert smtp.send_message(message, "a@b.test", "c@d.test").response.code == 250
        text = message.decode("ascii")
        assert smtp.send_message(text, "a@b.test", "c@d.test").response.code == 250
    server.wait()


class TrickleSocket:
    """A socket whose buffer takes ten octets per send: every send makes progress."""

    def __init__(self) -> None:
        self.sent = 0

    def getpeername(self) -> tuple[str, int]:
        return ("127.0.0.1", 25)

    def send(self, data: bytes) -> int:
        taken = min(len(data), 10)
        self.sent += taken
        return taken

    def close(self) -> None:
        pass


def test_a_write_that_keeps_progressing_still_ends_at_its_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A plain socket is non-blocking and the write deadline is kept by the
    # connection: it bounds the whole write, as sendall's timeout does, not
    # each send (a server reading a few octets at a time cannot stretch it).
    def wait(self: Connection, sock: object, events: int, timeout: float | None) -> bool:
        if timeout is not None and timeout <= 0:
            return False
        time.sleep(0.01)
        return True

    monkeypatch.setattr(Connection, "_wait", wait)
    sock = TrickleSocket()
    conn = Connection(sock, "mx.test:25", Timeouts(write=0.1), Trace())  # type: ignore[arg-type]
    conn._plain = True
    began = time.monotonic()
    with pytest.raises(SMTPWriteTimeout):
        conn.write(b"x" * 100_000)
    assert 0.1 <= time.monotonic() - began < 1.0
    assert 0 < sock.sent < 100_000
    assert conn.dead == "write timed out"


def test_a_write_timeout_in_a_message_stream_is_the_error_raised(
    scripted_server: ScriptedFactory,
) -> None:
    # The writer's buffer goes to a non-blocking socket through a
    # memoryview; when the write times out, dropping the buffer must not fail
    # on that view (BufferError) and hide the timeout.
    def script(peer: Peer) -> None:
        peer.handshake("PIPELINING")
        peer.expect(b"MAIL")
        peer.expect(b"RCPT")
        peer.expect(b"DATA")
        peer.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
        peer.stall()  # never reads the body

    server = scripted_server(script, receive_buffer=4096)
    smtp = SMTP(server.host, server.port, starttls=False, write_timeout=0.2)
    smtp.start()
    with (
        pytest.raises(SMTPWriteTimeout),
        smtp.open_message_stream("a@b.test", "c@d.test") as f,
    ):
        for _ in range(64 * 1024):
            f.write(b"x" * 1000 + b"\r\n")
    smtp.finish()
