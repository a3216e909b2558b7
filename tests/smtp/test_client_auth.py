"""AUTH: every mechanism succeeding and failing, the plaintext rule, redaction, hostile servers."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable

import pytest

from pysendmail.errors import (
    SMTPAuthenticationError,
    SMTPSecurityError,
    SMTPServerBusy,
    SMTPUnsupportedCommand,
)
from pysendmail.smtp import SMTP
from tests.support.smtpd import Certificates, Peer, RecordingServer, ScriptedServer

ServerFactory = Callable[..., RecordingServer]
ScriptedFactory = Callable[..., ScriptedServer]
ALL = ("PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2")
USER, PASSWORD = "alice@example.test", "correct horse"


def tls_server(factory: ServerFactory, *mechanisms: str) -> RecordingServer:
    return factory(tls="starttls", auth=mechanisms or ALL, credentials={USER: PASSWORD})


@pytest.mark.parametrize("mechanism", ALL)
def test_each_mechanism_succeeds(
    smtpd_factory: ServerFactory, certificates: Certificates, mechanism: str
) -> None:
    server = tls_server(smtpd_factory)
    with SMTP.start(
        server.host,
        server.port,
        ca_file=certificates.ca_file,
        user=USER,
        secret=PASSWORD,
        authtype=mechanism.lower().replace("-", "_"),
    ) as smtp:
        smtp.send_message(b"Subject: authed\r\n\r\n", "a@b.test", "c@d.test")
    [session] = server.sessions
    assert session.user == USER
    assert any(c.startswith(f"AUTH {mechanism}") for c in session.commands)
    assert len(server.envelopes) == 1


@pytest.mark.parametrize("mechanism", ALL)
def test_each_mechanism_fails_with_a_wrong_secret(
    smtpd_factory: ServerFactory, certificates: Certificates, mechanism: str
) -> None:
    server = tls_server(smtpd_factory)
    smtp = SMTP(server.host, server.port, ca_file=certificates.ca_file)
    with pytest.raises(SMTPAuthenticationError) as info:
        smtp.start(user=USER, secret="wrong", authtype=mechanism)
    assert info.value.code == 535 and not info.value.temporary
    assert not smtp.started
    assert server.sessions[0].user is None
    assert server.commands[-1] == "QUIT"  # the session was closed politely


def test_automatic_choice_prefers_cram_md5(
    smtpd_factory: ServerFactory, certificates: Certificates
) -> None:
    server = tls_server(smtpd_factory)
    with SMTP.start(
        server.host, server.port, ca_file=certificates.ca_file, user=USER, secret=PASSWORD
    ) as smtp:
        assert smtp.capable_auth_types == ["CRAM-MD5", "LOGIN", "PLAIN", "XOAUTH2"]
        assert smtp.auth_capable("cram-md5")
    assert "AUTH CRAM-MD5" in server.commands


def test_automatic_choice_never_picks_xoauth2(
    smtpd_factory: ServerFactory, certificates: Certificates
) -> None:
    server = tls_server(smtpd_factory, "XOAUTH2")
    with pytest.raises(SMTPUnsupportedCommand, match="XOAUTH2"):
        SMTP.start(
            server.host, server.port, ca_file=certificates.ca_file, user=USER, secret=PASSWORD
        )
    assert not any(c.startswith("AUTH") for c in server.commands)


def test_mechanism_not_offered_is_refused_before_sending(
    smtpd_factory: ServerFactory, certificates: Certificates
) -> None:
    server = tls_server(smtpd_factory, "LOGIN")
    with SMTP.start(server.host, server.port, ca_file=certificates.ca_file) as smtp:
        with pytest.raises(SMTPUnsupportedCommand, match="PLAIN"):
            smtp.authenticate(USER, PASSWORD, "plain")
        with pytest.raises(ValueError, match="unknown AUTH mechanism"):
            smtp.authenticate(USER, PASSWORD, "kerberos")
        assert smtp.authenticate(USER, PASSWORD).code == 235
    assert [c for c in server.commands if c.startswith("AUTH")] == ["AUTH LOGIN"]


def test_no_credentials_over_plaintext(smtpd_factory: ServerFactory) -> None:
    server = smtpd_factory(auth=ALL, credentials={USER: PASSWORD}, auth_require_tls=False)
    with pytest.raises(SMTPSecurityError, match="without TLS"):
        SMTP.start(server.host, server.port, user=USER, secret=PASSWORD)
    assert server.commands == ["EHLO localhost", "QUIT"]
    assert PASSWORD.encode() not in server.sessions[0].transcript


def test_plaintext_auth_when_explicitly_allowed(smtpd_factory: ServerFactory) -> None:
    server = smtpd_factory(auth=("PLAIN",), credentials={USER: PASSWORD}, auth_require_tls=False)
    with SMTP.start(
        server.host, server.port, user=USER, secret=PASSWORD, allow_plaintext_auth=True
    ) as smtp:
        assert not smtp.encrypted
    assert server.sessions[0].user == USER


def test_user_and_secret_go_together(smtpd: RecordingServer) -> None:
    with pytest.raises(ValueError, match="together"):
        SMTP.start(smtpd.host, smtpd.port, user=USER)
    with pytest.raises(ValueError, match="together"):
        SMTP.start(smtpd.host, smtpd.port, secret=PASSWORD)
    assert smtpd.sessions == []  # refused before connecting


@pytest.mark.parametrize("user", ["al\rice", "al\nice", "al\0ice", "al\tice", "al\x7fice"])
def test_control_characters_in_the_user_are_refused(
    smtpd_factory: ServerFactory, certificates: Certificates, user: str
) -> None:
    server = tls_server(smtpd_factory)
    with pytest.raises(ValueError, match="control character"):
        SMTP.start(server.host, server.port, ca_file=certificates.ca_file, user=user, secret="x")
    assert server.sessions == []  # refused before connecting
    with SMTP.start(server.host, server.port, ca_file=certificates.ca_file) as smtp:
        with pytest.raises(ValueError, match="control character"):
            smtp.authenticate(user, "x", "PLAIN")
        smtp.noop()
    assert not any(c.startswith("AUTH") for c in server.commands)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "XOAUTH2"])
def test_the_trace_never_shows_credentials(
    smtpd_factory: ServerFactory, certificates: Certificates, mechanism: str
) -> None:
    server = tls_server(smtpd_factory)
    trace = io.StringIO()
    with SMTP.start(
        server.host,
        server.port,
        ca_file=certificates.ca_file,
        user=USER,
        secret=PASSWORD,
        authtype=mechanism,
        debug_output=trace,
    ):
        pass
    text = trace.getvalue()
    assert "<redacted>" in text
    secrets = [
        PASSWORD,
        base64.b64encode(PASSWORD.encode()).decode(),
        base64.b64encode(USER.encode()).decode(),
        base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode(),
        base64.b64encode(f"user={USER}\x01auth=Bearer {PASSWORD}\x01\x01".encode()).decode(),
    ]
    for secret in secrets:
        assert secret not in text
    assert "-> '235" in text


def test_temporary_auth_failure_is_server_busy(scripted_server: ScriptedFactory) -> None:
    def script(peer: Peer) -> None:
        peer.handshake("AUTH PLAIN")
        peer.reply(b"AUTH PLAIN ", b"454 4.7.0 Temporary authentication failure\r\n")
        peer.reply(b"QUIT", b"221 bye\r\n")

    server = scripted_server(script)
    with pytest.raises(SMTPServerBusy) as info:
        SMTP.start(server.host, server.port, user="u", secret="p", allow_plaintext_auth=True)
    assert info.value.temporary
    server.wait()


def test_any_5xx_during_auth_is_an_authentication_error(scripted_server: ScriptedFactory) -> None:
    def script(peer: Peer) -> None:
        peer.handshake("AUTH PLAIN")
        peer.reply(b"AUTH PLAIN ", b"504 5.5.4 Unrecognized authentication type\r\n")
        peer.reply(b"QUIT", b"221 bye\r\n")

    server = scripted_server(script)
    with pytest.raises(SMTPAuthenticationError, match="504"):
        SMTP.start(server.host, server.port, user="u", secret="p", allow_plaintext_auth=True)
    server.wait()


def test_endless_challenges_are_cancelled(scripted_server: ScriptedFactory) -> None:
    def script(peer: Peer) -> None:
        peer.handshake("AUTH LOGIN")
        peer.reply(b"AUTH LOGIN", b"334 VXNlcm5hbWU6\r\n")
        peer.reply(b"", b"334 UGFzc3dvcmQ6\r\n")
        peer.reply(b"", b"334 UGFzc3dvcmQ6\r\n")
        # The mechanism has no third step: the client cancels with "*".
        peer.reply(b"*\r\n", b"501 5.7.0 Auth aborted\r\n")
        peer.reply(b"NOOP", b"250 ok\r\n")
        peer.reply(b"QUIT", b"221 bye\r\n")

    server = scripted_server(script)
    with SMTP.start(server.host, server.port) as smtp:
        smtp.allow_plaintext_auth = True
        with pytest.raises(SMTPAuthenticationError, match="abandoned"):
            smtp.authenticate("u", "p", "LOGIN")
        smtp.noop()  # the session survived the cancelled exchange
    server.wait()


def test_garbage_challenge_is_cancelled(scripted_server: ScriptedFactory) -> None:
    def script(peer: Peer) -> None:
        peer.handshake("AUTH CRAM-MD5")
        peer.reply(b"AUTH CRAM-MD5", b"334 not*base64!\r\n")
        peer.reply(b"*\r\n", b"501 5.7.0 Auth aborted\r\n")
        peer.reply(b"QUIT", b"221 bye\r\n")

    server = scripted_server(script)
    with pytest.raises(SMTPAuthenticationError, match="abandoned"):
        SMTP.start(server.host, server.port, user="u", secret="p", allow_plaintext_auth=True)
    server.wait()


def test_auth_without_any_offer(smtpd_factory: ServerFactory, certificates: Certificates) -> None:
    server = smtpd_factory(tls="starttls")
    with pytest.raises(SMTPUnsupportedCommand, match="offers: none"):
        SMTP.start(
            server.host, server.port, ca_file=certificates.ca_file, user=USER, secret=PASSWORD
        )
