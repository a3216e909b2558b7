"""Relay passwords from each source, read at send time, and never shown anywhere else."""

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pysendmail.config import Settings, load_settings
from pysendmail.config.loader import load_validated
from pysendmail.config.secrets import resolve_password
from pysendmail.errors import ConfigError

Write = Callable[..., str]
SECRET = "correct horse battery staple"
RELAY = '[[relay]]\nhost = "smtp.example.com"\nuser = "me"\n'


def password_of(settings: Settings, environ: dict[str, str], index: int = 0) -> str | None:
    return resolve_password(settings.relays[index], settings, environ)


def failure(settings: Settings, environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        password_of(settings, environ)
    assert caught.value.exit_status == 78
    assert SECRET not in str(caught.value)
    return str(caught.value)


def toml_list(words: list[str]) -> str:
    return json.dumps(words)  # a JSON list of strings is a valid TOML array


def test_no_user_means_no_password(write: Write, env: dict[str, str]) -> None:
    s = load_settings(write('[[relay]]\nhost = "smtp.example.com"\n'), env)
    assert s.relays[0].password_source is None
    assert password_of(s, env) is None


@pytest.mark.parametrize(
    ("content", "password"),
    [
        (SECRET + "\n", SECRET),
        (SECRET, SECRET),
        (SECRET + "\r\n", SECRET),
        (SECRET + "\n\n", SECRET + "\n"),
        (" " + SECRET + " \n", " " + SECRET + " "),
    ],
)
def test_password_file_with_one_trailing_newline_stripped(
    write: Write, env: dict[str, str], tmp_path: Path, content: str, password: str
) -> None:
    secret = tmp_path / "smtp"
    secret.write_text(content)
    s = load_settings(write(RELAY + f'password_file = "{secret}"\n'), env)
    assert s.relays[0].password_source == f"file:{secret}"
    assert password_of(s, env) == password


def test_password_file_problems(write: Write, env: dict[str, str], tmp_path: Path) -> None:
    secret = tmp_path / "smtp"
    path = write(RELAY + f'password_file = "{secret}"\n')
    s = load_settings(path, env)  # loading does not need the file: only sending does
    where = f"{path}: relay[0].password_file"
    assert failure(s, env) == f"{where}: cannot read {secret}: No such file or directory"
    secret.write_text("")
    assert failure(s, env) == f"{where}: {secret} is empty"
    secret.write_bytes(b"\xff\xfe")
    assert failure(s, env) == f"{where}: {secret} is not valid UTF-8"
    secret.write_bytes(b"x" * (64 * 1024 + 1))
    assert failure(s, env) == f"{where}: {secret} is larger than 64 KiB"
    secret.unlink()
    os.mkfifo(secret)  # would block a plain open() forever
    assert failure(s, env) == f"{where}: {secret} is not a regular file"


def command(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_password_command_prints_the_password(write: Write, env: dict[str, str]) -> None:
    argv = command(f"print({SECRET!r})")
    s = load_settings(write(RELAY + f"password_command = {toml_list(argv)}\n"), env)
    assert s.relays[0].password_source == "command"
    assert s.relays[0].password_command == tuple(argv)
    assert password_of(s, env) == SECRET


def test_password_command_does_not_read_the_message_on_stdin(
    write: Write, env: dict[str, str]
) -> None:
    argv = command("import sys; print('stdin held', repr(sys.stdin.read()))")
    s = load_settings(write(RELAY + f"password_command = {toml_list(argv)}\n"), env)
    assert password_of(s, env) == "stdin held ''"


def test_password_command_gets_the_environment(write: Write, env: dict[str, str]) -> None:
    argv = command("import os; print(os.environ['VAULT_TOKEN'])")
    s = load_settings(write(RELAY + f"password_command = {toml_list(argv)}\n"), env)
    assert password_of(s, {**env, "VAULT_TOKEN": "t0k"}) == "t0k"


@pytest.mark.parametrize(
    ("code", "problem"),
    [
        ("import sys; sys.exit(3)", "exited with status 3"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", "was killed by signal 15"),
        ("pass", "printed nothing"),
        ("import sys; sys.stdout.buffer.write(b'\\xff')", "printed something that is not UTF-8"),
    ],
)
def test_password_command_failures(
    write: Write, env: dict[str, str], code: str, problem: str
) -> None:
    path = write(RELAY + f"password_command = {toml_list(command(code))}\n")
    s = load_settings(path, env)
    assert failure(s, env) == f"{path}: relay[0].password_command: {sys.executable} {problem}"


def test_password_command_that_cannot_run(write: Write, env: dict[str, str]) -> None:
    path = write(RELAY + 'password_command = ["/nonexistent/pass", "smtp"]\n')
    s = load_settings(path, env)
    assert failure(s, env) == (
        f"{path}: relay[0].password_command: cannot run /nonexistent/pass: "
        "No such file or directory"
    )


def test_password_command_that_hangs_is_stopped(write: Write, env: dict[str, str]) -> None:
    argv = command("import time; time.sleep(30)")
    path = write(RELAY + f"password_command = {toml_list(argv)}\ncommand_timeout = 1\n")
    s = load_settings(path, env)
    assert failure(s, env) == (
        f"{path}: relay[0].password_command: {sys.executable} did not finish within 1 seconds"
    )


def test_inline_password_is_read_again_from_the_file_at_send_time(
    write: Write, env: dict[str, str]
) -> None:
    path = write(RELAY + f'password = "{SECRET}"\n')
    s = load_settings(path, env)
    assert s.relays[0].password_source == "inline"
    assert password_of(s, env) == SECRET
    write(RELAY + 'password_file = "/run/secrets/smtp"\n')  # edited since
    assert failure(s, env) == (
        f"{path}: relay[0].password: is no longer in the file; run pysendmail config check"
    )


def test_password_from_its_own_variable(write: Write, env: dict[str, str]) -> None:
    environ = {**env, "PYSENDMAIL_RELAY__0__PASSWORD": SECRET}
    s = load_settings(write(RELAY), environ)
    assert s.relays[0].password_source == "env:PYSENDMAIL_RELAY__0__PASSWORD"
    assert password_of(s, environ) == SECRET
    assert failure(s, env) == "PYSENDMAIL_RELAY__0__PASSWORD: relay[0].password: is no longer set"


def test_password_inside_json_variables(env: dict[str, str], write: Write) -> None:
    relays = [{"host": "a.example.com"}, {"host": "b.example.com", "user": "u", "password": SECRET}]
    environ = {**env, "PYSENDMAIL_RELAY": json.dumps(relays)}
    s = load_settings(write(""), environ)
    assert s.relays[1].password_source == "json:PYSENDMAIL_RELAY"
    assert password_of(s, environ, 1) == SECRET

    one = {"host": "c.example.com", "user": "u", "password": SECRET}
    environ = {**env, "PYSENDMAIL_RELAY__0": json.dumps(one)}
    s = load_settings(write(""), environ)
    assert s.relays[0].password_source == "json:PYSENDMAIL_RELAY__0"
    assert password_of(s, environ) == SECRET


def test_no_repr_or_plain_settings_holds_the_password(write: Write, env: dict[str, str]) -> None:
    path = write(RELAY + f'password = "{SECRET}"\n')
    s = load_settings(path, env)
    assert SECRET not in repr(s)
    validated = load_validated(path, True, env)
    assert SECRET not in repr(validated.model)
    assert SECRET not in repr(validated.data)
