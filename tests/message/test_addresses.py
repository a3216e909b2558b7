"""Header address lists and RFC 5321 mailboxes: what is accepted, what is refused, and how."""

import contextlib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pysendmail.errors import DataError
from pysendmail.message.addresses import (
    check_local_part,
    check_mailbox,
    is_dot_atom,
    mailbox_spans,
    needs_smtputf8,
    parse_address_list,
    quote_local_part,
    split_address,
)

# --------------------------------------------------------------------------- address lists


@pytest.mark.parametrize(
    ("value", "addresses"),
    [
        ("user@example.com", ["user@example.com"]),
        (" root", ["root"]),  # bsd-mailx, cron, sudo: a bare local name
        (
            "-fenv@example.com, -oi, user@example.com",
            ["-fenv@example.com", "-oi", "user@example.com"],
        ),
        ("a@example.com, B <b@example.com>", ["a@example.com", "b@example.com"]),
        ("root <root@vm>", ["root@vm"]),
        ("root (Cron Daemon)", ["root"]),
        ("(comment (nested) \\) here) a@b.example", ["a@b.example"]),
        ('"Doe, John" <john@example.com>, x@y.example', ["john@example.com", "x@y.example"]),
        ('"john doe"@example.com', ['"john doe"@example.com']),
        ('"a\\"b"@example.com', ['"a\\"b"@example.com']),
        ("undisclosed-recipients:;", []),
        (
            "Friends: a@x.example, B <b@x.example>;, c@x.example",
            ["a@x.example", "b@x.example", "c@x.example"],
        ),
        ("Open group: a@x.example", ["a@x.example"]),
        ("<@relay.example,@other.example:user@example.com>", ["user@example.com"]),
        ("john . doe @ example . com", ["john.doe@example.com"]),
        ("user@[192.0.2.1]", ["user@[192.0.2.1]"]),
        ("cc@example.com,\r\n\tTest Dev <dev@example.com>", ["cc@example.com", "dev@example.com"]),
        ("cc@example.com,\n Test Dev <dev@example.com>", ["cc@example.com", "dev@example.com"]),
        ("a@x.example,, ,b@x.example,", ["a@x.example", "b@x.example"]),
        ("", []),
        ("   ", []),
        ("J. Smith <j@x.example>", ["j@x.example"]),
        ("user@example.com <user@example.com>", ["user@example.com"]),
        ("=?UTF-8?B?w6ljb2xl?= <e@x.example>", ["e@x.example"]),
        ("Dörte <dörte@bücher.example>", ["dörte@bücher.example"]),
        ("<a@x.example>", ["a@x.example"]),
    ],
)
def test_parse_address_list_returns_the_addr_specs(value: str, addresses: list[str]) -> None:
    assert parse_address_list(value) == addresses


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("John Smith", "words separated by spaces"),
        ("a@b c@d", "is a ',' missing?"),
        ('"unterminated@example.com', "unterminated quoted string"),
        ("(unterminated a@b", "unterminated comment"),
        ("Name <a@b", "missing '>'"),
        ("a@b>", "'>' without '<'"),
        ("<>", "empty address <>"),
        ("a@b@c", "more than one '@'"),
        ("@example.com", "without a local part"),
        ("user@", "no domain after '@'"),
        ("a: b: c;", "group inside a group"),
        ("a@b; c@d", "';' outside a group"),
        ("G: a@b; c@d", "missing ',' after a group"),
        ("Name <a@b> c", "missing ','"),
        ("a@b\nc@d", "line break not followed by white space"),
        ("a@b\r c", "bare CR"),
        ("a\x00b@c", "control character '\\x00'"),
        ("Evil\x1b[31m <a@b>", "control character '\\x1b'"),
        ("(\x07) a@b", "control character '\\x07'"),
        ('"a\x7fb"@c', "control character '\\x7f'"),
        ("a@b\x85", "control character '\\x85'"),
        ("a]@b", "unexpected ']'"),
        ("<a@b, c@d>", "unexpected ','"),
        ("<@route a@b>", "malformed source route"),
        ("a@[1.2.3.4", "unterminated domain literal"),
        ("a@[1.2[3]", "'[' inside a domain literal"),
        ('a@"b"', "malformed domain"),
        ("[1.2.3.4]@b", "domain literal in a local part"),
    ],
)
def test_parse_address_list_refuses_what_is_not_an_address_list(value: str, complaint: str) -> None:
    with pytest.raises(DataError) as info:
        parse_address_list(value)
    assert complaint in str(info.value)
    # The message repeats the value through repr: no raw control character in a log line.
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)


