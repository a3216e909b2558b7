"""The maildrop, with a real second user: ``nobody`` submits and drops hostile files; root picks up.

The queue is created by root (as on a system without a ``pysendmail`` user),
so ``nobody`` is not its owner: ``sendmail`` run by nobody must write into
``maildrop/`` (mode 3733), and whatever nobody leaves there must be either
queued after every check, refused without harm, or left alone.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest

from pysendmail.message.envelope import Envelope
from pysendmail.queue import Queue
from pysendmail.queue import pickup as pickup_module
from pysendmail.queue.pickup import PickupResult
from tests.queue.helpers import (
    NOBODY_UID,
    Nobody,
    drop_spool,
    message,
    new_queue,
    queue_files,
    spool_bytes,
)

MAX_SIZE = 4000

SUBMIT = """
import sys, types
from pysendmail.cli import Streams, guarded
from pysendmail.cli.queuecmd import submit
from pysendmail.message.intake import IntakeOptions
settings = types.SimpleNamespace(general=types.SimpleNamespace(queue_dir=sys.argv[1]))
options = IntakeOptions(recipients=["bob@example.net"], domain="example.com",
                        hostname="mx.example.com", dot_ends_input=False)
io_ = Streams(sys.stdin.buffer, sys.stdout, sys.stderr, {})
sys.exit(guarded("sendmail", io_, lambda: submit(None, io_, settings, options)))
"""


class Setup:
    def __init__(self, shared: pathlib.Path) -> None:
        self.shared = shared
        self.nobody = Nobody(shared)
        self.queue = new_queue(shared / "spool")
        self.files = shared / "files"  # what root prepared for nobody to drop
        self.files.mkdir(mode=0o755)
        self.own = shared / "nobody"  # a folder of nobody's own
        self.own.mkdir()
        os.chown(self.own, NOBODY_UID, -1)

    def prepare(self, name: str, data: bytes) -> None:
        path = self.files / name
        path.write_bytes(data)
        path.chmod(0o644)

    def submit(self, data: bytes) -> subprocess.CompletedProcess[bytes]:
        return self.nobody.run(SUBMIT, self.queue.root, stdin=data)

    def pickup(self, **kw: float) -> dict[str, PickupResult]:
        """Run pickup in a thread, so that blocking (on a FIFO, say) fails instead of hangs."""
        results: list[PickupResult] = []
        thread = threading.Thread(
            target=lambda: results.extend(self.queue.pickup(MAX_SIZE, stale_age=3600, **kw))
        )
        started = time.monotonic()
        thread.start()
        thread.join(20)
        assert not thread.is_alive(), "pickup blocked"
        assert time.monotonic() - started < 20
        return {r.name: r for r in results}


@pytest.fixture
def setup() -> Iterator[Setup]:
    # pytest's tmp_path is inside a 0700 folder of root's; nobody needs a way in.
    shared = pathlib.Path(tempfile.mkdtemp(prefix="pysendmail-maildrop-"))
    shared.chmod(0o755)
    try:
        yield Setup(shared)
    finally:
        shutil.rmtree(shared)


def _queued(q: Queue, queue_id: str) -> tuple[Envelope, bytes, os.stat_result]:
    with open(q.path("queue", queue_id), "rb") as f:
        env = Envelope.from_file(f)
        return env, f.read(), os.fstat(f.fileno())


def test_sendmail_run_by_another_user_writes_into_the_maildrop(setup: Setup) -> None:
    q = setup.queue
    data = message("from nobody")
    done = setup.submit(data)
    assert done.returncode == 0, done.stderr
    assert queue_files(q) == [] and queue_files(q, "tmp") == []
    (name,) = queue_files(q, "maildrop")
    st = os.lstat(q.path("maildrop", name))
    assert st.st_uid == NOBODY_UID
    assert st.st_gid == os.stat(q.dir("maildrop")).st_gid  # from the setgid folder
    assert stat.S_IMODE(st.st_mode) == 0o640

    results = setup.pickup()
    assert results[name].outcome == "queued" and results[name].uid == NOBODY_UID
    assert queue_files(q, "maildrop") == []
    env, body, qst = _queued(q, name)
    assert env.submitter_uid == NOBODY_UID and env.submitter_login == "nobody"
    assert body.startswith(b"Received: by mx.example.com (pysendmail, from userid 65534)")
    assert body.endswith(data) and len(body) == env.size
    assert qst.st_uid == 0 and stat.S_IMODE(qst.st_mode) == 0o600
    assert results[name].log_line() == f"{name}: uid=65534 from maildrop/{name}"


def test_another_user_can_neither_list_the_maildrop_nor_read_the_queue(setup: Setup) -> None:
    q = setup.queue
    code = (
        "import os, sys\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        os.listdir(path)\n"
        "    except PermissionError:\n"
        "        print('denied', path)\n"
    )
    done = setup.nobody.run(code, q.dir("maildrop"), q.dir("queue"), q.dir("state"))
    assert done.stdout.decode().split("\n")[:3] == [
        f"denied {q.dir('maildrop')}",
        f"denied {q.dir('queue')}",
        f"denied {q.dir('state')}",
    ]
    mailq = (
        "import sys, types\n"
        "from pysendmail.cli import Streams, guarded\n"
        "from pysendmail.cli.queuecmd import list_queue\n"
        "s = types.SimpleNamespace(general=types.SimpleNamespace(queue_dir=sys.argv[1]))\n"
        "io_ = Streams(sys.stdin.buffer, sys.stdout, sys.stderr, {})\n"
        "sys.exit(guarded('mailq', io_, lambda: list_queue(s, io_)))\n"
    )
    done = setup.nobody.run(mailq, q.root)
    assert done.returncode == 77
    assert done.stderr.decode() == (
        f"mailq: {q.root}: the mail queue is readable only by root; run this as root\n"
    )
    assert done.stdout == b""


DROP = """
import os, sys
drop, files, own = sys.argv[1:4]
def put(name, data, where=drop):
    fd = os.open(os.path.join(where, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    os.write(fd, data)
    os.close(fd)
def prepared(name):
    with open(os.path.join(files, name), "rb") as f:
        return f.read()
os.symlink("/etc/shadow", os.path.join(drop, "SYMLINK1"))
os.symlink(os.path.join(files, "GOOD2"), os.path.join(drop, "SYMLINK2"))
put("HARDLINK1", prepared("HARDLINK1"), own)
os.link(os.path.join(own, "HARDLINK1"), os.path.join(drop, "HARDLINK1"))
os.mkfifo(os.path.join(drop, "FIFO1"), 0o640)
os.mkdir(os.path.join(drop, "DIR1"))
for name in ("BIG1", "HUGE1", "LIAR1", "NAME1", "GARBAGE1", "TRUNC1", "LONG1", "GOOD2"):
    put(name, prepared(name))
put(".PARTIAL1", prepared("PARTIAL1"))
print("dropped")
"""


def test_hostile_drops_are_refused_or_left_alone_without_harm(setup: Setup) -> None:
    q = setup.queue
    good = spool_bytes(message("good"), queue_id="GOOD2", uid=NOBODY_UID)
    whole = spool_bytes(message("half"), queue_id="TRUNC1", uid=NOBODY_UID)
    setup.prepare("GOOD2", good)
    setup.prepare("HARDLINK1", spool_bytes(message("linked"), queue_id="HARDLINK1", uid=NOBODY_UID))
    big = message("big", b"x" * MAX_SIZE)  # the envelope says so: refused after parsing
    setup.prepare("BIG1", spool_bytes(big, queue_id="BIG1", uid=NOBODY_UID))
    # The file is too large whatever it says: refused unread.
    huge = spool_bytes(message("huge"), queue_id="HUGE1", uid=NOBODY_UID) + b"\0" * 70000
    setup.prepare("HUGE1", huge)
    setup.prepare("LIAR1", spool_bytes(message("liar"), queue_id="LIAR1", uid=0))
    setup.prepare("NAME1", spool_bytes(message("named"), queue_id="OTHER1", uid=NOBODY_UID))
    setup.prepare("GARBAGE1", os.urandom(300))
    setup.prepare("TRUNC1", whole[: len(whole) - 30])
    setup.prepare("LONG1", spool_bytes(message("long"), queue_id="LONG1", uid=NOBODY_UID) + b"!")
    setup.prepare("PARTIAL1", good[:100])
    with open("/etc/shadow", "rb") as f:
        shadow = f.read()

    done = setup.nobody.run(DROP, q.dir("maildrop"), str(setup.files), str(setup.own))
    assert done.returncode == 0 and done.stdout == b"dropped\n", done.stderr

    results = setup.pickup()
    outcome = {name: (r.outcome, r.reason) for name, r in results.items()}
    assert outcome == {
        "SYMLINK1": ("refused", "a symbolic link"),
        "SYMLINK2": ("refused", "a symbolic link"),
        "HARDLINK1": ("refused", "has 2 links"),
        "FIFO1": ("refused", "not a regular file"),
        "DIR1": ("refused", "a directory"),
        "BIG1": ("refused", f"too large: {len(big)} octets, the limit is {MAX_SIZE}"),
        "HUGE1": ("refused", f"too large: {len(huge)} octets, the limit is {MAX_SIZE}"),
        "LIAR1": ("refused", "its envelope claims uid 0, the file belongs to uid 65534"),
        "NAME1": ("refused", "its envelope names the queue id 'OTHER1'"),
        "GARBAGE1": outcome["GARBAGE1"],
        "TRUNC1": ("left", f"incomplete ({len(whole) - 30} of {len(whole)} octets)"),
        "LONG1": outcome["LONG1"],
        ".PARTIAL1": ("left", "still being written"),
        "GOOD2": ("queued", ""),
    }
    assert outcome["GARBAGE1"][0] == "refused"
    assert outcome["GARBAGE1"][1].startswith("not a queue file: queue file ")
    assert outcome["LONG1"][0] == "refused" and "where its envelope says" in outcome["LONG1"][1]
    for r in results.values():
        assert r.uid == NOBODY_UID
        assert "\n" not in r.log_line()

    # No harm: link targets untouched, the other name of the hard link intact.
    with open("/etc/shadow", "rb") as f:
        assert f.read() == shadow
    assert (setup.files / "GOOD2").read_bytes() == good
    assert os.stat(setup.own / "HARDLINK1").st_nlink == 1
    # Only the good one is queued, as what nobody wrote, under its own id.
    assert queue_files(q) == ["GOOD2"]
    env, body, _ = _queued(q, "GOOD2")
    assert env.submitter_uid == NOBODY_UID and body == message("good")
    # Left alone until stale, then removed.
    assert queue_files(q, "maildrop") == [".PARTIAL1", "TRUNC1"]
    later = setup.pickup(now=time.time() + 2 * 3600)
    assert {n: r.outcome for n, r in later.items()} == {"TRUNC1": "refused", ".PARTIAL1": "refused"}
    assert queue_files(q, "maildrop") == []
    assert queue_files(q) == ["GOOD2"] and queue_files(q, "tmp") == []


HOLD_OPEN = """
import os, sys
drop, data = sys.argv[1], open(sys.argv[2], "rb").read()
fd = os.open(os.path.join(drop, ".HELD1"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
os.write(fd, data)
os.rename(os.path.join(drop, ".HELD1"), os.path.join(drop, "HELD1"))
print("ready", flush=True)
sys.stdin.readline()
os.lseek(fd, 0, os.SEEK_SET)
os.write(fd, b"EVIL" * 100)
os.close(fd)
print("scribbled", flush=True)
"""


def test_a_submitter_that_keeps_writing_after_pickup_cannot_change_the_queued_copy(
    setup: Setup,
) -> None:
    q = setup.queue
    data = spool_bytes(message("held open"), queue_id="HELD1", uid=NOBODY_UID)
    setup.prepare("HELD1", data)
    proc = subprocess.Popen(
        setup.nobody.argv(HOLD_OPEN, q.dir("maildrop"), str(setup.files / "HELD1")),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=str(setup.shared),
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == b"ready\n"
        dropped = os.lstat(q.path("maildrop", "HELD1"))
        assert setup.pickup()["HELD1"].outcome == "queued"
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"scribbled\n"
    finally:
        proc.stdin.close()
        proc.stdout.close()
        assert proc.wait(30) == 0
    _env, body, st = _queued(q, "HELD1")
    assert (st.st_dev, st.st_ino) != (dropped.st_dev, dropped.st_ino)  # a copy, not a rename
    assert body == message("held open") and b"EVIL" not in body


def test_a_submitter_killed_mid_write_leaves_only_a_dot_file_that_goes_once_stale(
    setup: Setup,
) -> None:
    q = setup.queue
    proc = subprocess.Popen(
        setup.nobody.argv(SUBMIT, q.root), stdin=subprocess.PIPE, cwd=str(setup.shared)
    )
    assert proc.stdin is not None
    proc.stdin.write(message("killed")[:50])
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while not any(n.startswith(".") for n in queue_files(q, "maildrop")):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # runuser does not forward SIGKILL; kill the Python process it started.
    child = subprocess.run(
        ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=True
    ).stdout.split()
    for pid in child:
        os.kill(int(pid), 9)
    proc.stdin.close()
    proc.wait(30)
    (name,) = queue_files(q, "maildrop")
    assert name.startswith(".")
    assert setup.pickup()[name].outcome == "left"
    assert q.clean_tmp(3600) == []
    assert q.clean_tmp(3600, now=time.time() + 7200) == [q.path("maildrop", name)]
    assert queue_files(q) == [] and queue_files(q, "maildrop") == []


# --------------------------------------------------------------------------- crashes in pickup


def _drop_as_root(q: Queue, name: str) -> bytes:
    return pathlib.Path(drop_spool(q, name)).read_bytes()


def test_pickup_interrupted_before_removing_the_original_queues_it_once(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = new_queue(tmp_path / "spool")
    _drop_as_root(q, "CRASH1")
    real_unlink = os.unlink

    def unlink(path: str, **kw: object) -> None:
        if path == q.path("maildrop", "CRASH1"):
            raise OSError(5, "simulated crash")
        real_unlink(path)

    monkeypatch.setattr(os, "unlink", unlink)
    with pytest.raises(OSError, match="simulated crash"):
        q.pickup(MAX_SIZE)
    monkeypatch.undo()
    assert queue_files(q) == [] and queue_files(q, "tmp") == ["CRASH1.CRASH1.ready"]
    results = q.pickup(MAX_SIZE)
    assert [(r.name, r.outcome) for r in results] == [("CRASH1", "queued")]
    assert queue_files(q) == ["CRASH1"] and queue_files(q, "tmp") == []
    assert queue_files(q, "maildrop") == []


def test_pickup_interrupted_after_removing_the_original_is_finished_by_the_next(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = new_queue(tmp_path / "spool")
    _drop_as_root(q, "CRASH2")

    def publish(queue: Queue, staged: str, queue_id: str) -> None:
        raise OSError(5, "simulated crash")

    monkeypatch.setattr(pickup_module, "_publish", publish)
    with pytest.raises(OSError, match="simulated crash"):
        q.pickup(MAX_SIZE)
    monkeypatch.undo()
    assert queue_files(q, "maildrop") == [] and queue_files(q) == []
    assert q.pickup(MAX_SIZE) == []
    assert queue_files(q) == ["CRASH2"] and queue_files(q, "tmp") == []
    env, body, _ = _queued(q, "CRASH2")
    assert env.queue_id == "CRASH2" and body == message("CRASH2")


def test_a_dropped_id_that_is_taken_gets_a_fresh_one(tmp_path: pathlib.Path) -> None:
    q = new_queue(tmp_path / "spool")
    first = _drop_as_root(q, "TAKEN1")
    q.pickup(MAX_SIZE)
    _drop_as_root(q, "TAKEN1")
    (result,) = q.pickup(MAX_SIZE)
    assert result.outcome == "queued" and result.queue_id not in (None, "TAKEN1")
    assert queue_files(q) == sorted(["TAKEN1", str(result.queue_id)])
    env, _, _ = _queued(q, str(result.queue_id))
    assert env.queue_id == result.queue_id
    assert pathlib.Path(q.path("queue", "TAKEN1")).read_bytes() == first


def test_pickup_without_a_maildrop_does_nothing(tmp_path: pathlib.Path) -> None:
    assert Queue(str(tmp_path / "missing")).pickup(MAX_SIZE) == []
