"""The README's first command: pysendmail's main job end to end, with nothing outside.

``python -m pysendmail.demo`` (what ``make demo`` runs):

1. makes a throw-away certificate authority and a certificate for 127.0.0.1
   (trustme, a dev dependency),
2. starts an embedded aiosmtpd relay on 127.0.0.1 that offers STARTTLS and
   requires AUTH over TLS,
3. writes an embedded default configuration (direct mode, that relay, STARTTLS
   verified against the throw-away CA, a password file of mode 0600),
4. pipes an example message into the installed ``sendmail -t -i``, as PHP's
   ``mail()`` does, and
5. prints the envelope and the bytes that arrived at the relay.

It never talks to anything but 127.0.0.1, and it leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from typing import Any

DEMO_USER = "demo"
DEMO_PASSWORD = "correct horse battery staple"  # noqa: S105 - a throw-away local demo secret

EXAMPLE_MESSAGE = b"""\
To: Site Admin <admin@example.org>
Cc: root
Bcc: audit@example.org
Subject: Nightly backup finished
Content-Type: text/plain; charset=UTF-8

The nightly backup finished in 42 s.
.
A line with a lone dot above: it stays in the message (sendmail -i).
"""


class _Recorder:
    """aiosmtpd handler that keeps what arrived."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            {
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "data": bytes(envelope.original_content or envelope.content),
                "tls": session.ssl is not None,
                "auth": session.authenticated,
            }
        )
        return "250 2.0.0 Ok: queued by the demo relay"


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
    from aiosmtpd.smtp import AuthResult, LoginPassword

    ok = (
        isinstance(data, LoginPassword)
        and data.login == DEMO_USER.encode()
        and data.password == DEMO_PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False)


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _sendmail_command() -> list[str]:
    here = os.path.dirname(sys.executable)
    script = os.path.join(here, "sendmail")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-m", "pysendmail"]


def main() -> int:
    try:
        import trustme
        from aiosmtpd.controller import Controller
    except ImportError as exc:
        print(f"demo: needs the dev extras ({exc.name}): run `make demo`", file=sys.stderr)
        return 69

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    import ssl

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    recorder = _Recorder()
    controller = Controller(
        recorder,
        hostname="127.0.0.1",
        port=_free_port(),
        tls_context=server_ctx,
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=_authenticator,
    )
    workdir = tempfile.mkdtemp(prefix="pysendmail-demo-")
    try:
        controller.start()
        port = controller.port
        ca_file = os.path.join(workdir, "demo-ca.pem")
        ca.cert_pem.write_to_path(ca_file)
        secret_file = os.path.join(workdir, "relay-password")
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(DEMO_PASSWORD + "\n")
        config = os.path.join(workdir, "pysendmail.toml")
        with open(config, "w") as f:
            f.write(
                textwrap.dedent(
                    f"""\
                    # The demo's embedded default configuration.
                    [general]
                    hostname = "demo.example.org"
                    domain = "example.org"
                    mode = "direct"
                    aliases_file = "{workdir}/aliases"

                    [[relay]]
                    host = "127.0.0.1"
                    port = {port}
                    tls = "starttls"
                    tls_hostname = "127.0.0.1"
                    ca_file = "{ca_file}"
                    user = "{DEMO_USER}"
                    password_file = "{secret_file}"
                    """
                )
            )
        with open(os.path.join(workdir, "aliases"), "w") as f:
            f.write("# root's mail goes to the admin\nroot: admin@example.org\n")

        argv = [*_sendmail_command(), "-C", config, "-t", "-i"]
        print("$ " + " ".join(argv[-4:]).replace(config, "pysendmail.toml") + " < message")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYSENDMAIL_")}
        proc = subprocess.run(
            [*argv, "-v"],
            input=EXAMPLE_MESSAGE,
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
        )
        sys.stdout.write(proc.stderr.decode("utf-8", "replace"))
        print(f"sendmail exited {proc.returncode}")
        if proc.returncode != 0 or not recorder.messages:
            print("demo: the message did not arrive", file=sys.stderr)
            return proc.returncode or 70
        for msg in recorder.messages:
            print()
            print(f"The relay received, over {'TLS' if msg['tls'] else 'plaintext'}", end="")
            print(" after AUTH:" if msg["auth"] else " without AUTH:")
            print(f"  MAIL FROM:<{msg['mail_from']}>")
            for rcpt in msg["rcpt_tos"]:
                print(f"  RCPT TO:<{rcpt}>")
            print("  DATA:")
            for line in msg["data"].decode("utf-8", "replace").splitlines():
                print("  | " + line)
        return 0
    finally:
        controller.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
