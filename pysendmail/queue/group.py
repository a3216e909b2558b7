"""Group commit: make a batch of ``Pending`` messages durable with one fsync of ``queue/``.

``commit_group`` does for a batch what ``Pending.commit`` does for one
message, in the same order: each file is flushed, checked complete against its
envelope, fsynced, linked into ``queue/`` (never replacing a file) and its
``tmp/`` name removed (``Pending.commit(sync_dir=False)``); then ``queue/`` is
fsynced once for the whole batch (``Pending.confirm``), and the trigger is
poked once. A message is committed — and its
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

import os

from pysendmail.queue.commit import Pending, commit_error, fsync_dir


def commit_group(pendings: "list[Pending]") -> "list[Exception | None]":
    """Commit every message of ``pendings``; for each, ``None`` (durable) or why it was not.

    The exceptions are those of ``Pending.commit`` (``TemporaryFailure``,
    ``CantCreateError``, ``IOFailure``); a message that failed was aborted.
    """
    results: list[Exception | None] = [None] * len(pendings)
    linked: list[Pending] = []
    for i, p in enumerate(pendings):
        try:
            if p.maildrop:
                p.commit()  # the maildrop: its own discipline, one by one
            else:
                p.commit(sync_dir=False)  # checked, fsynced, linked
                linked.append(p)
        except Exception as exc:
            results[i] = exc
    if not linked:
        return results
    where = ""
    try:
        for where in sorted({os.path.dirname(p.final) for p in linked}):
            fsync_dir(where)
    except OSError as exc:
        failed = set(map(id, linked))
        for i, p in enumerate(pendings):
            if id(p) in failed:
                p.withdraw()
                results[i] = commit_error(exc, p, where)
        return results
    for p in linked:
        p.confirm()
    for queue in {id(p.queue): p.queue for p in linked}.values():
        queue.poke()
    return results
