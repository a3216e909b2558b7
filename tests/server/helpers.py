"""The sidecar under test: a configuration, the server in this process or as a subprocess.

``InProcessServer`` runs ``App`` (the whole of ``pysendmail serve`` but the
signal handlers) on an event loop in a thread, with its log collected::

    with InProcessServer(write_config(tmp_path, relay.port)) as srv:
        with smtplib.SMTP(*srv.smtp) as client: ...
        srv.queue.ids(); srv.log_records(); srv.http_get("/metrics")

``ServeProcess`` runs the installed ``pysendmail serve`` console script with
an environment stripped of ``PYSENDMAIL_…`` variables (and its own snapshot
directory), reads its JSON log lines from stdout, and stops it with SIGTERM.
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pysendmail.queue.spool import Queue
from pysendmail.server.main import App, load
from pysendmail.server.metrics import Metrics, ServerLogger

REPO = Path(__file__).resolve().parents[2]
_HERE_BIN = Path(sys.executable).parent
BIN = _HERE_BIN if (_HERE_BIN / "pysendmail").exists() else REPO / ".venv" / "bin"
PYSENDMAIL = BIN / "pysendmail"

DOMAIN = "example.com"
HOSTNAME = "mx.example.com"
ALIASES = "root: admin@example.com\npostmaster: root\n"


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(type(value))


def table(name: str, values: Mapping[str, object]) -> str:
    lines = [f"[{name}]"] + [f"{key} = {toml_value(val)}" for key, val in values.items()]
    return "\n".join(lines) + "\n"


def write_config(
    directory: Path,
    relay_port: int,
    *,
    server: Mapping[str, object] | None = None,
    queue: Mapping[str, object] | None = None,
    general: Mapping[str, object] | None = None,
    log: Mapping[str, object] | None = None,
    name: str = "pysendmail.toml",
) -> Path:
    """A configuration: one relay (no TLS) on 127.0.0.1:``relay_port``, a spool in ``directory``.

    The server listens on 127.0.0.1, port chosen by the kernel; HTTP probes too.
    """
    aliases = directory / "aliases"
    if not aliases.exists():
        aliases.write_text(ALIASES)
    general_values: dict[str, object] = {
        "hostname": HOSTNAME,
        "domain": DOMAIN,
        "queue_dir": str(directory / "spool"),
        "aliases_file": str(aliases),
    }
    general_values.update(general or {})
    relay_values = {
        "host": "127.0.0.1",
        "port": relay_port,
        "tls": "none",
        "connect_timeout": 5,
        "command_timeout": 5,
        "data_timeout": 5,
    }
    queue_values: dict[str, object] = {"connections": 4, "retry_min": "1s", "retry_max": "2s"}
    queue_values.update(queue or {})
    server_values: dict[str, object] = {
        "listen": ["127.0.0.1:0"],
        "http_listen": "127.0.0.1:0",
        "shutdown_timeout": 10,
    }
    server_values.update(server or {})
    log_values: dict[str, object] = {"target": "stdout", "format": "json"}
    log_values.update(log or {})
    text = (
        table("general", general_values)
        + "[[relay]]\n"
        + "".join(f"{k} = {toml_value(v)}\n" for k, v in relay_values.items())
        + table("queue", queue_values)
        + table("server", server_values)
        + table("log", log_values)
    )
    path = directory / name
    path.write_text(text)
    return path


def closed_port() -> int:
    """A port on 127.0.0.1 that nobody listens on (for a relay that is down)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_environ(directory: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSENDMAIL_")}
    env["PYSENDMAIL_CACHE_DIR"] = str(directory / "cache")
    env["TMPDIR"] = str(directory / "tmpdir")
    os.makedirs(env["TMPDIR"], exist_ok=True)
    return env


class _Lines:
    """A text stream that keeps every line written (the server's log)."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self._partial = ""

    def write(self, data: str) -> int:
        self.text.append(data)
        return len(data)

    def flush(self) -> None:
        return None

    def isatty(self) -> bool:
        return False

    def records(self) -> list[dict[str, Any]]:
        joined = "".join(list(self.text))
        return [json.loads(line) for line in joined.splitlines() if line.strip()]


def _address(addresses: list[str], scheme: str) -> tuple[str, int]:
    for entry in addresses:
        if scheme == "http" and entry.startswith("http://"):
            host, port = entry[7:].rsplit(":", 1)
            return host, int(port)
        if scheme == "smtp" and re.fullmatch(r"[0-9.]+:\d+", entry):
            host, port = entry.rsplit(":", 1)
            return host, int(port)
    raise AssertionError(f"no {scheme} address in {addresses}")


def http_get(address: tuple[str, int], path: str, method: str = "GET") -> tuple[int, str, str]:
    """(status, content type, body) of one request to the probe server."""
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        body = response.read().decode("utf-8")
        return response.status, response.getheader("Content-Type") or "", body
    finally:
        conn.close()


def parse_metrics(text: str) -> dict[str, float]:
    """``name{labels}`` → value, for every sample line of the Prometheus text."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


class InProcessServer:
    """``pysendmail serve`` without the process: ``App`` on a loop in a thread."""

    def __init__(self, config: Path, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.environ = dict(environ or {})
        self.stream = _Lines()
        loaded = load(str(config), self.environ)
        self.metrics = Metrics()
        settings = loaded.settings
        self.logger = ServerLogger(
            "stdout", "json", "mail", metrics=self.metrics, level=settings.log.level
        )
        self.logger.stream = self.stream  # type: ignore[assignment]
        self.queue = Queue(settings.general.queue_dir)
        self.queue.ensure()
        self.app = App(str(config), self.environ, loaded, self.logger, self.metrics)
        self.status: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="serve-under-test", daemon=True)

    def _run(self) -> None:
        import asyncio

        try:
            self.status = asyncio.run(self.app.run())
        except BaseException as exc:
            self.error = exc

    def start(self) -> InProcessServer:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self.app.ready.wait(0.05):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError(f"the server did not start: {self.error!r}")
        return self

    def stop(self) -> int | None:
        if self._thread.is_alive():
            self.app.stop_soon()
            self._thread.join(30)
            assert not self._thread.is_alive(), "the server did not stop"
        if self.error is not None:
            raise self.error
        return self.status

    def __enter__(self) -> InProcessServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def smtp(self) -> tuple[str, int]:
        return _address(self.app.addresses, "smtp")

    @property
    def http(self) -> tuple[str, int]:
        return _address(self.app.addresses, "http")

    def http_get(self, path: str, method: str = "GET") -> tuple[int, str, str]:
        return http_get(self.http, path, method)

    def log_records(self) -> list[dict[str, Any]]:
        return self.stream.records()

    def messages(self) -> list[str]:
        return [r.get("message", "") for r in self.log_records()]

    def reload(self) -> bool:
        import asyncio

        assert self.app.loop is not None
        future = asyncio.run_coroutine_threadsafe(self.app.reload(), self.app.loop)
        return future.result(30)

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for the server")
            time.sleep(0.02)


class ServeProcess:
    """The installed ``pysendmail serve`` as a child process (stopped with SIGTERM)."""

    def __init__(self, config: Path, directory: Path) -> None:
        self.config = config
        self.env = clean_environ(directory)
        self.proc = subprocess.Popen(
            [str(PYSENDMAIL), "serve", "-C", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            cwd=str(directory),
        )
        self.lines: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.stderr = b""
        self.addresses: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(30):
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"serve did not start: {self.raw!r}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.raw.append(raw)
            record = json.loads(raw)
            self.lines.append(record)
            message = record.get("message", "")
            if " serving on " in message:
                self.addresses = message.split(" serving on ", 1)[1].split(", ")
                self._ready.set()
        self._ready.set()

    @property
    def smtp(self) -> tuple[str, int]:
        return _address(self.addresses, "smtp")

    @property
    def http(self) -> tuple[str, int]:
        return _address(self.addresses, "http")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self._reader.join(10)
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.proc.stderr.close()
        return status

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self._reader.join(10)
            self.proc.stdout.close()
        if self.proc.stderr is not None and not self.proc.stderr.closed:
            self.proc.stderr.close()


def message_ids(envelopes: Iterator[Any] | list[Any]) -> list[str]:
    """The Message-ID header of each delivered message (``RecordedEnvelope.data``)."""
    found = []
    for envelope in envelopes:
        match = re.search(rb"^Message-ID:\s*(<[^>\r\n]*>)", envelope.data, re.M | re.I)
        found.append(match.group(1).decode() if match else "")
    return found


class RawClient:
    """A byte-level SMTP client: send lines, read whole (multi-line) replies."""

    def __init__(self, address: tuple[str, int] | str, timeout: float = 10.0) -> None:
        import socket

        if isinstance(address, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(address)
        else:
            self.sock = socket.create_connection(address, timeout=timeout)
        self.file = self.sock.makefile("rb")

    def reply(self) -> str:
        """The next reply, lines joined with "\\n" ("" when the server closed the connection)."""
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                return "\n".join(lines)
            text = line.decode("utf-8").rstrip("\r\n")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                return "\n".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: str) -> str:
        self.send(line.encode("utf-8") + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        """True when the server has closed the connection (nothing more to read)."""
        return self.file.read() == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
