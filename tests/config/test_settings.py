"""The plain settings object: attribute access, equality, a repr, and a lossless dict form."""

from collections.abc import Callable

import pytest

from pysendmail.config import load_settings
from pysendmail.config.settings import settings_from_data, settings_to_data

Write = Callable[..., str]


def test_the_plain_dict_form_round_trips(write: Write, env: dict[str, str]) -> None:
    path = write('[general]\ndomain = "example.com"\n[[relay]]\nhost = "smtp.example.com"\n')
    settings = load_settings(path, env)
    data = settings_to_data(settings)
    assert data["general"]["domain"] == "example.com"
    assert data["relays"][0]["host"] == "smtp.example.com"
    assert settings_from_data(data) == settings


def test_another_shape_is_refused(write: Write, env: dict[str, str]) -> None:
    data = settings_to_data(load_settings(write(""), env))
    data["general"]["colour"] = "blue"
    with pytest.raises(ValueError, match="General: unexpected shape"):
        settings_from_data(data)
    with pytest.raises(ValueError, match="Settings: unexpected shape"):
        settings_from_data({**data, "relays": []})


def test_settings_compare_by_value_and_show_their_values(write: Write, env: dict[str, str]) -> None:
    one = load_settings(write('[general]\ndomain = "example.com"\n', "one.toml"), env)
    two = load_settings(write('[general]\ndomain = "example.com"\n', "two.toml"), env)
    assert one.general == two.general
    assert one != two  # source_path differs
    assert one.general != one.log
    assert "domain='example.com'" in repr(one.general)
