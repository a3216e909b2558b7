"""The spool on disk: commit, claim, state, hold/release/delete, clean-up.

Layout under the queue root (``general.queue_dir``)::

    root/            0711  root (or the queue owner)  traversable, not listable
      tmp/           0700  owner   files being written; staged pickups
      queue/         0700  owner   committed messages, one immutable file each
      state/         0700  owner   per-message delivery state (state.py)
      hold/          0700  owner   messages put on hold by an admin
      failed/        0700  owner   given up (bounced or unreadable), kept for inspection
      maildrop/      3733  owner:group  submissions of users who are not the owner
      trigger        0622  owner   FIFO: a byte written here wakes a watching runner

A queue file is the envelope prelude (``pysendmail.message.envelope``) then the
message; its name is its queue id. Commit is the Maildir discipline: create in
``tmp/`` with ``O_EXCL``, write, ``fsync``, link into ``queue/`` (a link never
replaces an existing file, unlike rename), unlink the temporary name, ``fsync``
the directory. Only then is the message acknowledged. Whoever is not the owner
of ``queue/`` writes a dot-file into ``maildrop/`` instead and renames it to
its queue id; the runner checks and copies it (pickup.py).

What this module must never do: acknowledge a message before its bytes and
its directory entry are on disk; replace a queued file; follow a symbolic link
or block on a FIFO; let two runners hold the same message; speak SMTP.

SECURITY: every file under the root is read as hostile input (a maildrop file
comes from any local user, and a queue file could be damaged). Files are
opened with ``ONOFOLLOW`` and checked with ``fstat``; queue and state files
are created 0600, directories 0700, so nobody but the owner reads a message.
The module imports only ``os``, ``errno``, ``stat``, ``time``, ``io`` and the
project's hot-path modules at run time: ``sendmail`` imports it on every call.
"""

import errno
import io
import os
import stat
import time

from pysendmail.errors import (
    EX_NOINPUT,
    CantCreateError,
    DataError,
    PermissionDeniedError,
    PysendmailError,
)
from pysendmail.queue.commit import (
    CLOEXEC,
    CREATE,
    NOFOLLOW,
    Pending,
    close_quietly,
    fsync_dir,
    link_or_rename,
    strerror,
    unlink_quietly,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

    from pysendmail.message.envelope import Envelope
    from pysendmail.queue.pickup import PickupResult
    from pysendmail.queue.removals import Removals
    from pysendmail.queue.state import State
    from pysendmail.queue.trigger import Trigger

FOLDERS = ("tmp", "queue", "state", "hold", "failed", "maildrop")
#: Where a message can be, in the order ``locate`` looks.
MESSAGE_FOLDERS = ("queue", "hold", "failed")
TRIGGER = "trigger"
DEFAULT_OWNER = "pysendmail"

ROOT_MODE = 0o711
DIR_MODE = 0o700
MAILDROP_MODE = 0o3733  # setgid + sticky, writable and traversable by all, not listable
TRIGGER_MODE = 0o622
FILE_MODE = 0o600
MAILDROP_FILE_MODE = 0o640  # group (the maildrop's) may read: that is the runner

_O_PATH = getattr(os, "O_PATH", os.O_RDONLY)
#: Read buffer of a claimed message: the prelude and a small message in one read.
_READ_BUFFER = 65536
_READ = os.O_RDONLY | NOFOLLOW | CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)


def check_id(queue_id: str) -> str:
    """A queue id that is safe as a file name, or ``DataError``."""
    from pysendmail.message.envelope import check_queue_id

    return check_queue_id(queue_id)


class NoSuchMessage(PysendmailError):
    """No message has this queue id in queue/, hold/ or failed/ (Postfix: "no such queue id")."""

    exit_status = EX_NOINPUT

    def __init__(self, queue_id: str) -> None:
        super().__init__(f"{queue_id}: no such queue id")
        self.queue_id = queue_id


