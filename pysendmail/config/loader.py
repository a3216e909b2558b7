"""Full validation: read the TOML file, lay the environment over it, validate, explain.

This is the slow path behind ``load_settings`` (and the whole of ``config
check``): it imports tomllib, json and pydantic. The order of precedence is
defaults < file < ``PYSENDMAIL_…`` variables. The variables are mapped by
walking the schema, so ``PYSENDMAIL_RELAY__0__PORT`` lands on
``relay[0].port``, an index one past the end of ``[[relay]]`` adds a relay, a
variable that names a table or list takes JSON, an empty variable unsets its
key, and a variable that names no key is an error, like a typo in the file.

Every problem becomes one line ``FILE: KEY: what is wrong``, where FILE is the
variable's name when the value came from the environment.

SECURITY: the file and the environment are hostile. The file is read only when
it is a regular file of sane size; no message quotes a value; a password found
here is never put into the plain settings (only where it comes from).
"""

import copy
import difflib
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from pysendmail.config.model import SECTIONS, ConfigModel, RelaySection
from pysendmail.config.settings import settings_from_data
from pysendmail.errors import ConfigError

ENV_PREFIX = "PYSENDMAIL_"
#: ``PYSENDMAIL_`` variables that are not configuration keys.
RESERVED_VARIABLES = frozenset({"PYSENDMAIL_CONFIG", "PYSENDMAIL_CACHE_DIR"})
MAX_FILE_SIZE = 1024 * 1024

Path = tuple[str | int, ...]


class ConfigProblems(ConfigError):
    """A ConfigError that carries every problem found, one line each; ``str()`` is the first."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems[0])
        self.problems = problems


def key_name(path: Path) -> str:
    """``("relay", 0, "port")`` → ``relay[0].port``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


class Origins:
    """Where each value came from: the file, or which environment variable.

    ``leaves`` maps a key to the variable that set (or unset) it; ``json``
    holds the variables whose value was JSON; ``containers`` maps a table or
    list that a variable created or replaced to that variable.
    """

    def __init__(self, file: str) -> None:
        self.file = file
        self.leaves: dict[Path, str] = {}
        self.json: set[str] = set()
        self.containers: dict[Path, str] = {}

    def variable_for(self, path: Path) -> str | None:
        """The variable that supplied the value at ``path`` (or the table holding it)."""
        if path in self.leaves:
            return self.leaves[path]
        for end in range(len(path), 0, -1):
            if path[:end] in self.containers:
                return self.containers[path[:end]]
        return None

    def blame(self, path: Path) -> str:
        """What an error at ``path`` is prefixed with: the variable's name, else the file."""
        return self.variable_for(path) or self.file


class Validated:
    """The outcome of full validation, with what ``config check`` needs to explain it."""

    __slots__ = ("data", "file_data", "merged", "model", "origins", "secret_in_environment")

    def __init__(
        self,
        model: ConfigModel,
        data: dict[str, Any],
        file_data: dict[str, Any],
        merged: dict[str, Any],
        origins: Origins,
        secret_in_environment: bool,
    ) -> None:
        self.model = model
        self.data = data  # plain values for settings_from_data and the snapshot
        self.file_data = file_data  # the TOML as parsed ({} when there is no file)
        self.merged = merged  # file + environment, before defaults
        self.origins = origins
        # True when a password sits inside a JSON variable: the snapshot's key
        # would have to record that variable's value, so none is written.
        self.secret_in_environment = secret_in_environment


# --------------------------------------------------------------------------- the file


def read_file(path: str, explicit: bool) -> tuple[dict[str, Any], bool]:
    """The parsed TOML and whether the file exists; ``({}, False)`` for an absent default file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        if not explicit:
            return {}, False
        raise ConfigError(f"{path}: cannot read: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not _is_regular(info.st_mode):
            raise ConfigError(f"{path}: is not a regular file")
        if info.st_size > MAX_FILE_SIZE:
            raise ConfigError(f"{path}: is larger than 1 MiB")
        chunks = []
        total = 0
        while chunk := os.read(fd, 65536):
            total += len(chunk)
            if total > MAX_FILE_SIZE:
                raise ConfigError(f"{path}: is larger than 1 MiB")
            chunks.append(chunk)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return parse_toml(path, b"".join(chunks)), True


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


_TOML_WHERE = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$", re.DOTALL)


def parse_toml(path: str, raw: bytes) -> dict[str, Any]:
    """TOML from bytes; a syntax error names the file, line and column."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}: line {line}: is not valid UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _TOML_WHERE.match(message)
        if match:
            what = match.group(1)
            where = f"line {match.group(2)}, column {match.group(3)}"
        else:
            what = message.removesuffix(" (at end of document)")
            where = f"line {text.count(chr(10)) + 1}, at the end"
        what = what[:1].lower() + what[1:]
        if what == "invalid value":
            what += " (is a string missing its quotes?)"
        raise ConfigError(f"{path}: {where}: TOML syntax error: {what}") from None


