"""``pysendmail config check``: the effective configuration, masked, with origins and warnings."""

import io
import json
import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from pysendmail.config import load_settings
from pysendmail.config.check import check_main, toml_string

Write = Callable[..., str]
SECRET = "correct horse battery staple"
RELAY = '[[relay]]\nhost = "smtp.example.com"\nuser = "me"\n'


def check(path: str | None, environ: dict[str, str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = check_main(path, environ, out, err)
    return status, out.getvalue(), err.getvalue()


def line_of(out: str, key: str, occurrence: int = 0) -> str:
    lines = [ln for ln in out.splitlines() if re.match(rf"(# )?{key} = ", ln)]
    return lines[occurrence]


def test_shows_every_value_with_its_origin(write: Write, env: dict[str, str]) -> None:
    path = write('[general]\ndomain = "example.com"\n[[relay]]\nhost = "smtp.example.com"\n')
    status, out, err = check(path, {**env, "PYSENDMAIL_RELAY__0__PORT": "2525"})
    assert (status, err) == (0, "")
    assert line_of(out, "domain").split() == ["domain", "=", '"example.com"', "#", "file"]
    assert line_of(out, "port").split() == [
        "port",
        "=",
        "2525",
        "#",
        "env",
        "PYSENDMAIL_RELAY__0__PORT",
    ]
    assert line_of(out, "mode").split() == ["#", "mode", "=", '"queue"', "#", "default"]
    assert line_of(out, "lifetime").split() == ["#", "lifetime", "=", '"5d"', "#", "default"]
    assert line_of(out, "catchall").split() == [
        "#",
        "catchall",
        "=",
        "(not",
        "set)",
        "#",
        "default",
    ]
    assert f"# file: {path}" in out


def test_secrets_are_masked(write: Write, env: dict[str, str], tmp_path: Path) -> None:
    path = write(RELAY + f'password = "{SECRET}"\n' + RELAY)
    environ = {**env, "PYSENDMAIL_RELAY__1__PASSWORD": "env-" + SECRET}
    status, out, err = check(path, environ)
    assert status == 0
    assert SECRET not in out + err
    assert line_of(out, "password", 0).split() == ["password", "=", '"********"', "#", "file"]
    assert line_of(out, "password", 1).split()[:5] == ["password", "=", '"********"', "#", "env"]


def test_the_output_is_a_configuration_that_loads_to_the_same_settings(
    write: Write, env: dict[str, str], tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("pw\n")
    secret.chmod(0o600)
    path = write(
        '[general]\nhostname = "mail.example.com"\ncatchall = "root"\n'
        '[rewrite]\nsender = "\\"no reply\\"@example.com"\n'
        f'{RELAY}password_file = "{secret}"\nsenders = ["*@example.com"]\n'
        '[[relay]]\nhost = "backup.example.com"\ntls = "none"\n'
        '[queue]\nretry_max = "90m"\n'
    )
    status, out, err = check(path, env)
    assert (status, err) == (0, "")
    tomllib.loads(out)
    again = write(out, "again.toml")
    before = load_settings(path, env, use_snapshot=False)
    after = load_settings(again, env, use_snapshot=False)
    assert after.general == before.general
    assert after.rewrite == before.rewrite
    assert after.queue == before.queue
    assert after.log == before.log
    assert after.relays == before.relays


def test_errors_are_one_line_each_and_exit_78(write: Write, env: dict[str, str]) -> None:
    path = write('[general]\nmode = "x"\n[[relay]]\nhost = "a.example"\nport = 0\n')
    status, out, err = check(path, {**env, "PYSENDMAIL_LOG__LEVEL": "loud"})
    assert (status, out) == (78, "")
    assert err.splitlines() == [
        f'{path}: general.mode: must be one of "queue", "direct", "direct-then-queue"',
        f"{path}: relay[0].port: must be between 1 and 65535",
        'PYSENDMAIL_LOG__LEVEL: log.level: must be one of "debug", "info", "warning", "error"',
    ]


def test_broken_toml(write: Write, env: dict[str, str]) -> None:
    path = write("[general]\ndomain = \n")
    assert check(path, env) == (
        78,
        "",
        f"{path}: line 2, column 10: TOML syntax error: invalid value "
        "(is a string missing its quotes?)\n",
    )


def test_a_missing_explicit_file(tmp_path: Path, env: dict[str, str]) -> None:
    missing = tmp_path / "nope.toml"
    assert check(str(missing), env) == (78, "", f"{missing}: cannot read: no such file\n")


def test_writes_the_snapshot(write: Write, env: dict[str, str], cache_dir: Path) -> None:
    status, out, _ = check(write('[[relay]]\nhost = "smtp.example.com"\n'), env)
    (snap,) = cache_dir.glob("*.snapshot")
    assert status == 0
    assert out.rstrip().endswith(f"# snapshot for sendmail written to {snap}")


def test_says_why_no_snapshot_was_written(write: Write, env: dict[str, str]) -> None:
    relay = json.dumps([{"host": "smtp.example.com", "user": "me", "password": SECRET}])
    status, out, err = check(write(""), {**env, "PYSENDMAIL_RELAY": relay})
    assert (status, err) == (0, "")
    assert SECRET not in out
    assert out.rstrip().endswith(
        "# no snapshot written: a password is inside a JSON variable (use ...__PASSWORD or a file)"
    )


def test_an_inline_password_in_a_world_readable_file_is_a_warning(
    write: Write, env: dict[str, str]
) -> None:
    path = write(RELAY + f'password = "{SECRET}"\n')
    os.chmod(path, 0o644)
    status, _, err = check(path, env)
    assert status == 0
    assert err == (
        f"{path}: relay[0].password: warning: the file is readable by every user (mode 0644); "
        "chmod o-r it, or move the password to password_file\n"
    )
    os.chmod(path, 0o640)
    assert check(path, env)[::2] == (0, "")


def test_a_world_readable_password_file_is_a_warning(
    write: Write, env: dict[str, str], tmp_path: Path
) -> None:
    secret = tmp_path / "smtp"
    secret.write_text(SECRET)
    secret.chmod(0o644)
    path = write(RELAY + f'password_file = "{secret}"\n')
    status, out, err = check(path, env)
    assert status == 0
    assert SECRET not in out + err
    assert err == (
        f"{path}: relay[0].password_file: warning: {secret} is readable by every user "
        "(mode 0644); chmod o-r it (e.g. 0640, group pysendmail)\n"
    )
    secret.chmod(0o640)
    assert check(path, env)[::2] == (0, "")


def test_a_world_readable_client_key_is_a_warning(
    write: Write, env: dict[str, str], tmp_path: Path
) -> None:
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    cert.write_text("cert")
    key.write_text("key")
    key.chmod(0o644)
    path = write(
        f'[[relay]]\nhost = "smtp.example.com"\nclient_cert = "{cert}"\nclient_key = "{key}"\n'
    )
    status, _, err = check(path, env)
    assert status == 0
    assert err.startswith(f"{path}: relay[0].client_key: warning: {key} is readable by every user")


@pytest.mark.parametrize("key", ["password_file", "ca_file", "client_cert"])
def test_a_missing_file_named_by_a_relay_is_an_error(
    write: Write, env: dict[str, str], tmp_path: Path, key: str
) -> None:
    missing = tmp_path / "missing.pem"
    user = 'user = "me"\n' if key == "password_file" else ""
    path = write(f'[[relay]]\nhost = "smtp.example.com"\n{user}{key} = "{missing}"\n')
    status, out, err = check(path, env)
    assert status == 78
    assert out  # the configuration itself is valid and is shown
    assert err == f"{path}: relay[0].{key}: {missing} does not exist\n"


def test_an_empty_password_file_is_an_error(
    write: Write, env: dict[str, str], tmp_path: Path
) -> None:
    secret = tmp_path / "smtp"
    secret.write_text("")
    secret.chmod(0o600)
    path = write(RELAY + f'password_file = "{secret}"\n')
    assert check(path, env)[::2] == (78, f"{path}: relay[0].password_file: {secret} is empty\n")


def test_the_password_command_is_not_run(write: Write, env: dict[str, str], tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = write(RELAY + f'password_command = ["/usr/bin/touch", "{marker}"]\n')
    assert check(path, env)[::2] == (0, "")
    assert not marker.exists()


def test_no_relay_is_a_warning_in_queue_mode_and_an_error_in_direct_mode(
    write: Write, env: dict[str, str]
) -> None:
    path = write("")
    assert check(path, env)[::2] == (
        0,
        f"{path}: relay: warning: no [[relay]] is configured: mail is queued but never delivered\n",
    )
    path = write('[general]\nmode = "direct"\n')
    assert check(path, env)[::2] == (
        78,
        f'{path}: relay: no [[relay]] is configured, and general.mode = "direct" sends directly; '
        "add a [[relay]] table with host = ...\n",
    )


def test_a_warning_about_a_value_from_the_environment_names_the_variable(
    write: Write, env: dict[str, str], tmp_path: Path
) -> None:
    secret = tmp_path / "smtp"
    secret.write_text("pw")
    secret.chmod(0o604)
    environ = {
        **env,
        "PYSENDMAIL_RELAY__0__HOST": "smtp.example.com",
        "PYSENDMAIL_RELAY__0__USER": "me",
        "PYSENDMAIL_RELAY__0__PASSWORD_FILE": str(secret),
    }
    status, _, err = check(write(""), environ)
    assert status == 0
    assert err.startswith(
        f"PYSENDMAIL_RELAY__0__PASSWORD_FILE: relay[0].password_file: warning: {secret} is "
        "readable by every user (mode 0604)"
    )


def test_toml_strings_escape_what_toml_needs() -> None:
    assert toml_string('a"b\\c\x7f\n') == '"a\\"b\\\\c\\u007f\\u000a"'
    assert tomllib.loads("v = " + toml_string('a"b\\c\x7f\n'))["v"] == 'a"b\\c\x7f\n'


def test_a_password_in_a_world_readable_file_is_a_warning_even_when_overridden(
    write: Write, env: dict[str, str]
) -> None:
    path = write(RELAY + f'password = "{SECRET}"\n')
    os.chmod(path, 0o644)
    environ = {**env, "PYSENDMAIL_RELAY": '[{"host": "other.example.com"}]'}
    status, out, err = check(path, environ)
    assert status == 0
    assert SECRET not in out + err
    assert err.startswith(f"{path}: relay[0].password: warning: the file is readable by every")
