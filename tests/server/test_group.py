"""Group commit: each message durable and linked, a failing one aborted alone."""

from __future__ import annotations

import io
import os
from pathlib import Path

from pysendmail.errors import IOFailure
from pysendmail.message.intake import IntakeOptions, make_queue_id, receive
from pysendmail.queue.group import commit_group
from pysendmail.queue.spool import Queue
from pysendmail.server.committer import process_batch

BODY = b"From: a@example.com\r\nSubject: x\r\n\r\nhello\r\n"


def _options(queue_id: str) -> IntakeOptions:
    options = IntakeOptions(
        dot_ends_input=False, sender="a@example.com", recipients=["b@example.org"]
    )
    options.queue_id = queue_id
    return options


def test_commit_group_links_all_and_aborts_an_incomplete_one(tmp_path: Path) -> None:
    queue = Queue(str(tmp_path / "spool"))
    pendings = []
    for _ in range(3):
        queue_id = make_queue_id()
        pending = queue.begin(queue_id)
        receive(io.BytesIO(BODY), pending.file, _options(queue_id))
        pendings.append(pending)
    pendings[1].file.write(b"trailing garbage")  # no longer the size its envelope says
    results = commit_group(pendings)
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], IOFailure)
    queued = sorted(os.listdir(queue.dir("queue")))
    assert queued == sorted([pendings[0].queue_id, pendings[2].queue_id])
    assert os.listdir(queue.dir("tmp")) == []


def test_process_batch_answers_250_only_for_committed_messages(tmp_path: Path) -> None:
    queue = Queue(str(tmp_path / "spool"))
    queue.begin(make_queue_id()).abort()  # lays the personal queue out
    template = IntakeOptions(dot_ends_input=False)
    jobs = [
        ("a@example.com", ["b@example.org"], None, BODY),
        ("a@example.com", ["b@example.org"], None, b"Subject: \x00\r\n\r\nx\r\n"),
    ]
    results = process_batch(queue.root, template, jobs)
    assert results[0][0].startswith("250 ") and results[0][3] in os.listdir(queue.dir("queue"))
    assert results[1][0].startswith("554 ")
    assert len(os.listdir(queue.dir("queue"))) == 1
    assert os.listdir(queue.dir("tmp")) == []
