"""Per-message delivery state: what happened to each recipient, and what is due when.

A queued message is immutable; everything the runner learns about it lives in
``state/ID``, one small JSON document per message, replaced atomically (written
to ``tmp/``, fsynced, renamed over the old one). A missing state file means
"never tried": every recipient is ``queued``::

    {"format": "pysendmail-state", "version": 1, "id": "0SB2K3M4N5P6Q7R8",
     "since": 1732910521.25,
     "recipients": [
       {"address": "bob@example.com", "status": "deferred", "attempts": 2,
        "last_attempt": 1732910821.5, "next_attempt": 1732911421.5,
        "reply": "451 4.7.1 Try again later", "notified": false}]}

Recipient statuses use Postfix's words: ``queued`` (not tried yet, or made due
again by an admin), ``deferred`` (a temporary failure; ``next_attempt`` says
when), ``sent`` (the relay accepted it: never sent to again) and ``bounced``
(refused for good, or the lifetime ended; ``notified`` says whether the sender
was told). ``since`` is when the queue lifetime started counting: the arrival
time, or the moment an admin requeued the message.

What this module must never do: accept a state file it does not fully
understand. A state that lies could make the runner send twice or never, so any
deviation from the shape above raises ``DataError`` with one line, and nothing
else escapes (no ``KeyError``, ``RecursionError`` or ``ValueError`` from a
crafted document).

SECURITY: state files are written only by the queue owner, but are still read
as hostile input: size-limited before parsing, duplicate keys refused, numbers
checked for type and range (``NaN``, infinities and booleans refused), and no
control character allowed in any string, so a reply from a relay can never
forge a line of ``mailq`` or of a log. ``json`` is imported inside the
functions that need it: this module is imported on the ``sendmail`` hot path.
"""

from pysendmail.errors import DataError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from pysendmail.message.envelope import Envelope

FORMAT = "pysendmail-state"
VERSION = 1
#: A state file larger than this is refused unread (a message with thousands of
#: recipients and long replies stays far below it).
MAX_STATE = 4 * 1024 * 1024

QUEUED = "queued"
DEFERRED = "deferred"
SENT = "sent"
BOUNCED = "bounced"
STATUSES = (QUEUED, DEFERRED, SENT, BOUNCED)
#: Statuses that still need a delivery attempt.
PENDING = (QUEUED, DEFERRED)

_MAX_ADDRESS = 1000
_MAX_REPLY = 4000
_MAX_ATTEMPTS = 1_000_000
_MAX_TIME = 1e11  # the year 5138: far enough, and finite
_TOP_KEYS = frozenset(("format", "version", "id", "since", "recipients"))
_RCPT_KEYS = frozenset(
    ("address", "status", "attempts", "last_attempt", "next_attempt", "reply", "notified")
)


def _clean_text(value: object, what: str, limit: int) -> str:
    if type(value) is not str:
        raise DataError(f"state file: {what} is not a string")
    if len(value) > limit:
        raise DataError(f"state file: {what} is longer than {limit} characters")
    if not value.isprintable():
        raise DataError(f"state file: {what} holds a control or unprintable character")
    return value


def _time(value: object, what: str, *, optional: bool = False) -> "float | None":
    if value is None and optional:
        return None
    # bool is an int subclass; true is not a time.
    if type(value) not in (int, float):
        raise DataError(f"state file: {what} is not a number")
    number = float(value)  # type: ignore[arg-type]
    if not 0 <= number <= _MAX_TIME:  # also refuses NaN
        raise DataError(f"state file: {what} is not a time")
    return number


def printable_reply(text: str) -> str:
    """A server reply as the state keeps it: unprintable characters as ``?``, at most 4000."""
    text = str(text)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= _MAX_REPLY else text[: _MAX_REPLY - 3] + "..."