def test_mailbox_spans_point_at_the_address_as_written() -> None:
    value = 'Name <a@x.example>, root (Cron Daemon), "q"@y.example'
    spans = mailbox_spans(value)
    assert [value[s:e] for _a, s, e in spans] == ["a@x.example", "root", '"q"@y.example']


@given(st.text(alphabet=st.sampled_from(list('ab@.,:;<>()"[]\\ \t\r\n\x00é€'))))
@example('"\\')
@example("(\\")
@example("a@[\\")
@example("<@")
@example("<@a")
@example("g:<")
def test_parse_address_list_raises_nothing_but_data_error(value: str) -> None:
    try:
        found = parse_address_list(value)
    except DataError:
        return
    assert all(isinstance(a, str) and a for a in found)


@given(st.text())
def test_parse_address_list_on_any_text_raises_nothing_but_data_error(value: str) -> None:
    with contextlib.suppress(DataError):
        assert all(parse_address_list(value))


@given(st.text())
def test_check_mailbox_on_any_text_raises_nothing_but_data_error(value: str) -> None:
    with contextlib.suppress(DataError):
        assert check_mailbox(value) == value
        assert "@" in value


# --------------------------------------------------------------------------- mailboxes

VALID = [
    "user@example.com",
    "a.b-c+tag@sub.example.co.uk",
    "!#$%&'*+-/=?^_`{|}~@example.com",
    '"john doe"@example.com',
    '"a\\"b\\\\c"@example.com',
    '"a@b"@example.com',
    "root@localhost",
    "user@[192.0.2.1]",
    "user@[IPv6:2001:db8::1]",
    "user@[IPv6:::1]",
    "user@[IPv6:2001:db8:0:0:0:0:0:1]",
    "user@[IPv6:::ffff:192.0.2.1]",
    "user@[IPv6:1:2:3:4:5:6:192.0.2.1]",
    "dörte@bücher.example",
    "用户@例子.广告",
    "-oi@example.com",
    "x@1.2.3.4",
    "a" * 64 + "@example.com",
]


@pytest.mark.parametrize("addr", VALID)
def test_check_mailbox_accepts_rfc5321_mailboxes(addr: str) -> None:
    assert check_mailbox(addr) == addr


@pytest.mark.parametrize(
    ("addr", "complaint"),
    [
        ("root", "has no domain"),
        ("", "has no domain"),
        ("@example.com", "empty local part"),
        ("user@", "no domain after '@'"),
        ("a..b@example.com", "empty label"),
        (".a@example.com", "empty label"),
        ("a.@example.com", "empty label"),
        ("a b@example.com", "' ' is not allowed in a local part"),
        ("a(b)@example.com", "'(' is not allowed"),
        ('"unterminated@example.com', "unterminated quoted local part"),
        ('"a"b@example.com', "no '@domain' after its local part"),
        ('"a\\\x01"@example.com', "control character"),
        ("user@exa mple.com", "' ' is not allowed in a domain"),
        ("user@example..com", "empty label"),
        ("user@example.com.", "empty label"),
        ("user@-example.com", "starts or ends with '-'"),
        ("user@example-.com", "starts or ends with '-'"),
        ("user@exam_ple.com", "'_' is not allowed in a domain"),
        ("user@a@b.example", "'@' is not allowed in a domain"),
        ("user@[300.1.1.1]", "neither [IPv4] nor [IPv6:...]"),
        ("user@[1.2.3]", "neither [IPv4] nor [IPv6:...]"),
        ("user@[IPv6:1:2:3:4:5:6:7:8:9]", "malformed IPv6"),
        ("user@[IPv6:1::2::3]", "malformed IPv6"),
        ("user@[IPv6:12345::1]", "malformed IPv6"),
        ("user@[IPv6:g::1]", "malformed IPv6"),
        ("user@[IPv6:1:2:3:4:5:6:7:1.2.3.4]", "malformed IPv6"),
        ("user@[foo]", "neither [IPv4] nor [IPv6:...]"),
        ("user@[1.2.3.4", "unterminated address literal"),
        ("a" * 65 + "@example.com", "longer than 64 octets"),
        ("user@" + "a" * 64 + ".com", "label is longer than 63"),
        ("user@" + ".".join(["a" * 60] * 5), "longer than 255 octets"),
        ("user@example.com\r\nRCPT TO:<evil@x>", "control character '\\r'"),
        ("us\x00er@example.com", "control character '\\x00'"),
        ("user@exa\x7fmple.com", "control character '\\x7f'"),
        ("caf\udce9@example.com", "not valid UTF-8"),
    ],
)
def test_check_mailbox_refuses_with_a_clear_reason(addr: str, complaint: str) -> None:
    with pytest.raises(DataError) as info:
        check_mailbox(addr)
    message = str(info.value)
    assert complaint in message
    assert "\r" not in message and "\n" not in message and "\x00" not in message


