"""``startup``: ``sendmail -t -i < 2 KB`` in queue mode against ``python3 -I -c pass``.

What it measures: the wall time and peak RSS of the whole ``sendmail`` command in
queue mode (read a 2 KB message, commit it to the spool, exit) beside the bare
start-up of the interpreter that the ``sendmail`` script runs with (its shebang),
``-I -c pass``: the floor no Python program can beat. Runs alternate after a warm-up.

Why: issue 4 allows the queue-mode hot path at most 1.5× that floor and 25 MiB of
peak RSS. It only holds if the hot path imports little (no pydantic, email, ssl,
asyncio), which this benchmark makes visible.

Issues 3 and 4 ask for a normal (not editable) install: an editable install adds an
import hook to every start. The report says which kind it measured; give the
``sendmail`` of a normal install with ``--sendmail`` to measure that one. Until the
queue mode works, this reports the floor alone.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from bench_direct import default_sendmail, message_2k, probe
from harness import WORK_DIR, BenchError, Command, Section, measure, time_commands
from tools import Tools

NAME = "startup"
SUMMARY = "sendmail -t -i < 2 KB in queue mode vs python3 -I -c pass (same interpreter)"
TARGET_RATIO = 1.5
TARGET_RSS_MIB = 25


def shebang_interpreter(script: Path) -> Path | None:
    """The interpreter named on the first line of ``script`` (None if there is none)."""
    try:
        with script.open("rb") as f:
            first = f.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    return Path(first[2:].decode().split()[0])


def queue_files(spool: Path) -> int:
    """How many committed messages the spool holds (files under queue/)."""
    queue = spool / "queue"
    return sum(1 for p in queue.rglob("*") if p.is_file()) if queue.is_dir() else 0


def install_kind(interpreter: Path) -> str:
    """'editable' or 'normal': how pysendmail is installed for ``interpreter``."""
    code = (
        "import importlib.metadata as m;"
        "print(m.distribution('pysendmail').read_text('direct_url.json') or '{}')"
    )
    m = measure((str(interpreter), "-I", "-c", code), timeout_s=30)
    if m.returncode != 0:
        return "unknown"
    try:
        info = json.loads(m.stdout)
    except json.JSONDecodeError:
        return "unknown"
    return "editable" if info.get("dir_info", {}).get("editable") else "normal"


def run(tools: Tools, *, rounds: int = 40, sendmail: Path | None = None) -> Section:
    """Time the interpreter floor and (when it works) queue-mode sendmail, alternating."""
    del tools  # no peer: the floor is the interpreter itself
    sendmail = sendmail or default_sendmail()
    interpreter = shebang_interpreter(sendmail) or Path(default_sendmail().parent / "python")
    section = Section(
        title="startup: sendmail -t -i < 2 KB in queue mode, against python3 -I -c pass",
        command=".venv/bin/python bench/run.py startup",
        header=("command", "wall time, ms: median (min–max, n)", "ratio to floor", "peak RSS"),
    )
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=WORK_DIR, prefix="startup-") as tmp:
        directory = Path(tmp)
        message = message_2k(directory)
        config = directory / "pysendmail.toml"
        config.write_text(
            "[general]\n"
            'mode = "queue"\n'
            'hostname = "bench.invalid"\n'
            'domain = "example.com"\n'
            f'queue_dir = "{directory / "spool"}"\n\n'
            "[[relay]]\n"
            'host = "127.0.0.1"\n'
            "port = 25\n"  # never contacted: queue mode only commits
            'tls = "none"\n'
        )
        floor = Command("python3 -I -c pass", (str(interpreter), "-I", "-c", "pass"))
        candidate = Command(
            "sendmail -t -i (queue)",
            (str(sendmail), "-C", str(config), "-t", "-i"),
            stdin=message,
        )
        why_not = probe(candidate)
        commands = [floor] if why_not else [floor, candidate]
        warmup, rss_runs = 3, 3
        timings = time_commands(
            commands, rounds=rounds, warmup=warmup, rss_runs=rss_runs, time_budget_s=60
        )
        if why_not is None:
            # Exit 0 must mean a committed message: count the queue files.
            runs = 1 + warmup + len(timings[1].wall_s) + rss_runs
            queued = queue_files(directory / "spool")
            if queued != runs:
                raise BenchError(f"{runs} sendmail runs exited 0 but {queued} messages are queued")

    base = timings[0].wall.median
    for t in timings:
        section.rows.append(
            (
                t.command.label,
                t.wall.fmt(digits=1, scale=1000),
                f"{t.wall.median / base:.2f}",
                f"{t.peak_rss_mib:.1f} MiB",
            )
        )
    if why_not is None:
        ratio = timings[1].wall.median / base
        rss = timings[1].peak_rss_mib
        section.verdict(
            f"sendmail/floor ≤ {TARGET_RATIO} (issue 4): {ratio:.3f}", ratio <= TARGET_RATIO
        )
        section.verdict(
            f"peak RSS ≤ {TARGET_RSS_MIB} MiB (issue 4): {rss:.1f} MiB", rss <= TARGET_RSS_MIB
        )
        section.notes.append(f"pysendmail install measured: {install_kind(interpreter)}")
    else:
        section.verdict(f"sendmail/floor ≤ {TARGET_RATIO} (issue 4)", None)
        section.notes.append(f"pysendmail sendmail (queue mode) not available yet: {why_not}")
    section.notes.append(
        f"interpreter: {interpreter} (the shebang of {sendmail}); runs alternate after "
        "3 warm-up runs each; every sendmail run's message is counted in the spool"
    )
    return section
