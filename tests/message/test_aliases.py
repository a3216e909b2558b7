"""The aliases file: syntax, nesting, loops, refused targets, errors by line, compiled form."""

import marshal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pysendmail.errors import DataError, IOFailure
from pysendmail.message.aliases import Aliases

SAMPLE = """\
# /etc/aliases
postmaster: root
root:   admin@example.com, ops
ops:    alice@example.com,
        bob@example.com   ,
\t# a comment inside a continuation does not end it
        carol@example.com
"Mail Admins": admin@example.com
MixedCase: someone@example.com
www-data: root
"""


def test_nested_aliases_expand_in_order() -> None:
    aliases = Aliases.parse(SAMPLE, "/etc/aliases")
    assert aliases.errors == []
    assert len(aliases) == 6
    assert aliases.expand("postmaster") == [
        "admin@example.com",
        "alice@example.com",
        "bob@example.com",
        "carol@example.com",
    ]
    assert aliases.expand("ops") == ["alice@example.com", "bob@example.com", "carol@example.com"]


def test_names_are_case_insensitive_and_may_be_quoted() -> None:
    aliases = Aliases.parse(SAMPLE, "/etc/aliases")
    assert aliases.expand("ROOT") == aliases.expand("root")
    assert aliases.expand("mixedcase") == ["someone@example.com"]
    assert aliases.expand("mail admins") == ["admin@example.com"]
    assert "Postmaster" in aliases
    assert "nobody" not in aliases


def test_a_name_that_is_no_alias_expands_to_itself() -> None:
    aliases = Aliases.parse(SAMPLE, "/etc/aliases")
    assert aliases.expand("nobody") == ["nobody"]


def test_an_alias_that_reaches_itself_ends_at_the_name_itself() -> None:
    aliases = Aliases.parse(
        "root: root, admin@example.com\na: b\nb: c, x@example.com\nc: a\n", "aliases"
    )
    assert aliases.errors == []
    # sendmail's idiom: keep a local copy and forward one.
    assert aliases.expand("root") == ["root", "admin@example.com"]
    assert aliases.expand("a") == ["a", "x@example.com"]
    assert aliases.expand("b") == ["b", "x@example.com"]


def test_results_are_deduplicated_first_occurrence_kept() -> None:
    aliases = Aliases.parse(
        "all: a, b, A@Example.com\na: x@example.com, shared@example.com\n"
        "b: shared@EXAMPLE.com, y@example.com, a\n",
        "aliases",
    )
    assert aliases.expand("all") == [
        "x@example.com",
        "shared@example.com",
        "y@example.com",
        "A@Example.com",
    ]


def test_a_hostile_file_expands_in_linear_time() -> None:
    # Every level lists the next one twice: a naive expansion does 2**60 steps.
    lines = [f"n{i}: n{i + 1}, n{i + 1}, x{i}@example.com" for i in range(60)]
    lines.append("n60: end@example.com")
    # And a chain far deeper than Python's recursion limit.
    lines += [f"d{i}: d{i + 1}" for i in range(5000)]
    aliases = Aliases.parse("\n".join(lines), "aliases")
    assert aliases.errors == []
    result = aliases.expand("n0")
    assert len(result) == 61 and result[-1] == "x0@example.com"
    assert aliases.expand("d0") == ["d5000"]


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("root: |/usr/bin/procmail", "pipes mail into a command"),
        ('root: "|/usr/bin/procmail -f-"', "pipes mail into a command"),
        ("root: /var/mail/root", "writes mail into a file"),
        ('root: "/var/mail/root"', "writes mail into a file"),
        ("root: :include:/etc/mail/staff", "includes another file (:include:)"),
        ("root: :INCLUDE:/etc/mail/staff", "includes another file (:include:)"),
        ("root admin@example.com", "no ':' after the alias name"),
        ("ro ot: admin@example.com", "has a space"),
        (": admin@example.com", "empty alias name"),
        ("root@example.com: admin@example.com", "is an address"),
        ("root:", "has no target"),
        ("root: ,,", "has no target"),
        ('"root: admin@example.com', "unterminated quoted alias name"),
        ('"root" admin@example.com', "no ':' after the alias name"),
        ("root: admin@exam ple.com", "malformed domain"),
        ("root: a..b@example.com", "empty label"),
        ("root: john doe", "is not an address"),
        ("root: admin@example.com\x1b[2J", "control character '\\x1b'"),
        ("root: caf\udce9@example.com", "not valid UTF-8"),
        ("caf\udce9: a@example.com", "not valid UTF-8"),
    ],
)
def test_bad_lines_are_reported_by_file_and_line(line: str, complaint: str) -> None:
    aliases = Aliases.parse(f"# header\n\nok: ok@example.com\n{line}\n", "/etc/aliases")
    assert len(aliases.errors) == 1, aliases.errors
    assert aliases.errors[0].startswith("/etc/aliases:4: ")
    assert complaint in aliases.errors[0]
    assert "\x1b" not in aliases.errors[0]
    # The rest of the file still works.
    assert aliases.expand("ok") == ["ok@example.com"]


