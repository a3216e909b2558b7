"""``drain``: 5,000 queued messages delivered to smtp-sink, ``pysendmail queue run`` vs nullmailer.

What it measures: the wall time of one fresh ``pysendmail queue run`` process, from
exec to exit, that delivers a queue of 5,000 messages (1–2 KB each, one recipient) to
``smtp-sink`` on 127.0.0.1, beside ``nullmailer-send`` (one-shot: ``pausetime`` 0)
delivering the same 5,000 messages from its own queue to the same sink, in the same
run, alternating. Rate = messages / wall time. The sink's counter and the emptied
queues are checked after every run, so a run that exits 0 without delivering fails.

What runs: by default the ``pysendmail`` of a normal install of HEAD (the one
``bench_startup`` builds in ``bench/.work/install``); ``--pysendmail PATH`` for
another. The queue is made through the real intake: a child process calls ``sendmail -f
SENDER -t -i`` (``pysendmail.cli.main``, the entry point of the ``sendmail`` script,
in one process to spare 5,000 interpreter starts) in queue mode 5,000 times, so
every queue file is what ``sendmail`` writes (prelude, Received, Message-ID, CRLF),
committed with its fsyncs. That spool is the template: before each round its files
are copied into a fresh spool (made by ``pysendmail queue init``) and into a fresh
nullmailer queue (sender line, recipient line, blank line, the same message with LF
endings, as ``nullmailer-queue`` writes it), then ``sync`` runs, so neither side pays
for the other's writes.

nullmailer runs from ``bench/.tools`` with ``NULLMAILER_TEST_PREFIX=DIR``: it then
reads its configuration from ``DIR/conf`` (``remotes``: ``127.0.0.1 smtp
port=PORT``; ``pausetime``: 0, so it exits after one pass), its queue from
``DIR/queue/queue`` and its protocol modules from ``DIR/protocols``. It forks the
``smtp`` module for each message (a new connection each time) and unlinks the file
once the module exits 0; it fsyncs nothing. pysendmail claims each message under a
lock, reuses ``queue.connections`` connections (RSET between messages), and records
the result: removing the file and fsyncing ``queue/`` (DESIGN.md invariants 1-3).

Why: issue 4's target is at least 8× nullmailer-send's rate.

    python bench/bench_drain.py fill CONFIG COUNT NULLMAILER_QUEUE   (the child)
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from harness import (
    WORK_DIR,
    BenchError,
    Measurement,
    Section,
    Sink,
    Summary,
    measure,
    summarize,
)
from tools import Tools

NAME = "drain"
SUMMARY = "5,000 queued messages to smtp-sink: pysendmail queue run vs nullmailer-send"
COUNT = 5000
TARGET_RATIO = 8.0
SENDER = "bench-sender@example.com"
HERE = str(Path(__file__).resolve())


@dataclass
class Series:
    """One subject's runs: wall times (s) and peak RSS (KiB)."""

    label: str
    wall_s: list[float] = field(default_factory=list)
    maxrss_kib: list[int] = field(default_factory=list)

    def rate(self, count: int) -> Summary:
        """Messages per second over the rounds."""
        return summarize([count / w for w in self.wall_s])


def default_pysendmail() -> Path:
    """The ``pysendmail`` of a normal install of HEAD (``bench_startup.normal_install``)."""
    from bench_startup import normal_install

    return normal_install().parent / "pysendmail"


def write_config(path: Path, spool: Path, port: int, connections: int | None) -> None:
    """A queue-mode configuration relaying to the sink, logging to stderr (a file here)."""
    text = (
        "[general]\n"
        'mode = "queue"\n'
        'hostname = "bench.invalid"\n'
        'domain = "example.com"\n'
        f'queue_dir = "{spool}"\n\n'
        "[log]\n"
        'target = "stderr"\n\n'
        "[[relay]]\n"
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        'tls = "none"\n'
    )
    if connections is not None:
        text += f"\n[queue]\nconnections = {connections}\n"
    path.write_text(text)


def files_in(directory: Path) -> list[Path]:
    """The regular files of ``directory`` (not dot-files), sorted."""
    return sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))