class Claim:
    """A message held for delivery under an exclusive ``flock`` on its queue file.

    ``file`` reads the queue file; ``envelope`` and ``state`` are parsed from
    it and from ``state/ID`` (a fresh state when there is none). The lock is
    released when the claim is closed (``release()``, ``done()``, ``fail()`` or
    leaving the ``with`` block), and also if the process dies.
    """

    __slots__ = (
        "_content",
        "_handed_over",
        "_recorded",
        "envelope",
        "file",
        "path",
        "queue",
        "queue_id",
        "removals",
        "state",
    )

    def __init__(
        self,
        queue: "Queue",
        queue_id: str,
        path: str,
        file: "BinaryIO",
        envelope: "Envelope",
        state: "State",
        removals: "Removals | None" = None,
        *,
        content: "bytes | None" = None,
        recorded: bool = True,
    ) -> None:
        self.queue = queue
        self.queue_id = queue_id
        self.path = path
        self.file = file
        self.envelope = envelope
        self.state = state
        #: Where ``done`` hands the removal for a batched fsync (removals.py), if anywhere.
        self.removals = removals
        self._handed_over = False
        #: The message itself when the file is small (read with the envelope).
        self._content = content
        #: Whether ``state/ID`` may exist: it did when claimed, or was saved since.
        #: Every writer of a state file holds the message's lock, so a claim that
        #: found none knows there is none until it saves one.
        self._recorded = recorded

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def message(self) -> "BinaryIO":
        """The message, positioned at its first octet: the queue file, or a copy in memory.

        A message of a small file (at most 64 KiB) was read with its envelope
        when it was claimed; a larger one is streamed from the file.
        """
        if self._content is not None:
            return io.BytesIO(self._content)
        self.file.seek(self.envelope.message_offset)
        return self.file

    def save(self, state: "State | None" = None, *, sync: bool = True) -> None:
        """Record the delivery state (atomically; durable before return when ``sync``)."""
        if state is not None:
            self.state = state
        self._recorded = True
        self.queue.write_state(self.queue_id, self.state, sync=sync)

    def done(self) -> None:
        """Every recipient is finished: remove the message, then its state.

        The removal is durable before return, unless the claim was made with
        ``removals``: then the message is unlinked now and the fsync of
        ``queue/``, the state's removal and the closing of the file follow in
        that object's next batch (see removals.py for why that is safe).
        """
        q = self.queue
        if self.removals is not None:
            # As below, a file already gone (an admin's delete) is no error;
            # contextlib.suppress would cost sendmail an import.
            try:  # noqa: SIM105
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self._handed_over = True
            state_path = q.path("state", self.queue_id) if self._recorded else None
            self.removals.add(self.file, state_path)
            return
        try:
            os.unlink(self.path)
            fsync_dir(q.dir("queue"))
        except FileNotFoundError:
            pass
        finally:
            self.release()
        unlink_quietly(q.path("state", self.queue_id))

    def fail(self) -> None:
        """Give up: move the message to ``failed/`` (its state stays, for inspection)."""
        q = self.queue
        try:
            link_or_rename(self.path, q.path("failed", self.queue_id))
            fsync_dir(q.dir("failed"))
        finally:
            self.release()

    def release(self) -> None:
        """Unlock without changing anything (the message stays queued)."""
        if not self._handed_over:  # else the removals close it
            close_quietly(self.file)


