"""``pysendmail config check``: validate, show the effective configuration, write the snapshot.

The output on ``out`` is TOML that loads again: every key of every section in
the order of ``etc/pysendmail.toml``, with the value in effect and, as a
trailing comment, where it came from (``file``, ``env VARIABLE`` or
``default``); defaults and keys that are not set appear commented out. Problems go to
``err``, one line each, ``FILE: KEY: what is wrong``; warnings (exit status
still 0) say ``FILE: KEY: warning: ...``.

Besides validation it looks at what only exists at run time: a password,
certificate or key file that is missing (an error), a password or private key
readable by every user (a warning), no relay at all (a warning; an error when
``general.mode`` sends directly).

SECURITY: a password is printed as ``"********"`` and never read: password
files are only stat()ed and ``password_command`` is not run, so checking has
no side effects beyond the snapshot.
"""

import os
import stat
from collections.abc import Mapping
from typing import Any, TextIO

from pysendmail.config.loader import ConfigProblems, Origins, Path, Validated, key_name
from pysendmail.config.loader import load_validated as _load_validated
from pysendmail.config.model import SECTIONS, format_duration
from pysendmail.config.snapshot import resolve_config_path, save_snapshot, snapshot_key
from pysendmail.errors import EX_CONFIG, ConfigError

MASK = "********"
# Password hashes are secrets too: printed, they can be cracked offline.
_SECRET_KEYS = frozenset({"password", "users"})
_DURATION_KEYS = frozenset(
    {
        "direct_timeout",
        "connect_timeout",
        "command_timeout",
        "data_timeout",
        "lifetime",
        "retry_min",
        "retry_max",
        "stale_tmp_age",
    }
)
_COMMENT_COLUMN = 44


def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = ['"']
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _present(merged: dict[str, Any], path: Path) -> bool:
    node: Any = merged
    for part in path:
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return False
        elif not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def origin_of(validated: Validated, path: Path) -> str:
    """``file``, ``env VARIABLE`` or ``default``: where the value at ``path`` came from."""
    if not _present(validated.merged, path):
        return "default"
    variable = validated.origins.variable_for(path)
    return f"env {variable}" if variable else "file"


def _line(key: str, value: Any, origin: str) -> str:
    # A default is shown commented out, as in etc/pysendmail.toml, so that the
    # output loads again to the same settings (an aliases_file written out
    # would become "explicitly set" and then required to exist).
    text = f"{key} = (not set)" if value is None else f"{key} = {toml_value(value)}"
    if value is None or origin.startswith("default"):
        text = "# " + text
    return f"{text.ljust(_COMMENT_COLUMN - 2)}  # {origin}"


def _section_lines(validated: Validated, path: Path, values: dict[str, Any]) -> list[str]:
    lines = []
    for key, value in values.items():
        shown: Any = value
        if key in _SECRET_KEYS and value is not None and value != []:
            shown = MASK
        elif key in _DURATION_KEYS and isinstance(value, int):
            shown = format_duration(value)
        origin = origin_of(validated, (*path, key))
        if key == "tls_hostname" and value is None:
            origin = "default: the host's name"
        lines.append(_line(key, shown, origin))
    return lines


def render(validated: Validated) -> str:
    """The effective configuration as TOML, secrets masked, origins as comments."""
    data = validated.data
    model = validated.model
    out = [
        "# pysendmail: the effective configuration",
        f"# file: {data['source_path']}"
        + ("" if data["source_exists"] else " (absent: defaults and environment only)"),
        "# each value ends with where it came from: file, env VARIABLE or default;",
        f'# secrets are shown as "{MASK}"',
    ]
    for section in SECTIONS:
        if section == "relay":
            if not model.relay:
                out += ["", "# no [[relay]] is configured"]
            for index, relay in enumerate(model.relay):
                values = relay.model_dump()
                values["password"] = relay.password  # SecretStr or None; masked below
                out += ["", "[[relay]]"]
                out += _section_lines(validated, ("relay", index), values)
            continue
        values = getattr(model, section).model_dump()
        out += ["", f"[{section}]"]
        out += _section_lines(validated, (section,), values)
    return "\n".join(out) + "\n"


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