def copy_files(src: Path, dst: Path) -> int:
    """Copy every file of ``src`` into ``dst`` (mode 0600, as the queue makes them)."""
    n = 0
    for path in files_in(src):
        data = path.read_bytes()
        fd = os.open(dst / path.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        n += 1
    return n


class Nullmailer:
    """A private nullmailer tree (``NULLMAILER_TEST_PREFIX``) sending to the sink."""

    def __init__(self, tools: Tools, root: Path, port: int) -> None:
        self.tools = tools
        self.root = root
        conf = root / "conf"
        conf.mkdir(parents=True)
        (conf / "remotes").write_text(f"127.0.0.1 smtp port={port}\n")
        (conf / "pausetime").write_text("0\n")  # one pass, then exit
        for name in ("me", "defaulthost", "defaultdomain", "helohost"):
            (conf / name).write_text("bench.invalid\n")
        protocols = root / "protocols"
        protocols.mkdir()
        module = tools.nullmailer_send.path.parents[1] / "lib/nullmailer/smtp"
        (protocols / "smtp").symlink_to(module)
        self.queue = root / "queue" / "queue"
        for sub in ("queue", "tmp", "failed"):
            (root / "queue" / sub).mkdir(parents=True)
        os.mkfifo(root / "queue" / "trigger", 0o622)

    def argv(self) -> tuple[str, ...]:
        return (str(self.tools.nullmailer_send.path),)

    def env(self) -> dict[str, str]:
        env = self.tools.nullmailer_send.env()
        env["NULLMAILER_TEST_PREFIX"] = str(self.root)
        return env


def fill(pysendmail: Path, config: Path, nullmailer_dir: Path, count: int) -> None:
    """Make the template queue through the real intake (``fill`` child), and nullmailer's."""
    m = measure(
        (str(pysendmail), "-C", str(config), "queue", "init"), timeout_s=60, env=clean_env()
    ).check()
    del m
    nullmailer_dir.mkdir(parents=True, exist_ok=True)
    m = measure(
        (shebang(pysendmail), HERE, "fill", str(config), str(count), str(nullmailer_dir)),
        timeout_s=600,
        env=clean_env(),
    ).check()
    del m


def clean_env() -> dict[str, str]:
    """Our environment without PYSENDMAIL_* (the config file alone decides)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYSENDMAIL_")}


def run_pysendmail(
    pysendmail: Path, config: Path, spool: Path, template: Path, sink: Sink, count: int
) -> Measurement:
    """One round: a fresh spool holding the template's messages, then ``queue run``."""
    if spool.exists():
        shutil.rmtree(spool)
    measure(
        (str(pysendmail), "-C", str(config), "queue", "init"), timeout_s=60, env=clean_env()
    ).check()
    if copy_files(template / "queue", spool / "queue") != count:
        raise BenchError(f"the template spool does not hold {count} messages")
    os.sync()
    before = sink.messages()
    m = measure(
        (str(pysendmail), "-C", str(config), "queue", "run"),
        timeout_s=600,
        rss=True,
        env=clean_env(),
    ).check()
    sink.expect_messages(before + count, timeout_s=5)
    left = files_in(spool / "queue")
    if left:
        raise BenchError(f"pysendmail queue run left {len(left)} messages in the queue")
    return m


def run_nullmailer(nm: Nullmailer, template: Path, sink: Sink, count: int) -> Measurement:
    """One round: nullmailer's queue filled with the same messages, then ``nullmailer-send``."""
    for path in files_in(nm.queue):
        path.unlink()
    if copy_files(template, nm.queue) != count:
        raise BenchError(f"the nullmailer template does not hold {count} messages")
    os.sync()
    before = sink.messages()
    m = measure(nm.argv(), env=nm.env(), timeout_s=600, rss=True).check()
    sink.expect_messages(before + count, timeout_s=5)
    left = files_in(nm.queue)
    if left:
        raise BenchError(f"nullmailer-send left {len(left)} messages in its queue")
    return m


def run(
    tools: Tools,
    *,
    rounds: int = 3,
    count: int = COUNT,
    pysendmail: Path | None = None,
    profile: bool = False,
) -> Section:
    """Alternate nullmailer-send and ``pysendmail queue run`` for ``rounds`` rounds."""
    pysendmail = pysendmail or default_pysendmail()
    if not pysendmail.exists():
        raise BenchError(f"{pysendmail} does not exist")
    section = Section(
        title=f"drain: {count:,} queued messages to smtp-sink, against nullmailer-send",
        command=".venv/bin/python bench/run.py drain",
        header=("subject", "msg/s: median (min–max, n)", "ratio to nullmailer", "peak RSS"),
    )
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    null = Series("nullmailer-send (one-shot, a connection per message)")
    subjects = [
        ("pysendmail queue run (default: connections = 2)", None),
        ("pysendmail queue run (connections = 1)", 1),
    ]
    series = [Series(label) for label, _ in subjects]
    profile_lines: list[str] = []
    with (
        tempfile.TemporaryDirectory(dir=WORK_DIR, prefix="drain-") as tmp,
        Sink(tools.smtp_sink) as sink,
    ):
        directory = Path(tmp)
        template = directory / "template"
        nm_template = directory / "nullmailer-template"
        fill_config = directory / "fill.toml"
        write_config(fill_config, template, sink.port, None)
        print(f"bench drain: queueing {count} messages through sendmail", file=sys.stderr)
        fill(pysendmail, fill_config, nm_template, count)
        if len(files_in(template / "queue")) != count:
            raise BenchError(f"the fill did not queue {count} messages")
        configs = []
        for n, (_label, connections) in enumerate(subjects):
            config = directory / f"run{n}.toml"
            write_config(config, directory / f"spool{n}", sink.port, connections)
            configs.append(config)
        nm = Nullmailer(tools, directory / "nullmailer", sink.port)
        for r in range(rounds):
            print(f"bench drain: round {r + 1} of {rounds}", file=sys.stderr)
            m = run_nullmailer(nm, nm_template, sink, count)
            null.wall_s.append(m.wall_s)
            if m.maxrss_kib:
                null.maxrss_kib.append(m.maxrss_kib)
            for n, s in enumerate(series):
                spool = directory / f"spool{n}"
                m = run_pysendmail(pysendmail, configs[n], spool, template, sink, count)
                s.wall_s.append(m.wall_s)
                if m.maxrss_kib:
                    s.maxrss_kib.append(m.maxrss_kib)
        if profile:
            profile_lines = profile_run(
                pysendmail, configs[1], directory / "spool1", template, sink, count, directory
            )

    base = null.rate(count).median
    for s in (null, *series):
        rate = s.rate(count)
        rss = f"{max(s.maxrss_kib) / 1024:.1f} MiB" if s.maxrss_kib else "—"
        section.rows.append((s.label, rate.fmt(digits=0), f"{rate.median / base:.2f}×", rss))
    ratio = series[0].rate(count).median / base
    section.verdict(
        f"pysendmail queue run ≥ {TARGET_RATIO:g}× nullmailer-send (issue 4): {ratio:.2f}×",
        ratio >= TARGET_RATIO,
    )
    section.notes.append(
        f"each round: {count:,} messages of 1–2 KB (one recipient each), queued once through "
        f"`sendmail -f {SENDER} -t -i` in queue mode (pysendmail.cli.main in one child "
        "process); before every run the queue files are copied into a fresh spool (made by "
        "`pysendmail queue init`) or nullmailer queue, then `sync`; rate = messages / wall "
        "time of the whole command, exec to exit; the sink's counter and the emptied queue "
        f"are checked after every run; {rounds} rounds, subjects alternating"
    )
    section.notes.append(
        f"pysendmail: `{pysendmail} -C run.toml queue run` with `[general] mode = "
        '"queue"`, `[log] target = "stderr"` (to a file), `[[relay]] host = "127.0.0.1" '
        'port = PORT tls = "none"`, and `[queue] connections` as the row says'
    )
    section.notes.append(
        "nullmailer: `NULLMAILER_TEST_PREFIX=DIR LD_LIBRARY_PATH=bench/.tools/root/usr/lib/"
        "x86_64-linux-gnu bench/.tools/root/usr/sbin/nullmailer-send` with `DIR/conf/remotes` "
        "= `127.0.0.1 smtp port=PORT` and `DIR/conf/pausetime` = 0 (one pass, then exit); "
        "it forks its smtp module per message (a new connection each) and fsyncs nothing"
    )
    if profile_lines:
        section.notes.append(
            "cProfile of one `queue run` (connections = 1, the main thread), by own time:"
        )
        section.notes += [f"  - {line}" for line in profile_lines]
    return section


def profile_run(
    pysendmail: Path,
    config: Path,
    spool: Path,
    template: Path,
    sink: Sink,
    count: int,
    directory: Path,
) -> list[str]:
    """One more ``queue run`` (connections = 1) under cProfile; its top functions."""
    from bench_smtp import top_functions

    if spool.exists():
        shutil.rmtree(spool)
    measure(
        (str(pysendmail), "-C", str(config), "queue", "init"), timeout_s=60, env=clean_env()
    ).check()
    copy_files(template / "queue", spool / "queue")
    os.sync()
    stats = directory / "drain.prof"
    python = shebang(pysendmail)
    code = (
        "import cProfile, sys; from pysendmail.cli import admin_main; "
        f"sys.argv = ['pysendmail', '-C', {str(config)!r}, 'queue', 'run']; "
        f"cProfile.run('admin_main()', {str(stats)!r})"
    )
    before = sink.messages()
    measure((python, "-c", code), timeout_s=900, env=clean_env()).check()
    sink.expect_messages(before + count, timeout_s=5)
    return top_functions(stats, limit=16)


def shebang(script: Path) -> str:
    """The interpreter on the first line of ``script`` (this one if there is none)."""
    with script.open("rb") as f:
        first = f.readline(4096)
    if first.startswith(b"#!"):
        return first[2:].decode().split()[0]
    return sys.executable


# ---------------------------------------------------------------------------
# The fill child: runs with the project installed (imports pysendmail).


def message(n: int, rng: random.Random) -> bytes:
    """Message ``n``: From, To, Subject, Date, Message-ID and a body, 1,000–2,000 bytes."""
    size = rng.randint(1000, 2000)
    head = (
        f"From: Bench Sender <{SENDER}>\n"
        f"To: Recipient {n} <rcpt{n % 50}@example.com>\n"
        f"Subject: queue drain benchmark, message {n}\n"
        "Date: Sat, 29 Nov 2025 12:00:00 +0000\n"
        f"Message-ID: <bench.drain.{n}@example.com>\n"
        "\n"
    ).encode()
    words = (b"mail", b"relay", b"queue", b"spool", b"deliver", b"defer", b"sender", b"the")
    body = bytearray()
    while len(head) + len(body) < size:
        line = b" ".join(rng.choice(words) for _ in range(rng.randint(6, 14)))
        if rng.random() < 0.03:
            line = b"." + line
        body += line + b"\n"
    return head + bytes(body)


def fill_child(config: str, count: int, nullmailer_dir: str) -> int:
    """Queue ``count`` messages with ``sendmail -t -i``; write nullmailer's copies of them."""
    import io

    from pysendmail.cli import Streams, main
    from pysendmail.message.envelope import Envelope
    from pysendmail.queue import Queue

    rng = random.Random(4)
    for n in range(count):
        streams = Streams(
            stdin=io.BytesIO(message(n, rng)),
            stdout=sys.stdout,
            stderr=sys.stderr,
            environ=dict(os.environ),
        )
        status = main(["sendmail", "-C", config, "-f", SENDER, "-t", "-i"], streams)
        if status != 0:
            print(f"fill: sendmail exited {status} at message {n}", file=sys.stderr)
            return 1
    # nullmailer's queue file: sender, recipients, a blank line, the message (LF endings).
    from pysendmail.config import load_settings

    queue = Queue(load_settings(config, dict(os.environ)).general.queue_dir)
    out = Path(nullmailer_dir)
    for i, queue_id in enumerate(queue.ids()):
        with queue.open_message("queue", queue_id) as f:
            env = Envelope.from_file(f)
            f.seek(env.message_offset)
            body = f.read().replace(b"\r\n", b"\n")
        head = "".join([env.sender + "\n", *(r.address + "\n" for r in env.recipients), "\n"])
        (out / f"{1700000000 + i}.{i}").write_bytes(head.encode() + body)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "fill":
        sys.exit(fill_child(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
