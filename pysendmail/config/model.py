"""The configuration schema: pydantic(-settings) models of ``/etc/pysendmail.toml``.

Every section forbids unknown keys, so a typo is an error rather than a
silently ignored line. Every scalar goes through one of the validators below,
which accept exactly what TOML writes and what an environment variable can
spell (the string ``"465"`` for a port, ``"true"`` for a boolean) and fail with
our own short message (``must be between 1 and 65535``); ``loader`` puts the
file or variable and the key in front of it.

SECURITY: the values are hostile until they pass here. No message may quote
the value it refuses (it may be a password pasted into the wrong key), every
string is refused when it holds control characters (CR/LF would inject SMTP
commands or headers), and a password is a ``SecretStr`` so that no repr shows
it.

This module imports pydantic: the ``sendmail`` hot path must never import it
(it reads the snapshot; see ``snapshot``).
"""

import ipaddress
import os
import re
import socket
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

MIB = 1024 * 1024
MAX_TEXT = 4096  # no key needs a longer string; refuse megabytes of hostile input early

# --------------------------------------------------------------------------- errors


def fail(message: str, key: str | None = None) -> PydanticCustomError:
    """A validation error carrying our message verbatim (and, for cross-field checks, the key)."""
    ctx: dict[str, Any] = {"msg": message}
    if key is not None:
        ctx["key"] = key
    return PydanticCustomError("pysendmail", "{msg}", ctx)


# --------------------------------------------------------------------------- scalars


def _text(value: Any, what: str = "a string") -> str:
    if not isinstance(value, str):
        raise fail(f"must be {what}")
    if len(value) > MAX_TEXT:
        raise fail(f"is longer than {MAX_TEXT} characters")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value):
        raise fail("must not contain control characters (such as a line break)")
    return value


def _nonempty_text(value: Any) -> str:
    text = _text(value)
    if not text:
        raise fail("must not be empty")
    return text


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):  # from an environment variable
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise fail("must be true or false")


def _whole(value: Any) -> int:
    if isinstance(value, bool):
        raise fail("must be a whole number")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
        return int(value.strip())
    raise fail("must be a whole number")


