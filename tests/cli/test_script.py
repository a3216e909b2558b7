"""The installed ``sendmail``, ``mailq`` and ``newaliases``: our own scripts, and how they exit.

They are ``scripts/*`` (pyproject.toml ``script-files``), not pip's console-script
wrappers, which import ``re`` before our first line. ``cli.exit_now`` ends the
process without the interpreter's teardown, but only when nothing can still be
owed work at exit (an ``atexit`` callback, a thread); these tests pin both
sides of that, and that output still written is never lost.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.conftest import BIN, REPO, Mta
from tests.support.unmeasured import unmeasured

SCRIPTS = ("sendmail", "mailq", "newaliases")


@pytest.mark.parametrize("name", SCRIPTS)
def test_installed_command_is_our_script(name: str) -> None:
    source = REPO / "scripts" / name
    installed = BIN / name
    assert os.access(installed, os.X_OK)
    first, _, body = installed.read_text().partition("\n")
    # pip rewrote "#!python" to the interpreter of the environment it installed into.
    assert first.startswith("#!/"), first
    assert Path(first[2:].split()[0]).name.startswith("python")
    assert body == source.read_text().partition("\n")[2]
    assert "import re" not in body
    assert "from pysendmail.cli import script" in body


def test_mailq_script_lists_the_queue(mta: Mta) -> None:
    mta.configure(None, mode="queue")
    init = mta.run("-C", str(mta.config), "queue", "init", program="pysendmail", config=False)
    assert init.returncode == 0, init
    assert mta.run("-t", "-i", stdin=b"To: root\nSubject: q\n\nbody\n").returncode == 0
    listed = mta.run(program="mailq")
    assert listed.returncode == 0, listed
    assert b"1 Request" in listed.stdout
    assert b"admin@example.com" in listed.stdout


#: Block-buffered stdout (no PYTHONUNBUFFERED), so output waits for the last flush.
# Unmeasured: these tests are about how the process exits, which coverage's
# atexit handler would change (exit_now exits the ordinary way when one is set).
ENV = {k: v for k, v in unmeasured().items() if k != "PYTHONUNBUFFERED"} | {"PYTHONPATH": str(REPO)}


def run_python(code: str, stdout: int = subprocess.PIPE) -> subprocess.CompletedProcess[bytes]:
    """Run ``code`` in a fresh interpreter that imports pysendmail from this checkout."""
    return subprocess.run(
        [sys.executable, "-c", code],
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=ENV,
        timeout=60,
        check=False,
    )


def run_into_closed_pipe(code: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``code`` with stdout on a pipe whose reader is gone (a write fails with EPIPE)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return run_python(code, stdout=write_end)
    finally:
        os.close(write_end)


#: An object whose finaliser writes a word on stderr when teardown runs.
TEARDOWN_PROBE = """
import os, sys
class Probe:
    def __del__(self):
        os.write(2, b"<teardown>")
probe = Probe()
"""


def test_exit_now_skips_teardown_and_keeps_buffered_output() -> None:
    code = TEARDOWN_PROBE + (
        "sys.stdout.write('kept on stdout'); sys.stderr.write('kept on stderr')\n"
        "from pysendmail.cli import exit_now\n"
        "exit_now(3)\n"
    )
    done = run_python(code)
    assert done.returncode == 3
    assert done.stdout == b"kept on stdout"
    assert done.stderr == b"kept on stderr"  # no teardown: the finaliser never ran


@pytest.mark.parametrize(
    "setup",
    ["import threading", "import atexit; atexit.register(os.write, 2, b'<atexit>')"],
    ids=["threading", "atexit"],
)
def test_exit_now_exits_the_ordinary_way_when_exit_may_owe_work(setup: str) -> None:
    code = TEARDOWN_PROBE + setup + "\nfrom pysendmail.cli import exit_now\nexit_now(5)\n"
    done = run_python(code)
    assert done.returncode == 5
    assert b"<teardown>" in done.stderr
    if "atexit" in setup:
        assert b"<atexit>" in done.stderr


def test_exit_now_reports_output_that_could_not_be_written() -> None:
    code = "import sys\nsys.stdout.write('lost')\nfrom pysendmail.cli import exit_now\n"
    done = run_into_closed_pipe(code + "exit_now(0, 'mailq')\n")
    assert done.returncode == 74  # EX_IOERR, not 0 and not the interpreter's 120
    lines = done.stderr.decode().splitlines()
    assert lines == ["mailq: standard output: Broken pipe"], lines


def test_exit_now_keeps_a_failure_status_when_stdout_fails_too() -> None:
    code = "import sys\nsys.stdout.write('lost')\nfrom pysendmail.cli import exit_now\n"
    done = run_into_closed_pipe(code + "exit_now(65)\n")
    assert done.returncode == 65  # the first failure is the one that counts
    assert done.stderr == b""
