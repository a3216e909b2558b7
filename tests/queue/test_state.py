"""State files: what is written reads back; anything else is one DataError, never a traceback."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pysendmail import errors
from pysendmail.queue.state import STATUSES, RecipientState, State
from tests.queue.helpers import enqueue, new_queue, queue_files

# What str.isprintable() accepts: no C* or Z* category except the ASCII space.
_text = st.text(
    st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"))
    | st.just(" "),
    max_size=60,
)
_times = st.one_of(st.none(), st.floats(0, 1e10, allow_nan=False))
_recipient = st.builds(
    RecipientState,
    address=_text.filter(bool),
    status=st.sampled_from(STATUSES),
    attempts=st.integers(0, 10_000),
    last_attempt=_times,
    next_attempt=_times,
    reply=_text,
    notified=st.booleans(),
)
_ids = st.text("ABCDEFGHJKMNPQRSTVWXYZ0123456789_-", min_size=1, max_size=64)


def _unique(recipients: list[RecipientState]) -> list[RecipientState]:
    seen: dict[str, RecipientState] = {}
    for r in recipients:
        seen.setdefault(r.address, r)
    return list(seen.values())


_states = st.builds(
    State,
    queue_id=_ids,
    since=st.floats(0, 1e10, allow_nan=False),
    recipients=st.lists(_recipient, max_size=8).map(_unique),
)


@given(_states)
def test_every_state_reads_back_as_written(state: State) -> None:
    assert State.from_bytes(state.to_bytes(), state.queue_id) == state


@given(st.binary(max_size=400))
def test_random_bytes_are_refused_with_data_error(data: bytes) -> None:
    try:
        State.from_bytes(data)
    except errors.DataError as exc:
        assert str(exc).startswith("state file")
        assert "\n" not in str(exc)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)


def _valid_doc() -> dict[str, Any]:
    return {
        "format": "pysendmail-state",
        "version": 1,
        "id": "Q1",
        "since": 1.0,
        "recipients": [
            {
                "address": "bob@example.net",
                "status": "deferred",
                "attempts": 2,
                "last_attempt": 5.0,
                "next_attempt": 9.0,
                "reply": "451 4.7.1 later",
                "notified": False,
            }
        ],
    }


@given(st.sampled_from(["format", "version", "id", "since", "recipients"]), _json)
def test_any_value_in_any_top_level_key_is_read_or_refused_cleanly(key: str, value: Any) -> None:
    doc = _valid_doc()
    doc[key] = value
    try:
        state = State.from_bytes(json.dumps(doc).encode())
    except errors.DataError:
        return
    state.check()  # what was accepted is a state that can be written again


@given(
    st.sampled_from(
        ["address", "status", "attempts", "last_attempt", "next_attempt", "reply", "notified"]
    ),
    _json,
)
def test_any_value_in_any_recipient_key_is_read_or_refused_cleanly(key: str, value: Any) -> None:
    doc = _valid_doc()
    doc["recipients"][0][key] = value
    try:
        state = State.from_bytes(json.dumps(doc).encode())
    except errors.DataError:
        return
    assert State.from_bytes(state.to_bytes()) == state


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"format": "pysendmail-state", "format": "x"}', "repeats the key"),
        (b"[" * 100_000, "not valid JSON"),
        (b'{"a": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (json.dumps({**_valid_doc(), "since": float("nan")}).encode(), "since is not a time"),
        (json.dumps({**_valid_doc(), "since": 1e400}).encode(), "since is not a time"),
        (json.dumps({**_valid_doc(), "version": True}).encode(), "version"),
        (json.dumps({**_valid_doc(), "extra": 1}).encode(), "keys"),
        (b"\xff\xfe{}", "not valid JSON"),
    ],
)
def test_hostile_documents_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(errors.DataError, match=reason):
        State.from_bytes(data)


def test_a_reply_with_a_line_break_is_refused_on_reading_and_made_inert_on_writing(
    tmp_path: pathlib.Path,
) -> None:
    doc = _valid_doc()
    doc["recipients"][0]["reply"] = "451 later\nfake: mailq line"
    with pytest.raises(errors.DataError, match="control or unprintable character"):
        State.from_bytes(json.dumps(doc).encode())
    # A relay's hostile reply must never stop the runner from recording a verdict.
    q = new_queue(tmp_path / "spool")
    env = enqueue(q)
    state = State.fresh(env)
    state.recipients[0].reply = "250 ok\r\nforged\x1b[2J" + "x" * 5000
    q.write_state(env.queue_id, state)
    back = q.read_state(env.queue_id)
    assert back is not None
    assert back.recipients[0].reply.startswith("250 ok??forged?[2J")
    assert len(back.recipients[0].reply) == 4000
    assert queue_files(q, "state") == [env.queue_id] and queue_files(q, "tmp") == []


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=30)
@given(st.binary(max_size=300))
def test_read_state_of_a_damaged_file_names_the_file(tmp_path: pathlib.Path, data: bytes) -> None:
    q = new_queue(tmp_path / "spool") if not (tmp_path / "spool").exists() else None
    from pysendmail.queue import Queue

    q = q or Queue(str(tmp_path / "spool"))
    path = pathlib.Path(q.path("state", "DAMAGED1"))
    path.write_bytes(data)
    try:
        q.read_state("DAMAGED1")
    except errors.DataError as exc:
        assert str(exc).startswith(str(path))


def test_fresh_state_lists_each_recipient_once_and_none_is_due_after_all_finish(
    tmp_path: pathlib.Path,
) -> None:
    q = new_queue(tmp_path / "spool")
    env = enqueue(q, recipients=["bob@example.net", "carol@example.net", "bob@example.net"])
    state = State.fresh(env)
    assert [r.address for r in state.recipients] == ["bob@example.net", "carol@example.net"]
    assert state.due(0) and not state.finished
    for r in state.recipients:
        r.status = "sent"
    assert state.finished and not state.due(1e10) and state.next_attempt() is None
