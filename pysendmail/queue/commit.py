"""Writing a queue file: ``Pending`` and the file-system steps that make a commit durable.

The Maildir discipline (CPython's ``mailbox.Maildir``): the file is created
with ``O_EXCL`` in ``tmp/`` (or as a dot-file in the maildrop), written,
checked complete against its own envelope, ``fsync``-ed, then moved into
place without ever replacing a file (``link`` then ``unlink``; ``rename`` of
the dot-file in the maildrop, which is the submitter's own name), and the
folder is ``fsync``-ed. Only then does ``commit`` return, and only then may
``sendmail`` exit 0. Any failure on the way removes what was written.

What this module must never do: return from ``commit`` before the bytes and
the directory entry are on disk; leave a partial file behind when it raises;
replace an existing queue file.

SECURITY: files are created ``O_EXCL | O_NOFOLLOW``, mode 0600 (0640 in the
maildrop, for the runner's group); the maildrop is addressed through a
descriptor opened ``O_NOFOLLOW``. Hot path: only ``os``, ``errno``, ``io`` and
the project's errors at run time.
"""

import errno
import io
import os

from pysendmail.errors import CantCreateError, DataError, IOFailure, TemporaryFailure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

    from pysendmail.queue.spool import Queue

CLOEXEC = getattr(os, "O_CLOEXEC", 0)
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NO_LINK = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK)
_WRITE_BUFFER = 65536


def strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)


