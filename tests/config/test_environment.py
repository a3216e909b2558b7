"""``PYSENDMAIL_…`` variables: overriding keys, indexing relays, JSON, and refusing typos."""

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pysendmail.config.snapshot import load_settings
from pysendmail.errors import ConfigError
from tests.config.helpers import load, problems

Write = Callable[..., str]

FILE = """
[general]
hostname = "mail.example.com"
domain = "example.com"

[[relay]]
host = "smtp.example.com"
port = 587
"""


def test_a_variable_overrides_the_file(write: Write, env: dict[str, str]) -> None:
    path = write(FILE)
    s = load(path, {**env, "PYSENDMAIL_GENERAL__DOMAIN": "example.org"})
    assert s.general.domain == "example.org"
    assert s.general.hostname == "mail.example.com"


def test_variables_set_every_kind_of_value(write: Write, env: dict[str, str]) -> None:
    s = load(
        write(FILE),
        {
            **env,
            "PYSENDMAIL_GENERAL__SENDER_FROM_HEADER": "yes",
            "PYSENDMAIL_GENERAL__MAX_MESSAGE_SIZE": "10M",
            "PYSENDMAIL_QUEUE__LIFETIME": "3d",
            "PYSENDMAIL_QUEUE__CONNECTIONS": "4",
            "PYSENDMAIL_LOG__FORMAT": "json",
            "PYSENDMAIL_RELAY__0__TLS_VERIFY": "false",
            "PYSENDMAIL_RELAY__0__SENDERS": '["*@example.org"]',
        },
    )
    assert s.general.sender_from_header is True
    assert s.general.max_message_size == 10 * 1024 * 1024
    assert (s.queue.lifetime, s.queue.connections, s.log.format) == (3 * 86400, 4, "json")
    assert s.relays[0].tls_verify is False
    assert s.relays[0].senders == ("*@example.org",)


def test_key_words_after_the_prefix_may_be_in_any_case(write: Write, env: dict[str, str]) -> None:
    s = load(write(FILE), {**env, "PYSENDMAIL_General__Domain": "example.net"})
    assert s.general.domain == "example.net"


def test_an_indexed_variable_changes_one_key_of_a_relay_from_the_file(
    write: Write, env: dict[str, str]
) -> None:
    (relay,) = load(write(FILE), {**env, "PYSENDMAIL_RELAY__0__PORT": "2525"}).relays
    assert (relay.host, relay.port) == ("smtp.example.com", 2525)


def test_an_index_one_past_the_end_adds_a_relay(write: Write, env: dict[str, str]) -> None:
    relays = load(
        write(FILE),
        {
            **env,
            "PYSENDMAIL_RELAY__2__HOST": "third.example.com",
            "PYSENDMAIL_RELAY__1__HOST": "second.example.com",
            "PYSENDMAIL_RELAY__1__TLS": "implicit",
        },
    ).relays
    assert [(r.index, r.host, r.port) for r in relays] == [
        (0, "smtp.example.com", 587),
        (1, "second.example.com", 465),
        (2, "third.example.com", 25),
    ]


def test_an_index_past_the_end_is_an_error(write: Write, env: dict[str, str]) -> None:
    path = write(FILE)
    assert problems(path, {**env, "PYSENDMAIL_RELAY__3__HOST": "x.example.com"}) == [
        "PYSENDMAIL_RELAY__3__HOST: relay[3]: index 3 is past the end: relay has 1 entry, "
        "so a new one is index 1"
    ]


def test_a_whole_relay_list_as_json_replaces_the_files(write: Write, env: dict[str, str]) -> None:
    value = json.dumps([{"host": "a.example.com", "tls": "implicit"}, {"host": "b.example.com"}])
    relays = load(write(FILE), {**env, "PYSENDMAIL_RELAY": value}).relays
    assert [(r.host, r.port) for r in relays] == [("a.example.com", 465), ("b.example.com", 25)]


def test_indexed_variables_apply_on_top_of_the_json_list(write: Write, env: dict[str, str]) -> None:
    relays = load(
        write(FILE),
        {
            **env,
            "PYSENDMAIL_RELAY": '[{"host": "a.example.com"}]',
            "PYSENDMAIL_RELAY__0__PORT": "2525",
            "PYSENDMAIL_RELAY__1": '{"host": "b.example.com", "port": 26}',
        },
    ).relays
    assert [(r.host, r.port) for r in relays] == [("a.example.com", 2525), ("b.example.com", 26)]


