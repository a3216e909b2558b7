"""The aliases file (``/etc/aliases`` syntax): local names to the addresses that receive their mail.

Syntax, as sendmail and Postfix read it::

    # comment
    root: admin@example.com, ops
    ops:  alice@example.com,
          bob@example.com          # a line starting with white space continues
    "name with space": someone@example.com

Names are case-insensitive. A target without ``@`` is a local name: when it is
an alias itself it is expanded in turn (nested aliases), else it stays a local
name and the intake qualifies it with ``general.domain``.

Loops: an alias that reaches itself again ends at the name itself, as sendmail
does, so the common ``root: root, admin@example.com`` keeps a copy for
``root@<domain>``; ``a: b`` plus ``b: a`` gives ``a`` for ``a``. Every alias is
expanded at most once per lookup, so even a hostile file expands in time
linear in its size; results are deduplicated, first occurrence kept.

SECURITY: pysendmail only relays mail. Targets that deliver locally are
refused with a clear message, never run or written: ``|command`` (pipes),
``/path`` (files) and ``:include:`` (other files, which could let whoever
writes them redirect root's mail). Each bad line is reported as
``FILE:LINE: what is wrong`` in ``errors``, and the rest of the file still
works. The compiled form (``to_bytes``, written by ``newaliases``) is
``marshal`` data checked field by field when read back. Only ``marshal``,
``pysendmail.errors`` and ``addresses`` are imported (hot path).
"""

import marshal

from pysendmail.errors import DataError, IOFailure
from pysendmail.message.addresses import (
    check_local_part,
    check_mailbox,
    find_control,
    parse_address_list,
    show,
    split_address,
)

_FORMAT = "pysendmail-aliases"
_VERSION = 1
#: An aliases file larger than this is refused (a real one is a few KiB).
MAX_FILE_SIZE = 16 * 1024 * 1024


def _key(address: str) -> str:
    """What makes two targets the same: a domain is case-insensitive, a bare name too."""
    local, domain = split_address(address)
    if domain is None:
        return local.lower()
    return local + "@" + domain.lower()


def _split_targets(text: str) -> list[str]:
    """Split at commas outside quoted strings, comments and angle brackets."""
    parts: list[str] = []
    start = 0
    depth = 0
    angle = False
    quoted = False
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if quoted:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif c == "<":
            angle = True
        elif c == ">":
            angle = False
        elif c == "," and not depth and not angle:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return [p.strip(" ") for p in parts]


def _unquote(text: str) -> tuple[str, int]:
    """The content of the quoted string at the start of ``text`` and the index after it."""
    out: list[str] = []
    i = 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    return "", -1


