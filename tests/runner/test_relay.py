"""The relay on its own: what a smarthost sees of an envelope, in memory or streamed, reused."""

from __future__ import annotations

import io
from collections.abc import Callable
from types import SimpleNamespace

from pysendmail.message.envelope import Envelope, Recipient
from pysendmail.relay import SENT, Relay
from pysendmail.smtp.encoder import normalise
from tests.support.fixtures import certificates, smtpd_factory
from tests.support.smtpd import RecordingServer

# The recording server of the session core's tests (it can announce DSN).
__all__ = ["certificates", "smtpd_factory"]

ServerFactory = Callable[..., RecordingServer]


def relay_config(port: int) -> SimpleNamespace:
    return SimpleNamespace(
        host="127.0.0.1",
        port=port,
        tls="none",
        tls_verify=True,
        tls_hostname=None,
        ca_file=None,
        client_cert=None,
        client_key=None,
        tls_min_version=None,
        user=None,
        auth="auto",
        allow_plaintext_auth=False,
        connect_timeout=5.0,
        command_timeout=5.0,
        data_timeout=5.0,
        helo=None,
        senders=(),
    )


def envelope(recipients: list[Recipient], content: bytes, **kw: str) -> Envelope:
    return Envelope(
        queue_id="4Bq9x2KfT0aZ",
        sender="alice@example.com",
        recipients=recipients,
        arrival=1_750_000_000.0,
        size=len(content),
        eightbit=not content.isascii(),
        body_type=None if content.isascii() else "8BITMIME",
        **kw,  # type: ignore[arg-type]
    )


def test_envelope_parameters_and_bodies_in_memory_and_streamed(
    smtpd_factory: ServerFactory,
) -> None:
    server = smtpd_factory(dsn=True, size=10_000_000)
    small = "Subject: small\n\n.leading dot\nbare LF and 8-bit: é\r\n..two\n".encode()
    big = b"Subject: big\r\n\r\n" + b"".join(b".%06d line\n" % n for n in range(9000))
    assert len(big) > 65536  # streamed: the relay does not hold it whole
    first = envelope(
        [Recipient("bob@example.net", original="root", notify="FAILURE,DELAY")],
        small,
        dsn_ret="HDRS",
        dsn_envid="ENV1",
    )
    second = envelope([Recipient("carol@example.net")], big)
    relays = [relay_config(server.port)]
    with Relay(relays, helo="mx.example.com", password=lambda r: None) as r:  # type: ignore[arg-type]
        reports = [r.send(first, io.BytesIO(small)), r.send(second, io.BytesIO(big))]
    for report in reports:
        assert [x.status for x in report.recipients] == [SENT]
        assert report.opened and report.error is None
    commands = server.sessions[0].commands
    assert len(server.sessions) == 1
    assert commands == [
        "EHLO mx.example.com",
        "MAIL FROM:<alice@example.com> RET=HDRS ENVID=ENV1 "
        f"SIZE={len(normalise(small))} BODY=8BITMIME",
        "RCPT TO:<bob@example.net> NOTIFY=FAILURE,DELAY ORCPT=rfc822;root",
        "DATA",
        "RSET",
        f"MAIL FROM:<alice@example.com> SIZE={len(normalise(big))}",
        "RCPT TO:<carol@example.net>",
        "DATA",
        "QUIT",
    ]
    assert [e.data for e in server.envelopes] == [normalise(small), normalise(big)]


def test_a_small_message_in_memory_goes_as_bytes_uncopied() -> None:
    from pysendmail.relay import _in_memory

    small = b"Subject: s\r\n\r\nbody\r\n"
    assert _in_memory(io.BytesIO(small)) is small  # the session core's fast path, no copy
    positioned = io.BytesIO(b"PRELUDE\n" + small)
    positioned.seek(8)
    assert _in_memory(positioned) == small
    big = io.BytesIO(b"x" * 70000)
    assert _in_memory(big) is big  # streamed, as a file
    with open(__file__, "rb") as f:
        assert _in_memory(f) is f