def _int_between(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        number = _whole(value)
        if not low <= number <= high:
            raise fail(f"must be between {low} and {high}")
        return number

    return check


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(?:[0-9]{1,9}[smhd])+")
_DURATION_PART = re.compile(r"([0-9]+)([smhd])")
_DURATION_HELP = 'must be a duration: a number of seconds, or a string like "90s", "5m", "4h", "5d"'


def parse_duration(value: Any) -> int:
    """Seconds from an integer, a string of digits, or ``"1h30m"``-style text."""
    if isinstance(value, bool):
        raise fail(_DURATION_HELP)
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit() and len(text) <= 12:
            seconds = int(text)
        elif _DURATION.fullmatch(text):
            seconds = sum(int(n) * _UNITS[u] for n, u in _DURATION_PART.findall(text))
        else:
            raise fail(_DURATION_HELP)
    else:
        raise fail(_DURATION_HELP)
    if seconds <= 0:
        raise fail("must be longer than zero")
    if seconds > 10 * 365 * 86400:
        raise fail("must be at most ten years")
    return seconds


def format_duration(seconds: int) -> str:
    """The shortest exact spelling: 432000 → ``"5d"``, 5400 → ``"90m"``, 61 → ``"61s"``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _duration_at_least(minimum: int, spelled: str) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        seconds = parse_duration(value)
        if seconds < minimum:
            raise fail(f"must be at least {spelled}")
        return seconds

    return check


_SIZE_UNITS = {
    "": 1,
    "k": 1024,
    "kib": 1024,
    "m": MIB,
    "mib": MIB,
    "g": 1024 * MIB,
    "gib": 1024 * MIB,
}
_SIZE = re.compile(r"([0-9]{1,15})\s*([a-z]*)")
_SIZE_HELP = 'must be a number of bytes, or a string like "512K", "50M", "1G" (0 = unlimited)'


def _size(value: Any) -> int:
    if isinstance(value, bool):
        raise fail(_SIZE_HELP)
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip().lower())
        if not match or match.group(2) not in _SIZE_UNITS:
            raise fail(_SIZE_HELP)
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    else:
        raise fail(_SIZE_HELP)
    if size < 0:
        raise fail("must not be negative (0 = unlimited)")
    return size


def _choice(*allowed: str) -> Callable[[Any], str]:
    spelled = ", ".join(f'"{a}"' for a in allowed)

    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise fail(f"must be one of {spelled}")
        return value

    return check


_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def is_domain_name(text: str) -> bool:
    """RFC 1035 / 5321 host name syntax: dot-separated labels of letters, digits and hyphens."""
    return (
        0 < len(text) <= 253
        and text.isascii()
        and all(_LABEL.fullmatch(label) for label in text.split("."))
    )


def _domain(value: Any) -> str:
    text = _nonempty_text(value)
    if not text.isascii():
        raise fail("must be ASCII (write an internationalised name in its xn-- form)")
    if not is_domain_name(text):
        raise fail("is not a valid host name (letters, digits, hyphens and dots)")
    return text


def _relay_host(value: Any) -> str:
    text = _nonempty_text(value)
    if text.startswith("[") and text.endswith("]"):
        raise fail("write an IP address without brackets")
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return _domain(text)
    return text


def _address_literal(text: str) -> bool:
    if not (text.startswith("[") and text.endswith("]")):
        return False
    inner = text[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(inner[5:])
        else:
            ipaddress.IPv4Address(inner)
    except ValueError:
        return False
    return True


def _helo(value: Any) -> str:
    text = _nonempty_text(value)
    if _address_literal(text):
        return text
    if not is_domain_name(text):
        raise fail('must be a host name or an address literal such as "[192.0.2.1]"')
    return text


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"')


def is_address(text: str, *, bare_ok: bool = False) -> bool:
    """RFC 5321 mailbox syntax (``local@domain``); a bare local part too when ``bare_ok``."""
    local, at, domain = text.rpartition("@")
    if not at:
        return bare_ok and len(text) <= 64 and bool(_DOT_ATOM.fullmatch(text))
    if not local or len(local) > 64:
        return False
    if not (_DOT_ATOM.fullmatch(local) or _QUOTED.fullmatch(local)):
        return False
    return is_domain_name(domain) or _address_literal(domain)


def _address(value: Any) -> str:
    text = _nonempty_text(value)
    if not is_address(text):
        raise fail("must be an address like user@example.com")
    return text


def _local_or_address(value: Any) -> str:
    text = _nonempty_text(value)
    if not is_address(text, bare_ok=True):
        raise fail("must be an address like user@example.com or a local name like root")
    return text


def _abs_path(value: Any) -> str:
    text = _nonempty_text(value)
    if not text.startswith("/"):
        # sendmail runs from any working directory: a relative path would
        # name a different file for every caller.
        raise fail("must be an absolute path (starting with /)")
    return text


def _glob(value: Any) -> str:
    text = _nonempty_text(value)
    if any(c.isspace() for c in text):
        raise fail('must be a pattern without spaces, like "*@example.org"')
    return text


def _string_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        raise fail('must be a list of patterns, like ["*@example.org"]')
    if not isinstance(value, list | tuple):
        raise fail("must be a list")
    return list(value)


def _argv(value: Any) -> list[str]:
    if isinstance(value, str):
        raise fail(
            'must be a list of argv words, like ["/usr/bin/pass", "show", "smtp"] '
            "(it runs without a shell, so a string is not split)"
        )
    if not isinstance(value, list | tuple) or not value:
        raise fail('must be a non-empty list of argv words, like ["/usr/bin/pass", "smtp"]')
    words = []
    for word in value:
        if not isinstance(word, str):
            raise fail("must be a list of strings")
        if "\0" in word:
            raise fail("must not contain NUL characters")
        if len(word) > MAX_TEXT:
            raise fail(f"has a word longer than {MAX_TEXT} characters")
        words.append(word)
    if not words[0]:
        raise fail("must start with a program name")
    return words


def _password(value: Any) -> SecretStr:
    # The message must never quote the value: this is the secret.
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not isinstance(value, str):
        raise fail("must be a string")
    if not value:
        raise fail("must not be empty")
    if len(value) > MAX_TEXT:
        raise fail(f"is longer than {MAX_TEXT} characters")
    if "\0" in value:
        raise fail("must not contain NUL characters")
    return SecretStr(value)


_FACILITIES = (
    "mail",
    "user",
    "daemon",
    "auth",
    "authpriv",
    "cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
)

Bool = Annotated[bool, BeforeValidator(_bool)]
Text = Annotated[str, BeforeValidator(_nonempty_text)]
Domain = Annotated[str, BeforeValidator(_domain)]
RelayHost = Annotated[str, BeforeValidator(_relay_host)]
Helo = Annotated[str, BeforeValidator(_helo)]
Address = Annotated[str, BeforeValidator(_address)]
LocalOrAddress = Annotated[str, BeforeValidator(_local_or_address)]
AbsPath = Annotated[str, BeforeValidator(_abs_path)]
Glob = Annotated[str, BeforeValidator(_glob)]
Argv = Annotated[list[str], BeforeValidator(_argv)]
Password = Annotated[SecretStr, BeforeValidator(_password)]
Port = Annotated[int, BeforeValidator(_int_between(1, 65535))]
Connections = Annotated[int, BeforeValidator(_int_between(1, 100))]
Duration = Annotated[int, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(_size)]


def _pick(*allowed: str) -> Any:
    return BeforeValidator(_choice(*allowed))


# --------------------------------------------------------------------------- sections


class Section(BaseModel):
    """Base of every table: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_default=False)