class RecipientState:
    """What has happened so far to one envelope recipient.

    ``reply`` (the last server reply) is made printable and cut to 4000
    characters when it is set: a relay's reply must never stop the runner
    from recording a verdict.
    """

    __slots__ = (
        "_reply",
        "address",
        "attempts",
        "last_attempt",
        "next_attempt",
        "notified",
        "status",
    )

    def __init__(
        self,
        address: str,
        status: str = QUEUED,
        attempts: int = 0,
        last_attempt: "float | None" = None,
        next_attempt: "float | None" = None,
        reply: str = "",
        notified: bool = False,
    ) -> None:
        self.address = address
        self.status = status
        self.attempts = attempts
        self.last_attempt = last_attempt
        self.next_attempt = next_attempt
        self.reply = reply
        self.notified = notified

    @property
    def reply(self) -> str:
        return self._reply

    @reply.setter
    def reply(self, value: str) -> None:
        self._reply = printable_reply(value)

    @property
    def pending(self) -> bool:
        """True while the recipient still needs an attempt (queued or deferred)."""
        return self.status in PENDING

    def due(self, now: float) -> bool:
        """True when the recipient should be tried at ``now``."""
        return self.pending and (self.next_attempt is None or self.next_attempt <= now)

    def check(self) -> None:
        """Refuse (``DataError``) a value that a state file cannot carry."""
        _clean_text(self.address, "recipient address", _MAX_ADDRESS)
        if self.status not in STATUSES:
            raise DataError(f"state file: unknown recipient status {self.status!r}")
        if type(self.attempts) is not int or not 0 <= self.attempts <= _MAX_ATTEMPTS:
            raise DataError("state file: attempts is not a count")
        _time(self.last_attempt, "last_attempt", optional=True)
        _time(self.next_attempt, "next_attempt", optional=True)
        _clean_text(self.reply, "reply", _MAX_REPLY)
        if type(self.notified) is not bool:
            raise DataError("state file: notified is not true or false")

    def as_data(self) -> "dict[str, Any]":
        return {name.lstrip("_"): getattr(self, name) for name in sorted(self.__slots__)}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RecipientState):
            return NotImplemented
        return self.as_data() == other.as_data()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.as_data().items())
        return f"RecipientState({inner})"


