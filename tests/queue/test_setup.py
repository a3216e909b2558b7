"""``pysendmail queue init`` (``Queue.ensure``), the hot-path imports, and cleaning up."""

from __future__ import annotations

import grp
import os
import pathlib
import pwd
import stat
import subprocess
import sys
import time

import pytest

from pysendmail import errors
from pysendmail.queue import Queue
from pysendmail.queue.state import State
from tests.queue.helpers import NO_USER, REPO, enqueue, new_queue, queue_files
from tests.support.hotpath import HEAVY


def _mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_ensure_as_root_gives_the_folders_to_the_queue_user(tmp_path: pathlib.Path) -> None:
    # "nobody" stands in for the "pysendmail" user that packaging creates.
    nobody = pwd.getpwnam("nobody")
    q = Queue(str(tmp_path / "spool"))
    changes = q.ensure("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    assert f"created {q.dir('queue')} (0700 nobody:{group})" in changes
    root = os.stat(q.root)
    assert (root.st_uid, _mode(q.root)) == (0, 0o711)  # the root stays root's
    for folder in ("tmp", "queue", "state", "hold", "failed", "maildrop"):
        st = os.stat(q.dir(folder))
        assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid), folder
    assert _mode(q.dir("maildrop")) == 0o3733
    trigger = os.lstat(os.path.join(q.root, "trigger"))
    assert stat.S_ISFIFO(trigger.st_mode) and trigger.st_uid == nobody.pw_uid
    assert _mode(os.path.join(q.root, "trigger")) == 0o622
    # Root is not the queue owner now: its own sendmail drops into the maildrop.
    env = enqueue(q)
    assert queue_files(q) == [] and queue_files(q, "maildrop") == [env.queue_id]
    assert q.ensure("nobody") == []  # nothing left to do


def test_ensure_repairs_modes_and_owners_and_says_so(tmp_path: pathlib.Path) -> None:
    q = new_queue(tmp_path / "spool")
    os.chmod(q.dir("queue"), 0o755)
    os.chmod(q.dir("maildrop"), 0o777)
    os.chown(q.dir("state"), 1, 1)
    changes = q.ensure(NO_USER)
    assert changes == [
        f"{q.dir('queue')}: mode set to 0700",
        f"{q.dir('state')}: owner set to root:root",
        f"{q.dir('maildrop')}: mode set to 3733",
    ]
    assert _mode(q.dir("queue")) == 0o700 and _mode(q.dir("maildrop")) == 0o3733
    assert os.stat(q.dir("state")).st_uid == 0


def test_ensure_refuses_a_folder_that_is_a_symbolic_link(tmp_path: pathlib.Path) -> None:
    (tmp_path / "spool").mkdir()
    (tmp_path / "elsewhere").mkdir(mode=0o755)
    os.symlink(tmp_path / "elsewhere", tmp_path / "spool" / "queue")
    with pytest.raises(errors.CantCreateError, match="is a symbolic link"):
        Queue(str(tmp_path / "spool")).ensure(NO_USER)
    assert _mode(str(tmp_path / "elsewhere")) == 0o755  # never followed


def test_ensure_refuses_a_trigger_that_is_not_a_fifo(tmp_path: pathlib.Path) -> None:
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "trigger").write_bytes(b"")
    with pytest.raises(errors.CantCreateError, match="is not a FIFO"):
        Queue(str(tmp_path / "spool")).ensure(NO_USER)


def test_clean_tmp_removes_old_leftovers_and_nothing_else(tmp_path: pathlib.Path) -> None:
    q = new_queue(tmp_path / "spool")
    kept = enqueue(q)
    q.write_state(kept.queue_id, State.fresh(kept))
    old = time.time() - 3 * 86400
    leftovers = [
        q.path("tmp", "DEADWRITER"),
        q.path("tmp", "X.state.1.ab"),
        q.path("maildrop", ".DEADDROP"),
        q.path("state", "ORPHAN1"),
    ]
    spared = [
        q.path("tmp", "STAGED.NAME.ready"),  # the next pickup finishes it
        q.path("maildrop", "WAITING1"),  # pickup's business
        q.path("tmp", "YOUNG1"),
    ]
    for path in leftovers + spared:
        pathlib.Path(path).write_bytes(b"x")
        if not path.endswith("YOUNG1"):
            os.utime(path, (old, old))
    os.utime(q.path("state", kept.queue_id), (old, old))
    assert sorted(q.clean_tmp(86400)) == sorted(leftovers)
    for path in spared:
        assert os.path.exists(path), path
    assert queue_files(q) == [kept.queue_id] and queue_files(q, "state") == [kept.queue_id]


HOT = HEAVY | {
    "contextlib",
    "signal",
    "pysendmail.smtp",
    "pysendmail.relay",
    "pysendmail.config.model",
    "pysendmail.runner",
}


def test_the_commit_path_imports_nothing_heavy() -> None:
    # -S: no site (the editable install's .pth imports re and enum by itself).
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
        "import pysendmail.queue, pysendmail.cli.queuecmd, pysendmail.message.intake\n"
        "import pysendmail.queue.state\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    )
    loaded = set(done.stdout.split())
    assert "pysendmail.queue.spool" in loaded
    assert sorted(loaded & HOT) == []
    assert not any(m.startswith(("pysendmail.smtp.", "email.", "pydantic")) for m in loaded)


def test_submitting_in_queue_mode_imports_nothing_heavy(tmp_path: pathlib.Path) -> None:
    code = (
        f"import sys, io, types; sys.path.insert(0, {str(REPO)!r})\n"
        "from pysendmail.cli import Streams\n"
        "from pysendmail.cli.queuecmd import submit\n"
        "from pysendmail.message.intake import IntakeOptions\n"
        f"s = types.SimpleNamespace(general=types.SimpleNamespace(queue_dir={str(tmp_path)!r}))\n"
        "o = IntakeOptions(recipients=['bob@example.net'], domain='example.com')\n"
        "data = io.BytesIO(b'Subject: hi\\r\\n\\r\\nbody\\r\\n')\n"
        "assert submit(None, Streams(data, io.StringIO(), io.StringIO(), {}), s, o) == 0\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    )
    loaded = set(done.stdout.split())
    assert sorted(loaded & HOT) == []
    assert len(queue_files(Queue(str(tmp_path)))) == 1


def test_root_never_follows_a_maildrop_swapped_for_a_link(tmp_path: pathlib.Path) -> None:
    # The queue owner (here nobody) may not lead root's sendmail into, say,
    # /etc/cron.d by replacing the maildrop with a symbolic link.
    q = Queue(str(tmp_path / "spool"))
    q.ensure("nobody")
    target = tmp_path / "cron.d"
    target.mkdir()
    os.rename(q.dir("maildrop"), tmp_path / "old-maildrop")
    os.symlink(target, q.dir("maildrop"))
    with pytest.raises(errors.CantCreateError, match="maildrop: not a folder"):
        enqueue(q)
    assert list(target.iterdir()) == []
