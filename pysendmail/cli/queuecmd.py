"""The queue side of the commands: ``mailq``, ``sendmail -q`` and the admin tools.

``submit``, what ``sendmail`` does in queue mode, lives in ``cli.sendmail``
(a queue-mode run must not load this module) and is re-exported here. The
functions here are ``mailq`` / ``sendmail -bp`` / ``pysendmail queue list
[--json]``, ``pysendmail queue show ID`` and ``pysendmail queue
flush|delete|hold|release|requeue ID...``.

Exit statuses of the tools: 77 for a user who may not read the queue, 64 for a word that is not a
queue id, and 66 (EX_NOINPUT: "an input file did not exist") for a queue id
that names no message, as Postfix's ``postsuper`` says "no such queue id";
with several ids, every id is tried and the first failure gives the status.

SECURITY: the listing prints only values that were checked when they were
read (envelope addresses refuse control characters, state replies are
printable); message headers are shown with every control character escaped,
so a hostile header cannot move the cursor or forge a line of the output.
"""

import os
import sys
import time

from pysendmail import errors

# Queue-mode submission lives with the rest of sendmail's hot path (cli.sendmail),
# so that a queue-mode run never loads this module; the name stays here too.
from pysendmail.cli.sendmail import submit  # noqa: F401

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO

    from pysendmail.cli import Streams
    from pysendmail.config import Settings
    from pysendmail.message.envelope import Envelope
    from pysendmail.queue import Queue
    from pysendmail.queue.state import RecipientState, State

_HEADER_LIMIT = 65536


def run_queue(settings: "Settings", io: "Streams", *, verbose: int = 0) -> int:
    """``sendmail -q``: one run of the queue (the runner does the work)."""
    from pysendmail.runner import run_queue_main

    return run_queue_main(settings, io, verbose=verbose)


# --------------------------------------------------------------------------- listing


class _Entry:
    """One message as the listing shows it."""

    __slots__ = ("active", "envelope", "error", "folder", "queue_id", "state")

    def __init__(
        self,
        folder: str,
        queue_id: str,
        envelope: "Envelope | None" = None,
        state: "State | None" = None,
        active: bool = False,
        error: str = "",
    ) -> None:
        self.folder = folder
        self.queue_id = queue_id
        self.envelope = envelope
        self.state = state
        self.active = active
        self.error = error

    @property
    def queue_name(self) -> str:
        """Postfix's words: active, deferred, incoming (never tried), hold, and our failed."""
        if self.folder != "queue":
            return self.folder
        if self.active:
            return "active"
        if self.state is not None and any(r.attempts for r in self.state.recipients):
            return "deferred"
        return "incoming"


def _entries(queue: "Queue") -> list[_Entry]:
    from pysendmail.queue.spool import MESSAGE_FOLDERS

    found = []
    for folder in MESSAGE_FOLDERS:
        for queue_id in queue.ids(folder):
            try:
                envelope, _size = queue.read_envelope(folder, queue_id)
                state = queue.state_of(queue_id, envelope)
            except FileNotFoundError:
                continue  # delivered or moved while we looked
            except (errors.DataError, errors.IOFailure, OSError) as exc:
                found.append(_Entry(folder, queue_id, error=str(exc)))
                continue
            active = folder == "queue" and queue.is_locked(folder, queue_id)
            found.append(_Entry(folder, queue_id, envelope, state, active))
    found.sort(key=lambda e: (e.envelope.arrival if e.envelope else 0.0, e.queue_id))
    return found


def _maildrop_count(queue: "Queue") -> int:
    try:
        return sum(1 for n in os.listdir(queue.dir("maildrop")) if not n.startswith("."))
    except OSError:
        return 0


def _when(t: "float | None") -> str:
    return time.strftime("%a %b %d %H:%M:%S", time.localtime(t)) if t is not None else "-"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _recipient_status(r: "RecipientState", now: float) -> str:
    parts = [r.status]
    if r.attempts:
        parts.append(_plural(r.attempts, "attempt"))
    elif r.status == "queued" and r.next_attempt is None:
        return "queued, not tried yet"
    if r.pending:
        if r.next_attempt is None or r.next_attempt <= now:
            parts.append("due now")
        else:
            parts.append("next " + _when(r.next_attempt))
    elif r.status == "bounced":
        parts.append("sender notified" if r.notified else "sender not notified yet")
    return ", ".join(parts)


