"""``smtp``: many small messages over one connection, pysendmail.smtp against smtplib.

What it measures: messages per second of one client process sending 2,000 messages
of 1 KB each over one SMTP session to ``smtp-sink`` on 127.0.0.1, timed around the
send loop alone (connect, EHLO and QUIT excluded). This is the cost per message of
the session core — command formatting, reply parsing, dot-stuffing, and above all
round trips: with PIPELINING, MAIL, RCPT and DATA can go out in one write and their
replies come back together, where smtplib waits for each reply in turn.

Why: the runner drains the queue over one reused connection (issue 4), so this rate
bounds how fast pysendmail empties a backlog. Target (issue 2): at least 1.6×
smtplib, measured in the same run with the runs alternating. Postfix's C load
generator ``smtp-source`` is the reference ceiling, both as the issue runs it (a new
connection per message) and with ``-d`` (one connection, like the clients here).

Placement: everything runs twice, once with the sink and the client pinned to the
same core (a round trip costs two context switches: this measures the CPU spent per
message, and is how DESIGN.md's figures were taken) and once on separate cores (a
round trip costs inter-processor wake-ups, as latency on a real link would: this is
where PIPELINING pays). Left unpinned, the scheduler picks either at random and the
rates swing fivefold between runs.
"""

from __future__ import annotations

import json
import os
import pstats
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from harness import (
    BENCH_DIR,
    WORK_DIR,
    BenchError,
    Measurement,
    Section,
    Sink,
    Summary,
    measure,
    pinned,
    python_cmd,
    summarize,
)
from tools import Tools
from workers import NOT_AVAILABLE

NAME = "smtp"
SUMMARY = "2,000 × 1 KB messages over one connection: pysendmail.smtp vs smtplib"
COUNT = 2000
TARGET_RATIO = 1.6
WORKERS = str(BENCH_DIR / "workers.py")


@dataclass
class Series:
    """Rates (msg/s) and peak RSS (KiB) of one subject over the rounds."""

    label: str
    rates: list[float] = field(default_factory=list)
    user_us: list[float] = field(default_factory=list)
    sys_us: list[float] = field(default_factory=list)
    maxrss_kib: list[int] = field(default_factory=list)

    @property
    def rate(self) -> Summary:
        """Messages per second, over the rounds."""
        return summarize(self.rates)


def run_client(sink: Sink, client: str, count: int, profile: Path | None = None) -> Measurement:
    """One worker process sending ``count`` messages with ``client``."""
    argv = python_cmd(WORKERS, "many", client, str(sink.port), str(count))
    if profile is not None:
        argv += ("--profile", str(profile))
    return measure(argv, timeout_s=90)


def run_source(sink: Sink, tools: Tools, count: int, *, one_connection: bool) -> Measurement:
    """smtp-source sending ``count`` messages of 1 KB payload, one session at a time."""
    args = ["-s", "1", "-m", str(count), "-l", "1024"]
    if one_connection:
        args.insert(0, "-d")
    argv = tools.smtp_source.argv(*args, f"127.0.0.1:{sink.port}")
    return measure(argv, env=tools.smtp_source.env(), timeout_s=90).check()


def top_functions(stats_file: Path, limit: int = 12) -> list[str]:
    """The functions with the most own time in a cProfile dump, one line each."""
    stats = pstats.Stats(str(stats_file))
    entries = sorted(
        stats.stats.items(),  # type: ignore[attr-defined]
        key=lambda item: item[1][2],  # tottime
        reverse=True,
    )
    lines = []
    for (filename, lineno, func), (_cc, ncalls, tottime, cumtime, _callers) in entries[:limit]:
        where = "/".join(Path(filename).parts[-2:]) + f":{lineno}" if lineno else "builtin"
        lines.append(
            f"{func} ({where}): {tottime * 1000:.0f} ms own, {cumtime * 1000:.0f} ms cum, "
            f"{ncalls} calls"
        )
    return lines


@dataclass(frozen=True)
class Placement:
    """Where the sink and the clients run."""

    key: str
    label: str
    sink_cpus: set[int]
    client_cpus: set[int]


def placements() -> list[Placement]:
    """Same core, and (when there are two cores) separate cores."""
    cpus = sorted(os.sched_getaffinity(0))
    same = Placement("same", "same core", {cpus[0]}, {cpus[0]})
    if len(cpus) < 2:
        return [same]
    return [same, Placement("split", "separate cores", {cpus[1]}, {cpus[0]})]


