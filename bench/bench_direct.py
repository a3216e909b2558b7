"""``direct``: ``sendmail -t -i`` in direct mode against msmtp, one 2 KB message each.

What it measures: the wall time of the whole command, from exec to exit, for a 2 KB
message read from stdin with ``-t`` and relayed to ``smtp-sink`` on 127.0.0.1 — the
latency a PHP page or a cron job waits for. msmtp is the peer: a C program doing the
same job with the same flags. Runs alternate (msmtp, sendmail, msmtp, …) after a
warm-up, and the sink's counter is checked, so a run that exits 0 without
delivering cannot pass. Peak RSS of each command is reported as well.

Why: issue 3 asks for a ratio of at most 1.0 (pysendmail no slower than msmtp). Most
of msmtp's time on loopback is a delayed-ACK stall, which a client avoids by writing
each command in one ``send`` with ``TCP_NODELAY``.

The pysendmail side runs ``sendmail`` next to the benchmark's interpreter (or the
one given with ``--sendmail``); until that command works, this prints "pysendmail
sendmail not available yet" and reports msmtp alone.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from harness import (
    WORK_DIR,
    BenchError,
    Command,
    Section,
    Sink,
    Timings,
    measure,
    time_commands,
)
from tools import Tools

NAME = "direct"
SUMMARY = "sendmail -t -i < 2 KB in direct mode vs msmtp, one message per run"
TARGET_RATIO = 1.0
SENDER = "bench-sender@example.com"


def default_sendmail() -> Path:
    """The ``sendmail`` script installed beside the interpreter running the benchmark."""
    return Path(sys.executable).parent / "sendmail"


def message_2k(directory: Path) -> Path:
    """A 2 KB message with From, To and Cc headers (for ``-t``), LF line endings."""
    head = (
        f"From: Bench Sender <{SENDER}>\n"
        "To: Bench Recipient <bench-recipient@example.com>\n"
        "Cc: bench-copy@example.com\n"
        "Subject: direct mode benchmark\n"
        "Date: Sat, 29 Nov 2025 12:00:00 +0000\n"
        "Message-ID: <bench.direct@example.com>\n"
        "\n"
    ).encode()
    line = b"A line of text of a small message, as cron or a web page would send.\n"
    body = b".a dot-stuffed line\n"
    while len(head) + len(body) + len(line) <= 2048:
        body += line
    path = directory / "direct-2k.eml"
    path.write_bytes(head + body + b"-" * (2048 - len(head) - len(body) - 1) + b"\n")
    return path


def msmtp_command(tools: Tools, port: int, directory: Path, message: Path) -> Command:
    """msmtp with the server given on its command line, no TLS, no AUTH.

    With ``--host`` msmtp takes its settings from the command line alone; the private
    config file given with ``-C`` (mode 0600, as msmtp demands) only keeps it from
    reading the user's ``~/.msmtprc``.
    """
    config = directory / "msmtprc"
    config.write_text("defaults\nsyslog off\n")
    config.chmod(0o600)
    argv = tools.msmtp.argv(
        "-C",
        str(config),
        "--host=127.0.0.1",
        f"--port={port}",
        "--auth=off",
        "--tls=off",
        "--domain=bench.invalid",
        "-f",
        SENDER,
        "-t",
    )
    return Command("msmtp -t", tuple(argv), env=tools.msmtp.env(), stdin=message)


def sendmail_command(sendmail: Path, port: int, directory: Path, message: Path) -> Command:
    """pysendmail's sendmail in direct mode, relaying to the sink with no TLS."""
    config = directory / "pysendmail.toml"
    config.write_text(
        "[general]\n"
        'mode = "direct"\n'
        'hostname = "bench.invalid"\n'
        'domain = "example.com"\n'
        f'queue_dir = "{directory / "spool"}"\n\n'
        "[[relay]]\n"
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        'tls = "none"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSENDMAIL_")}
    argv = (str(sendmail), "-C", str(config), "-f", SENDER, "-t", "-i")
    return Command("sendmail -t -i (direct)", argv, env=env, stdin=message)


def probe(cmd: Command) -> str | None:
    """None when ``cmd`` runs and exits 0, else why not (one line)."""
    if not Path(cmd.argv[0]).exists():
        return f"{cmd.argv[0]} does not exist"
    m = measure(cmd.argv, env=cmd.env, stdin=cmd.stdin, timeout_s=30)
    if m.returncode != 0:
        lines = m.stderr.decode(errors="replace").strip().splitlines()
        return f"exit {m.returncode}: {lines[-1] if lines else '(no stderr)'}"
    return None


def run(tools: Tools, *, rounds: int = 30, sendmail: Path | None = None) -> Section:
    """Time msmtp and (when it works) pysendmail's sendmail, alternating."""
    sendmail = sendmail or default_sendmail()
    section = Section(
        title="direct: sendmail -t -i < 2 KB, direct mode, against msmtp",
        command=".venv/bin/python bench/run.py direct",
        header=("command", "wall time, ms: median (min–max, n)", "ratio to msmtp", "peak RSS"),
    )
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=WORK_DIR, prefix="direct-") as tmp,
        Sink(tools.smtp_sink) as sink,
    ):
        directory = Path(tmp)
        message = message_2k(directory)
        msmtp = msmtp_command(tools, sink.port, directory, message)
        pysendmail = sendmail_command(sendmail, sink.port, directory, message)
        why = probe(msmtp)
        if why is not None:
            raise BenchError(f"msmtp does not run: {why}")
        sink.expect_messages(1)
        why_not = probe(pysendmail)
        commands = [msmtp]
        if why_not is None:
            commands.append(pysendmail)
            sink.expect_messages(2)
        else:
            print(
                f"bench direct: pysendmail sendmail not available yet ({why_not})", file=sys.stderr
            )
        warmup, rss_runs = 2, 3
        before = sink.messages()
        timings = time_commands(
            commands, rounds=rounds, warmup=warmup, rss_runs=rss_runs, time_budget_s=60
        )
        # One message per run: msmtp -t sends To and Cc in one transaction.
        runs = warmup + len(timings[0].wall_s) + rss_runs
        sink.expect_messages(before + len(commands) * runs)

    base = timings[0].wall.median
    for t in timings:
        section.rows.append(_row(t, base))
    if why_not is None:
        ratio = timings[1].wall.median / base
        section.verdict(
            f"sendmail/msmtp ≤ {TARGET_RATIO} (issue 3): {ratio:.3f}", ratio <= TARGET_RATIO
        )
    else:
        section.verdict(f"sendmail/msmtp ≤ {TARGET_RATIO} (issue 3)", None)
        section.notes.append(f"pysendmail sendmail not available yet: {why_not}")
    section.notes.append(
        "each run: the whole command, exec to exit, with a 2,048-byte message on stdin "
        "(From, To, Cc; LF endings) relayed to smtp-sink on 127.0.0.1 (PIPELINING "
        f"offered, no TLS, no AUTH); runs alternate after {warmup} warm-up runs each; "
        "the sink's message counter is checked at the end"
    )
    section.notes.append(
        "msmtp: `LD_LIBRARY_PATH=bench/.tools/root/usr/lib/x86_64-linux-gnu "
        "bench/.tools/root/usr/bin/msmtp -C msmtprc --host=127.0.0.1 --port=PORT "
        f"--auth=off --tls=off --domain=bench.invalid -f {SENDER} -t < direct-2k.eml`"
    )
    section.notes.append(
        f"sendmail: `{sendmail} -C pysendmail.toml -f {SENDER} -t -i < direct-2k.eml` "
        '(`[general] mode = "direct"`, `[[relay]] host = "127.0.0.1" port = PORT tls = "none"`)'
    )
    return section


def _row(t: Timings, base: float) -> tuple[str, str, str, str]:
    return (
        t.command.label,
        t.wall.fmt(digits=1, scale=1000),
        f"{t.wall.median / base:.2f}",
        f"{t.peak_rss_mib:.1f} MiB",
    )
