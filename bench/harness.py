"""The shared machinery of every benchmark: a loopback SMTP sink, measured child
processes, A/B timing, statistics and the report.

Every benchmark runs its subjects as child processes, so that each one's peak memory
is its own (read through GNU time, see ``measure``) and no subject inherits another's
warm caches or garbage. Children run in their own session and are killed by
process group if they outlive their time limit; the sink is stopped on every path out
of its ``with`` block. Traffic goes to 127.0.0.1 only.

Nothing here imports pysendmail: the harness must run, and report the peers, while
the code it measures is still being written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tools import ROOT_DIR, Tool

BENCH_DIR = Path(__file__).resolve().parent
WORK_DIR = BENCH_DIR / ".work"
LOOPBACK = "127.0.0.1"
GNU_TIME = ROOT_DIR / "usr/bin/time"
MIB = 1024 * 1024


class BenchError(RuntimeError):
    """A benchmark could not run (a peer failed, a sink did not start, a count is off)."""


# ---------------------------------------------------------------------------
# Measured child processes


@dataclass(frozen=True)
class Measurement:
    """One finished child process: its wall time, exit status, output, maybe peak RSS."""

    argv: tuple[str, ...]
    wall_s: float
    returncode: int
    stdout: bytes
    stderr: bytes
    maxrss_kib: int | None = None

    def check(self) -> Measurement:
        """Return self, or raise BenchError with the child's stderr when it failed."""
        if self.returncode != 0:
            tail = self.stderr.decode(errors="replace").strip().splitlines()[-5:]
            raise BenchError(
                f"{Path(self.argv[0]).name} exited {self.returncode}: " + " | ".join(tail)
            )
        return self


def measure(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: Path | None = None,
    cwd: Path | None = None,
    timeout_s: float = 120.0,
    rss: bool = False,
) -> Measurement:
    """Run ``argv`` to completion and measure its wall time (and, with ``rss``, peak RSS).

    The wall time runs from just before the fork to the child's reaping, so it counts
    the exec and the interpreter's start-up: the cost a caller of the command pays.
    stdout and stderr go to temporary files, so a chatty child never blocks on a pipe.
    The child gets no PYTHON* variables (see ``deployed_env``).

    Peak RSS cannot be read from our own ``wait4``: a child forked from this process
    starts with our pages mapped, and Linux folds that RSS into the child's
    ``ru_maxrss`` at exec, so every child would look at least as big as the benchmark.
    With ``rss`` the command runs under GNU time (``bench/.tools``), whose fork comes
    from a process of about 2 MiB; it reports the command's ``ru_maxrss``. The wrapper
    adds an exec (about a millisecond) to the wall time, so timing runs go without it.
    """
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile(prefix="maxrss-") as rss_file,
        open(stdin if stdin is not None else os.devnull, "rb") as inp,
    ):
        full = list(argv)
        if rss:
            full = [str(GNU_TIME), "--quiet", "-f", "%M", "-o", rss_file.name, "--", *full]
        start = time.perf_counter()
        proc = subprocess.Popen(
            full,
            stdin=inp,
            stdout=out,
            stderr=err,
            env=deployed_env(env),
            cwd=cwd,
            start_new_session=True,
        )
        returncode = _reap(proc, timeout_s)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        maxrss = None
        if rss:
            lines = Path(rss_file.name).read_text().split()
            maxrss = int(lines[-1]) if lines and lines[-1].isdigit() else None
        return Measurement(
            argv=tuple(argv),
            wall_s=wall,
            returncode=returncode,
            stdout=out.read(),
            stderr=err.read(),
            maxrss_kib=maxrss,
        )