def run(tools: Tools, *, rounds: int = 5, profile: bool = False) -> Section:
    """Alternate the clients for ``rounds`` rounds in each placement; report both."""
    section = Section(
        title="smtp: one connection, 2,000 messages of 1 KB",
        command=".venv/bin/python bench/run.py smtp",
        header=(
            "placement",
            "subject",
            "msg/s: median (min–max, n)",
            "ratio to smtplib",
            "client CPU µs/msg: user / sys (median)",
            "peak RSS (VmHWM)",
        ),
    )
    available = True
    profile_lines: list[str] = []
    for place in placements():
        series, available, lines = run_placement(tools, place, rounds, profile)
        profile_lines = profile_lines or lines
        base = series["smtplib"].rate.median
        for s in series.values():
            if not s.rates:
                continue
            section.rows.append(
                (
                    place.label,
                    s.label,
                    s.rate.fmt(digits=0),
                    f"{s.rate.median / base:.2f}×",
                    f"{summarize(s.user_us).median:.0f} / {summarize(s.sys_us).median:.0f}"
                    if s.user_us
                    else "—",
                    f"{max(s.maxrss_kib) / 1024:.1f} MiB" if s.maxrss_kib else "—",
                )
            )
        if available:
            ours = series["pysendmail"].rate.median
            section.verdict(
                f"{place.label}: pysendmail/smtplib ≥ {TARGET_RATIO}× (issue 2): "
                f"{ours / base:.2f}×",
                ours / base >= TARGET_RATIO,
            )
            ceiling = series["source-d"].rate.median
            section.verdict(
                f"{place.label}: pysendmail ≥ smtp-source's rate on one connection "
                f"(DESIGN.md budget): {ours / ceiling:.2f}× smtp-source -d",
                ours >= ceiling,
            )
    if not available:
        section.verdict(f"pysendmail/smtplib ≥ {TARGET_RATIO}×", None)
        section.notes.append("pysendmail.smtp not available yet: only smtplib and smtp-source ran")
    section.notes.append(
        f"each round: one fresh process per client sending {COUNT} messages of 1,024 "
        "bytes (CRLF, one dot-stuffed line) to smtp-sink on 127.0.0.1 with PIPELINING "
        "offered; rate = messages / time of the send loop (session set-up excluded); "
        "smtp-source's rate = messages / wall time of its process; client CPU = user and "
        "system time of the client process during the send loop, per message (robust to "
        "a busy machine, unlike the rate); "
        f"{rounds} rounds alternating, after a 200-message warm-up of each client; the "
        "sink's counter is checked after every run; same core = sink and client pinned "
        "to CPU 0, separate cores = sink on CPU 1, client on CPU 0"
    )
    if profile_lines:
        section.notes.append("cProfile of one pysendmail round (same core), by own time:")
        section.notes += [f"  - {line}" for line in profile_lines]
    return section


def run_placement(
    tools: Tools, place: Placement, rounds: int, profile: bool
) -> tuple[dict[str, Series], bool, list[str]]:
    """Every subject, ``rounds`` rounds alternating, in one placement."""
    series = {
        "pysendmail": Series("pysendmail.smtp.SMTP.send_message"),
        "smtplib": Series("smtplib.SMTP.sendmail"),
        "source-d": Series("smtp-source -d (C, one connection, no PIPELINING)"),
        "source": Series("smtp-source (C, a connection per message)"),
    }
    with pinned(place.sink_cpus), Sink(tools.smtp_sink) as sink, pinned(place.client_cpus):
        received = 0

        def counted(m: Measurement, count: int) -> Measurement:
            nonlocal received
            received += count
            sink.expect_messages(received)
            return m

        # Warm-up (not counted): page cache, sink, and whether pysendmail is there yet.
        probe = run_client(sink, "pysendmail", 200)
        available = probe.returncode == 0
        if available:
            counted(probe, 200)
        elif probe.returncode != NOT_AVAILABLE:
            probe.check()
        counted(run_client(sink, "smtplib", 200).check(), 200)

        clients = ["pysendmail", "smtplib"] if available else ["smtplib"]
        for r in range(rounds):
            order = clients if r % 2 == 0 else clients[::-1]
            for client in order:
                m = counted(run_client(sink, client, COUNT).check(), COUNT)
                result = json.loads(m.stdout)
                series[client].rates.append(result["msg_per_s"])
                series[client].user_us.append(result["loop_user_s"] / COUNT * 1e6)
                series[client].sys_us.append(result["loop_sys_s"] / COUNT * 1e6)
                series[client].maxrss_kib.append(result["vmhwm_kib"])
            sources = [("source-d", True)]
            if place.key == "same":  # the command; its connects dominate anyway
                sources.append(("source", False))
            for key, one in sources:
                m = counted(run_source(sink, tools, COUNT, one_connection=one), COUNT)
                series[key].rates.append(COUNT / m.wall_s)

        lines: list[str] = []
        if profile and available and place.key == "same":
            with tempfile.NamedTemporaryFile(dir=WORK_DIR, suffix=".prof") as prof:
                counted(run_client(sink, "pysendmail", COUNT, Path(prof.name)).check(), COUNT)
                lines = top_functions(Path(prof.name))
    if not series["smtplib"].rates:
        raise BenchError("smtplib did not run")
    return series, available, lines