class Aliases:
    """A parsed aliases file: ``expand`` a local name, ``errors`` for ``newaliases``."""

    __slots__ = ("_map", "errors", "filename")

    def __init__(
        self,
        entries: dict[str, list[str]] | None = None,
        errors: list[str] | None = None,
        filename: str = "",
    ) -> None:
        self._map: dict[str, list[str]] = {}
        for name, targets in (entries or {}).items():
            self._map[name.lower()] = list(targets)
        self.errors: list[str] = list(errors or [])
        self.filename = filename

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._map

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Aliases):
            return NotImplemented
        return (self._map, self.errors, self.filename) == (other._map, other.errors, other.filename)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Aliases {self.filename!r}: {len(self._map)} names, {len(self.errors)} errors>"

    def targets(self, name: str) -> list[str] | None:
        """The targets written for ``name`` (not expanded), or ``None`` when it is no alias."""
        found = self._map.get(name.lower())
        return list(found) if found is not None else None

    # ----------------------------------------------------------------------- reading

    @classmethod
    def parse(cls, text: str, filename: str) -> "Aliases":
        """Parse aliases-file text; bad lines go to ``errors`` and are left out."""
        errors: list[str] = []
        logical: list[tuple[int, list[str]]] = []
        for number, raw in enumerate(text.split("\n"), 1):
            line = raw[:-1] if raw.endswith("\r") else raw
            stripped = line.strip(" \t")
            if not stripped or stripped.startswith("#"):
                continue
            if line[0] in " \t":
                if not logical:
                    errors.append(f"{filename}:{number}: continuation line with no alias before it")
                    continue
                logical[-1][1].append(stripped)
            else:
                logical.append((number, [line.rstrip(" \t")]))
        entries: dict[str, list[str]] = {}
        first_line: dict[str, int] = {}
        for number, parts in logical:
            where = f"{filename}:{number}"
            # A tab separates like a space; any other control character is refused.
            entry = " ".join(parts).replace("\t", " ")
            c = find_control(entry)
            if c is not None:
                errors.append(f"{where}: control character {c!r} in {show(entry)}")
                continue
            parsed = cls._parse_entry(entry, where, errors)
            if parsed is None:
                continue
            name, targets = parsed
            key = name.lower()
            if key in entries:
                errors.append(
                    f"{where}: alias {show(name)} is defined again (first on line"
                    f" {first_line[key]}); the first definition is used"
                )
                continue
            if targets:
                entries[key] = targets
                first_line[key] = number
        return cls(entries, errors, filename)

    @staticmethod
    def _parse_entry(entry: str, where: str, errors: list[str]) -> tuple[str, list[str]] | None:
        if entry.startswith('"'):
            name, end = _unquote(entry)
            if end < 0:
                errors.append(f"{where}: unterminated quoted alias name")
                return None
            rest = entry[end:].lstrip(" ")
            if not rest.startswith(":"):
                errors.append(f"{where}: no ':' after the alias name {show(name)}")
                return None
            rest = rest[1:]
        else:
            colon = entry.find(":")
            if colon < 0:
                errors.append(f"{where}: no ':' after the alias name in {show(entry)}")
                return None
            name = entry[:colon].rstrip(" ")
            rest = entry[colon + 1 :]
            if " " in name:
                errors.append(
                    f"{where}: alias name {show(name)} has a space (quote it, or add the ':')"
                )
                return None
        if not name:
            errors.append(f"{where}: empty alias name")
            return None
        if "@" in name:
            errors.append(
                f"{where}: alias name {show(name)} is an address; aliases are local names"
            )
            return None
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            errors.append(f"{where}: alias name {show(name)} is not valid UTF-8")
            return None
        targets: list[str] = []
        seen: set[str] = set()
        raw_targets = [t for t in _split_targets(rest) if t]
        if not raw_targets:
            errors.append(f"{where}: alias {show(name)} has no target")
            return None
        for raw in raw_targets:
            target = _check_target(raw, name, where, errors)
            if target is not None and _key(target) not in seen:
                seen.add(_key(target))
                targets.append(target)
        return name, targets

    @classmethod
    def load(cls, path: str) -> "Aliases":
        """Read and parse the aliases file at ``path``; a missing file is an empty one."""
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_SIZE + 1)
        except FileNotFoundError:
            return cls(filename=path)
        except OSError as exc:
            raise IOFailure(f"cannot read the aliases file {path}: {exc.strerror or exc}") from None
        if len(data) > MAX_FILE_SIZE:
            raise DataError(f"the aliases file {path} is larger than {MAX_FILE_SIZE} octets")
        # Bytes that are not UTF-8 are kept as surrogates: harmless in a comment,
        # reported by line when they are in a name or a target.
        return cls.parse(data.decode("utf-8", "surrogateescape"), path)

    # ----------------------------------------------------------------------- expanding

    def expand(self, name: str) -> list[str]:
        """Every final target of ``name``: nested aliases expanded, loops cut, duplicates dropped.

        A name that is no alias expands to itself. A target that reaches an
        alias already being expanded on the same path ends there, as the name
        itself (sendmail's rule, see the module docstring).
        """
        top = name.lower()
        first = self._map.get(top)
        if first is None:
            return [name]
        result: list[str] = []
        emitted: set[str] = set()

        def emit(address: str) -> None:
            k = _key(address)
            if k not in emitted:
                emitted.add(k)
                result.append(address)

        visited = {top}
        on_path = {top}
        # An explicit stack rather than recursion: a hostile file could nest
        # deeper than Python's recursion limit.
        stack = [(top, iter(first))]
        while stack:
            key, remaining = stack[-1]
            target = next(remaining, None)
            if target is None:
                stack.pop()
                on_path.discard(key)
                continue
            if split_address(target)[1] is not None:
                emit(target)
                continue
            sub = target.lower()
            if sub in on_path:
                emit(target)
                continue
            if sub in visited:
                continue  # expanded once already in this lookup: its targets are in
            nested = self._map.get(sub)
            if nested is None:
                emit(target)
                continue
            visited.add(sub)
            on_path.add(sub)
            stack.append((sub, iter(nested)))
        return result

    # ----------------------------------------------------------------------- compiled form

    def to_bytes(self) -> bytes:
        """The compiled form that ``newaliases`` writes and the hot path reads."""
        entries = [(k, list(v)) for k, v in self._map.items()]
        return marshal.dumps((_FORMAT, _VERSION, self.filename, entries, list(self.errors)))

    @classmethod
    def from_bytes(cls, data: bytes) -> "Aliases":
        """Read a compiled form back; ``DataError`` for anything that is not one."""
        try:
            # The compiled file is written by newaliases next to the aliases
            # file and is exactly as trusted; the structure is checked below.
            obj = marshal.loads(data)  # noqa: S302
        except (ValueError, EOFError, TypeError):
            raise DataError("compiled aliases are corrupt: not marshal data") from None
        if (
            not isinstance(obj, tuple)
            or len(obj) != 5
            or obj[0] != _FORMAT
            or obj[1] != _VERSION
            or not isinstance(obj[2], str)
            or not isinstance(obj[3], list)
            or not isinstance(obj[4], list)
        ):
            raise DataError("compiled aliases are corrupt or of another version: run newaliases")
        entries: dict[str, list[str]] = {}
        for item in obj[3]:
            if (
                not isinstance(item, tuple)
                or len(item) != 2
                or not isinstance(item[0], str)
                or not isinstance(item[1], list)
                or not item[1]
                or not all(isinstance(t, str) and find_control(t) is None for t in item[1])
                or find_control(item[0]) is not None
            ):
                raise DataError("compiled aliases hold a malformed entry: run newaliases")
            entries[item[0]] = item[1]
        if not all(isinstance(e, str) for e in obj[4]):
            raise DataError("compiled aliases hold a malformed error list: run newaliases")
        return cls(entries, obj[4], obj[2])


def _check_target(raw: str, name: str, where: str, errors: list[str]) -> str | None:
    """One target checked, or ``None`` with the reason appended to ``errors``."""
    bare = raw[1:] if raw.startswith('"') else raw
    what = None
    if bare.startswith("|"):
        what = "pipes mail into a command"
    elif bare.startswith("/"):
        what = "writes mail into a file"
    elif bare.lower().startswith(":include:"):
        what = "includes another file (:include:)"
    if what is not None:
        errors.append(
            f"{where}: alias {show(name)}: {show(raw)} {what}; pysendmail only relays"
            " mail, so give addresses instead"
        )
        return None
    try:
        found = parse_address_list(raw)
        if len(found) != 1:
            raise DataError(f"{show(raw)} is not one address")
        target = found[0]
        if split_address(target)[1] is None:
            check_local_part(target)
        else:
            check_mailbox(target)
    except DataError as exc:
        errors.append(f"{where}: alias {show(name)}: {exc}")
        return None
    return target
