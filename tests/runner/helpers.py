"""Shared pieces of the runner's tests: a configuration, a queue, messages, a clock."""

from __future__ import annotations

import email
import io
import os
import pathlib
from email.message import Message

from pysendmail.config import Settings, load_settings
from pysendmail.log import Logger
from pysendmail.message.envelope import Envelope, Recipient
from pysendmail.queue import Queue, make_queue_id
from pysendmail.queue.state import State
from pysendmail.runner import Runner

#: The arrival time of every test message (the injected clock starts here).
T0 = 1_750_000_000.0


def write_config(
    directory: pathlib.Path,
    port: int,
    *,
    queue: dict[str, object] | None = None,
    relay: dict[str, object] | None = None,
    extra: str = "",
) -> pathlib.Path:
    """A configuration file with one relay on 127.0.0.1:``port`` and a spool under ``directory``."""
    relay_values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "tls": "none",
        "connect_timeout": 5,
        "command_timeout": 5,
        "data_timeout": 5,
    }
    relay_values.update(relay or {})
    queue_values: dict[str, object] = {"connections": 1}
    queue_values.update(queue or {})

    def table(values: dict[str, object]) -> str:
        lines = []
        for key, value in values.items():
            shown = f'"{value}"' if isinstance(value, str) else str(value).lower()
            lines.append(f"{key} = {shown}")
        return "\n".join(lines)

    path = directory / "pysendmail.toml"
    path.write_text(
        "[general]\n"
        'hostname = "mx.example.com"\n'
        'domain = "example.com"\n'
        f'queue_dir = "{directory / "spool"}"\n'
        "[[relay]]\n" + table(relay_values) + "\n"
        "[queue]\n" + table(queue_values) + "\n"
        "[log]\n"
        'target = "stderr"\n' + extra
    )
    return path


def settings_for(
    directory: pathlib.Path,
    port: int,
    **kw: dict[str, object] | None,
) -> Settings:
    path = write_config(directory, port, **kw)  # type: ignore[arg-type]
    return load_settings(str(path), {}, use_snapshot=False)


def message_bytes(subject: str, body: str = "Hello.\r\n") -> bytes:
    return (
        f"From: Alice <alice@example.com>\r\n"
        f"To: bob@example.net\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@example.com>\r\n"
        f"\r\n{body}"
    ).encode()


def enqueue(
    queue: Queue,
    recipients: list[str] | list[Recipient],
    *,
    sender: str = "alice@example.com",
    subject: str | None = None,
    body: str = "Hello.\r\n",
    arrival: float = T0,
    dsn_ret: str | None = None,
    data: bytes | None = None,
) -> str:
    """Commit one message to ``queue`` and return its id."""
    queue_id = make_queue_id()
    content = data if data is not None else message_bytes(subject or queue_id, body)
    rcpts = [r if isinstance(r, Recipient) else Recipient(r) for r in recipients]
    envelope = Envelope(
        queue_id=queue_id,
        sender=sender,
        recipients=rcpts,
        dsn_ret=dsn_ret,
        arrival=arrival,
        size=len(content),
        eightbit=not content.isascii(),
        body_type=None if content.isascii() else "8BITMIME",
    )
    with queue.begin(queue_id) as pending:
        pending.file.write(envelope.to_bytes())
        pending.file.write(content)
        pending.commit()
    return queue_id


class Clock:
    """An injected wall clock: ``clock.now`` is what the runner sees."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run_queue_once(settings: Settings) -> tuple[int, str]:
    """``pysendmail queue run`` once, in this process: its exit status and what it said."""
    from pysendmail.cli import Streams
    from pysendmail.runner import run_queue_main

    err = io.StringIO()
    status = run_queue_main(settings, Streams(stdout=io.StringIO(), stderr=err, environ={}))
    return status, err.getvalue()


def make_runner(settings: Settings, clock: Clock, log: io.StringIO, **kw: object) -> Runner:
    logger = Logger("stderr", stream=log)
    return Runner(settings, logger=logger, clock=clock, **kw)  # type: ignore[arg-type]


def state_of(queue: Queue, queue_id: str) -> State:
    state = queue.read_state(queue_id)
    assert state is not None, f"{queue_id} has no state file"
    return state


def statuses(queue: Queue, queue_id: str) -> dict[str, str]:
    return {r.address: r.status for r in state_of(queue, queue_id).recipients}


def parse(data: bytes) -> Message:
    return email.message_from_bytes(data)


def dsn_blocks(data: bytes) -> list[Message]:
    """The delivery-status blocks (per message, then per recipient) of a received DSN."""
    msg = parse(data)
    assert msg.get_content_type() == "multipart/report"
    parts = msg.get_payload()
    assert isinstance(parts, list)
    status = parts[1]
    assert isinstance(status, Message)
    blocks = status.get_payload()
    assert isinstance(blocks, list)
    return [b for b in blocks if isinstance(b, Message)]


def queue_files(queue: Queue, folder: str = "queue") -> list[str]:
    return sorted(os.listdir(queue.dir(folder)))
