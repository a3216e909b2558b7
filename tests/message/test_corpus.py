"""Every message real clients piped into sendmail (../shared/compat/corpus) goes through the intake.

For each case: the envelope its client meant (sender, recipients after -t and
qualification of bare names with the domain ``example.com``), Bcc gone, the
added headers present, every header line the client wrote kept verbatim and
in order, and the body intact apart from CRLF line endings.
"""

import json
import pwd
import re
from pathlib import Path
from typing import Any

import pytest

from .helpers import crlf, run

CORPUS = Path("/work/shared/compat/corpus")
if not CORPUS.is_dir():  # the tree may also sit next to a checkout
    CORPUS = Path(__file__).resolve().parents[3] / "shared" / "compat" / "corpus"

# What each client meant: (envelope sender, recipients in order).
EXPECTED: dict[str, tuple[str, list[str]]] = {
    "001": ("root@example.com", ["user@example.com"]),
    "002": ("root@example.com", ["user@example.com"]),
    "003": ("root@example.com", ["user@example.com"]),
    "004": ("webmaster@example.com", ["user@example.com"]),
    "005": ("sender@example.com", ["user@example.com"]),
    "006": (
        "s@example.com",
        ["a@example.com", "b@example.com", "c@example.com", "hidden@example.com"],
    ),
    "007": ("root@example.com", ["user@example.com"]),
    "008": ("forced@example.com", ["user@example.com"]),
    "009": ("root@example.com", ["root@example.com"]),
    "010": ("root@example.com", ["user@example.com"]),
    "011": ("sender@example.com", ["user@example.com"]),
    "012": (
        "root@example.com",
        ["a@example.com", "b@example.com", "cc@example.com", "bcc@example.com"],
    ),
    # bsd-mailx put the words after "--" into To: they are addresses like any other.
    "013": ("root@example.com", ["-fenv@example.com", "-oi@example.com", "user@example.com"]),
    "014": ("root@example.com", ["root@example.com"]),
    "015": ("root@example.com", ["user@example.com"]),
    "016": ("sender@example.com", ["user@example.com"]),
    "017": (
        "root@example.com",
        ["a@example.com", "b@example.com", "cc@example.com", "bcc@example.com"],
    ),
    "018": ("x@example.com", ["user@example.com"]),
    "019": ("root@example.com", ["user@example.com"]),
    "020": ("root@example.com", ["user@example.com"]),
    "021": ("root@example.com", ["root@example.com"]),
    "022": ("nobody@example.com", ["nobody@example.com"]),
    "023": ("root@example.com", ["mailto-test@example.com"]),
    "024": ("root@example.com", ["user@example.com"]),
    # mutt qualifies with the short host name: root@vm is this machine.
    "025": ("root@example.com", ["root@example.com"]),
    "026": ("root@example.com", ["user@example.com", "cc@example.com", "bcc@example.com"]),
    "027": ("sender@example.com", ["user@example.com"]),
    "028": (
        "root@example.com",
        ["user@example.com", "cc@example.com", "dev@example.com", "bcc@example.com"],
    ),
    "029": ("env@example.com", ["user@example.com", "dev@example.com"]),
    "030": ("root@example.com", ["root@example.com"]),
}

CASES = sorted(p for p in CORPUS.iterdir() if p.is_dir())


def test_the_table_covers_the_whole_corpus() -> None:
    assert sorted(p.name[:3] for p in CASES) == sorted(EXPECTED)


def sendmail_argv(argv: list[str]) -> dict[str, Any]:
    """Just enough of sendmail's flag parsing for the corpus (the CLI owns the real one)."""
    opts: dict[str, Any] = {"recipients": []}
    valued = {"-f": "sender", "-r": "sender", "-F": "full_name", "-B": "body_type"}
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            opts["recipients"] += argv[i + 1 :]
            break
        if word == "-t":
            opts["extract_recipients"] = True
        elif word in ("-i", "-oi"):
            opts["dot_ends_input"] = False
        elif word[:2] in valued:
            value = word[2:]
            if not value:
                i += 1
                value = argv[i]
            opts[valued[word[:2]]] = value
        elif word.startswith("-o"):
            pass  # -oem and friends: accepted, no effect
        elif word.startswith("-"):
            raise AssertionError(f"corpus flag {word} unknown to this test")
        else:
            opts["recipients"].append(word)
        i += 1
    return opts


def header_fields(head: bytes) -> list[tuple[bytes, list[bytes]]]:
    """(lower-case name, lines) of each field of an LF header block, by regular expressions."""
    fields: list[tuple[bytes, list[bytes]]] = []
    for line in head.split(b"\n"):
        if re.match(rb"[ \t]", line):
            fields[-1][1].append(line)
        else:
            name = re.match(rb"([!-9;-~]+)[ \t]*:", line)
            assert name, line
            fields.append((name.group(1).lower(), [line]))
    return fields


@pytest.mark.parametrize("case", CASES, ids=[p.name for p in CASES])
def test_corpus_case(case: Path) -> None:
    meta = json.loads((case / "case.json").read_text())
    data = (case / "stdin.eml").read_bytes()
    opts = sendmail_argv(meta["argv"])
    uid = pwd.getpwnam(meta["invoking_user"]).pw_uid
    result = run(data, uid=uid, **opts)
    env = result.envelope

    sender, recipients = EXPECTED[case.name[:3]]
    assert env.sender == sender
    assert result.recipients == recipients
    assert env.submitter_uid == uid
    assert env.submitter_login == meta["invoking_user"]
    assert not env.smtputf8
    if opts.get("body_type"):
        assert env.body_type == "8BITMIME"
    # eightbit is exactly "the message has a byte >= 0x80".
    assert env.eightbit == any(b >= 0x80 for b in data)

    # The client's header lines, LF-normalised, split independently of the intake.
    text = re.sub(rb"\r\n|\r", b"\n", data)
    head, sep, body = text.partition(b"\n\n")
    assert sep
    fields = header_fields(head)
    kept = [line for name, lines in fields if name != b"bcc" for line in lines]
    names = {name for name, _lines in fields}

    lines = result.header_lines
    assert lines[0] == f"Received: by vm.example.com (pysendmail, from userid {uid})".encode()
    assert lines[1].startswith(b"\tid TESTQUEUEID0001; ")
    # Every line the client wrote, verbatim and in order, right after Received.
    assert lines[2 : 2 + len(kept)] == kept
    added = lines[2 + len(kept) :]
    assert not any(line.lower().startswith(b"bcc:") for line in lines)

    expected_added = []
    if b"message-id" not in names:
        expected_added.append(b"Message-ID: <20261129200249.TESTQUEUEID0001@vm.example.com>")
    if b"date" not in names:
        expected_added.append(result.field("Date"))
        assert re.fullmatch(
            rb"Date: Sun, 29 Nov 2026 \d\d:\d\d:49 [+-]\d{4}", result.field("Date") or b""
        )
    if b"from" not in names:
        gecos = pwd.getpwuid(uid).pw_gecos.split(",")[0]
        expected_added.append(f"From: {gecos} <{sender}>".encode())
    assert added == expected_added

    # The body: CRLF line endings, not one byte more or less.
    assert result.body == crlf(body)