# --------------------------------------------------------------------------- the environment


def _unwrap(annotation: Any) -> Any:
    """``Annotated[X | None, ...]`` → ``X``."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0]
        else:
            return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _model_list_item(annotation: Any) -> Any:
    if typing.get_origin(annotation) is list:
        item = _unwrap(typing.get_args(annotation)[0])
        if _is_model(item):
            return item
    return None


class _EnvProblem(Exception):
    def __init__(self, variable: str, key: str, message: str) -> None:
        super().__init__(f"{variable}: {key}: {message}" if key else f"{variable}: {message}")


def _did_you_mean(word: str, choices: list[str], brackets: bool = False) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close:
        return ""
    shown = f"[{close[0]}]" if brackets else f'"{close[0]}"'
    return f" (did you mean {shown}?)"


def _resolve_variable(name: str) -> tuple[Path, str]:
    """The key a variable names, and its kind: ``scalar``, ``json`` (list/table), or ``table``."""
    words = name[len(ENV_PREFIX) :].split("__")
    if not all(words):
        raise _EnvProblem(
            name,
            "",
            "is not a configuration key: write PYSENDMAIL_SECTION__KEY, e.g. "
            "PYSENDMAIL_GENERAL__DOMAIN",
        )
    path: list[str | int] = []
    model: Any = ConfigModel
    kind = "table"
    i = 0
    while i < len(words):
        word = words[i].lower()
        if model is None:
            raise _EnvProblem(name, key_name((*path, word)), "is not a configuration key")
        fields = model.model_fields
        if word not in fields:
            if model is ConfigModel:
                hint = _did_you_mean(word, list(fields))
                raise _EnvProblem(name, word, f"unknown section{hint}")
            hint = _did_you_mean(word, list(fields))
            raise _EnvProblem(name, key_name((*path, word)), f"unknown key{hint}")
        path.append(word)
        annotation = _unwrap(fields[word].annotation)
        item = _model_list_item(annotation)
        if item is not None:
            kind = "json"
            if i + 1 < len(words):
                index = words[i + 1]
                if not (index.isascii() and index.isdigit() and len(index) <= 6):
                    raise _EnvProblem(
                        name,
                        key_name(tuple(path)),
                        f"needs an index after it, e.g. {ENV_PREFIX}{word.upper()}__0__"
                        f"{words[i + 1].upper()}",
                    )
                path.append(int(index))
                i += 1
                model, kind = item, "table"
            else:
                model = None
        elif _is_model(annotation):
            model, kind = annotation, "table"
        else:
            model = None
            kind = "json" if typing.get_origin(annotation) in (list, dict) else "scalar"
        i += 1
    return tuple(path), kind


def _sort_key(item: tuple[str, Path, str, str]) -> tuple[Any, ...]:
    # Whole tables and lists first, then keys inside them; relays by index, so
    # that RELAY__1__HOST and RELAY__2__HOST both extend a one-relay list.
    path = item[1]
    return (len(path), tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in path))


def _contains_password(value: Any) -> bool:
    if isinstance(value, dict):
        return "password" in value or any(_contains_password(v) for v in value.values())
    if isinstance(value, list):
        return any(_contains_password(v) for v in value)
    return False


def _record_json_leaves(origins: Origins, path: Path, value: Any, name: str) -> None:
    # Tables, and lists of tables such as ``relay``, hold keys; any other value
    # (a string, a list of patterns) is one leaf.
    if _schema_at(path) is not None and isinstance(value, dict):
        for k, v in value.items():
            _record_json_leaves(origins, (*path, str(k)), v, name)
    elif _schema_at(path) is not None and isinstance(value, list):
        for i, v in enumerate(value):
            _record_json_leaves(origins, (*path, i), v, name)
    else:
        origins.leaves[path] = name


def apply_environment(
    data: dict[str, Any], environ: Mapping[str, str], origins: Origins
) -> tuple[dict[str, Any], bool]:
    """Lay the ``PYSENDMAIL_…`` variables over ``data`` (a deep copy is returned).

    Returns the merged dict and whether a password came inside a JSON value.
    """
    merged = copy.deepcopy(data)
    problems: list[str] = []
    items: list[tuple[str, Path, str, str]] = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in RESERVED_VARIABLES:
            continue
        try:
            path, kind = _resolve_variable(name)
        except _EnvProblem as exc:
            problems.append(str(exc))
            continue
        items.append((name, path, kind, environ[name]))
    secret_in_json = False
    for name, path, kind, value in sorted(items, key=_sort_key):
        try:
            if _apply_one(merged, origins, name, path, kind, value):
                secret_in_json = True
        except _EnvProblem as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigProblems(problems)
    return merged, secret_in_json


def _apply_one(
    merged: dict[str, Any], origins: Origins, name: str, path: Path, kind: str, raw: str
) -> bool:
    key = key_name(path)
    value: Any = raw
    secret = False
    if kind in ("json", "table") and raw != "":
        try:
            value = json.loads(raw)
        except ValueError:
            what = "an object" if kind == "table" else "a list"
            raise _EnvProblem(
                name, key, f"must be JSON ({what}), e.g. {_json_example(path)}"
            ) from None
        if kind == "table" and not isinstance(value, dict):
            raise _EnvProblem(name, key, f"must be a JSON object, e.g. {_json_example(path)}")
        if path == ("relay",) and not isinstance(value, list):
            raise _EnvProblem(name, key, f"must be a JSON list, e.g. {_json_example(path)}")
        secret = _contains_password(value)
    # Walk to the container, creating tables and extending the relay list.
    node: Any = merged
    for depth, part in enumerate(path[:-1]):
        nxt = path[depth + 1]
        here = path[: depth + 1]
        if isinstance(part, int):
            node = node[part]
            if not isinstance(node, dict):
                raise _EnvProblem(origins.blame(here), key_name(here), "must be a table")
            continue
        if part not in node:
            if raw == "":
                return False  # unsetting a key of a table that is not there
            node[part] = [] if isinstance(nxt, int) else {}
            origins.containers.setdefault(here, name)
        child = node[part]
        if isinstance(nxt, int):
            if not isinstance(child, list):
                raise _EnvProblem(origins.blame(here), key_name(here), _LIST_OF_TABLES)
            if nxt > len(child):
                raise _EnvProblem(
                    name,
                    key_name((*here, nxt)),
                    f"index {nxt} is past the end: {key_name(here)} has {len(child)} "
                    f"entr{'y' if len(child) == 1 else 'ies'}, so a new one is index {len(child)}",
                )
            if nxt == len(child):
                if raw == "":
                    return False
                child.append({})
                origins.containers.setdefault((*here, nxt), name)
        elif not isinstance(child, dict):
            raise _EnvProblem(origins.blame(here), key_name(here), "must be a table")
        node = child
    last = path[-1]
    if isinstance(last, int):
        assert isinstance(node, list)
        if raw == "":
            raise _EnvProblem(name, key, "cannot be unset: remove the entry instead")
        node[last] = value
        origins.json.add(name)
        origins.containers[path] = name
        _record_json_leaves(origins, path, value, name)
    elif raw == "":
        node.pop(last, None)
        origins.leaves[path] = name
    else:
        node[last] = value
        if kind == "scalar":
            origins.leaves[path] = name
        else:
            origins.json.add(name)
            origins.containers[path] = name
            _record_json_leaves(origins, path, value, name)
    return secret


_LIST_OF_TABLES = "must be a list of tables: write [[relay]], not [relay]"


def _json_example(path: Path) -> str:
    if path == ("relay",):
        return '[{"host": "smtp.example.com"}]'
    if path[0] == "relay" and len(path) == 2:
        return '{"host": "smtp.example.com"}'
    if len(path) == 1:
        return '{"mode": "direct"}' if path[0] == "general" else '{"KEY": "VALUE"}'
    if path[-1] == "password_command":
        return '["/usr/bin/pass", "smtp"]'
    return '["*@example.org"]'


# --------------------------------------------------------------------------- validation


def _schema_at(path: Path) -> Any:
    """The model class of the table at ``path`` (``()`` is the root), or None."""
    model: Any = ConfigModel
    for part in path:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        annotation = _unwrap(model.model_fields[part].annotation)
        model = _model_list_item(annotation) or (annotation if _is_model(annotation) else None)
    return model


def _message(error: Any, path: Path) -> str:
    kind = error["type"]
    if kind == "pysendmail":
        return str(error["ctx"]["msg"])
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        parent = _schema_at(path[:-1])
        word = str(path[-1])
        choices = list(parent.model_fields) if parent is not None else []
        if len(path) == 1:
            for section, model in SECTIONS.items():
                if word in model.model_fields:
                    header = f"[[{section}]]" if section == "relay" else f"[{section}]"
                    return f"unknown section: {word} belongs in {header}"
            return "unknown section" + _did_you_mean(word, choices, brackets=True)
        return "unknown key" + _did_you_mean(word, choices)
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return "must be a table"
    if kind == "list_type":
        return _LIST_OF_TABLES if path == ("relay",) else "must be a list"
    text = str(error["msg"])
    return text[:1].lower() + text[1:]


def explain(exc: ValidationError, origins: Origins) -> list[str]:
    """pydantic's errors as our lines, ``FILE: KEY: message``."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        path: Path = tuple(error["loc"])
        ctx = error.get("ctx") or {}
        if error["type"] == "pysendmail" and "key" in ctx:
            path = (*path, str(ctx["key"]))
        line = f"{origins.blame(path)}: {key_name(path)}: {_message(error, path)}"
        if line not in lines:
            lines.append(line)
    return lines


