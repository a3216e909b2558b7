"""What the sidecar lets in: networks, senders, recipient domains, limits, users, TLS.

A ``Policy`` is built from one loaded configuration (``Loaded``) and never
changed: a reload (SIGHUP) builds a new one and the server swaps the
reference, so a session sees either the old rules or the new ones, never a
mix within one command.

The rules, in the order a client meets them:

1. connect: the client's address must be in ``server.allowed_networks``
   (loopback only by default; a unix-socket client is let in by the socket's
   mode), and there must be fewer than ``max_connections`` sessions;
2. MAIL: the client is under ``max_messages_per_minute`` (per address) and
   the sender matches ``allowed_senders`` when that is set;
3. RCPT: every address the recipient resolves to (after aliases) is in
   ``allowed_recipient_domains`` when that is set; at most ``max_recipients``;
4. DATA: at most ``max_message_size`` octets.

What this module must never do: let a rule default to open (an empty network
list admits nobody, not everybody), or read anything from the network.

SECURITY: addresses reaching ``allows_sender`` / ``allows_recipient`` have
been checked for syntax and control characters by the intake's functions;
patterns are matched case-insensitively with ``fnmatch``, which interprets
only ``*``, ``?`` and ``[...]``.
"""

from __future__ import annotations

import collections
import fnmatch
import functools
import ipaddress
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl

    from pysendmail.config import Settings
    from pysendmail.message.aliases import Aliases
    from pysendmail.message.intake import IntakeOptions
    from pysendmail.server.passwords import Users

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The key under which unix-socket clients share one rate limit.
UNIX_CLIENT = "unix"
#: The window of ``max_messages_per_minute``.
RATE_WINDOW = 60.0
#: ``sendmail -bs``: recipients per message, and how long a silent client is waited for.
LOCAL_MAX_RECIPIENTS = 1000
LOCAL_TIMEOUT = 3600


class Loaded:
    """One loaded configuration: the settings and what only ``serve`` needs besides."""

    __slots__ = ("aliases", "settings", "tls_context", "users", "warnings")

    def __init__(
        self,
        settings: Settings,
        users: Users,
        tls_context: ssl.SSLContext | None,
        aliases: Aliases,
        warnings: list[str],
    ) -> None:
        self.settings = settings
        self.users = users
        self.tls_context = tls_context
        self.aliases = aliases
        self.warnings = warnings


