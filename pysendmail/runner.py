"""The queue runner: picks up the maildrop, delivers what is due, retries, bounces.

``pysendmail queue run`` and ``sendmail -q`` call ``run_queue_main`` once;
``pysendmail queue run --watch`` and the sidecar keep a ``Runner.watch`` loop
that runs the queue again whenever a commit pokes the trigger or a retry falls
due. One run:

1. takes the maildrop into the queue (``Queue.pickup``: checked copies) and
   removes stale temporary files;
2. claims each due message (``flock``; a message another runner holds is left
   to it) and sends its pending recipients through a ``Relay``. Each worker
   keeps one ``Relay`` for the whole run, so a smarthost sees one connection
   per worker and ``RSET`` between messages; ``queue.connections`` workers
   run side by side when there are enough messages to share: processes in a
   one-shot ``queue run`` (``_work_processes``: threads share one interpreter
   lock and barely beat one worker), threads in ``--watch`` and the sidecar;
3. records every recipient's verdict in the message's state file *before
   anything else happens* (before logging, before bouncing): an accepted
   recipient is never sent to again (DESIGN.md invariant 3), and the only
   duplicate a crash can cause is the message whose 250 arrived just before
   the crash. When every recipient was accepted, removing the message is the
   record (no state file is written for it: two fsyncs fewer per message);
   the removals of a run are made durable in batches, one fsync for many
   (``queue/removals.py``: only a crash of the machine within a batch can
   bring a delivered message back, the duplicate DESIGN.md allows);
4. schedules the next attempt for what was deferred: ``retry_min`` after the
   first failure, doubling up to ``retry_max``, never later than the end of the
   lifetime; once ``queue.lifetime`` has passed since arrival, the recipients
   still deferred are given up ("expired") and bounced;
5. tells the sender about given-up recipients with an RFC 3464 DSN
   (``bounce``), queued as a new message from the null sender through the same
   queue, so that it is as durable as any mail; or to ``queue.admin_address``,
   or only in the log, as ``queue.bounce`` says. Mail from the null sender is
   never bounced (a bounce never bounces);
6. removes a message whose recipients were all accepted, and moves one with
   given-up recipients to ``failed/`` once no recipient is pending (DESIGN.md:
   "given up, and kept for inspection").

Verdicts: the relay judges each recipient sent, bounced (5xx) or deferred.
The runner overrides one thing: an error that says the *smarthost* cannot
take mail from us now, rather than that the *message* is refused, defers
instead of bouncing. That is any error while the session was being opened
(connect, greeting, even a 554 one, EHLO, STARTTLS, AUTH: the relay reports
them with ``opened=False``; Postfix's ``smtp_skip_5xx_greeting`` does the same) and, at any
point, authentication, TLS, a missing required extension or our own
configuration: fixing a password must not leave a trail of bounced mail.
A route that could not be opened is not tried again in the same run; the
rest of its messages are deferred at once ("delivery temporarily
suspended"), so a dead smarthost costs one timeout per run, not one per
message.

What it must never do: send to a recipient whose state says sent; send a
message it has not claimed; hold the claim's lock across anything but one
message; let one bad message stop the run (it is logged and left in place),
or go on sending when the state can no longer be written (the run stops: each
further message would become a duplicate on the next run).

SECURITY: the runner runs as the queue owner and is the only program that
reads the relay password (through ``password``, only when a session
authenticates). Queue files and server replies are hostile: envelopes are
parsed by ``Envelope.from_file`` (the queue does it), replies are only
logged through ``log`` (made printable) and quoted in DSNs through ``bounce``
(made inert).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any, Protocol

from pysendmail import errors
from pysendmail.bounce import Failure, duration_text, write_bounce
from pysendmail.log import Logger, delivery_fields, printable
from pysendmail.queue import Claim, Queue, Trigger, make_queue_id
from pysendmail.queue.removals import NotDurable, Removals
from pysendmail.queue.state import RecipientState, State
from pysendmail.relay import (
    BOUNCED,
    DEFERRED,
    SENT,
    DeliveryReport,
    RecipientResult,
    Relay,
    routes_for,
)

if TYPE_CHECKING:
    from pysendmail.cli import Streams
    from pysendmail.config import Settings
    from pysendmail.config.settings import Relay as RelaySettings
    from pysendmail.message.envelope import Envelope

#: A worker (one more connection) is started for each this many due messages,
#: up to ``queue.connections``: a new connection only pays for itself when it
#: has a few messages to carry.
MESSAGES_PER_CONNECTION = 4
#: The longest a watching runner sleeps: the maildrop (which users cannot
#: poke) and the clock are looked at least this often.
WATCH_MAX_WAIT = 60.0
#: How often a watching runner looks at its stop event while it waits.
WATCH_SLICE = 0.5
#: How often a watching runner without a trigger FIFO looks at the queue.
WATCH_POLL = 5.0
#: Senders whose route is remembered (the cache is emptied when full).
_ROUTES_KEPT = 256

# Errors that say "this site cannot send now" (credentials, TLS, a missing
# extension, our own configuration), not "this message is refused": they defer.
_SITE_ERRORS: tuple[type[errors.PysendmailError], ...] = (
    errors.SMTPAuthenticationError,
    errors.SMTPSecurityError,
    errors.SMTPTLSError,
    errors.SMTPUnsupportedCommand,
    errors.ConfigError,
)


_PERMANENT = re.compile(r"^5\d\d(?:[ -]|$)")


class PasswordResolver(Protocol):
    def __call__(self, relay: RelaySettings, settings: Settings, /) -> str | None: ...


class RelayLike(Protocol):
    """What the runner needs of a relay (``pysendmail.relay.Relay``)."""

    def send(
        self, envelope: Envelope, message: IO[bytes], recipients: list[str] | None = None
    ) -> DeliveryReport: ...

    def close(self) -> None: ...


#: Set on an error raised while a session was being opened (connect, greeting,
#: EHLO, STARTTLS, AUTH): nothing of the message reached the server.
class StateWriteError(errors.PysendmailError):
    """A state file could not be written: the run stops before it can duplicate mail."""

    exit_status = errors.EX_TEMPFAIL


class RunSummary:
    """What one run did, in counts (messages unless it says recipients)."""

    __slots__ = (
        "bounced",
        "bounces",
        "busy",
        "cleaned",
        "deferred",
        "due",
        "failed",
        "picked_up",
        "problems",
        "removed",
        "sent",
        "tried",
    )

    def __init__(self) -> None:
        self.picked_up = 0  # maildrop files taken into the queue
        self.cleaned = 0  # stale temporary files removed
        self.due = 0  # messages that were due (or named)
        self.tried = 0  # messages claimed and handled
        self.busy = 0  # messages another runner held (or gone)
        self.sent = 0  # recipients accepted
        self.deferred = 0  # recipients deferred
        self.bounced = 0  # recipients given up (5xx or expired)
        self.bounces = 0  # DSNs queued
        self.removed = 0  # messages delivered to every recipient and removed
        self.failed = 0  # messages moved to failed/
        self.problems = 0  # messages that could not be read or handled

    def add(self, other: RunSummary) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def counts(self) -> dict[str, int]:
        """The counts by name (a worker process's report)."""
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_counts(cls, counts: object) -> RunSummary:
        """The summary a worker reported; whatever is not a count of ours counts 0."""
        summary = cls()
        if isinstance(counts, dict):
            for name in cls.__slots__:
                value = counts.get(name, 0)
                setattr(summary, name, value if type(value) is int else 0)
        return summary

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)}" for n in self.__slots__)
        return f"RunSummary({inner})"