class Queue:
    """One spool directory tree (see the module docstring for the layout)."""

    __slots__ = ("_owned_by", "root")

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        #: The euid that ``begin`` found owning ``queue/`` (checked once, not per
        #: message: serve's commit processes begin hundreds a second).
        self._owned_by: int | None = None

    def __repr__(self) -> str:
        return f"Queue({self.root!r})"

    def dir(self, folder: str) -> str:
        return os.path.join(self.root, folder)

    def path(self, folder: str, name: str) -> str:
        return os.path.join(self.root, folder, name)

    # ------------------------------------------------------------------ submit

    def begin(self, queue_id: str) -> Pending:
        """Start writing message ``queue_id``: in ``tmp/`` for the owner, else in ``maildrop/``.

        A queue that does not exist yet is laid out (``ensure``) when its
        folder, or the parent of a missing folder, belongs to this user, as a
        personal queue does; a system queue is made by ``pysendmail queue init``.
        Raises ``CantCreateError`` (73) with what to do when no file can be
        created.
        """
        check_id(queue_id)
        euid = os.geteuid()
        try:
            owner = euid if self._owned_by == euid else os.stat(self.dir("queue")).st_uid
        except FileNotFoundError:
            owner = self._create_personal(euid)
        except OSError as exc:
            raise CantCreateError(
                f"{self.dir('queue')}: {strerror(exc)}; run `pysendmail queue init` as root"
            ) from None
        dir_fd = None
        if owner == euid:
            self._owned_by = euid
            path = self.path("tmp", queue_id)
            final = self.path("queue", queue_id)
            mode = FILE_MODE
        else:
            path = self.path("maildrop", "." + queue_id)
            final = self.path("maildrop", queue_id)
            mode = MAILDROP_FILE_MODE
            dir_fd = self._maildrop_fd()
        try:
            if dir_fd is None:
                fd = os.open(path, CREATE, mode)
            else:
                fd = os.open(os.path.basename(path), CREATE, mode, dir_fd=dir_fd)
        except OSError as exc:
            self._owned_by = None  # look again next time: the queue may have changed
            if dir_fd is not None:
                os.close(dir_fd)
            where = os.path.dirname(path)
            if isinstance(exc, FileExistsError):
                raise CantCreateError(f"{path}: queue id {queue_id} is already in use") from None
            hint = (
                "run `pysendmail queue init` as root"
                if exc.errno in (errno.EACCES, errno.EPERM, errno.ENOENT, errno.EROFS)
                else "check the disk and try again"
            )
            raise CantCreateError(
                f"cannot create a file in {where}: {strerror(exc)}; {hint}"
            ) from None
        try:
            if dir_fd is not None:
                # The umask may have taken the group's read bit; the runner needs it.
                os.fchmod(fd, mode)
            return Pending(self, queue_id, path, final, fd, dir_fd)
        except BaseException:
            unlink_quietly(path, dir_fd)
            if dir_fd is not None:
                os.close(dir_fd)
            raise

    def _maildrop_fd(self) -> int:
        """The maildrop folder, opened without following a link (``O_PATH``: no read bit needed)."""
        path = self.dir("maildrop")
        try:
            return os.open(path, _O_PATH | os.O_DIRECTORY | NOFOLLOW | CLOEXEC)
        except OSError as exc:
            what = "not a folder" if exc.errno in (errno.ELOOP, errno.ENOTDIR) else strerror(exc)
            raise CantCreateError(
                f"cannot create a file in {path}: {what}; run `pysendmail queue init` as root"
            ) from None

    def _create_personal(self, euid: int) -> int:
        # The folder itself when it exists (a directory the user made), else
        # its parent, must be this user's: then the queue is theirs to lay out.
        # ``lstat``: a symbolic link to someone else's folder is not theirs.
        try:
            owner = os.lstat(self.root)
            mine = stat.S_ISDIR(owner.st_mode) and owner.st_uid == euid
        except FileNotFoundError:
            try:
                mine = os.stat(os.path.dirname(self.root)).st_uid == euid
            except OSError:
                mine = False
        except OSError:
            mine = False
        if not mine:
            raise CantCreateError(
                f"{self.root}: the queue does not exist; run `pysendmail queue init` as root"
            )
        self.ensure()
        return os.stat(self.dir("queue")).st_uid

    def poke(self) -> bool:
        """Wake a runner that watches the trigger FIFO; False when none listens. Never blocks."""
        try:
            fd = os.open(
                os.path.join(self.root, TRIGGER), os.O_WRONLY | os.O_NONBLOCK | NOFOLLOW | CLOEXEC
            )
        except OSError:
            return False  # no FIFO, or nobody reading it (ENXIO): nothing to wake
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                return False
            os.write(fd, b"\n")
        except OSError:
            return False  # full: the runner has been poked already
        finally:
            os.close(fd)
        return True

    def watch(self) -> "Trigger":
        """Open the trigger FIFO for a runner that waits to be poked (``queue run --watch``)."""
        from pysendmail.queue.trigger import Trigger

        return Trigger(os.path.join(self.root, TRIGGER))

    # ------------------------------------------------------------------ setup

    def ensure(self, user: str = DEFAULT_OWNER) -> list[str]:
        """Create or repair the layout; return one line per change (``pysendmail queue init``).

        As root, the folders belong to ``user`` (and the maildrop to its group)
        when that user exists, so the runner can drop root; packaging creates
        the user. Otherwise everything belongs to the current user.
        """
        from pysendmail.queue import setup

        return setup.ensure(self, user)

    # ------------------------------------------------------------------ inventory

    def ids(self, folder: str = "queue") -> list[str]:
        """The queue ids in ``folder``, oldest first (names that are not ids are skipped).

        Raises ``PermissionDeniedError`` when this user may not read the queue.
        """
        from pysendmail.message.envelope import check_queue_id

        try:
            names = os.listdir(self.dir(folder))
        except FileNotFoundError:
            return []
        except PermissionError:
            raise self.denied() from None
        result = []
        for name in names:
            if name.startswith("."):
                continue
            try:
                check_queue_id(name)
            except DataError:
                continue
            result.append(name)
        return sorted(result)

    def denied(self) -> PermissionDeniedError:
        """The one-line error for a user who may not read this queue."""
        try:
            uid = os.stat(self.dir("queue")).st_uid
            import pwd

            who = pwd.getpwuid(uid).pw_name
        except (OSError, KeyError):
            who = "its owner"
        how = "as root" if who == "root" else f"as root or as {who}"
        return PermissionDeniedError(
            f"{self.root}: the mail queue is readable only by {who}; run this {how}"
        )

    def locate(self, queue_id: str) -> "str | None":
        """The folder (queue, hold or failed) that holds ``queue_id``, or ``None``."""
        check_id(queue_id)
        for folder in MESSAGE_FOLDERS:
            try:
                st = os.lstat(self.path(folder, queue_id))
            except FileNotFoundError:
                continue
            except PermissionError:
                raise self.denied() from None
            if stat.S_ISREG(st.st_mode):
                return folder
        return None

    def open_message(self, folder: str, queue_id: str) -> "BinaryIO":
        """Open a message file read-only, refusing links, FIFOs and devices."""
        check_id(queue_id)
        path = self.path(folder, queue_id)
        fd = self._open(path)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise DataError(f"{path}: not a regular file")
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def _open(self, path: str) -> int:
        """Open for reading without following a link or blocking on a FIFO."""
        try:
            return os.open(path, _READ)
        except PermissionError:
            raise self.denied() from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise DataError(f"{path}: a symbolic link, not a message") from None
            raise

    def read_envelope(self, folder: str, queue_id: str) -> "tuple[Envelope, int]":
        """The envelope of a message and the file's size (``DataError`` if it does not parse)."""
        from pysendmail.message.envelope import Envelope

        with self.open_message(folder, queue_id) as f:
            env = Envelope.from_file(f)
            return env, os.fstat(f.fileno()).st_size

    def is_locked(self, folder: str, queue_id: str) -> bool:
        """True when a runner holds the message right now (the ``*`` of ``mailq``)."""
        import fcntl

        try:
            f = self.open_message(folder, queue_id)
        except (OSError, DataError):
            return False
        with f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False

    # ------------------------------------------------------------------ state

    def read_state(self, queue_id: str) -> "State | None":
        """The delivery state of ``queue_id`` (``None``: never tried; ``DataError``: damaged)."""
        from pysendmail.queue.state import MAX_STATE, State

        path = self.path("state", check_id(queue_id))
        try:
            fd = os.open(path, _READ)
        except FileNotFoundError:
            return None
        except PermissionError:
            raise self.denied() from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise DataError(f"{path}: not a regular file")
            if st.st_size > MAX_STATE:
                raise DataError(f"{path}: state file is larger than {MAX_STATE} octets")
            data = os.read(fd, MAX_STATE + 1)
        finally:
            os.close(fd)
        try:
            return State.from_bytes(data, queue_id)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None

    def write_state(self, queue_id: str, state: "State", *, sync: bool = True) -> None:
        """Replace ``state/ID`` atomically: write in ``tmp/``, fsync, rename, fsync the folder."""
        check_id(queue_id)
        if state.queue_id != queue_id:
            raise DataError(f"state of {state.queue_id} cannot be saved as {queue_id}")
        data = state.to_bytes()
        tmp = self.path("tmp", f"{queue_id}.state.{os.getpid()}.{os.urandom(4).hex()}")
        fd = os.open(tmp, CREATE, FILE_MODE)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
            os.rename(tmp, self.path("state", queue_id))
        except BaseException:
            unlink_quietly(tmp)
            raise
        finally:
            os.close(fd)
        if sync:
            fsync_dir(self.dir("state"))

    def state_of(self, queue_id: str, envelope: "Envelope") -> "State":
        """The recorded state, or a fresh one when the message was never tried."""
        from pysendmail.queue.state import State

        state = self.read_state(queue_id)
        return state if state is not None else State.fresh(envelope)

    # ------------------------------------------------------------------ claim

    def claim(self, queue_id: str, *, removals: "Removals | None" = None) -> "Claim | None":
        """Take ``queue/ID`` for delivery, or ``None`` when another process holds it or it is gone.

        Exactly one of any number of concurrent claimers gets the message. A
        message whose file or state does not parse can never be delivered: it
        is moved to ``failed/`` and ``DataError`` says why. ``removals``: see
        ``Claim.done``.
        """
        from pysendmail.message.envelope import Envelope
        from pysendmail.queue.state import State

        locked = self._lock_sized(self.path("queue", check_id(queue_id)))
        if locked is None:
            return None
        f, size = locked
        content = None
        try:
            try:
                env = Envelope.from_file(f)
                if env.queue_id != queue_id:
                    raise DataError(f"the envelope names the queue id {env.queue_id}")
                if size <= _READ_BUFFER:
                    # The whole file came in with the prelude's first read: keep
                    # the message, so that sending it costs no more system calls.
                    rest = size - env.message_offset
                    content = f.read(rest)
                    if len(content) != rest:
                        content = None
                stored = self.read_state(queue_id)
                state = stored if stored is not None else State.fresh(env)
            except DataError as exc:
                link_or_rename(self.path("queue", queue_id), self.path("failed", queue_id))
                fsync_dir(self.dir("failed"))
                raise DataError(f"{queue_id}: moved to failed/: {exc}") from None
        except BaseException:
            f.close()
            raise
        path = self.path("queue", queue_id)
        recorded = stored is not None
        return Claim(
            self, queue_id, path, f, env, state, removals, content=content, recorded=recorded
        )

    def _lock(self, path: str) -> "BinaryIO | None":
        """Open ``path`` and lock it; ``None`` if busy, gone, or replaced meanwhile."""
        locked = self._lock_sized(path)
        return None if locked is None else locked[0]

    def _lock_sized(self, path: str) -> "tuple[BinaryIO, int] | None":
        """``_lock``, and the file's size when it was opened."""
        import fcntl

        try:
            fd = self._open(path)
        except FileNotFoundError:
            return None
        f = None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise DataError(f"{path}: not a regular file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            # Whoever held the lock before us may have finished the message and
            # removed (or moved) it: only the file still at ``path`` counts.
            try:
                now = os.lstat(path)
            except FileNotFoundError:
                return None
            # The name still leads to this file, so it has a link: no need to
            # look at st_nlink (the inode cannot be reused while we hold it).
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                return None
            # O_NONBLOCK stays set: it means nothing for a regular file. The
            # buffer size is given, which spares the isatty() probe of open().
            f = os.fdopen(fd, "rb", buffering=_READ_BUFFER)
            return f, st.st_size
        finally:
            if f is None:
                os.close(fd)

    # ------------------------------------------------------------------ admin
    # The admin tools' moves live in admin.py; these names are the API.

    def hold(self, queue_id: str) -> str:
        """Put a queued message on hold; return what was done, for the admin."""
        from pysendmail.queue import admin

        return admin.move(self, queue_id, "hold")

    def release(self, queue_id: str) -> str:
        """Put a held message back in the queue, due at once."""
        from pysendmail.queue import admin

        return admin.move(self, queue_id, "queue")

    def requeue(self, queue_id: str) -> str:
        """Retry a message from ``failed/`` (or any message) at once, with a new lifetime."""
        from pysendmail.queue import admin

        return admin.move(self, queue_id, "queue", requeue=True)

    def flush(self, queue_id: str, now: "float | None" = None) -> str:
        """Make every pending recipient of a queued message due now."""
        from pysendmail.queue import admin

        return admin.flush(self, queue_id, now)

    def delete(self, queue_id: str) -> str:
        """Remove a message from whichever folder holds it, and its state."""
        from pysendmail.queue import admin

        return admin.delete(self, queue_id)

    # ------------------------------------------------------------------ runner side

    def pickup(
        self, max_size: int, *, stale_age: float = 86400.0, now: "float | None" = None
    ) -> "list[PickupResult]":
        """Check and queue what users dropped into ``maildrop/`` (see pickup.py)."""
        from pysendmail.queue import pickup

        return pickup.pickup(self, max_size, stale_age=stale_age, now=now)

    def clean_tmp(self, max_age: float, now: "float | None" = None) -> list[str]:
        """Remove what crashed writers left behind, once older than ``max_age`` seconds.

        That is: files in ``tmp/`` (but never a staged pickup, which the next
        pickup completes), dot-files in ``maildrop/``, and state files whose
        message is gone. Returns the paths removed.
        """
        limit = (time.time() if now is None else now) - max_age
        removed = []
        candidates: list[str] = []
        for folder, dot_only in (("tmp", False), ("maildrop", True), ("state", False)):
            try:
                names = os.listdir(self.dir(folder))
            except FileNotFoundError:
                continue
            except PermissionError:
                raise self.denied() from None
            for name in names:
                if folder == "tmp" and name.endswith(".ready"):
                    continue
                if dot_only and not name.startswith("."):
                    continue
                if folder == "state" and not name.startswith(".") and self._has_message(name):
                    continue
                candidates.append(self.path(folder, name))
        for path in candidates:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode) or st.st_mtime > limit:
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            removed.append(path)
        return removed

    def _has_message(self, name: str) -> bool:
        return any(os.path.lexists(self.path(folder, name)) for folder in MESSAGE_FOLDERS)