def client_ip(peer: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address of an asyncio peername; None for a unix socket or a pipe.

    An IPv4-mapped IPv6 address (a dual-stack listener) is the IPv4 address.
    """
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return None
    return _parse_ip(peer[0])


# Cached: a pod has few clients, and each session asks several times.
@functools.lru_cache(maxsize=1024)
def _parse_ip(raw: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    host = raw.split("%", 1)[0]  # a scoped IPv6 address: fe80::1%eth0
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_key(peer: object) -> str:
    """The rate-limit key of a client: its IP address, or ``unix``."""
    ip = client_ip(peer)
    return UNIX_CLIENT if ip is None else str(ip)


class Policy:
    """The rules of one configuration (see the module docstring)."""

    __slots__ = (
        "_domains",
        "_local_hostnames",
        "_recipient_options",
        "_senders",
        "aliases",
        "hostname",
        "max_connections",
        "max_message_size",
        "max_recipients",
        "networks",
        "per_minute",
        "require_auth",
        "require_tls",
        "settings",
        "timeout",
        "tls_context",
        "users",
    )

    def __init__(self, loaded: Loaded) -> None:
        settings = loaded.settings
        server = settings.server
        self.settings = settings
        self.hostname = settings.general.hostname
        self.networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(n) for n in server.allowed_networks
        )
        self._senders = tuple(p.lower() for p in server.allowed_senders)
        self._domains = tuple(d.lower() for d in server.allowed_recipient_domains)
        self.max_recipients = server.max_recipients
        self.max_message_size = server.max_message_size
        self.per_minute = server.max_messages_per_minute
        self.max_connections = server.max_connections
        self.timeout = server.timeout
        self.require_auth = server.require_auth
        self.require_tls = server.require_tls
        self.users = loaded.users
        self.tls_context = loaded.tls_context
        self.aliases = loaded.aliases
        from pysendmail.message.intake import local_hostnames

        self._local_hostnames = local_hostnames(settings.general.hostname)
        self._recipient_options: IntakeOptions | None = None

    def recipient_options(self) -> IntakeOptions:
        """The intake options RCPT resolves addresses with (made once per policy, not changed)."""
        options = self._recipient_options
        if options is None:
            options = self._recipient_options = self.intake_options(None, [], None)
        return options

    @classmethod
    def local(cls, settings: Settings, aliases: Aliases) -> Policy:
        """The rules of ``sendmail -bs``: a local program, trusted as ``sendmail`` is.

        No network, sender, domain or rate rules, no AUTH and no TLS; the size
        limit is ``general.max_message_size`` and a message may have 1000
        recipients, as on the command line.
        """
        from pysendmail.server.passwords import Users

        policy = cls(Loaded(settings, Users(), None, aliases, []))
        policy.networks = ()
        policy._senders = ()
        policy._domains = ()
        policy.max_recipients = LOCAL_MAX_RECIPIENTS
        policy.max_message_size = settings.general.max_message_size
        policy.per_minute = 0
        policy.max_connections = 1
        policy.timeout = LOCAL_TIMEOUT
        policy.require_auth = False
        policy.require_tls = False
        return policy

    def allows_peer(self, peer: object) -> bool:
        """Whether a client at ``peer`` may talk to us (unix-socket clients always may)."""
        ip = client_ip(peer)
        if ip is None:
            return not isinstance(peer, tuple) or not peer
        return any(ip.version == net.version and ip in net for net in self.networks)

    def allows_sender(self, address: str) -> bool:
        """``address`` ("" for the null sender, spelled ``<>`` in patterns) may send."""
        if not self._senders:
            return True
        word = address.lower() if address else "<>"
        return any(fnmatch.fnmatchcase(word, pattern) for pattern in self._senders)

    def allows_recipient(self, address: str) -> bool:
        """A final recipient address is in one of the allowed domains (or no list is set)."""
        if not self._domains:
            return True
        _, at, domain = address.rpartition("@")
        if not at:
            return False
        domain = domain.lower().rstrip(".")
        for pattern in self._domains:
            if pattern.startswith("*."):
                if domain.endswith(pattern[1:]):
                    return True
            elif domain == pattern:
                return True
        return False

    def intake_options(
        self, sender: str | None, recipients: list[str], body_type: str | None
    ) -> IntakeOptions:
        """The intake's options for one SMTP transaction: the envelope from MAIL and RCPT.

        The same construction as ``sendmail`` (aliases, qualification,
        masquerading, header completion), without ``-t``: the recipients are
        exactly the RCPT addresses, and the data is already un-dot-stuffed.
        """
        from pysendmail.message.intake import IntakeOptions

        settings = self.settings
        general = settings.general
        rewrite = settings.rewrite
        return IntakeOptions(
            extract_recipients=False,
            dot_ends_input=False,
            sender=sender,
            body_type=body_type,
            recipients=recipients,
            domain=general.domain,
            hostname=general.hostname,
            local_hostnames=self._local_hostnames,
            aliases=self.aliases,
            catchall=general.catchall,
            full_name="",  # the From a message lacks names no one: not the server's user
            sender_from_header=False,
            rewrite_sender=rewrite.sender,
            rewrite_from_header=rewrite.from_header,
            qualify_headers=rewrite.qualify_headers,
            # The listener enforces the size on what the client sends (SIZE, 552).
            max_message_size=0,
        )


class RateLimiter:
    """At most ``per_minute`` messages per client key in any 60 seconds (0: no limit).

    Thread-safe. Memory is bounded by the limit per client; clients with no
    message in the window are forgotten.
    """

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._seen: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def allows(self, key: str, now: float) -> bool:
        """Whether ``key`` may start another message at ``now`` (monotonic seconds)."""
        if self.per_minute <= 0:
            return True
        with self._lock:
            times = self._seen.get(key)
            if times is None:
                return True
            self._expire(times, now)
            return len(times) < self.per_minute

    def record(self, key: str, now: float) -> None:
        """Count one accepted message of ``key``."""
        if self.per_minute <= 0:
            return
        with self._lock:
            times = self._seen.setdefault(key, collections.deque())
            self._expire(times, now)
            times.append(now)
            while len(times) > self.per_minute:
                times.popleft()
            if len(self._seen) > 4096:
                for other in [k for k, v in self._seen.items() if k != key]:
                    self._expire(self._seen[other], now)
                    if not self._seen[other]:
                        del self._seen[other]

    @staticmethod
    def _expire(times: collections.deque[float], now: float) -> None:
        while times and times[0] <= now - RATE_WINDOW:
            times.popleft()
