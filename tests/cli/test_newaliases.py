"""newaliases / sendmail -bi: check the aliases file, compile it, and sendmail uses it."""

from __future__ import annotations

import marshal
from pathlib import Path

from pysendmail.cli import sendmail
from pysendmail.config import load_settings
from pysendmail.config.snapshot import file_identity
from pysendmail.message.aliases import Aliases
from tests.cli.conftest import Mta


def test_newaliases_compiles_and_sendmail_follows_edits(mta: Mta) -> None:
    mta.configure(None)
    mta.aliases_file.write_text("root: admin@example.com, ops\nops: alice@example.com\n")
    result = mta.run(program="newaliases")
    assert result.returncode == 0, result
    assert "2 aliases, no errors; compiled into" in result.stdout.decode()
    compiled = list(Path(mta.env["PYSENDMAIL_CACHE_DIR"]).glob("*.aliases"))
    assert len(compiled) == 1
    shown = mta.run("-bv", "root")
    assert "root -> alice@example.com" in shown.stdout.decode(), shown
    # An edit after newaliases wins over the stale compiled form.
    mta.aliases_file.write_text("root: changed@example.com\n")
    shown = mta.run("-bv", "root")
    assert shown.stdout.decode().splitlines() == [
        f"root -> changed@example.com: deliverable via 127.0.0.1:{mta_port(mta)} (starttls)"
    ], shown


def mta_port(mta: Mta) -> int:
    for line in mta.config.read_text().splitlines():
        if line.startswith("port = "):
            return int(line.split("=")[1])
    raise AssertionError("no port in the test configuration")


def test_the_compiled_form_is_what_sendmail_reads(mta: Mta) -> None:
    mta.configure(None)
    mta.aliases_file.write_text("root: admin@example.com\n")
    assert mta.run(program="newaliases").returncode == 0
    environ = dict(mta.env)
    settings = load_settings(str(mta.config), environ)
    path = settings.general.aliases_file
    # Replace the compiled data (same file identity) with another mapping: if
    # sendmail reads the compiled form, it sees that mapping.
    other = Aliases.parse("root: compiled@example.com\n", path)
    payload = marshal.dumps((path, file_identity(path), other.to_bytes()))
    [cache] = Path(environ["PYSENDMAIL_CACHE_DIR"]).glob("*.aliases")
    cache.write_bytes(payload)
    assert sendmail.load_aliases(settings, environ).expand("root") == ["compiled@example.com"]
    # A cache that is writable by others is not trusted (marshal data).
    cache.chmod(0o666)
    assert sendmail.load_aliases(settings, environ).expand("root") == ["admin@example.com"]


def test_bad_lines_are_reported_by_line_and_nothing_is_compiled(mta: Mta) -> None:
    mta.configure(None)
    mta.aliases_file.write_text("root: admin@example.com\nbad: |/usr/bin/evil\nx y\n")
    result = mta.run("-bi")
    assert result.returncode == 65, result
    assert any(":2: alias 'bad'" in line for line in result.lines), result
    assert any(":3:" in line for line in result.lines), result
    assert not list(Path(mta.env["PYSENDMAIL_CACHE_DIR"]).glob("*.aliases"))
