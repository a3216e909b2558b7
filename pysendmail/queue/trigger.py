"""The trigger: how a commit wakes a runner that is waiting, at once and without a daemon.

``root/trigger`` is a FIFO (mode 0622, so every submitter may poke it). A
commit writes one byte into it without blocking (``Queue.poke``: if nobody
reads, the open fails with ENXIO and nothing happens). A runner that watches
(``pysendmail queue run --watch``, the sidecar) holds it open and sleeps in
``select`` until a byte arrives or its timeout passes. systemd's .path unit
watches the queue and maildrop folders instead and needs none of this.
nullmailer's ``trigger`` is the model.

What it must never do: block a submitter, or wake for anything but a poke
(the reader also holds a writer open, so the FIFO never reports end of file).

SECURITY: the FIFO is opened with ``O_NOFOLLOW`` and checked with ``fstat``;
its content is never interpreted, only drained.
"""

import os
import stat

from pysendmail.errors import CantCreateError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class Trigger:
    """The reading end of the trigger FIFO, for a runner that waits to be poked."""

    __slots__ = ("fd",)

    def __init__(self, path: str) -> None:
        # O_RDWR keeps a writer open ourselves: the FIFO never reports end of
        # file, and pokers never see ENXIO while we watch.
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC)
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.close(fd)
            raise CantCreateError(f"{path}: not a FIFO; run `pysendmail queue init`")
        self.fd = fd

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a poke; True if poked (all pokes are consumed)."""
        import select

        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return False
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass
        return True

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> "Trigger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