def deployed_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (or ours) without PYTHON* variables, as on a machine the command is deployed on.

    A development shell may set PYTHONDONTWRITEBYTECODE (this workspace does): every
    run would then compile the modules it imports from source, which no installed
    program does, and start-up figures would be inflated by tens of milliseconds.
    """
    source = os.environ if env is None else env
    return {k: v for k, v in source.items() if not k.startswith("PYTHON")}


def _reap(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    """Wait for ``proc`` and return its exit code; kill its process group past the timeout.

    The wait blocks, so the wall time is exact; a timer thread does the killing.
    """
    expired = threading.Event()

    def kill() -> None:
        expired.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout_s, kill)
    timer.start()
    try:
        returncode = proc.wait()
    except BaseException:  # interrupted: leave no child behind
        kill()
        proc.wait()
        raise
    finally:
        timer.cancel()
    if expired.is_set():
        raise BenchError(f"{proc.args!r} still running after {timeout_s:.0f} s: killed")
    return returncode


# ---------------------------------------------------------------------------
# Statistics


@dataclass(frozen=True)
class Summary:
    """Median and spread (min, max) of a series of samples."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        """The median sample."""
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        """The smallest sample."""
        return min(self.samples)

    @property
    def high(self) -> float:
        """The largest sample."""
        return max(self.samples)

    def fmt(self, unit: str = "", digits: int = 1, scale: float = 1.0) -> str:
        """``median unit (min–max, n=N)``, each value multiplied by ``scale``."""
        m, lo, hi = (v * scale for v in (self.median, self.low, self.high))
        return f"{m:.{digits}f}{unit} ({lo:.{digits}f}–{hi:.{digits}f}, n={len(self.samples)})"


def summarize(samples: Sequence[float]) -> Summary:
    """Summarize a non-empty series of samples."""
    if not samples:
        raise BenchError("no samples to summarize")
    return Summary(tuple(samples))


@dataclass(frozen=True)
class Command:
    """A command under test: a label, its argv, environment and standard input."""

    label: str
    argv: tuple[str, ...]
    env: Mapping[str, str] | None = None
    stdin: Path | None = None
    cwd: Path | None = None


@dataclass
class Timings:
    """What ``time_commands`` measured for one command: wall times and peak RSS."""

    command: Command
    wall_s: list[float] = field(default_factory=list)
    maxrss_kib: list[int] = field(default_factory=list)

    @property
    def wall(self) -> Summary:
        """Wall time per run, in seconds."""
        return summarize(self.wall_s)

    @property
    def peak_rss_mib(self) -> float:
        """The largest peak RSS over the RSS runs, in MiB."""
        if not self.maxrss_kib:
            raise BenchError(f"no RSS measured for {self.command.label}")
        return max(self.maxrss_kib) / 1024


def time_commands(
    commands: Sequence[Command],
    *,
    rounds: int = 20,
    warmup: int = 2,
    rss_runs: int = 3,
    time_budget_s: float = 60.0,
    timeout_s: float = 30.0,
) -> list[Timings]:
    """Time each command ``rounds`` times, alternating (A B A B …), after ``warmup`` runs;
    then run each ``rss_runs`` times more under GNU time for its peak RSS.

    Alternating spreads any drift of the machine (another process, CPU frequency,
    page cache) over every command alike, so that ratios taken in one run are fair.
    Warm-up runs fill the page cache and are not counted. Every run must exit 0.
    The timed loop also stops, with at least three rounds, once ``time_budget_s`` is
    spent. Each command runs ``warmup + rounds + rss_runs`` times in all (fewer rounds
    if the budget ran out): a benchmark that counts deliveries can work it out from
    ``len(timings.wall_s)``.
    """
    for _ in range(warmup):
        for cmd in commands:
            _measure_command(cmd, timeout_s)
    results = [Timings(cmd) for cmd in commands]
    start = time.monotonic()
    for done in range(rounds):
        if done >= 3 and time.monotonic() - start > time_budget_s:
            break
        for res in results:
            res.wall_s.append(_measure_command(res.command, timeout_s).wall_s)
    for _ in range(rss_runs):
        for res in results:
            m = _measure_command(res.command, timeout_s, rss=True)
            if m.maxrss_kib is not None:
                res.maxrss_kib.append(m.maxrss_kib)
    return results


def _measure_command(cmd: Command, timeout_s: float, *, rss: bool = False) -> Measurement:
    return measure(
        cmd.argv, env=cmd.env, stdin=cmd.stdin, cwd=cmd.cwd, timeout_s=timeout_s, rss=rss
    ).check()


# ---------------------------------------------------------------------------
# CPU placement


@contextlib.contextmanager
def pinned(cpus: set[int]) -> Iterator[None]:
    """Run the block on ``cpus`` only; children started inside inherit the placement.

    On this 2-core VM a client and the sink exchanging small packets run about five
    times faster on one core (a wake-up is a context switch) than on two (a wake-up
    is an inter-processor interrupt), and left alone the scheduler picks either from
    run to run. Benchmarks of round trips therefore pin their processes explicitly.
    """
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# ---------------------------------------------------------------------------
# The loopback sink


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


class Sink:
    """Postfix's ``smtp-sink`` on 127.0.0.1: accepts every message and throws it away.

    It is a single C process, fast enough that a benchmark measures the client, not
    the server. Its running counters (``-c``) go to a file, so the benchmark can check
    that every message it sent was actually received.
    """

    def __init__(self, tool: Tool, *, pipelining: bool = True, extra: Sequence[str] = ()) -> None:
        self.tool = tool
        self.pipelining = pipelining
        self.extra = tuple(extra)
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._counters: Path | None = None

    def __enter__(self) -> Sink:
        WORK_DIR.mkdir(parents=True, exist_ok=True)
        for _attempt in range(5):  # the free port may be taken between probe and bind
            self.port = free_port()
            fd, name = tempfile.mkstemp(prefix="sink-", suffix=".counters", dir=WORK_DIR)
            os.close(fd)
            self._counters = Path(name)
            args = ["-c", "-h", "sink.bench.invalid"]
            if not self.pipelining:
                args.append("-p")
            if os.geteuid() == 0:
                args += ["-u", "nobody"]  # smtp-sink refuses to keep root privileges
            args += [*self.extra, f"{LOOPBACK}:{self.port}", "1000"]
            # Files, not pipes: nobody reads the sink while it runs, and a full pipe
            # would stall it.
            with open(self._counters, "wb") as out, tempfile.TemporaryFile() as err:
                self._proc = subprocess.Popen(
                    self.tool.argv(*args),
                    env=self.tool.env(),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
                if self._wait_ready():
                    return self
                self._stop()
                err.seek(0)
                why = err.read().decode(errors="replace").strip()
        raise BenchError(f"smtp-sink did not start on 127.0.0.1: {why or 'no error output'}")

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _wait_ready(self) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection((LOOPBACK, self.port), timeout=1) as s,
            ):
                s.recv(100)  # the greeting; the session ends when we close
                return True
            time.sleep(0.02)
        return False

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._counters is not None:
            with contextlib.suppress(OSError):
                self._counters.unlink()
            self._counters = None

    def messages(self) -> int:
        """How many messages the sink has received so far (its ``mesg=`` counter)."""
        if self._counters is None:
            return 0
        text = self._counters.read_bytes()
        found = re.findall(rb"mesg=(\d+)", text[-200:])
        return int(found[-1]) if found else 0

    def expect_messages(self, total: int, timeout_s: float = 2.0) -> None:
        """Wait until the sink has counted ``total`` messages; BenchError if it does not."""
        deadline = time.monotonic() + timeout_s
        while (got := self.messages()) < total and time.monotonic() < deadline:
            time.sleep(0.01)
        if got != total:
            raise BenchError(f"smtp-sink counted {got} messages, expected {total}")


# ---------------------------------------------------------------------------
# The machine and the report


def cpu_model() -> str:
    """The CPU model named in /proc/cpuinfo (or the platform's guess)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_lines() -> list[str]:
    """Markdown lines naming the machine, interpreter and date of a run."""
    return [
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {os.cpu_count()} cores (nproc), CPU {cpu_model()}, "
        f"{platform.system()} {platform.release()}",
        f"- python: {platform.python_version()} ({sys.executable})",
        f"- load average at start (1, 5, 15 min): {load_average()} — other work on the "
        "machine slows both sides of a comparison alike (runs alternate) but widens spreads",
    ]


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg gives them."""
    with contextlib.suppress(OSError):
        return ", ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "unknown"


@dataclass
class Section:
    """One benchmark's part of the report: a title, the command, a table and verdicts."""

    title: str
    command: str
    header: tuple[str, ...] = ()
    rows: list[tuple[str, ...]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verdicts: list[tuple[str, bool | None]] = field(default_factory=list)

    def verdict(self, text: str, met: bool | None) -> None:
        """Record a target: met (True), missed (False) or not measurable yet (None)."""
        self.verdicts.append((text, met))

    def markdown(self) -> str:
        """The section as Markdown."""
        out = [f"## {self.title}", "", f"Command: `{self.command}`", ""]
        if self.header:
            out.append("| " + " | ".join(self.header) + " |")
            out.append("|" + "---|" * len(self.header))
            out += ["| " + " | ".join(row) + " |" for row in self.rows]
            out.append("")
        for text, met in self.verdicts:
            mark = {True: "MET", False: "MISSED", None: "NOT MEASURED"}[met]
            out.append(f"- target: {text} — **{mark}**")
        # A note indented by two spaces is a sub-item of the note before it.
        out += [note if note.startswith("  ") else f"- {note}" for note in self.notes]
        return "\n".join(out).rstrip() + "\n"


def python_cmd(*args: str) -> tuple[str, ...]:
    """argv running this interpreter on ``args`` (the benchmark's own venv Python)."""
    return (sys.executable, *args)