class _Feed:
    """The queue ids of one run, shared by its workers; a bounce queued meanwhile joins it.

    A worker that adds an id asks for its next one afterwards, so whatever is
    added is always taken by someone before the run ends.
    """

    def __init__(
        self, items: Iterable[str], *, forced: bool = False, removals: Removals | None = None
    ) -> None:
        self._items = collections.deque(items)
        self._lock = threading.Lock()
        self.stopped = False
        #: The ids were named (``queue flush ID``): deliver them whatever their time.
        self.forced = forced
        #: Where finished messages' removals are made durable, in batches.
        self.removals = removals

    def __iter__(self) -> Iterator[str]:
        return self

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __next__(self) -> str:
        with self._lock:
            if self.stopped or not self._items:
                raise StopIteration
            return self._items.popleft()

    def add(self, queue_id: str) -> None:
        with self._lock:
            self._items.append(queue_id)

    def take_all(self) -> list[str]:
        """Every id not handed out yet (the feed is then empty)."""
        with self._lock:
            items = list(self._items)
            self._items.clear()
            return items

    def stop(self) -> None:
        with self._lock:
            self.stopped = True


def reported_error(error: tuple[str, str]) -> errors.PysendmailError:
    """The error a worker reported with ``Runner.deliver``'s ``(kind, text)``."""
    kind, text = error
    return StateWriteError(text) if kind == "state" else errors.PysendmailError(text)


def _not_durable(exc: OSError) -> StateWriteError:
    return StateWriteError(
        "delivered messages were removed from the queue, but the removal could not be "
        f"made durable ({exc}); the run stops"
    )


