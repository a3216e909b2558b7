"""SIGHUP: the configuration is loaded again; a broken one leaves the running one in place."""

from __future__ import annotations

import signal
import smtplib
import time
from pathlib import Path

import pytest

from pysendmail.server.passwords import hash_password
from tests.server.helpers import InProcessServer, ServeProcess, closed_port, write_config
from tests.support.smtpd import Certificates, RecordingServer


def test_reload_applies_new_rules_and_says_what_changed(tmp_path: Path) -> None:
    port = closed_port()
    config = write_config(tmp_path, port)
    with InProcessServer(config) as srv:
        with smtplib.SMTP(*srv.smtp, timeout=10) as client:
            client.ehlo("client")
            assert client.mail("someone@elsewhere.example")[0] == 250
        write_config(
            tmp_path,
            port,
            server={
                "allowed_senders": ["*@example.com"],
                "max_recipients": 5,
                "listen": ["127.0.0.1:2"],
            },
        )
        assert srv.reload() is True
        with smtplib.SMTP(*srv.smtp, timeout=10) as client:  # still on the old address
            client.ehlo("client")
            assert client.mail("someone@elsewhere.example")[0] == 553
            assert client.mail("app@example.com")[0] == 250
    messages = srv.messages()
    assert "reload: server.allowed_senders: () -> ('*@example.com',)" in messages
    assert "reload: server.max_recipients: 100 -> 5" in messages
    assert (
        "reload: server.listen: ('127.0.0.1:0',) -> ('127.0.0.1:2',) (restart to apply)" in messages
    )
    assert "configuration reloaded: 3 change(s)" in messages


def test_a_broken_configuration_is_not_applied(tmp_path: Path) -> None:
    port = closed_port()
    config = write_config(tmp_path, port, server={"allowed_senders": ["*@example.com"]})
    with InProcessServer(config) as srv:
        config.write_text(config.read_text() + "\n[server]\nlisten = 25\n")
        assert srv.reload() is False
        with smtplib.SMTP(*srv.smtp, timeout=10) as client:
            client.ehlo("client")
            assert client.mail("someone@elsewhere.example")[0] == 553  # the old rules hold
    (failed,) = [m for m in srv.messages() if m.startswith("reload failed")]
    assert "the running configuration stays" in failed and str(config) in failed


def test_reload_adds_a_user(tmp_path: Path, certificates: Certificates) -> None:
    cert = tmp_path / "server.pem"
    certificates.server_cert.private_key_and_cert_chain_pem.write_to_path(str(cert))
    users = tmp_path / "users"
    users.write_text(f"old:{hash_password('old-password')}\n")
    server = {"tls_cert": str(cert), "users_file": str(users)}
    config = write_config(tmp_path, closed_port(), server=server)
    with InProcessServer(config) as srv:
        users.write_text(f"new:{hash_password('new-password')}\n")
        assert srv.reload() is True
        with smtplib.SMTP(*srv.smtp, timeout=10) as client:
            client.starttls(context=certificates.client_context())
            client.ehlo("client")
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login("old", "old-password")
            assert client.login("new", "new-password")[0] == 235
    messages = srv.messages()
    assert "reload: server.users: new added" in messages
    assert "reload: server.users: old removed" in messages
    assert not any("password" in m and "hash" in m for m in messages)


def test_sighup_reloads_the_running_process(tmp_path: Path, relay: RecordingServer) -> None:
    config = write_config(tmp_path, relay.port)
    with ServeProcess(config, tmp_path) as serve:
        write_config(tmp_path, relay.port, server={"max_recipients": 7})
        serve.signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while not any(
            r.get("message", "").startswith("configuration reloaded") for r in serve.lines
        ):
            assert time.monotonic() < deadline, serve.lines
            time.sleep(0.05)
        with smtplib.SMTP(*serve.smtp, timeout=10) as client:
            client.ehlo("client")
            client.mail("app@example.com")
            for n in range(7):
                assert client.rcpt(f"r{n}@example.org")[0] == 250
            assert client.rcpt("r7@example.org")[0] == 452
        assert serve.stop() == 0
    messages = [r.get("message", "") for r in serve.lines]
    assert "reload: server.max_recipients: 100 -> 7" in messages
    assert serve.stderr == b""


def test_serve_main_runs_until_sigterm_in_this_process(tmp_path: Path) -> None:
    import io
    import os
    import threading

    from pysendmail.cli import Streams
    from pysendmail.cli.admin import main as admin_main

    config = write_config(tmp_path, closed_port())
    out = io.StringIO()
    env = {"PYSENDMAIL_CACHE_DIR": str(tmp_path / "cache")}
    failures: list[BaseException] = []

    def drive() -> None:
        try:
            deadline = time.monotonic() + 20
            while " serving on " not in out.getvalue():
                assert time.monotonic() < deadline, out.getvalue()
                time.sleep(0.02)
            line = next(li for li in out.getvalue().splitlines() if " serving on " in li)
            host, port = line.split(" serving on ")[1].split(", ")[0].rsplit(":", 1)
            with smtplib.SMTP(host, int(port), timeout=10) as client:
                client.sendmail("app@example.com", ["a@example.org"], b"Subject: x\r\n\r\ny\r\n")
            os.kill(os.getpid(), signal.SIGHUP)
            while "configuration reloaded" not in out.getvalue():
                assert time.monotonic() < deadline, out.getvalue()
                time.sleep(0.02)
        except BaseException as exc:
            failures.append(exc)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    driver = threading.Thread(target=drive)
    driver.start()
    status = admin_main(
        ["serve", "-C", str(config)], Streams(io.BytesIO(), out, io.StringIO(), env)
    )
    driver.join(10)
    assert failures == []
    assert status == 0
    text = out.getvalue()
    assert "configuration reloaded: 0 change(s)" in text and text.rstrip().endswith('"stopped"}')
    assert len(os.listdir(tmp_path / "spool" / "queue")) == 1  # the relay is down: still queued
