"""Finding and reading the file: which path, a missing file, broken TOML, the example file."""

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from pysendmail.config import load_settings, snapshot
from pysendmail.config.model import SECTIONS
from pysendmail.errors import ConfigError

Write = Callable[..., str]
EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "pysendmail.toml"


def error_of(path: str | None, environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ, use_snapshot=False)
    assert caught.value.exit_status == 78
    return str(caught.value)


def test_a_missing_default_file_means_all_defaults(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshot, "DEFAULT_CONFIG_PATH", str(tmp_path / "pysendmail.toml"))
    s = load_settings(None, env)
    assert (s.source_exists, s.general.mode, s.relays) == (False, "queue", ())


def test_no_relay_is_an_error_only_when_one_is_needed(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    default = str(tmp_path / "pysendmail.toml")
    monkeypatch.setattr(snapshot, "DEFAULT_CONFIG_PATH", default)
    s = load_settings(None, env)
    with pytest.raises(ConfigError) as caught:
        s.need_relays()
    assert str(caught.value) == (
        f"{default}: relay: no relay is configured; add a [[relay]] table with host = ... "
        "(or set PYSENDMAIL_RELAY__0__HOST)"
    )
    s = load_settings(None, {**env, "PYSENDMAIL_RELAY__0__HOST": "smtp.example.com"})
    assert s.need_relays()[0].host == "smtp.example.com"


def test_a_missing_explicit_file_is_an_error(tmp_path: Path, env: dict[str, str]) -> None:
    missing = str(tmp_path / "nope.toml")
    assert error_of(missing, env) == f"{missing}: cannot read: no such file"
    assert error_of(None, {**env, "PYSENDMAIL_CONFIG": missing}) == (
        f"{missing}: cannot read: no such file"
    )


def test_an_empty_dash_c_is_an_error(env: dict[str, str]) -> None:
    assert error_of("", env) == "-C: the configuration file name is empty"


def test_a_relative_dash_c_is_made_absolute(
    write: Write, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write('[general]\ndomain = "example.com"\n', "rel.toml")
    monkeypatch.chdir(tmp_path)
    assert load_settings("rel.toml", env).source_path == str(tmp_path / "rel.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[general]\ndomain = example.com\n",
            "line 2, column 10: TOML syntax error: invalid value (is a string missing its quotes?)",
        ),
        (
            "[general\n",
            "line 1, column 9: TOML syntax error: expected ']' at the end of a table declaration",
        ),
        (
            '[general]\ndomain = "a"\ndomain = "b"\n',
            "line 3, column 13: TOML syntax error: cannot overwrite a value",
        ),
        ('[general]\ndomain = "a', "line 2, at the end: TOML syntax error: unterminated string"),
    ],
)
def test_broken_toml_names_file_line_and_column(
    write: Write, env: dict[str, str], text: str, message: str
) -> None:
    path = write(text)
    assert error_of(path, env) == f"{path}: {message}"


def test_a_file_that_is_not_utf8(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[general]\n# caf\xe9\ndomain = "x"\n')
    assert error_of(str(path), env) == f"{path}: line 2: is not valid UTF-8"


def test_a_directory_or_fifo_is_not_read(tmp_path: Path, env: dict[str, str]) -> None:
    assert error_of(str(tmp_path), env) == f"{tmp_path}: is not a regular file"
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    assert error_of(str(fifo), env) == f"{fifo}: is not a regular file"


def test_a_huge_file_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "huge.toml"
    path.write_bytes(b"#" * (1024 * 1024 + 1))
    assert error_of(str(path), env) == f"{path}: is larger than 1 MiB"


def test_the_example_file_is_valid(env: dict[str, str]) -> None:
    s = load_settings(str(EXAMPLE), env, use_snapshot=False)
    assert s.general.domain == "example.com"
    (relay,) = s.relays
    assert (relay.host, relay.port, relay.user) == ("smtp.example.com", 587, "me@example.com")
    assert relay.password_source == "file:/run/secrets/smtp"


def test_the_example_file_shows_every_key() -> None:
    text = EXAMPLE.read_text()
    headers = re.findall(r"^(?:# )?\[+(\w+)\]+$", text, re.M)
    assert set(headers) == set(SECTIONS)
    shown = set(re.findall(r"^(?:# )?(\w+) = ", text, re.M))
    for section, model in SECTIONS.items():
        missing = set(model.model_fields) - shown
        assert not missing, f"[{section}] keys missing from etc/pysendmail.toml: {missing}"
