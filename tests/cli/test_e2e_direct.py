"""Direct mode end to end: the installed ``sendmail`` relaying to test servers on 127.0.0.1.

What a sysadmin and a calling program see: the dialogue with the relay (STARTTLS,
then AUTH, never AUTH in clear), the exit status for each kind of failure
(69 refused, 75 try again, 77 login refused), which recipients got the message
when the relay refused only some, failover to the next relay, the DSN and
8BITMIME parameters, the -v trace with the password redacted, and the
Postfix-style log line per recipient.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from tests.cli.conftest import (
    HOSTNAME,
    LOGIN,
    PASSWORD,
    RELAY_USER,
    Mta,
    Result,
    Traffic,
    secret_forms,
    split_message,
)
from tests.support.smtpd import Certificates, Peer, RecordingServer, ScriptedServer

ServerFactory = Callable[..., RecordingServer]
MESSAGE = b"Subject: e2e\nTo: a@example.com\n\nhello\n"
EIGHT_BIT = "Subject: caf\u00e9\n\nd\u00e9j\u00e0 vu\n".encode()


def assert_secret_kept(result: Result) -> None:
    for secret in secret_forms():
        assert secret not in result.stderr, f"{secret!r} leaked on stderr"
        assert secret.encode() not in result.stdout, f"{secret!r} leaked on stdout"


def one_error_line(result: Result) -> str:
    assert "Traceback" not in result.stderr, result
    return "\n".join(result.lines)


def mail_command(server: RecordingServer | Traffic) -> str:
    return next(c for c in server.commands if c.upper().startswith("MAIL FROM:"))


def rcpt_commands(server: RecordingServer | Traffic) -> list[str]:
    return [c for c in server.commands if c.upper().startswith("RCPT TO:")]


# --------------------------------------------------------------------------- success


def test_starttls_then_auth_then_the_message(module_mta: Mta, traffic: Traffic) -> None:
    result = module_mta.run("-i", "a@example.com", stdin=MESSAGE)

    assert result.returncode == 0, result
    assert result.stdout == b"" and result.stderr == ""
    assert len(traffic.sessions) == 1
    session = traffic.sessions[0]
    commands = session.commands
    assert commands[:3] == [f"EHLO {HOSTNAME}", "STARTTLS", f"EHLO {HOSTNAME}"]
    assert commands[3].startswith("AUTH PLAIN ")
    assert commands[4:] == [
        f"MAIL FROM:<{LOGIN}@example.com>",
        "RCPT TO:<a@example.com>",
        "DATA",
        "QUIT",
    ]
    assert session.tls and session.user == RELAY_USER
    head, body = split_message(traffic.envelopes[0].data)
    assert b"Subject: e2e" in head and b"To: a@example.com" in head
    assert body == b"hello\r\n"


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_verbose_shows_the_dialogue_without_the_password(
    mta: Mta, smtpd_factory: ServerFactory, mechanism: str
) -> None:
    relay = smtpd_factory(tls="starttls", auth=(mechanism,), credentials={RELAY_USER: PASSWORD})
    mta.configure(relay)
    result = mta.run("-v", "-i", "a@example.com", stdin=MESSAGE)

    assert result.returncode == 0, result
    trace = result.stderr
    for step in (f"EHLO {HOSTNAME}", "STARTTLS", f"AUTH {mechanism}", "MAIL FROM:<", "DATA"):
        assert step in trace, f"{step!r} missing from the -v trace:\n{trace}"
    assert "235" in trace  # the relay's "authentication successful" is shown
    assert relay.sessions[0].user == RELAY_USER  # the login really happened
    assert_secret_kept(result)


def test_one_postfix_style_log_line_per_recipient(module_mta: Mta, traffic: Traffic) -> None:
    result = module_mta.run("-v", "-i", "a@example.com", "root", stdin=MESSAGE)

    assert result.returncode == 0, result
    received = split_message(traffic.envelopes[0].data)[0][1]
    queue_id = received.split(b"id ", 1)[1].split(b";")[0].decode()
    log = [line for line in result.lines if ": to=<" in line]
    assert len(log) == 2, result
    port = traffic.server.port
    prefix = rf"^pysendmail\[\d+\]: {queue_id}: "
    relay_field = rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{port}, delay=\d+\.\d\d, tries=1, "
    assert re.match(
        prefix + r"to=<a@example\.com>, " + relay_field + r"status=sent \(250 2\.0\.0 OK", log[0]
    ), log[0]
    assert re.match(
        prefix
        + r"to=<admin@example\.com>, orig_to=<root>, "
        + relay_field
        + r"status=sent \(250 2\.0\.0 OK",
        log[1],
    ), log[1]


# --------------------------------------------------------------------------- refusals


def test_one_recipient_refused_the_other_gets_it(mta: Mta, smtpd_factory: ServerFactory) -> None:
    refusal = "550 5.1.1 <bad@example.com>: Recipient address rejected: User unknown"
    relay = smtpd_factory(
        tls="starttls",
        auth=("PLAIN",),
        credentials={RELAY_USER: PASSWORD},
        replies={"RCPT TO:<bad@example.com>": refusal},
    )
    mta.configure(relay)
    result = mta.run("-i", "good@example.com", "bad@example.com", stdin=MESSAGE)

    assert result.returncode == 69, result
    text = one_error_line(result)
    assert len(result.lines) == 1
    assert "bad@example.com" in text and "good@example.com" not in text
    assert "550 5.1.1" in text and "User unknown" in text
    assert len(relay.envelopes) == 1
    assert [a for a, _ in relay.envelopes[0].rcpts] == ["good@example.com"]


def test_every_recipient_refused_is_69(mta: Mta, smtpd_factory: ServerFactory) -> None:
    relay = smtpd_factory(
        tls="starttls",
        auth=("PLAIN",),
        credentials={RELAY_USER: PASSWORD},
        replies={"RCPT": "550 5.7.1 Relaying denied"},
    )
    mta.configure(relay)
    result = mta.run("-i", "a@example.com", "b@example.com", stdin=MESSAGE)

    assert result.returncode == 69, result
    text = one_error_line(result)
    assert "a@example.com" in text and "b@example.com" in text
    assert "550 5.7.1 Relaying denied" in text
    assert relay.envelopes == []


def test_temporary_refusal_of_a_recipient_is_75(mta: Mta, smtpd_factory: ServerFactory) -> None:
    relay = smtpd_factory(
        tls="starttls",
        auth=("PLAIN",),
        credentials={RELAY_USER: PASSWORD},
        replies={"RCPT": "451 4.3.0 Try again later"},
    )
    mta.configure(relay)
    result = mta.run("-i", "a@example.com", stdin=MESSAGE)

    assert result.returncode == 75, result
    text = one_error_line(result)
    assert "a@example.com" in text and "451 4.3.0 Try again later" in text
    assert relay.envelopes == []


def test_refusal_of_the_message_after_data_is_69(mta: Mta, smtpd_factory: ServerFactory) -> None:
    relay = smtpd_factory(
        tls="starttls",
        auth=("PLAIN",),
        credentials={RELAY_USER: PASSWORD},
        replies={".": "554 5.7.1 Message rejected as spam"},
    )
    mta.configure(relay)
    result = mta.run("-i", "a@example.com", stdin=MESSAGE)

    assert result.returncode == 69, result
    assert "554 5.7.1 Message rejected as spam" in one_error_line(result)


def test_wrong_password_is_77_and_nothing_is_sent(mta: Mta, smtpd_factory: ServerFactory) -> None:
    relay = smtpd_factory(
        tls="starttls", auth=("PLAIN",), credentials={RELAY_USER: "another-password"}
    )
    mta.configure(relay)
    result = mta.run("-i", "a@example.com", stdin=MESSAGE)

    assert result.returncode == 77, result
    text = one_error_line(result)
    assert len(result.lines) == 1
    assert "535" in text or "auth" in text.lower()
    assert not any(c.startswith("MAIL") for c in relay.commands)
    assert_secret_kept(result)
    # The -v trace of a refused login shows the refusal, not the password.
    verbose = mta.run("-v", "-i", "a@example.com", stdin=MESSAGE)
    assert verbose.returncode == 77, verbose
    assert "AUTH PLAIN" in verbose.stderr and "535" in verbose.stderr
    assert_secret_kept(verbose)


def test_a_message_over_the_relays_size_limit_is_69_before_mail(
    mta: Mta, smtpd_factory: ServerFactory
) -> None:
    relay = smtpd_factory(
        tls="starttls", auth=("PLAIN",), credentials={RELAY_USER: PASSWORD}, size=200
    )
    mta.configure(relay)
    result = mta.run("-i", "a@example.com", stdin=b"Subject: big\n\n" + b"y" * 300 + b"\n")

    assert result.returncode == 69, result
    assert "at most 200" in one_error_line(result)
    assert not any(c.startswith("MAIL") for c in relay.commands)


def test_connection_lost_before_the_reply_to_data_is_75(
    mta: Mta, certificates: Certificates, scripted_server: Callable[..., ScriptedServer]
) -> None:
    # The message went out but no 250 came back: only a retry is safe.
    def drop(peer: Peer) -> None:
        peer.handshake("STARTTLS")
        peer.reply(b"STARTTLS", b"220 2.0.0 go ahead\r\n")
        peer.start_tls(certificates.server_context())
        peer.handshake("AUTH PLAIN", greeting=b"")
        peer.reply(b"AUTH PLAIN", b"235 2.7.0 ok\r\n")
        peer.reply(b"MAIL", b"250 2.1.0 ok\r\n")
        peer.reply(b"RCPT", b"250 2.1.5 ok\r\n")
        peer.reply(b"DATA", b"354 go ahead\r\n")
        peer.recv_until(b"\r\n.\r\n")

    server = scripted_server(drop)
    mta.configure(server)
    result = mta.run("-i", "a@example.com", stdin=MESSAGE)

    assert result.returncode == 75, result
    assert "try again later" in one_error_line(result)
    server.wait()


def test_t_takes_the_resent_recipients_when_there_are_some(
    module_mta: Mta, traffic: Traffic
) -> None:
    message = (
        b"To: original@example.com\nSubject: fwd\n"
        b"Resent-To: b@example.com\nResent-Bcc: c@example.com\n\nbody\n"
    )
    result = module_mta.run("-t", "-i", stdin=message)

    assert result.returncode == 0, result
    envelope = traffic.envelopes[0]
    assert [a for a, _ in envelope.rcpts] == ["b@example.com", "c@example.com"]
    head, _ = split_message(envelope.data)
    assert b"Resent-To: b@example.com" in head and b"To: original@example.com" in head
    assert not any(h.lower().startswith(b"resent-bcc") for h in head)


# --------------------------------------------------------------------------- failover


def test_busy_greeting_fails_over_to_the_next_relay(
    mta: Mta, relay: RecordingServer, scripted_server: Callable[..., ScriptedServer]
) -> None:
    def busy(peer: Peer) -> None:
        peer.send(b"421 4.3.2 mx1.test too busy, try later\r\n")
        while peer.recv_line():
            pass  # a QUIT, or nothing: the client must just leave

    first = scripted_server(busy)
    mta.configure(first, relay)
    result = mta.run("-i", "a@example.com", stdin=MESSAGE)

    assert result.returncode == 0, result
    first.wait()
    assert b"MAIL" not in first.peer.received and b"AUTH" not in first.peer.received
    assert len(relay.envelopes) == 1
    assert relay.envelopes[0].rcpt_tos == ["a@example.com"]


def test_closed_port_fails_over_to_the_next_relay(mta: Mta, relay: RecordingServer) -> None:
    mta.configure(None, relay)
    result = mta.run("-i", "a@example.com", stdin=MESSAGE)

    assert result.returncode == 0, result
    assert len(relay.envelopes) == 1


def test_every_relay_unreachable_is_75(mta: Mta) -> None:
    mta.configure(None, None)
    result = mta.run("-i", "a@example.com", stdin=MESSAGE)

    assert result.returncode == 75, result
    text = one_error_line(result)
    assert len(result.lines) == 1
    assert "try again later" in text and "Connection refused" in text


# --------------------------------------------------------------------------- TLS


def test_untrusted_certificate_is_75_and_no_auth(mta: Mta, relay: RecordingServer) -> None:
    # No ca_file: the system CAs do not know the test CA.
    mta.configure(mta.relay_table(relay, ca_file=None))
    result = mta.run("-i", "a@example.com", stdin=MESSAGE)

    assert result.returncode == 75, result
    text = one_error_line(result)
    assert "certificate" in text.lower()
    assert relay.commands == [f"EHLO {HOSTNAME}", "STARTTLS"]
    assert relay.envelopes == []


def test_no_starttls_means_no_plaintext_auth_and_no_mail(
    mta: Mta, smtpd_factory: ServerFactory
) -> None:
    # A relay (or a man in the middle) that offers AUTH but no STARTTLS.
    relay = smtpd_factory(
        auth=("PLAIN", "LOGIN"), credentials={RELAY_USER: PASSWORD}, auth_require_tls=False
    )
    mta.configure(mta.relay_table(relay, tls="starttls", ca_file=mta.certificates.ca_file))
    result = mta.run("-i", "a@example.com", stdin=MESSAGE)

    # Refused like a missing extension (69, as msmtp does), naming what is missing.
    assert result.returncode == 69, result
    text = one_error_line(result)
    assert len(result.lines) == 1
    assert "does not offer STARTTLS" in text
    assert not any(c.upper().startswith(("AUTH", "MAIL")) for c in relay.commands), relay.commands
    assert PASSWORD.encode() not in relay.sessions[0].transcript
    assert relay.envelopes == []


# --------------------------------------------------------------------------- parameters


def test_dsn_requests_reach_a_relay_that_offers_dsn(mta: Mta, smtpd_factory: ServerFactory) -> None:
    relay = smtpd_factory(
        tls="starttls", auth=("PLAIN",), credentials={RELAY_USER: PASSWORD}, dsn=True
    )
    mta.configure(relay)
    argv = ["-N", "success,failure", "-R", "hdrs", "-V", "env-42", "-i", "root"]
    result = mta.run(*argv, stdin=MESSAGE)

    assert result.returncode == 0, result
    mail = mail_command(relay).split()
    assert "RET=HDRS" in mail and "ENVID=env-42" in mail
    assert rcpt_commands(relay) == [
        "RCPT TO:<admin@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;root"
    ]


def test_dsn_requests_are_dropped_for_a_relay_without_dsn(
    module_mta: Mta, traffic: Traffic
) -> None:
    argv = ["-N", "never", "-R", "full", "-V", "env-42", "-i", "a@example.com"]
    result = module_mta.run(*argv, stdin=MESSAGE)

    assert result.returncode == 0, result
    assert mail_command(traffic) == f"MAIL FROM:<{LOGIN}@example.com>"
    assert rcpt_commands(traffic) == ["RCPT TO:<a@example.com>"]
    assert len(traffic.envelopes) == 1


@pytest.mark.parametrize("null", ["<>", ""])
def test_null_sender(module_mta: Mta, traffic: Traffic, null: str) -> None:
    result = module_mta.run("-f", null, "-i", "a@example.com", stdin=MESSAGE)

    assert result.returncode == 0, result
    assert mail_command(traffic) == "MAIL FROM:<>"
    assert len(traffic.envelopes) == 1


def test_eight_bit_body_is_sent_as_8bitmime(module_mta: Mta, traffic: Traffic) -> None:
    result = module_mta.run("-i", "a@example.com", stdin=EIGHT_BIT)

    assert result.returncode == 0, result
    assert mail_command(traffic).split()[2:] == ["BODY=8BITMIME"]
    assert split_message(traffic.envelopes[0].data)[1] == "d\u00e9j\u00e0 vu\r\n".encode()


def test_seven_bit_body_has_no_body_parameter(module_mta: Mta, traffic: Traffic) -> None:
    result = module_mta.run("-i", "a@example.com", stdin=MESSAGE)

    assert result.returncode == 0, result
    assert mail_command(traffic) == f"MAIL FROM:<{LOGIN}@example.com>"


def test_b_8bitmime_is_passed_on(module_mta: Mta, traffic: Traffic) -> None:
    result = module_mta.run("-B", "8BITMIME", "-i", "a@example.com", stdin=MESSAGE)

    assert result.returncode == 0, result
    assert mail_command(traffic).split()[2:] == ["BODY=8BITMIME"]


def test_sender_and_full_name_make_the_from_header(module_mta: Mta, traffic: Traffic) -> None:
    message = b"Subject: no from\n\nbody\n"
    result = module_mta.run(
        "-f", "ops@example.com", "-F", "Ops Team", "a@example.com", stdin=message
    )

    assert result.returncode == 0, result
    head, _ = split_message(traffic.envelopes[0].data)
    assert mail_command(traffic) == "MAIL FROM:<ops@example.com>"
    assert [h for h in head if h.lower().startswith(b"from:")] == [
        b"From: Ops Team <ops@example.com>"
    ]