def validate(path: str, explicit: bool, environ: Mapping[str, str]) -> Validated:
    """Read, merge and validate; raise ``ConfigProblems`` listing every problem found."""
    file_data, exists = read_file(path, explicit)
    origins = Origins(path)
    merged, secret_in_json = apply_environment(file_data, environ, origins)
    for section in SECTIONS:
        merged.setdefault(section, [] if section == "relay" else {})
    try:
        model = ConfigModel(**merged)
    except ValidationError as exc:
        raise ConfigProblems(explain(exc, origins)) from None
    data = to_data(model, path, exists, origins)
    return Validated(model, data, file_data, merged, origins, secret_in_json)


def password_source(relay: RelaySection, index: int, origins: Origins) -> str | None:
    """Where a relay's password comes from, as the plain settings and the snapshot record it."""
    if relay.password is not None:
        variable = origins.variable_for(("relay", index, "password"))
        if variable is None:
            return "inline"
        return f"json:{variable}" if variable in origins.json else f"env:{variable}"
    if relay.password_file is not None:
        return f"file:{relay.password_file}"
    if relay.password_command is not None:
        return "command"
    return None


def to_data(model: ConfigModel, path: str, exists: bool, origins: Origins) -> dict[str, Any]:
    """The validated model as the plain dict of ``settings_from_data`` (no secret in it)."""
    general = model.general.model_dump()
    relays = []
    for index, relay in enumerate(model.relay):
        values = relay.model_dump(exclude={"password", "password_file"})
        values["index"] = index
        values["tls_hostname"] = relay.tls_hostname or relay.host
        values["password_source"] = password_source(relay, index, origins)
        command = relay.password_command
        values["password_command"] = tuple(command) if command is not None else None
        values["senders"] = tuple(relay.senders)
        relays.append(values)
    return {
        "source_path": path,
        "source_exists": exists,
        "general": general,
        "rewrite": model.rewrite.model_dump(),
        "relays": tuple(relays),
        "queue": model.queue.model_dump(),
        "log": model.log.model_dump(),
        "server": server_data(model),
    }


def server_data(model: ConfigModel) -> dict[str, Any]:
    """``[server]`` as plain values, without the users' password hashes."""
    values = model.server.model_dump(exclude={"users"})
    for key in ("listen", "allowed_networks", "allowed_senders", "allowed_recipient_domains"):
        values[key] = tuple(values[key])
    return values


def load_validated(path: str, explicit: bool, environ: Mapping[str, str]) -> Validated:
    """``validate`` and check that the plain settings can be built from its data."""
    validated = validate(path, explicit, environ)
    settings_from_data(validated.data)  # the shape is ours by construction; fail loudly if not
    return validated