def list_queue(settings: "Settings", io: "Streams", *, as_json: bool = False) -> int:
    """``mailq``, ``sendmail -bp``, ``pysendmail queue list [--json]``."""
    from pysendmail.queue import Queue

    queue = Queue(settings.general.queue_dir)
    entries = _entries(queue)
    waiting = _maildrop_count(queue)
    if as_json:
        _write_json(io.stdout, queue, entries, waiting)
        return 0
    out = io.stdout
    if not entries:
        out.write("Mail queue is empty\n")
        if waiting:
            out.write(f"-- {_plural(waiting, 'message')} in the maildrop, waiting for pickup\n")
        return 0
    now = time.time()
    width = max(10, *(len(e.queue_id) for e in entries))
    indent = " " * (width + 1 + 1 + 8 + 1 + 20 + 1)
    out.write(
        f"{'-Queue ID-':<{width + 1}} --Size-- ----Arrival Time---- -Sender/Recipient-------\n"
    )
    total = 0
    marks = set()
    for e in entries:
        mark = {"hold": "!", "failed": "#"}.get(e.folder, "*" if e.active else " ")
        if mark != " ":
            marks.add(mark)
        env = e.envelope
        if env is None or e.state is None:
            head = f"{e.queue_id + mark.strip():<{width + 1}} {'?':>8} {'-':<20}"
            out.write(f"{head} (unreadable: {e.error})\n\n")
            continue
        total += env.size
        sender = env.sender or "MAILER-DAEMON"
        head = f"{e.queue_id + mark.strip():<{width + 1}} {env.size:>8} {_when(env.arrival):<20}"
        out.write(f"{head} {sender}\n")
        for r in e.state.recipients:
            out.write(f"{indent}{r.address}\n")
            out.write(f"{indent}  {_recipient_status(r, now)}\n")
            if r.reply:
                out.write(f"{indent}  ({r.reply})\n")
        out.write("\n")
    requests = len(entries)
    kbytes = (total + 1023) // 1024
    out.write(f"-- {kbytes} Kbytes in {requests} Request{'' if requests == 1 else 's'}.\n")
    if waiting:
        out.write(f"-- {_plural(waiting, 'message')} in the maildrop, waiting for pickup\n")
    if marks:
        legend = {"*": "* being delivered", "!": "! on hold", "#": "# failed"}
        out.write("-- " + ", ".join(legend[m] for m in "*!#" if m in marks) + "\n")
    return 0


def _write_json(out: "TextIO", queue: "Queue", entries: list[_Entry], waiting: int) -> None:
    import json

    messages: list[dict[str, Any]] = []
    for e in entries:
        doc: dict[str, Any] = {"queue_name": e.queue_name, "queue_id": e.queue_id}
        env = e.envelope
        if env is None or e.state is None:
            doc["error"] = e.error
            messages.append(doc)
            continue
        doc.update(
            arrival_time=env.arrival,
            message_size=env.size,
            sender=env.sender,
            submitter_uid=env.submitter_uid,
            recipients=[
                {
                    "address": r.address,
                    "status": r.status,
                    "attempts": r.attempts,
                    "last_attempt": r.last_attempt,
                    "next_attempt": r.next_attempt,
                    "last_reply": r.reply,
                    "notified": r.notified,
                }
                for r in e.state.recipients
            ],
        )
        messages.append(doc)
    document = {"queue_dir": queue.root, "maildrop_waiting": waiting, "messages": messages}
    out.write(json.dumps(document, indent=2) + "\n")


# --------------------------------------------------------------------------- show


def _visible(line: bytes) -> str:
    text = line.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\t" else f"\\x{ord(c):02x}" for c in text)


def _id(word: str) -> str:
    from pysendmail.queue import check_id

    try:
        return check_id(word)
    except errors.DataError:
        raise errors.UsageError(f"{word!r} is not a queue id") from None


