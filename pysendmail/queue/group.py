"""Group commit: make a batch of ``Pending`` messages durable with two syncs, not one per file.

``commit_group`` does for a batch what ``Pending.commit`` does for one
message, in the same order — each file complete and durable before it is
linked into ``queue/``, each link durable before the message counts as
committed — but it pays for the disk once per batch instead of once per file:

1. each file is flushed and checked complete against its envelope
   (``Pending.prepare``);
2. the files are made durable together by one ``syncfs(2)`` of their file
   system, when the batch holds two or more and ``syncfs`` reports write-back
   errors (Linux 5.8 and later); otherwise each file is fsynced, as before;
3. each is linked into ``queue/`` (never replacing a file) and its ``tmp/``
   name removed (``Pending.commit(sync_dir=False)``);
4. ``queue/`` is fsynced once (``Pending.confirm``), and the trigger is poked
   once.

A message is committed — and its submitter may hear ``250`` — only when
``commit_group`` returned ``None`` for it, which happens only after the
directory fsync that covers its link.

Why ``syncfs``: on ext4 every fsync of a freshly written file is a journal
commit and a cache flush of its own, so a batch of N messages cost N + 1 of
them; ``syncfs`` writes the batch back and commits once. Measured on this
project's CI machine (ext4 on a virtio disk, 2 KB messages, groups of 10):
the same commits at about twice the rate, with half the kernel CPU. The price:
``syncfs`` also writes back whatever else is dirty on that file system, so on
a file system shared with heavy writers a group waits for them too (a queue
on a volume of its own, as in a container, has no such neighbours). Before
Linux 5.8, ``syncfs`` did not report write-back errors; there, and where it is
missing, each file is fsynced.

A failure of one message (a file not complete, a full disk, an id in use)
aborts that message alone; a failure of ``syncfs`` aborts every message of its
file system in the batch (a write-back error anywhere there may be one of
ours); a failure of the directory fsync aborts every message of the batch
that was linked (their links are removed: nothing is acknowledged, nothing
stays half-queued).

Maildrop messages (``Pending`` of a user who is not the queue owner) are
committed one by one with ``Pending.commit``: their folder is synced in its
own way.

What this module must never do: report success for a message before its bytes
and its directory entry are on disk; leave a partial file behind.
"""

import errno
import os
import sys

from pysendmail.queue.commit import Pending, commit_error, fsync_dir

#: ``syncfs`` reports write-back errors from this kernel on (Linux commit
#: 735e4ae5ba28, "vfs: track per-sb writeback errors and report them to syncfs").
_SYNCFS_SINCE = (5, 8)

#: ``"syncfs"``: the libc function once looked up; ``False`` where it is missing
#: or not to be trusted.
_LOOKED_UP: "dict[str, object]" = {}


def _kernel_at_least(release: str, wanted: "tuple[int, int]") -> bool:
    """Whether kernel ``release`` (``os.uname().release``: "6.1.0-18-amd64") is ≥ ``wanted``."""
    numbers = []
    for part in release.split(".")[:2]:
        digits = ""
        for c in part:
            if not c.isdigit():
                break
            digits += c
        if not digits:
            return False
        numbers.append(int(digits))
    return len(numbers) == 2 and (numbers[0], numbers[1]) >= wanted


def _load_syncfs() -> object:
    if not sys.platform.startswith("linux") or not _kernel_at_least(
        os.uname().release, _SYNCFS_SINCE
    ):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def sync_file_system(fd: int) -> bool:
    """``syncfs(2)`` the file system that holds ``fd``: everything written there is durable.

    Returns ``False`` (and does nothing) where ``syncfs`` is missing or cannot be
    trusted to report a failed write-back; the caller then fsyncs each file.
    Raises ``OSError`` when the sync failed.
    """
    fn = _LOOKED_UP.get("syncfs")
    if fn is None:
        fn = _LOOKED_UP["syncfs"] = _load_syncfs()
    if fn is False:
        return False
    import ctypes

    if fn(fd) == 0:  # type: ignore[operator]
        return True
    err = ctypes.get_errno()
    if err == errno.ENOSYS:  # a seccomp filter (or an emulator) said no
        _LOOKED_UP["syncfs"] = False
        return False
    raise OSError(err, os.strerror(err))


def commit_group(pendings: "list[Pending]") -> "list[Exception | None]":
    """Commit every message of ``pendings``; for each, ``None`` (durable) or why it was not.

    The exceptions are those of ``Pending.commit`` (``TemporaryFailure``,
    ``CantCreateError``, ``IOFailure``); a message that failed was aborted.
    """
    results: list[Exception | None] = [None] * len(pendings)
    # Step 1: each file flushed and checked; grouped by queue (one file system).
    by_queue: dict[int, list[tuple[int, Pending]]] = {}
    for i, p in enumerate(pendings):
        try:
            if p.maildrop:
                p.commit()  # the maildrop: its own discipline, one by one
            else:
                p.prepare()
                by_queue.setdefault(id(p.queue), []).append((i, p))
        except Exception as exc:
            results[i] = exc
    # Step 2 and 3: durable (one syncfs, or an fsync each), then linked.
    linked: list[tuple[int, Pending]] = []
    for batch in by_queue.values():
        synced = False
        if len(batch) > 1:
            try:
                synced = sync_file_system(batch[0][1].file.fileno())
            except OSError as exc:
                for i, p in batch:
                    p.abort()
                    results[i] = commit_error(exc, p, os.path.dirname(p.path))
                continue
        for i, p in batch:
            try:
                p.commit(sync_dir=False, sync_file=not synced)
            except Exception as exc:
                results[i] = exc
            else:
                linked.append((i, p))
    if not linked:
        return results
    # Step 4: the links durable, once per folder.
    where = ""
    try:
        for where in sorted({os.path.dirname(p.final) for _, p in linked}):
            fsync_dir(where)
    except OSError as exc:
        for i, p in linked:
            p.withdraw()
            results[i] = commit_error(exc, p, where)
        return results
    for _, p in linked:
        p.confirm()
    for queue in {id(p.queue): p.queue for _, p in linked}.values():
        queue.poke()
    return results
