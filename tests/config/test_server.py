"""``[server]``: defaults, the environment, every refusal, hashes kept out of the snapshot."""

import io
from collections.abc import Callable
from pathlib import Path

import pytest

from pysendmail.config.check import check_main
from pysendmail.config.loader import load_validated
from pysendmail.config.model import split_listen
from pysendmail.config.settings import settings_to_data
from pysendmail.config.snapshot import load_settings
from pysendmail.server.passwords import hash_password
from tests.config.helpers import load, problems

Write = Callable[..., str]
HASH = hash_password("correct horse", scheme="pbkdf2_sha256")


def test_the_defaults(write: Write, env: dict[str, str]) -> None:
    server = load(write('[general]\nmax_message_size = "10M"\n'), env).server
    assert server.listen == ("127.0.0.1:2525",)
    assert server.unix_socket is None and server.unix_socket_mode == 0o660
    assert server.allowed_networks == ("127.0.0.0/8", "::1/128")
    assert server.allowed_senders == () and server.allowed_recipient_domains == ()
    assert (server.require_auth, server.users_file, server.require_tls) == (False, None, False)
    assert (server.tls_cert, server.tls_key, server.http_listen) == (None, None, None)
    assert server.max_message_size == 10 * 1024 * 1024  # general's, unless set
    assert (server.max_recipients, server.max_messages_per_minute) == (100, 0)
    assert (server.max_connections, server.timeout, server.shutdown_timeout) == (100, 300, 30)
    assert server.delivery_nice == 19


def test_every_key_from_the_environment_alone(
    write: Write, tmp_path: Path, env: dict[str, str]
) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("-")
    variables = {
        **env,
        "PYSENDMAIL_SERVER__LISTEN": '["0.0.0.0:25", "[::]:25"]',
        "PYSENDMAIL_SERVER__UNIX_SOCKET": "/run/pysendmail/smtp.sock",
        "PYSENDMAIL_SERVER__UNIX_SOCKET_MODE": "0666",
        "PYSENDMAIL_SERVER__ALLOWED_NETWORKS": '["10.0.0.0/8", "fd00::/8", "192.0.2.7"]',
        "PYSENDMAIL_SERVER__ALLOWED_SENDERS": '["*@example.com", "<>"]',
        "PYSENDMAIL_SERVER__ALLOWED_RECIPIENT_DOMAINS": '["Example.COM", "*.example.net"]',
        "PYSENDMAIL_SERVER__REQUIRE_AUTH": "yes",
        "PYSENDMAIL_SERVER__USERS": f'["app:{HASH}"]',
        "PYSENDMAIL_SERVER__TLS_CERT": str(cert),
        "PYSENDMAIL_SERVER__MAX_MESSAGE_SIZE": "1M",
        "PYSENDMAIL_SERVER__MAX_RECIPIENTS": "7",
        "PYSENDMAIL_SERVER__MAX_MESSAGES_PER_MINUTE": "60",
        "PYSENDMAIL_SERVER__MAX_CONNECTIONS": "3",
        "PYSENDMAIL_SERVER__TIMEOUT": "1m",
        "PYSENDMAIL_SERVER__SHUTDOWN_TIMEOUT": "5s",
        "PYSENDMAIL_SERVER__DELIVERY_NICE": "0",
        "PYSENDMAIL_SERVER__HTTP_LISTEN": "0.0.0.0:9025",
    }
    empty = write("")
    validated = load_validated(empty, True, variables)
    server = load(empty, variables).server
    assert server.listen == ("0.0.0.0:25", "[::]:25")
    assert server.unix_socket_mode == 0o666
    assert server.allowed_networks == ("10.0.0.0/8", "fd00::/8", "192.0.2.7/32")
    assert server.allowed_recipient_domains == ("example.com", "*.example.net")
    assert server.require_auth is True and server.tls_cert == str(cert)
    assert (server.max_message_size, server.max_recipients) == (1024 * 1024, 7)
    assert (server.max_messages_per_minute, server.max_connections) == (60, 3)
    assert (server.timeout, server.shutdown_timeout, server.http_listen) == (60, 5, "0.0.0.0:9025")
    assert server.delivery_nice == 0
    assert validated.model.server.users == [f"app:{HASH}"]


def test_the_hashes_stay_out_of_the_settings_and_the_snapshot(
    write: Write, env: dict[str, str], cache_dir: Path, tmp_path: Path
) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("-")
    path = write(f'[server]\ntls_cert = "{cert}"\nusers = ["app:{HASH}"]\n')
    settings = load_settings(path, env)  # validates and writes the snapshot
    assert not hasattr(settings.server, "users")
    assert HASH not in repr(settings_to_data(settings))
    (snapshot,) = cache_dir.iterdir()
    assert HASH.split("$")[-1].encode() not in snapshot.read_bytes()
    assert load_settings(path, env) == settings  # and back from the snapshot


