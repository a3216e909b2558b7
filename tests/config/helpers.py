"""Helpers shared by the configuration tests."""

import pytest

from pysendmail.config.loader import ConfigProblems
from pysendmail.config.settings import Settings
from pysendmail.config.snapshot import load_settings


def load(path: str, environ: dict[str, str]) -> Settings:
    """Full validation, no snapshot."""
    return load_settings(path, environ, use_snapshot=False)


def problems(path: str, environ: dict[str, str]) -> list[str]:
    """Every problem full validation reports, one line each."""
    with pytest.raises(ConfigProblems) as caught:
        load(path, environ)
    assert str(caught.value) == caught.value.problems[0]
    assert caught.value.exit_status == 78
    return caught.value.problems