def test_a_refused_target_leaves_the_good_ones_working() -> None:
    aliases = Aliases.parse("root: |/bin/evil, admin@example.com\n", "aliases")
    assert len(aliases.errors) == 1
    assert "pysendmail only relays mail" in aliases.errors[0]
    assert aliases.expand("root") == ["admin@example.com"]


def test_an_alias_with_only_refused_targets_is_no_alias() -> None:
    aliases = Aliases.parse("root: /var/mail/root\n", "aliases")
    assert "root" not in aliases
    assert aliases.expand("root") == ["root"]


def test_duplicates_are_reported_and_the_first_wins() -> None:
    aliases = Aliases.parse("root: a@example.com\nx: y@example.com\nROOT: b@example.com\n", "f")
    assert aliases.errors == [
        "f:3: alias 'ROOT' is defined again (first on line 1); the first definition is used"
    ]
    assert aliases.expand("root") == ["a@example.com"]


def test_a_continuation_without_an_alias_is_an_error() -> None:
    aliases = Aliases.parse("  a@example.com\nroot: b@example.com\n", "f")
    assert aliases.errors == ["f:1: continuation line with no alias before it"]
    assert aliases.expand("root") == ["b@example.com"]


def test_crlf_files_and_display_names_in_targets() -> None:
    aliases = Aliases.parse(
        'root: Admin <admin@example.com>, "Ops, Team" <ops@example.com>\r\n', "f"
    )
    assert aliases.errors == []
    assert aliases.expand("root") == ["admin@example.com", "ops@example.com"]


def test_load_reads_a_file_and_a_missing_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "aliases"
    path.write_bytes(b"root: admin@example.com\n# caf\xe9 in a comment is harmless\n")
    aliases = Aliases.load(str(path))
    assert aliases.errors == []
    assert aliases.expand("root") == ["admin@example.com"]
    missing = Aliases.load(str(tmp_path / "nope"))
    assert len(missing) == 0 and missing.errors == []
    assert missing.expand("root") == ["root"]


def test_load_reports_bad_utf8_in_a_target_by_line(tmp_path: Path) -> None:
    path = tmp_path / "aliases"
    path.write_bytes(b"root: caf\xe9@example.com\n")
    aliases = Aliases.load(str(path))
    assert len(aliases.errors) == 1
    assert aliases.errors[0].startswith(f"{path}:1: ")
    assert "not valid UTF-8" in aliases.errors[0]


def test_load_of_an_unreadable_path_is_an_io_failure(tmp_path: Path) -> None:
    with pytest.raises(IOFailure, match="cannot read the aliases file"):
        Aliases.load(str(tmp_path))  # a directory


def test_compiled_form_round_trips() -> None:
    aliases = Aliases.parse(SAMPLE + "bad line\n", "/etc/aliases")
    assert aliases.errors
    again = Aliases.from_bytes(aliases.to_bytes())
    assert again == aliases
    assert again.expand("postmaster") == aliases.expand("postmaster")
    assert again.errors == aliases.errors


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        marshal.dumps(("pysendmail-aliases", 2, "f", [], [])),
        marshal.dumps(("other", 1, "f", [], [])),
        marshal.dumps(("pysendmail-aliases", 1, "f", [("root", [])], [])),
        marshal.dumps(("pysendmail-aliases", 1, "f", [("root", [1])], [])),
        marshal.dumps(("pysendmail-aliases", 1, "f", [("root", ["a\nb"])], [])),
        marshal.dumps(("pysendmail-aliases", 1, "f", [("root",)], [])),
        marshal.dumps(("pysendmail-aliases", 1, "f", [], [3])),
        marshal.dumps(["pysendmail-aliases", 1, "f", [], []]),
        marshal.dumps(("pysendmail-aliases", 1, "f", [], []))[:-3],
    ],
)
def test_corrupt_compiled_forms_are_refused(data: bytes) -> None:
    with pytest.raises(DataError, match="compiled aliases"):
        Aliases.from_bytes(data)


@given(st.text(alphabet=st.sampled_from(list('ab:,|/" \t\n#@<>()\\\x00é'))))
def test_parse_never_raises_and_every_error_names_a_line(text: str) -> None:
    aliases = Aliases.parse(text, "f")
    for error in aliases.errors:
        assert error.startswith("f:")
        assert "\n" not in error and "\x00" not in error
    for name in list(aliases._map):
        for target in aliases.expand(name):
            assert target and "\n" not in target


def test_quotes_and_comments_in_targets_do_not_split_them() -> None:
    aliases = Aliases.parse(
        'root: "a,\\"b"@example.com, x@example.com (ops, night shift), nobody:;\n'
        '"na\\"me": z@example.com\n',
        "f",
    )
    assert aliases.errors == ["f:1: alias 'root': 'nobody:;' is not one address"]
    assert aliases.expand("root") == ['"a,\\"b"@example.com', "x@example.com"]
    assert aliases.targets('na"me') == ["z@example.com"]
    assert aliases.targets("nobody") is None
    assert "2 names" in repr(aliases)
    assert aliases != "aliases"


def test_an_oversized_aliases_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "aliases"
    with open(path, "wb") as f:
        f.truncate(16 * 1024 * 1024 + 1)
    with pytest.raises(DataError, match="larger than 16777216 octets"):
        Aliases.load(str(path))
