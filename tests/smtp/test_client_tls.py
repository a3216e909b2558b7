"""TLS: STARTTLS auto/always/refused, implicit TLS, certificate checks, injected plaintext."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable

import pytest
import trustme

from pysendmail.errors import (
    SMTPOpenTimeout,
    SMTPServerBusy,
    SMTPServerDisconnected,
    SMTPTLSError,
    SMTPUnsupportedCommand,
)
from pysendmail.smtp import SMTP
from tests.support.smtpd import Certificates, Peer, RecordingServer, ScriptedServer

ServerFactory = Callable[..., RecordingServer]
ScriptedFactory = Callable[..., ScriptedServer]
MESSAGE = b"Subject: secret\r\n\r\nover TLS\r\n"


def test_starttls_auto_upgrades_when_offered(
    smtpd_factory: ServerFactory, certificates: Certificates
) -> None:
    server = smtpd_factory(tls="starttls")
    with SMTP.start(server.host, server.port, ca_file=certificates.ca_file) as smtp:
        assert smtp.encrypted
        assert not smtp.capable("STARTTLS")  # the EHLO after TLS no longer offers it
        smtp.send_message(MESSAGE, "a@b.test", "c@d.test")
    [session] = server.sessions
    assert session.tls
    assert session.commands == [
        "EHLO localhost",
        "STARTTLS",
        "EHLO localhost",
        "MAIL FROM:<a@b.test>",
        "RCPT TO:<c@d.test>",
        "DATA",
        "QUIT",
    ]
    assert server.envelopes[0].data == MESSAGE


def test_starttls_auto_stays_plain_when_not_offered(smtpd: RecordingServer) -> None:
    with SMTP.start(smtpd.host, smtpd.port) as smtp:
        assert not smtp.encrypted
        smtp.send_message(MESSAGE, "a@b.test", "c@d.test")
    assert "STARTTLS" not in smtpd.commands
    assert smtpd.envelopes[0].data == MESSAGE


def test_starttls_always_refuses_to_continue_in_plaintext(smtpd: RecordingServer) -> None:
    with pytest.raises(SMTPUnsupportedCommand, match="STARTTLS"):
        SMTP.start(smtpd.host, smtpd.port, starttls="always")
    # Nothing but the greeting and a polite goodbye: no mail in plaintext.
    assert smtpd.commands == ["EHLO localhost", "QUIT"]


def test_starttls_always_upgrades(smtpd_factory: ServerFactory, certificates: Certificates) -> None:
    server = smtpd_factory(tls="starttls")
    with SMTP.start(
        server.host, server.port, starttls="always", ca_file=certificates.ca_file
    ) as smtp:
        assert smtp.encrypted
    assert server.sessions[0].tls


def test_starttls_false_never_upgrades(smtpd_factory: ServerFactory) -> None:
    server = smtpd_factory(tls="starttls")
    with SMTP.start(server.host, server.port, starttls=False) as smtp:
        assert not smtp.encrypted and smtp.capable("STARTTLS")
    assert "STARTTLS" not in server.commands


def test_starttls_refused_by_the_server(scripted_server: ScriptedFactory) -> None:
    def script(peer: Peer) -> None:
        peer.handshake("STARTTLS")
        peer.reply(b"STARTTLS", b"454 4.7.0 TLS not available due to temporary reason\r\n")
        peer.reply(b"QUIT", b"221 bye\r\n")

    server = scripted_server(script)
    with pytest.raises(SMTPServerBusy, match="454") as info:
        SMTP.start(server.host, server.port, starttls="always")
    assert info.value.temporary
    server.wait()


def test_implicit_tls(smtpd_factory: ServerFactory, certificates: Certificates) -> None:
    server = smtpd_factory(tls="implicit")
    with SMTP.start(server.host, server.port, tls=True, ca_file=certificates.ca_file) as smtp:
        assert smtp.encrypted
        smtp.send_message(MESSAGE, "a@b.test", "c@d.test")
    assert "STARTTLS" not in server.commands
    assert server.envelopes[0].data == MESSAGE


def test_ssl_context_and_hostname(smtpd_factory: ServerFactory, certificates: Certificates) -> None:
    server = smtpd_factory(tls="implicit")
    context = certificates.client_context()
    with SMTP.start(
        server.host, server.port, tls=True, ssl_context=context, tls_hostname="localhost"
    ) as smtp:
        assert smtp.encrypted
    with pytest.raises(ValueError, match="ssl_context"):
        SMTP(server.host, tls=True, ssl_context=context, ca_file=certificates.ca_file)


def test_minimum_tls_version(smtpd_factory: ServerFactory, certificates: Certificates) -> None:
    server = smtpd_factory(tls="implicit")
    with SMTP.start(
        server.host, server.port, tls=True, ca_file=certificates.ca_file, tls_min_version="TLSv1.3"
    ) as smtp:
        assert smtp.encrypted
    assert SMTP("x", tls_min_version="1.2").tls_min_version is ssl.TLSVersion.TLSv1_2
    assert SMTP("x", tls_min_version=ssl.TLSVersion.TLSv1_3).tls_min_version is (
        ssl.TLSVersion.TLSv1_3
    )


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_unknown_ca_is_refused(smtpd_factory: ServerFactory, mode: str) -> None:
    server = smtpd_factory(tls=mode)
    smtp = SMTP(server.host, server.port, tls=mode == "implicit")
    with pytest.raises(SMTPTLSError, match="certificate verify failed"):
        smtp.start()
    assert not smtp.started
    assert server.envelopes == []
    if mode == "starttls":
        # Nothing was said after the failed handshake: no plaintext fallback.
        assert server.commands == ["EHLO localhost", "STARTTLS"]


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_wrong_host_name_is_refused(
    smtpd_factory: ServerFactory, certificates: Certificates, mode: str
) -> None:
    server = smtpd_factory(tls=mode)
    with pytest.raises(SMTPTLSError, match=r"mismatch|doesn't match|not valid"):
        SMTP.start(
            server.host,
            server.port,
            tls=mode == "implicit",
            ca_file=certificates.ca_file,
            tls_hostname="wrong.example",
        )
    assert server.envelopes == []


def test_tls_verify_false_accepts_any_certificate(smtpd_factory: ServerFactory) -> None:
    server = smtpd_factory(tls="implicit")
    with SMTP.start(server.host, server.port, tls=True, tls_verify=False) as smtp:
        assert smtp.encrypted


def test_plaintext_injected_after_the_starttls_220_is_ignored(
    scripted_server: ScriptedFactory, certificates: Certificates
) -> None:
    context = certificates.server_context()

    def script(peer: Peer) -> None:
        peer.handshake("STARTTLS")
        peer.expect(b"STARTTLS")
        # A man in the middle appends forged replies to the 220, in plaintext.
        peer.send(b"220 go ahead\r\n250-forged\r\n250 AUTH PLAIN\r\n")
        peer.start_tls(context)
        peer.reply(b"EHLO", b"250-mx.test\r\n250 SIZE 1000\r\n")
        peer.reply(b"QUIT", b"221 bye\r\n")

    server = scripted_server(script)
    with SMTP.start(server.host, server.port, ca_file=certificates.ca_file) as smtp:
        assert smtp.encrypted
        assert smtp.capabilities == {"SIZE": ["1000"]}
    server.wait()


def test_client_certificate(scripted_server: ScriptedFactory, certificates: Certificates) -> None:
    client_ca = trustme.CA()
    client_cert = client_ca.issue_cert("client@example.test")
    context = certificates.server_context()
    context.verify_mode = ssl.CERT_REQUIRED
    client_ca.configure_trust(context)
    seen: list[object] = []

    def script(peer: Peer) -> None:
        assert isinstance(peer.sock, ssl.SSLSocket)
        seen.append(peer.sock.getpeercert())
        peer.send(b"220 mx.test\r\n")
        peer.reply(b"EHLO", b"250 mx.test\r\n")
        peer.reply(b"QUIT", b"221 bye\r\n")

    server = scripted_server(script, tls_context=context)
    with (
        client_cert.private_key_and_cert_chain_pem.tempfile() as pem,
        SMTP.start(
            server.host, server.port, tls=True, ca_file=certificates.ca_file, certfile=pem
        ) as smtp,
    ):
        assert smtp.encrypted
    server.wait()
    assert "client@example.test" in str(seen)


def test_tls_handshake_that_stalls_is_an_open_timeout(scripted_server: ScriptedFactory) -> None:
    server = scripted_server(lambda peer: peer.stall())
    smtp = SMTP(server.host, server.port, tls=True, tls_verify=False, open_timeout=0.2)
    began = time.monotonic()
    with pytest.raises(SMTPOpenTimeout):
        smtp.start()
    assert time.monotonic() - began < 2
    with pytest.raises(SMTPServerDisconnected):
        smtp.noop()


def test_starttls_handshake_that_stalls_is_an_open_timeout(
    scripted_server: ScriptedFactory,
) -> None:
    def script(peer: Peer) -> None:
        peer.handshake("STARTTLS")
        peer.reply(b"STARTTLS", b"220 go ahead\r\n")
        peer.stall()

    server = scripted_server(script)
    smtp = SMTP(server.host, server.port, tls_verify=False, open_timeout=0.2)
    with pytest.raises(SMTPOpenTimeout, match="TLS"):
        smtp.start()
    assert not smtp.started
