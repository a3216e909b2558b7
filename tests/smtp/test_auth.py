"""AUTH mechanisms: the exact bytes of each exchange, the choice, the secret kept hidden."""

from __future__ import annotations

import copy
import pickle

import pytest

from pysendmail.smtp.auth import (
    AUTO_ORDER,
    MECHANISMS,
    CramMD5,
    Login,
    Mechanism,
    Plain,
    XOAuth2,
    canonical_name,
    mechanism,
    select,
)

SECRET = "s3cr3t-Pa55"


def test_registry() -> None:
    assert set(MECHANISMS) == {"PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2"}
    assert all(cls.name == name for name, cls in MECHANISMS.items())
    assert AUTO_ORDER == ("CRAM-MD5", "PLAIN", "LOGIN")


def test_plain() -> None:
    mech = mechanism("plain", "tim", "tanstaaf")
    assert isinstance(mech, Plain)
    assert mech.initial_response() == b"\0tim\0tanstaaf"


def test_plain_without_initial_response_answers_the_empty_challenge_once() -> None:
    mech = Plain("tim", "tanstaaf")
    assert mech.respond(b"") == b"\0tim\0tanstaaf"
    with pytest.raises(ValueError, match="more PLAIN challenges"):
        mech.respond(b"")


def test_plain_refuses_a_non_empty_challenge() -> None:
    with pytest.raises(ValueError, match="PLAIN"):
        Plain("tim", "x").respond(b"what?")


def test_plain_utf8_credentials() -> None:
    assert Plain("jürgen", "pässwörd").initial_response() == (
        b"\0j\xc3\xbcrgen\0p\xc3\xa4ssw\xc3\xb6rd"
    )


def test_plain_refuses_a_nul_in_the_secret_without_showing_it() -> None:
    with pytest.raises(ValueError, match="NUL") as info:
        Plain("tim", "ab\0" + SECRET)
    assert SECRET not in str(info.value)


def test_login_follows_the_prompts() -> None:
    mech = mechanism("LOGIN", "tim", "tanstaaf")
    assert isinstance(mech, Login)
    assert mech.initial_response() is None
    assert mech.respond(b"Username:") == b"tim"
    assert mech.respond(b"Password:") == b"tanstaaf"
    with pytest.raises(ValueError, match="more LOGIN challenges"):
        mech.respond(b"Password:")


def test_login_prompts_are_case_insensitive_and_may_come_in_any_order() -> None:
    mech = Login("tim", "tanstaaf")
    assert mech.respond(b"PASSWORD:") == b"tanstaaf"
    assert mech.respond(b"username:") == b"tim"


def test_login_falls_back_to_the_order_for_unknown_prompts() -> None:
    mech = Login("tim", "tanstaaf")
    assert mech.respond(b"") == b"tim"
    assert mech.respond(b"\xff\xfe garbage") == b"tanstaaf"


def test_cram_md5_rfc2195_example() -> None:
    mech = mechanism("cram-md5", "tim", "tanstaaftanstaaf")
    assert isinstance(mech, CramMD5)
    assert mech.initial_response() is None
    assert mech.respond(b"<1896.697170952@postoffice.reston.mci.net>") == (
        b"tim b913a602c7eda7a495b4e6e7334d3890"
    )
    with pytest.raises(ValueError, match="more CRAM-MD5 challenges"):
        mech.respond(b"<again@x>")


def test_xoauth2() -> None:
    token = "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"
    mech = mechanism("xoauth2", "someuser@example.com", token)
    assert isinstance(mech, XOAuth2)
    assert mech.initial_response() == (
        b"user=someuser@example.com\x01auth=Bearer " + token.encode() + b"\x01\x01"
    )
    # A refused token: the server sends a JSON error as a challenge; the answer is empty.
    error = b'{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}'
    assert mech.respond(error) == b""
    with pytest.raises(ValueError, match="more XOAUTH2 challenges"):
        mech.respond(error)