class _Findings:
    def __init__(self, origins: Origins) -> None:
        self.origins = origins
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, path: Path, message: str) -> None:
        self.errors.append(f"{self.origins.blame(path)}: {key_name(path)}: {message}")

    def warn(self, path: Path, message: str) -> None:
        self.warnings.append(f"{self.origins.blame(path)}: {key_name(path)}: warning: {message}")


def _check_file(findings: _Findings, path: Path, filename: str, secret: bool) -> None:
    try:
        st = os.stat(filename)
    except (FileNotFoundError, NotADirectoryError):
        findings.error(path, f"{filename} does not exist")
        return
    except OSError as exc:
        findings.warn(path, f"cannot check {filename} as uid {os.geteuid()}: {exc.strerror}")
        return
    if not stat.S_ISREG(st.st_mode):
        findings.error(path, f"{filename} is not a regular file")
    elif secret and st.st_mode & stat.S_IROTH:
        findings.warn(
            path,
            f"{filename} is readable by every user (mode {_mode(st)}); "
            f"chmod o-r it (e.g. 0640, group pysendmail)",
        )
    elif secret and st.st_size == 0:
        findings.error(path, f"{filename} is empty")


def _check_inline_passwords(findings: _Findings, file_data: dict[str, Any], source: str) -> None:
    # Whether or not the environment overrides them, passwords written in a
    # file that every user can read are exposed.
    relays = file_data.get("relay")
    if not isinstance(relays, list):
        return
    holding = [i for i, r in enumerate(relays) if isinstance(r, dict) and "password" in r]
    if not holding:
        return
    try:
        st = os.stat(source)
    except OSError:
        return
    if st.st_mode & stat.S_IROTH:
        for index in holding:
            findings.warnings.append(
                f"{source}: relay[{index}].password: warning: the file is readable by every "
                f"user (mode {_mode(st)}); chmod o-r it, or move the password to password_file"
            )


def inspect(validated: Validated) -> _Findings:
    """What validation cannot see: files named by the relays, permissions, a missing relay."""
    findings = _Findings(validated.origins)
    model = validated.model
    source = validated.data["source_path"]
    _check_inline_passwords(findings, validated.file_data, source)
    for index, relay in enumerate(model.relay):
        base: Path = ("relay", index)
        if relay.password_file is not None:
            _check_file(findings, (*base, "password_file"), relay.password_file, secret=True)
        for key in ("ca_file", "client_cert"):
            filename = getattr(relay, key)
            if filename is not None:
                _check_file(findings, (*base, key), filename, secret=False)
        if relay.client_key is not None:
            _check_file(findings, (*base, "client_key"), relay.client_key, secret=True)
    if not model.relay:
        if model.general.mode == "queue":
            findings.warn(
                ("relay",),
                "no [[relay]] is configured: mail is queued but never delivered",
            )
        else:
            findings.error(
                ("relay",),
                f'no [[relay]] is configured, and general.mode = "{model.general.mode}" '
                "sends directly; add a [[relay]] table with host = ...",
            )
    return findings


def check_main(
    config_path: str | None, environ: Mapping[str, str], out: TextIO, err: TextIO
) -> int:
    """``pysendmail config check [-C FILE]``: 0 when the configuration is usable, else 78."""
    try:
        path, explicit = resolve_config_path(config_path, environ)
        key = snapshot_key(path, explicit, environ)
        validated = _load_validated(path, explicit, environ)
    except ConfigProblems as exc:
        for line in exc.problems:
            print(line, file=err)
        return EX_CONFIG
    except ConfigError as exc:
        print(exc, file=err)
        return EX_CONFIG
    out.write(render(validated))
    written, why_not = save_snapshot(validated, key, explicit, environ)
    if written:
        out.write(f"\n# snapshot for sendmail written to {written}\n")
    else:
        out.write(f"\n# no snapshot written: {why_not}\n")
    findings = inspect(validated)
    for line in findings.warnings + findings.errors:
        print(line, file=err)
    return EX_CONFIG if findings.errors else 0
