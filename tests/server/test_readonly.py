"""``pysendmail serve`` as nobody, on a read-only root file system where only the queue is writable.

The server runs in a mount namespace of its own (``unshare -m``): the root
file system is remounted read-only there, with the spool bind-mounted
writable on itself, and the process is ``nobody`` (``setpriv``). ``strace``
records every file system call, so the test sees not only that it works but
that it never even tries to change a file outside the queue.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.helpers import PYSENDMAIL, clean_environ, http_get, write_config
from tests.support.smtpd import RecordingServer
from tests.support.unmeasured import unmeasured

NOBODY = 65534
# The calls that change the file system (openat is judged by its flags).
_CHANGING = re.compile(
    r"^(?:\[pid\s+\d+\] |\d+\s+)?(mkdir|mkdirat|rmdir|unlink|unlinkat|rename|renameat2?|"
    r"link|linkat|symlink|symlinkat|chmod|fchmodat|chown|fchownat|lchown|truncate|creat|"
    r"mknod|mknodat)\("
)
_OPEN = re.compile(
    r'^(?:\[pid\s+\d+\] |\d+\s+)?open(?:at)?\((?:AT_FDCWD|\d+), "([^"]*)", ([A-Z_|]+)'
)


@pytest.fixture
def base() -> Iterator[Path]:
    # Not under pytest's tmp_path: nobody must be able to reach the files.
    directory = Path(tempfile.mkdtemp(prefix="pysendmail-ro-", dir="/tmp"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_serve_as_nobody_on_a_read_only_root(base: Path, relay: RecordingServer) -> None:
    spool_parent = base / "var"
    spool_parent.mkdir()
    os.chown(spool_parent, NOBODY, NOBODY)
    config = write_config(base, relay.port, general={"queue_dir": str(spool_parent / "spool")})
    config.chmod(0o644)
    (base / "aliases").chmod(0o644)
    # Unmeasured: coverage would write its data file outside the queue.
    env = unmeasured(clean_environ(base))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    script = (
        f"mount --bind {spool_parent} {spool_parent} && mount -o remount,ro,bind / && "
        "exec strace -f -qq -e trace=%file -o /dev/stderr "
        f"setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups -- "
        f"{PYSENDMAIL} serve -C {config}"
    )
    proc = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    trace: list[bytes] = []
    reader = threading.Thread(target=lambda: trace.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    records = []
    try:
        for raw in proc.stdout:
            records.append(json.loads(raw))
            if " serving on " in records[-1].get("message", ""):
                break
        else:
            raise AssertionError(f"serve did not start: {records}")
        addresses = records[-1]["message"].split(" serving on ", 1)[1].split(", ")
        smtp = addresses[0].rsplit(":", 1)
        health = addresses[1][len("http://") :].rsplit(":", 1)
        with smtplib.SMTP(smtp[0], int(smtp[1]), timeout=30) as client:
            for n in range(3):
                client.sendmail(
                    "app@example.com", [f"r{n}@example.org"], b"Subject: ro\r\n\r\nx\r\n"
                )
        deadline = time.monotonic() + 60
        while len(relay.envelopes) < 3:
            assert time.monotonic() < deadline, "not delivered"
            time.sleep(0.05)
        assert http_get((health[0], int(health[1])), "/healthz")[:1] == (200,)
        os.kill(records[-1]["pid"], signal.SIGTERM)
        rest = proc.stdout.read()
        status = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(10)
        proc.stdout.close()
        proc.stderr.close()
    assert status == 0
    records += [json.loads(line) for line in rest.splitlines()]
    assert records[-1]["message"] == "stopped"
    assert all(r.get("level") != "error" for r in records), records
    assert "running as root" not in str(records)

    lines = b"".join(trace).decode("utf-8", "replace").splitlines()
    allowed = str(spool_parent) + "/"
    changed_elsewhere = []
    for line in lines:
        if "EROFS" in line:
            changed_elsewhere.append(line)
        match = _OPEN.match(line)
        if match and re.search(r"O_WRONLY|O_RDWR|O_CREAT", match.group(2)):
            path = match.group(1)
            if not (path.startswith(allowed) or path in ("/dev/null", "/dev/tty")):
                changed_elsewhere.append(line)
        elif _CHANGING.match(line) and allowed not in line:
            changed_elsewhere.append(line)
    opened = [line for line in lines if _OPEN.match(line)]
    assert len(opened) > 100  # the trace is there, and parsed
    assert changed_elsewhere == [], "\n".join(changed_elsewhere[:20])
    assert any(allowed + "spool/queue/" in line for line in lines)  # it did write the queue