def machine_fqdn() -> str:
    """This machine's fully qualified name, or its plain name, or "localhost"."""
    for candidate in (socket.getfqdn(), socket.gethostname()):
        if is_domain_name(candidate) and candidate not in ("localhost", "localhost.localdomain"):
            return candidate.lower()
    return "localhost"


class GeneralSection(Section):
    hostname: Domain | None = None
    domain: Domain | None = None
    mode: Annotated[
        Literal["queue", "direct", "direct-then-queue"],
        _pick("queue", "direct", "direct-then-queue"),
    ] = "queue"
    queue_dir: AbsPath = "/var/spool/pysendmail"
    aliases_file: AbsPath = "/etc/aliases"
    catchall: LocalOrAddress | None = None
    sender_from_header: Bool = False
    max_message_size: Size = 50 * MIB
    direct_timeout: Duration = 60

    @model_validator(mode="after")
    def _defaults(self) -> "GeneralSection":
        if self.hostname is None:
            self.hostname = machine_fqdn()
        if self.domain is None:
            _, dot, rest = self.hostname.partition(".")
            self.domain = rest if dot else self.hostname
        if "aliases_file" in self.model_fields_set:
            try:
                os.stat(self.aliases_file)
            except FileNotFoundError:
                raise fail("does not exist", "aliases_file") from None
            except NotADirectoryError:
                raise fail("does not exist", "aliases_file") from None
            except OSError:
                pass  # unreadable for this user: whoever reads the aliases reports it
        return self


class RewriteSection(Section):
    sender: Address | None = None
    from_header: Bool = False
    qualify_headers: Bool = False

    @model_validator(mode="after")
    def _needs_sender(self) -> "RewriteSection":
        if self.from_header and self.sender is None:
            raise fail("needs rewrite.sender: the address to put in the From header", "from_header")
        return self


