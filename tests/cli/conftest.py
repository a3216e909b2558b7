"""Fixtures for the end-to-end tests: the installed ``sendmail`` run as a subprocess.

Every test here runs the real console script (``.venv/bin/sendmail``, the
editable install) with ``-C`` pointing at a configuration written into the
test's temporary directory, and a relay that is a ``RecordingServer`` on
127.0.0.1: STARTTLS with the trustme CA, AUTH PLAIN with a password read from a
``password_file``. The subprocess gets an environment without any
``PYSENDMAIL_…`` variable and with its own snapshot directory
(``PYSENDMAIL_CACHE_DIR``) and ``TMPDIR``, so nothing outside the test's
directory is read or written::

    def test_x(mta: Mta, relay: RecordingServer) -> None:
        mta.configure(relay)                 # direct mode through that relay
        result = mta.run("-i", "a@example.com", stdin=b"Subject: x\\n\\nbody\\n")
        assert result.returncode == 0
        relay.envelopes[0].data              # what arrived

``Mta.configure`` takes several relays (failover), ``None`` for a port that
nobody listens on, per-relay overrides, and ``general`` / ``extra`` TOML.

A new configuration costs one full validation (pydantic) on its first run;
later runs read the snapshot. So tests that need no special relay share one
per module: ``module_mta`` configured for ``module_relay``, and ``traffic``,
which shows only what that relay received during the current test.
"""

from __future__ import annotations

import base64
import os
import pwd
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.fixtures import certificates, scripted_server, smtpd_factory
from tests.support.smtpd import (
    LOOPBACK,
    Certificates,
    RecordedEnvelope,
    RecordedSession,
    RecordingServer,
    ScriptedServer,
)

__all__ = [
    "certificates",
    "module_mta",
    "module_relay",
    "mta",
    "relay",
    "scripted_server",
    "smtpd_factory",
    "traffic",
]

REPO = Path(__file__).resolve().parents[2]
_HERE_BIN = Path(sys.executable).parent
BIN = _HERE_BIN if (_HERE_BIN / "sendmail").exists() else REPO / ".venv" / "bin"

CORPUS = Path("/work/shared/compat/corpus")
if not CORPUS.is_dir():  # the shared tree may also sit next to a checkout
    CORPUS = REPO.parent / "shared" / "compat" / "corpus"

DOMAIN = "example.com"
#: general.hostname: its short name "vm" makes mutt's root@vm local on any machine.
HOSTNAME = "vm.example.net"
RELAY_USER = "relay-user"
#: Distinctive, so that any leak of it (or of its base64) is found in the output.
PASSWORD = "Pw-e2e-7QzK!x9"
#: root and nobody go to the admin (nobody through root: a nested alias).
ALIASES = "# test aliases\nroot: admin@example.com\nnobody: root\n"
LOGIN = pwd.getpwuid(os.getuid()).pw_name


def secret_forms(user: str = RELAY_USER, password: str = PASSWORD) -> list[str]:
    """The password as it could leak: plain, and base64 as AUTH PLAIN and AUTH LOGIN send it."""
    forms = [password, base64.b64encode(password.encode()).decode()]
    for authzid in ("", user):
        blob = f"{authzid}\0{user}\0{password}".encode()
        forms.append(base64.b64encode(blob).decode())
    return forms


@dataclass
class Result:
    """What one ``sendmail`` run did, as its caller sees it."""

    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: str
    elapsed: float

    @property
    def lines(self) -> list[str]:
        """The non-empty lines of stderr."""
        return [line for line in self.stderr.splitlines() if line.strip()]

    def __str__(self) -> str:
        return (
            f"{self.argv} -> {self.returncode} in {self.elapsed:.2f}s\n"
            f"stdout: {self.stdout!r}\nstderr:\n{self.stderr}"
        )


