"""``sendmail -bs`` in this process: the sidecar's handler over stdin and stdout."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from pysendmail.cli import Streams
from pysendmail.cli import main as sendmail_main
from pysendmail.queue.spool import Queue
from tests.server.helpers import closed_port, write_config


def run_bs(config: Path, tmp_path: Path, stdin: bytes) -> tuple[int, list[str], str]:
    out, err = io.StringIO(), io.StringIO()
    env = {"PYSENDMAIL_CACHE_DIR": str(tmp_path / "cache"), "TMPDIR": str(tmp_path)}
    status = sendmail_main(
        ["sendmail", "-C", str(config), "-bs"], Streams(io.BytesIO(stdin), out, err, env)
    )
    return status, out.getvalue().split("\r\n")[:-1], err.getvalue()


def test_a_session_queues_through_the_shared_handler(tmp_path: Path) -> None:
    config = write_config(tmp_path, closed_port())
    big = b"".join(b"%06d " % n + b"b" * 90 + b"\r\n" for n in range(4000))  # beyond memory
    stdin = (
        b"EHLO local\r\nMAIL FROM:<>\r\nRCPT TO:<root>\r\nDATA\r\nSubject: one\r\n\r\n..x\r\n.\r\n"
        b"MAIL FROM:<app>\r\nRCPT TO:<a@example.org>\r\nDATA\r\nSubject: two\r\n\r\n"
        + big
        + b".\r\nVRFY <root>\r\nQUIT\r\n"
    )
    status, lines, err = run_bs(config, tmp_path, stdin)
    assert (status, err) == (0, "")
    assert lines[0] == "220 mx.example.com ESMTP pysendmail 0.1.0"
    codes = [line[:3] for line in lines if line[3:4] == " "]
    assert codes == [
        "220",
        "250",
        "250",
        "250",
        "354",
        "250",
        "250",
        "250",
        "354",
        "250",
        "252",
        "221",
    ]
    queue = Queue(str(tmp_path / "spool"))
    envelopes = [queue.read_envelope("queue", i)[0] for i in queue.ids()]
    assert sorted((e.sender, e.recipients[0].address) for e in envelopes) == [
        ("", "admin@example.com"),
        ("app@example.com", "a@example.org"),
    ]
    assert max(e.size for e in envelopes) > len(big)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".spool")] == []


def test_end_of_input_inside_data(tmp_path: Path) -> None:
    config = write_config(tmp_path, closed_port())
    stdin = b"HELO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nSubj"
    status, lines, err = run_bs(config, tmp_path, stdin)
    assert (status, err) == (0, "")
    assert lines[-1] == "451 4.3.0 Input ended inside DATA; nothing was kept"
    assert Queue(str(tmp_path / "spool")).ids() == []


def test_no_sidecar_rule_applies_to_a_local_program(tmp_path: Path) -> None:
    # The [server] rules are the sidecar's: sendmail -bs answers a local program.
    config = write_config(
        tmp_path,
        closed_port(),
        server={"allowed_senders": ["nobody@nowhere.example"], "max_recipients": 1},
    )
    stdin = (
        b"EHLO x\r\nMAIL FROM:<a@example.com>\r\n"
        b"RCPT TO:<b@example.org>\r\nRCPT TO:<c@example.org>\r\n"
    )
    status, lines, _ = run_bs(config, tmp_path, stdin)
    assert status == 0
    assert [line[:3] for line in lines if line[3:4] == " "] == ["220", "250", "250", "250", "250"]


def test_an_argument_with_a_control_character_or_an_undecodable_byte_is_refused(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, closed_port())
    stdin = (
        b"EHLO local\r\n"
        b"MAIL FROM:<a\x01b@example.com>\r\n"  # C0
        b"MAIL FROM:<a\xc2\x85b@example.com>\r\n"  # C1 (NEL), valid UTF-8
        b"MAIL FROM:<a\xffb@example.com>\r\n"  # not UTF-8
        b"MAIL FROM:<caf\xc3\xa9@example.com>\r\n"  # UTF-8 and printable: on to MAIL
        b"QUIT\r\n"
    )
    status, lines, err = run_bs(config, tmp_path, stdin)
    assert (status, err) == (0, "")
    replies = [line for line in lines if line[3:4] == " "]
    assert [r[:9] for r in replies[2:5]] == ["500 5.5.2"] * 3
    assert not replies[5].startswith("500 5.5.2")
    assert replies[-1].startswith("221")


def test_aiosmtpd_command_logging_costs_nothing_when_its_logger_drops_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import aiosmtpd.smtp

    import pysendmail.server.listener  # noqa: F401  (wraps aiosmtpd's sanitized_log)

    log = logging.getLogger("mail.log")
    calls: list[bytes] = []
    original = aiosmtpd.smtp.sanitize

    def counting(data: bytes) -> bytes:
        calls.append(data)
        return original(data)

    monkeypatch.setattr(aiosmtpd.smtp, "sanitize", counting)
    monkeypatch.setattr(log, "level", logging.CRITICAL)
    aiosmtpd.smtp.sanitized_log(log.debug, "%r >> %r", "peer", b"MAIL FROM:<a@b>")
    aiosmtpd.smtp.sanitized_log(log.info, "%r >> %r", "peer", b"MAIL FROM:<a@b>")
    assert calls == []  # dropped before any escaping
    monkeypatch.setattr(log, "level", logging.DEBUG)
    monkeypatch.setattr(log, "propagate", True)  # serve turns it off; caplog listens at the root
    with caplog.at_level(logging.DEBUG, logger="mail.log"):
        aiosmtpd.smtp.sanitized_log(log.info, "%r >> %r", "peer", b"RCPT TO:<a@b>\r\n")
    assert calls == [b"RCPT TO:<a@b>\r\n"]
    assert "RCPT TO:<a@b>" in caplog.text
