"""``pysendmail queue init``: create or repair the spool tree, its owners and its modes.

Run as root on a system install, it gives the folders to the ``pysendmail``
user and the maildrop to the ``pysendmail`` group (packaging creates both; this
module never creates users), and keeps the root itself owned by root so the
queue owner cannot swap a folder for a link that root would then follow. Run as
anyone else, it makes a personal queue owned by that user.

What it must never do: follow a symbolic link, change anything outside the
queue root (beyond creating missing parents), or loosen a mode.

SECURITY: each folder is opened with ``O_NOFOLLOW | O_DIRECTORY`` and changed
through that descriptor (``fchown``/``fchmod``), so a path swapped between the
check and the change cannot redirect the change elsewhere.
"""

import os
import stat

from pysendmail.errors import CantCreateError, PermissionDeniedError
from pysendmail.queue.spool import (
    DIR_MODE,
    MAILDROP_MODE,
    ROOT_MODE,
    TRIGGER,
    TRIGGER_MODE,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pysendmail.queue.spool import Queue

_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def owners(user: str) -> "tuple[int, int, int]":
    """(uid, gid, maildrop gid) for the queue folders, as this process may set them."""
    import grp
    import pwd

    euid = os.geteuid()
    uid, gid = euid, os.getegid()
    if euid != 0:
        return uid, gid, gid
    try:
        pw = pwd.getpwnam(user)
        uid, gid = pw.pw_uid, pw.pw_gid
    except KeyError:
        pass
    try:
        group = grp.getgrnam(user).gr_gid
    except KeyError:
        group = gid
    return uid, gid, group


def _name(uid: int, gid: int) -> str:
    import grp
    import pwd

    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return f"{user}:{group}"


def ensure(queue: "Queue", user: str) -> list[str]:
    uid, gid, drop_gid = owners(user)
    euid = os.geteuid()
    root_uid, root_gid = (0, 0) if euid == 0 else (euid, os.getegid())
    changes: list[str] = []
    parent = os.path.dirname(queue.root)
    if not os.path.isdir(parent):
        try:
            os.makedirs(parent, 0o755)
        except OSError as exc:
            raise CantCreateError(f"{parent}: {exc.strerror or exc}") from None
        changes.append(f"created {parent}")
    _folder(queue.root, root_uid, root_gid, ROOT_MODE, changes)
    for folder in ("tmp", "queue", "state", "hold", "failed"):
        _folder(queue.dir(folder), uid, gid, DIR_MODE, changes)
    _folder(queue.dir("maildrop"), uid, drop_gid, MAILDROP_MODE, changes)
    _trigger(os.path.join(queue.root, TRIGGER), uid, gid, changes)
    return changes


def _refuse(path: str, exc: OSError) -> Exception:
    if isinstance(exc, PermissionError):
        return PermissionDeniedError(
            f"{path}: {exc.strerror or exc}; run `pysendmail queue init` as root"
        )
    return CantCreateError(f"{path}: {exc.strerror or exc}")


def _folder(path: str, uid: int, gid: int, mode: int, changes: list[str]) -> None:
    created = False
    try:
        os.mkdir(path, 0o700)
        created = True
    except FileExistsError:
        pass
    except OSError as exc:
        raise _refuse(path, exc) from None
    try:
        fd = os.open(path, _DIR_OPEN)
    except OSError as exc:
        if os.path.islink(path):
            raise CantCreateError(
                f"{path}: is a symbolic link; the queue needs a real directory there"
            ) from None
        raise _refuse(path, exc) from None
    try:
        _own(fd, path, uid, gid, mode, created, changes)
    finally:
        os.close(fd)


def _own(
    fd: int, path: str, uid: int, gid: int, mode: int, created: bool, changes: list[str]
) -> None:
    st = os.fstat(fd)
    try:
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(fd, uid, gid)
            if not created:
                changes.append(f"{path}: owner set to {_name(uid, gid)}")
        if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
            # chown clears setgid; the mode goes last.
            os.fchmod(fd, mode)
            if not created:
                changes.append(f"{path}: mode set to {mode:04o}")
    except OSError as exc:
        raise _refuse(path, exc) from None
    if created:
        changes.append(f"created {path} ({mode:04o} {_name(uid, gid)})")


def _trigger(path: str, uid: int, gid: int, changes: list[str]) -> None:
    created = False
    try:
        os.mkfifo(path, 0o600)
        created = True
    except FileExistsError:
        pass
    except OSError as exc:
        raise _refuse(path, exc) from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise CantCreateError(f"{path}: {exc.strerror or exc}; remove it and run again") from None
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            raise CantCreateError(f"{path}: is not a FIFO; remove it and run again")
        _own(fd, path, uid, gid, TRIGGER_MODE, created, changes)
    finally:
        os.close(fd)
