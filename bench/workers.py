"""The SMTP clients under test, each run alone in a child process by the benchmarks.

One process per measured run keeps every client's peak memory its own (the parent
reads it with ``wait4``) and keeps one client's warm-up from helping the next. Each
job prints one JSON object on stdout: its timings (wall and CPU, taken around the
work itself, so interpreter start-up and imports are left out), its RSS after the
imports, and its peak RSS (VmHWM).

    python bench/workers.py many pysendmail|smtplib PORT COUNT [--profile FILE]
    python bench/workers.py big  pysendmail|smtplib PORT FILE  [--profile FILE]

Exit status 3 means the client cannot be imported yet (pysendmail.smtp is written
alongside these benchmarks); anything else non-zero is a failure.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
HELO = "bench.invalid"
SENDER = "bench-sender@example.com"
RECIPIENT = "bench-recipient@example.com"
NOT_AVAILABLE = 3


def small_message(size: int = 1024) -> bytes:
    """A plain ~1 KB message with CRLF line endings and one line needing dot-stuffing.

    CRLF input is what smtplib sends unchanged, so neither client is charged for line
    ending conversion here; both must still scan for lines starting with ".".
    """
    head = (
        b"From: Bench Sender <bench-sender@example.com>\r\n"
        b"To: bench-recipient@example.com\r\n"
        b"Subject: benchmark message\r\n"
        b"Date: Sat, 29 Nov 2025 12:00:00 +0000\r\n"
        b"Message-ID: <bench.1@example.com>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n"
        b"\r\n"
    )
    line = b"The quick brown fox jumps over the lazy dog, then rests for a while.\r\n"
    body = b".a line that starts with a dot\r\n"
    while len(head) + len(body) + len(line) <= size:
        body += line
    pad = size - len(head) - len(body) - 2
    return head + body + b"-" * pad + b"\r\n" if pad > 0 else head + body


def cpu_seconds() -> tuple[float, float]:
    """CPU time (user, system) this process has used so far.

    Unlike wall time it does not count waiting for the server or for a core, so it
    shows the client's own cost per message even on a busy machine: user time is the
    Python work, system time the kernel's (on loopback, sending a segment also runs
    the receiving side of TCP in the sender's system time).
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def vm_status(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: now, VmHWM: peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Client:
    """The operations a job needs, over one SMTP session of either library."""

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.port = port
        # Each library is imported only by its own worker, so neither pays for the
        # other's imports in its RSS (smtplib pulls in email, ssl and socket).
        self._pysendmail: Any = None
        self._smtplib: Any = None
        if name == "pysendmail":
            try:
                from pysendmail.smtp import SMTP
            except ImportError as exc:
                print(f"pysendmail.smtp not available yet: {exc}", file=sys.stderr)
                sys.exit(NOT_AVAILABLE)
            self._cls: Any = SMTP
        elif name == "smtplib":
            import smtplib

            self._cls = smtplib.SMTP
        else:
            raise SystemExit(f"unknown client {name!r}")

    def start(self) -> None:
        """Connect and greet (EHLO); no STARTTLS (the sink offers none), no AUTH."""
        if self.name == "pysendmail":
            self._pysendmail = self._cls(LOOPBACK, self.port, starttls=False)
            self._pysendmail.start(helo=HELO)
        else:
            self._smtplib = self._cls(LOOPBACK, self.port, local_hostname=HELO)
            self._smtplib.ehlo()

    def send_bytes(self, message: bytes) -> None:
        """Send one message held in memory."""
        if self._smtplib is not None:
            self._smtplib.sendmail(SENDER, [RECIPIENT], message)
        else:
            self._pysendmail.send_message(message, SENDER, RECIPIENT)

    def send_file(self, path: Path) -> None:
        """Send one message stored in a file, as each library best can.

        pysendmail streams the open file. smtplib has no streaming API: it needs the
        whole message as one bytes object (and copies it while converting line endings
        and dot-stuffing), so it gets the file's bytes, as any caller would have to.
        """
        if self._smtplib is not None:
            self._smtplib.sendmail(SENDER, [RECIPIENT], path.read_bytes())
        else:
            with path.open("rb") as f:
                self._pysendmail.send_message(f, SENDER, RECIPIENT)

    def finish(self) -> None:
        """QUIT and close."""
        if self._smtplib is not None:
            self._smtplib.quit()
        else:
            self._pysendmail.finish()


def profiled(out: str | None, fn: Callable[[], None]) -> None:
    """Run ``fn``, under cProfile writing to ``out`` when given."""
    if out is None:
        fn()
        return
    prof = cProfile.Profile()
    prof.runcall(fn)
    prof.dump_stats(out)


def job_many(client: Client, count: int, profile: str | None) -> dict[str, float | int]:
    """``count`` small messages over one session; times the send loop alone."""
    message = small_message()
    t0 = time.perf_counter()
    client.start()
    t1 = time.perf_counter()

    def loop() -> None:
        for _ in range(count):
            client.send_bytes(message)

    c1 = cpu_seconds()
    profiled(profile, loop)
    t2 = time.perf_counter()
    c2 = cpu_seconds()
    client.finish()
    t3 = time.perf_counter()
    return {
        "messages": count,
        "message_bytes": len(message),
        "loop_s": t2 - t1,
        "loop_user_s": c2[0] - c1[0],
        "loop_sys_s": c2[1] - c1[1],
        "session_s": t3 - t0,
        "msg_per_s": count / (t2 - t1),
    }


def job_big(client: Client, path: Path, profile: str | None) -> dict[str, float | int]:
    """One message from ``path``: connect, send, QUIT; times all of it."""
    t0 = time.perf_counter()

    def session() -> None:
        client.start()
        client.send_file(path)
        client.finish()

    profiled(profile, session)
    return {"send_s": time.perf_counter() - t0, "message_bytes": path.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    """Parse the job, run it, print its JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", choices=["many", "big"])
    parser.add_argument("client", choices=["pysendmail", "smtplib"])
    parser.add_argument("port", type=int)
    parser.add_argument("arg", help="COUNT for many, FILE for big")
    parser.add_argument("--profile", help="write cProfile stats of the measured part here")
    args = parser.parse_args(argv)
    client = Client(args.client, args.port)
    rss_before = vm_status("VmRSS")
    if args.job == "many":
        result = job_many(client, int(args.arg), args.profile)
    else:
        result = job_big(client, Path(args.arg), args.profile)
    result |= {"rss_before_kib": rss_before, "vmhwm_kib": vm_status("VmHWM")}
    print(json.dumps({"client": args.client, "job": args.job, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
