"""Frames between serve and its helper processes: whole, in order, and never too large."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from pysendmail.server.frames import MAX_FRAME, FrameBuffer, FrameError, frame, read_frame


def test_frames_arrive_whole_whatever_the_pieces() -> None:
    items = [("job", n, "a@example.com", ["b@example.org"], None, b"x" * n) for n in range(50)]
    stream = b"".join(frame(item) for item in items)
    for step in (1, 3, 7, 64, 1000, len(stream)):
        buffer = FrameBuffer()
        found: list[object] = []
        for start in range(0, len(stream), step):
            found += buffer.feed(stream[start : start + step])
        assert found == items
        assert buffer.buffer == bytearray()


def test_a_frame_larger_than_the_limit_is_refused_before_it_is_read() -> None:
    head = struct.pack("!I", MAX_FRAME + 1)
    with pytest.raises(FrameError, match="a frame of"):
        FrameBuffer().feed(head)
    left, right = socket.socketpair()
    with left, right:
        left.sendall(head)
        with pytest.raises(FrameError):
            read_frame(right)


def test_read_frame_over_a_socket_and_at_end_of_file() -> None:
    left, right = socket.socketpair()
    with left, right:
        big = ("options", b"y" * (3 << 20))  # larger than one recv

        def send() -> None:
            left.sendall(frame(("first",)) + frame(big))
            left.sendall(frame(("half",))[:3])  # then the peer is gone mid-frame
            left.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        assert read_frame(right) == ("first",)
        assert read_frame(right) == big
        assert read_frame(right) is None  # a frame cut short is the end, not data
        sender.join()