def show(settings: "Settings", io: "Streams", queue_id: str) -> int:
    """``pysendmail queue show ID``: the envelope, the delivery state and the message headers."""
    from pysendmail.queue import NoSuchMessage, Queue

    queue = Queue(settings.general.queue_dir)
    queue_id = _id(queue_id)
    folder = queue.locate(queue_id)
    if folder is None:
        raise NoSuchMessage(queue_id)
    out = io.stdout
    with queue.open_message(folder, queue_id) as f:
        from pysendmail.message.envelope import Envelope

        env = Envelope.from_file(f)
        state = queue.state_of(queue_id, env)
        where = {"queue": "queued", "hold": "on hold", "failed": "failed"}[folder]
        if folder == "queue" and queue.is_locked(folder, queue_id):
            where = "being delivered"
        out.write(f"Queue ID:   {queue_id} ({where}; {queue.path(folder, queue_id)})\n")
        out.write(f"Arrival:    {time.ctime(env.arrival)}\n")
        if state.since != env.arrival:
            out.write(f"Requeued:   {time.ctime(state.since)}\n")
        out.write(f"Size:       {env.size} octets\n")
        login = f" ({env.submitter_login})" if env.submitter_login else ""
        out.write(f"Submitter:  uid {env.submitter_uid}{login}\n")
        out.write(f"Sender:     <{env.sender}>\n")
        extras = []
        if env.body_type:
            extras.append(f"BODY={env.body_type}")
        if env.smtputf8:
            extras.append("SMTPUTF8")
        if env.dsn_ret:
            extras.append(f"RET={env.dsn_ret}")
        if env.dsn_envid:
            extras.append(f"ENVID={env.dsn_envid}")
        if extras:
            out.write(f"Options:    {' '.join(extras)}\n")
        originals = {r.address: r for r in env.recipients}
        out.write("Recipients:\n")
        now = time.time()
        for r in state.recipients:
            rcpt = originals.get(r.address)
            note = ""
            if rcpt is not None and rcpt.original != r.address:
                note += f" (written as {rcpt.original})"
            if rcpt is not None and rcpt.notify:
                note += f" NOTIFY={rcpt.notify}"
            out.write(f"  <{r.address}>{note}\n")
            out.write(f"    {_recipient_status(r, now)}\n")
            if r.last_attempt is not None:
                out.write(f"    last attempt {_when(r.last_attempt)}\n")
            if r.reply:
                out.write(f"    ({r.reply})\n")
        out.write("Headers:\n")
        f.seek(env.message_offset)
        left = min(env.size, _HEADER_LIMIT)
        while left > 0:
            line = f.readline(left)
            if not line:
                break
            left -= len(line)
            if line in (b"\r\n", b"\n"):
                break
            out.write("  " + _visible(line.rstrip(b"\r\n")) + "\n")
        else:
            if env.size > _HEADER_LIMIT:
                out.write(f"  ... (header block longer than {_HEADER_LIMIT} octets)\n")
    return 0


# --------------------------------------------------------------------------- admin

_ALL_FROM = {
    "flush": ("queue",),
    "delete": ("queue", "hold", "failed"),
    "hold": ("queue",),
    "release": ("hold",),
    "requeue": ("failed",),
}


def admin(settings: "Settings", io: "Streams", action: str, ids: list[str]) -> int:
    """flush, delete, hold, release or requeue the given queue ids (``ALL``: every one that fits).

    Prints one line per id; an unknown id gets "no such queue id" on stderr.
    Returns 0, or the status of the first failure (66 unknown, 75 busy).
    """
    from pysendmail.queue import NoSuchMessage, Queue

    if action not in _ALL_FROM:
        raise errors.UsageError(f"unknown queue action {action!r}")
    queue = Queue(settings.general.queue_dir)
    if not ids and action != "flush":
        raise errors.UsageError(f"queue {action}: give at least one queue id (or ALL)")
    if not ids or ids == ["ALL"]:
        ids = [i for folder in _ALL_FROM[action] for i in queue.ids(folder)]
    do = {
        "flush": queue.flush,
        "delete": queue.delete,
        "hold": queue.hold,
        "release": queue.release,
        "requeue": queue.requeue,
    }[action]
    status = 0
    for word in ids:
        try:
            line = do(_id(word))
        except (NoSuchMessage, errors.UsageError, errors.TemporaryFailure) as exc:
            _say(io, f"pysendmail: {exc}")
            status = status or exc.exit_status
            continue
        io.stdout.write(line + "\n")
    return status


def _say(io: "Streams", line: str) -> None:
    try:
        io.stderr.write(line + "\n")
        io.stderr.flush()
    except (OSError, ValueError):
        return


if __name__ == "__main__":  # pragma: no cover
    sys.exit(2)