def backoff(attempts: int, retry_min: float, retry_max: float) -> float:
    """The wait after the ``attempts``-th failed attempt: retry_min, doubling, at most retry_max."""
    if attempts <= 1:
        return min(retry_min, retry_max)
    # Bounded exponent: 2**64 seconds is far past any retry_max.
    return float(min(retry_max, retry_min * 2 ** min(attempts - 1, 64)))


def _die_with(parent: int) -> None:
    """End this (forked worker) process when ``parent`` ends, as a thread would.

    Whoever stops a run, even with SIGKILL, stops its workers too: Linux's
    PR_SET_PDEATHSIG sends them SIGKILL. Elsewhere, or if the parent is gone
    already, the worker leaves at once (its messages stay queued).
    """
    import signal

    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (ImportError, OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(errors.EX_TEMPFAIL)


def _unfinished_business(state: State) -> bool:
    """Work left that is not a delivery: removing a finished message, queueing a bounce."""
    return state.finished or any(
        rs.status == BOUNCED and not rs.notified for rs in state.recipients
    )


def _looks_expired(rs: RecipientState, deadline: float) -> bool:
    """Whether a given-up recipient ran out of time rather than being refused.

    Only needed when a run died between recording the verdict and queueing the
    bounce; the state then says "bounced" without saying why. A recipient
    tried at or after the end of its lifetime whose last reply was not a
    permanent refusal expired.
    """
    permanent = bool(_PERMANENT.match(rs.reply))
    return not permanent and rs.last_attempt is not None and rs.last_attempt >= deadline


class Runner:
    """Delivers the queue at ``settings.general.queue_dir`` through ``settings.relays``.

    ``password(relay, settings)`` resolves a relay's password when a session
    authenticates; ``clock`` is the wall clock (tests inject one);
    ``relay_factory`` makes one relay per worker and run (by default a
    ``Relay`` over the configured smarthosts).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        logger: Logger,
        password: PasswordResolver | None = None,
        clock: Callable[[], float] = time.time,
        relay_factory: Callable[[], RelayLike] | None = None,
        queue: Queue | None = None,
        debug_output: IO[str] | None = None,
        processes: bool = False,
        stopping: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        #: Once set, no further message is started: the one under way is
        #: finished (its state saved), the rest stay queued as they were.
        self.stopping = stopping
        self.log = logger
        self.clock = clock
        self.queue = queue if queue is not None else Queue(settings.general.queue_dir)
        if password is None:
            from pysendmail.config.secrets import resolve_password

            password = resolve_password
        self._password = password
        self._relay_factory = relay_factory or self._default_relay
        self._debug_output = debug_output
        self._log_lock = threading.Lock()
        self._summary_lock = threading.Lock()
        # Routes that could not be opened in this run: (relay name, reason).
        self._suspended: dict[tuple[int, ...], tuple[str, str]] = {}
        # The route of each sender seen (the relays' ids), as ``routes_for``
        # decides it from ``_routes_of``, the settings they were made from.
        self._routes: dict[str, tuple[int, ...]] = {}
        self._routes_of: object = None
        #: Run parallel connections as processes (see ``_work_processes``): for
        #: a one-shot ``queue run``, never inside a program with threads of its own.
        self.processes = processes and hasattr(os, "fork")

    # -- configuration -------------------------------------------------------

    def _default_relay(self) -> RelayLike:
        settings = self.settings
        resolve = self._password

        def password(relay: Any) -> str | None:
            return resolve(relay, settings)

        return Relay(
            list(settings.relays),  # type: ignore[arg-type]  # the settings' Relay is a RelayConfig
            helo=settings.general.hostname,
            password=password,
            debug_output=self._debug_output,
        )

    def workers_for(self, messages: int) -> int:
        """How many parallel connections a run of ``messages`` due messages uses."""
        limit = max(1, self.settings.queue.connections)
        wanted = -(-messages // MESSAGES_PER_CONNECTION)
        return max(1, min(limit, wanted))

    # -- logging -------------------------------------------------------------

    def _event(self, queue_id: str, level: str, **fields: object) -> None:
        with self._log_lock:
            self.log.event(queue_id, level, **fields)

    def _line(self, queue_id: str, text: str, level: str = "info") -> None:
        with self._log_lock:
            self.log.line(f"{printable(queue_id)}: {text}", level)

    # -- one run -------------------------------------------------------------

    def run_once(self, ids: list[str] | None = None) -> RunSummary:
        """Run the queue once: the due messages, or exactly the messages ``ids``.

        Raises ``OSError`` when the queue cannot be listed, and
        ``StateWriteError`` when a state file could not be written (the run
        stopped there).
        """
        summary = RunSummary()
        self._suspended.clear()
        self._housekeeping(summary)
        todo = list(ids) if ids is not None else self.due(self.clock())
        summary.due = len(todo)
        if not todo:
            return summary
        # The removals of delivered messages are made durable in batches, and
        # all of them before the run returns (queue/removals.py).
        removals = Removals(self.queue)
        feed = _Feed(todo, forced=ids is not None, removals=removals)
        try:
            self._work_all(feed, summary)
        finally:
            try:
                removals.close()
            except OSError as exc:
                # Raised over whatever else stopped the run: the next run could
                # send these messages again, and that is what needs saying.
                raise _not_durable(exc) from exc
        return summary

    def _work_all(self, feed: _Feed, summary: RunSummary) -> None:
        workers = self.workers_for(len(feed))
        if workers == 1:
            self._work(feed, summary)
            return
        if self.processes:
            self._work_processes(feed, summary, workers)
            return
        failures: list[BaseException] = []

        def work() -> None:
            try:
                self._work(feed, summary)
            except BaseException as exc:
                feed.stop()
                failures.append(exc)

        threads = [
            threading.Thread(target=work, name=f"pysendmail-runner-{n}", daemon=True)
            for n in range(workers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]

    def _work_processes(self, feed: _Feed, summary: RunSummary, workers: int) -> None:
        """Deliver ``feed`` over ``workers`` connections, one process each.

        Threads share one interpreter lock, and a worker spends most of its time
        running Python (formatting, parsing, bookkeeping), so two threads deliver
        little more than one. Processes do not share it. The ids are dealt
        round-robin; each child has its own relay (connection), its own batch
        of removals and its own suspended routes, and queues the bounces it
        makes into its own share. Two processes never take the same message
        (each id is dealt once, and a claim is a lock anyway: invariant 4).
        Each child reports its counts, and the error that stopped it, through a
        pipe; a child that dies leaves its messages queued for the next run.
        """
        ids = feed.take_all()
        shares = [ids[n::workers] for n in range(workers)]
        parent = os.getpid()
        for stream in (getattr(self.log, "stream", None), sys.stdout, sys.stderr):
            with contextlib.suppress(AttributeError, OSError, ValueError):
                stream.flush()  # type: ignore[union-attr]
        children: list[tuple[int, int]] = []
        try:
            for share in shares[1:]:
                read_end, write_end = os.pipe()
                pid = os.fork()
                if pid == 0:  # the child: deliver its share, report, and leave
                    os.close(read_end)
                    status = 70
                    try:
                        _die_with(parent)
                        status = self._child(share, feed.forced, write_end)
                    finally:
                        os._exit(status)
                os.close(write_end)
                children.append((pid, read_end))
            own = _Feed(shares[0], forced=feed.forced, removals=feed.removals)
            self._work(own, summary)
        finally:
            failure = self._reap(children, summary)
        if failure is not None:
            raise failure

    def deliver(
        self, ids: list[str], *, forced: bool = False
    ) -> tuple[RunSummary, tuple[str, str] | None]:
        """Deliver exactly ``ids`` here, without housekeeping: a worker process's share.

        Returns the counts, and what stopped the run, if anything:
        ``("state", text)`` when a state could not be recorded or a removal
        made durable (``StateWriteError``), ``("other", text)`` for anything
        else. Bounces queued meanwhile are delivered in the same call.
        """
        summary = RunSummary()
        error: tuple[str, str] | None = None
        self._suspended.clear()
        removals = Removals(self.queue)
        try:
            try:
                self._work(_Feed(ids, forced=forced, removals=removals), summary)
            finally:
                try:
                    removals.close()
                except OSError as exc:
                    raise _not_durable(exc) from exc
        except StateWriteError as exc:
            error = ("state", str(exc))
        except BaseException as exc:
            error = ("other", f"{type(exc).__name__}: {exc}")
        return summary, error

    def _child(self, share: list[str], forced: bool, report_fd: int) -> int:
        """A worker process's whole life after ``fork``: its share of the run, then a report."""
        import json

        summary, error = self.deliver(share, forced=forced)
        data = json.dumps({"summary": summary.counts(), "error": error}).encode()
        with contextlib.suppress(OSError, ValueError):
            for stream in (getattr(self.log, "stream", None), sys.stdout, sys.stderr):
                with contextlib.suppress(AttributeError):
                    stream.flush()  # type: ignore[union-attr]
        with open(report_fd, "wb") as out:
            out.write(data)
        return 0

    def _reap(
        self, children: list[tuple[int, int]], summary: RunSummary
    ) -> errors.PysendmailError | None:
        """Wait for every child; add its counts to ``summary``; the first failure, if any."""
        import json

        failure: errors.PysendmailError | None = None
        for pid, read_end in children:
            with open(read_end, "rb") as src:
                data = src.read()
            _, status = os.waitpid(pid, 0)
            try:
                report = json.loads(data)
                counts = report["summary"]
                error = report["error"]
            except (ValueError, KeyError, TypeError):
                how = (
                    f"signal {os.WTERMSIG(status)}"
                    if os.WIFSIGNALED(status)
                    else f"status {os.WEXITSTATUS(status)}"
                )
                text = f"a worker process ended by {how}; its messages stay queued"
                self._line("runner", text, "error")
                failure = failure or StateWriteError(text)
                continue
            summary.add(RunSummary.from_counts(counts))
            if error is not None and failure is None:
                failure = reported_error(error)
        return failure

    def due(self, now: float) -> list[str]:
        """The ids of the queued messages with a recipient due at ``now``, oldest first.

        A message whose state cannot be read counts as due: claiming it moves it
        to ``failed/`` and says why, which is better than leaving it silently.
        So does one that a crash left half done (every recipient final but the
        message not removed, or a bounce not yet queued).
        """
        result = []
        ids = self.queue.ids()
        recorded = self._recorded()
        for queue_id in ids:
            if recorded is not None and queue_id not in recorded:
                result.append(queue_id)
                continue
            try:
                state = self.queue.read_state(queue_id)
            except (OSError, errors.DataError):
                result.append(queue_id)
                continue
            if state is None or state.due(now) or _unfinished_business(state):
                result.append(queue_id)
        return result

    def _recorded(self) -> set[str] | None:
        """The ids that have a state file (None when state/ cannot be listed).

        A message without one was never tried: it is due, and there is no need
        to try opening a file that is not there, once per message.
        """
        try:
            return set(self.queue.ids("state"))
        except (OSError, errors.PysendmailError):
            return None

    def next_due(self) -> float | None:
        """The earliest time a queued message falls due, or None when nothing is pending.

        A message without a state file was never tried: it is due now, and
        then nothing else needs reading (under a burst the queue holds many
        such messages, and this runs after every run).
        """
        now = self.clock()
        ids = self.queue.ids()
        recorded = self._recorded()
        if recorded is not None and any(queue_id not in recorded for queue_id in ids):
            return now
        earliest: float | None = None
        for queue_id in ids:
            try:
                state = self.queue.read_state(queue_id)
            except (OSError, errors.DataError):
                continue
            when = now if state is None else state.next_attempt()
            if when is not None and (earliest is None or when < earliest):
                earliest = when
                if earliest <= now:
                    break
        return earliest

    def _housekeeping(self, summary: RunSummary) -> None:
        # File ages are measured against the real clock (mtimes are real), not
        # against the injected one that schedules deliveries.
        q = self.queue
        settings = self.settings
        try:
            picked = q.pickup(
                settings.general.max_message_size, stale_age=settings.queue.stale_tmp_age
            )
        except (OSError, errors.PysendmailError) as exc:
            self._line("maildrop", f"pickup failed: {exc}", "warning")
            picked = []
        for result in picked:
            if result.outcome == "queued":
                summary.picked_up += 1
                with self._log_lock:
                    self.log.line(result.log_line())
            elif result.outcome == "refused":
                with self._log_lock:
                    self.log.line(result.log_line(), "warning")
        try:
            summary.cleaned = len(q.clean_tmp(settings.queue.stale_tmp_age))
        except (OSError, errors.PysendmailError) as exc:
            self._line("tmp", f"cleaning stale files failed: {exc}", "warning")

    def _work(self, feed: _Feed, summary: RunSummary) -> None:
        relay = self._relay_factory()
        # This worker's counts, added to the run's once, however the work ends
        # (not once per message: the lock and a dozen setattr each time).
        mine = RunSummary()
        try:
            for queue_id in feed:
                self._one(queue_id, relay, mine, feed)
        finally:
            try:
                relay.close()
            finally:
                with self._summary_lock:
                    summary.add(mine)

    def _one(self, queue_id: str, relay: RelayLike, summary: RunSummary, feed: _Feed) -> None:
        if self.stopping is not None and self.stopping.is_set():
            feed.stop()  # the other workers of the run stop too
            return
        try:
            claim = self.queue.claim(queue_id, removals=feed.removals)
        except (OSError, errors.PysendmailError) as exc:
            summary.problems += 1
            self._line(queue_id, f"cannot take the message: {exc}", "error")
            return
        if claim is None:
            summary.busy += 1
            return
        with claim:
            summary.tried += 1
            try:
                self._deliver(claim, relay, summary, feed)
            except StateWriteError:
                raise
            except (OSError, errors.PysendmailError) as exc:
                summary.problems += 1
                self._line(queue_id, f"delivery stopped, left in the queue: {exc}", "error")
            except Exception as exc:
                # A bug of ours must not stop the whole queue at one message.
                summary.problems += 1
                self._line(
                    queue_id,
                    f"internal error, left in the queue: {type(exc).__name__}: {exc}",
                    "error",
                )

    # -- one message ---------------------------------------------------------

    def _save(self, claim: Claim, state: State) -> None:
        try:
            claim.save(state)
        except OSError as exc:
            raise StateWriteError(
                f"{claim.queue_id}: cannot record the delivery state ({exc}); "
                "the run stops so that no message is sent twice"
            ) from exc

    def _deliver(self, claim: Claim, relay: RelayLike, summary: RunSummary, feed: _Feed) -> None:
        envelope = claim.envelope
        state = claim.state
        for rcpt in envelope.recipients:
            if state.get(rcpt.address) is None:
                state.recipients.append(RecipientState(rcpt.address))
        if not feed.forced and not state.due(self.clock()) and not _unfinished_business(state):
            # Another runner tried it since this run listed the queue: its turn
            # is not due again yet.
            summary.tried -= 1
            summary.busy += 1
            return
        pending = [rs.address for rs in state.pending]
        relay_name: str | None = None
        expired: set[str] = set()
        if pending:
            report = self._send(claim, relay, envelope, pending)
            now = self.clock()
            expired = self._record(state, report.recipients, now)
            # Invariant 3: the verdicts reach the disk before anything else happens.
            if all(rs.status == SENT for rs in state.recipients):
                # Every recipient accepted: removing the message is the record
                # (and spares a state file write, two fsyncs, per message).
                self._remove(claim)
                self._log_attempt(envelope, state, report, expired, now, summary)
                summary.removed += 1
                self._line(envelope.queue_id, "removed")
                return
            self._save(claim, state)
            relay_name = report.relay
            self._log_attempt(envelope, state, report, expired, now, summary)
        self._finish(claim, state, relay_name, expired, summary, feed)

    def _remove(self, claim: Claim) -> None:
        try:
            claim.done()
        except NotDurable as exc:  # an earlier batch of removals failed
            raise _not_durable(exc) from exc
        except OSError as exc:
            raise StateWriteError(
                f"{claim.queue_id}: delivered, but cannot remove it from the queue ({exc}); "
                "the run stops so that no message is sent twice"
            ) from exc

    def _send(
        self, claim: Claim, relay: RelayLike, envelope: Envelope, pending: list[str]
    ) -> DeliveryReport:
        routes = self._routes
        if self._routes_of is not self.settings:
            # New settings (a reload): the routes are decided again.
            routes.clear()
            self._routes_of = self.settings
        route = routes.get(envelope.sender)
        if route is None:
            relays: list[Any] = list(self.settings.relays)
            route = tuple(id(r) for r in routes_for(envelope.sender, relays))
            if len(routes) >= _ROUTES_KEPT:
                routes.clear()
            routes[envelope.sender] = route
        suspended = self._suspended.get(route)
        if suspended is not None:
            # This smarthost could not be reached a moment ago: do not wait for
            # its timeout once per message (Postfix: "delivery temporarily suspended").
            report = DeliveryReport(time.monotonic())
            report.relay = suspended[0]
            text = f"delivery temporarily suspended: {suspended[1]}"
            report.recipients = [RecipientResult(a, DEFERRED, text) for a in pending]
            return report
        try:
            # The claim's own file: closing it would drop the lock.
            report = relay.send(envelope, claim.message(), pending)
        except errors.PysendmailError as exc:
            report = DeliveryReport(time.monotonic())
            report.error = exc
            report.recipients = [RecipientResult(a, DEFERRED, str(exc)) for a in pending]
        except Exception as exc:
            # Not a verdict on the message: retried (and bounced only when its
            # lifetime ends) rather than left to stop every later run here.
            report = DeliveryReport(time.monotonic())
            text = f"internal error: {type(exc).__name__}: {exc}"
            report.recipients = [RecipientResult(a, DEFERRED, text) for a in pending]
        opening = not report.opened
        if opening or isinstance(report.error, _SITE_ERRORS):
            for result in report.recipients:
                if result.status == BOUNCED:
                    result.status = DEFERRED
        if opening:
            reason = report.recipients[0].reply if report.recipients else str(report.error)
            self._suspended[route] = (report.relay, reason)
        return report

    def _record(self, state: State, results: list[RecipientResult], now: float) -> set[str]:
        """Write the verdicts into ``state`` and schedule the next attempts; return the expired.

        A deferred recipient is tried again ``backoff(attempts)`` later, but
        never later than the end of its lifetime (``state.since`` plus
        ``queue.lifetime``); one still deferred at that end is given up.
        """
        queue_settings = self.settings.queue
        deadline = state.since + queue_settings.lifetime
        expired: set[str] = set()
        for result in results:
            rs = state.get(result.address)
            if rs is None or not rs.pending:
                continue
            rs.attempts += 1
            rs.last_attempt = now
            rs.reply = result.reply
            if result.status == SENT:
                rs.status = SENT
                rs.next_attempt = None
            elif result.status == BOUNCED:
                rs.status = BOUNCED
                rs.next_attempt = None
                rs.notified = False
            elif now >= deadline:
                rs.status = BOUNCED
                rs.next_attempt = None
                rs.notified = False
                expired.add(rs.address)
            else:
                rs.status = DEFERRED
                wait = backoff(rs.attempts, queue_settings.retry_min, queue_settings.retry_max)
                rs.next_attempt = max(now, min(now + wait, deadline))
        return expired

    def _log_attempt(
        self,
        envelope: Envelope,
        state: State,
        report: DeliveryReport,
        expired: set[str],
        now: float,
        summary: RunSummary,
    ) -> None:
        originals = {r.address: r.original for r in envelope.recipients}
        delay = max(0.0, now - envelope.arrival)
        for result in report.recipients:
            rs = state.get(result.address)
            tries = rs.attempts if rs is not None else 0
            status = result.status
            if status == SENT:
                summary.sent += 1
                level = "info"
            elif status == BOUNCED:
                summary.bounced += 1
                level = "warning"
            else:
                summary.deferred += 1
                level = "warning"
            fields = delivery_fields(
                result.address,
                originals.get(result.address),
                report.relay,
                delay,
                tries,
                status,
                result.reply,
            )
            self._event(envelope.queue_id, level, **fields)
        if expired:
            summary.deferred -= len(expired)
            summary.bounced += len(expired)
            lifetime = duration_text(self.settings.queue.lifetime)
            self._event(
                envelope.queue_id,
                "warning",
                **{"from": f"<{envelope.sender}>"},
                status=f"expired (not delivered within the queue lifetime of {lifetime})",
            )

    # -- bounces and the end of a message ------------------------------------

    def _finish(
        self,
        claim: Claim,
        state: State,
        relay_name: str | None,
        expired: set[str],
        summary: RunSummary,
        feed: _Feed,
    ) -> None:
        envelope = claim.envelope
        unnotified = [rs for rs in state.recipients if rs.status == BOUNCED and not rs.notified]
        if unnotified:
            bounce_id = self._notify(claim, state, unnotified, relay_name, expired, summary)
            for rs in unnotified:
                rs.notified = True
            self._save(claim, state)
            if bounce_id is not None:
                feed.add(bounce_id)  # delivered in this run, like any due message
        if not state.finished:
            return
        if any(rs.status == BOUNCED for rs in state.recipients):
            claim.fail()
            summary.failed += 1
            self._line(envelope.queue_id, "moved to failed/")
        else:
            self._remove(claim)
            summary.removed += 1
            self._line(envelope.queue_id, "removed")

    def _bounce_to(self, envelope: Envelope) -> str | None:
        """Who gets the DSN, or None (with a log line) when nobody does."""
        qid = envelope.queue_id
        policy = self.settings.queue.bounce
        if envelope.sender == "":
            self._line(
                qid,
                "undeliverable mail from the null sender is not bounced (a bounce never "
                "bounces); it is kept in failed/ once no recipient is pending",
                "warning",
            )
            return None
        if policy == "log":
            self._line(qid, "sender non-delivery notification not sent: queue.bounce is log")
            return None
        if policy == "admin":
            admin = self.settings.queue.admin_address
            if not admin:
                self._line(
                    qid,
                    "sender non-delivery notification not sent: queue.bounce is admin "
                    "but queue.admin_address is not set",
                    "warning",
                )
                return None
            return admin
        return envelope.sender

    def _notify(
        self,
        claim: Claim,
        state: State,
        given_up: list[RecipientState],
        relay_name: str | None,
        expired: set[str],
        summary: RunSummary,
    ) -> str | None:
        """Queue a DSN about ``given_up`` as the policy says; return its queue id, if any."""
        envelope = claim.envelope
        to = self._bounce_to(envelope)
        if to is None:
            return None
        by_address = {r.address: r for r in envelope.recipients}
        deadline = state.since + self.settings.queue.lifetime
        failures: list[Failure] = []
        for rs in given_up:
            rcpt = by_address.get(rs.address)
            notify = (rcpt.notify or "") if rcpt is not None else ""
            if to == envelope.sender and notify and "FAILURE" not in notify.split(","):
                # RFC 3461: the sender asked not to hear about failures for this one.
                continue
            failures.append(
                Failure(
                    rs.address,
                    rs.reply,
                    original=rcpt.original if rcpt is not None else None,
                    remote_mta=relay_name,
                    attempts=rs.attempts,
                    last_attempt=rs.last_attempt,
                    expired=rs.address in expired or _looks_expired(rs, deadline),
                )
            )
        if not failures:
            self._line(envelope.queue_id, "no non-delivery notification: the sender asked for none")
            return None
        settings = self.settings
        bounce_id = make_queue_id()
        with self.queue.begin(bounce_id) as pending:
            write_bounce(
                pending.file,
                envelope,
                failures,
                claim.message(),
                queue_id=bounce_id,
                to=to,
                hostname=settings.general.hostname,
                domain=settings.general.domain,
                now=self.clock(),
            )
            pending.commit()
        summary.bounces += 1
        self._line(envelope.queue_id, f"sender non-delivery notification: {bounce_id}")
        return bounce_id

    # -- watching ------------------------------------------------------------

    def watch(self, stop_event: threading.Event) -> None:
        """Run the queue until ``stop_event`` is set: at once after each commit, and when due.

        Waits on the queue's trigger FIFO, which every commit pokes, with a
        timeout until the next retry falls due (at most ``WATCH_MAX_WAIT``).
        """
        trigger: Trigger | None
        try:
            trigger = self.queue.watch()
        except (OSError, errors.PysendmailError) as exc:
            # No FIFO (a queue made by an older version, or not ours): poll.
            self._line("runner", f"no trigger to watch ({exc}); polling the queue", "warning")
            trigger = None
        try:
            while not stop_event.is_set():
                try:
                    self.run_once()
                except StateWriteError as exc:
                    self._line("runner", str(exc), "error")
                except (OSError, errors.PysendmailError) as exc:
                    self._line("runner", f"cannot run the queue: {exc}", "error")
                wait = WATCH_MAX_WAIT if trigger is not None else WATCH_POLL
                with contextlib.suppress(OSError, errors.PysendmailError):
                    due = self.next_due()
                    if due is not None:
                        wait = min(wait, max(0.0, due - self.clock()))
                _wait(trigger, wait, stop_event)
        finally:
            if trigger is not None:
                trigger.close()


def _wait(trigger: Trigger | None, seconds: float, stop_event: threading.Event) -> None:
    """Sleep up to ``seconds``, less when poked or stopped (looked at every WATCH_SLICE)."""
    deadline = time.monotonic() + seconds
    while not stop_event.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        slice_ = min(left, WATCH_SLICE)
        if trigger is None:
            stop_event.wait(slice_)
        elif trigger.wait(slice_):
            return


# --------------------------------------------------------------------------- CLI


def run_queue_main(
    settings: Settings,
    io: Streams,
    *,
    watch: bool = False,
    verbose: int = 0,
    ids: list[str] | None = None,
) -> int:
    """``sendmail -q``, ``pysendmail queue run [--watch]`` and ``queue flush [ID...]``.

    Exit 0 when the run completed (also when mail was deferred), 75 when the
    queue could not be read, locked or written, 78 when no relay is configured.
    """
    try:
        settings.need_relays()
    except errors.ConfigError as exc:
        _say(io, f"pysendmail: {exc}")
        return errors.EX_CONFIG
    logger = Logger(
        settings.log.target,
        settings.log.format,
        settings.log.facility,
        verbose=verbose > 0,
        stream=io.stderr,
    )
    queue = Queue(settings.general.queue_dir)
    try:
        known = set(queue.ids())
    except (OSError, errors.PysendmailError) as exc:
        text = _os_text(exc) if isinstance(exc, OSError) else str(exc)
        _say(io, f"pysendmail: cannot read the queue {settings.general.queue_dir}: {text}")
        return errors.EX_TEMPFAIL
    runner = Runner(
        settings,
        logger=logger,
        queue=queue,
        debug_output=io.stderr if verbose > 1 else None,
        # One run of a command of its own: its connections may be processes.
        processes=not watch,
    )
    if watch:
        return _watch_main(runner, io)
    if ids is not None:
        # Held, failed and unknown ids are the admin command's to report; a run
        # delivers only what is in queue/.
        ids = [i for i in ids if i in known]
    try:
        runner.run_once(ids)
    except StateWriteError as exc:
        _say(io, f"pysendmail: {exc}")
        return errors.EX_TEMPFAIL
    except (OSError, errors.PysendmailError) as exc:
        text = _os_text(exc) if isinstance(exc, OSError) else str(exc)
        _say(io, f"pysendmail: cannot read the queue {settings.general.queue_dir}: {text}")
        return errors.EX_TEMPFAIL
    return 0


def _watch_main(runner: Runner, io: Streams) -> int:
    import signal

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, on_signal)
    try:
        runner.watch(stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def _os_text(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _say(io: Streams, line: str) -> None:
    try:
        io.stderr.write(printable(line, 4000) + "\n")
        io.stderr.flush()
    except (OSError, ValueError):
        pass
