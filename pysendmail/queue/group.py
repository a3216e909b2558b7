"""Group commit: make a batch of ``Pending`` messages durable with one fsync of ``queue/``.

``commit_group`` does for a batch what ``Pending.commit`` does for one
message, in the same order: each file is flushed, checked complete against its
envelope and fsynced; each is then linked into ``queue/`` (never replacing a
file) and its ``tmp/`` name removed; then ``queue/`` is fsynced once for the
whole batch, and the trigger is poked once. A message is committed — and its
submitter may hear ``250`` — only when ``commit_group`` returned ``None`` for
it, which happens only after the directory fsync that covers its link.

A failure of one message (a file not complete, a full disk, an id in use)
aborts that message alone; a failure of the directory fsync aborts every
message of the batch that was linked (their links are removed: nothing is
acknowledged, nothing stays half-queued).

Maildrop messages (``Pending`` of a user who is not the queue owner) are
committed one by one with ``Pending.commit``: their folder is synced in its
own way.

What this module must never do: report success for a message before its bytes
and its directory entry are on disk; leave a partial file behind.
"""

import contextlib
import errno
import os

from pysendmail.errors import CantCreateError, IOFailure, TemporaryFailure
from pysendmail.queue.commit import Pending, fsync_dir, link_or_rename, strerror

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _failure(exc: OSError, pending: Pending, where: str) -> Exception:
    if exc.errno in _NO_SPACE:
        return TemporaryFailure(f"{where}: {strerror(exc)}; nothing was queued, try again later")
    if exc.errno == errno.EEXIST:
        return CantCreateError(
            f"{pending.final}: queue id {pending.queue_id} is already in use; nothing was queued"
        )
    return IOFailure(f"{exc.filename or where}: {strerror(exc)}; nothing was queued")


def commit_group(pendings: "list[Pending]") -> "list[Exception | None]":
    """Commit every message of ``pendings``; for each, ``None`` (durable) or why it was not.

    The exceptions are those of ``Pending.commit`` (``TemporaryFailure``,
    ``CantCreateError``, ``IOFailure``); a message that failed was aborted.
    """
    results: list[Exception | None] = [None] * len(pendings)
    synced: list[int] = []
    for i, p in enumerate(pendings):
        if p.dir_fd is not None:
            try:
                p.commit()  # the maildrop: its own discipline, one by one
            except Exception as exc:
                results[i] = exc
            continue
        p.committing = True
        try:
            p.file.flush()
            fd = p.file.fileno()
            p._check_complete(fd)
            os.fsync(fd)
        except OSError as exc:
            p.abort()
            results[i] = _failure(exc, p, os.path.dirname(p.final))
            continue
        except Exception as exc:
            p.abort()
            results[i] = exc
            continue
        synced.append(i)
    linked: list[int] = []
    for i in synced:
        p = pendings[i]
        try:
            link_or_rename(p.path, p.final)
        except OSError as exc:
            p.abort()
            results[i] = _failure(exc, p, os.path.dirname(p.final))
            continue
        linked.append(i)
    if not linked:
        return results
    where = ""
    try:
        for where in sorted({os.path.dirname(pendings[i].final) for i in linked}):
            fsync_dir(where)
    except OSError as exc:
        for i in linked:
            p = pendings[i]
            p._unlink(p.final)
            p.abort()
            results[i] = _failure(exc, p, where)
        return results
    for i in linked:
        p = pendings[i]
        p.committed = True
        with contextlib.suppress(OSError):  # flushed and fsynced: nothing is left to write
            p.file.close()
    for queue in {id(pendings[i].queue): pendings[i].queue for i in linked}.values():
        queue.poke()
    return results
