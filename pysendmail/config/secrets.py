"""A relay's password, read at send time from where the configuration says it lives.

The plain settings and the snapshot never hold a password; a relay records
its ``password_source`` and ``resolve_password`` reads it when the relay is
actually used: a ``password_file`` (one trailing newline stripped), the output
of ``password_command`` (run without a shell, stdin closed, one trailing
newline stripped), the configuration file itself (``password`` written
inline: the TOML is parsed again, here and only here), or an environment
variable.

SECURITY: the returned string is the only place the secret appears. No
exception message, repr or log line built here contains it. A password file
that is not a regular file (a FIFO would block, a device would stream) is
refused. A password file that every user can read is still used (container
secret mounts are often mode 0644), but ``config check`` warns about it.

This module is imported on the ``sendmail`` hot path: at run time it imports
only os and pysendmail's errors; tomllib, json and subprocess are imported
inside the functions that need them.
"""

import os

from pysendmail.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from pysendmail.config.settings import Relay, Settings

MAX_SECRET_SIZE = 64 * 1024  # an OAuth2 token fits many times over


def _strip_newline(text: str) -> str:
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def resolve_password(
    relay: "Relay", settings: "Settings", environ: "Mapping[str, str] | None" = None
) -> "str | None":
    """The password of ``relay``, or None when it logs in with none (no ``user``).

    Raises ``ConfigError`` naming the file, the key and what is wrong (never the
    secret) when the source cannot be read.
    """
    source = relay.password_source
    if source is None:
        return None
    if environ is None:
        environ = os.environ
    where = f"{settings.source_path}: relay[{relay.index}]"
    if source.startswith("file:"):
        return read_password_file(source[5:], f"{where}.password_file")
    if source == "command":
        if not relay.password_command:
            raise ConfigError(f"{where}.password_command: is empty")
        return run_password_command(
            relay.password_command, relay.command_timeout, f"{where}.password_command", environ
        )
    if source == "inline":
        return _inline_password(settings.source_path, relay.index)
    if source.startswith("env:"):
        name = source[4:]
        value = environ.get(name, "")
        if not value:
            raise ConfigError(f"{name}: relay[{relay.index}].password: is no longer set")
        return value
    if source.startswith("json:"):
        return _json_password(source[5:], relay.index, environ)
    raise ConfigError(f"{where}.password: unknown password source")


def read_password_file(path: str, where: str) -> str:
    """The contents of a password file, one trailing newline stripped."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if (st.st_mode & 0o170000) != 0o100000:
            raise ConfigError(f"{where}: {path} is not a regular file")
        raw = os.read(fd, MAX_SECRET_SIZE + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_SECRET_SIZE:
        raise ConfigError(f"{where}: {path} is larger than {MAX_SECRET_SIZE // 1024} KiB")
    try:
        secret = _strip_newline(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {path} is not valid UTF-8") from None
    if not secret:
        raise ConfigError(f"{where}: {path} is empty")
    return secret


def run_password_command(
    argv: "tuple[str, ...] | list[str]", timeout: int, where: str, environ: "Mapping[str, str]"
) -> str:
    """Run ``argv`` (no shell, stdin closed, stderr passed through); its stdout is the secret."""
    import subprocess

    program = argv[0]
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,  # never the message that sendmail is reading
            stdout=subprocess.PIPE,
            check=False,
            timeout=timeout,
            env=dict(environ),
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{where}: {program} did not finish within {timeout} seconds") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot run {program}: {exc.strerror or exc}") from None
    if done.returncode < 0:
        raise ConfigError(f"{where}: {program} was killed by signal {-done.returncode}")
    if done.returncode != 0:
        raise ConfigError(f"{where}: {program} exited with status {done.returncode}")
    if len(done.stdout) > MAX_SECRET_SIZE:
        raise ConfigError(f"{where}: {program} printed more than {MAX_SECRET_SIZE // 1024} KiB")
    try:
        secret = _strip_newline(done.stdout.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {program} printed something that is not UTF-8") from None
    if not secret:
        raise ConfigError(f"{where}: {program} printed nothing")
    return secret


def _inline_password(path: str, index: int) -> str:
    import tomllib

    where = f"{path}: relay[{index}].password"
    try:
        with open(path, "rb") as f:
            data = tomllib.loads(f.read(1024 * 1024 + 1).decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        raise ConfigError(f"{path}: has changed and is no longer valid TOML") from None
    relays = data.get("relay")
    entry = relays[index] if isinstance(relays, list) and index < len(relays) else None
    secret = entry.get("password") if isinstance(entry, dict) else None
    if not isinstance(secret, str) or not secret:
        raise ConfigError(f"{where}: is no longer in the file; run pysendmail config check")
    return secret


def _json_password(name: str, index: int, environ: "Mapping[str, str]") -> str:
    import json

    where = f"{name}: relay[{index}].password"
    words = name[len("PYSENDMAIL_") :].lower().split("__")
    # PYSENDMAIL_RELAY holds the list; PYSENDMAIL_RELAY__<index> holds one relay.
    try:
        node = json.loads(environ.get(name, ""))
        if words == ["relay"]:
            node = node[index]
        elif not (
            len(words) == 2
            and words[0] == "relay"
            and words[1].isdigit()
            and int(words[1]) == index
        ):
            raise ConfigError(f"{where}: unknown password source")
        secret = node["password"]
    except (ValueError, TypeError, KeyError, IndexError):
        raise ConfigError(f"{where}: is no longer set") from None
    if not isinstance(secret, str) or not secret:
        raise ConfigError(f"{where}: is no longer set")
    return secret
