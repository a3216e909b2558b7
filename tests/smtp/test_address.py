"""Envelope addresses: the exact text of MAIL/RCPT arguments, injection refused, xtext both ways."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pysendmail.smtp.address import (
    DSN_PARAMETERS,
    Address,
    check_argument,
    coerce,
    format_parameter,
    xtext_decode,
    xtext_encode,
)

CONTROLS = [chr(c) for c in range(0x20)] + ["\x7f"]


@pytest.mark.parametrize(
    ("addr", "text"),
    [
        (Address("a@b"), "<a@b>"),
        (Address(""), "<>"),
        (Address("a@b", "SMTPUTF8", notify="SUCCESS"), "<a@b> SMTPUTF8 NOTIFY=SUCCESS"),
        (
            Address(
                "a@b", "SMTPUTF8", "BODY=8BITMIME", notify="SUCCESS,FAILURE", orcpt="rfc822;a@b"
            ),
            "<a@b> SMTPUTF8 BODY=8BITMIME NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@b",
        ),
        (
            Address("", "size=1024", ret="hdrs", envid="QQ314159"),
            "<> SIZE=1024 RET=hdrs ENVID=QQ314159",
        ),
        (Address("a@b", mt_priority="3", smtputf8=None), "<a@b> MT-PRIORITY=3 SMTPUTF8"),
        (Address("a@b", envid="id with spaces=1+1"), "<a@b> ENVID=id+20with+20spaces+3D1+2B1"),
        (Address("dörte@b"), "<dörte@b>"),
    ],
)
def test_str_is_the_exact_command_argument(addr: Address, text: str) -> None:
    assert str(addr) == text


def test_parameter_keywords_are_case_insensitive_and_later_ones_win() -> None:
    addr = Address("a@b", "notify=NEVER", "Body=7BIT", NOTIFY="DELAY")
    assert addr.parameters == {"NOTIFY": "DELAY", "BODY": "7BIT"}
    assert str(addr) == "<a@b> NOTIFY=DELAY BODY=7BIT"


@pytest.mark.parametrize("char", CONTROLS)
def test_every_control_character_is_refused_everywhere(char: str) -> None:
    with pytest.raises(ValueError, match="control character"):
        Address(f"a{char}@b")
    with pytest.raises(ValueError, match="control character"):
        Address("a@b", f"X{char}Y")
    with pytest.raises(ValueError, match="control character"):
        Address("a@b", f"X=1{char}")
    with pytest.raises(ValueError, match="control character"):
        Address("a@b", envid=f"id{char}")
    with pytest.raises(ValueError, match="control character"):
        Address("a@b", orcpt=f"rfc822;x{char}@y")
    with pytest.raises(ValueError, match="control character"):
        check_argument(f"mail.example.com{char}", "HELO name")


def test_check_argument_names_the_argument_and_passes_clean_values() -> None:
    assert check_argument("mail.example.com", "HELO name") == "mail.example.com"
    with pytest.raises(
        ValueError, match=r"^HELO name contains a control character: 'x\\r\\nQUIT'$"
    ):
        check_argument("x\r\nQUIT", "HELO name")
    with pytest.raises(TypeError, match="HELO name must be str"):
        check_argument(b"x", "HELO name")  # type: ignore[arg-type]


@pytest.mark.parametrize("mailbox", ["<a@b>", "a@b>", "a b@c", "a@b\u00a0", "a@b\u2003"])
def test_angle_brackets_and_white_space_in_a_mailbox_are_refused(mailbox: str) -> None:
    with pytest.raises(ValueError, match="white space"):
        Address(mailbox)


@pytest.mark.parametrize("param", ["", "=1", "-X", "X_Y", "É", "X Y", "X.Y"])
def test_bad_keywords_are_refused(param: str) -> None:
    with pytest.raises(ValueError, match="keyword"):
        Address("a@b", param)


@pytest.mark.parametrize("param", ["BODY=", "X=a=b", "X=é", "X=a b", "SIZE= 1"])
def test_bad_values_are_refused(param: str) -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        Address("a@b", param)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ret": "ALL"}, "RET must be FULL or HDRS"),
        ({"notify": "NEVER,SUCCESS"}, "NOTIFY must be"),
        ({"notify": "SUCCES"}, "NOTIFY must be"),
        ({"envid": ""}, "empty value"),
        ({"orcpt": ""}, "empty value"),
        ({"orcpt": "rfc 822;a@b"}, "not an atom"),
        ({"orcpt": "rfc822;"}, "no address"),
    ],
)
def test_bad_dsn_values_are_refused_before_sending(kwargs: dict[str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Address("a@b", **kwargs)


def test_non_str_keyword_value_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="SIZE must be str or None"):
        Address("a@b", SIZE=10)  # type: ignore[arg-type]


def test_orcpt_formatting() -> None:
    # The addr-type is kept, only the address after ";" is xtext-encoded.
    assert format_parameter("ORCPT", "rfc822;a+b=c@d") == "ORCPT=rfc822;a+2Bb+3Dc@d"
    assert format_parameter("orcpt", "utf-8;x@y") == "ORCPT=utf-8;x@y"
    # Without an addr-type the value is an RFC 822 address.
    assert format_parameter("ORCPT", "bob@example.com") == "ORCPT=rfc822;bob@example.com"
    assert format_parameter("ORCPT", "dörte@b") == "ORCPT=rfc822;d+C3+B6rte@b"
    assert str(Address("x@y", orcpt="Bob Smith@example.com")) == (
        "<x@y> ORCPT=rfc822;Bob+20Smith@example.com"
    )


def test_format_parameter_plain_keys() -> None:
    assert format_parameter("smtputf8", None) == "SMTPUTF8"
    assert format_parameter("BODY", "8BITMIME") == "BODY=8BITMIME"
    assert format_parameter("ENVID", "a+b") == "ENVID=a+2Bb"


def test_needs_smtputf8() -> None:
    assert not Address("ascii@example.com").needs_smtputf8()
    assert Address("用户@例子.广告").needs_smtputf8()
    assert not Address("").needs_smtputf8()


def test_with_parameters_copies_and_overrides() -> None:
    base = Address("a@b", "NOTIFY=NEVER", "BODY=8BITMIME")
    more = base.with_parameters("SMTPUTF8", notify="SUCCESS")
    assert str(more) == "<a@b> NOTIFY=SUCCESS BODY=8BITMIME SMTPUTF8"
    assert str(base) == "<a@b> NOTIFY=NEVER BODY=8BITMIME"
    with pytest.raises(ValueError, match="control character"):
        base.with_parameters(envid="x\n")


def test_equality_hash_and_repr() -> None:
    a = Address("a@b", "SMTPUTF8", notify="SUCCESS")
    b = Address("a@b", notify="SUCCESS", smtputf8=None)
    assert a == b
    assert hash(a) == hash(b)
    assert a != Address("a@b")
    assert a != Address("A@b", "SMTPUTF8", notify="SUCCESS")
    assert a != "a@b"
    assert len({a, b, Address("a@b")}) == 2
    assert repr(a) == "Address('a@b', 'SMTPUTF8', 'NOTIFY=SUCCESS')"
    c = Address("a@b", orcpt="rfc822;x=y@z", envid="e v")
    # The repr is Python that rebuilds the same address.
    assert eval(repr(c)) == c


def test_coerce() -> None:
    addr = Address("a@b", "SMTPUTF8")
    assert coerce(addr) is addr
    assert coerce("c@d") == Address("c@d")
    with pytest.raises(ValueError, match="control character"):
        coerce("c@d\r\nRCPT TO:<evil@x>")
    with pytest.raises(TypeError, match="str or Address"):
        coerce(b"c@d")  # type: ignore[arg-type]


def test_dsn_parameters() -> None:
    assert frozenset({"NOTIFY", "RET", "ENVID", "ORCPT"}) == DSN_PARAMETERS


# --------------------------------------------------------------------------- xtext


@pytest.mark.parametrize(
    ("text", "xtext"),
    [
        # RFC 3461 section 4: "+" and "=" are always encoded, as are octets outside "!".."~".
        ("+", "+2B"),
        ("=", "+3D"),
        (" ", "+20"),
        ("Bob@Example.COM", "Bob@Example.COM"),
        ("a+b=c d", "a+2Bb+3Dc+20d"),
        ("é", "+C3+A9"),
        ("~!", "~!"),
        ("", ""),
    ],
)
def test_xtext_known_vectors(text: str, xtext: str) -> None:
    assert xtext_encode(text) == xtext
    assert xtext_decode(xtext) == text


@given(st.text())
def test_xtext_round_trip(text: str) -> None:
    encoded = xtext_encode(text)
    assert all(0x21 <= ord(c) <= 0x7E and c != "=" for c in encoded)
    assert xtext_decode(encoded) == text


def test_xtext_decode_accepts_needlessly_encoded_characters() -> None:
    assert xtext_decode("+41b+43") == "AbC"


@pytest.mark.parametrize("bad", ["+2b", "+2", "+", "a=b", "a b", "é", "+FF", "x\n", "+G0"])
def test_xtext_decode_refuses_malformed_input(bad: str) -> None:
    with pytest.raises(ValueError, match="xtext"):
        xtext_decode(bad)
