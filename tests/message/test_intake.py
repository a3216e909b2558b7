"""The intake: bytes on stdin to a spool file, with the envelope a sendmail user expects."""

import errno
import io
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pysendmail.errors import DataError, IOFailure, UsageError
from pysendmail.message import intake
from pysendmail.message.aliases import Aliases
from pysendmail.message.envelope import Envelope
from pysendmail.message.headers import format_date, phrase
from pysendmail.message.intake import (
    NO_RECIPIENTS,
    IntakeOptions,
    make_queue_id,
    receive,
    resolve_recipient,
)
from tests.support.hotpath import HEAVY

from .helpers import QUEUE_ID, Trickle, crlf, options, reference_lf, run

SIMPLE = b"To: user@example.com\nSubject: hi\n\nbody\n"

# --------------------------------------------------------------------------- line endings


def test_mixed_crlf_and_lf_become_crlf_and_8bit_bytes_stay() -> None:
    data = b"To: a@example.com\r\nSubject: caf\xc3\xa9\nX: 1\r\n\r\nline1\nline2 caf\xe9\r\nend"
    result = run(data, recipients=["a@example.com"])
    assert result.header_lines[2:5] == [b"To: a@example.com", b"Subject: caf\xc3\xa9", b"X: 1"]
    assert result.body == b"line1\r\nline2 caf\xe9\r\nend\r\n"
    assert result.envelope.eightbit
    assert result.envelope.body_type == "8BITMIME"


def test_a_bare_cr_is_a_line_end() -> None:
    result = run(b"Subject: mac\r\rold\rmac\r\r\nx", recipients=["a@example.com"])
    assert result.field("Subject") == b"Subject: mac"
    # "\r\r" after the header is one line end plus the blank line; "\r\r\n" is two line ends.
    assert result.body == b"old\r\nmac\r\n\r\nx\r\n"


def test_a_crlf_split_between_reads_stays_one_line_end() -> None:
    data = b"Subject: x\r\n\r\n" + b"a\r\nb\r\n" * 50
    for size in (1, 2, 3, 7, 13):
        result = run(Trickle(data, [size]), recipients=["a@example.com"])
        assert result.body == b"a\r\nb\r\n" * 50


def test_a_leading_mbox_from_line_is_dropped_and_only_that() -> None:
    data = b"From someone@example.com Sun Nov 29 20:02:49 2026\nSubject: x\n\nFrom here on\n"
    result = run(data, recipients=["a@example.com"])
    assert result.header_lines[2] == b"Subject: x"
    assert b"someone" not in result.message
    assert result.body == b"From here on\r\n"


# --------------------------------------------------------------------------- the dot rule


def test_without_i_a_lone_dot_ends_the_input() -> None:
    data = b"Subject: x\n\nbefore\n.\nafter\n"
    assert run(data, recipients=["a@example.com"]).body == b"before\r\n"
    kept = run(data, recipients=["a@example.com"], dot_ends_input=False)
    assert kept.body == b"before\r\n.\r\nafter\r\n"


@pytest.mark.parametrize(
    ("data", "body"),
    [
        (b"Subject: x\n\nbefore\n.", b"before\r\n"),  # at EOF without a line end
        (b"Subject: x\n\nbefore\r\n.\r\nafter", b"before\r\n"),
        (b"Subject: x\n\nbefore\r.\rafter", b"before\r\n"),
        (b"Subject: x\n\n..\n.x\n x\n", b"..\r\n.x\r\n x\r\n"),  # no unstuffing, no other dots
        (b"Subject: x\n\n.\n", b""),
    ],
)
def test_the_dot_rule_in_its_corners(data: bytes, body: bytes) -> None:
    assert run(data, recipients=["a@example.com"]).body == body


def test_a_dot_line_among_the_headers_ends_the_input_too() -> None:
    result = run(b"Subject: x\n.\nTo: y\n\nbody\n", recipients=["a@example.com"])
    assert result.header_lines[2] == b"Subject: x"
    assert result.field("To") is None
    assert result.body == b""


def test_a_dot_line_split_across_reads_still_counts() -> None:
    data = b"Subject: x\n\n" + b"a" * 100 + b"\n.\nafter\n"
    for size in range(1, 8):
        trickle = Trickle(data, [size, 101, 1])
        assert run(trickle, recipients=["a@example.com"]).body == b"a" * 100 + b"\r\n"


@settings(max_examples=300)
@given(
    st.binary(max_size=60)
    | st.lists(
        st.sampled_from([b".", b"\r", b"\n", b"a", b"\r\n", b".\n", b"\n."]), max_size=25
    ).map(b"".join),
    st.lists(st.integers(1, 9), min_size=1, max_size=6),
    st.booleans(),
)
def test_any_chunking_gives_the_reference_body(data: bytes, sizes: list[int], dot: bool) -> None:
    message = b"Subject: x\n\n" + data
    result = run(Trickle(message, sizes), recipients=["a@example.com"], dot_ends_input=dot)
    assert result.body == crlf(reference_lf(data, dot))