def closed_port() -> int:
    """A port on 127.0.0.1 that nobody listens on (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
    return port


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _toml_table(header: str, values: Mapping[str, object]) -> str:
    lines = [header]
    lines.extend(f"{key} = {_toml_value(v)}" for key, v in values.items() if v is not None)
    return "\n".join(lines) + "\n"


RelaySpec = RecordingServer | ScriptedServer | int | None


class Mta:
    """A configuration in a temporary directory, and the installed commands run against it."""

    def __init__(self, root: Path, certificates: Certificates) -> None:
        self.root = root
        self.certificates = certificates
        self.config = root / "pysendmail.toml"
        self.password_file = root / "relay-password"
        self.password_file.write_text(PASSWORD + "\n")
        self.password_file.chmod(0o640)
        self.aliases_file = root / "aliases"
        self.aliases_file.write_text(ALIASES)
        self.queue_dir = root / "spool"
        self.tmpdir = root / "tmp"
        self.tmpdir.mkdir()
        cache = root / "cache"
        cache.mkdir(mode=0o700)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PYSENDMAIL_")}
        self.env["PYSENDMAIL_CACHE_DIR"] = str(cache)
        self.env["TMPDIR"] = str(self.tmpdir)

    def relay_table(self, server: RelaySpec, **overrides: object) -> dict[str, object]:
        """The ``[[relay]]`` keys for ``server``: STARTTLS with the test CA and AUTH, by default.

        ``server`` may be a port number, or None for a port nobody listens on.
        """
        if server is None:
            port = closed_port()
        elif isinstance(server, int):
            port = server
        else:
            port = server.port
        table: dict[str, object] = {
            "host": LOOPBACK,
            "port": port,
            "tls": "starttls",
            "ca_file": self.certificates.ca_file,
            "user": RELAY_USER,
            "password_file": str(self.password_file),
            "connect_timeout": "5s",
            "command_timeout": "10s",
            "data_timeout": "10s",
        }
        if isinstance(server, RecordingServer) and server.tls is None:
            table.update(tls="none", ca_file=None, user=None, password_file=None)
        table.update(overrides)
        return {k: v for k, v in table.items() if v is not None}

    def configure(
        self,
        *relays: RelaySpec | dict[str, object],
        mode: str = "direct",
        general: Mapping[str, object] | None = None,
        extra: str = "",
    ) -> Path:
        """Write the configuration: ``relays`` in order (servers, ports, or ready tables)."""
        values: dict[str, object] = {
            "mode": mode,
            "hostname": HOSTNAME,
            "domain": DOMAIN,
            "aliases_file": str(self.aliases_file),
            "queue_dir": str(self.queue_dir),
        }
        values.update(general or {})
        text = _toml_table("[general]", values)
        for spec in relays:
            table = spec if isinstance(spec, dict) else self.relay_table(spec)
            text += "\n" + _toml_table("[[relay]]", table)
        if extra:
            text += "\n" + extra.strip() + "\n"
        self.config.write_text(text)
        return self.config

    def run(
        self,
        *argv: str,
        stdin: bytes = b"",
        program: str = "sendmail",
        config: bool = True,
        timeout: float = 30,
    ) -> Result:
        """Run ``program -C CONFIG argv...`` with ``stdin``; ``config=False`` leaves out ``-C``."""
        words = [str(BIN / program)]
        if config:
            words += ["-C", str(self.config)]
        words += list(argv)
        started = time.monotonic()
        proc = subprocess.run(
            words,
            input=stdin,
            capture_output=True,
            env=self.env,
            cwd=self.root,
            timeout=timeout,
            check=False,
        )
        return Result(
            words,
            proc.returncode,
            proc.stdout,
            proc.stderr.decode("utf-8", "replace"),
            time.monotonic() - started,
        )


@pytest.fixture
def mta(tmp_path: Path, certificates: Certificates) -> Mta:
    return Mta(tmp_path, certificates)


@pytest.fixture
def relay(smtpd_factory: Callable[..., RecordingServer]) -> RecordingServer:
    """A relay that wants STARTTLS and then AUTH PLAIN with the test password."""
    return smtpd_factory(tls="starttls", auth=("PLAIN",), credentials={RELAY_USER: PASSWORD})


@pytest.fixture(scope="module")
def module_relay(certificates: Certificates) -> Iterator[RecordingServer]:
    """One STARTTLS + AUTH relay for a whole module (the corpus)."""
    server = RecordingServer(
        tls="starttls",
        certificates=certificates,
        auth=("PLAIN",),
        credentials={RELAY_USER: PASSWORD},
    )
    with server:
        yield server


class Traffic:
    """What a (shared) relay received since this object was made."""

    def __init__(self, server: RecordingServer) -> None:
        self.server = server
        self._sessions = len(server.sessions)
        self._envelopes = len(server.envelopes)

    @property
    def sessions(self) -> list[RecordedSession]:
        return self.server.sessions[self._sessions :]

    @property
    def envelopes(self) -> list[RecordedEnvelope]:
        return self.server.envelopes[self._envelopes :]

    @property
    def commands(self) -> list[str]:
        return [line for session in self.sessions for line in session.commands]


@pytest.fixture(scope="module")
def module_mta(
    tmp_path_factory: pytest.TempPathFactory,
    certificates: Certificates,
    module_relay: RecordingServer,
) -> Mta:
    """One direct-mode configuration through ``module_relay`` for a whole module.

    Validating a new configuration imports pydantic; sharing one lets every
    run after the first use the snapshot, which keeps the module fast.
    """
    mta = Mta(tmp_path_factory.mktemp("shared"), certificates)
    mta.configure(module_relay)
    return mta


@pytest.fixture
def traffic(module_relay: RecordingServer) -> Traffic:
    """What the shared ``module_relay`` receives during this test."""
    return Traffic(module_relay)


# --------------------------------------------------------------------------- message helpers


def split_message(data: bytes) -> tuple[list[bytes], bytes]:
    """The header lines (each without its CRLF; folded lines stay separate) and the body."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return data.split(b"\r\n"), b""
    return head.split(b"\r\n"), body


def crlf(data: bytes) -> bytes:
    """``data`` with every line ending (LF, CRLF, lone CR) made CRLF, as the intake does."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def header_names(lines: Sequence[bytes]) -> list[str]:
    """The field names of the header lines, lower-cased (continuations skipped)."""
    return [
        line.split(b":", 1)[0].decode("ascii", "replace").lower()
        for line in lines
        if line and line[:1] not in (b" ", b"\t")
    ]