def test_no_file_at_all_and_only_variables(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pysendmail.config import snapshot

    monkeypatch.setattr(snapshot, "DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    s = load_settings(
        None,
        {
            **env,
            "PYSENDMAIL_GENERAL__HOSTNAME": "app.example.com",
            "PYSENDMAIL_RELAY__0__HOST": "smtp.example.com",
            "PYSENDMAIL_RELAY__0__USER": "me",
            "PYSENDMAIL_RELAY__0__PASSWORD_FILE": "/run/secrets/smtp",
        },
    )
    assert s.source_exists is False
    assert s.source_path == str(tmp_path / "absent.toml")
    assert s.general.domain == "example.com"
    assert s.relays[0].password_source == "file:/run/secrets/smtp"


def test_an_empty_variable_unsets_the_key(write: Write, env: dict[str, str]) -> None:
    s = load(write(FILE), {**env, "PYSENDMAIL_GENERAL__DOMAIN": ""})
    assert s.general.domain == "example.com"  # the default: hostname minus its first label
    s = load(write(FILE), {**env, "PYSENDMAIL_RELAY__0__PORT": ""})
    assert s.relays[0].port == 25


def test_a_section_as_json(write: Write, env: dict[str, str]) -> None:
    s = load(write(FILE), {**env, "PYSENDMAIL_QUEUE": '{"lifetime": "1d", "bounce": "log"}'})
    assert (s.queue.lifetime, s.queue.bounce) == (86400, "log")


def test_password_command_from_a_variable(write: Write, env: dict[str, str]) -> None:
    s = load(
        write(FILE),
        {
            **env,
            "PYSENDMAIL_RELAY__0__USER": "me",
            "PYSENDMAIL_RELAY__0__PASSWORD_COMMAND": '["/usr/bin/pass", "smtp"]',
        },
    )
    assert s.relays[0].password_command == ("/usr/bin/pass", "smtp")


def test_variables_other_than_pysendmails_are_ignored(write: Write, env: dict[str, str]) -> None:
    s = load(write(FILE), {**env, "HOME": "/root", "GENERAL__DOMAIN": "x", "PYSENDMAILX": "1"})
    assert s.general.domain == "example.com"


def test_only_the_given_environment_is_read(
    write: Write, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYSENDMAIL_GENERAL__DOMAIN", "from-os-environ.example")
    assert load(write(FILE), env).general.domain == "example.com"


def test_pysendmail_config_names_the_file(write: Write, env: dict[str, str]) -> None:
    path = write(FILE, "other.toml")
    assert load_settings(None, {**env, "PYSENDMAIL_CONFIG": path}).source_path == path


def test_dash_c_wins_over_pysendmail_config(write: Write, env: dict[str, str]) -> None:
    chosen = write(FILE, "chosen.toml")
    with pytest.raises(ConfigError, match=r"ignored\.toml: cannot read: no such file"):
        load_settings(None, {**env, "PYSENDMAIL_CONFIG": chosen.replace("chosen", "ignored")})
    s = load_settings(chosen, {**env, "PYSENDMAIL_CONFIG": "/nonexistent.toml"})
    assert s.source_path == chosen


UNKNOWN = [
    ("PYSENDMAIL_GENERAL__DOMIAN", "x", 'general.domian: unknown key (did you mean "domain"?)'),
    ("PYSENDMAIL_GENRAL__DOMAIN", "x", 'genral: unknown section (did you mean "general"?)'),
    ("PYSENDMAIL_RELAY__0__PROT", "25", 'relay[0].prot: unknown key (did you mean "port"?)'),
    ("PYSENDMAIL_GENERAL__DOMAIN__X", "x", "general.domain.x: is not a configuration key"),
    (
        "PYSENDMAIL_RELAY__HOST",
        "x",
        "relay: needs an index after it, e.g. PYSENDMAIL_RELAY__0__HOST",
    ),
    (
        "PYSENDMAIL_",
        "x",
        "is not a configuration key: write PYSENDMAIL_SECTION__KEY, "
        "e.g. PYSENDMAIL_GENERAL__DOMAIN",
    ),
    (
        "PYSENDMAIL_GENERAL__",
        "x",
        "is not a configuration key: write PYSENDMAIL_SECTION__KEY, "
        "e.g. PYSENDMAIL_GENERAL__DOMAIN",
    ),
]


@pytest.mark.parametrize(("name", "value", "message"), UNKNOWN, ids=[u[0] for u in UNKNOWN])
def test_a_variable_that_names_no_key_is_an_error(
    write: Write, env: dict[str, str], name: str, value: str, message: str
) -> None:
    assert problems(write(FILE), {**env, name: value}) == [f"{name}: {message}"]


BAD_VALUES = [
    ("PYSENDMAIL_RELAY__0__PORT", "0", "relay[0].port: must be between 1 and 65535"),
    (
        "PYSENDMAIL_GENERAL__MODE",
        "fast",
        'general.mode: must be one of "queue", "direct", "direct-then-queue"',
    ),
    ("PYSENDMAIL_RELAY", "{", 'relay: must be JSON (a list), e.g. [{"host": "smtp.example.com"}]'),
    (
        "PYSENDMAIL_RELAY",
        '{"host": "x.example"}',
        'relay: must be a JSON list, e.g. [{"host": "smtp.example.com"}]',
    ),
    ("PYSENDMAIL_RELAY", '[{"port": 25}]', "relay[0].host: is required"),
    (
        "PYSENDMAIL_RELAY__0",
        "[1]",
        'relay[0]: must be a JSON object, e.g. {"host": "smtp.example.com"}',
    ),
    (
        "PYSENDMAIL_RELAY__0__SENDERS",
        "*@example.org",
        'relay[0].senders: must be JSON (a list), e.g. ["*@example.org"]',
    ),
    (
        "PYSENDMAIL_RELAY__0__PASSWORD_COMMAND",
        "pass smtp",
        'relay[0].password_command: must be JSON (a list), e.g. ["/usr/bin/pass", "smtp"]',
    ),
    (
        "PYSENDMAIL_RELAY__0__PASSWORD_COMMAND",
        '"pass smtp"',
        'relay[0].password_command: must be a list of argv words, like ["/usr/bin/pass", '
        '"show", "smtp"] (it runs without a shell, so a string is not split)',
    ),
    ("PYSENDMAIL_RELAY__0__TLS_VERIFY", "maybe", "relay[0].tls_verify: must be true or false"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_a_bad_value_from_a_variable_names_the_variable(
    write: Write, env: dict[str, str], name: str, value: str, message: str
) -> None:
    assert problems(write(FILE), {**env, name: value}) == [f"{name}: {message}"]


def test_a_relay_added_by_a_variable_without_a_host_names_that_variable(
    write: Write, env: dict[str, str]
) -> None:
    assert problems(write(FILE), {**env, "PYSENDMAIL_RELAY__1__PORT": "25"}) == [
        "PYSENDMAIL_RELAY__1__PORT: relay[1].host: is required"
    ]


def test_a_cross_field_error_names_the_variable_of_its_key(
    write: Write, env: dict[str, str]
) -> None:
    path = write(FILE)
    assert problems(path, {**env, "PYSENDMAIL_RELAY__0__USER": "me"}) == [
        "PYSENDMAIL_RELAY__0__USER: relay[0].user: is set but there is no password source: "
        "add password_file, password_command or password"
    ]


def test_problems_in_the_file_and_the_environment_are_all_reported(
    write: Write, env: dict[str, str]
) -> None:
    path = write(FILE + '[log]\nlevel = "loud"\n')
    assert problems(path, {**env, "PYSENDMAIL_RELAY__0__PORT": "x"}) == [
        "PYSENDMAIL_RELAY__0__PORT: relay[0].port: must be a whole number",
        f'{path}: log.level: must be one of "debug", "info", "warning", "error"',
    ]


def test_a_variable_reaching_into_a_broken_file_value_blames_the_file(
    write: Write, env: dict[str, str]
) -> None:
    path = write("relay = [5]\ngeneral = 5\n")
    environ = {**env, "PYSENDMAIL_RELAY__0__PORT": "25", "PYSENDMAIL_GENERAL__DOMAIN": "x.example"}
    assert problems(path, environ) == [
        f"{path}: general: must be a table",
        f"{path}: relay[0]: must be a table",
    ]