def test_needs_smtputf8_only_for_non_ascii() -> None:
    assert not needs_smtputf8("user@example.com")
    assert needs_smtputf8("dörte@example.com")
    assert needs_smtputf8("user@bücher.example")


def test_local_names_are_checked_and_quoted_when_they_must_be() -> None:
    assert check_local_part("www-data") == "www-data"
    assert check_local_part('"john doe"') == '"john doe"'
    with pytest.raises(DataError, match="not allowed"):
        check_local_part("john doe")
    with pytest.raises(DataError, match="unterminated"):
        check_local_part('"john')
    assert quote_local_part("www-data") == "www-data"
    assert quote_local_part("EXAMPLE\\jdoe") == '"EXAMPLE\\\\jdoe"'
    assert quote_local_part("jdoe@ad.example") == '"jdoe@ad.example"'
    assert check_mailbox(quote_local_part('we "r" odd') + "@example.com")


def test_split_address_knows_quoted_local_parts() -> None:
    assert split_address("a@b") == ("a", "b")
    assert split_address("root") == ("root", None)
    assert split_address('"a@b"@c') == ('"a@b"', "c")
    assert split_address('"a@b"') == ('"a@b"', None)


# Addresses that a generator can vouch for: dot-atoms at LDH domains, quoted local parts.
_atext = st.sampled_from(list("abcxyzABC0189!#$%&'*+-/=?^_`{|}~é"))
_atom = st.text(_atext, min_size=1, max_size=8)
_label = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?\Z")
_local = st.lists(_atom, min_size=1, max_size=3).map(".".join) | st.text(
    st.sampled_from(list('ab @"\\,;:<>')), min_size=1, max_size=10
).map(lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"')
valid_addresses = st.builds(
    lambda local, labels: local + "@" + ".".join(labels),
    _local,
    st.lists(_label, min_size=1, max_size=3),
)


@given(
    valid_addresses, st.sampled_from(["{a}", "<{a}>", "Some Name <{a}>", '"N, M" <{a}>', "{a} (c)"])
)
def test_generated_mailboxes_survive_every_header_form(addr: str, form: str) -> None:
    assert check_mailbox(addr) == addr
    assert parse_address_list(form.format(a=addr)) == [addr]


@pytest.mark.parametrize(
    ("addr", "complaint"),
    [
        ('"a\\é"@example.com', "escapes nothing printable"),
        ("user@[IPv6:1.2.3.4]", "malformed IPv6"),
        ("user@[IPv6:1:2:3:4:5:6:7::8]", "malformed IPv6"),
        ("user@[IPv6:1:2:3:4:5:6:7]", "malformed IPv6"),
        ("user@[IPv6:::1.2.3]", "malformed IPv6"),
        ("user@[IPv6:::é]", "malformed IPv6"),
        ("user@[]", "unterminated address literal"),
    ],
)
def test_check_mailbox_refuses_odd_literals_and_quotes(addr: str, complaint: str) -> None:
    with pytest.raises(DataError, match=complaint):
        check_mailbox(addr)


def test_local_names_have_limits_too() -> None:
    with pytest.raises(DataError, match="it is empty"):
        check_local_part("")
    with pytest.raises(DataError, match="longer than 64 octets"):
        check_local_part("é" * 33)
    assert not is_dot_atom("") and not is_dot_atom("a..b") and not is_dot_atom("a b")
    assert is_dot_atom("mail.example.com")
