"""Fixtures for the sidecar's tests: test certificates and a recording relay on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.fixtures import certificates, smtpd, smtpd_factory
from tests.support.smtpd import RecordingServer

__all__ = ["certificates", "relay", "smtpd", "smtpd_factory"]


@pytest.fixture
def relay(smtpd_factory: Callable[..., RecordingServer]) -> RecordingServer:
    """The smarthost the server delivers to: it records every message."""
    return smtpd_factory()