class State:
    """The delivery state of one message: one ``RecipientState`` per envelope recipient."""

    __slots__ = ("queue_id", "recipients", "since")

    def __init__(self, queue_id: str, since: float, recipients: "list[RecipientState]") -> None:
        self.queue_id = queue_id
        self.since = since
        self.recipients = recipients

    @classmethod
    def fresh(cls, envelope: "Envelope") -> "State":
        """The state of a message never tried: every distinct recipient queued."""
        seen: set[str] = set()
        recipients = []
        for r in envelope.recipients:
            if r.address not in seen:
                seen.add(r.address)
                recipients.append(RecipientState(r.address))
        return cls(envelope.queue_id, float(envelope.arrival), recipients)

    def get(self, address: str) -> "RecipientState | None":
        for r in self.recipients:
            if r.address == address:
                return r
        return None

    @property
    def pending(self) -> "list[RecipientState]":
        """Recipients that still need an attempt."""
        return [r for r in self.recipients if r.pending]

    @property
    def finished(self) -> bool:
        """True when no recipient needs another attempt (all sent or bounced)."""
        return not any(r.pending for r in self.recipients)

    def due(self, now: float) -> bool:
        """True when at least one recipient should be tried at ``now``."""
        return any(r.due(now) for r in self.recipients)

    def next_attempt(self) -> "float | None":
        """The earliest time a pending recipient is due, or ``None`` when none is pending."""
        times = [r.next_attempt or 0.0 for r in self.recipients if r.pending]
        return min(times) if times else None

    def make_due(self, now: float) -> bool:
        """Make every pending recipient due at ``now`` (flush); True if any changed."""
        changed = False
        for r in self.recipients:
            if r.pending and (r.next_attempt is None or r.next_attempt > now):
                r.next_attempt = now
                changed = True
        return changed

    def requeue(self, now: float) -> None:
        """Give every recipient not yet sent a new start: queued, no attempts, a new lifetime."""
        self.since = now
        for r in self.recipients:
            if r.status != SENT:
                r.status = QUEUED
                r.attempts = 0
                r.next_attempt = None
                r.notified = False

    def check(self) -> None:
        """Refuse (``DataError``) a state that ``from_bytes`` would not read back."""
        from pysendmail.message.envelope import check_queue_id

        try:
            check_queue_id(self.queue_id)
        except DataError as exc:
            raise DataError(f"state file: {exc}") from None
        _time(self.since, "since")
        if type(self.recipients) is not list:
            raise DataError("state file: recipients is not a list")
        seen: set[str] = set()
        for r in self.recipients:
            if not isinstance(r, RecipientState):
                raise DataError("state file: a recipient is not a RecipientState")
            r.check()
            if r.address in seen:
                raise DataError(f"state file: recipient {r.address!r} appears twice")
            seen.add(r.address)

    def to_bytes(self) -> bytes:
        """The state file's content (checked first, so whatever is written reads back)."""
        import json

        self.check()
        data = {
            "format": FORMAT,
            "version": VERSION,
            "id": self.queue_id,
            "since": float(self.since),
            "recipients": [r.as_data() for r in self.recipients],
        }
        return json.dumps(data, ensure_ascii=True, allow_nan=False).encode("ascii") + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes, queue_id: "str | None" = None) -> "State":
        """Parse a state file; ``DataError`` for anything else than what ``to_bytes`` writes.

        ``queue_id``, when given, must be the id the file records (a state file
        copied next to another message is refused).
        """
        import json

        if len(data) > MAX_STATE:
            raise DataError(f"state file is larger than {MAX_STATE} octets")
        try:
            doc = json.loads(data, object_pairs_hook=_no_duplicates)
        except DataError:
            raise
        except (ValueError, RecursionError, UnicodeDecodeError) as exc:
            # ValueError covers JSONDecodeError and integers too long to convert.
            raise DataError(f"state file is not valid JSON: {_first_line(exc)}") from None
        if type(doc) is not dict or set(doc) != _TOP_KEYS:
            raise DataError("state file does not have the keys of a pysendmail state")
        if doc["format"] != FORMAT or doc["version"] != VERSION or type(doc["version"]) is not int:
            raise DataError(
                f"state file is not a {FORMAT} version {VERSION} document"
                f" (format {_short(doc['format'])}, version {_short(doc['version'])})"
            )
        if type(doc["id"]) is not str:
            raise DataError("state file: id is not a string")
        if queue_id is not None and doc["id"] != queue_id:
            raise DataError(f"state file records the id {_short(doc['id'])}, not {queue_id}")
        rows = doc["recipients"]
        if type(rows) is not list:
            raise DataError("state file: recipients is not a list")
        recipients = []
        for row in rows:
            if type(row) is not dict or set(row) != _RCPT_KEYS:
                raise DataError("state file: a recipient does not have the expected keys")
            attempts = row["attempts"]
            if type(attempts) is not int:
                raise DataError("state file: attempts is not a count")
            # Checked as read: the setter would quietly clean what a file must not hold.
            _clean_text(row["reply"], "reply", _MAX_REPLY)
            recipients.append(
                RecipientState(
                    address=row["address"],
                    status=row["status"],
                    attempts=attempts,
                    last_attempt=row["last_attempt"],
                    next_attempt=row["next_attempt"],
                    reply=row["reply"],
                    notified=row["notified"],
                )
            )
        since = _time(doc["since"], "since")
        state = cls(doc["id"], since if since is not None else 0.0, recipients)
        state.check()
        for r in state.recipients:
            # JSON integers are exact; keep times as floats for those who compare them.
            if r.last_attempt is not None:
                r.last_attempt = float(r.last_attempt)
            if r.next_attempt is not None:
                r.next_attempt = float(r.next_attempt)
        return state

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, State):
            return NotImplemented
        return (self.queue_id, self.since, self.recipients) == (
            other.queue_id,
            other.since,
            other.recipients,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"State({self.queue_id!r}, since={self.since!r}, recipients={self.recipients!r})"


def _no_duplicates(pairs: "list[tuple[str, Any]]") -> "dict[str, Any]":
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DataError(f"state file repeats the key {_short(key)}")
        result[key] = value
    return result


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