def test_config_check_shows_the_section(write: Write, env: dict[str, str]) -> None:
    path = write('[server]\nlisten = ["127.0.0.1:25"]\nmax_recipients = 9\n')
    out, err = io.StringIO(), io.StringIO()
    assert check_main(path, env, out, err) == 0, err.getvalue()
    text = out.getvalue()
    assert "\n[server]\n" in text
    assert 'listen = ["127.0.0.1:25"]' in text and "max_recipients = 9" in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'listen = ["localhost"]',
            'server.listen[0]: must be "HOST:PORT", like "127.0.0.1:2525", "0.0.0.0:25" or '
            '"[::1]:2525"',
        ),
        ('listen = ["127.0.0.1:70000"]', "server.listen[0]: must be"),
        ('listen = ["[::1:25"]', "server.listen[0]: must be"),
        ('listen = "127.0.0.1:25"', 'server.listen: must be a list, like ["127.0.0.1:2525"]'),
        (
            "listen = []",
            "server.listen: is empty and no unix_socket is set: the server would accept nothing",
        ),
        (
            'allowed_networks = ["10.1.2.3/8"]',
            "server.allowed_networks[0]: has bits set after the prefix length (write the "
            'network\'s first address, like "10.0.0.0/8")',
        ),
        (
            'allowed_networks = ["everyone"]',
            'server.allowed_networks[0]: must be an IP address or network, like "10.0.0.0/8" '
            'or "::1"',
        ),
        (
            'allowed_recipient_domains = ["*"]',
            'server.allowed_recipient_domains[0]: must be a domain like "example.com", or '
            '"*.example.com" for its subdomains',
        ),
        ('allowed_senders = ["a b"]', "server.allowed_senders[0]: must be a pattern without"),
        ('unix_socket_mode = "rw-rw----"', "server.unix_socket_mode: must be a file mode in octal"),
        ("max_recipients = 0", "server.max_recipients: must be between 1 and 100000"),
        ('tls_key = "/k.pem"', "server.tls_key: is set but tls_cert is not"),
        ("require_tls = true", "server.require_tls: needs tls_cert (and tls_key)"),
        ("require_auth = true", "server.require_auth: needs users or users_file"),
        (
            f'users = ["app:{HASH}"]',
            "server.users: needs tls_cert (and tls_key): AUTH is offered only over TLS",
        ),
        ('users_file = "/u"', "server.users_file: needs tls_cert (and tls_key)"),
        (
            'http_listen = "127.0.0.1:2525"',
            "server.http_listen: must differ from every address in listen",
        ),
        ("shutdown_timeout = 0", "server.shutdown_timeout: must be longer than zero"),
        ("delivery_nice = 20", "server.delivery_nice: must be between 0 and 19"),
        ("delivery_nice = -1", "server.delivery_nice: must be between 0 and 19"),
        ("typo = 1", "server.typo: unknown key"),
    ],
)
def test_refusals(write: Write, env: dict[str, str], text: str, expected: str) -> None:
    path = write(f"[server]\n{text}\n")
    (problem,) = problems(path, env)
    assert problem.startswith(f"{path}: {expected}"), problem


@pytest.mark.parametrize("entry", ["app:hunter2-the-password", "app", ":scrypt$1", "a b:scrypt$"])
def test_a_user_entry_without_a_hash_is_refused_without_quoting_it(
    write: Write, env: dict[str, str], entry: str
) -> None:
    path = write(f'[server]\ntls_cert = "/c.pem"\nusers = ["{entry}"]\n')
    (problem,) = problems(path, env)
    assert problem.startswith(f"{path}: server.users[0]: "), problem
    assert "hunter2" not in problem and "pysendmail hash-password" in problem


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:25", "127.0.0.1", 25),
        ("0.0.0.0:0", "0.0.0.0", 0),
        ("[::1]:2525", "::1", 2525),
        ("[::]:25", "::", 25),
        ("mail.example.com:587", "mail.example.com", 587),
    ],
)
def test_split_listen(text: str, host: str, port: int) -> None:
    assert split_listen(text) == (host, port)


@pytest.mark.parametrize("text", ["", "25", ":25", "::1:25", "[::1]", "[x]:25", "a_b:25", "h:-1"])
def test_split_listen_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        split_listen(text)


def test_password_hashes_never_reach_check_output_or_the_snapshot(
    write: Write, env: dict[str, str], cache_dir: Path
) -> None:
    """Hashes can be cracked offline: check masks them; the world-readable snapshot omits them."""
    cert = cache_dir.parent / "cert.pem"
    cert.write_text("-")
    path = write(f'[server]\ntls_cert = "{cert}"\nusers = ["app:{HASH}"]\n')
    variables = {**env, "PYSENDMAIL_SERVER__USERS": f'["env:{HASH}"]'}
    out, err = io.StringIO(), io.StringIO()
    assert check_main(path, variables, out, err) == 0, err.getvalue()
    assert HASH not in out.getvalue() + err.getvalue()
    assert 'users = "********"' in out.getvalue()
    snapshots = list(cache_dir.glob("*.snapshot"))
    assert snapshots, "config check writes the snapshot"
    hash_bytes = HASH.encode()
    for snapshot in snapshots:
        assert hash_bytes not in snapshot.read_bytes()
    # The snapshot is still used, and still invalidated when the variable goes away.
    assert load(path, variables).server.max_recipients == 100
    del variables["PYSENDMAIL_SERVER__USERS"]
    assert load(path, variables).server.max_recipients == 100
