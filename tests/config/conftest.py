"""Fixtures for the configuration tests: a private snapshot directory, config files."""

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def env(cache_dir: Path) -> dict[str, str]:
    """An environment that keeps snapshots out of /var/cache (the tests run as root)."""
    return {"PYSENDMAIL_CACHE_DIR": str(cache_dir)}


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., str]:
    """Write a configuration file into the test's directory; returns its path."""

    def write(text: str, name: str = "pysendmail.toml") -> str:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    return write
