"""The snapshot: written after validation, read only while nothing changed, trusted carefully.

A hit is proven by making full validation impossible (the loader raises) and
getting the settings anyway; a miss, by counting validations.
"""

import contextlib
import json
import marshal
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pysendmail.config import Settings, load_settings, loader, snapshot
from pysendmail.errors import ConfigError
from tests.support.hotpath import HEAVY

Write = Callable[..., str]
REPO = Path(__file__).resolve().parents[2]
SECRET = "correct horse battery staple"
NOBODY = 65534
CONFIG = """
[general]
hostname = "mail.example.com"
domain = "example.com"

[[relay]]
host = "smtp.example.com"
port = 587
user = "me"
password = "correct horse battery staple"
"""


class Validations:
    """Counts full validations, and can forbid them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.forbidden = False
        real = loader.load_validated

        def counting(*args: object, **kwargs: object) -> loader.Validated:
            if self.forbidden:
                raise AssertionError("full validation ran although the snapshot was valid")
            self.count += 1
            return real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(loader, "load_validated", counting)

    def after(self, action: Callable[[], Settings]) -> int:
        before = self.count
        action()
        return self.count - before


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> Validations:
    return Validations(monkeypatch)


def snapshot_files(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("*.snapshot"))


def test_a_snapshot_is_written_and_then_used(
    write: Write, env: dict[str, str], cache_dir: Path, validations: Validations
) -> None:
    path = write(CONFIG)
    first = load_settings(path, env)
    assert validations.count == 1
    (snap,) = snapshot_files(cache_dir)
    assert snap.name.startswith("pysendmail.toml-")
    assert snap.stat().st_mode & 0o777 == 0o644
    validations.forbidden = True
    assert load_settings(path, env) == first


def test_the_snapshot_holds_no_secret(write: Write, env: dict[str, str], cache_dir: Path) -> None:
    environ = {**env, "PYSENDMAIL_RELAY__1__HOST": "b.example.com"}
    environ |= {"PYSENDMAIL_RELAY__1__USER": "u", "PYSENDMAIL_RELAY__1__PASSWORD": "env-" + SECRET}
    load_settings(write(CONFIG), environ)
    (snap,) = snapshot_files(cache_dir)
    raw = snap.read_bytes()
    assert SECRET.encode() not in raw
    assert b"PYSENDMAIL_RELAY__1__PASSWORD" in raw  # only its name: the source to read


def test_a_changed_password_variable_keeps_the_snapshot_but_an_emptied_one_does_not(
    write: Write, env: dict[str, str], validations: Validations
) -> None:
    path = write(CONFIG.replace('password = "correct horse battery staple"', ""))
    environ = {**env, "PYSENDMAIL_RELAY__0__PASSWORD": "one"}
    load_settings(path, environ)
    assert (
        validations.after(
            lambda: load_settings(path, {**environ, "PYSENDMAIL_RELAY__0__PASSWORD": "two"})
        )
        == 0
    )
    with pytest.raises(ConfigError, match=r"relay\[0\]\.user: is set but there is no password"):
        load_settings(path, {**environ, "PYSENDMAIL_RELAY__0__PASSWORD": ""})


def test_a_password_inside_json_prevents_the_snapshot(
    write: Write, env: dict[str, str], cache_dir: Path
) -> None:
    relay = json.dumps([{"host": "smtp.example.com", "user": "me", "password": SECRET}])
    load_settings(write(""), {**env, "PYSENDMAIL_RELAY": relay})
    assert snapshot_files(cache_dir) == []


def bump_mtime(path: str) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_touching_the_config_invalidates(
    write: Write, env: dict[str, str], validations: Validations
) -> None:
    path = write(CONFIG)
    load_settings(path, env)
    bump_mtime(path)
    assert validations.after(lambda: load_settings(path, env)) == 1
    assert validations.after(lambda: load_settings(path, env)) == 0


def test_an_edit_of_the_same_size_with_the_old_mtime_still_invalidates(
    write: Write, env: dict[str, str], validations: Validations
) -> None:
    path = write(CONFIG)
    load_settings(path, env)
    st = os.stat(path)
    write(CONFIG.replace("port = 587", "port = 465"))  # same size, same inode
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert load_settings(path, env).relays[0].port == 465


def test_a_config_replaced_by_rename_invalidates(
    write: Write, env: dict[str, str], tmp_path: Path
) -> None:
    path = write(CONFIG)
    load_settings(path, env)
    new = write(CONFIG.replace("example.com", "example.org"), "new.toml")
    st = os.stat(path)
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(new, path)
    assert load_settings(path, env).general.domain == "example.org"


@pytest.mark.parametrize(
    "change",
    [
        {"PYSENDMAIL_GENERAL__DOMAIN": "example.net"},
        {"PYSENDMAIL_LOG__LEVEL": "debug"},
        {"PYSENDMAIL_CONFIG_UNRELATED_BUT_PREFIXED": "1"},
    ],
)
def test_any_pysendmail_variable_invalidates(
    write: Write, env: dict[str, str], validations: Validations, change: dict[str, str]
) -> None:
    path = write(CONFIG)
    load_settings(path, env)
    before = validations.count
    with contextlib.suppress(ConfigError):  # an unknown variable: validated, and refused
        load_settings(path, {**env, **change})
    assert validations.count == before + 1


def test_other_variables_do_not_invalidate(
    write: Write, env: dict[str, str], validations: Validations
) -> None:
    path = write(CONFIG)
    load_settings(path, env)
    assert validations.after(lambda: load_settings(path, {**env, "HOME": "/elsewhere"})) == 0


def test_a_changed_aliases_file_invalidates(
    write: Write, env: dict[str, str], tmp_path: Path, validations: Validations
) -> None:
    aliases = tmp_path / "aliases"
    aliases.write_text("root: admin@example.com\n")
    path = write(CONFIG.replace("[general]", f'[general]\naliases_file = "{aliases}"'))
    load_settings(path, env)
    assert validations.after(lambda: load_settings(path, env)) == 0
    aliases.write_text("root: other@example.com\n")
    assert validations.after(lambda: load_settings(path, env)) == 1
    aliases.unlink()
    with pytest.raises(ConfigError, match=r"general\.aliases_file: does not exist"):
        load_settings(path, env)


def test_each_config_file_has_its_own_snapshot(
    write: Write, env: dict[str, str], cache_dir: Path, validations: Validations
) -> None:
    one = write(CONFIG, "one.toml")
    two = write(CONFIG.replace("example.com", "example.org"), "two.toml")
    assert load_settings(one, env).general.domain == "example.com"
    assert load_settings(two, env).general.domain == "example.org"
    assert len(snapshot_files(cache_dir)) == 2
    validations.forbidden = True
    assert load_settings(one, env).general.domain == "example.com"
    assert load_settings(two, env).general.domain == "example.org"


def test_a_missing_explicit_file_is_an_error_even_with_a_snapshot(
    write: Write, env: dict[str, str]
) -> None:
    path = write(CONFIG)
    load_settings(path, env)
    os.unlink(path)
    with pytest.raises(ConfigError, match="cannot read: no such file"):
        load_settings(path, env)


# --------------------------------------------------------------------------- trust


@pytest.fixture
def foreign(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """Make a path belong to another user (root: chown; otherwise: pretend to be someone else)."""

    def make(path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
        else:
            other = os.geteuid() + 1
            monkeypatch.setattr(os, "geteuid", lambda: other)

    return make


def untrusted_cases() -> list[str]:
    return [
        "file-owned-by-another-user",
        "file-group-writable",
        "file-world-writable",
        "dir-owned-by-another-user",
        "dir-world-writable",
        "file-is-a-symlink",
    ]


@pytest.mark.parametrize("case", untrusted_cases())
def test_an_untrusted_snapshot_is_ignored(
    write: Write,
    env: dict[str, str],
    cache_dir: Path,
    validations: Validations,
    foreign: Callable[[Path], None],
    case: str,
) -> None:
    path = write(CONFIG)
    load_settings(path, env)
    (snap,) = snapshot_files(cache_dir)
    if case == "file-owned-by-another-user":
        foreign(snap)
    elif case == "file-group-writable":
        snap.chmod(0o664)
    elif case == "file-world-writable":
        snap.chmod(0o646)
    elif case == "dir-owned-by-another-user":
        foreign(cache_dir)
    elif case == "dir-world-writable":
        cache_dir.chmod(0o777)
    elif case == "file-is-a-symlink":
        real = cache_dir / "real"
        snap.rename(real)
        snap.symlink_to(real)
    assert validations.after(lambda: load_settings(path, env)) == 1


def test_garbage_in_a_snapshot_is_ignored_and_replaced(
    write: Write, env: dict[str, str], cache_dir: Path, validations: Validations
) -> None:
    path = write(CONFIG)
    load_settings(path, env)
    (snap,) = snapshot_files(cache_dir)
    snap.write_bytes(b"\x00garbage" * 10)
    snap.chmod(0o644)
    assert validations.after(lambda: load_settings(path, env)) == 1
    assert validations.after(lambda: load_settings(path, env)) == 0


def test_a_snapshot_of_another_shape_is_ignored(
    write: Write, env: dict[str, str], cache_dir: Path, validations: Validations
) -> None:
    path = write(CONFIG)
    load_settings(path, env)
    (snap,) = snapshot_files(cache_dir)
    key, aliases, identity, data = marshal.loads(snap.read_bytes())
    del data["general"]["domain"]  # as if written by another version of the schema
    snap.write_bytes(marshal.dumps((key, aliases, identity, data)))
    assert validations.after(lambda: load_settings(path, env)) == 1
    assert load_settings(path, env).general.domain == "example.com"


def test_failing_to_write_the_snapshot_is_silent(write: Write, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    settings = load_settings(write(CONFIG), {"PYSENDMAIL_CACHE_DIR": str(blocker / "cache")})
    assert settings.general.domain == "example.com"


def test_use_snapshot_false_neither_reads_nor_writes(
    write: Write, env: dict[str, str], cache_dir: Path
) -> None:
    load_settings(write(CONFIG), env, use_snapshot=False)
    assert not cache_dir.exists()


# --------------------------------------------------------------------------- where


def test_snapshot_directories(monkeypatch: pytest.MonkeyPatch) -> None:
    assert snapshot.snapshot_dirs({"PYSENDMAIL_CACHE_DIR": "/srv/cache"}) == ["/srv/cache"]
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert snapshot.snapshot_dirs({"XDG_CACHE_HOME": "/x"}) == ["/var/cache/pysendmail"]
    monkeypatch.setattr(os, "geteuid", lambda: 33)  # www-data: a system user
    assert snapshot.snapshot_dirs({"HOME": "/var/www"}) == ["/var/cache/pysendmail"]
    monkeypatch.setattr(os, "geteuid", lambda: NOBODY)
    assert snapshot.snapshot_dirs({}) == ["/var/cache/pysendmail"]


def test_a_normal_user_also_gets_a_cache_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    import pwd

    class Entry:
        pw_dir = "/home/alice"

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: Entry())
    # $HOME is not trusted for this: the password database says where home is
    assert snapshot.snapshot_dirs({"HOME": "/tmp/evil"}) == [
        "/var/cache/pysendmail",
        "/home/alice/.cache/pysendmail",
    ]
    assert snapshot.snapshot_dirs({"XDG_CACHE_HOME": "/home/alice/xdg"}) == [
        "/var/cache/pysendmail",
        "/home/alice/xdg/pysendmail",
    ]


# --------------------------------------------------------------------------- the hot path


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory that every user can traverse (pytest's own are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="pysendmail-config-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


FORBIDDEN = HEAVY | {"subprocess"}
ALLOWED = {
    "os",
    "os.path",
    "posixpath",
    "genericpath",
    "stat",
    "_stat",
    "_collections_abc",
    "sys",
    "time",
    "pwd",
    "grp",
    "errno",
    "io",
    "codecs",
    "marshal",
    "fcntl",
    "syslog",
    "binascii",
    "posix",
    "pysendmail",
    "pysendmail.errors",
    "pysendmail.config",
    "pysendmail.config.settings",
    "pysendmail.config.snapshot",
    "pysendmail.config.secrets",
}


def modules_after(code: str) -> set[str]:
    """The modules loaded by ``code`` in a fresh interpreter without site-packages."""
    prologue = f"import sys; sys.path.insert(0, {str(REPO)!r}); "
    epilogue = "; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", prologue + code + epilogue],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = done.stdout.strip().splitlines()
    return set(lines[-1].split())


def test_the_hot_path_imports_nothing_heavy(write: Write, env: dict[str, str]) -> None:
    path = write(CONFIG)
    load_settings(path, env)  # writes the snapshot
    code = (
        "import pysendmail.config, pysendmail.config.secrets\n"
        f"s = pysendmail.config.load_settings({path!r}, {env!r})\n"
        "assert s.relays[0].host == 'smtp.example.com' and s.general.domain == 'example.com'\n"
        "print('ok')"
    )
    loaded = modules_after(code)
    baseline = modules_after("pass")
    assert not loaded & FORBIDDEN
    assert loaded - baseline <= ALLOWED, sorted(loaded - baseline - ALLOWED)
    assert "pysendmail.config.loader" not in loaded


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_a_user_who_cannot_read_the_config_gets_it_from_the_snapshot(
    shared_dir: Path,
) -> None:
    config = shared_dir / "pysendmail.toml"
    config.write_text(CONFIG)
    config.chmod(0o600)  # holds an inline password: root only
    env = {"PYSENDMAIL_CACHE_DIR": str(shared_dir / "cache")}
    code = (
        "import os, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "import pysendmail.config.loader  # before dropping privileges: site-packages are root's\n"
        "from pysendmail.config import load_settings\n"
        "from pysendmail.errors import ConfigError\n"
        f"os.setgid({NOBODY}); os.setuid({NOBODY})\n"
        "try:\n"
        f"    s = load_settings({str(config)!r}, {env!r})\n"
        "    print('domain', s.general.domain, s.relays[0].password_source)\n"
        "except ConfigError as exc:\n"
        "    print('error', exc)\n"
    )

    def run_as_nobody() -> str:
        done = subprocess.run(
            [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    assert run_as_nobody() == f"error {config}: cannot read: Permission denied"
    load_settings(str(config), env)  # root validates and writes the snapshot
    assert run_as_nobody() == "domain example.com inline"


def test_no_snapshot_when_the_config_changes_while_it_is_validated(
    write: Write, env: dict[str, str], cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(CONFIG)
    real = loader.load_validated

    def racing(*args: object, **kwargs: object) -> loader.Validated:
        validated = real(*args, **kwargs)  # type: ignore[arg-type]
        bump_mtime(path)  # an editor saved the file just now
        return validated

    monkeypatch.setattr(loader, "load_validated", racing)
    assert load_settings(path, env).general.domain == "example.com"
    assert snapshot_files(cache_dir) == []
