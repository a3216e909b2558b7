"""Shared pieces of the queue's tests: a spool, messages, settings, streams, nobody."""

from __future__ import annotations

import io
import os
import pathlib
import shutil
import subprocess
import sys
from typing import Any

import pysendmail
from pysendmail.cli import Streams
from pysendmail.config import Settings, load_settings
from pysendmail.message.envelope import Envelope, Recipient
from pysendmail.message.intake import IntakeOptions, make_queue_id, receive
from pysendmail.queue import Queue

#: ``ensure`` gives the folders to this user when it exists; the tests want
#: them owned by whoever runs the tests, so they name a user that never exists.
NO_USER = "pysendmail-test-no-such-user"
REPO = pathlib.Path(__file__).resolve().parents[2]
NOBODY = "nobody"
NOBODY_UID = 65534


def new_queue(root: pathlib.Path) -> Queue:
    q = Queue(str(root))
    q.ensure(NO_USER)
    return q


def message(subject: str, body: bytes = b"Hello.\r\n") -> bytes:
    """A message whose headers need nothing added but Received (so the bytes are predictable)."""
    return (
        b"From: Alice <alice@example.com>\r\n"
        b"To: bob@example.net\r\n"
        b"Date: Sun, 29 Nov 2026 20:02:49 +0000\r\n"
        b"Message-ID: <" + subject.encode() + b"@example.com>\r\n"
        b"Subject: " + subject.encode() + b"\r\n"
        b"\r\n" + body
    )


def options(**kw: Any) -> IntakeOptions:
    base: dict[str, Any] = {
        "recipients": ["bob@example.net"],
        "domain": "example.com",
        "hostname": "mx.example.com",
        "local_hostnames": {"localhost"},
        "dot_ends_input": False,
    }
    base.update(kw)
    return IntakeOptions(**base)


def enqueue(q: Queue, data: bytes | None = None, **kw: Any) -> Envelope:
    """Queue ``data`` the way ``sendmail`` does: intake into ``begin``'s file, then commit."""
    opts = options(**kw)
    if not opts.queue_id:
        opts.queue_id = make_queue_id()
    with q.begin(opts.queue_id) as pending:
        env = receive(io.BytesIO(data if data is not None else message("hi")), pending.file, opts)
        pending.commit()
    return env


def spool_bytes(
    data: bytes,
    *,
    queue_id: str,
    uid: int,
    recipients: tuple[str, ...] = ("bob@example.net",),
    size: int | None = None,
) -> bytes:
    """A whole spool file (prelude and message) built by hand, for the maildrop tests."""
    env = Envelope(
        queue_id=queue_id,
        sender="alice@example.com",
        recipients=[Recipient(r) for r in recipients],
        submitter_uid=uid,
        submitter_login="nobody",
        size=len(data) if size is None else size,
    )
    return env.to_bytes() + data


def drop_spool(q: Queue, name: str) -> str:
    """Put a valid spool file of this user's into the maildrop, as ``sendmail`` would; its path."""
    path = q.path("maildrop", name)
    pathlib.Path(path).write_bytes(spool_bytes(message(name), queue_id=name, uid=os.geteuid()))
    return path


def queue_files(q: Queue, folder: str = "queue") -> list[str]:
    return sorted(os.listdir(q.dir(folder)))


def write_config(directory: pathlib.Path, spool: pathlib.Path, extra: str = "") -> pathlib.Path:
    path = directory / "pysendmail.toml"
    path.write_text(
        "[general]\n"
        'mode = "queue"\n'
        'hostname = "mx.example.com"\n'
        'domain = "example.com"\n'
        f'queue_dir = "{spool}"\n' + extra
    )
    return path


def settings_for(directory: pathlib.Path, spool: pathlib.Path, extra: str = "") -> Settings:
    return load_settings(str(write_config(directory, spool, extra)), {}, use_snapshot=False)


def streams(stdin: bytes = b"") -> Streams:
    return Streams(io.BytesIO(stdin), io.StringIO(), io.StringIO(), {})


def out(s: Streams) -> str:
    assert isinstance(s.stdout, io.StringIO)
    return s.stdout.getvalue()


def err(s: Streams) -> str:
    assert isinstance(s.stderr, io.StringIO)
    return s.stderr.getvalue()


# --------------------------------------------------------------------------- nobody


class Nobody:
    """Runs Python as the user ``nobody`` against a world-readable copy of pysendmail.

    The tests run as root, and the virtualenv's interpreter may live where
    ``nobody`` cannot reach (``/root``). So the package is copied into
    ``shared/lib``, and the first interpreter of (this one, ``/usr/bin/python3``)
    that ``nobody`` can run, of Python 3.11 or later, runs it with ``-I`` (no
    environment, no user site) and the copy put first on ``sys.path``. The code
    under test on the nobody side is the submission path, which needs only
    the standard library.
    """

    def __init__(self, shared: pathlib.Path) -> None:
        if os.geteuid() != 0:
            raise AssertionError("the maildrop tests must run as root (they switch to nobody)")
        if shutil.which("runuser") is None:
            raise AssertionError("runuser is missing: install util-linux (Debian has it)")
        try:
            import pwd

            pwd.getpwnam(NOBODY)
        except KeyError:
            raise AssertionError("the user nobody is missing; Debian has it") from None
        self.shared = shared
        lib = shared / "lib"
        shutil.copytree(
            pathlib.Path(pysendmail.__file__).parent,
            lib / "pysendmail",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        for path in [shared, *shared.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        self.lib = lib
        self.python = self._find_python()

    def _find_python(self) -> str:
        candidates = [os.path.realpath(sys.executable), "/usr/bin/python3"]
        probe = "import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)"
        for candidate in candidates:
            if not os.path.exists(candidate):
                continue
            done = subprocess.run(
                ["runuser", "-u", NOBODY, "--", candidate, "-I", "-c", probe],
                capture_output=True,
                timeout=30,
            )
            if done.returncode == 0:
                return candidate
        raise AssertionError(
            f"no Python 3.11+ that nobody may run among {candidates}; install python3"
        )

    def argv(self, code: str, *args: str) -> list[str]:
        prologue = f"import sys; sys.path.insert(0, {str(self.lib)!r})\n"
        return ["runuser", "-u", NOBODY, "--", self.python, "-I", "-c", prologue + code, *args]

    def run(
        self, code: str, *args: str, stdin: bytes = b"", timeout: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            self.argv(code, *args),
            input=stdin,
            capture_output=True,
            timeout=timeout,
            cwd=str(self.shared),
        )
