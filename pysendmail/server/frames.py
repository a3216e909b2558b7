"""Frames between ``serve`` and its helper processes: 4 octets of length, then a pickle.

Only ever over a socket pair between a process and the child it started, with
the same program on both ends: the pickles are our own (the child's end is
its parent; the parent's end is a child it made, running as the same user).
A frame larger than ``MAX_FRAME`` is refused: whoever sent it is not us.
"""

from __future__ import annotations

import pickle
import socket
import struct
import subprocess
import sys

HEAD = struct.Struct("!I")
#: A frame larger than this is not ours: the reader stops.
MAX_FRAME = 64 * 1024 * 1024


class FrameError(Exception):
    """A frame that is not ours (too large)."""


def frame(obj: object) -> bytes:
    """``obj`` as one frame."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEAD.pack(len(data)) + data


def start_helper(module: str, *args: str) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """``python -m module FD args...`` with the other end of a socket pair as FD; its end here.

    The child gets this interpreter, no standard input, and inherits standard
    output and error (its own errors reach serve's log). Raises ``OSError``.
    """
    parent, child = socket.socketpair()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, str(child.fileno()), *args],
            pass_fds=(child.fileno(),),
            stdin=subprocess.DEVNULL,
        )
    except BaseException:
        parent.close()
        raise
    finally:
        child.close()
    return proc, parent


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket) -> object | None:
    """The next frame's object from a blocking socket; ``None`` at end of file."""
    head = _read_exactly(sock, HEAD.size)
    if head is None:
        return None
    size = HEAD.unpack(head)[0]
    if size > MAX_FRAME:
        raise FrameError(f"a frame of {size} octets")
    body = _read_exactly(sock, size)
    if body is None:
        return None
    found: object = pickle.loads(body)  # noqa: S301 - see the module docstring
    return found


class FrameBuffer:
    """Frames out of a byte stream that arrives in pieces (a non-blocking reader)."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[object]:
        """Add ``data``; every frame now complete, in order. Raises ``FrameError``."""
        self.buffer += data
        found: list[object] = []
        while len(self.buffer) >= HEAD.size:
            size = HEAD.unpack_from(self.buffer)[0]
            if size > MAX_FRAME:
                raise FrameError(f"a frame of {size} octets")
            need = HEAD.size + size
            if len(self.buffer) < need:
                break
            found.append(pickle.loads(bytes(self.buffer[HEAD.size : need])))  # noqa: S301
            del self.buffer[:need]
        return found
