"""Bounces as a user's mail program sees them: RFC 3464 reports parsed with the email package."""

from __future__ import annotations

import email
import email.message
import email.policy
import io
import os
import subprocess
import sys
import tracemalloc
from email.message import Message

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pysendmail import bounce
from pysendmail.bounce import Failure, write_bounce, write_dsn
from pysendmail.message.envelope import Envelope, Recipient
from tests.support.unmeasured import unmeasured

ARRIVAL = 1_700_000_000.0
NOW = ARRIVAL + 5 * 86400 + 60

ORIGINAL = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.net, carol@example.org\r\n"
    b"Subject: quarterly numbers\r\n"
    b"Message-ID: <q1@example.com>\r\n"
    b"\r\n"
    b"The numbers are in the attachment.\r\n"
    b"SECRET-BODY-LINE\r\n"
)


def envelope(**kw: object) -> Envelope:
    fields: dict[str, object] = {
        "queue_id": "ORIG123",
        "sender": "alice@example.com",
        "recipients": [
            Recipient("bob@example.net"),
            Recipient("carol@example.org", original="carol"),
        ],
        "arrival": ARRIVAL,
        "size": len(ORIGINAL),
    }
    fields.update(kw)
    return Envelope(**fields)  # type: ignore[arg-type]


def render(
    env: Envelope,
    failures: list[Failure],
    original: bytes = ORIGINAL,
    **kw: object,
) -> tuple[bytes, bounce.DsnInfo]:
    out = io.BytesIO()
    info = write_dsn(
        out,
        env,
        failures,
        io.BytesIO(original),
        to=str(kw.pop("to", env.sender)),
        hostname="mx.example.com",
        domain="example.com",
        now=NOW,
        **kw,  # type: ignore[arg-type]
    )
    return out.getvalue(), info


def parse(raw: bytes) -> Message:
    return email.message_from_bytes(raw)


def parts_of(msg: Message) -> list[Message]:
    payload = msg.get_payload()
    assert isinstance(payload, list)
    return [p for p in payload if isinstance(p, Message)]


def text_of(part: Message) -> str:
    """A text part's content, decoded, with its lines joined by single spaces."""
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    return " ".join(data.decode("utf-8").split())


def report_blocks(msg: Message) -> list[Message]:
    """The per-message block, then one block per recipient, of the delivery-status part."""
    status = parts_of(msg)[1]
    assert status.get_content_type() == "message/delivery-status"
    return parts_of(status)


REFUSED = Failure(
    "bob@example.net",
    "550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown",
    remote_mta="smtp.example.net[192.0.2.7]:587",
    attempts=1,
    last_attempt=ARRIVAL + 10,
)
EXPIRED = Failure(
    "carol@example.org",
    "451 4.3.0 mailbox busy, try later",
    original="carol",
    remote_mta="smtp.example.net[192.0.2.7]:587",
    attempts=14,
    last_attempt=NOW,
    expired=True,
)


def test_a_report_has_the_three_parts_and_the_headers_of_a_bounce() -> None:
    raw, info = render(envelope(), [REFUSED, EXPIRED])
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["From"] == "MAILER-DAEMON@example.com (Mail Delivery System)"
    assert msg["To"] == "<alice@example.com>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Message-ID"] == info.message_id
    assert email.utils.parsedate_to_datetime(msg["Date"]).timestamp() == NOW
    assert [p.get_content_type() for p in parts_of(msg)] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert not msg.defects
    assert info.size == len(raw)
    assert not info.eightbit and not info.smtputf8 and not info.full


