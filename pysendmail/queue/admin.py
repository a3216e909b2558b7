"""The admin tools' changes to queued mail: hold, release, requeue, flush, delete.

Each takes the message's lock first (the one a runner's claim holds), so an
admin never moves or removes a message from under a delivery: a busy message
is ``TemporaryFailure`` ("try again in a moment", 75), an unknown id
``NoSuchMessage`` (66). Each returns one line saying what was done, in the
words of Postfix's ``postsuper`` ("placed on hold", "requeued").

What this module must never do: change a state file without holding the
message's lock (a runner's newer state could be lost, and a recipient sent
twice), or move a file over another.

SECURITY: ids are checked as file names (``check_id``) before any path is
built; files are opened by ``Queue._lock`` (``O_NOFOLLOW``, regular files
only).
"""

import os
import time

from pysendmail.errors import TemporaryFailure
from pysendmail.queue.commit import fsync_dir, link_or_rename, unlink_quietly
from pysendmail.queue.spool import NoSuchMessage, Queue

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

    from pysendmail.queue.state import State


def _busy(queue_id: str) -> TemporaryFailure:
    return TemporaryFailure(f"{queue_id} is being delivered right now; try again in a moment")


def _locked(queue: Queue, folder: str, queue_id: str) -> "BinaryIO":
    path = queue.path(folder, queue_id)
    f = queue._lock(path)
    if f is None:
        if os.path.lexists(path):
            raise _busy(queue_id)
        raise NoSuchMessage(queue_id)
    return f


def _state_for(queue: Queue, f: "BinaryIO", queue_id: str) -> "State":
    from pysendmail.message.envelope import Envelope

    f.seek(0)
    return queue.state_of(queue_id, Envelope.from_file(f))


def _locate(queue: Queue, queue_id: str) -> str:
    folder = queue.locate(queue_id)
    if folder is None:
        raise NoSuchMessage(queue_id)
    return folder


def flush(queue: Queue, queue_id: str, now: "float | None" = None) -> str:
    """Make every pending recipient of a queued message due now."""
    folder = _locate(queue, queue_id)
    if folder != "queue":
        return f"{queue_id}: not flushed: it is in {folder}/ (release or requeue it first)"
    f = queue._lock(queue.path(folder, queue_id))
    if f is None:
        return f"{queue_id}: being delivered now"
    with f:
        state = _state_for(queue, f, queue_id)
        if state.make_due(time.time() if now is None else now):
            queue.write_state(queue_id, state)
    return f"{queue_id}: due now"


def delete(queue: Queue, queue_id: str) -> str:
    """Remove a message from whichever folder holds it, then its state."""
    folder = _locate(queue, queue_id)
    with _locked(queue, folder, queue_id):
        os.unlink(queue.path(folder, queue_id))
        fsync_dir(queue.dir(folder))
    unlink_quietly(queue.path("state", queue_id))
    return f"{queue_id}: deleted"


def move(queue: Queue, queue_id: str, dest: str, *, requeue: bool = False) -> str:
    """hold (``dest`` hold), release (queue) or requeue (queue, with a new lifetime)."""
    folder = _locate(queue, queue_id)
    if folder == dest and not requeue:
        return f"{queue_id}: already in {dest}/"
    if dest == "hold" and folder == "failed":
        return f"{queue_id}: not held: it is in failed/ (requeue or delete it)"
    with _locked(queue, folder, queue_id) as f:
        if dest == "queue":
            now = time.time()
            state = _state_for(queue, f, queue_id)
            if requeue:
                state.requeue(now)
            else:
                state.make_due(now)
            queue.write_state(queue_id, state)
        if folder != dest:
            link_or_rename(queue.path(folder, queue_id), queue.path(dest, queue_id))
            fsync_dir(queue.dir(dest))
    if dest == "queue":
        queue.poke()
    if dest == "hold":
        return f"{queue_id}: placed on hold"
    if requeue:
        return f"{queue_id}: requeued"
    return f"{queue_id}: released from hold"
