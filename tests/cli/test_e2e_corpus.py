"""Every corpus case, end to end: the installed ``sendmail`` relays it through STARTTLS + AUTH.

For each case in ../shared/compat/corpus the real command runs with the exact
argv and stdin bytes its client used, in direct mode, against one recording
relay on 127.0.0.1. What the relay receives is what the client meant:

* MAIL FROM is the -f value, else the invoking user's login at the domain (the
  tests run as the current user, whatever the case's ``invoking_user`` was);
* the RCPT set is the argv recipients plus, with -t, the header recipients;
  bare names and names at this host (mutt's ``root@vm``) are local: they go
  through the aliases file (root and nobody go to admin@example.com) and are
  qualified with the domain;
* Bcc is gone, Date / Message-ID / From are added when missing and never
  doubled, every other header line the client wrote arrives verbatim and in
  order, and the body arrives byte for byte apart from CRLF line endings;
* the password went only inside TLS, and never appears on stdout or stderr.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.cli.conftest import (
    CORPUS,
    LOGIN,
    RELAY_USER,
    Mta,
    crlf,
    header_names,
    secret_forms,
    split_message,
)
from tests.support.smtpd import RecordingServer

ME = f"{LOGIN}@example.com"
ADMIN = "admin@example.com"

# What each client meant: the envelope sender (None: the invoking user's
# address) and the recipients. root and nobody are aliased to the admin.
EXPECTED: dict[str, tuple[str | None, set[str]]] = {
    "001": (None, {"user@example.com"}),
    "002": (None, {"user@example.com"}),
    "003": (None, {"user@example.com"}),
    "004": ("webmaster@example.com", {"user@example.com"}),
    "005": ("sender@example.com", {"user@example.com"}),
    "006": (
        "s@example.com",
        {"a@example.com", "b@example.com", "c@example.com", "hidden@example.com"},
    ),
    "007": (None, {"user@example.com"}),
    "008": ("forced@example.com", {"user@example.com"}),
    "009": (None, {ADMIN}),
    "010": (None, {"user@example.com"}),
    "011": ("sender@example.com", {"user@example.com"}),
    "012": (None, {"a@example.com", "b@example.com", "cc@example.com", "bcc@example.com"}),
    # bsd-mailx put the words after "--" into To: they are addresses like any other.
    "013": (None, {"-fenv@example.com", "-oi@example.com", "user@example.com"}),
    "014": (None, {ADMIN}),
    "015": (None, {"user@example.com"}),
    "016": ("sender@example.com", {"user@example.com"}),
    "017": (None, {"a@example.com", "b@example.com", "cc@example.com", "bcc@example.com"}),
    "018": ("x@example.com", {"user@example.com"}),
    "019": (None, {"user@example.com"}),
    "020": (None, {"user@example.com"}),
    "021": (None, {ADMIN}),
    # nobody: root, root: admin@example.com (a nested alias).
    "022": (None, {ADMIN}),
    "023": (None, {"mailto-test@example.com"}),
    "024": (None, {"user@example.com"}),
    # mutt qualifies with the short host name: root@vm is this machine's root.
    "025": (None, {ADMIN}),
    "026": (None, {"user@example.com", "cc@example.com", "bcc@example.com"}),
    "027": ("sender@example.com", {"user@example.com"}),
    "028": (None, {"user@example.com", "cc@example.com", "dev@example.com", "bcc@example.com"}),
    "029": ("env@example.com", {"user@example.com", "dev@example.com"}),
    "030": (None, {ADMIN}),
}

CASES = sorted(p for p in CORPUS.iterdir() if p.is_dir())
_REMOVED = ("bcc", "resent-bcc")


def client_header_lines(stdin: bytes) -> list[bytes]:
    """The header lines the client wrote, CRLF-normalised, minus Bcc and Resent-Bcc fields."""
    head, _ = split_message(crlf(stdin))
    kept: list[bytes] = []
    dropping = False
    for line in head:
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = line.split(b":", 1)[0].strip().lower().decode() in _REMOVED
        if not dropping:
            kept.append(line)
    return kept


def is_subsequence(needles: list[bytes], haystack: list[bytes]) -> bool:
    it = iter(haystack)
    return all(any(n == h for h in it) for n in needles)


def test_the_table_covers_the_whole_corpus() -> None:
    assert len(CASES) == 30
    assert sorted(p.name[:3] for p in CASES) == sorted(EXPECTED)


@pytest.mark.parametrize("case", CASES, ids=[p.name for p in CASES])
def test_corpus_case_is_relayed_as_its_client_meant(
    case: Path, module_mta: Mta, module_relay: RecordingServer
) -> None:
    argv = json.loads((case / "case.json").read_text())["argv"]
    stdin = (case / "stdin.eml").read_bytes()
    sender, recipients = EXPECTED[case.name[:3]]
    before_sessions = len(module_relay.sessions)
    before = len(module_relay.envelopes)

    result = module_mta.run(*argv, stdin=stdin)

    assert result.returncode == 0, result
    assert result.stdout == b""
    for secret in secret_forms():
        assert secret not in result.stderr
    assert len(module_relay.envelopes) == before + 1
    envelope = module_relay.envelopes[-1]
    session = module_relay.sessions[before_sessions]

    # The envelope.
    assert envelope.mail_from == (sender or f"{LOGIN}@example.com")
    rcpts = [address for address, _ in envelope.rcpts]
    assert set(rcpts) == recipients
    assert len(rcpts) == len(recipients), f"a recipient was sent twice: {rcpts}"

    # AUTH happened, and only inside TLS: the commands before STARTTLS hold none.
    assert session.tls
    assert session.user == RELAY_USER
    starttls = session.commands.index("STARTTLS")
    auth = next(i for i, c in enumerate(session.commands) if c.startswith("AUTH"))
    assert starttls < auth

    # The header block: the client's lines verbatim and in order, Bcc gone,
    # Date / Message-ID / From exactly once, Received added.
    data = envelope.data
    arrived_head, arrived_body = split_message(data)
    names = header_names(arrived_head)
    assert "bcc" not in names and "resent-bcc" not in names
    for line in crlf(stdin).split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith((b"bcc:", b"resent-bcc:")):
            assert line.split(b":", 1)[1].strip() not in data
    for name in ("date", "message-id", "from"):
        assert names.count(name) == 1, f"{name}: {names}"
    assert names[0] == "received"
    wanted = client_header_lines(stdin)
    assert is_subsequence(wanted, arrived_head), (wanted, arrived_head)

    # The body: what the client wrote, with CRLF line ends (and a final one).
    _, body = split_message(crlf(stdin))
    if not body.endswith(b"\r\n") and body:
        body += b"\r\n"
    assert arrived_body == body

    # 8-bit text in the message is announced, so the relay need not guess.
    mail_cmd = next(c for c in session.commands if c.startswith("MAIL FROM:"))
    if re.search(rb"[\x80-\xff]", stdin) or "-B8BITMIME" in argv:
        assert "BODY=8BITMIME" in mail_cmd.upper()
    else:
        assert "BODY=" not in mail_cmd.upper()