def test_xoauth2_without_initial_response_sends_it_on_the_empty_challenge() -> None:
    mech = XOAuth2("u@example.com", "tok")
    assert mech.respond(b"") == b"user=u@example.com\x01auth=Bearer tok\x01\x01"
    assert mech.respond(b'{"status":"400"}') == b""
    with pytest.raises(ValueError, match="more XOAUTH2 challenges"):
        mech.respond(b"")


def test_xoauth2_refuses_a_token_that_would_forge_the_framing() -> None:
    with pytest.raises(ValueError, match="control character") as info:
        XOAuth2("u@example.com", SECRET + "\x01auth=x")
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("name", sorted(MECHANISMS))
@pytest.mark.parametrize("char", [chr(c) for c in range(0x20)] + ["\x7f"])
def test_control_characters_in_the_user_are_refused(name: str, char: str) -> None:
    with pytest.raises(ValueError, match="AUTH user contains a control character"):
        mechanism(name, f"tim{char}", "x")


@pytest.mark.parametrize("name", sorted(MECHANISMS))
def test_empty_user_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="AUTH user is empty"):
        mechanism(name, "", "x")


def test_secret_must_be_str() -> None:
    with pytest.raises(TypeError, match="AUTH secret must be str"):
        Plain("tim", b"x")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(MECHANISMS))
def test_the_secret_never_shows(name: str) -> None:
    mech = mechanism(name, "tim", SECRET)
    assert SECRET not in repr(mech)
    assert SECRET not in str(mech)
    assert repr(mech) == f"<{type(mech).__name__} {name} user='tim'>"
    with pytest.raises(TypeError, match="holds a secret"):
        pickle.dumps(mech)
    with pytest.raises(TypeError, match="holds a secret"):
        copy.copy(mech)


def test_base_class_has_no_steps() -> None:
    mech = Mechanism("tim", "x")
    assert mech.initial_response() is None
    with pytest.raises(ValueError, match="unexpected"):
        mech.respond(b"")


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("plain", "PLAIN"),
        ("Login", "LOGIN"),
        ("cram_md5", "CRAM-MD5"),
        ("cram-md5", "CRAM-MD5"),
        ("xoauth2", "XOAUTH2"),
    ],
)
def test_canonical_name(given: str, canonical: str) -> None:
    assert canonical_name(given) == canonical


@pytest.mark.parametrize("name", ["digest-md5", "", "GSSAPI", "PLAIN\r\n", " PLAIN"])
def test_unknown_mechanism_names(name: str) -> None:
    with pytest.raises(ValueError, match="unknown AUTH mechanism"):
        canonical_name(name)
    with pytest.raises(ValueError, match="unknown AUTH mechanism"):
        mechanism(name, "tim", "x")


@pytest.mark.parametrize(
    ("offered", "requested", "chosen"),
    [
        (["LOGIN", "PLAIN", "CRAM-MD5"], None, "CRAM-MD5"),
        (["login", "plain"], None, "PLAIN"),
        (["LOGIN", "XOAUTH2"], None, "LOGIN"),
        (["XOAUTH2", "GSSAPI"], None, None),
        ([], None, None),
        (["PLAIN", "XOAUTH2"], "xoauth2", "XOAUTH2"),
        (["PLAIN", "CRAM-MD5"], "plain", "PLAIN"),
        (["plain"], "PLAIN", "PLAIN"),
        (["PLAIN"], "cram_md5", None),
        (["PLAIN", "LOGIN"], "login", "LOGIN"),
    ],
)
def test_select(offered: list[str], requested: str | None, chosen: str | None) -> None:
    assert select(offered, requested) == chosen


def test_select_takes_any_iterable_and_refuses_unknown_requests() -> None:
    assert select(iter(["LOGIN"]), None) == "LOGIN"
    with pytest.raises(ValueError, match="unknown AUTH mechanism"):
        select(["NTLM"], "ntlm")