# --------------------------------------------------------------------------- the header block


def test_a_line_that_is_no_header_starts_the_body_after_a_blank_line() -> None:
    result = run(b"To: x@example.com\nhello world\nSecond: line\n", recipients=["a@example.com"])
    assert result.header_lines[2] == b"To: x@example.com"
    assert result.body == b"hello world\r\nSecond: line\r\n"


def test_a_message_without_headers_gets_them_added() -> None:
    result = run(b"just text\n", recipients=["a@example.com"])
    assert [line.split(b":")[0] for line in result.header_lines] == [
        b"Received",
        b"\tid TESTQUEUEID0001; Sun, 29 Nov 2026 20",
        b"Message-ID",
        b"Date",
        b"From",
    ]
    assert result.body == b"just text\r\n"


def test_an_empty_message_and_a_message_without_body() -> None:
    empty = run(b"", recipients=["a@example.com"])
    assert empty.body == b"" and empty.field("From") is not None
    headers_only = run(b"Subject: x\nTo: y", recipients=["a@example.com"])
    assert headers_only.field("To") == b"To: y"
    assert headers_only.body == b""
    assert headers_only.message.endswith(
        b"To: y\r\nMessage-ID: <20261129200249.TESTQUEUEID0001@vm.example.com>\r\nDate: "
        + format_date(1795982569.0).encode()
        + b"\r\nFrom: root <root@example.com>\r\n\r\n"
    )


def test_continuation_lines_and_odd_field_names_are_kept_verbatim() -> None:
    data = (
        b"Subject: a long\n\tfolded   subject\n   with three lines\n"
        b"X-Odd_Name!~ : spaced colon\nX-Empty:\nX-Long: " + b"y" * 3000 + b"\n\nbody\n"
    )
    result = run(data, recipients=["a@example.com"])
    assert result.header_lines[2:8] == [
        b"Subject: a long",
        b"\tfolded   subject",
        b"   with three lines",
        b"X-Odd_Name!~ : spaced colon",
        b"X-Empty:",
        b"X-Long: " + b"y" * 3000,
    ]


def test_bcc_and_resent_bcc_are_removed_with_their_continuations() -> None:
    data = (
        b"To: a@example.com\nBcc: secret@example.com,\n  other@example.com\n"
        b"BCC: third@example.com\nResent-Bcc: r@example.com\nSubject: s\n\nbody\n"
    )
    for extract in (False, True):
        result = run(data, recipients=["a@example.com"], extract_recipients=extract)
        assert b"secret" not in result.message and b"other@" not in result.message
        assert b"third@" not in result.message and b"r@example" not in result.message
        assert result.header_lines[2:4] == [b"To: a@example.com", b"Subject: s"]


def test_lines_longer_than_998_octets_pass_through_verbatim() -> None:
    long_header = b"X-Long: " + b"h" * 5000
    long_body = bytes(range(32, 127)) * 100
    result = run(long_header + b"\n\n" + long_body + b"\nshort\n", recipients=["a@example.com"])
    assert result.field("X-Long") == long_header
    assert result.body == long_body + b"\r\nshort\r\n"


def test_nul_bytes_are_kept_in_the_body() -> None:
    result = run(b"Subject: x\n\na\x00b\n\x00\n", recipients=["a@example.com"])
    assert result.body == b"a\x00b\r\n\x00\r\n"


def test_nul_bytes_in_the_header_block_are_refused() -> None:
    with pytest.raises(DataError, match=r"NUL byte in the header block.*'X-A: b\\x00c'"):
        run(b"Subject: x\nX-A: b\x00c\n\nbody\n", recipients=["a@example.com"])


def test_a_header_bomb_is_refused_early_without_a_traceback() -> None:
    bomb = b"X-A: b\n" * (3 * 1024 * 1024)
    src = io.BytesIO(bomb + b"\nbody\n")
    with pytest.raises(DataError, match="header block is larger than 1048576 octets"):
        receive(src, io.BytesIO(), options(recipients=["a@example.com"]))
    assert src.tell() < 2 * 1024 * 1024  # it stopped reading soon after the limit


def test_one_huge_header_line_is_refused_and_the_limit_is_configurable() -> None:
    data = b"Subject: " + b"x" * (300 * 1024) + b"\n\nbody\n"
    with pytest.raises(DataError, match="larger than 262144 octets"):
        run(data, recipients=["a@example.com"], max_header_bytes=256 * 1024)
    assert run(data, recipients=["a@example.com"]).body == b"body\r\n"
    # Also when the input ends inside that line.
    with pytest.raises(DataError, match="larger than 262144 octets"):
        run(data[:-7], recipients=["a@example.com"], max_header_bytes=256 * 1024)


