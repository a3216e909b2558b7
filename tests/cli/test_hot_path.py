"""What a whole ``sendmail`` run imports: the hot path stays off the heavy modules.

DESIGN.md: queue mode must not import smtp, ssl, email, asyncio, logging or
pydantic at all, and direct mode imports ssl only when it relays over TLS.
Each case runs the real CLI in a fresh interpreter (``-S``: the editable
install's ``.pth`` finder would otherwise load half the standard library
before our first line) and reports every module loaded by the end.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.cli.conftest import REPO, Mta
from tests.support.smtpd import RecordingServer

#: Never on any sendmail path that does not need them.
HEAVY = {
    "typing",
    "re",
    "dataclasses",
    "enum",
    "json",
    "tomllib",
    "email",
    "asyncio",
    "logging",
    "logging.handlers",
    "pydantic",
    "pydantic_settings",
    "hashlib",
    "datetime",
    "subprocess",
    "aiosmtpd",
}

#: pysendmail modules that a queue-mode sendmail run must not load.
QUEUE_MODE_NEVER = {
    "pysendmail.cli.queuecmd",
    "pysendmail.cli.admin",
    "pysendmail.log",
    "pysendmail.config.loader",
    "pysendmail.config.model",
    "pysendmail.config.secrets",
    "signal",
}

#: Every pysendmail module a queue-mode run may load: a new one here is a cost
#: to weigh against issue 4's start-up budget.
QUEUE_MODE_MODULES = {
    "pysendmail",
    "pysendmail.cli",
    "pysendmail.cli.argv",
    "pysendmail.cli.sendmail",
    "pysendmail.config",
    "pysendmail.config.settings",
    "pysendmail.config.snapshot",
    "pysendmail.errors",
    "pysendmail.message",
    "pysendmail.message.addresses",
    "pysendmail.message.aliases",
    "pysendmail.message.envelope",
    "pysendmail.message.headers",
    "pysendmail.message.intake",
    "pysendmail.queue",
    "pysendmail.queue.commit",
    "pysendmail.queue.spool",
}

PROBE = r"""
import sys
argv, report = sys.argv[1].split("\x1f"), sys.argv[2]
before = set(sys.modules)
from pysendmail.cli import main
status = main(argv)
loaded = sorted(set(sys.modules) - before)
with open(report, "w") as f:
    f.write(repr((status, loaded)))
"""


def run_probe(mta: Mta, argv: list[str], stdin: bytes) -> tuple[int, set[str]]:
    report = mta.root / "probe-report"
    env = dict(mta.env, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-S", "-c", PROBE, "\x1f".join(argv), str(report)],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert report.exists(), proc.stderr.decode()
    status, loaded = ast.literal_eval(report.read_text())
    return status, set(loaded)


MESSAGE = b"To: root\nSubject: hot path\n\nbody\n"


def test_queue_mode_loads_nothing_heavy(mta: Mta) -> None:
    mta.configure(None, mode="queue")
    # `queue init` validates the configuration and leaves its snapshot, as the
    # package's postinst does: the -S interpreter below cannot even import pydantic.
    init = mta.run("-C", str(mta.config), "queue", "init", program="pysendmail", config=False)
    assert init.returncode == 0, init
    status, loaded = run_probe(mta, ["sendmail", "-C", str(mta.config), "-t", "-i"], MESSAGE)
    assert status == 0
    assert (mta.queue_dir / "queue").is_dir()
    assert len(list((mta.queue_dir / "queue").iterdir())) == 1
    assert not loaded & HEAVY, sorted(loaded & HEAVY)
    assert not {m for m in loaded if m.startswith(("pysendmail.smtp", "pysendmail.relay", "ssl"))}
    assert not {m for m in loaded if m.startswith("pydantic")}
    # Each module costs ~0.15 ms to find and load before its body runs: queue
    # mode needs neither the listing tools, the logger, nor the full loader.
    assert not loaded & QUEUE_MODE_NEVER, sorted(loaded & QUEUE_MODE_NEVER)
    ours = {m for m in loaded if m.startswith("pysendmail")}
    assert ours <= QUEUE_MODE_MODULES, sorted(ours - QUEUE_MODE_MODULES)


def test_direct_mode_without_tls_loads_no_ssl(mta: Mta, smtpd_factory: object) -> None:
    server: RecordingServer = smtpd_factory()  # type: ignore[operator]
    mta.configure(server, mode="direct")
    check = mta.run("-C", str(mta.config), "config", "check", program="pysendmail", config=False)
    assert check.returncode == 0, check
    status, loaded = run_probe(mta, ["sendmail", "-C", str(mta.config), "-t", "-i"], MESSAGE)
    assert status == 0, loaded
    assert len(server.envelopes) == 1
    forbidden = (HEAVY - {"re"}) | {"ssl", "_ssl"}
    assert not loaded & forbidden, sorted(loaded & forbidden)


def test_repo_is_where_the_probe_imports_from() -> None:
    assert (Path(REPO) / "pysendmail" / "cli" / "__init__.py").is_file()
