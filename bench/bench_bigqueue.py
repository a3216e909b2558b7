"""``bigqueue``: one 100 MiB message queued by ``sendmail``, then relayed by ``queue run``.

What it measures: the peak RSS (``ru_maxrss`` through GNU time) and wall time of each
stage of the queue path for one 100 MiB message (bench_bigmsg's: text, LF line
endings, some lines starting with "."), as separate commands:

1. ``sendmail -f SENDER -i RCPT < big.eml`` in queue mode: the intake streams stdin
   into the queue file (CRLF line endings, prelude), fsyncs and commits it;
2. ``pysendmail queue run``: claims it and relays it to ``smtp-sink`` on 127.0.0.1,
   streamed from the queue file (a message this big is never held in memory);
3. for completeness, ``sendmail -f SENDER -i RCPT < big.eml`` in direct mode: relayed
   at once, no queue.

Why: issue 4 asks for a peak RSS below 30 MiB at every stage (DESIGN.md: smtplib
takes 389 MiB for the same message, msmtp 8 MiB).

The commands are those of a normal install (``bench_startup.normal_install``: HEAD in
``bench/.work/install``), prepared as an install would be (``queue init``, ``config
check``). Each round runs the three stages in turn; the sink's counter and the
emptied queue are checked after each.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench_bigmsg import big_message
from bench_startup import normal_install, prepare
from harness import WORK_DIR, BenchError, Section, Sink, measure, summarize
from tools import Tools

NAME = "bigqueue"
SUMMARY = "one 100 MiB message: sendmail (queue mode), queue run, direct: peak RSS of each"
TARGET_RSS_MIB = 30
SENDER = "bench-sender@example.com"
RECIPIENT = "bench-recipient@example.com"


@dataclass
class Stage:
    """One stage's runs."""

    label: str
    command: str
    wall_s: list[float] = field(default_factory=list)
    maxrss_kib: list[int] = field(default_factory=list)


def write_config(path: Path, spool: Path, port: int, mode: str) -> None:
    """A configuration relaying to the sink, in ``mode``, logging to stderr."""
    path.write_text(
        "[general]\n"
        f'mode = "{mode}"\n'
        'hostname = "bench.invalid"\n'
        'domain = "example.com"\n'
        f'queue_dir = "{spool}"\n'
        'max_message_size = "200M"\n\n'
        "[log]\n"
        'target = "stderr"\n\n'
        "[[relay]]\n"
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        'tls = "none"\n'
    )


def run(tools: Tools, *, rounds: int = 3, sendmail: Path | None = None) -> Section:
    """Queue, relay and send directly the 100 MiB message ``rounds`` times."""
    sendmail = sendmail or normal_install()
    admin = sendmail.parent / "pysendmail"
    message = big_message()
    section = Section(
        title="bigqueue: one 100 MiB message queued, then relayed (and sent directly)",
        command=".venv/bin/python bench/run.py bigqueue",
        header=("stage", "peak RSS (max of runs)", "wall time, s: median (min–max, n)"),
    )
    queued = Stage("1. sendmail -i (queue mode), stdin from the file", "sendmail")
    relayed = Stage("2. pysendmail queue run (relays it to smtp-sink)", "queue run")
    direct = Stage("3. sendmail -i (direct mode), stdin from the file", "direct")
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=WORK_DIR, prefix="bigqueue-") as tmp,
        Sink(tools.smtp_sink) as sink,
    ):
        directory = Path(tmp)
        spool = directory / "spool"
        queue_config = directory / "queue.toml"
        direct_config = directory / "direct.toml"
        write_config(queue_config, spool, sink.port, "queue")
        write_config(direct_config, directory / "direct-spool", sink.port, "direct")
        prepared = prepare(sendmail, queue_config)
        prepare(sendmail, direct_config)
        for r in range(rounds):
            print(f"bench bigqueue: round {r + 1} of {rounds}", file=sys.stderr)
            m = measure(
                (str(sendmail), "-C", str(queue_config), "-f", SENDER, "-i", RECIPIENT),
                stdin=message,
                rss=True,
                timeout_s=300,
            ).check()
            files = list((spool / "queue").iterdir())
            if len(files) != 1 or files[0].stat().st_size < message.stat().st_size:
                raise BenchError(f"sendmail exited 0 but the queue holds {files}")
            _record(queued, m.wall_s, m.maxrss_kib)
            before = sink.messages()
            m = measure(
                (str(admin), "-C", str(queue_config), "queue", "run"), rss=True, timeout_s=300
            ).check()
            sink.expect_messages(before + 1, timeout_s=10)
            if list((spool / "queue").iterdir()):
                raise BenchError("queue run exited 0 but left the message in the queue")
            _record(relayed, m.wall_s, m.maxrss_kib)
            before = sink.messages()
            m = measure(
                (str(sendmail), "-C", str(direct_config), "-f", SENDER, "-i", RECIPIENT),
                stdin=message,
                rss=True,
                timeout_s=300,
            ).check()
            sink.expect_messages(before + 1, timeout_s=10)
            _record(direct, m.wall_s, m.maxrss_kib)

    for stage in (queued, relayed, direct):
        rss = max(stage.maxrss_kib) / 1024
        section.rows.append((stage.label, f"{rss:.1f} MiB", summarize(stage.wall_s).fmt(digits=2)))
        section.verdict(
            f"{stage.command}: peak RSS < {TARGET_RSS_MIB} MiB (issue 4): {rss:.1f} MiB",
            rss < TARGET_RSS_MIB,
        )
    section.notes.append(
        f"message: {message.stat().st_size:,} bytes (bench_bigmsg's: LF line endings, lines "
        "of 60–90 characters, some starting with '.'), given on stdin from the file; one "
        f"recipient; {rounds} rounds of the three stages in turn; peak RSS is each "
        "command's ru_maxrss (GNU time); the sink's counter and the emptied queue are "
        "checked after each stage"
    )
    section.notes.append(
        f"commands (a normal install, {sendmail.parent.parent}): "
        f"`sendmail -C queue.toml -f {SENDER} -i {RECIPIENT} < big.eml`, "
        "`pysendmail -C queue.toml queue run`, "
        f"`sendmail -C direct.toml -f {SENDER} -i {RECIPIENT} < big.eml`; "
        '`[general] max_message_size = "200M"` (the default is 50M), `[log] target = "stderr"`, '
        '`[[relay]] host = "127.0.0.1" port = PORT tls = "none"`; prepared with '
        + " and ".join(prepared)
    )
    return section


def _record(stage: Stage, wall: float, maxrss: int | None) -> None:
    stage.wall_s.append(wall)
    if maxrss is None:
        raise BenchError(f"no peak RSS measured for {stage.label}")
    stage.maxrss_kib.append(maxrss)
