"""``bigmsg``: one 100 MiB message from a file, pysendmail.smtp against smtplib.

What it measures: the peak resident memory (``ru_maxrss`` of the sending process, read
by the parent with ``wait4``; the worker's own VmHWM agrees) and the wall time of
connecting, sending one 100 MiB message from a file and quitting, for each client, to
``smtp-sink`` on 127.0.0.1. The message is text with LF line endings (as a file on
disk has them), lines of about 76 characters, some starting with ".", so both clients
must convert every line ending and dot-stuff.

Why: a 100 MB attachment must not take a small container down. pysendmail streams
the file through its encoder; smtplib cannot stream, so it is given the file's bytes
(what any smtplib caller has to do) and then copies them while converting. Targets
(issue 2): pysendmail's peak RSS below 30 MiB, and its wall time no worse than
smtplib's.
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

from bench_smtp import top_functions
from harness import (
    BENCH_DIR,
    MIB,
    WORK_DIR,
    Measurement,
    Section,
    Sink,
    measure,
    python_cmd,
    summarize,
)
from tools import Tools
from workers import NOT_AVAILABLE

NAME = "bigmsg"
SUMMARY = "one 100 MiB message from a file: peak RSS and wall time, pysendmail.smtp vs smtplib"
SIZE = 100 * MIB
TARGET_RSS_MIB = 30
WORKERS = str(BENCH_DIR / "workers.py")
# Words of the trade, for text that looks like a message body.
# fmt: off
WORDS = (
    "mail", "relay", "queue", "envelope", "sender", "recipient", "header", "body",
    "message", "smarthost", "bounce", "defer", "deliver", "spool", "transfer", "agent",
    "submission", "pipeline", "session", "reply", "status", "extension", "greeting",
    "transaction", "the", "of", "and", "to", "a", "in", "is", "that", "for", "on", "with",
)
# fmt: on


def big_message(size: int = SIZE) -> Path:
    """The test message in bench/.work, made once (deterministic) and reused after.

    Headers, a blank line, then text lines of 60–90 characters ending in LF; about
    one line in 40 starts with "." (and some are a lone "."), which must be stuffed.
    """
    path = WORK_DIR / f"big-{size // MIB}MiB.eml"
    if path.exists() and path.stat().st_size == size:
        return path
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    rng = random.Random(2)
    lines: list[bytes] = []
    for i in range(4096):
        text = ""
        target = rng.randint(60, 90)
        while len(text) < target:
            text += rng.choice(WORDS) + " "
        text = text[:target].rstrip()
        if i % 40 == 7:
            text = "." + text
        elif i % 997 == 13:
            text = "."
        lines.append(text.encode() + b"\n")
    block = b"".join(lines)
    head = (
        b"From: Bench Sender <bench-sender@example.com>\n"
        b"To: bench-recipient@example.com\n"
        b"Subject: a 100 MiB benchmark message\n"
        b"Date: Sat, 29 Nov 2025 12:00:00 +0000\n"
        b"Message-ID: <bench.big@example.com>\n"
        b"MIME-Version: 1.0\n"
        b"Content-Type: text/plain; charset=us-ascii\n"
        b"\n"
    )
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        f.write(head)
        left = size - len(head)
        while left > len(block):
            f.write(block)
            left -= len(block)
        # Fill the rest with whole lines and end on a newline, so the size is exact.
        tail = block[: left - 1]
        f.write(tail + b"\n")
    tmp.replace(path)
    return path


def run_client(sink: Sink, client: str, message: Path, profile: Path | None = None) -> Measurement:
    """One worker process sending ``message`` once with ``client``."""
    argv = python_cmd(WORKERS, "big", client, str(sink.port), str(message))
    if profile is not None:
        argv += ("--profile", str(profile))
    return measure(argv, timeout_s=100, rss=True)


def run(tools: Tools, *, rounds: int = 3, profile: bool = False) -> Section:
    """Send the big message ``rounds`` times with each client, alternating."""
    message = big_message()
    section = Section(
        title="bigmsg: one 100 MiB message from a file",
        command=".venv/bin/python bench/run.py bigmsg",
        header=(
            "client",
            "peak RSS (max of runs)",
            "RSS after imports",
            "send wall time, s: median (min–max, n)",
            "time ratio to smtplib",
        ),
    )
    results: dict[str, list[dict[str, float]]] = {"pysendmail": [], "smtplib": []}
    maxrss: dict[str, list[int]] = {"pysendmail": [], "smtplib": []}
    profile_lines: list[str] = []
    with Sink(tools.smtp_sink) as sink:
        received = 0
        probe = run_client(sink, "pysendmail", message)
        available = probe.returncode == 0
        if available:
            received += 1
        elif probe.returncode != NOT_AVAILABLE:
            probe.check()
        clients = ["pysendmail", "smtplib"] if available else ["smtplib"]
        for r in range(rounds):
            for client in clients if r % 2 == 0 else clients[::-1]:
                m = run_client(sink, client, message).check()
                received += 1
                sink.expect_messages(received, timeout_s=10)
                result = json.loads(m.stdout)
                results[client].append(result)
                # GNU time's ru_maxrss and the worker's own VmHWM measure the same peak;
                # take the larger, to be safe.
                maxrss[client].append(max(m.maxrss_kib or 0, result["vmhwm_kib"]))
        if profile and available:
            with tempfile.NamedTemporaryFile(dir=WORK_DIR, suffix=".prof") as prof:
                run_client(sink, "pysendmail", message, Path(prof.name)).check()
                profile_lines = top_functions(Path(prof.name))

    base = summarize([r["send_s"] for r in results["smtplib"]])
    for client in clients:
        wall = summarize([r["send_s"] for r in results[client]])
        before = max(r["rss_before_kib"] for r in results[client]) / 1024
        section.rows.append(
            (
                "pysendmail.smtp (streams the file)"
                if client == "pysendmail"
                else "smtplib (given the file's bytes)",
                f"{max(maxrss[client]) / 1024:.1f} MiB",
                f"{before:.1f} MiB",
                wall.fmt(digits=2),
                f"{wall.median / base.median:.2f}×",
            )
        )
    if available:
        peak = max(maxrss["pysendmail"]) / 1024
        section.verdict(
            f"pysendmail peak RSS < {TARGET_RSS_MIB} MiB: {peak:.1f} MiB "
            f"(smtplib {max(maxrss['smtplib']) / 1024:.0f} MiB)",
            peak < TARGET_RSS_MIB,
        )
        wall = summarize([r["send_s"] for r in results["pysendmail"]])
        section.verdict(
            f"pysendmail wall time ≤ smtplib's: {wall.median:.2f} s vs {base.median:.2f} s",
            wall.median <= base.median,
        )
    else:
        section.verdict(f"pysendmail peak RSS < {TARGET_RSS_MIB} MiB", None)
        section.verdict("pysendmail wall time ≤ smtplib's", None)
        section.notes.append("pysendmail.smtp not available yet: only smtplib ran")
    section.notes.append(
        f"message: {message.stat().st_size:,} bytes, LF line endings, lines of 60–90 "
        "characters, 1 in 40 starting with '.'; each run is a fresh process: connect, "
        "EHLO, send once, QUIT; wall time covers all of that; peak RSS is the process's "
        f"ru_maxrss; {rounds} rounds alternating after one warm-up run of pysendmail"
    )
    if profile_lines:
        section.notes.append("cProfile of one pysendmail run, by own time:")
        section.notes += [f"  - {line}" for line in profile_lines]
    return section
