"""STARTTLS and AUTH on the sidecar: only over TLS, only with the right password."""

from __future__ import annotations

import base64
import smtplib
from pathlib import Path

import pytest

from pysendmail.server.passwords import hash_password
from tests.server.helpers import InProcessServer, RawClient, closed_port, write_config
from tests.support.smtpd import Certificates

PASSWORD = "Tr0ub4dor&3-sidecar"
MESSAGE = b"Subject: hello\r\n\r\nbody\r\n"


def tls_files(tmp_path: Path, certificates: Certificates) -> tuple[str, str]:
    cert = tmp_path / "server.pem"
    certificates.server_cert.private_key_and_cert_chain_pem.write_to_path(str(cert))
    return str(cert), str(cert)


def auth_config(tmp_path: Path, certificates: Certificates, **server: object) -> Path:
    cert, key = tls_files(tmp_path, certificates)
    users = tmp_path / "users"
    users.write_text(f"# name:hash\napp:{hash_password(PASSWORD)}\n")
    users.chmod(0o640)
    values: dict[str, object] = {"tls_cert": cert, "tls_key": key, "users_file": str(users)}
    values.update(server)
    return write_config(tmp_path, closed_port(), server=values)


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def test_auth_is_refused_over_plaintext(tmp_path: Path, certificates: Certificates) -> None:
    config = auth_config(tmp_path, certificates)
    with InProcessServer(config) as srv, RawClient(srv.smtp) as client:
        client.reply()
        ehlo = client.command("EHLO client").split("\n")
        assert "250-STARTTLS" in ehlo
        assert not any("AUTH" in line for line in ehlo)  # not offered before TLS
        reply = client.command(f"AUTH PLAIN {plain('app', PASSWORD)}")
        assert reply == "538 5.7.11 Encryption required for requested authentication mechanism"
        reply = client.command("AUTH LOGIN")
        assert reply.startswith("538 ")
    # The password was never checked, so never logged as a failure either.
    assert srv.metrics.rejections["auth"] == 0


def test_a_wrong_password_gets_535(tmp_path: Path, certificates: Certificates) -> None:
    config = auth_config(tmp_path, certificates)
    with InProcessServer(config) as srv, smtplib.SMTP(*srv.smtp, timeout=10) as client:
        client.starttls(context=certificates.client_context())
        code, text = client.ehlo("client")
        assert b"AUTH LOGIN PLAIN" in text
        code, text = client.docmd("AUTH", f"PLAIN {plain('app', 'wrong')}")
        assert (code, text) == (535, b"5.7.8 Authentication credentials invalid")
        code, _ = client.docmd("AUTH", f"PLAIN {plain('nobody', PASSWORD)}")
        assert code == 535  # an unknown user looks the same
        assert srv.metrics.rejections["auth"] == 2
        records = srv.log_records()
        failures = [r for r in records if "authentication failed" in r.get("message", "")]
        assert len(failures) == 2
        assert all(PASSWORD not in str(r) and "wrong" not in str(r) for r in records)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_the_right_password_logs_in_and_mail_is_accepted(
    tmp_path: Path, certificates: Certificates, mechanism: str
) -> None:
    config = auth_config(tmp_path, certificates, require_auth=True)
    with InProcessServer(config) as srv, smtplib.SMTP(*srv.smtp, timeout=10) as client:
        client.starttls(context=certificates.client_context())
        client.ehlo("client")
        assert client.mail("app@example.com")[0] == 530  # require_auth
        client.user, client.password = "app", PASSWORD
        method = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        assert client.auth(mechanism, method) == (235, b"2.7.0 Authentication successful")
        client.sendmail("app@example.com", ["a@example.org"], MESSAGE)
    (accepted,) = [r for r in srv.log_records() if r.get("nrcpt")]
    assert accepted["sasl_username"] == "app"
    (queue_id,) = srv.queue.ids()
    envelope, _ = srv.queue.read_envelope("queue", queue_id)
    with srv.queue.open_message("queue", queue_id) as f:
        f.seek(envelope.message_offset)
        received = f.readline() + f.readline()
    # RFC 3848: ESMTP under TLS (S), authenticated (A).
    assert received == (
        b"Received: from client (unknown [127.0.0.1])\r\n"
        b"\tby mx.example.com (pysendmail) with ESMTPSA id " + queue_id.encode() + b";\r\n"
    )


def test_three_failures_end_the_session(tmp_path: Path, certificates: Certificates) -> None:
    config = auth_config(tmp_path, certificates)
    with InProcessServer(config) as srv, smtplib.SMTP(*srv.smtp, timeout=10) as client:
        client.starttls(context=certificates.client_context())
        client.ehlo("client")
        for _ in range(2):
            assert client.docmd("AUTH", f"PLAIN {plain('app', 'guess')}")[0] == 535
        code, text = client.docmd("AUTH", f"PLAIN {plain('app', 'guess')}")
        assert (code, text) == (421, b"4.7.0 Too many failed authentications, goodbye")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()


def test_require_tls_refuses_mail_before_starttls(
    tmp_path: Path, certificates: Certificates
) -> None:
    cert, key = tls_files(tmp_path, certificates)
    config = write_config(
        tmp_path, closed_port(), server={"tls_cert": cert, "tls_key": key, "require_tls": True}
    )
    with InProcessServer(config) as srv, smtplib.SMTP(*srv.smtp, timeout=10) as client:
        client.ehlo("client")
        assert client.mail("app@example.com")[0] == 530
        client.starttls(context=certificates.client_context())
        client.ehlo("client")
        client.sendmail("app@example.com", ["a@example.org"], MESSAGE)
        assert len(srv.queue.ids()) == 1
        # No users: AUTH is not offered even over TLS.
        assert client.docmd("AUTH", "PLAIN")[0] == 503


def test_mechanism_names_are_case_insensitive(tmp_path: Path, certificates: Certificates) -> None:
    config = auth_config(tmp_path, certificates)
    with InProcessServer(config) as srv, smtplib.SMTP(*srv.smtp, timeout=10) as client:
        client.starttls(context=certificates.client_context())
        client.ehlo("client")
        code, _ = client.docmd("AUTH", f"plain {plain('app', PASSWORD)}")
        assert code == 235
