"""pytest fixtures around the test SMTP servers of ``tests.support.smtpd``.

A conftest.py makes them available with::

    from tests.support.fixtures import certificates, scripted_server, smtpd, smtpd_factory

``certificates`` (session-wide): a trustme CA and a server certificate for
localhost/127.0.0.1, with ``ca_file`` for clients. ``smtpd_factory(**config)``:
a started ``RecordingServer`` (TLS servers get ``certificates`` unless given),
stopped after the test. ``smtpd``: one with the defaults (PIPELINING, 8BITMIME,
SMTPUTF8, no TLS, no AUTH). ``scripted_server(script, **options)``: a started
``ScriptedServer``; stopped after the test, and a script that failed fails the
test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.smtpd import Certificates, Peer, RecordingServer, ScriptedServer

__all__ = ["certificates", "scripted_server", "smtpd", "smtpd_factory"]


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def smtpd_factory(certificates: Certificates) -> Iterator[Callable[..., RecordingServer]]:
    servers: list[RecordingServer] = []

    def make(**config: Any) -> RecordingServer:
        if config.get("tls") is not None:
            config.setdefault("certificates", certificates)
        server = RecordingServer(**config).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def smtpd(smtpd_factory: Callable[..., RecordingServer]) -> RecordingServer:
    return smtpd_factory()


@pytest.fixture
def scripted_server() -> Iterator[Callable[..., ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def make(script: Callable[[Peer], None], **options: Any) -> ScriptedServer:
        server = ScriptedServer(script, **options).start()
        servers.append(server)
        return server

    yield make
    errors: list[BaseException] = []
    for server in servers:
        try:
            server.stop()
        except BaseException as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
