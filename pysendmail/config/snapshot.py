"""``load_settings``: the configuration in a few hundred microseconds, via a validated snapshot.

Full validation imports pydantic (a quarter of a second), which is more than the
whole start-up budget of ``sendmail``. So after validating, we store the plain
result with ``marshal`` and, next time, use it as long as nothing it was made
from has changed: the key records the configuration file's identity (path,
device, inode, size, mtime, ctime, mode), this machine's name, pysendmail's
version and the identity of its schema and loader modules, every
``PYSENDMAIL_…`` variable, and the aliases file's identity.
Anything else is a miss, and a miss means full validation, then a new snapshot.

Where: ``$PYSENDMAIL_CACHE_DIR`` when set, else ``/var/cache/pysendmail`` (only
root writes there; everyone reads it), then, for a normal user (uid 1000 or
more), ``$XDG_CACHE_HOME/pysendmail`` or ``~/.cache/pysendmail`` with the home
taken from the password database. System users such as www-data get no
directory of their own: they read what root wrote. The file is named after the
configuration path, so ``-C`` files do not collide.

SECURITY: ``marshal`` must never read hostile bytes, so a snapshot is read only
when it and its directory are owned by root or by the effective user and are
writable by nobody else, opened without following symlinks. It holds no secret:
a relay records where its password comes from, and a password variable counts
in the key only by whether it is empty (a password inside a JSON variable prevents the
snapshot altogether). Failing to write a snapshot is silent: it is a cache.

This module is the ``sendmail`` hot path: it may import only os, marshal and
pysendmail's own light modules at run time (``pwd`` inside a function); the
heavy loader is imported only on a miss.
"""

import marshal
import os

from pysendmail import __version__
from pysendmail.config.settings import Settings, settings_from_data

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from pysendmail.config.loader import Validated

DEFAULT_CONFIG_PATH = "/etc/pysendmail.toml"
DEFAULT_ALIASES_PATH = "/etc/aliases"
SYSTEM_SNAPSHOT_DIR = "/var/cache/pysendmail"
ENV_PREFIX = "PYSENDMAIL_"
MAGIC = "pysendmail-snapshot-1"
MAX_SNAPSHOT_SIZE = 1024 * 1024
#: The first uid of a normal (login) user; system users get no per-user snapshot.
FIRST_NORMAL_UID = 1000
_NOBODY_UID = 65534


def resolve_config_path(
    config_path: "str | None", environ: "Mapping[str, str]"
) -> "tuple[str, bool]":
    """The absolute configuration path, and whether it was asked for (``-C`` or the variable)."""
    from_env = environ.get("PYSENDMAIL_CONFIG", "")
    if config_path is not None:
        if not config_path:
            from pysendmail.errors import ConfigError

            raise ConfigError("-C: the configuration file name is empty")
        return os.path.abspath(config_path), True
    if from_env:
        return os.path.abspath(from_env), True
    return DEFAULT_CONFIG_PATH, False


