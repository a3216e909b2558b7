"""Pickup: the runner's check of what local users dropped into ``maildrop/``.

Users who may not read the relay password (www-data, a cron job of nobody)
cannot write the queue; ``sendmail`` run by them writes ``maildrop/.ID``,
then renames it to ``maildrop/ID``. The maildrop is mode 3733 (setgid, sticky,
not listable), so each file gets the queue group and mode 0640: the runner
reads it, other users can neither list, read nor remove it. Postfix's
``postdrop`` and ``pickup`` are the model.

For each name, pickup either queues the file (a copy in a queue file of the
runner's own, then removes the original), refuses it (removes the maildrop
name and says why), or leaves it alone (a dot-file still being written, a file
not yet complete). A file is queued only when it is a regular file with one
link (not a symlink, FIFO, device or hard link), no larger than the limit,
holds a prelude that parses, is complete (its size is what the prelude says),
is named by its own queue id, and claims as submitter the uid that owns it.

What this module must never do: follow a link, open a FIFO or device, block,
read more than the limit, rename a maildrop file into the queue (its owner may
still hold it open and write to it), lose a message it has removed, or queue
one twice.

Crash safety, in order, all under an exclusive lock on the maildrop folder (one
pickup at a time): copy to ``tmp/ID.pickup``, fsync, rename to
``tmp/ID.NAME.ready`` and fsync ``tmp/`` (a complete, durable copy); unlink
``maildrop/NAME`` and fsync; link ``tmp/ID.NAME.ready`` to ``queue/ID`` and
fsync. A runner may deliver ``queue/ID`` at once, so it must appear only after
the original is gone. A pickup killed half way is finished by the next one: a
``.ready`` file whose original still exists is dropped (the original is picked
up again), one whose original is gone is queued.

SECURITY: the file's owner (``fstat``), never the prelude, says who submitted;
a prelude that claims another uid is refused. Queue ids from the maildrop are
checked as file names, and a taken id gets a fresh one instead of replacing a
queued message. Reasons are returned for the log; a name is shown with
``repr`` so it cannot forge a log line.
"""

import errno
import io
import os
import stat
import time

from pysendmail.errors import DataError, IOFailure
from pysendmail.queue.commit import fsync_dir, unlink_quietly
from pysendmail.queue.spool import FILE_MODE, MESSAGE_FOLDERS, Queue

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pysendmail.message.envelope import Envelope

QUEUED = "queued"
REFUSED = "refused"
LEFT = "left"

_CHUNK = 1 << 16
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class PickupResult:
    """What pickup did with one maildrop name: ``queued``, ``refused`` or ``left``."""

    __slots__ = ("name", "outcome", "queue_id", "reason", "uid")

    def __init__(
        self,
        name: str,
        outcome: str,
        reason: str = "",
        queue_id: "str | None" = None,
        uid: "int | None" = None,
    ) -> None:
        self.name = name
        self.outcome = outcome
        self.reason = reason
        self.queue_id = queue_id
        self.uid = uid

    def __repr__(self) -> str:
        return (
            f"PickupResult({self.name!r}, {self.outcome!r}, {self.reason!r},"
            f" queue_id={self.queue_id!r}, uid={self.uid!r})"
        )

    def log_line(self) -> str:
        """One line for the log, in the words of Postfix's pickup."""
        who = f"uid={self.uid}" if self.uid is not None else "uid=?"
        if self.outcome == QUEUED:
            return f"{self.queue_id}: {who} from maildrop/{self.name}"
        return f"maildrop/{self.name!r}: {who}: {self.outcome}: {self.reason}"


class _Refuse(Exception):
    pass


class _Leave(Exception):
    pass


