"""The AUTH users' hashes: made, checked, read from the configuration, never shown."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from pysendmail.cli import Streams
from pysendmail.cli.admin import main as admin_main
from pysendmail.errors import ConfigError
from pysendmail.server.passwords import (
    HashError,
    Users,
    check_hash,
    hash_password,
    load_users,
    verify_password,
)


@pytest.mark.parametrize("scheme", ["scrypt", "pbkdf2_sha256"])
def test_a_hash_verifies_its_password_only(scheme: str) -> None:
    hashed = hash_password("pässword", scheme=scheme)
    assert hashed.startswith(scheme + "$")
    assert verify_password(hashed, "pässword".encode())
    assert not verify_password(hashed, b"password")
    assert not verify_password(hashed, b"")
    assert hash_password("pässword", scheme=scheme) != hashed  # salted


@pytest.mark.parametrize(
    ("hashed", "why"),
    [
        ("md5$abc", "not a scrypt"),
        ("scrypt$1000$8$1$c2FsdA==$" + "A" * 44, "power of two"),
        ("scrypt$1048576$64$16$c2FsdA==$" + "A" * 44, "too much memory"),
        ("scrypt$16384$8$1$not base64!$" + "A" * 44, "not base64"),
        ("scrypt$16384$8$1$c2FsdA==$QUJD", "wrong length"),
        ("pbkdf2_sha256$99999999999$c2FsdA==$" + "A" * 44, "out of range"),
        ("pbkdf2_sha256$x$c2FsdA==$" + "A" * 44, "not a number"),
    ],
)
def test_bad_hashes_are_refused_and_never_verify(hashed: str, why: str) -> None:
    with pytest.raises(HashError, match=why):
        check_hash(hashed)
    assert verify_password(hashed, b"anything") is False


def test_an_unknown_user_costs_as_much_as_a_known_one() -> None:
    users = Users({"app": hash_password("secret")})
    assert users.check(b"app", b"secret")
    assert not users.check(b"app", b"wrong")
    timings = {}
    for name in (b"app", b"nobody", b"\xff\xfe"):
        started = time.perf_counter()
        assert not users.check(name, b"wrong")
        timings[name] = time.perf_counter() - started
    # scrypt dominates: an unknown name is not answered in a fraction of the time.
    assert timings[b"nobody"] > timings[b"app"] / 3
    assert timings[b"\xff\xfe"] > timings[b"app"] / 3


def test_users_from_the_configuration_and_a_file(tmp_path: Path) -> None:
    first, second, third = (hash_password(p, scheme="pbkdf2_sha256") for p in ("1", "2", "3"))
    path = tmp_path / "users"
    path.write_text(f"# the sidecar's users\n\nweb:{second}\n  cron:{third}  \n")
    path.chmod(0o644)
    users, warnings = load_users([f"web:{first}", f"ops:{first}"], str(path), "/etc/p.toml")
    assert users.names() == ["cron", "ops", "web"]
    assert users.check(b"web", b"2") and not users.check(b"web", b"1")  # the file wins
    assert warnings == [
        f"{path}: server.users_file: warning: readable by every user (mode 0644); chmod o-r it"
    ]
    path.chmod(0o640)
    assert load_users([], str(path), "/etc/p.toml")[1] == []


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("web:scrypt$1$2$3$x$y\n", "line 1: user 'web': bad password hash"),
        ("\n# c\nno-colon-here\n", "line 3: is not NAME:HASH"),
        ("web:hunter2\n", "line 1: user 'web': bad password hash"),
    ],
)
def test_a_bad_users_file_names_the_line_not_the_secret(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "users"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_users([], str(path), "/etc/p.toml")
    assert str(caught.value).startswith(f"{path}: {expected}")
    assert "hunter2" not in str(caught.value) and "scrypt$1$2" not in str(caught.value)


def test_a_missing_users_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server\.users_file: cannot read: No such file"):
        load_users([], str(tmp_path / "none"), "/etc/p.toml")


def run_admin(argv: list[str], stdin: bytes) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = admin_main(argv, Streams(io.BytesIO(stdin), out, err, {}))
    return status, out.getvalue(), err.getvalue()


def test_pysendmail_hash_password() -> None:
    status, out, err = run_admin(["hash-password", "app"], b"s3cret-pass\n")
    assert (status, err) == (0, "")
    name, hashed = out.rstrip("\n").split(":", 1)
    assert name == "app" and verify_password(hashed, b"s3cret-pass")
    status, out, _ = run_admin(["hash-password", "--scheme", "pbkdf2_sha256"], b"x\n")
    assert status == 0 and out.startswith("pbkdf2_sha256$")
    assert "x" not in out.split("$")[1:2]
    status, out, err = run_admin(["hash-password", "a:b"], b"x\n")
    assert (status, out) == (64, "")
    assert "must not be empty or hold a colon" in err
    status, out, err = run_admin(["hash-password", "app"], b"\n")
    assert (status, out) == (64, "")
    assert "the password must be 1 to" in err
