"""Crash safety of submission: SIGKILL the real ``sendmail`` at random points, many times.

Each run feeds a message of random size slowly into ``sendmail -i`` (queue
mode) and a timer kills it with SIGKILL after a random delay that spans the
whole life of a run: start-up, reading, commit and exit. Afterwards every
queue file must parse and hold exactly the bytes its run fed (no partial
message is ever queued), every run that exited 0 must be in the queue, and
the only leftovers allowed are temporary files, which ``clean_tmp`` removes
once they are old.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import random
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from pysendmail.message.envelope import Envelope
from tests.queue.helpers import REPO, message, new_queue, queue_files, write_config

SENDMAIL = str(REPO / ".venv" / "bin" / "sendmail")
MIN_KILLS = 120
TIME_BUDGET = 120.0  # seconds; the test fails rather than run longer
WORKERS = 3


class Run:
    """One ``sendmail`` run: killed ``kill_after`` seconds after it starts, or
    ``kill_after_eof`` seconds after its input ended (the commit window), or not at all."""

    __slots__ = ("data", "fed_all", "kill_after", "kill_after_eof", "returncode", "subject")

    def __init__(
        self,
        subject: str,
        data: bytes,
        kill_after: float | None,
        kill_after_eof: float | None = None,
    ) -> None:
        self.subject = subject
        self.data = data
        self.kill_after = kill_after
        self.kill_after_eof = kill_after_eof
        self.fed_all = False
        self.returncode: int | None = None


def _body(rng: random.Random) -> bytes:
    lines = []
    for _ in range(rng.randrange(0, 1500)):
        lines.append(bytes(rng.randrange(33, 127) for _ in range(rng.randrange(0, 70))) + b"\r\n")
    return b"".join(lines)


def _run(argv: list[str], env: dict[str, str], run: Run) -> Run:
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    timer = None
    if run.kill_after is not None:
        timer = threading.Timer(run.kill_after, proc.kill)
        timer.start()
    assert proc.stdin is not None
    try:
        view = memoryview(run.data)
        while view:
            proc.stdin.write(view[:4096])
            proc.stdin.flush()
            view = view[4096:]
            time.sleep(0.0003)
        proc.stdin.close()
        run.fed_all = True
        if run.kill_after_eof is not None:
            time.sleep(run.kill_after_eof)
            proc.kill()
    except OSError:
        # The buffered rest cannot reach a dead process; the pipe is closed anyway.
        with contextlib.suppress(OSError):
            proc.stdin.close()
    run.returncode = proc.wait(timeout=60)
    if timer is not None:
        timer.cancel()
    return run


def test_sigkill_during_submission_never_loses_an_acknowledged_message(
    tmp_path: pathlib.Path,
) -> None:
    spool = tmp_path / "spool"
    q = new_queue(spool)
    config = write_config(tmp_path, spool)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYSENDMAIL_CACHE_DIR": str(tmp_path)}
    argv = [SENDMAIL, "-C", str(config), "-i", "bob@example.net"]
    rng = random.Random(4)

    # Calibrate: how long a whole run takes here (the first one also writes
    # the configuration snapshot).
    warm = [_run(argv, env, Run(f"warm-{i}", message(f"warm-{i}"), None)) for i in range(3)]
    assert all(r.returncode == 0 for r in warm)
    started = time.monotonic()
    probe = _run(argv, env, Run("probe", message("probe", _body(rng)), None))
    span = max(0.02, time.monotonic() - started) * 1.5
    assert probe.returncode == 0

    runs: list[Run] = [*warm, probe]
    kills = 0
    deadline = time.monotonic() + TIME_BUDGET
    n = 0
    with ThreadPoolExecutor(WORKERS) as pool:
        while kills < MIN_KILLS and time.monotonic() < deadline:
            batch = []
            for _ in range(WORKERS * 4):
                n += 1
                subject = f"crash-{n}"
                # One run in eight is not killed at all, one in four just after
                # its input ends (while it commits), the others at any instant.
                kind = rng.random()
                kill_after = rng.uniform(0, span) if kind >= 0.375 else None
                after_eof = rng.uniform(0, 0.006) if 0.125 <= kind < 0.375 else None
                batch.append(Run(subject, message(subject, _body(rng)), kill_after, after_eof))
            done = list(pool.map(lambda r: _run(argv, env, r), batch))
            runs.extend(done)
            kills += sum(1 for r in done if r.returncode == -9)
    assert kills >= MIN_KILLS, f"only {kills} kills in {TIME_BUDGET} s"

    by_subject = {r.subject: r for r in runs}
    queued: set[str] = set()
    for name in queue_files(q):
        with open(q.path("queue", name), "rb") as f:
            envelope = Envelope.from_file(f)
            body = f.read()
            assert os.fstat(f.fileno()).st_size == envelope.message_offset + envelope.size
        assert envelope.queue_id == name
        assert len(body) == envelope.size
        subject = body.split(b"\r\nSubject: ", 1)[1].split(b"\r\n", 1)[0].decode()
        run = by_subject[subject]
        # Exactly the bytes that were fed, after the one Received line the intake adds.
        assert body.startswith(b"Received: by mx.example.com")
        assert body.endswith(run.data)
        assert run.fed_all, f"{subject}: queued although its input was cut short"
        assert subject not in queued, f"{subject}: queued twice"
        queued.add(subject)

    acknowledged = {r.subject for r in runs if r.returncode == 0}
    assert acknowledged <= queued, f"acknowledged but lost: {sorted(acknowledged - queued)}"
    killed_before_commit = sum(1 for r in runs if r.returncode == -9 and r.subject not in queued)
    killed_after_commit = sum(1 for r in runs if r.returncode == -9 and r.subject in queued)
    assert killed_before_commit > 0 and len(acknowledged) > len(warm) + 1
    assert all(r.returncode in (0, -9) for r in runs), {r.returncode for r in runs}
    print(
        f"\n{len(runs)} runs, {kills} SIGKILLs ({killed_before_commit} before the commit,"
        f" {killed_after_commit} after it), {len(acknowledged)} acknowledged, {len(queued)} queued,"
        f" {len(queue_files(q, 'tmp'))} temporary files left, {time.monotonic() - started:.1f} s"
    )

    # Leftovers stay as the crash left them until they are old, then go.
    assert queue_files(q, "maildrop") == []
    left = queue_files(q, "tmp")
    assert q.clean_tmp(36 * 3600) == []
    assert queue_files(q, "tmp") == left
    removed = q.clean_tmp(36 * 3600, now=time.time() + 2 * 86400)
    assert sorted(os.path.basename(p) for p in removed) == left
    assert queue_files(q, "tmp") == []
    assert len(queue_files(q)) == len(queued)
