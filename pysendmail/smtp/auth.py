"""SASL mechanisms for SMTP AUTH (RFC 4954): a registry of tiny classes, as Net::SMTP has.

Each mechanism knows only how to answer: its optional initial response and its
answer to each server challenge, as raw bytes. The client does the base64 on
both sides, the I/O and the mapping of replies to errors, so the mechanisms are
tested byte for byte without a server.

PLAIN (RFC 4616), LOGIN (the de-facto mechanism of Outlook-era servers),
CRAM-MD5 (RFC 2195) and XOAUTH2 (Google's and Microsoft's OAuth 2.0 bearer
token, whose "secret" is the access token). ``AUTO_ORDER`` is what
``authtype=None`` tries: CRAM-MD5 first because it keeps the password off the
wire, XOAUTH2 never unless named, because a password is not a token.

SECURITY: the secret never appears in a repr, a str or an error message; the
client redacts the payloads in its trace. A user name with a control character
is refused (it would break PLAIN's NUL separators and XOAUTH2's ^A ones, or a
server's logs), as is a secret that would break its mechanism's framing. A
hostile server cannot make a mechanism answer for ever: each raises
ValueError on a challenge it did not expect.
"""

# No ``typing`` and no ``from __future__`` at run time, and ``hmac`` (with
# ``hashlib`` and OpenSSL behind it) only inside CRAM-MD5: this module is
# loaded with the client, by every ``sendmail`` that relays directly.
from pysendmail.smtp.address import check_argument

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import ClassVar

__all__ = [
    "AUTO_ORDER",
    "MECHANISMS",
    "CramMD5",
    "Login",
    "Mechanism",
    "Plain",
    "XOAuth2",
    "canonical_name",
    "mechanism",
    "select",
]


class Mechanism:
    """Base class: one AUTH exchange for one user and secret; use each instance once."""

    name: "ClassVar[str]" = ""

    __slots__ = ("_challenges", "_secret", "user")

    def __init__(self, user: str, secret: str) -> None:
        check_argument(user, "AUTH user")
        if not user:
            raise ValueError("AUTH user is empty")
        if not isinstance(secret, str):
            raise TypeError(f"AUTH secret must be str, not {type(secret).__name__}")
        self.user = user
        self._secret = secret
        self._challenges = 0

    def initial_response(self) -> bytes | None:
        """Raw bytes for the AUTH line (RFC 4954 initial response), or None to wait for a 334."""
        return None

    def respond(self, challenge: bytes) -> bytes:
        """The raw answer to one base64-decoded server challenge."""
        raise ValueError(f"unexpected {self.name} challenge from the server")

    def _unexpected(self) -> ValueError:
        return ValueError(
            f"the server sent more {self.name} challenges than the mechanism has steps"
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} user={self.user!r}>"

    # The secret stays out of pickles and copies made for debugging too.
    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError(f"{type(self).__name__} holds a secret and cannot be pickled")


class Plain(Mechanism):
    """RFC 4616: "\\0user\\0secret" as the initial response (authorisation identity empty)."""

    name = "PLAIN"
    __slots__ = ()

    def __init__(self, user: str, secret: str) -> None:
        super().__init__(user, secret)
        if "\0" in secret:
            raise ValueError("AUTH secret contains a NUL character, which PLAIN cannot carry")

    def initial_response(self) -> bytes:
        return b"\0" + self.user.encode("utf-8") + b"\0" + self._secret.encode("utf-8")

    def respond(self, challenge: bytes) -> bytes:
        # A client that did not send the initial response gets an empty 334
        # and sends the same credentials then (RFC 4954 section 4).
        self._challenges += 1
        if challenge or self._challenges > 1:
            raise self._unexpected()
        return self.initial_response()


