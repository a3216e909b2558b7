"""The plain settings object that every part of pysendmail reads.

``load_settings`` returns a ``Settings``: plain classes with ``__slots__`` and
attribute access (``settings.general.domain``, ``settings.relays[0].host``),
built from a dict of plain values. The same dict is what the snapshot stores,
so a ``Settings`` read from the snapshot and one built by full validation are
the same object, value for value.

This module is on the ``sendmail`` hot path: it must never import anything at
run time (no ``typing``, ``dataclasses``, ``enum``, pydantic), and a
``Settings`` must never hold a secret. A relay says *where* its password comes
from (``password_source``); ``pysendmail.config.secrets`` reads it at send
time.

Every value here has already been validated; treat the objects as read-only.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class _Plain:
    """Attribute bag with a fixed set of names, built from a dict of exactly those names."""

    __slots__: "tuple[str, ...]" = ()

    @classmethod
    def _from_data(cls, data: "Any") -> "Any":
        # The snapshot is trusted (owner and mode are checked before it is read)
        # but may come from an older or newer pysendmail: refuse any shape other
        # than exactly ours, so the caller falls back to full validation.
        if type(data) is not dict or set(data) != set(cls.__slots__):
            raise ValueError(f"{cls.__name__}: unexpected shape")
        obj = cls.__new__(cls)
        for name in cls.__slots__:
            setattr(obj, name, data[name])
        return obj

    def _as_data(self) -> "dict[str, Any]":
        return {name: getattr(self, name) for name in self.__slots__}

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._as_data() == other._as_data()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({inner})"


class General(_Plain):
    """``[general]``: who this machine is and how ``sendmail`` hands mail on."""

    __slots__ = (
        "aliases_file",
        "catchall",
        "direct_timeout",
        "domain",
        "hostname",
        "max_message_size",
        "mode",
        "queue_dir",
        "sender_from_header",
    )
    hostname: str
    domain: str
    mode: str  # "queue" | "direct" | "direct-then-queue"
    queue_dir: str
    aliases_file: str
    catchall: "str | None"
    sender_from_header: bool
    max_message_size: int  # bytes; 0 = unlimited
    direct_timeout: int  # seconds


class Rewrite(_Plain):
    """``[rewrite]``: masquerading of the envelope sender and, optionally, headers."""

    __slots__ = ("from_header", "qualify_headers", "sender")
    sender: "str | None"
    from_header: bool
    qualify_headers: bool


class Relay(_Plain):
    """One ``[[relay]]`` table: a smarthost, with every default filled in.

    ``password_source`` is ``None`` (no AUTH) or one of ``"inline"`` (the
    config file's ``relay[index].password``), ``"file:PATH"``, ``"command"``
    (run ``password_command``), ``"env:VARIABLE"`` (the variable holds the
    password) or ``"json:VARIABLE"`` (the variable holds JSON with it).
    """

    __slots__ = (
        "allow_plaintext_auth",
        "auth",
        "ca_file",
        "client_cert",
        "client_key",
        "command_timeout",
        "connect_timeout",
        "data_timeout",
        "helo",
        "host",
        "index",
        "password_command",
        "password_source",
        "port",
        "senders",
        "tls",
        "tls_hostname",
        "tls_min_version",
        "tls_verify",
        "user",
    )
    index: int
    host: str
    port: int
    tls: str  # "starttls" | "implicit" | "none"
    tls_verify: bool
    tls_hostname: str  # the name the certificate must match; host unless set
    ca_file: "str | None"
    client_cert: "str | None"
    client_key: "str | None"
    tls_min_version: str  # "TLSv1.2" | "TLSv1.3"
    user: "str | None"
    password_source: "str | None"
    password_command: "tuple[str, ...] | None"
    auth: str  # "auto" | "plain" | "login" | "cram-md5" | "xoauth2"
    allow_plaintext_auth: bool
    connect_timeout: int
    command_timeout: int
    data_timeout: int
    helo: str
    senders: "tuple[str, ...]"  # glob patterns; empty = any sender


class Queue(_Plain):
    """``[queue]``: retry schedule, lifetime and bounce policy. Durations are in seconds."""

    __slots__ = (
        "admin_address",
        "bounce",
        "connections",
        "lifetime",
        "retry_max",
        "retry_min",
        "stale_tmp_age",
    )
    lifetime: int
    retry_min: int
    retry_max: int
    connections: int
    bounce: str  # "sender" | "admin" | "log"
    admin_address: "str | None"
    stale_tmp_age: int


class Log(_Plain):
    """``[log]``: where the one-line-per-event log goes."""

    __slots__ = ("facility", "format", "level", "target")
    target: str  # "auto" | "syslog" | "stderr" | "stdout"
    format: str  # "text" | "json"
    facility: str
    level: str


class Server(_Plain):
    """``[server]``: the sidecar (``pysendmail serve``). Durations in seconds, sizes in bytes.

    The users' password hashes are not here (nor in the snapshot): ``pysendmail
    serve`` reads them from the validated configuration and ``users_file``.
    """

    __slots__ = (
        "allowed_networks",
        "allowed_recipient_domains",
        "allowed_senders",
        "delivery_nice",
        "http_listen",
        "listen",
        "max_connections",
        "max_message_size",
        "max_messages_per_minute",
        "max_recipients",
        "require_auth",
        "require_tls",
        "shutdown_timeout",
        "timeout",
        "tls_cert",
        "tls_key",
        "unix_socket",
        "unix_socket_mode",
        "users_file",
    )
    listen: "tuple[str, ...]"  # "HOST:PORT", "[V6]:PORT"
    unix_socket: "str | None"
    unix_socket_mode: int
    allowed_networks: "tuple[str, ...]"  # networks in ipaddress' spelling
    allowed_senders: "tuple[str, ...]"  # glob patterns; empty = any sender
    allowed_recipient_domains: "tuple[str, ...]"  # lower case; "*.x" = subdomains; empty = any
    require_auth: bool
    users_file: "str | None"
    tls_cert: "str | None"
    tls_key: "str | None"
    require_tls: bool
    max_message_size: int  # 0 = unlimited
    max_recipients: int
    max_messages_per_minute: int  # per client address; 0 = unlimited
    max_connections: int
    timeout: int
    shutdown_timeout: int
    delivery_nice: int  # added to serve's nice value for its delivery processes
    http_listen: "str | None"


class Settings(_Plain):
    """The whole configuration.

    ``source_path`` is the absolute path of the configuration file that was
    considered (``-C``, ``$PYSENDMAIL_CONFIG`` or ``/etc/pysendmail.toml``);
    ``source_exists`` is false when it was the default path and absent, so
    every value is a default or comes from the environment.
    """

    __slots__ = (
        "general",
        "log",
        "queue",
        "relays",
        "rewrite",
        "server",
        "source_exists",
        "source_path",
    )
    source_path: str
    source_exists: bool
    general: General
    rewrite: Rewrite
    relays: "tuple[Relay, ...]"
    queue: Queue
    log: Log
    server: Server

    def need_relays(self) -> "tuple[Relay, ...]":
        """The relays, or a ConfigError saying how to add one when there is none."""
        if not self.relays:
            from pysendmail.errors import ConfigError

            raise ConfigError(
                f"{self.source_path}: relay: no relay is configured; add a [[relay]] table "
                "with host = ... (or set PYSENDMAIL_RELAY__0__HOST)"
            )
        return self.relays


def settings_from_data(data: "Any") -> Settings:
    """Build a ``Settings`` from the plain dict that validation produces and the snapshot holds.

    Raises ``ValueError`` when the dict has any other shape.
    """
    if type(data) is not dict:
        raise ValueError("Settings: unexpected shape")
    relays = data.get("relays")
    if type(relays) is not tuple:
        raise ValueError("Settings: unexpected shape")
    fields = dict(data)
    fields["general"] = General._from_data(data.get("general"))
    fields["rewrite"] = Rewrite._from_data(data.get("rewrite"))
    fields["relays"] = tuple(Relay._from_data(r) for r in relays)
    fields["queue"] = Queue._from_data(data.get("queue"))
    fields["log"] = Log._from_data(data.get("log"))
    fields["server"] = Server._from_data(data.get("server"))
    result: Settings = Settings._from_data(fields)
    return result


def settings_to_data(settings: Settings) -> "dict[str, Any]":
    """The inverse of ``settings_from_data``: plain values only (marshal can store them)."""
    data = settings._as_data()
    for name in ("general", "rewrite", "queue", "log", "server"):
        data[name] = data[name]._as_data()
    data["relays"] = tuple(r._as_data() for r in settings.relays)
    return data