def fsync_dir(path: str) -> None:
    """Make the entries of directory ``path`` durable (after a link, rename or unlink)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Pending:
    """A message being written: ``file`` is where the intake writes prelude and message.

    Use it as a context manager: leaving the block without ``commit()`` (an
    exception, a signal that raises) removes the temporary file. ``committing``
    turns true when ``commit()`` starts and ``aborting`` when ``abort()`` does,
    so a signal handler can tell that it must let them finish.

    In the maildrop, the file is created and renamed relative to a descriptor
    of the maildrop folder opened with ``ONOFOLLOW``: root's ``sendmail``
    writes there too, and must not be led elsewhere by a queue owner who
    swapped the folder for a symbolic link.
    """

    __slots__ = (
        "aborting",
        "checked",
        "committed",
        "committing",
        "dir_fd",
        "expected_size",
        "file",
        "final",
        "linked",
        "maildrop",
        "path",
        "queue",
        "queue_id",
    )

    def __init__(
        self,
        queue: "Queue",
        queue_id: str,
        path: str,
        final: str,
        fd: int,
        dir_fd: "int | None" = None,
    ) -> None:
        self.dir_fd = dir_fd
        self.queue = queue
        self.queue_id = queue_id
        self.path = path
        self.final = final
        self.maildrop = dir_fd is not None
        self.committed = False
        self.committing = False
        self.aborting = False
        #: Flushed and checked complete (``prepare``), not yet durable.
        self.checked = False
        #: Set by a writer that wrote the whole file from memory in one piece,
        #: prelude built and checked by the intake: then a complete file is
        #: one of exactly this size, and the prelude is not parsed again.
        self.expected_size: int | None = None
        #: In its final place, the folder not yet synced (``commit(sync_dir=False)``).
        self.linked = False
        try:
            self.file: BinaryIO = os.fdopen(fd, "w+b", buffering=_WRITE_BUFFER)
        except BaseException:
            os.close(fd)
            raise

    def __enter__(self) -> "Pending":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.committed:
            self.abort()

    def abort(self) -> None:
        """Close and remove the temporary file; the message was not queued."""
        if self.committed:
            return
        self.aborting = True
        close_quietly(self.file)  # a failed flush of what we throw away anyway
        self._unlink(self.path)
        self._close_dir()

    def _unlink(self, path: str) -> None:
        unlink_quietly(path, self.dir_fd)

    def _close_dir(self) -> None:
        if self.dir_fd is not None:
            fd, self.dir_fd = self.dir_fd, None
            os.close(fd)

    def prepare(self) -> None:
        """Flush the file and check it complete, without making it durable.

        The first step of ``commit``, done early by a group commit that makes
        the files of a whole group durable with one sync of their file system
        (``commit(sync_dir=False, sync_file=False)`` then links each). Raises
        as ``commit`` does, and then nothing is left behind.
        """
        self.committing = True
        try:
            self.file.flush()
            self._check_complete(self.file.fileno())
        except OSError as exc:
            self.abort()
            raise commit_error(exc, self, os.path.dirname(self.path)) from None
        except BaseException:
            self.abort()
            raise
        self.checked = True

    def commit(self, sync_dir: bool = True, sync_file: bool = True) -> str:
        """Make the message durable and visible to a runner; return the path it now has.

        Raises ``TemporaryFailure`` when the disk is full, ``CantCreateError``
        when the queue id is taken, ``IOFailure`` for any other failure or a
        file the intake did not finish; in every case nothing is left behind.

        ``sync_dir=False`` is the first half of a group commit (``queue/`` only,
        never the maildrop): the file is checked, fsynced and linked into
        place, but the folder is not synced, so the message is not committed
        yet (``committed`` stays false, ``linked`` turns true). The caller then
        syncs the folder once for the group and calls ``confirm()``, or
        ``withdraw()`` when it could not. ``sync_file=False`` (with
        ``sync_dir=False``, after ``prepare()``) skips the file's fsync: the
        caller made the whole group durable already (one ``syncfs``).
        """
        if not sync_dir and self.dir_fd is not None:
            raise ValueError("a maildrop file is committed on its own")
        if not sync_file and (sync_dir or not self.checked):
            raise ValueError("sync_file=False is for a group commit, after prepare()")
        self.committing = True
        where = os.path.dirname(self.final)
        linked = False
        try:
            f = self.file
            fd = f.fileno()
            if not self.checked:
                f.flush()
                self._check_complete(fd)
            if sync_file:
                os.fsync(fd)
            if self.dir_fd is not None:
                os.rename(
                    os.path.basename(self.path),
                    os.path.basename(self.final),
                    src_dir_fd=self.dir_fd,
                    dst_dir_fd=self.dir_fd,
                )
                linked = True
                self._sync_maildrop(fd, self.dir_fd)
            else:
                linked = link_or_rename(self.path, self.final)
                if not sync_dir:
                    self.linked = True
                    return self.final
                fsync_dir(where)
            f.close()
        except OSError as exc:
            if linked:
                self._unlink(self.final)
            self.abort()
            raise commit_error(exc, self, where) from None
        except BaseException:
            if linked:
                self._unlink(self.final)
            self.abort()
            raise
        self.committed = True
        self._close_dir()
        self.queue.poke()
        return self.final

    def confirm(self) -> None:
        """The folder holding the link is synced: the message is committed (group commit)."""
        if not self.linked:
            raise ValueError("confirm() comes after commit(sync_dir=False)")
        self.committed = True
        close_quietly(self.file)  # flushed and fsynced: nothing is left to write

    def withdraw(self) -> None:
        """The folder could not be synced: take the link back and remove the file."""
        if self.linked and not self.committed:
            self._unlink(self.final)
            self.linked = False
        self.abort()

    def _check_complete(self, fd: int) -> None:
        # The envelope records the message size once the intake has seen the
        # end of input; a file of any other size is not finished and must not
        # be acknowledged. This also proves that whatever is queued parses.
        if self.expected_size is not None:
            actual = os.fstat(fd).st_size
            if actual != self.expected_size:
                raise IOFailure(
                    f"{self.path}: the spool file is not complete ({actual} octets where"
                    f" {self.expected_size} were written); nothing was queued"
                )
            return
        from pysendmail.message.envelope import MAX_PRELUDE, Envelope

        head = os.pread(fd, MAX_PRELUDE, 0)
        try:
            env = Envelope.from_file(io.BytesIO(head))
        except DataError as exc:
            raise IOFailure(
                f"{self.path}: the spool file is not a complete message: {exc}"
            ) from None
        actual = os.fstat(fd).st_size
        expected = env.message_offset + env.size
        if env.queue_id != self.queue_id or actual != expected:
            raise IOFailure(
                f"{self.path}: the spool file is not complete (id {env.queue_id},"
                f" {actual} octets where the envelope says {expected}); nothing was queued"
            )

    def _sync_maildrop(self, fd: int, dir_fd: int) -> None:
        # A user who is not the queue owner cannot open the maildrop (mode 3733
        # has no read bit for them) and so cannot fsync it. The rename changed
        # the file's ctime, so a second fsync of the file must commit a journal
        # transaction, and on ext4 and XFS that transaction also holds the
        # directory change made before it. Root and the owner fsync the folder.
        try:
            dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | CLOEXEC, dir_fd=dir_fd)
        except PermissionError:
            os.fsync(fd)
            return
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def commit_error(exc: OSError, pending: Pending, where: str) -> Exception:
    """The error to raise for ``exc``, met while committing ``pending`` (nothing was queued)."""
    if exc.errno in _NO_SPACE:
        return TemporaryFailure(f"{where}: {strerror(exc)}; nothing was queued, try again later")
    if exc.errno == errno.EEXIST:
        return CantCreateError(
            f"{pending.final}: queue id {pending.queue_id} is already in use; nothing was queued"
        )
    return IOFailure(f"{exc.filename or where}: {strerror(exc)}; nothing was queued")


def link_or_rename(src: str, dst: str) -> bool:
    """Move ``src`` to ``dst`` without ever replacing ``dst``; True once ``dst`` exists."""
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        # A file system without hard links: rename, after checking by hand.
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst) from None
        os.rename(src, dst)
        return True
    unlink_quietly(src)
    return True


def unlink_quietly(path: str, dir_fd: "int | None" = None) -> bool:
    """Remove ``path`` (its base name in ``dir_fd`` when given); False if it could not be."""
    try:
        if dir_fd is None:
            os.unlink(path)
        else:
            os.unlink(os.path.basename(path), dir_fd=dir_fd)
    except OSError:
        return False
    return True


def close_quietly(f: "BinaryIO") -> None:
    # contextlib.suppress would cost the hot path an import of contextlib.
    try:
        f.close()
    except OSError:
        return
