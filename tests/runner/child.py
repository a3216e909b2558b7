"""A queue runner in a process of its own, for the tests that run two at once or kill one.

``python -m tests.runner.child run SETTINGS`` runs the queue once, exactly as
``pysendmail queue run`` does (``run_queue_main``), with the settings that
``SETTINGS`` holds (``settings_to_data``, marshalled), and exits with its status.

``python -m tests.runner.child watch SETTINGS`` is ``pysendmail queue run
--watch``: it runs until SIGTERM or SIGINT.

``python -m tests.runner.child forkserver SETTINGS`` imports everything once
and then, for each ``run`` line on stdin, forks a child that does the same,
writes ``pid N`` at once and ``done N STATUS`` when it ended (STATUS is
``-9`` when it was killed). A fork costs a millisecond where a new
interpreter costs a third of a second, so a test can kill a hundred runners
at points spread over their delivery, not over their start-up.
"""

from __future__ import annotations

import io
import marshal
import os
import sys

from pysendmail.cli import Streams
from pysendmail.config.settings import Settings, settings_from_data
from pysendmail.runner import run_queue_main


def load(path: str) -> Settings:
    with open(path, "rb") as f:
        return settings_from_data(marshal.load(f))


def run(settings: Settings, *, watch: bool = False) -> int:
    quiet = Streams(stdin=io.BytesIO(), stdout=io.StringIO(), stderr=sys.stderr, environ={})
    return run_queue_main(settings, quiet, watch=watch)


def forkserver(settings: Settings) -> int:
    for line in sys.stdin:
        if line.strip() != "run":
            continue
        pid = os.fork()
        if pid == 0:
            status = 70
            try:
                status = run(settings)
            finally:
                os._exit(status)
        print(f"pid {pid}", flush=True)
        _, wait_status = os.waitpid(pid, 0)
        print(f"done {pid} {os.waitstatus_to_exitcode(wait_status)}", flush=True)
    return 0


def main(argv: list[str]) -> int:
    mode, path = argv
    settings = load(path)
    if mode == "forkserver":
        return forkserver(settings)
    return run(settings, watch=mode == "watch")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
