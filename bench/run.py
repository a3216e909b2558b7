"""Run pysendmail's benchmarks (``make bench``) and print the results as Markdown.

    .venv/bin/python bench/run.py [NAME ...] [--rounds N] [--profile] [--output FILE]

With no NAME, every benchmark runs. Each one compares pysendmail with a peer in the
same run (alternating, so both see the same machine) and states its target from the
issues and DESIGN.md ("Performance budgets") as met, missed, or not measured yet.
The peers (Postfix's smtp-sink and smtp-source, msmtp, nullmailer) are fetched on
first use by ``bench/tools.py`` into ``bench/.tools``; generated inputs go to
``bench/.work``. All traffic stays on 127.0.0.1.

Exit status: 0 when every selected benchmark ran (a missed target is reported, not an
error; ``--strict`` makes it one), 1 when one could not run.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_bigmsg
import bench_bigqueue
import bench_direct
import bench_drain
import bench_serve
import bench_smtp
import bench_startup
import tools
from harness import BenchError, Section, machine_lines

Runner = Callable[[tools.Tools, argparse.Namespace], Section]

BENCHMARKS: dict[str, tuple[str, Runner]] = {
    bench_smtp.NAME: (
        bench_smtp.SUMMARY,
        lambda t, a: bench_smtp.run(t, rounds=a.rounds or 5, profile=a.profile),
    ),
    bench_bigmsg.NAME: (
        bench_bigmsg.SUMMARY,
        lambda t, a: bench_bigmsg.run(t, rounds=a.rounds or 3, profile=a.profile),
    ),
    bench_direct.NAME: (
        bench_direct.SUMMARY,
        lambda t, a: bench_direct.run(t, rounds=a.rounds or 30, sendmail=a.sendmail),
    ),
    bench_startup.NAME: (
        bench_startup.SUMMARY,
        lambda t, a: bench_startup.run(t, rounds=a.rounds or 40, sendmail=a.sendmail),
    ),
    bench_bigqueue.NAME: (
        bench_bigqueue.SUMMARY,
        lambda t, a: bench_bigqueue.run(t, rounds=a.rounds or 3, sendmail=a.sendmail),
    ),
    bench_drain.NAME: (
        bench_drain.SUMMARY,
        lambda t, a: bench_drain.run(
            t,
            rounds=a.rounds or 3,
            count=a.count or bench_drain.COUNT,
            pysendmail=a.pysendmail,
            profile=a.profile,
        ),
    ),
    bench_serve.NAME: (
        bench_serve.SUMMARY,
        lambda t, a: bench_serve.run(t, rounds=a.rounds or 3),
    ),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: which benchmarks, how many rounds, where to write."""
    parser = argparse.ArgumentParser(
        description="pysendmail benchmarks",
        epilog="benchmarks: "
        + "; ".join(f"{name}: {summary}" for name, (summary, _) in BENCHMARKS.items()),
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default all)")
    parser.add_argument("--rounds", type=int, help="rounds per subject (default: per benchmark)")
    parser.add_argument(
        "--profile", action="store_true", help="add a cProfile of pysendmail's run to the report"
    )
    parser.add_argument(
        "--sendmail",
        type=Path,
        help="the sendmail command to measure (default: the one beside this Python)",
    )
    parser.add_argument(
        "--pysendmail",
        type=Path,
        help="the pysendmail command to measure (default: a normal install of HEAD)",
    )
    parser.add_argument("--count", type=int, help="messages to drain (drain; default 5,000)")
    parser.add_argument("--output", type=Path, help="also write the Markdown report here")
    parser.add_argument("--strict", action="store_true", help="exit 2 when a target is missed")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    return args


def stop_on_signals() -> None:
    """Turn SIGTERM and SIGINT into exceptions, so every sink and child is stopped.

    Python's default SIGTERM ends the process at once, leaving smtp-sink and the
    measured child running; and a shell that starts us in the background hands us
    SIGINT ignored. Raising instead runs every ``with`` block's clean-up.
    """

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks and print (and optionally write) the report."""
    stop_on_signals()
    args = parse_args(argv)
    names = args.names or list(BENCHMARKS)
    try:
        peers = tools.ensure()
    except (tools.ToolsError, subprocess.CalledProcessError) as exc:
        print(f"bench: cannot fetch the peers: {exc}", file=sys.stderr)
        return 1
    report = ["# Benchmark run", "", *machine_lines(), ""]
    print("\n".join(report), flush=True)
    failed = missed = False
    for name in names:
        summary, runner = BENCHMARKS[name]
        print(f"bench: running {name}: {summary}", file=sys.stderr, flush=True)
        start = time.monotonic()
        try:
            section = runner(peers, args)
        except BenchError as exc:
            text = f"## {name}\n\nCould not run: {exc}\n"
            failed = True
        else:
            text = section.markdown()
            missed |= any(met is False for _, met in section.verdicts)
        text += f"\n_{name} took {time.monotonic() - start:.0f} s._\n"
        print(text, flush=True)
        report.append(text)
    if args.output is not None:
        args.output.write_text("\n".join(report))
    if failed:
        return 1
    return 2 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
