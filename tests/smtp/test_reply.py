"""Reply parsing: what a caller reads from a server's reply, and what a hostile server cannot do."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pysendmail.errors import SMTPUnknownError, error_for_reply
from pysendmail.smtp.reply import (
    MAX_LINE_LENGTH,
    MAX_REPLY_LINES,
    Capabilities,
    ReplyParser,
    Response,
    SMTPProtocolError,
)


def test_single_line_reply_fields() -> None:
    r = Response.parse(b"250 2.1.5 Recipient ok\r\n")
    assert r.status == "250"
    assert r.code == 250
    assert r.enhanced == "2.1.5"
    assert r.message == "2.1.5 Recipient ok"
    assert r.string == "250 2.1.5 Recipient ok\r\n"
    assert r.success and not r.continuation
    assert str(r) == "250 2.1.5 Recipient ok"


def test_multiline_reply_keeps_every_line_as_received() -> None:
    r = Response.parse(b"250-mx.example.com Hello\r\n250-SIZE 1000\r\n250 HELP\r\n")
    assert r.lines == ("mx.example.com Hello", "SIZE 1000", "HELP")
    assert r.string == "250-mx.example.com Hello\r\n250-SIZE 1000\r\n250 HELP\r\n"
    assert r.message == "mx.example.com Hello"
    assert str(r) == "250-mx.example.com Hello / 250-SIZE 1000 / 250 HELP"


def test_bare_code_and_bare_lf_are_accepted() -> None:
    r = Response.parse(b"354\n")
    assert r.code == 354 and r.message == "" and r.continuation
    assert r.string == "354\r\n"


@pytest.mark.parametrize(
    ("raw", "enhanced"),
    [
        (b"550 5.1.1 No such user\r\n", "5.1.1"),
        (b"451 4.3.0 Try later\r\n", "4.3.0"),
        (b"250 2.0.0\r\n", "2.0.0"),
        (b"552 5.3.4 \r\n", "5.3.4"),
        (b"550 2.1.5 mismatched class\r\n", None),  # class must match the reply code
        (b"550 5.1.1234 detail too long\r\n", None),
        (b"550 5.1 incomplete\r\n", None),
        (b"550 5.1.1x glued\r\n", None),
        (b"334 VXNlcm5hbWU6\r\n", None),
        (b"250 ok\r\n", None),
    ],
)
def test_enhanced_status_code(raw: bytes, enhanced: str | None) -> None:
    assert Response.parse(raw).enhanced == enhanced


def test_mismatched_enhanced_code_cannot_flip_the_verdict() -> None:
    # RFC 2034: the enhanced class must equal the reply's first digit; a server
    # that sends "550 4.2.2" does not get its 5xx turned into a retry.
    assert not error_for_reply(Response.parse(b"550 4.2.2 Mailbox full\r\n")).temporary
    assert error_for_reply(Response.parse(b"451 5.7.1 Policy\r\n")).temporary
    assert error_for_reply(Response.parse(b"452 4.2.2 Mailbox full\r\n")).temporary


def test_capabilities_from_ehlo() -> None:
    r = Response.parse(
        b"250-mx Hello\r\n250-SIZE 35882577\r\n250-8bitmime\r\n250-AUTH login PLAIN\r\n"
        b"250-AUTH=LOGIN CRAM-MD5\r\n250-STARTTLS\r\n250-bad_keyword x\r\n250 PIPELINING\r\n"
    )
    caps = r.capabilities
    assert caps == {
        "SIZE": ["35882577"],
        "8BITMIME": [],
        "AUTH": ["LOGIN", "PLAIN", "CRAM-MD5"],
        "STARTTLS": [],
        "PIPELINING": [],
    }
    assert "starttls" in caps and caps["size"] == ["35882577"]
    assert "BAD_KEYWORD" not in caps
    assert 42 not in caps  # type: ignore[comparison-overlap]
    with pytest.raises(KeyError):
        caps[42]  # type: ignore[index]
    assert len(caps) == 5 and "Capabilities(" in repr(caps)
    assert Capabilities() == {}


def test_parser_assembles_replies_from_any_split() -> None:
    wire = b"250-first\r\n250 second\r\n354 go ahead\r\n"
    for cut in range(len(wire) + 1):
        parser = ReplyParser()
        parser.feed(wire[:cut])
        got = []
        while (r := parser.next_reply()) is not None:
            got.append(r)
        parser.feed(wire[cut:])
        while (r := parser.next_reply()) is not None:
            got.append(r)
        assert [r.code for r in got] == [250, 354], cut
        assert got[0].lines == ("first", "second")
        assert parser.buffered == 0


def test_parser_reports_buffered_octets_and_clears() -> None:
    parser = ReplyParser()
    parser.feed(b"250-a\r\n250")
    assert parser.next_reply() is None
    assert parser.buffered == len(b"250-a\r\n250")
    assert parser.peek_status() == b"250"
    parser.clear()
    assert parser.buffered == 0 and parser.peek_status() is None
    parser.feed(b"22")
    assert parser.peek_status() is None


@pytest.mark.parametrize(
    "raw",
    [
        b"hello\r\n",
        b"25 short\r\n",
        b"2x0 letters\r\n",
        b"250_ok\r\n",
        b"250-a\r\n251 b\r\n",
        b"\r\n",
    ],
)
def test_malformed_replies_are_protocol_errors(raw: bytes) -> None:
    parser = ReplyParser()
    parser.feed(raw)
    with pytest.raises(SMTPProtocolError) as info:
        parser.next_reply()
    # A remote protocol error is an SMTPError a caller already handles.
    assert isinstance(info.value, SMTPUnknownError)
    # The parser is dead: nothing after a framing error is trusted.
    with pytest.raises(SMTPProtocolError):
        parser.next_reply()
    with pytest.raises(SMTPProtocolError):
        parser.feed(b"250 ok\r\n")


def test_overlong_line_is_refused_before_its_end_arrives() -> None:
    parser = ReplyParser()
    parser.feed(b"250 " + b"x" * MAX_LINE_LENGTH)
    with pytest.raises(SMTPProtocolError, match="longer than"):
        parser.next_reply()


def test_overlong_terminated_line_is_refused() -> None:
    parser = ReplyParser()
    parser.feed(b"250 " + b"x" * MAX_LINE_LENGTH + b"\r\n")
    with pytest.raises(SMTPProtocolError, match="longer than"):
        parser.next_reply()


def test_line_at_the_limit_is_accepted() -> None:
    line = b"250 " + b"x" * (MAX_LINE_LENGTH - 6) + b"\r\n"
    assert len(line) == MAX_LINE_LENGTH
    assert Response.parse(line).code == 250


def test_endless_multiline_reply_is_refused() -> None:
    parser = ReplyParser()
    parser.feed(b"250-x\r\n" * (MAX_REPLY_LINES - 1) + b"250 end\r\n")
    assert len(parser.next_reply().lines) == MAX_REPLY_LINES  # type: ignore[union-attr]
    parser.feed(b"250-x\r\n" * MAX_REPLY_LINES)
    with pytest.raises(SMTPProtocolError, match="more than"):
        parser.next_reply()


def test_terminal_control_characters_and_bad_utf8_are_neutralised() -> None:
    r = Response.parse(b"550 \x1b[2Jgone \xff\xfe bell\x07 tab\there\r\n")
    assert "\x1b" not in r.string and "\x07" not in r.string
    assert r.message == "\ufffd[2Jgone \ufffd\ufffd bell\ufffd tab\there"


def test_utf8_text_is_kept() -> None:
    assert Response.parse("250 Grüße\r\n".encode()).message == "Grüße"


@pytest.mark.parametrize("raw", [b"250 ok", b"250 ok\r\n250 again\r\n", b""])
def test_parse_wants_exactly_one_reply(raw: bytes) -> None:
    with pytest.raises(SMTPProtocolError):
        Response.parse(raw)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=7))
def test_any_bytes_give_replies_or_a_protocol_error_never_anything_else(
    data: bytes, step: int
) -> None:
    parser = ReplyParser()
    try:
        for i in range(0, len(data), step):
            parser.feed(data[i : i + step])
            while (reply := parser.next_reply()) is not None:
                assert 0 <= reply.code <= 999
                assert len(reply.lines) <= MAX_REPLY_LINES
        assert parser.buffered <= len(data)
    except SMTPProtocolError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.just("\t")))
def test_simple_lines_parse_as_received(text: str) -> None:
    # One-line printable replies take a fast path; it must agree with the rule.
    reply = Response.parse(f"250 {text}\r\n")
    assert reply.lines == (text,)
    assert reply.string == f"250 {text}\r\n"
    assert reply.code == 250
    split = ReplyParser()
    split.feed(f"250-first\r\n250 {text}\r\n".encode())
    assert split.next_reply().lines == ("first", text)  # type: ignore[union-attr]


def test_response_equality_and_repr() -> None:
    a = Response.parse(b"250 ok\r\n")
    assert a == Response("250", ("ok",), "250 ok\r\n")
    assert a != Response.parse(b"250 other\r\n")
    assert a != "250 ok"
    assert hash(a) == hash(Response.parse(b"250 ok\n"))
    assert repr(a) == "Response('250', ('ok',))"
