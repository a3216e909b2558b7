"""Fixtures of the runner's tests: a recording SMTP server, a spool, a clock, a log."""

from __future__ import annotations

import io
import pathlib
from collections.abc import Iterator

import pytest

from pysendmail.queue import Queue
from tests.runner.helpers import Clock
from tests.runner.smtpd import RecordingServer


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    with RecordingServer() as srv:
        yield srv


@pytest.fixture
def queue(tmp_path: pathlib.Path) -> Queue:
    q = Queue(str(tmp_path / "spool"))
    q.ensure()
    return q


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def log() -> io.StringIO:
    return io.StringIO()
