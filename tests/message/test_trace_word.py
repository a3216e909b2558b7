"""trace_word: what a client names itself becomes a safe word of a Received field."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pysendmail.message.intake import trace_word


def reference(text: str, limit: int, extra: str) -> str:
    allowed = ".-_:[]" + extra
    kept = "".join(c for c in text[:limit] if c.isascii() and (c.isalnum() or c in allowed))
    return kept.strip() or "unknown"


@given(
    text=st.text(alphabet=st.sampled_from("aZ09.-_:[] ;()\r\n\t\x00é\udc80"), max_size=40)
    | st.text(max_size=40),
    limit=st.sampled_from([255, 5]),
    extra=st.sampled_from(["", " "]),
)
def test_only_letters_digits_and_a_few_marks_are_kept(text: str, limit: int, extra: str) -> None:
    assert trace_word(text, limit, extra) == reference(text, limit, extra)


@pytest.mark.parametrize(
    ("text", "extra", "expected"),
    [
        ("mail.example.com", "", "mail.example.com"),
        ("[192.0.2.1]", "", "[192.0.2.1]"),
        ("evil\r\nReceived: forged", "", "evilReceived:forged"),
        ("x (y); z", "", "xyz"),
        ("unknown [192.0.2.1]", " ", "unknown [192.0.2.1]"),
        ("   ", " ", "unknown"),
        ("", "", "unknown"),
    ],
)
def test_examples(text: str, extra: str, expected: str) -> None:
    assert trace_word(text, extra=extra) == expected
