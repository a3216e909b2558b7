"""Every key's default, and the exact message for each way a value can be wrong."""

from collections.abc import Callable
from pathlib import Path

import pytest

from pysendmail.config.model import format_duration, machine_fqdn, parse_duration
from tests.config.helpers import load, problems

Write = Callable[..., str]


def test_an_empty_file_gives_every_default(write: Write, env: dict[str, str]) -> None:
    settings = load(write(""), env)
    fqdn = machine_fqdn()
    general = settings.general
    assert general.hostname == fqdn
    assert general.domain == (fqdn.partition(".")[2] or fqdn)
    assert general.mode == "queue"
    assert general.queue_dir == "/var/spool/pysendmail"
    assert general.aliases_file == "/etc/aliases"
    assert general.catchall is None
    assert general.sender_from_header is False
    assert general.max_message_size == 50 * 1024 * 1024
    assert general.direct_timeout == 60
    assert (settings.rewrite.sender, settings.rewrite.from_header) == (None, False)
    assert settings.rewrite.qualify_headers is False
    assert settings.relays == ()
    queue = settings.queue
    assert (queue.lifetime, queue.retry_min, queue.retry_max) == (5 * 86400, 300, 4 * 3600)
    assert (queue.connections, queue.bounce, queue.admin_address) == (2, "sender", None)
    assert queue.stale_tmp_age == 36 * 3600
    log = settings.log
    assert (log.target, log.format, log.facility, log.level) == ("auto", "text", "mail", "info")
    assert settings.source_exists is True


def test_a_relay_needs_only_a_host(write: Write, env: dict[str, str]) -> None:
    path = write('[general]\nhostname = "mail.example.com"\n[[relay]]\nhost = "smtp.example.com"\n')
    (relay,) = load(path, env).relays
    assert relay.index == 0
    assert (relay.host, relay.port, relay.tls, relay.tls_verify) == (
        "smtp.example.com",
        25,
        "starttls",
        True,
    )
    assert relay.tls_hostname == "smtp.example.com"
    assert (relay.ca_file, relay.client_cert, relay.client_key) == (None, None, None)
    assert relay.tls_min_version == "TLSv1.2"
    assert (relay.user, relay.password_source, relay.password_command) == (None, None, None)
    assert (relay.auth, relay.allow_plaintext_auth) == ("auto", False)
    assert (relay.connect_timeout, relay.command_timeout, relay.data_timeout) == (30, 60, 600)
    assert relay.helo == "mail.example.com"
    assert relay.senders == ()


@pytest.mark.parametrize(("tls", "port"), [("implicit", 465), ("starttls", 25), ("none", 25)])
def test_the_default_port_follows_tls(
    write: Write, env: dict[str, str], tls: str, port: int
) -> None:
    path = write(f'[[relay]]\nhost = "smtp.example.com"\ntls = "{tls}"\n')
    assert load(path, env).relays[0].port == port


@pytest.mark.parametrize(
    ("hostname", "domain"),
    [("mail.example.com", "example.com"), ("box", "box"), ("a.b.c.example.org", "b.c.example.org")],
)
def test_domain_defaults_to_hostname_without_its_first_label(
    write: Write, env: dict[str, str], hostname: str, domain: str
) -> None:
    settings = load(write(f'[general]\nhostname = "{hostname}"\n'), env)
    assert settings.general.domain == domain


