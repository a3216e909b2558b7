"""What importing and using the client loads: ``sendmail`` in direct mode pays for every module.

Issue 3: a direct-mode ``sendmail`` must be no slower than msmtp (about 50 ms),
and must not load ``ssl`` unless it relays over TLS. Each module below costs
from half a millisecond (``re``, ``enum``) to 10 ms (``ssl``, ``typing``,
``logging``), so none of them may creep back into the plain-TCP path. The
client runs in a fresh ``python -S`` (no ``site``, which would load some of
them itself), with the repository on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.support.smtpd import Peer, ScriptedServer

ScriptedFactory = Callable[..., ScriptedServer]

REPO = Path(__file__).resolve().parents[2]

#: Never loaded by importing the client or by a plain-TCP session.
FORBIDDEN = (
    "ssl",
    "_ssl",
    "logging",
    "dataclasses",
    "enum",
    "typing",
    "re",
    "inspect",
    "hashlib",
    "collections",
    "functools",
    "__future__",
    "socket",
    "selectors",
    "contextlib",
    "base64",
    "hmac",
    "importlib",
)


def loaded_after(code: str) -> set[str]:
    """The modules a fresh ``python -S`` has loaded after running ``code``."""
    # json itself loads re: only what was there before json is counted.
    script = (
        f"import sys\n{code}\nloaded = sorted(sys.modules)\nimport json\nprint(json.dumps(loaded))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-S", "-c", script],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_importing_the_client_loads_nothing_heavy() -> None:
    loaded = loaded_after("import pysendmail.smtp.client")
    assert "pysendmail.smtp.client" in loaded
    assert sorted(loaded & set(FORBIDDEN)) == []


def test_importing_the_package_loads_only_the_package() -> None:
    loaded = loaded_after("import pysendmail.smtp")
    assert not {m for m in loaded if m.startswith("pysendmail.smtp.")}
    assert "_socket" not in loaded


def test_the_reset_error_is_one_class_in_errors_and_costs_no_client() -> None:
    # Defined in pysendmail.errors with the other SMTP errors; the package and
    # the client (its home before) re-export that very class. Catching it must
    # not load the client: ``except SMTPResetError`` in a caller that never
    # opened a session costs nothing.
    loaded = loaded_after(
        "import pysendmail.errors as e\n"
        "from pysendmail.smtp import SMTPResetError\n"
        "assert SMTPResetError is e.SMTPResetError\n"
        "assert SMTPResetError.__module__ == 'pysendmail.errors'\n"
        "assert 'pysendmail.smtp.client' not in sys.modules\n"
        "from pysendmail.smtp.client import SMTPResetError as old_home\n"
        "assert old_home is SMTPResetError\n"
    )
    assert "pysendmail.smtp.client" in loaded


def plain_session(peer: Peer) -> None:
    # No STARTTLS offered: "auto" must then stay in plaintext without ssl.
    peer.handshake("PIPELINING", "8BITMIME", "SIZE 100000")
    peer.expect(b"MAIL FROM:<a@b.test> SIZE=")
    peer.expect(b"RCPT TO:<c@d.test>")
    peer.expect(b"DATA")
    peer.send(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n")
    peer.recv_until(b"\r\n.\r\n")
    peer.send(b"250 2.0.0 queued\r\n")
    peer.reply(b"QUIT", b"221 bye\r\n")


def test_a_plain_session_loads_no_ssl_and_no_logging(scripted_server: ScriptedFactory) -> None:
    server = scripted_server(plain_session)
    loaded = loaded_after(
        "from pysendmail.smtp.client import SMTP\n"
        f"with SMTP.start('127.0.0.1', {server.port}, helo='c.test') as smtp:\n"
        "    result = smtp.send_message(b'Subject: x\\n\\nbody\\n', 'a@b.test', 'c@d.test')\n"
        "    assert result.response.code == 250, result\n"
    )
    server.wait()
    assert sorted(loaded & set(FORBIDDEN)) == []
