"""Password hashes for the sidecar's SMTP AUTH users: make, read, verify.

A user entry is ``NAME:HASH``, in ``server.users`` or one per line in
``server.users_file``. A hash is one of::

    scrypt$N$r$p$SALT$KEY            hashlib.scrypt, N = 2**14, r = 8, p = 1 by default
    pbkdf2_sha256$ROUNDS$SALT$KEY    hashlib.pbkdf2_hmac("sha256"), 600,000 rounds by default

with SALT (16 random bytes) and KEY (32 bytes) in base64. Make one with
``pysendmail hash-password NAME`` or, without pysendmail installed::

    python3 -c 'import base64,getpass,hashlib,os; s=os.urandom(16); \\
      k=hashlib.scrypt(getpass.getpass().encode(), salt=s, n=16384, r=8, p=1, dklen=32); \\
      e=lambda b: base64.b64encode(b).decode(); print(f"NAME:scrypt$16384$8$1${e(s)}${e(k)}")'

What this module must never do: keep, log or put into an exception message a
password or a hash; compare a key other than in constant time; let a crafted
hash make scrypt or PBKDF2 run for minutes or take gigabytes (the parameters
are bounded).

SECURITY: an unknown user costs the same work as a known one (a dummy hash is
verified), so the reply time does not tell which names exist. Passwords are
bytes as the client sent them (UTF-8 in practice); nothing is normalised.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import stat

from pysendmail.errors import ConfigError

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
PBKDF2_ROUNDS = 600_000
SALT_BYTES = 16
KEY_BYTES = 32
#: Bounds on what a hash may ask for (scrypt needs 128 * N * r * p bytes).
MAX_SCRYPT_MEMORY = 256 * 1024 * 1024
MAX_PBKDF2_ROUNDS = 10_000_000
MAX_USERS_FILE = 1024 * 1024
MAX_NAME = 256
MAX_PASSWORD = 1024


class HashError(ValueError):
    """A hash that does not parse or asks for too much work (the message never quotes it)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise HashError("the salt or key is not base64") from None


def hash_password(password: str | bytes, *, scheme: str = "scrypt") -> str:
    """A new salted hash of ``password`` (``scrypt`` or ``pbkdf2_sha256``)."""
    secret = password.encode("utf-8") if isinstance(password, str) else password
    salt = os.urandom(SALT_BYTES)
    if scheme == "scrypt":
        key = hashlib.scrypt(
            secret,
            salt=salt,
            n=SCRYPT_N,
            r=SCRYPT_R,
            p=SCRYPT_P,
            dklen=KEY_BYTES,
            maxmem=MAX_SCRYPT_MEMORY,
        )
        return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"
    if scheme == "pbkdf2_sha256":
        key = hashlib.pbkdf2_hmac("sha256", secret, salt, PBKDF2_ROUNDS, KEY_BYTES)
        return f"pbkdf2_sha256${PBKDF2_ROUNDS}${_b64(salt)}${_b64(key)}"
    raise ValueError(f"unknown scheme {scheme!r}: use scrypt or pbkdf2_sha256")


def _number(text: str, low: int, high: int) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 12):
        raise HashError("a parameter is not a number")
    value = int(text)
    if not low <= value <= high:
        raise HashError("a parameter is out of range")
    return value


def check_hash(hashed: str) -> None:
    """Raise ``HashError`` unless ``hashed`` is a hash this module can verify."""
    _derive_parameters(hashed)


def _derive_parameters(hashed: str) -> tuple[str, tuple[int, ...], bytes, bytes]:
    parts = hashed.split("$")
    if parts[0] == "scrypt" and len(parts) == 6:
        n = _number(parts[1], 2, 2**20)
        if n & (n - 1):
            raise HashError("scrypt's N must be a power of two")
        r = _number(parts[2], 1, 64)
        p = _number(parts[3], 1, 16)
        if 128 * n * r * p > MAX_SCRYPT_MEMORY // 2:
            raise HashError("the scrypt parameters need too much memory")
        params: tuple[int, ...] = (n, r, p)
    elif parts[0] == "pbkdf2_sha256" and len(parts) == 4:
        params = (_number(parts[1], 1000, MAX_PBKDF2_ROUNDS),)
    else:
        raise HashError("not a scrypt$... or pbkdf2_sha256$... hash")
    salt = _unb64(parts[-2])
    key = _unb64(parts[-1])
    if not salt or not 16 <= len(key) <= 64:
        raise HashError("the salt or key has the wrong length")
    return parts[0], params, salt, key