def test_binary_input_without_line_ends_is_a_body_not_a_header_bomb() -> None:
    blob = bytes(range(256)) * 8192  # 2 MiB, no structure
    result = run(blob, recipients=["a@example.com"], dot_ends_input=False)
    assert result.body == crlf(reference_lf(blob, False))


def test_huge_messages_stream_with_bounded_memory() -> None:
    total = 20 * 1024 * 1024
    line = b"0123456789 abcdefghijklmnopqrstuvwxyz caf\xc3\xa9 ABCDEFGHIJKLMNOPQRSTUVWXYZ\n"

    class Endless:
        def __init__(self) -> None:
            self.sent = 0
            self.head = b"Subject: big\n\n"

        def read(self, n: int) -> bytes:
            if self.head:
                piece, self.head = self.head, b""
                return piece
            if self.sent >= total:
                return b""
            piece = (line * (n // len(line) + 1))[:n]
            self.sent += len(piece)
            return piece

    class Sink:
        """A seekable file that keeps only the prelude and counts the rest."""

        def __init__(self) -> None:
            self.pos = 0
            self.size = 0
            self.first = bytearray()

        def write(self, data: bytes) -> int:
            if self.pos < 4096:
                self.first[self.pos : self.pos + len(data)] = data[: 4096 - self.pos]
            self.pos += len(data)
            self.size = max(self.size, self.pos)
            return len(data)

        def tell(self) -> int:
            return self.pos

        def seek(self, pos: int) -> int:
            self.pos = pos
            return pos

    sink = Sink()
    tracemalloc.start()
    try:
        env = receive(Endless(), sink, options(recipients=["a@example.com"]))  # type: ignore[arg-type]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, f"peak {peak} bytes"
    assert env.size == sink.size - env.message_offset
    assert env.size > total  # CRLF line ends and the added headers
    assert env.eightbit and env.body_type == "8BITMIME"
    # The prelude was written again in place with the final size.
    again = Envelope.from_file(io.BytesIO(bytes(sink.first)))
    assert again.size == env.size and again.eightbit


def test_the_message_size_limit() -> None:
    with pytest.raises(DataError, match="larger than the size limit of 500 octets"):
        run(b"Subject: x\n\n" + b"y" * 1000, recipients=["a@example.com"], max_message_size=500)
    assert run(SIMPLE, recipients=["a@example.com"], max_message_size=5000).envelope.size < 5000


# --------------------------------------------------------------------------- added headers


def test_received_message_id_date_and_from_are_added() -> None:
    result = run(b"Subject: x\n\nbody\n", recipients=["a@example.com"])
    date = format_date(1795982569.0)
    assert result.header_lines == [
        b"Received: by vm.example.com (pysendmail, from userid 0)",
        f"\tid {QUEUE_ID}; {date}".encode(),
        b"Subject: x",
        b"Message-ID: <20261129200249.TESTQUEUEID0001@vm.example.com>",
        f"Date: {date}".encode(),
        b"From: root <root@example.com>",
    ]


def test_present_headers_are_not_added_again_whatever_their_case() -> None:
    data = b"FROM: me@example.com\ndate: Mon, 1 Jan 2024 00:00:00 +0000\nMESSAGE-ID: <x@y>\n\nb\n"
    result = run(data, recipients=["a@example.com"])
    assert result.header_lines[2:] == data.split(b"\n\n")[0].split(b"\n")


@pytest.mark.parametrize(
    ("full_name", "sender", "from_line"),
    [
        ("Sender Name", None, b"From: Sender Name <root@example.com>"),
        ("CronDaemon", "cron@example.com", b"From: CronDaemon <cron@example.com>"),
        ("J. Smith, Jr.", None, b'From: "J. Smith, Jr." <root@example.com>'),
        ('Say "hi"', None, b'From: "Say \\"hi\\"" <root@example.com>'),
        ("Dörte Müller", None, b"From: =?UTF-8?B?RMO2cnRlIE3DvGxsZXI=?= <root@example.com>"),
        ("", None, b"From: root@example.com"),
        (None, "<>", b"From: root <root@example.com>"),
        (None, "webmaster", b"From: root <webmaster@example.com>"),
    ],
)
def test_the_added_from_uses_f_and_f_names(
    full_name: str | None, sender: str | None, from_line: bytes
) -> None:
    result = run(
        b"Subject: x\n\nb\n", recipients=["a@example.com"], full_name=full_name, sender=sender
    )
    assert result.field("From") == from_line


def test_a_long_non_ascii_name_becomes_several_encoded_words_on_folded_lines() -> None:
    name = "Ünïcödé " * 12
    text = phrase(name)
    words = text.split("\r\n ")
    assert len(words) > 1 and all(len(w) <= 75 for w in words)
    import base64

    decoded = b"".join(base64.b64decode(w[10:-2]) for w in words).decode("utf-8")
    assert decoded == name


def test_date_has_english_names_and_the_numeric_local_offset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LC_ALL", "de_DE.UTF-8")
    for tz, expected in [
        ("UTC", "Sun, 29 Nov 2026 20:02:49 +0000"),
        ("Europe/Berlin", "Sun, 29 Nov 2026 21:02:49 +0100"),
        ("America/St_Johns", "Sun, 29 Nov 2026 16:32:49 -0330"),
    ]:
        monkeypatch.setenv("TZ", tz)
        time.tzset()
        assert format_date(1795982569.0) == expected
    monkeypatch.undo()
    time.tzset()


def test_the_from_address_comes_from_the_password_database_not_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("USER", "mallory")
    monkeypatch.setenv("LOGNAME", "mallory")
    monkeypatch.setenv("HOME", "/home/mallory")
    result = run(b"Subject: x\n\nb\n", recipients=["a@example.com"], uid=65534)
    assert result.envelope.sender == "nobody@example.com"
    assert result.envelope.submitter_login == "nobody"
    assert result.field("From") == b"From: nobody <nobody@example.com>"
    assert b"userid 65534" in result.header_lines[0]


def test_a_uid_without_a_passwd_entry_still_sends() -> None:
    result = run(b"Subject: x\n\nb\n", recipients=["a@example.com"], uid=1234567)
    assert result.envelope.sender == "1234567@example.com"
    assert result.field("From") == b"From: 1234567@example.com"


# --------------------------------------------------------------------------- recipients


def test_header_recipients_are_added_to_argv_ones_deduplicated_in_order() -> None:
    data = b"To: b@example.com, a@example.com\nCc: C <c@example.com>\nBcc: d@example.com\n\nx\n"
    result = run(data, recipients=["a@example.com", "z@example.com"], extract_recipients=True)
    assert result.recipients == [
        "a@example.com",
        "z@example.com",
        "b@example.com",
        "c@example.com",
        "d@example.com",
    ]


def test_without_t_header_recipients_are_not_used() -> None:
    with pytest.raises(UsageError) as info:
        run(b"To: a@example.com\n\nx\n")
    assert str(info.value) == NO_RECIPIENTS
    assert run(b"To: a@example.com\n\nx\n", recipients=["z@example.com"]).recipients == [
        "z@example.com"
    ]


def test_t_without_recipient_headers_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no recipients"):
        run(b"Subject: x\nTo: undisclosed-recipients:;\n\nx\n", extract_recipients=True)


def test_no_recipients_is_refused_before_reading_stdin() -> None:
    src = io.BytesIO(SIMPLE)
    with pytest.raises(UsageError):
        receive(src, io.BytesIO(), options())
    assert src.tell() == 0


def test_resent_headers_replace_the_original_recipients() -> None:
    data = (
        b"To: original@example.com\nResent-From: me@example.com\n"
        b"Resent-To: new@example.com\nResent-Bcc: hidden@example.com\n\nx\n"
    )
    result = run(data, extract_recipients=True)
    assert result.recipients == ["new@example.com", "hidden@example.com"]
    assert b"hidden@" not in result.message
    assert result.field("To") == b"To: original@example.com"


def test_argv_words_may_hold_lists_and_display_names() -> None:
    result = run(SIMPLE, recipients=["a@example.com, B <b@example.com>", "<c@example.com>"])
    assert result.recipients == ["a@example.com", "b@example.com", "c@example.com"]
    assert [r.original for r in result.envelope.recipients] == [
        "a@example.com",
        "b@example.com",
        "c@example.com",
    ]


def test_local_names_and_this_hosts_addresses_are_qualified_others_kept_as_written() -> None:
    result = run(
        SIMPLE,
        recipients=[
            "root",
            "www-data",
            "admin@VM",
            "x@vm.example.com",
            "Y@Other.Example",
            "z@localhost",
        ],
    )
    assert result.recipients == [
        "root@example.com",
        "www-data@example.com",
        "admin@example.com",
        "x@example.com",
        "Y@Other.Example",
        "z@example.com",
    ]
    assert [r.original for r in result.envelope.recipients][:3] == ["root", "www-data", "admin@VM"]
    # "To: user@example.com" is not touched: aliases and qualification change the envelope only.
    assert result.field("To") == b"To: user@example.com"


def test_default_local_hostnames_are_this_machine() -> None:
    node = os.uname().nodename
    opts = IntakeOptions(domain="example.com", hostname="mail.example.com", recipients=["x"])
    assert {"localhost", node.lower(), node.split(".")[0].lower(), "mail.example.com"} <= set(
        opts.local_hostnames
    )
    assert resolve_recipient(f"root@{node.upper()}", opts) == ["root@example.com"]


@pytest.mark.parametrize(
    ("word", "error", "complaint"),
    [
        ("a@example.com\r\nRCPT TO:<x@y>", DataError, "control character '\\r'"),
        ("evil\x00@example.com", DataError, "control character '\\x00'"),
        ("john doe", DataError, "words separated by spaces"),
        ("user@exam_ple.com", DataError, "'_' is not allowed in a domain"),
        ("a..b", DataError, "empty label"),
        ("caf\udce9@example.com", DataError, "not valid UTF-8"),
    ],
)
def test_bad_argv_recipients_are_refused_before_reading(
    word: str, error: type[Exception], complaint: str
) -> None:
    src = io.BytesIO(SIMPLE)
    with pytest.raises(error) as info:
        receive(src, io.BytesIO(), options(recipients=[word]))
    assert complaint in str(info.value)
    assert "\r" not in str(info.value) and "\x00" not in str(info.value)
    assert src.tell() == 0


def test_bad_header_recipients_name_the_header() -> None:
    with pytest.raises(DataError, match=r"^Cc header: .*words separated by spaces"):
        run(b"To: a@example.com\nCc: John Smith\n\nx\n", extract_recipients=True)
    with pytest.raises(DataError, match=r"^To header: .*control character '\\x1b'"):
        run(b"To: a\x1b@example.com\n\nx\n", extract_recipients=True)


def test_aliases_expand_local_names_then_qualify() -> None:
    aliases = Aliases.parse(
        "root: admin@example.org, ops\nops: alice, bob@localhost\npostmaster: root\n", "aliases"
    )
    result = run(
        b"To: postmaster\nCc: Root <root@vm>\n\nx\n",
        recipients=["nobody"],
        extract_recipients=True,
        aliases=aliases,
    )
    assert result.recipients == [
        "nobody@example.com",
        "admin@example.org",
        "alice@example.com",
        "bob@example.com",
    ]
    assert [r.original for r in result.envelope.recipients] == [
        "nobody",
        "postmaster",
        "postmaster",
        "postmaster",
    ]
    assert result.field("To") == b"To: postmaster"


def test_the_catchall_takes_names_without_an_alias() -> None:
    aliases = Aliases.parse("root: admin@example.org\nsink: ops@example.org\n", "aliases")
    result = run(
        SIMPLE,
        recipients=["root", "nobody", "x@elsewhere.example"],
        aliases=aliases,
        catchall="sink",
    )
    assert result.recipients == ["admin@example.org", "ops@example.org", "x@elsewhere.example"]
    plain = run(SIMPLE, recipients=["nobody"], catchall="catch@example.org")
    assert plain.recipients == ["catch@example.org"]


def test_resolve_recipient_is_what_receive_does() -> None:
    aliases = Aliases.parse("root: admin@example.org, root\n", "aliases")
    opts = options(aliases=aliases)
    assert resolve_recipient("root", opts) == ["admin@example.org", "root@example.com"]
    # Domains are case-insensitive, local parts are not (RFC 5321 section 2.4).
    assert resolve_recipient("a@x.example, a@X.EXAMPLE, A@x.example", opts) == [
        "a@x.example",
        "A@x.example",
    ]


def test_too_many_recipients_for_an_envelope_are_refused() -> None:
    many = [f"user{i:05d}@example.com" for i in range(3000)]
    with pytest.raises(DataError, match="too many recipients"):
        run(SIMPLE, recipients=many)


# --------------------------------------------------------------------------- sender


@pytest.mark.parametrize(
    ("given", "sender"),
    [
        (None, "root@example.com"),
        ("", ""),
        ("<>", ""),
        ("webmaster@example.com", "webmaster@example.com"),
        ("<webmaster@example.com>", "webmaster@example.com"),
        ("Web Master <webmaster@example.com>", "webmaster@example.com"),
        ("www-data", "www-data@example.com"),
        ("me@VM", "me@VM"),  # only bare names are qualified; -f is kept as written
    ],
)
def test_the_envelope_sender(given: str | None, sender: str) -> None:
    assert run(SIMPLE, recipients=["a@example.com"], sender=given).envelope.sender == sender


@pytest.mark.parametrize(
    ("given", "complaint"),
    [
        ("a@example.com\nRCPT TO:<x@y>", "control character '\\n'"),
        ("a@b.example, c@d.example", "is not one address"),
        ("user@", "no domain"),
    ],
)
def test_a_bad_sender_is_refused_before_reading(given: str, complaint: str) -> None:
    src = io.BytesIO(SIMPLE)
    with pytest.raises(DataError, match=complaint.replace("\\", "\\\\")):
        receive(src, io.BytesIO(), options(recipients=["a@example.com"], sender=given))
    assert src.tell() == 0


def test_the_sender_from_the_from_header_when_configured() -> None:
    data = b"From: Cron Daemon <root>\nTo: a@example.com\n\nx\n"
    assert run(data, recipients=["a@example.com"]).envelope.sender == "root@example.com"
    data = b"From: PHP App <app@shop.example>\n\nx\n"
    result = run(data, recipients=["a@example.com"], sender_from_header=True)
    assert result.envelope.sender == "app@shop.example"
    # -f still wins, and without a From header the uid's address is used.
    assert (
        run(
            data, recipients=["a@example.com"], sender_from_header=True, sender="f@example.com"
        ).envelope.sender
        == "f@example.com"
    )
    assert (
        run(b"\nx\n", recipients=["a@example.com"], sender_from_header=True).envelope.sender
        == "root@example.com"
    )


def test_masquerading_rewrites_the_envelope_and_on_request_the_from_header() -> None:
    data = b"From: Test Dev (the dev) <dev@internal.example>\nTo: a@example.com\n\nx\n"
    plain = run(data, recipients=["a@example.com"], rewrite_sender="noreply@example.com")
    assert plain.envelope.sender == "noreply@example.com"
    assert plain.field("From") == b"From: Test Dev (the dev) <dev@internal.example>"
    both = run(
        data,
        recipients=["a@example.com"],
        rewrite_sender="noreply@example.com",
        rewrite_from_header=True,
    )
    assert both.field("From") == b"From: Test Dev (the dev) <noreply@example.com>"
    cron = run(
        b"From: root (Cron Daemon)\n\nx\n",
        recipients=["a@example.com"],
        rewrite_sender="noreply",
        rewrite_from_header=True,
    )
    assert cron.envelope.sender == "noreply@example.com"
    assert cron.field("From") == b"From: noreply@example.com (Cron Daemon)"
    added = run(
        b"\nx\n",
        recipients=["a@example.com"],
        rewrite_sender="noreply@example.com",
        rewrite_from_header=True,
        full_name="Shop",
    )
    assert added.field("From") == b"From: Shop <noreply@example.com>"


def test_masquerading_keeps_the_null_sender() -> None:
    result = run(SIMPLE, recipients=["a@example.com"], sender="<>", rewrite_sender="x@example.com")
    assert result.envelope.sender == ""


def test_qualify_headers_rewrites_bare_names_in_address_headers_only() -> None:
    data = (
        b"From: root (Cron Daemon)\nTo: Root <root@vm>, a@example.org,\n nobody\n"
        b"Cc: undisclosed:;\nSubject: root\nX-To: root\n\nroot\n"
    )
    result = run(data, recipients=["a@example.com"], qualify_headers=True)
    assert result.header_lines[2:8] == [
        b"From: root@example.com (Cron Daemon)",
        b"To: Root <root@example.com>, a@example.org,",
        b" nobody@example.com",
        b"Cc: undisclosed:;",
        b"Subject: root",
        b"X-To: root",
    ]
    # A field it cannot parse is left exactly as written.
    odd = run(b"To: John Smith\n\nx\n", recipients=["a@example.com"], qualify_headers=True)
    assert odd.field("To") == b"To: John Smith"


# --------------------------------------------------------------------------- flags


def test_dsn_values_are_recorded() -> None:
    result = run(
        SIMPLE,
        recipients=["a@example.com", "root"],
        dsn_notify="success, failure",
        dsn_ret="hdrs",
        dsn_envid="QQ314159",
    )
    env = result.envelope
    assert [r.notify for r in env.recipients] == ["SUCCESS,FAILURE", "SUCCESS,FAILURE"]
    assert env.dsn_ret == "HDRS" and env.dsn_envid == "QQ314159"
    assert (
        run(SIMPLE, recipients=["a@example.com"], dsn_notify="never").envelope.recipients[0].notify
        == "NEVER"
    )


@pytest.mark.parametrize(
    ("kw", "error", "complaint"),
    [
        ({"dsn_notify": "sometimes"}, UsageError, "-N 'sometimes'"),
        ({"dsn_notify": "never,success"}, UsageError, "-N"),
        ({"dsn_ret": "all"}, UsageError, "-R 'all': use FULL or HDRS"),
        ({"body_type": "binarymime"}, UsageError, "-B 'binarymime': use 7BIT or 8BITMIME"),
        ({"dsn_envid": "a\nb"}, DataError, "control character"),
        ({"dsn_envid": "é"}, DataError, "printable ASCII"),
        ({"full_name": "Evil\r\nBcc: x@y"}, DataError, "full name (-F)"),
        ({"hostname": "bad host"}, DataError, "hostname 'bad host'"),
        ({"domain": "exam_ple.com"}, DataError, "domain 'exam_ple.com'"),
        ({"queue_id": "../x"}, DataError, "queue id"),
    ],
)
def test_bad_flag_values(kw: dict[str, str], error: type[Exception], complaint: str) -> None:
    with pytest.raises(error, match=complaint.replace("(", r"\(").replace(")", r"\)")):
        run(SIMPLE, recipients=["a@example.com"], **kw)


def test_body_type() -> None:
    assert (
        run(SIMPLE, recipients=["a@x.example"], body_type="8bitmime").envelope.body_type
        == "8BITMIME"
    )
    assert run(SIMPLE, recipients=["a@x.example"], body_type="7bit").envelope.body_type == "7BIT"
    assert run(SIMPLE, recipients=["a@x.example"]).envelope.body_type is None
    # A body that is not 7-bit is declared as what it is.
    eight = run(SIMPLE + b"caf\xc3\xa9\n", recipients=["a@x.example"], body_type="7BIT")
    assert eight.envelope.body_type == "8BITMIME" and eight.envelope.eightbit


def test_utf8_addresses_ask_for_smtputf8() -> None:
    assert run(SIMPLE, recipients=["dörte@bücher.example"]).envelope.smtputf8
    assert run(SIMPLE, recipients=["a@x.example"], sender="jörg@x.example").envelope.smtputf8
    assert not run(SIMPLE, recipients=["a@x.example"]).envelope.smtputf8


# --------------------------------------------------------------------------- files


def test_the_prelude_sits_before_the_message_at_any_offset() -> None:
    out = io.BytesIO()
    out.write(b"previous content")
    env = receive(io.BytesIO(SIMPLE), out, options(recipients=["a@example.com"]))
    out.seek(16)
    again = Envelope.from_file(out)
    assert again.message_offset == env.message_offset
    assert out.read() == out.getvalue()[env.message_offset :]
    assert env.size == len(out.getvalue()) - env.message_offset


def test_read_errors_are_io_failures() -> None:
    class Broken:
        def read(self, n: int) -> bytes:
            raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(IOFailure, match="reading the message failed: Input/output error"):
        receive(Broken(), io.BytesIO(), options(recipients=["a@example.com"]))  # type: ignore[arg-type]


def test_write_errors_are_io_failures() -> None:
    class Full(io.BytesIO):
        def write(self, data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(IOFailure, match="writing the spool file failed: No space left on device"):
        receive(io.BytesIO(SIMPLE), Full(), options(recipients=["a@example.com"]))


def test_an_unseekable_spool_is_refused() -> None:
    r, w = os.pipe()
    with (
        open(w, "wb") as out,
        open(r, "rb"),
        pytest.raises(IOFailure, match="must be a seekable file"),
    ):
        receive(io.BytesIO(SIMPLE), out, options(recipients=["a@example.com"]))


def test_partial_writes_of_a_raw_file_are_completed(tmp_path: Path) -> None:
    class Stingy(io.BytesIO):
        def write(self, data: object) -> int:
            return super().write(bytes(data)[:7])  # type: ignore[call-overload]

    out = Stingy()
    env = receive(io.BytesIO(SIMPLE), out, options(recipients=["a@example.com"]))
    assert out.getvalue()[env.message_offset :].endswith(b"\r\n\r\nbody\r\n")
    out.seek(0)
    assert Envelope.from_file(out).size == env.size


def test_a_real_spool_file(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    with open(path, "w+b") as out:
        env = receive(io.BytesIO(SIMPLE), out, options(recipients=["root"]))
    with open(path, "rb") as f:
        again = Envelope.from_file(f)
        assert f.read() == path.read_bytes()[env.message_offset :]
    assert again == env


# --------------------------------------------------------------------------- ids and imports


def test_queue_ids_are_unique_sortable_and_filename_safe() -> None:
    ids = [make_queue_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 16 and set(i) <= set("0123456789ABCDEFGHJKMNPQRSTVWXYZ") for i in ids)
    earlier = make_queue_id()
    time.sleep(0.002)
    assert make_queue_id() > earlier
    env = run(SIMPLE, recipients=["a@example.com"], queue_id=None).envelope
    assert len(env.queue_id) == 16


FORBIDDEN = HEAVY | {"contextlib"}


def test_the_hot_path_imports_nothing_heavy() -> None:
    root = str(Path(intake.__file__).resolve().parents[2])
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import pysendmail.message.intake, pysendmail.message.aliases,"
        " pysendmail.message.envelope, pysendmail.message.addresses, pysendmail.message.headers;"
        "print(' '.join(sorted(sys.modules)))"
    )
    # -S: without site, whatever shows up was imported by these modules.
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, root], capture_output=True, text=True, check=True
    )
    modules = set(out.stdout.split())
    assert "pysendmail.message.intake" in modules
    heavy = {m for m in modules if m.split(".")[0] in FORBIDDEN}
    assert not heavy, f"the hot path imports {sorted(heavy)}"


# --------------------------------------------------------------------------- corners


@pytest.mark.parametrize("sizes", [[1], [3], [65536]])
def test_a_message_that_starts_with_white_space_is_all_body(sizes: list[int]) -> None:
    result = run(Trickle(b"  indented text\nSubject: no\n", sizes), recipients=["a@example.com"])
    assert result.header_lines[2].startswith(b"Message-ID: ")
    assert result.body == b"  indented text\r\nSubject: no\r\n"


def test_a_last_line_without_line_end_that_is_no_header_is_body() -> None:
    result = run(b"To: x\nno colon here", recipients=["a@example.com"])
    assert result.field("To") == b"To: x"
    assert result.body == b"no colon here\r\n"


def test_a_non_blocking_stdin_is_an_io_failure() -> None:
    class NonBlocking:
        def read(self, n: int) -> None:
            return None

    with pytest.raises(IOFailure, match="non-blocking"):
        receive(NonBlocking(), io.BytesIO(), options(recipients=["a@example.com"]))  # type: ignore[arg-type]


def test_a_spool_that_fails_to_seek_back_is_an_io_failure() -> None:
    class NoSeek(io.BytesIO):
        def seek(self, pos: int, whence: int = 0) -> int:
            raise OSError(errno.ESPIPE, "Illegal seek")

    with pytest.raises(IOFailure, match="Illegal seek"):
        receive(io.BytesIO(SIMPLE), NoSeek(), options(recipients=["a@example.com"]))


def test_sender_from_header_corners() -> None:
    with pytest.raises(DataError, match=r"^From header: .*words separated by spaces"):
        run(b"From: John Smith\n\nx\n", recipients=["a@example.com"], sender_from_header=True)
    group = run(b"From: Nobody:;\n\nx\n", recipients=["a@example.com"], sender_from_header=True)
    assert group.envelope.sender == "root@example.com"


def test_masquerading_an_unparseable_from_is_refused_not_leaked() -> None:
    with pytest.raises(DataError, match=r"^From header: "):
        run(
            b"From: John Smith\n\nx\n",
            recipients=["a@example.com"],
            rewrite_sender="noreply@example.com",
            rewrite_from_header=True,
        )


def test_gecos_names_follow_the_bsd_conventions(monkeypatch: pytest.MonkeyPatch) -> None:
    import pwd

    entries = {
        4001: ("alice", "& Smith,Room 1,555-1234,"),
        4002: ("bob", "Bob\x1b[2J Evil"),
        4003: ("eve\nx", "Eve"),
    }

    def getpwuid(uid: int) -> pwd.struct_passwd:
        login, gecos = entries[uid]
        return pwd.struct_passwd((login, "x", uid, uid, gecos, "/", "/bin/sh"))

    monkeypatch.setattr(pwd, "getpwuid", getpwuid)
    alice = run(b"\nx\n", recipients=["a@example.com"], uid=4001)
    assert alice.field("From") == b"From: Alice Smith <alice@example.com>"
    bob = run(b"\nx\n", recipients=["a@example.com"], uid=4002)
    assert (
        bob.field("From") == b"From: bob@example.com"
    )  # a name with control characters is left out
    eve = run(b"\nx\n", recipients=["a@example.com"], uid=4003)
    assert eve.envelope.sender == "4003@example.com"
    assert eve.envelope.submitter_login == "4003"


def test_odd_login_names_are_quoted_not_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import pwd

    def getpwuid(uid: int) -> pwd.struct_passwd:
        return pwd.struct_passwd(("AD\\jdoe", "x", uid, uid, "", "/", "/bin/sh"))

    monkeypatch.setattr(pwd, "getpwuid", getpwuid)
    result = run(b"\nx\n", recipients=["a@example.com"], uid=5000)
    assert result.envelope.sender == '"AD\\\\jdoe"@example.com'


def test_options_copy_is_a_shallow_copy_of_every_slot() -> None:
    import copy

    from pysendmail.message.intake import IntakeOptions

    template = IntakeOptions(dot_ends_input=False, sender="a@example.com", recipients=["b@x.org"])
    template.queue_id = "ABC"
    twin = template.copy()
    assert twin is not template
    for name in IntakeOptions.__slots__:
        assert getattr(twin, name) is getattr(template, name), name
        assert getattr(twin, name) is getattr(copy.copy(template), name), name
    twin.sender = "c@example.com"
    assert template.sender == "a@example.com"