class Login(Mechanism):
    """LOGIN: the user after the first challenge, the secret after the second.

    Servers prompt "Username:" and "Password:"; a prompt recognised
    (case-insensitively) decides the answer, anything else falls back to the
    order. A third challenge is refused.
    """

    name = "LOGIN"
    __slots__ = ()

    _USER_PROMPTS: "ClassVar[frozenset[str]]" = frozenset({"username", "user name", "user"})
    _PASSWORD_PROMPTS: "ClassVar[frozenset[str]]" = frozenset({"password"})

    def respond(self, challenge: bytes) -> bytes:
        self._challenges += 1
        if self._challenges > 2:
            raise self._unexpected()
        prompt = challenge.decode("ascii", "replace").strip(" \t\r\n\0").rstrip(":").lower()
        if prompt in self._USER_PROMPTS:
            return self.user.encode("utf-8")
        if prompt in self._PASSWORD_PROMPTS:
            return self._secret.encode("utf-8")
        if self._challenges == 1:
            return self.user.encode("utf-8")
        return self._secret.encode("utf-8")


class CramMD5(Mechanism):
    """RFC 2195: "user " + hex HMAC-MD5 of the challenge, keyed with the secret."""

    name = "CRAM-MD5"
    __slots__ = ()

    def respond(self, challenge: bytes) -> bytes:
        self._challenges += 1
        if self._challenges > 1:
            raise self._unexpected()
        import hmac

        digest = hmac.new(self._secret.encode("utf-8"), challenge, "md5").hexdigest()
        return f"{self.user} {digest}".encode()


class XOAuth2(Mechanism):
    """XOAUTH2: "user=U^Aauth=Bearer TOKEN^A^A"; the secret is the OAuth 2.0 access token.

    When the token is refused the server sends a 334 with a JSON error; the
    answer is an empty line, after which the server sends its failure reply
    (the RFC 7628 convention Google and Microsoft follow).
    """

    name = "XOAUTH2"
    __slots__ = ("_sent_initial",)

    def __init__(self, user: str, secret: str) -> None:
        super().__init__(user, secret)
        # The token sits between ^A separators on the AUTH line: a control
        # character in it would forge the framing. The token is not shown.
        if any(ord(c) < 0x20 or c == "\x7f" for c in secret):
            raise ValueError("AUTH secret (XOAUTH2 token) contains a control character")
        self._sent_initial = False

    def initial_response(self) -> bytes:
        return f"user={self.user}\x01auth=Bearer {self._secret}\x01\x01".encode()

    def respond(self, challenge: bytes) -> bytes:
        if not challenge and not self._sent_initial and self._challenges == 0:
            # The client did not send the initial response: this empty 334 asks for it.
            self._sent_initial = True
            return self.initial_response()
        # Anything else is the error report; it is acknowledged once.
        self._challenges += 1
        if self._challenges > 1:
            raise self._unexpected()
        return b""


MECHANISMS: dict[str, type[Mechanism]] = {m.name: m for m in (Plain, Login, CramMD5, XOAuth2)}

#: What authtype=None tries, first offered first. XOAUTH2 only when named.
AUTO_ORDER: tuple[str, ...] = ("CRAM-MD5", "PLAIN", "LOGIN")


def canonical_name(name: str) -> str:
    """The registry name for ``name``: "plain" -> "PLAIN", "cram_md5" -> "CRAM-MD5".

    ValueError for a mechanism this module does not know.
    """
    if not isinstance(name, str):
        raise TypeError(f"an AUTH mechanism name must be str, not {type(name).__name__}")
    canonical = name.upper().replace("_", "-")
    if canonical not in MECHANISMS:
        known = ", ".join(sorted(MECHANISMS))
        raise ValueError(f"unknown AUTH mechanism {name!r} (known: {known})")
    return canonical


def select(offered: "Iterable[str]", requested: str | None) -> str | None:
    """The mechanism to use against a server that offers ``offered``, or None.

    With ``requested`` given: its canonical name if the server offers it
    (ValueError when it is not a mechanism this module knows). Without: the
    first of ``AUTO_ORDER`` the server offers.
    """
    available = {m.upper() for m in offered}
    if requested is not None:
        canonical = canonical_name(requested)
        return canonical if canonical in available else None
    for name in AUTO_ORDER:
        if name in available:
            return name
    return None


def mechanism(name: str, user: str, secret: str) -> Mechanism:
    """A fresh mechanism instance for one AUTH exchange; ValueError for an unknown name."""
    return MECHANISMS[canonical_name(name)](user, secret)
