"""Reply texts: what a failed commit tells the client, and client text made safe."""

from __future__ import annotations

import errno

import pytest

from pysendmail import errors
from pysendmail.server.replies import failure, reply_text


@pytest.mark.parametrize(
    "exc",
    [
        errors.TemporaryFailure("the queue is full"),
        errors.CantCreateError("cannot create tmp/X"),
        errors.IOFailure("writing the spool file failed"),
        errors.PermissionDeniedError("queue/ is not ours"),
        errors.ConfigError("queue_dir is missing"),
    ],
)
def test_a_failure_of_the_queue_is_451_with_its_reason(exc: Exception) -> None:
    reply, text, level = failure(exc)
    assert reply.startswith("451 4.3.0 Cannot queue the message now, try again later: ")
    assert str(exc) in reply
    assert text == f"not queued: {exc}" and level == "error"


def test_a_refused_message_is_554_and_a_warning() -> None:
    reply, text, level = failure(errors.DataError("a NUL in the header block"))
    assert reply == "554 5.6.0 Message refused: a NUL in the header block"
    assert text == "refused: a NUL in the header block" and level == "warning"


def test_a_system_error_is_451_without_its_details_in_the_reply() -> None:
    exc = OSError(errno.ENOSPC, "No space left on device", "/var/spool/pysendmail/tmp/X")
    reply, text, level = failure(exc)
    assert reply == "451 4.3.0 Cannot queue the message now, try again later"
    assert text == "not queued: No space left on device" and level == "error"


def test_anything_else_is_451_and_not_ours_to_explain() -> None:
    reply, text, level = failure(ValueError("a bug"))
    assert reply == "451 4.3.0 Temporary server error, try again later"
    assert text is None and level == "error"


def test_client_text_in_a_reply_is_one_printable_short_line() -> None:
    hostile = "evil\r\n250 fake\x00\x1b[31m" + "x" * 500
    made = reply_text(hostile, 100)
    assert "\r" not in made and "\n" not in made and "\x00" not in made and "\x1b" not in made
    assert made.isprintable() and len(made) == 100 + len("...") and made.endswith("...")
    assert made.startswith("evil??250 fake??[31m")  # the CR LF cannot start a new reply
    # A long error keeps to its limit inside the 451 reply too.
    reply, _, _ = failure(errors.IOFailure(hostile))
    prefix = "451 4.3.0 Cannot queue the message now, try again later: "
    assert reply.isprintable() and reply.startswith(prefix)
    assert len(reply) == len(prefix) + 120 + len("...")