def pickup(
    queue: Queue, max_size: int, *, stale_age: float = 86400.0, now: "float | None" = None
) -> list[PickupResult]:
    """Process every file in the maildrop; see the module docstring.

    ``max_size`` is the largest message accepted (octets, without the prelude;
    0 means no limit). A file not complete yet is left alone until it is
    ``stale_age`` seconds old, then removed.
    """
    import fcntl

    drop = queue.dir("maildrop")
    try:
        lock = os.open(drop, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    except PermissionError:
        raise queue.denied() from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _recover(queue)
        results = []
        when = time.time() if now is None else now
        for name in sorted(os.listdir(drop)):
            result = _one(queue, name, max_size, stale_age, when)
            if result is not None:
                results.append(result)
        return results
    finally:
        os.close(lock)


def _recover(queue: Queue) -> None:
    """Finish the pickups that a crash interrupted (the lock is held)."""
    tmp = queue.dir("tmp")
    for entry in sorted(os.listdir(tmp)):
        if not entry.endswith(".ready"):
            continue
        parts = entry.split(".")
        if len(parts) != 3:
            continue
        queue_id, name = parts[0], parts[1]
        staged = os.path.join(tmp, entry)
        if os.path.lexists(queue.path("maildrop", name)):
            # The original was not removed yet: it will be picked up again.
            os.unlink(staged)
            continue
        _publish(queue, staged, queue_id)


def _publish(queue: Queue, staged: str, queue_id: str) -> None:
    target = queue.path("queue", queue_id)
    try:
        os.link(staged, target)
    except FileExistsError:
        if not os.path.samefile(staged, target):
            raise IOFailure(
                f"{staged}: cannot queue it as {queue_id}, which is taken; rename it by hand"
            ) from None
    fsync_dir(queue.dir("queue"))
    os.unlink(staged)


def _one(
    queue: Queue, name: str, max_size: int, stale_age: float, now: float
) -> "PickupResult | None":
    path = queue.path("maildrop", name)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if name.startswith("."):
        # Being written (or abandoned by a writer that was killed).
        if now - st.st_mtime > stale_age:
            return _remove(
                path, PickupResult(name, REFUSED, "stale partial file removed", uid=st.st_uid)
            )
        return PickupResult(name, LEFT, "still being written", uid=st.st_uid)
    try:
        return _take(queue, name, path, st, max_size, stale_age, now)
    except _Refuse as exc:
        return _remove(path, PickupResult(name, REFUSED, str(exc), uid=st.st_uid))
    except _Leave as exc:
        return PickupResult(name, LEFT, str(exc), uid=st.st_uid)


def _remove(path: str, result: PickupResult) -> PickupResult:
    # Only the maildrop name goes: a link's target and a hard link's other
    # names are untouched.
    unlink_quietly(path)
    return result


def _take(
    queue: Queue,
    name: str,
    path: str,
    st: os.stat_result,
    max_size: int,
    stale_age: float,
    now: float,
) -> PickupResult:
    from pysendmail.message.envelope import MAX_PRELUDE, Envelope, check_queue_id

    if stat.S_ISLNK(st.st_mode):
        raise _Refuse("a symbolic link")
    if stat.S_ISDIR(st.st_mode):
        # _remove cannot unlink it; an empty one goes, a full one stays inert.
        try:
            os.rmdir(path)
        except OSError:
            raise _Leave("a directory that is not empty") from None
        raise _Refuse("a directory")
    if not stat.S_ISREG(st.st_mode):
        raise _Refuse("not a regular file")
    try:
        fd = os.open(path, _READ)
    except FileNotFoundError:
        raise _Leave("gone") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Refuse("a symbolic link") from None
        raise _Refuse(f"cannot be read: {exc.strerror or exc}") from None
    try:
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            raise _Leave("replaced while being checked")
        if not stat.S_ISREG(fst.st_mode):
            raise _Refuse("not a regular file")
        if fst.st_nlink != 1:
            raise _Refuse(f"has {fst.st_nlink} links")
        limit = MAX_PRELUDE + max_size if max_size else 0
        if limit and fst.st_size > limit:
            raise _Refuse(f"too large: {fst.st_size} octets, the limit is {max_size}")
        try:
            check_queue_id(name)
        except DataError:
            raise _Refuse("its name is not a queue id") from None
        try:
            env = Envelope.from_file(io.BytesIO(os.pread(fd, MAX_PRELUDE, 0)))
        except DataError as exc:
            raise _Refuse(f"not a queue file: {exc}") from None
        expected = env.message_offset + env.size
        if fst.st_size < expected:
            if now - fst.st_mtime > stale_age:
                raise _Refuse(f"incomplete ({fst.st_size} of {expected} octets) and stale")
            raise _Leave(f"incomplete ({fst.st_size} of {expected} octets)")
        if fst.st_size > expected:
            raise _Refuse(f"{fst.st_size} octets where its envelope says {expected}")
        if env.submitter_uid != fst.st_uid:
            raise _Refuse(
                f"its envelope claims uid {env.submitter_uid}, the file belongs to uid {fst.st_uid}"
            )
        if env.queue_id != name:
            raise _Refuse(f"its envelope names the queue id {env.queue_id!r}")
        if max_size and env.size > max_size:
            raise _Refuse(f"too large: {env.size} octets, the limit is {max_size}")
        queue_id = name if not _taken(queue, name) else _fresh_id(queue)
        env.queue_id = queue_id
        _copy(queue, fd, env, name, path)
    finally:
        os.close(fd)
    return PickupResult(name, QUEUED, "", queue_id=queue_id, uid=fst.st_uid)


def _taken(queue: Queue, queue_id: str) -> bool:
    if any(os.path.lexists(queue.path(folder, queue_id)) for folder in MESSAGE_FOLDERS):
        return True
    if os.path.lexists(queue.path("tmp", queue_id)):
        return True  # a direct submission with this id is being written
    prefix = queue_id + "."
    return any(n.startswith(prefix) for n in os.listdir(queue.dir("tmp")))


def _fresh_id(queue: Queue) -> str:
    from pysendmail.message.intake import make_queue_id

    while True:
        queue_id = make_queue_id()
        if not _taken(queue, queue_id):
            return queue_id


def _copy(queue: Queue, fd: int, env: "Envelope", name: str, original: str) -> None:
    """Write the runner's own queue file, then swap the original for it (see the docstring)."""
    part = queue.path("tmp", f"{env.queue_id}.pickup")
    ready = queue.path("tmp", f"{env.queue_id}.{name}.ready")
    out = os.open(part, _CREATE, FILE_MODE)
    try:
        try:
            _write_all(out, env.to_bytes())
            offset, left = env.message_offset, env.size
            while left:
                chunk = os.pread(fd, min(_CHUNK, left), offset)
                if not chunk:
                    raise _Leave("shrank while being copied")
                _write_all(out, chunk)
                offset += len(chunk)
                left -= len(chunk)
            os.fsync(out)
        finally:
            os.close(out)
        os.rename(part, ready)
    except BaseException:
        unlink_quietly(part)
        raise
    fsync_dir(queue.dir("tmp"))
    os.unlink(original)
    fsync_dir(queue.dir("maildrop"))
    _publish(queue, ready, env.queue_id)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