class RelaySection(Section):
    host: RelayHost
    port: Port | None = None
    tls: Annotated[
        Literal["starttls", "implicit", "none"], _pick("starttls", "implicit", "none")
    ] = "starttls"
    tls_verify: Bool = True
    tls_hostname: Domain | None = None
    ca_file: AbsPath | None = None
    client_cert: AbsPath | None = None
    client_key: AbsPath | None = None
    tls_min_version: Annotated[Literal["TLSv1.2", "TLSv1.3"], _pick("TLSv1.2", "TLSv1.3")] = (
        "TLSv1.2"
    )
    user: Text | None = None
    password: Password | None = None
    password_file: AbsPath | None = None
    password_command: Argv | None = None
    auth: Annotated[
        Literal["auto", "plain", "login", "cram-md5", "xoauth2"],
        _pick("auto", "plain", "login", "cram-md5", "xoauth2"),
    ] = "auto"
    allow_plaintext_auth: Bool = False
    connect_timeout: Duration = 30
    command_timeout: Duration = 60
    data_timeout: Duration = 600
    helo: Helo | None = None
    senders: Annotated[list[Glob], BeforeValidator(_string_list)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> "RelaySection":
        if self.port is None:
            self.port = 465 if self.tls == "implicit" else 25
        sources = [
            name
            for name in ("password", "password_file", "password_command")
            if getattr(self, name) is not None
        ]
        if len(sources) > 1:
            raise fail(
                f"cannot be used together with {sources[0]}: give one password source",
                sources[1],
            )
        if sources and self.user is None:
            raise fail("needs user: the name to log in as", sources[0])
        if self.user is not None and not sources:
            raise fail(
                "is set but there is no password source: add password_file, "
                "password_command or password",
                "user",
            )
        if self.auth != "auto" and self.user is None:
            raise fail(f'is "{self.auth}" but no user is set', "auth")
        if self.user is not None and self.tls == "none" and not self.allow_plaintext_auth:
            raise fail(
                '"none" would send the password in clear text; use "starttls" or '
                '"implicit", or set allow_plaintext_auth = true',
                "tls",
            )
        if self.tls == "none":
            for name in ("tls_hostname", "ca_file", "client_cert", "client_key"):
                if name in self.model_fields_set:
                    raise fail('has no effect with tls = "none"', name)
        if self.client_key is not None and self.client_cert is None:
            raise fail("is set but client_cert is not", "client_key")
        return self


class QueueSection(Section):
    lifetime: Duration = 5 * 86400
    retry_min: Duration = 5 * 60
    retry_max: Duration = 4 * 3600
    connections: Connections = 2
    bounce: Annotated[Literal["sender", "admin", "log"], _pick("sender", "admin", "log")] = "sender"
    admin_address: Address | None = None
    # A message may still be arriving on a slow stdin: never call a temp file
    # stale before a day has passed.
    stale_tmp_age: Annotated[int, BeforeValidator(_duration_at_least(86400, "1d"))] = 36 * 3600

    @model_validator(mode="after")
    def _consistent(self) -> "QueueSection":
        if self.retry_min > self.retry_max:
            raise fail(
                f"({format_duration(self.retry_min)}) must not be longer than retry_max "
                f"({format_duration(self.retry_max)})",
                "retry_min",
            )
        if self.bounce == "admin" and self.admin_address is None:
            raise fail('is "admin" but admin_address is not set', "bounce")
        return self


class LogSection(Section):
    target: Annotated[
        Literal["auto", "syslog", "stderr", "stdout"],
        _pick("auto", "syslog", "stderr", "stdout"),
    ] = "auto"
    format: Annotated[Literal["text", "json"], _pick("text", "json")] = "text"
    facility: Annotated[str, _pick(*_FACILITIES)] = "mail"
    level: Annotated[
        Literal["debug", "info", "warning", "error"], _pick("debug", "info", "warning", "error")
    ] = "info"


_LISTEN_HELP = 'must be "HOST:PORT", like "127.0.0.1:2525", "0.0.0.0:25" or "[::1]:2525"'


def split_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:2525"`` → ``("127.0.0.1", 2525)``; ``"[::1]:25"`` → ``("::1", 25)``.

    Raises ``ValueError`` with the help text; the server uses it on validated values.
    """
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(_LISTEN_HELP)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(_LISTEN_HELP) from None
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or ":" in host:
            raise ValueError(_LISTEN_HELP)
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            if not is_domain_name(host):
                raise ValueError(_LISTEN_HELP) from None
    if not (port_text.isascii() and port_text.isdigit() and int(port_text) <= 65535):
        raise ValueError(_LISTEN_HELP)
    return host, int(port_text)


def _listen(value: Any) -> str:
    text = _nonempty_text(value)
    try:
        split_listen(text)
    except ValueError as exc:
        raise fail(str(exc)) from None
    return text


def _list_of(example: str) -> Callable[[Any], list[Any]]:
    def check(value: Any) -> list[Any]:
        if isinstance(value, str):
            raise fail(f"must be a list, like {example}")
        if not isinstance(value, list | tuple):
            raise fail("must be a list")
        return list(value)

    return check


def _network(value: Any) -> str:
    text = _nonempty_text(value)
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "host bits" in str(exc):
            raise fail(
                "has bits set after the prefix length (write the network's first address, "
                'like "10.0.0.0/8")'
            ) from None
        raise fail('must be an IP address or network, like "10.0.0.0/8" or "::1"') from None
    return str(network)


def _domain_pattern(value: Any) -> str:
    text = _nonempty_text(value)
    domain = text[2:] if text.startswith("*.") else text
    if not domain.isascii() or not is_domain_name(domain):
        raise fail('must be a domain like "example.com", or "*.example.com" for its subdomains')
    return text.lower()


def _user_entry(value: Any) -> str:
    text = _nonempty_text(value)
    name, colon, hashed = text.partition(":")
    if not colon or not name or not hashed or any(c.isspace() for c in text):
        raise fail(
            'must be "NAME:HASH", the output of `pysendmail hash-password NAME` '
            "(a password hash, never the password itself)"
        )
    if not hashed.startswith(("scrypt$", "pbkdf2_sha256$")):
        raise fail(
            'has no password hash after "NAME:" (make one with `pysendmail hash-password NAME`)'
        )
    return text


def _octal_mode(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip() and set(value.strip()) <= set("01234567"):
        number = int(value.strip(), 8)
    else:
        raise fail('must be a file mode in octal, like "0660"')
    if not 0 <= number <= 0o777:
        raise fail('must be a file mode in octal between "0000" and "0777"')
    return number


Listen = Annotated[str, BeforeValidator(_listen)]
Network = Annotated[str, BeforeValidator(_network)]
DomainPattern = Annotated[str, BeforeValidator(_domain_pattern)]
UserEntry = Annotated[str, BeforeValidator(_user_entry)]


class ServerSection(Section):
    """``pysendmail serve``: the SMTP sidecar, its access rules, limits, health and metrics."""

    listen: Annotated[list[Listen], BeforeValidator(_list_of('["127.0.0.1:2525"]'))] = Field(
        default_factory=lambda: ["127.0.0.1:2525"]
    )
    unix_socket: AbsPath | None = None
    unix_socket_mode: Annotated[int, BeforeValidator(_octal_mode)] = 0o660
    allowed_networks: Annotated[
        list[Network], BeforeValidator(_list_of('["10.0.0.0/8", "::1"]'))
    ] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    allowed_senders: Annotated[list[Glob], BeforeValidator(_string_list)] = Field(
        default_factory=list
    )
    allowed_recipient_domains: Annotated[
        list[DomainPattern], BeforeValidator(_list_of('["example.com", "*.example.com"]'))
    ] = Field(default_factory=list)
    require_auth: Bool = False
    users: Annotated[list[UserEntry], BeforeValidator(_list_of('["alice:scrypt$..."]'))] = Field(
        default_factory=list
    )
    users_file: AbsPath | None = None
    tls_cert: AbsPath | None = None
    tls_key: AbsPath | None = None
    require_tls: Bool = False
    max_message_size: Size | None = None
    max_recipients: Annotated[int, BeforeValidator(_int_between(1, 100000))] = 100
    max_messages_per_minute: Annotated[int, BeforeValidator(_int_between(0, 1000000))] = 0
    max_connections: Annotated[int, BeforeValidator(_int_between(1, 100000))] = 100
    timeout: Duration = 300
    shutdown_timeout: Duration = 30
    delivery_nice: Annotated[int, BeforeValidator(_int_between(0, 19))] = 19
    http_listen: Listen | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "ServerSection":
        if not self.listen and self.unix_socket is None:
            raise fail(
                "is empty and no unix_socket is set: the server would accept nothing", "listen"
            )
        if self.tls_key is not None and self.tls_cert is None:
            raise fail("is set but tls_cert is not", "tls_key")
        if self.require_tls and self.tls_cert is None:
            raise fail("needs tls_cert (and tls_key): STARTTLS is offered with it", "require_tls")
        if self.require_auth and not (self.users or self.users_file):
            raise fail("needs users or users_file: nobody could log in", "require_auth")
        if (self.users or self.users_file) and self.tls_cert is None:
            key = "users" if self.users else "users_file"
            raise fail("needs tls_cert (and tls_key): AUTH is offered only over TLS", key)
        if (
            self.http_listen is not None
            and self.http_listen in self.listen
            and not self.http_listen.endswith(":0")
        ):
            raise fail("must differ from every address in listen", "http_listen")
        return self


class ConfigModel(BaseSettings):
    """The whole file. Values come only from what ``loader`` merged (file, then environment).

    pydantic-settings' own environment and dotenv sources are switched off:
    ``loader`` maps ``PYSENDMAIL_…`` variables itself, because it must index
    into ``[[relay]]``, refuse unknown variables and remember where each value
    came from, and because it reads the environment it is given rather than
    ``os.environ``.
    """

    model_config = SettingsConfigDict(extra="forbid", validate_default=False)

    general: GeneralSection = Field(default_factory=GeneralSection)
    rewrite: RewriteSection = Field(default_factory=RewriteSection)
    relay: list[RelaySection] = Field(default_factory=list)
    queue: QueueSection = Field(default_factory=QueueSection)
    log: LogSection = Field(default_factory=LogSection)
    server: ServerSection = Field(default_factory=ServerSection)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)

    @model_validator(mode="after")
    def _relay_defaults(self) -> "ConfigModel":
        hostname = self.general.hostname
        for relay in self.relay:
            if relay.helo is None:
                relay.helo = hostname
        if self.server.max_message_size is None:
            self.server.max_message_size = self.general.max_message_size
        return self


#: The sections and their models, in the order the file and ``config check`` show them.
SECTIONS: dict[str, type[Section]] = {
    "general": GeneralSection,
    "rewrite": RewriteSection,
    "relay": RelaySection,
    "queue": QueueSection,
    "log": LogSection,
    "server": ServerSection,
}
