"""Bad input and the other modes, end to end: the right exit status, one line, nothing sent.

Every refusal here is what a calling program reads (the exit status) and what a
sysadmin reads (one line on stderr, never a traceback); and the relay, which is
up and would accept anything, must not even see a connection. Odd input that
is still a message (no body, binary bytes) is delivered intact instead.
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Callable

import pytest

from tests.cli.conftest import BIN, Mta, Result, Traffic, split_message
from tests.support.smtpd import RecordingServer

MESSAGE = b"Subject: e2e\nTo: a@example.com\n\nhello\n"


def assert_refused(result: Result, status: int, relay: Traffic, *words: str) -> str:
    """Exit ``status``, exactly one line on stderr holding ``words``, and no traffic."""
    assert result.returncode == status, result
    assert "Traceback" not in result.stderr, result
    assert len(result.lines) == 1, result
    line = result.lines[0]
    assert line.startswith("sendmail: "), line
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    assert relay.sessions == [], "the relay was contacted"
    return line


@pytest.fixture
def configured(module_mta: Mta) -> Callable[..., Result]:
    """``run(argv..., stdin=...)`` against a working direct-mode configuration (shared)."""
    return module_mta.run


# --------------------------------------------------------------------------- hostile stdin


@pytest.mark.parametrize("size", [1, 300, 70_000, 1_500_000])
def test_random_bytes_with_t_are_refused_without_traceback(
    configured: Callable[..., Result], traffic: Traffic, size: int
) -> None:
    noise = random.Random(size).randbytes(size)
    result = configured("-t", stdin=noise)
    assert result.returncode in (64, 65), result
    assert_refused(result, result.returncode, traffic)


def test_five_megabytes_of_headers_without_a_blank_line_is_65(
    configured: Callable[..., Result], traffic: Traffic
) -> None:
    bomb = b"To: a@example.com\n" + b"X-Filler: " + b"y" * 70 + b"\n"
    bomb += (b"X-Filler: " + b"y" * 70 + b"\n") * (5 * 1024 * 1024 // 81)
    result = configured("-i", "a@example.com", stdin=bomb)
    assert_refused(result, 65, traffic, "header")


def test_nul_byte_in_a_header_is_65(configured: Callable[..., Result], traffic: Traffic) -> None:
    result = configured("-i", "a@example.com", stdin=b"Subject: a\0b\n\nbody\n")
    assert_refused(result, 65, traffic, "NUL")


def test_a_header_line_break_cannot_smuggle_a_recipient(
    configured: Callable[..., Result], traffic: Traffic
) -> None:
    # A line break inside a quoted display name must not start a new Bcc field.
    stdin = b'To: "a\r\nBcc: evil@example.org" <a@example.com>\nSubject: x\n\nbody\n'
    result = configured("-t", stdin=stdin)
    assert_refused(result, 65, traffic, "To")


def test_a_control_character_in_a_header_address_is_65(
    configured: Callable[..., Result], traffic: Traffic
) -> None:
    result = configured("-t", stdin=b"To: a\x01b@example.com\nSubject: x\n\nbody\n")
    assert_refused(result, 65, traffic, "control character")


def test_a_bare_cr_in_a_header_never_reaches_the_smtp_dialogue(
    configured: Callable[..., Result], traffic: Traffic
) -> None:
    # The bare CR ends the To line; what follows is not a header field, so it
    # starts the body, and it never becomes an SMTP command or a recipient.
    stdin = b"To: a@example.com\rRCPT TO:<evil@example.org>\nSubject: x\n\nbody\n"
    result = configured("-t", stdin=stdin)
    assert result.returncode == 0, result
    assert [a for a, _ in traffic.envelopes[0].rcpts] == ["a@example.com"]
    assert not any("evil" in c for c in traffic.commands)
    data = traffic.envelopes[0].data
    assert b"\r" not in data.replace(b"\r\n", b"")  # no bare CR on the wire


# --------------------------------------------------------------------------- odd but valid


def test_a_message_without_a_body_is_delivered(
    configured: Callable[..., Result], traffic: Traffic
) -> None:
    result = configured("-i", "a@example.com", stdin=b"Subject: only headers\nTo: a@example.com")
    assert result.returncode == 0, result
    head, body = split_message(traffic.envelopes[0].data)
    assert b"Subject: only headers" in head and b"To: a@example.com" in head
    assert body == b""


def test_empty_input_is_delivered_with_the_added_headers(
    configured: Callable[..., Result], traffic: Traffic
) -> None:
    result = configured("-i", "a@example.com", stdin=b"")
    assert result.returncode == 0, result
    head, body = split_message(traffic.envelopes[0].data)
    names = [line.split(b":")[0].lower() for line in head if line[:1] not in (b" ", b"\t")]
    assert {b"received", b"date", b"message-id", b"from"} <= set(names)
    assert body == b""


def test_a_binary_body_arrives_byte_for_byte(
    configured: Callable[..., Result], traffic: Traffic
) -> None:
    # Every byte value but the line ends, in lines that also start with dots.
    payload = bytes(b for b in range(256) if b not in (10, 13))
    body = b"".join(b"." * (i % 3) + payload + b"\n" for i in range(8))
    result = configured("-i", "a@example.com", stdin=b"Subject: bin\n\n" + body)
    assert result.returncode == 0, result
    _, arrived = split_message(traffic.envelopes[0].data)
    assert arrived == body.replace(b"\n", b"\r\n")
    assert "BODY=8BITMIME" in next(c for c in traffic.commands if c.startswith("MAIL"))


# --------------------------------------------------------------------------- argv


def test_cr_lf_in_a_recipient_argument_is_65(
    configured: Callable[..., Result], traffic: Traffic
) -> None:
    result = configured("-i", "a@example.com\r\nRCPT TO:<evil@example.org>", stdin=MESSAGE)
    assert_refused(result, 65, traffic, "control character")


def test_cr_lf_in_the_sender_argument_is_65(
    configured: Callable[..., Result], traffic: Traffic
) -> None:
    result = configured("-f", "a@example.com\r\nRCPT TO:<x@y>", "b@example.com", stdin=MESSAGE)
    assert_refused(result, 65, traffic, "-f", "control character")


@pytest.mark.parametrize("argv", [["-i", "-f"], ["-t", "-i", "-f"], ["-i", "-F"], ["-N"]])
def test_a_flag_without_its_value_is_64(
    configured: Callable[..., Result], traffic: Traffic, argv: list[str]
) -> None:
    result = configured(*argv, stdin=MESSAGE)
    assert_refused(result, 64, traffic, argv[-1], "requires a value")


def test_an_unknown_flag_is_64(configured: Callable[..., Result], traffic: Traffic) -> None:
    result = configured("-i", "-Z", "a@example.com", stdin=MESSAGE)
    assert_refused(result, 64, traffic, "-Z")


@pytest.mark.parametrize(
    ("argv", "stdin"),
    [
        (["-i"], MESSAGE),  # a To header without -t does not count (as Postfix)
        (["-t", "-i"], b"Subject: nobody to send to\n\nbody\n"),
        (["-t", "-i"], b"To: undisclosed-recipients:;\n\nbody\n"),
    ],
    ids=["no-argv-no-t", "t-without-recipient-headers", "t-with-an-empty-group"],
)
def test_no_recipients_is_64(
    configured: Callable[..., Result], traffic: Traffic, argv: list[str], stdin: bytes
) -> None:
    result = configured(*argv, stdin=stdin)
    assert_refused(result, 64, traffic, "no recipients")


# --------------------------------------------------------------------------- configuration


def test_a_missing_configuration_file_is_78(module_mta: Mta, traffic: Traffic) -> None:
    result = module_mta.run(
        "-C", "/nonexistent/pysendmail.toml", "a@example.com", stdin=MESSAGE, config=False
    )
    assert_refused(result, 78, traffic, "/nonexistent/pysendmail.toml")


def test_a_configuration_syntax_error_is_78_with_file_and_line(
    mta: Mta, module_relay: RecordingServer, traffic: Traffic
) -> None:
    mta.configure(module_relay)
    text = mta.config.read_text().replace('domain = "example.com"', "domain = example.com")
    mta.config.write_text(text)
    line = text.splitlines().index("domain = example.com") + 1
    result = mta.run("-i", "a@example.com", stdin=MESSAGE)
    assert_refused(result, 78, traffic, f"{mta.config}: line {line}")


def test_direct_mode_without_a_relay_is_78(mta: Mta, traffic: Traffic) -> None:
    mta.configure()
    result = mta.run("-i", "a@example.com", stdin=MESSAGE)
    assert_refused(result, 78, traffic, "relay")


def test_an_unreadable_password_file_is_78_and_nothing_is_sent(
    module_mta: Mta, traffic: Traffic
) -> None:
    saved = module_mta.password_file.read_bytes()
    module_mta.password_file.unlink()
    try:
        result = module_mta.run("-i", "a@example.com", stdin=MESSAGE)
    finally:
        module_mta.password_file.write_bytes(saved)
    assert_refused(result, 78, traffic, "password_file", str(module_mta.password_file))


def test_a_message_over_max_message_size_is_65(
    mta: Mta, module_relay: RecordingServer, traffic: Traffic
) -> None:
    mta.configure(module_relay, general={"max_message_size": "1K"})
    result = mta.run("-i", "a@example.com", stdin=b"Subject: big\n\n" + b"y" * 3000 + b"\n")
    assert_refused(result, 65, traffic, "1024")


# --------------------------------------------------------------------------- other modes


def test_bv_prints_the_route_and_sends_nothing(
    module_mta: Mta, module_relay: RecordingServer, traffic: Traffic
) -> None:
    result = module_mta.run("-bv", "root", "user@example.com", stdin=MESSAGE)

    assert result.returncode == 0, result
    port = module_relay.port
    assert result.stdout.decode().splitlines() == [
        f"root -> admin@example.com: deliverable via 127.0.0.1:{port} (starttls)",
        f"user@example.com: deliverable via 127.0.0.1:{port} (starttls)",
    ]
    assert result.stderr == ""
    assert traffic.sessions == []


def test_newaliases_reports_each_bad_line_and_exits_65(
    mta: Mta, module_relay: RecordingServer, traffic: Traffic
) -> None:
    mta.configure(module_relay)
    mta.aliases_file.write_text(
        "root: admin@example.com\n"
        "this line has no colon\n"
        "backup: |/usr/bin/backup-mail\n"
        "ops: ops@example.com\n"
    )
    where = str(mta.aliases_file)
    for how in (("sendmail", "-bi"), ("sendmail", "-I"), ("newaliases",)):
        result = mta.run(*how[1:], program=how[0])

        assert result.returncode == 65, result
        assert "Traceback" not in result.stderr
        assert [line.split(": ", 1)[0] for line in result.lines[:2]] == [
            f"{where}:2",
            f"{where}:3",
        ], result
        assert "command" in result.lines[1], result
        assert "newaliases" in result.lines[-1], result
    assert traffic.sessions == []


def test_newaliases_accepts_a_good_file(module_mta: Mta) -> None:
    result = module_mta.run(program="newaliases")
    assert result.returncode == 0, result
    assert result.stdout.decode().startswith(f"{module_mta.aliases_file}: 2 aliases")


def test_q_with_an_interval_exits_0_at_once(module_mta: Mta, traffic: Traffic) -> None:
    result = module_mta.run("-q30m")
    assert result.returncode == 0, result
    assert result.stdout == b"" and result.stderr == ""
    assert result.elapsed < 5
    assert traffic.sessions == []


def test_mailq_on_an_empty_queue(mta: Mta, module_relay: RecordingServer, traffic: Traffic) -> None:
    mta.configure(module_relay, mode="queue")
    listings = [("mailq",), ("sendmail", "-bp")]
    for how in listings:  # no queue directory yet
        result = mta.run(*how[1:], program=how[0])
        assert result.returncode == 0, result
        assert result.stdout == b"Mail queue is empty\n", result
    init = mta.run("queue", "init", program="pysendmail")
    assert init.returncode == 0, init
    for how in listings:  # an initialised, empty queue
        result = mta.run(*how[1:], program=how[0])
        assert result.returncode == 0, result
        assert result.stdout == b"Mail queue is empty\n", result
    assert traffic.sessions == []


# --------------------------------------------------------------------------- closed descriptors


def run_with_closed(mta: Mta, redirect: str, *argv: str, stdin: bytes = b"") -> Result:
    """Run sendmail with one standard descriptor closed (``2>&-``, ``<&-``, ``>&-``)."""
    words = ["/bin/sh", "-c", f'exec "$@" {redirect}', "sh", str(BIN / "sendmail")]
    words += ["-C", str(mta.config), *argv]
    proc = subprocess.run(
        words, input=stdin, capture_output=True, env=mta.env, timeout=30, check=False
    )
    return Result(words, proc.returncode, proc.stdout, proc.stderr.decode(), 0.0)


def test_a_closed_stderr_still_gives_the_right_status(module_mta: Mta, traffic: Traffic) -> None:
    result = run_with_closed(module_mta, "2>&-", "-i", "-Z", "a@example.com", stdin=MESSAGE)
    assert result.returncode == 64, result
    assert traffic.sessions == []


def test_a_closed_stdin_is_an_empty_message(module_mta: Mta, traffic: Traffic) -> None:
    result = run_with_closed(module_mta, "<&-", "-i", "a@example.com")
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr
    head, body = split_message(traffic.envelopes[0].data)
    assert body == b"" and any(h.startswith(b"Message-ID:") for h in head)


def test_a_closed_stdout_is_no_error(module_mta: Mta, traffic: Traffic) -> None:
    result = run_with_closed(module_mta, ">&-", "-bv", "root")
    assert result.returncode == 0, result
    assert result.stderr == ""