def test_the_delivery_status_fields_per_message_and_per_recipient() -> None:
    raw, _ = render(envelope(dsn_envid="ENV-42"), [REFUSED, EXPIRED])
    per_message, bob, carol = report_blocks(parse(raw))
    assert per_message["Reporting-MTA"] == "dns; mx.example.com"
    assert per_message["Original-Envelope-Id"] == "ENV-42"
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]).timestamp() == ARRIVAL

    assert bob["Final-Recipient"] == "rfc822; bob@example.net"
    assert bob["Original-Recipient"] is None  # written as it was delivered
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Remote-MTA"] == "dns; smtp.example.net"
    diagnostic = "smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown"
    assert " ".join(bob["Diagnostic-Code"].split()) == diagnostic
    assert email.utils.parsedate_to_datetime(bob["Last-Attempt-Date"]).timestamp() == ARRIVAL + 10

    assert carol["Final-Recipient"] == "rfc822; carol@example.org"
    assert carol["Original-Recipient"] == "rfc822; carol"
    assert carol["Action"] == "failed"
    assert carol["Status"] == "4.4.7"  # the lifetime ran out
    assert carol["Diagnostic-Code"] == "smtp; 451 4.3.0 mailbox busy, try later"


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        ("550 5.7.1 relaying denied", "5.7.1"),
        ("554-5.7.1 first line / 554 5.7.1 second", "5.7.1"),
        ("550 mailbox unavailable", "5.0.0"),  # no enhanced code
        ("552 4.2.2 odd server", "5.0.0"),  # a 4.x.x code cannot say "failed" here
        ("connection refused", "5.0.0"),
    ],
)
def test_status_comes_from_the_enhanced_code_or_is_derived(reply: str, status: str) -> None:
    raw, _ = render(envelope(), [Failure("bob@example.net", reply)])
    assert report_blocks(parse(raw))[1]["Status"] == status


def test_a_failure_without_a_server_reply_is_not_called_an_smtp_diagnostic() -> None:
    raw, _ = render(envelope(), [Failure("bob@example.net", "Connection refused", expired=True)])
    rcpt = report_blocks(parse(raw))[1]
    assert rcpt["Diagnostic-Code"] == "X-Pysendmail; Connection refused"
    assert rcpt["Remote-MTA"] is None


def test_the_human_part_names_each_recipient_the_reply_and_how_long_it_was_tried() -> None:
    raw, _ = render(envelope(), [REFUSED, EXPIRED])
    text = text_of(parts_of(parse(raw))[0])
    assert "mx.example.com" in text
    assert "ORIG123" in text
    assert (
        "<bob@example.net>: refused permanently by smtp.example.net[192.0.2.7]:587 (tried once)"
        in text
    )
    assert "550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown" in text
    assert "<carol@example.org> (written as <carol>)" in text
    assert "not delivered in 5 days (tried 14 times)" in text
    assert "451 4.3.0 mailbox busy, try later" in text
    assert "Its headers are attached." in text


def test_headers_only_by_default_and_for_ret_hdrs() -> None:
    for ret in (None, "HDRS"):
        raw, info = render(envelope(dsn_ret=ret), [REFUSED])
        third = parts_of(parse(raw))[2]
        returned = third.get_payload(decode=True)
        assert isinstance(returned, bytes)
        assert b"Subject: quarterly numbers" in returned
        assert b"Message-ID: <q1@example.com>" in returned
        assert b"SECRET-BODY-LINE" not in raw
        assert not info.full


def test_ret_full_returns_the_whole_message_byte_for_byte() -> None:
    raw, info = render(envelope(dsn_ret="FULL"), [REFUSED])
    assert info.full
    third = parts_of(parse(raw))[2]
    assert third.get_content_type() == "message/rfc822"
    inner = parts_of(third)[0]
    assert inner["Subject"] == "quarterly numbers"
    assert inner.get_payload() == "The numbers are in the attachment.\r\nSECRET-BODY-LINE\r\n"
    # The original sits in the report unchanged, between its part header and the boundary.
    assert b"\r\n\r\n" + ORIGINAL + b"\r\n--" in raw
    assert "The whole message is attached." in text_of(parts_of(parse(raw))[0])


def test_ret_full_above_the_size_cap_returns_only_the_headers_and_says_so() -> None:
    raw, info = render(envelope(dsn_ret="FULL"), [REFUSED], ret_full_limit=50)
    assert not info.full
    assert b"SECRET-BODY-LINE" not in raw
    parts = parts_of(parse(raw))
    assert parts[2].get_content_type() == "text/rfc822-headers"
    assert "larger than 50 bytes, so only its headers" in text_of(parts[0])


def test_an_8bit_original_is_declared_8bit_and_the_bounce_needs_8bitmime() -> None:
    original = "Subject: Grüße\r\n\r\nÄpfel\r\n".encode()
    raw, info = render(envelope(dsn_ret="FULL"), [REFUSED], original=original)
    assert info.eightbit
    assert b"Content-Transfer-Encoding: 8bit" in raw
    raw7, info7 = render(envelope(), [REFUSED])
    assert not info7.eightbit
    assert raw7.isascii()


