"""``sendmail -bs``: a program speaks SMTP to the installed command through its pipes.

Each session runs the real ``sendmail -bs`` as a subprocess, writes the whole
client side to its stdin (as a pipelining client would) and reads the replies
from its stdout. A message accepted here takes the path of ``sendmail -i -f
SENDER RCPT...``: in direct mode it reaches the relay (through STARTTLS and
AUTH) with its header block completed; in queue mode it is a queue file with
the same envelope. Dot-stuffing is undone, RSET forgets the transaction, bad
commands get 5xx, and a DATA cut short by end of input keeps nothing.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from pysendmail.queue import Queue
from tests.cli.conftest import (
    BIN,
    HOSTNAME,
    PASSWORD,
    RELAY_USER,
    Mta,
    Result,
    Traffic,
    header_names,
    split_message,
)
from tests.support.smtpd import RecordingServer

MESSAGE = [
    b"Subject: over -bs",
    b"To: root",
    b"",
    b"first line",
    b"..a line that starts with a dot",
    b"...",
    b"last line",
]


def session(mta: Mta, *lines: bytes, end: bytes = b"QUIT\r\n") -> tuple[list[str], Result]:
    """Run ``sendmail -bs`` with ``lines`` (CRLF added) then ``end``; the replies, one per item.

    A multi-line reply (EHLO) is one item, its lines joined with newlines.
    """
    stdin = b"".join(line + b"\r\n" for line in lines) + end
    proc = subprocess.run(
        [str(BIN / "sendmail"), "-C", str(mta.config), "-bs"],
        input=stdin,
        capture_output=True,
        env=mta.env,
        cwd=mta.root,
        timeout=30,
        check=False,
    )
    result = Result(["sendmail", "-bs"], proc.returncode, proc.stdout, proc.stderr.decode(), 0.0)
    assert proc.stdout.endswith(b"\r\n") or not proc.stdout, result
    replies: list[str] = []
    pending: list[str] = []
    for line in proc.stdout.decode("utf-8").split("\r\n")[:-1]:
        pending.append(line)
        if line[3:4] != "-":
            replies.append("\n".join(pending))
            pending = []
    assert not pending, result
    return replies, result


def codes(replies: list[str]) -> list[int]:
    return [int(reply[:3]) for reply in replies]


def transaction(sender: str, *recipients: str) -> list[bytes]:
    lines = [f"MAIL FROM:<{sender}>".encode()]
    lines += [f"RCPT TO:<{r}>".encode() for r in recipients]
    return [*lines, b"DATA", *MESSAGE, b"."]


def check_completed(data: bytes) -> None:
    """The message as the client wrote it, dot-unstuffed, with the missing headers added."""
    head, body = split_message(data)
    names = header_names(head)
    assert names[0] == "received"
    for name in ("date", "message-id", "from"):
        assert names.count(name) == 1, names
    assert b"Subject: over -bs" in head and b"To: root" in head
    assert body == b"first line\r\n.a line that starts with a dot\r\n..\r\nlast line\r\n"


# --------------------------------------------------------------------------- direct mode


def test_a_session_in_direct_mode_relays_the_message(module_mta: Mta, traffic: Traffic) -> None:
    replies, result = session(
        module_mta, b"EHLO client.example", *transaction("app@example.com", "root", "b@example.com")
    )

    assert codes(replies) == [220, 250, 250, 250, 250, 354, 250, 221], replies
    assert replies[0].startswith(f"220 {HOSTNAME} ")
    assert "8BITMIME" in replies[1] and "PIPELINING" in replies[1]
    assert result.returncode == 0, result
    assert result.stderr == ""
    assert len(traffic.envelopes) == 1
    envelope = traffic.envelopes[0]
    assert envelope.mail_from == "app@example.com"
    assert [a for a, _ in envelope.rcpts] == ["admin@example.com", "b@example.com"]
    check_completed(envelope.data)
    session0 = traffic.sessions[0]
    assert session0.tls and session0.user == RELAY_USER


def test_relay_refusing_one_recipient_is_named_in_the_250(
    mta: Mta, smtpd_factory: Callable[..., RecordingServer]
) -> None:
    relay = smtpd_factory(
        tls="starttls",
        auth=("PLAIN",),
        credentials={RELAY_USER: PASSWORD},
        replies={"RCPT TO:<bad@example.com>": "550 5.1.1 no such user"},
    )
    mta.configure(relay)
    replies, _ = session(
        mta, b"HELO c", *transaction("app@example.com", "ok@example.com", "bad@example.com")
    )

    # A 4xx/5xx here would make the client send again to ok@, who has it already.
    assert codes(replies) == [220, 250, 250, 250, 250, 354, 250, 221], replies
    assert "bad@example.com" in replies[6] and "550 5.1.1 no such user" in replies[6]
    assert [a for a, _ in relay.envelopes[0].rcpts] == ["ok@example.com"]


def test_rset_forgets_the_transaction(module_mta: Mta, traffic: Traffic) -> None:
    replies, _ = session(
        module_mta,
        b"EHLO client.example",
        b"MAIL FROM:<first@example.com>",
        b"RCPT TO:<first-rcpt@example.com>",
        b"RSET",
        b"DATA",
        *transaction("second@example.com", "second-rcpt@example.com"),
    )

    assert codes(replies) == [220, 250, 250, 250, 250, 503, 250, 250, 354, 250, 221], replies
    assert len(traffic.envelopes) == 1
    assert traffic.envelopes[0].mail_from == "second@example.com"
    assert [a for a, _ in traffic.envelopes[0].rcpts] == ["second-rcpt@example.com"]


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"BOGUS command", 502),
        (b"MAIL TO:<x@example.com>", 501),
        (b"MAIL FROM:x@example.com", 501),
        (b"RCPT TO:<x@example.com>", 503),  # no MAIL yet
        (b"DATA", 503),
        (b"EHLO \x01\x02", 500),
        (b"NOOP \xff\xfe", 500),
        (b"HELP " + b"x" * 2000, 500),
    ],
    ids=[
        "unknown",
        "mail-to",
        "no-brackets",
        "rcpt-first",
        "data-first",
        "control",
        "utf8",
        "long",
    ],
)
def test_bad_commands_get_5xx_and_the_session_goes_on(
    module_mta: Mta, traffic: Traffic, line: bytes, code: int
) -> None:
    replies, result = session(module_mta, b"EHLO client.example", line, b"NOOP")

    assert codes(replies) == [220, 250, code, 250, 221], replies
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr
    assert traffic.sessions == []


def test_data_cut_by_end_of_input_keeps_nothing(module_mta: Mta, traffic: Traffic) -> None:
    replies, result = session(
        module_mta,
        b"EHLO client.example",
        b"MAIL FROM:<app@example.com>",
        b"RCPT TO:<a@example.com>",
        b"DATA",
        b"Subject: cut short",
        b"",
        b"the connection drops here",
        end=b"",
    )

    assert codes(replies)[:5] == [220, 250, 250, 250, 354], replies
    assert all(c >= 400 for c in codes(replies)[5:]), replies
    assert "Traceback" not in result.stderr
    assert traffic.sessions == []


# --------------------------------------------------------------------------- queue mode


@pytest.fixture
def queue_mta(mta: Mta, module_relay: RecordingServer) -> Mta:
    mta.configure(module_relay, mode="queue")
    init = mta.run("queue", "init", program="pysendmail")
    assert init.returncode == 0, init
    return mta


def queued(mta: Mta) -> list[tuple[str, list[str], bytes]]:
    """(sender, recipients, message bytes) of each queued message."""
    queue = Queue(str(mta.queue_dir))
    found = []
    for queue_id in queue.ids():
        envelope, _ = queue.read_envelope("queue", queue_id)
        with queue.open_message("queue", queue_id) as f:
            f.seek(envelope.message_offset)
            data = f.read()
        found.append((envelope.sender, [r.address for r in envelope.recipients], data))
    return found


def test_a_session_in_queue_mode_queues_the_message(queue_mta: Mta, traffic: Traffic) -> None:
    replies, result = session(
        queue_mta, b"EHLO client.example", *transaction("app@example.com", "root", "b@example.com")
    )

    assert codes(replies) == [220, 250, 250, 250, 250, 354, 250, 221], replies
    assert "queued as" in replies[6]
    assert result.returncode == 0, result
    [(sender, recipients, data)] = queued(queue_mta)
    assert sender == "app@example.com"
    assert recipients == ["admin@example.com", "b@example.com"]
    check_completed(data)
    assert traffic.sessions == []  # queued, not relayed: the runner does that


def test_queue_mode_data_cut_by_end_of_input_leaves_no_file(
    queue_mta: Mta, traffic: Traffic
) -> None:
    replies, _ = session(
        queue_mta,
        b"HELO client.example",
        b"MAIL FROM:<app@example.com>",
        b"RCPT TO:<a@example.com>",
        b"DATA",
        b"Subject: cut short",
        end=b"",
    )

    assert codes(replies)[:5] == [220, 250, 250, 250, 354], replies
    assert queued(queue_mta) == []
    for folder in ("tmp", "queue", "maildrop"):
        assert list((queue_mta.queue_dir / folder).iterdir()) == [], folder


# --------------------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    "trick",
    [
        # A read of DATA_CHUNK octets ends just before ".\r\n" inside one long line.
        b"x" * 65536 + b".\r\n",
        # A "." line ended by bare LFs is content, not the end of the data.
        b"text\n.\n",
    ],
    ids=["dot-after-a-long-line", "bare-lf-dot"],
)
def test_text_inside_a_message_cannot_end_it_and_smuggle_commands(
    module_mta: Mta, traffic: Traffic, trick: bytes
) -> None:
    smuggled = b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
    body = trick + smuggled + b"Subject: smuggled\r\n\r\nhi\r\n.\r\n"
    stdin = (
        b"EHLO client.example\r\nMAIL FROM:<app@example.com>\r\nRCPT TO:<a@example.com>\r\n"
        b"DATA\r\nSubject: honest\r\n\r\n" + body + b"QUIT\r\n"
    )
    replies, _ = session(module_mta, end=stdin)

    assert codes(replies) == [220, 250, 250, 250, 354, 250, 221], replies
    assert len(traffic.envelopes) == 1
    envelope = traffic.envelopes[0]
    assert envelope.mail_from == "app@example.com"
    assert [a for a, _ in envelope.rcpts] == ["a@example.com"]
    assert not any("evil" in c or "victim" in c for c in traffic.commands)
    # The would-be commands arrived as the text they are, the long line whole.
    _, arrived = split_message(envelope.data)
    assert b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.org>\r\n" in arrived
    assert trick.rstrip(b"\r\n").replace(b"\n", b"\r\n") in arrived


def test_a_bad_recipient_is_refused_at_rcpt_and_the_others_get_the_message(
    module_mta: Mta, traffic: Traffic
) -> None:
    replies, _ = session(
        module_mta,
        b"EHLO client.example",
        b"MAIL FROM:<app@example.com>",
        b"RCPT TO:<a@example.com>",
        b'RCPT TO:<"unterminated@example.com>',
        b"RCPT TO:<two words@example.com>",
        b"RCPT TO:<a@example.com, b@example.com>",
        b"RCPT TO:<root>",
        b"DATA",
        *MESSAGE,
        b".",
    )

    assert codes(replies) == [220, 250, 250, 250, 553, 553, 553, 250, 354, 250, 221], replies
    assert [a for a, _ in traffic.envelopes[0].rcpts] == ["a@example.com", "admin@example.com"]


@pytest.mark.parametrize(
    ("mail", "code"),
    [
        (b"MAIL FROM:<not an address>", 553),
        (b"MAIL FROM:<app@example.com> SIZE=99999999999", 552),
        (b"MAIL FROM:<app@example.com> RET=HDRS", 555),
        (b"MAIL FROM:<app@example.com> BODY=BINARYMIME", 501),
    ],
    ids=["bad-address", "too-big", "unannounced-dsn", "binarymime"],
)
def test_mail_from_that_cannot_be_honoured_is_refused_at_once(
    module_mta: Mta, traffic: Traffic, mail: bytes, code: int
) -> None:
    replies, _ = session(
        module_mta, b"EHLO client.example", mail, b"RCPT TO:<a@example.com>", b"DATA"
    )
    assert codes(replies) == [220, 250, code, 503, 503, 221], replies
    assert traffic.sessions == []


def test_mail_from_with_announced_parameters_is_accepted(module_mta: Mta, traffic: Traffic) -> None:
    replies, _ = session(
        module_mta,
        b"EHLO client.example",
        b"MAIL FROM:<> SIZE=200 BODY=8BITMIME",
        b"RCPT TO:<a@example.com>",
        b"DATA",
        *MESSAGE,
        b".",
    )
    assert codes(replies) == [220, 250, 250, 250, 354, 250, 221], replies
    assert traffic.commands[4].startswith("MAIL FROM:<>")