def file_identity(path: str) -> "tuple[int, ...] | None":
    """What the key records of a file: None when it does not exist."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        # Cannot look: a key that no snapshot holds, so validation reports why.
        return (-1, exc.errno or 0)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


def environment_key(environ: "Mapping[str, str]") -> "tuple[tuple[str, Any], ...]":
    """Every ``PYSENDMAIL_`` variable; a secret one only by whether it is empty.

    The key is stored in the snapshot, which everyone may read: a password or
    the sidecar's password hashes must never end up in it. Neither is part of
    the snapshot's settings, so its mere presence is all the key needs.
    """
    items: list[tuple[str, Any]] = []
    for name in environ:
        if name.startswith(ENV_PREFIX):
            if name.upper().endswith(("__PASSWORD", "__USERS")):
                items.append((name, bool(environ[name])))
            else:
                items.append((name, environ[name]))
    items.sort()
    return tuple(items)


def snapshot_key(path: str, explicit: bool, environ: "Mapping[str, str]") -> "tuple[Any, ...]":
    """The key a snapshot must match; a ConfigError when an asked-for file is missing."""
    identity = file_identity(path)
    if identity is None and explicit:
        from pysendmail.errors import ConfigError

        raise ConfigError(f"{path}: cannot read: no such file")
    return (
        MAGIC,
        __version__,
        os.uname().nodename,
        path,
        identity,
        environment_key(environ),
        _code_identity(),
    )


def _code_identity() -> "tuple[Any, ...]":
    # The schema and the loader decide what a configuration means: a snapshot
    # made by other code (an upgrade, a patched default) is not ours to trust.
    here = os.path.dirname(__file__)
    return tuple(file_identity(f"{here}/{name}") for name in ("model.py", "loader.py"))


def snapshot_name(path: str) -> str:
    """A file name for the snapshot of the configuration at ``path``."""
    base = "".join(
        c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in os.path.basename(path)
    )[:64]
    # FNV-1a: a few microseconds in pure Python, where importing binascii costs
    # half a millisecond. A collision only costs a miss: the key holds the path.
    digest = 0x811C9DC5
    for byte in os.fsencode(path):
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFFFFFF
    return f"{base.lstrip('.')}-{digest:08x}.snapshot"


def snapshot_dirs(environ: "Mapping[str, str]") -> "list[str]":
    """Where snapshots are looked for, in order; the first writable one is written."""
    override = environ.get("PYSENDMAIL_CACHE_DIR", "")
    if override:
        return [os.path.abspath(override)]
    dirs = [SYSTEM_SNAPSHOT_DIR]
    euid = os.geteuid()
    if euid >= FIRST_NORMAL_UID and euid != _NOBODY_UID:
        xdg = environ.get("XDG_CACHE_HOME", "")
        if xdg.startswith("/"):
            dirs.append(xdg.rstrip("/") + "/pysendmail")
        else:
            import pwd

            try:
                home = pwd.getpwuid(euid).pw_dir
            except KeyError:
                home = ""
            if home.startswith("/") and home != "/":
                dirs.append(home.rstrip("/") + "/.cache/pysendmail")
    return dirs


def _trusted(st: "os.stat_result") -> bool:
    return st.st_uid in (0, os.geteuid()) and not st.st_mode & 0o022


def _open_dir(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _read_trusted(directory: str, name: str) -> "bytes | None":
    try:
        dfd = _open_dir(directory)
    except OSError:
        return None
    try:
        if not _trusted(os.fstat(dfd)):
            return None
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
        try:
            st = os.fstat(fd)
            if (st.st_mode & 0o170000) != 0o100000 or not _trusted(st):
                return None
            if st.st_size > MAX_SNAPSHOT_SIZE:
                return None
            chunks = []
            total = 0
            while chunk := os.read(fd, 65536):
                total += len(chunk)
                if total > MAX_SNAPSHOT_SIZE:
                    return None
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)
    except OSError:
        return None
    finally:
        os.close(dfd)


def read_cache(dirs: "list[str]", name: str) -> "bytes | None":
    """The bytes of cache file ``name`` from the first directory where it is trusted, else None.

    Trusted: the directory and the file belong to root or to us and are
    writable by nobody else, so marshal data in it may be loaded.
    """
    for directory in dirs:
        raw = _read_trusted(directory, name)
        if raw is not None:
            return raw
    return None


def read_snapshot(dirs: "list[str]", name: str, key: "tuple[Any, ...]") -> "Settings | None":
    """The settings of the first trusted snapshot whose key matches, else None."""
    for directory in dirs:
        raw = _read_trusted(directory, name)
        if raw is None:
            continue
        try:
            # Safe: _read_trusted checked that only root or we could have written it.
            snap = marshal.loads(raw)  # noqa: S302
            if type(snap) is not tuple or len(snap) != 4 or snap[0] != key:
                continue
            _, aliases_path, aliases_identity, data = snap
            if type(aliases_path) is not str or file_identity(aliases_path) != aliases_identity:
                continue
            return settings_from_data(data)
        except (ValueError, TypeError, EOFError, KeyError, AttributeError):
            continue
    return None


def _ensure_dir(directory: str) -> None:
    # root's directories are for everyone to read; a user's own cache is private
    # (as XDG asks), and its parent is made only when it is missing.
    if directory == SYSTEM_SNAPSHOT_DIR or os.geteuid() == 0:
        mode = 0o755
    else:
        mode = 0o700
        parent = os.path.dirname(directory)
        if not os.path.isdir(parent):
            os.mkdir(parent, 0o700)
    if not os.path.isdir(directory):
        os.mkdir(directory, mode)


def _unlink_quietly(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        return


def write_snapshot(dirs: "list[str]", name: str, payload: bytes) -> "str | None":
    """Store ``payload`` as ``name`` in the first directory that takes it; its path, or None."""
    for directory in dirs:
        try:
            _ensure_dir(directory)
            dfd = _open_dir(directory)
        except OSError:
            continue
        tmp = f".{name}.{os.getpid()}.tmp"
        try:
            if not _trusted(os.fstat(dfd)):
                continue
            fd = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o644,
                dir_fd=dfd,
            )
            try:
                os.fchmod(fd, 0o644)  # whatever the umask: it holds no secret
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            return os.path.join(directory, name)
        except OSError:
            _unlink_quietly(tmp, dfd)
        finally:
            os.close(dfd)
    return None


def save_snapshot(
    validated: "Validated", key: "tuple[Any, ...]", explicit: bool, environ: "Mapping[str, str]"
) -> "tuple[str | None, str]":
    """Write the snapshot of ``validated`` when it may be; (its path or None, why not)."""
    if validated.secret_in_environment:
        return None, "a password is inside a JSON variable (use ...__PASSWORD or a file)"
    path = validated.data["source_path"]
    if file_identity(path) != key[4] or environment_key(environ) != key[5]:
        return None, "the configuration changed while it was being read"
    aliases_path = validated.data["general"]["aliases_file"]
    aliases_identity = file_identity(aliases_path)
    if aliases_identity is None and aliases_path != DEFAULT_ALIASES_PATH:
        return None, "the aliases file disappeared while the configuration was being read"
    payload = marshal.dumps((key, aliases_path, aliases_identity, validated.data))
    dirs = snapshot_dirs(environ)
    written = write_snapshot(dirs, snapshot_name(path), payload)
    if written is None:
        return None, "no snapshot directory is writable (" + ", ".join(dirs) + ")"
    return written, ""


def load_settings(
    config_path: "str | None" = None,
    environ: "Mapping[str, str] | None" = None,
    *,
    use_snapshot: bool = True,
) -> Settings:
    """The validated configuration: from a matching snapshot, else by full validation.

    ``config_path`` is ``-C``'s value (None when not given); ``environ`` defaults
    to ``os.environ``. Raises ``pysendmail.errors.ConfigError`` (exit 78) with
    one line ``FILE: KEY: what is wrong``; the ``problems`` attribute of the
    loader's subclass lists them all. After a full validation the snapshot is
    written when it may be (``use_snapshot=False`` neither reads nor writes it).
    """
    if environ is None:
        environ = os.environ
    path, explicit = resolve_config_path(config_path, environ)
    key = snapshot_key(path, explicit, environ)
    if use_snapshot:
        settings = read_snapshot(snapshot_dirs(environ), snapshot_name(path), key)
        if settings is not None:
            return settings
    from pysendmail.config.loader import load_validated

    validated = load_validated(path, explicit, environ)
    if use_snapshot:
        save_snapshot(validated, key, explicit, environ)
    return settings_from_data(validated.data)