def test_a_hostile_reply_cannot_inject_fields_or_end_the_part() -> None:
    evil = "550 5.1.1 no\r\nX-Injected: yes\r\n\r\n--=_pysendmail_x--\x1b[31m"
    raw, _ = render(envelope(), [Failure("bob@example.net", evil)])
    msg = parse(raw)
    assert not msg.defects
    _, rcpt = report_blocks(msg)
    assert rcpt["X-Injected"] is None
    assert "\x1b" not in raw.decode("ascii")
    assert rcpt["Status"] == "5.1.1"
    assert len(parts_of(msg)) == 3


def test_a_utf8_address_is_encoded_as_rfc6533_utf8_type() -> None:
    env = envelope(sender="rené@example.com", smtputf8=True)
    raw, info = render(env, [Failure("jürgen@example.net", "550 5.1.1 unknown")])
    rcpt = report_blocks(parse(raw))[1]
    assert rcpt["Final-Recipient"] == "utf-8; j\\x{FC}rgen@example.net"
    assert info.smtputf8  # the To: header carries rené@example.com
    assert "To: <rené@example.com>".encode() in raw
    text_part = parts_of(parse(raw))[0]
    assert text_part["Content-Transfer-Encoding"] == "quoted-printable"
    assert "<jürgen@example.net>" in text_of(text_part)


def test_generated_lines_are_crlf_and_short() -> None:
    long_reply = "550 5.7.1 " + " ".join(["word"] * 400) + " " + "x" * 1500
    raw, _ = render(envelope(), [Failure("bob@example.net", long_reply)] * 3)
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


@settings(max_examples=150, deadline=None)
@given(reply=st.text(max_size=300), address=st.text(min_size=1, max_size=60))
def test_any_reply_and_address_still_make_a_well_formed_report(reply: str, address: str) -> None:
    raw, _ = render(envelope(), [Failure(address, reply, remote_mta=reply[:40] or None)])
    msg = parse(raw)
    assert not msg.defects
    assert len(parts_of(msg)) == 3
    _, rcpt = report_blocks(msg)
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] is not None and rcpt["Status"][0] in "45"
    assert b"\n" not in raw.replace(b"\r\n", b"")


def test_a_large_ret_full_original_is_streamed_not_read_into_memory(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "big")
    line = b"x" * 998 + b"\r\n"
    with open(path, "wb") as f:
        f.write(b"Subject: big\r\n\r\n")
        for _ in range(24 * 1024):  # 24 MiB
            f.write(line)
    size = os.path.getsize(path)
    out_path = os.path.join(str(tmp_path), "bounce")
    with open(path, "rb") as src, open(out_path, "wb") as out:
        tracemalloc.start()
        try:
            info = write_dsn(
                out,
                envelope(dsn_ret="FULL", size=size),
                [REFUSED],
                src,
                to="alice@example.com",
                hostname="mx.example.com",
                domain="example.com",
                now=NOW,
                ret_full_limit=64 * 1024 * 1024,
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert info.full
    assert os.path.getsize(out_path) == info.size > size
    assert peak < 2 * 1024 * 1024


def test_write_bounce_makes_a_queue_file_from_the_null_sender() -> None:
    out = io.BytesIO()
    env = write_bounce(
        out,
        envelope(dsn_ret="FULL"),
        [REFUSED],
        io.BytesIO(ORIGINAL),
        queue_id="BOUNCE1",
        to="alice@example.com",
        hostname="mx.example.com",
        domain="example.com",
        now=NOW,
    )
    out.seek(0)
    back = Envelope.from_file(out)
    assert back == env
    assert back.sender == ""
    assert [r.address for r in back.recipients] == ["alice@example.com"]
    assert back.arrival == NOW
    body = out.read()
    assert len(body) == back.size
    msg = parse(body)
    assert msg.get_content_type() == "multipart/report"
    assert report_blocks(msg)[1]["Final-Recipient"] == "rfc822; bob@example.net"


def test_a_queue_run_does_not_load_what_only_a_bounce_needs() -> None:
    # email.utils (socket, datetime, random, email.charset) and textwrap cost a
    # queue run 15-60 ms of start-up; only writing a bounce needs them.
    code = (
        "import sys, pysendmail.runner\n"
        "loaded = [m for m in ('email.utils', 'textwrap', 'socket') if m in sys.modules]\n"
        "print(' '.join(loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=unmeasured()
    ).stdout
    assert out.split() == []