def verify_password(hashed: str, password: bytes) -> bool:
    """True when ``password`` matches ``hashed``; False for any mismatch or bad hash."""
    try:
        scheme, params, salt, key = _derive_parameters(hashed)
    except HashError:
        return False
    if len(password) > MAX_PASSWORD:
        return False
    if scheme == "scrypt":
        n, r, p = params
        derived = hashlib.scrypt(
            password, salt=salt, n=n, r=r, p=p, dklen=len(key), maxmem=MAX_SCRYPT_MEMORY
        )
    else:
        derived = hashlib.pbkdf2_hmac("sha256", password, salt, params[0], len(key))
    return hmac.compare_digest(derived, key)


#: Verified for an unknown user, so that it costs as much as a known one.
_DUMMY = (
    f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(b'pysendmail-dummy')}${_b64(bytes(KEY_BYTES))}"
)


class Users:
    """The AUTH users: name → hash. ``check(name, password)`` is the only question asked."""

    __slots__ = ("_hashes",)

    def __init__(self, hashes: dict[str, str] | None = None) -> None:
        self._hashes = dict(hashes or {})

    def __len__(self) -> int:
        return len(self._hashes)

    def __contains__(self, name: object) -> bool:
        return name in self._hashes

    def names(self) -> list[str]:
        return sorted(self._hashes)

    def check(self, name: bytes, password: bytes) -> bool:
        """Whether ``name`` may log in with ``password`` (constant work for unknown names)."""
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        hashed = self._hashes.get(text) if text and len(text) <= MAX_NAME else None
        if hashed is None:
            verify_password(_DUMMY, password)
            return False
        return verify_password(hashed, password)

    def fingerprint(self) -> dict[str, str]:
        """Name → a short digest of the hash: to tell which users changed, never the hash."""
        return {
            name: hashlib.sha256(hashed.encode()).hexdigest()[:12]
            for name, hashed in self._hashes.items()
        }


def parse_entry(entry: str, where: str) -> tuple[str, str]:
    """``NAME:HASH`` → (name, hash); ``ConfigError`` naming ``where`` (never the hash)."""
    name, colon, hashed = entry.partition(":")
    if not colon or not name or len(name) > MAX_NAME or not name.isprintable() or " " in name:
        raise ConfigError(f"{where}: is not NAME:HASH")
    try:
        check_hash(hashed)
    except HashError as exc:
        raise ConfigError(f"{where}: user {name!r}: bad password hash: {exc}") from None
    return name, hashed


def load_users(entries: list[str], users_file: str | None, source: str) -> tuple[Users, list[str]]:
    """The users from ``server.users`` and ``server.users_file``; and warnings for the log.

    ``source`` names the configuration for messages. Raises ``ConfigError``
    when an entry or the file is unusable. A name given twice keeps the last.
    """
    hashes: dict[str, str] = {}
    warnings: list[str] = []
    for index, entry in enumerate(entries):
        name, hashed = parse_entry(entry, f"{source}: server.users[{index}]")
        hashes[name] = hashed
    if users_file is not None:
        text, mode = _read_users_file(users_file)
        if mode & stat.S_IROTH:
            warnings.append(
                f"{users_file}: server.users_file: warning: readable by every user "
                f"(mode {mode:04o}); chmod o-r it"
            )
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, hashed = parse_entry(line, f"{users_file}: line {number}")
            hashes[name] = hashed
    return Users(hashes), warnings


def _read_users_file(path: str) -> tuple[str, int]:
    where = f"{path}: server.users_file"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{where}: is not a regular file")
        raw = os.read(fd, MAX_USERS_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_USERS_FILE:
        raise ConfigError(f"{where}: is larger than 1 MiB")
    try:
        return raw.decode("utf-8"), stat.S_IMODE(st.st_mode)
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: is not valid UTF-8") from None