def test_every_key_set_in_the_file_is_kept(
    write: Write, env: dict[str, str], tmp_path: Path
) -> None:
    aliases = tmp_path / "aliases"
    aliases.write_text("root: admin@example.com\n")
    path = write(
        f"""
[general]
hostname = "mail.example.com"
domain = "example.org"
mode = "direct-then-queue"
queue_dir = "/srv/spool"
aliases_file = "{aliases}"
catchall = "postmaster"
sender_from_header = true
max_message_size = "10M"
direct_timeout = "2m"

[rewrite]
sender = "noreply@example.org"
from_header = true
qualify_headers = true

[[relay]]
host = "2001:db8::1"
port = 587
tls = "implicit"
tls_verify = false
tls_hostname = "smtp.example.org"
ca_file = "/etc/ssl/ca.pem"
client_cert = "/etc/ssl/client.pem"
client_key = "/etc/ssl/client.key"
tls_min_version = "TLSv1.3"
user = "me"
password_command = ["/usr/bin/pass", "smtp"]
auth = "xoauth2"
allow_plaintext_auth = true
connect_timeout = 5
command_timeout = "90s"
data_timeout = "1h30m"
helo = "[192.0.2.1]"
senders = ["*@example.org", "alerts@*"]

[queue]
lifetime = "2d"
retry_min = "1m"
retry_max = "1h"
connections = 8
bounce = "admin"
admin_address = "postmaster@example.org"
stale_tmp_age = "2d"

[log]
target = "stderr"
format = "json"
facility = "local3"
level = "debug"
"""
    )
    s = load(path, env)
    assert (s.general.mode, s.general.domain, s.general.queue_dir) == (
        "direct-then-queue",
        "example.org",
        "/srv/spool",
    )
    assert (s.general.catchall, s.general.sender_from_header) == ("postmaster", True)
    assert (s.general.max_message_size, s.general.direct_timeout) == (10 * 1024 * 1024, 120)
    assert (s.rewrite.sender, s.rewrite.from_header, s.rewrite.qualify_headers) == (
        "noreply@example.org",
        True,
        True,
    )
    r = s.relays[0]
    assert (r.host, r.port, r.tls, r.tls_verify, r.tls_hostname) == (
        "2001:db8::1",
        587,
        "implicit",
        False,
        "smtp.example.org",
    )
    assert (r.ca_file, r.client_cert, r.client_key, r.tls_min_version) == (
        "/etc/ssl/ca.pem",
        "/etc/ssl/client.pem",
        "/etc/ssl/client.key",
        "TLSv1.3",
    )
    assert (r.user, r.password_source, r.password_command) == (
        "me",
        "command",
        ("/usr/bin/pass", "smtp"),
    )
    assert (r.auth, r.allow_plaintext_auth) == ("xoauth2", True)
    assert (r.connect_timeout, r.command_timeout, r.data_timeout) == (5, 90, 5400)
    assert (r.helo, r.senders) == ("[192.0.2.1]", ("*@example.org", "alerts@*"))
    q = s.queue
    assert (q.lifetime, q.retry_min, q.retry_max, q.connections) == (172800, 60, 3600, 8)
    assert (q.bounce, q.admin_address, q.stale_tmp_age) == (
        "admin",
        "postmaster@example.org",
        172800,
    )
    assert (s.log.target, s.log.format, s.log.facility, s.log.level) == (
        "stderr",
        "json",
        "local3",
        "debug",
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (90, 90),
        ("90", 90),
        ("90s", 90),
        ("5m", 300),
        ("4h", 14400),
        ("5d", 432000),
        ("1h30m", 5400),
        (" 2m ", 120),
    ],
)
def test_durations(text: object, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("seconds", "text"), [(432000, "5d"), (129600, "36h"), (5400, "90m"), (61, "61s")]
)
def test_durations_are_shown_in_their_shortest_exact_form(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


RELAY = '[[relay]]\nhost = "smtp.example.com"\n'
DURATION = 'must be a duration: a number of seconds, or a string like "90s", "5m", "4h", "5d"'

INVALID = [
    # [general]
    (
        '[general]\nmode = "fast"',
        'general.mode: must be one of "queue", "direct", "direct-then-queue"',
    ),
    (
        '[general]\nhostname = "bad_name"',
        "general.hostname: is not a valid host name (letters, digits, hyphens and dots)",
    ),
    (
        '[general]\nhostname = "a-.example.com"',
        "general.hostname: is not a valid host name (letters, digits, hyphens and dots)",
    ),
    (
        '[general]\nhostname = "mail\\r\\nRCPT TO:<x@y>"',
        "general.hostname: must not contain control characters (such as a line break)",
    ),
    ("[general]\nhostname = 5", "general.hostname: must be a string"),
    ('[general]\nhostname = ""', "general.hostname: must not be empty"),
    (
        '[general]\ndomain = "exämple.com"',
        "general.domain: must be ASCII (write an internationalised name in its xn-- form)",
    ),
    ("[general]\ndomain = 1979-05-27", "general.domain: must be a string"),
    (
        '[general]\nqueue_dir = "spool"',
        "general.queue_dir: must be an absolute path (starting with /)",
    ),
    ('[general]\naliases_file = "/nonexistent/aliases"', "general.aliases_file: does not exist"),
    (
        '[general]\ncatchall = "a b"',
        "general.catchall: must be an address like user@example.com or a local name like root",
    ),
    ("[general]\nsender_from_header = 1", "general.sender_from_header: must be true or false"),
    (
        '[general]\nsender_from_header = "maybe"',
        "general.sender_from_header: must be true or false",
    ),
    (
        "[general]\nmax_message_size = -1",
        "general.max_message_size: must not be negative (0 = unlimited)",
    ),
    (
        '[general]\nmax_message_size = "50X"',
        "general.max_message_size: must be a number of bytes, "
        'or a string like "512K", "50M", "1G" (0 = unlimited)',
    ),
    ("[general]\ndirect_timeout = 0", "general.direct_timeout: must be longer than zero"),
    ('[general]\ndirect_timeout = "5 minutes"', f"general.direct_timeout: {DURATION}"),
    ("[general]\ndirect_timeout = 1.5", f"general.direct_timeout: {DURATION}"),
    ("[general]\ndirect_timeout = true", f"general.direct_timeout: {DURATION}"),
    ('[general]\ndirect_timeout = "99999d"', "general.direct_timeout: must be at most ten years"),
    ('[general]\nhostnme = "x"', 'general.hostnme: unknown key (did you mean "hostname"?)'),
    # [rewrite]
    ('[rewrite]\nsender = "root"', "rewrite.sender: must be an address like user@example.com"),
    ('[rewrite]\nsender = "a@b@c"', "rewrite.sender: must be an address like user@example.com"),
    (
        "[rewrite]\nfrom_header = true",
        "rewrite.from_header: needs rewrite.sender: the address to put in the From header",
    ),
    # [[relay]]
    ("[[relay]]\nport = 25", "relay[0].host: is required"),
    (
        '[[relay]]\nhost = "smtp example com"',
        "relay[0].host: is not a valid host name (letters, digits, hyphens and dots)",
    ),
    ('[[relay]]\nhost = "[::1]"', "relay[0].host: write an IP address without brackets"),
    (RELAY + "port = 70000", "relay[0].port: must be between 1 and 65535"),
    (RELAY + "port = 0", "relay[0].port: must be between 1 and 65535"),
    (RELAY + 'port = "smtp"', "relay[0].port: must be a whole number"),
    (RELAY + "port = true", "relay[0].port: must be a whole number"),
    (RELAY + 'tls = "ssl"', 'relay[0].tls: must be one of "starttls", "implicit", "none"'),
    (RELAY + 'tls = "STARTTLS"', 'relay[0].tls: must be one of "starttls", "implicit", "none"'),
    (
        RELAY + 'tls = "none"\nca_file = "/etc/ca.pem"',
        'relay[0].ca_file: has no effect with tls = "none"',
    ),
    (
        RELAY + 'tls = "none"\ntls_hostname = "x.example"',
        'relay[0].tls_hostname: has no effect with tls = "none"',
    ),
    (
        RELAY + 'tls_min_version = "TLSv1.1"',
        'relay[0].tls_min_version: must be one of "TLSv1.2", "TLSv1.3"',
    ),
    (RELAY + 'ca_file = "ca.pem"', "relay[0].ca_file: must be an absolute path (starting with /)"),
    (RELAY + 'client_key = "/k.pem"', "relay[0].client_key: is set but client_cert is not"),
    (
        RELAY + 'user = "me"',
        "relay[0].user: is set but there is no password source: "
        "add password_file, password_command or password",
    ),
    (
        RELAY + 'password_file = "/run/secrets/smtp"',
        "relay[0].password_file: needs user: the name to log in as",
    ),
    (RELAY + 'password = "hunter2"', "relay[0].password: needs user: the name to log in as"),
    (
        RELAY + 'user = "me"\npassword = "hunter2"\npassword_file = "/p"',
        "relay[0].password_file: cannot be used together with password: give one password source",
    ),
    (
        RELAY + 'user = "me"\npassword_file = "/p"\npassword_command = ["x"]',
        "relay[0].password_command: cannot be used together with password_file: "
        "give one password source",
    ),
    (
        RELAY + 'user = "me"\npassword_command = "pass smtp"',
        'relay[0].password_command: must be a list of argv words, like ["/usr/bin/pass", '
        '"show", "smtp"] (it runs without a shell, so a string is not split)',
    ),
    (
        RELAY + 'user = "me"\npassword_command = []',
        "relay[0].password_command: must be a non-empty list of argv words, "
        'like ["/usr/bin/pass", "smtp"]',
    ),
    (
        RELAY + 'user = "me"\npassword_command = [1]',
        "relay[0].password_command: must be a list of strings",
    ),
    (RELAY + 'user = "me"\npassword = ""', "relay[0].password: must not be empty"),
    (RELAY + 'user = "me"\npassword = 1234', "relay[0].password: must be a string"),
    (RELAY + 'user = ""\npassword = "x"', "relay[0].user: must not be empty"),
    (RELAY + 'auth = "plain"', 'relay[0].auth: is "plain" but no user is set'),
    (
        RELAY + 'auth = "ntlm"',
        'relay[0].auth: must be one of "auto", "plain", "login", "cram-md5", "xoauth2"',
    ),
    (
        RELAY + 'tls = "none"\nuser = "me"\npassword_file = "/p"',
        'relay[0].tls: "none" would send the password in clear text; use "starttls" or '
        '"implicit", or set allow_plaintext_auth = true',
    ),
    (RELAY + 'connect_timeout = "0s"', "relay[0].connect_timeout: must be longer than zero"),
    (RELAY + 'data_timeout = "10 min"', f"relay[0].data_timeout: {DURATION}"),
    (
        RELAY + 'helo = "my host"',
        'relay[0].helo: must be a host name or an address literal such as "[192.0.2.1]"',
    ),
    (
        RELAY + 'senders = "*@example.org"',
        'relay[0].senders: must be a list of patterns, like ["*@example.org"]',
    ),
    (
        RELAY + 'senders = ["ok@example.org", "a b"]',
        'relay[0].senders[1]: must be a pattern without spaces, like "*@example.org"',
    ),
    (RELAY + "prot = 25", 'relay[0].prot: unknown key (did you mean "port"?)'),
    (RELAY + RELAY + "port = 99999", "relay[1].port: must be between 1 and 65535"),
    # [queue]
    ('[queue]\nlifetime = "5y"', f"queue.lifetime: {DURATION}"),
    (
        '[queue]\nretry_min = "5h"\nretry_max = "1h"',
        "queue.retry_min: (5h) must not be longer than retry_max (1h)",
    ),
    ("[queue]\nconnections = 0", "queue.connections: must be between 1 and 100"),
    ('[queue]\nbounce = "admin"', 'queue.bounce: is "admin" but admin_address is not set'),
    ('[queue]\nbounce = "drop"', 'queue.bounce: must be one of "sender", "admin", "log"'),
    (
        '[queue]\nadmin_address = "postmaster"',
        "queue.admin_address: must be an address like user@example.com",
    ),
    ('[queue]\nstale_tmp_age = "1h"', "queue.stale_tmp_age: must be at least 1d"),
    # [log]
    ('[log]\ntarget = "file"', 'log.target: must be one of "auto", "syslog", "stderr", "stdout"'),
    ('[log]\nformat = "xml"', 'log.format: must be one of "text", "json"'),
    (
        '[log]\nfacility = "local8"',
        'log.facility: must be one of "mail", "user", "daemon", "auth", "authpriv", "cron", '
        '"local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7"',
    ),
    ('[log]\nlevel = "trace"', 'log.level: must be one of "debug", "info", "warning", "error"'),
    # the shape of the file
    ('[genral]\ndomain = "x"', "genral: unknown section (did you mean [general]?)"),
    ('domain = "example.com"', "domain: unknown section: domain belongs in [general]"),
    ("port = 25", "port: unknown section: port belongs in [[relay]]"),
    (
        '[relay]\nhost = "smtp.example.com"',
        "relay: must be a list of tables: write [[relay]], not [relay]",
    ),
    ("general = 5", "general: must be a table"),
    ("relay = [5]", "relay[0]: must be a table"),
]


@pytest.mark.parametrize(("text", "message"), INVALID, ids=[m.split(":")[0] for _, m in INVALID])
def test_invalid_values_are_named_with_file_and_key(
    write: Write, env: dict[str, str], text: str, message: str
) -> None:
    path = write(text + "\n")
    assert problems(path, env) == [f"{path}: {message}"]


def test_every_problem_is_reported_not_only_the_first(write: Write, env: dict[str, str]) -> None:
    path = write(
        '[general]\nmode = "x"\n[[relay]]\nhost = "a.example"\nport = 0\n[log]\nlevel = 1\n'
    )
    assert problems(path, env) == [
        f'{path}: general.mode: must be one of "queue", "direct", "direct-then-queue"',
        f"{path}: relay[0].port: must be between 1 and 65535",
        f'{path}: log.level: must be one of "debug", "info", "warning", "error"',
    ]


def test_no_message_quotes_a_password(write: Write, env: dict[str, str]) -> None:
    path = write(
        RELAY + 'user = "me"\npassword = "hunter2\\u0000"\nport = "hunter2"\nhelo = "hunter2 x"\n'
    )
    lines = problems(path, env)
    assert len(lines) == 3
    assert not any("hunter2" in line for line in lines)


def test_an_explicit_aliases_file_that_exists_is_accepted(
    write: Write, env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "aliases").write_text("")
    path = write(f'[general]\naliases_file = "{tmp_path / "aliases"}"\n')
    assert load(path, env).general.aliases_file == str(tmp_path / "aliases")


@pytest.mark.parametrize(
    "address",
    [
        "user@example.com",
        "first.last+tag@sub.example.org",
        '"odd name"@example.com',
        "x@[192.0.2.1]",
        "x@[IPv6:2001:db8::1]",
    ],
)
def test_addresses_that_are_accepted(write: Write, env: dict[str, str], address: str) -> None:
    escaped = address.replace('"', '\\"')
    path = write(f'[rewrite]\nsender = "{escaped}"\n')
    assert load(path, env).rewrite.sender == address


@pytest.mark.parametrize(
    ("value", "size"),
    [(0, 0), (1000, 1000), ('"512K"', 524288), ('"1G"', 1 << 30), ('"2MiB"', 2 << 20)],
)
def test_message_size_limits(write: Write, env: dict[str, str], value: str, size: int) -> None:
    path = write(f"[general]\nmax_message_size = {value}\n")
    assert load(path, env).general.max_message_size == size
