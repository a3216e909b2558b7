"""The sidecar's numbers, in the Prometheus text format (version 0.0.4), and its logger.

Counters come from events: the listener counts what it accepts and refuses,
and the runner's delivery log lines (one per recipient per attempt, Postfix
style) are counted as they are written, by ``ServerLogger``, which wraps the
logger the runner is given: ``status=sent`` is a delivery (and its ``delay``
goes into the latency histogram), ``bounced`` and ``deferred`` count, with a
relay error by class (``4xx``, ``5xx`` from the reply's code, ``network``
when there was no reply: a refused connection, a timeout, TLS). Gauges are
read from the queue on each scrape (``queue_gauges``), so they are the
queue's own numbers, not a count that could drift.

The format is written here rather than with prometheus-client: a dozen
metrics do not need a dependency, a global registry or its threads, and the
format is small (``# HELP``, ``# TYPE``, one sample per line, label values
escaped, histograms as cumulative ``_bucket{le=...}`` with ``_sum`` and
``_count``).

What this module must never do: block the event loop on the disk (the
gauges are read in a worker thread by the HTTP server), or put a value from
a client or a relay into a metric name or label (labels are our own words).

SECURITY: the metrics name no address, no queue id and no reply text.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from typing import TYPE_CHECKING, TextIO

from pysendmail.log import Logger

if TYPE_CHECKING:
    from pysendmail.queue.spool import Queue

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Seconds from arrival to delivery: a loopback relay takes milliseconds, a
#: retry schedule hours.
LATENCY_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    14400.0,
    86400.0,
)
ERROR_CLASSES = ("4xx", "5xx", "network")
REJECT_REASONS = (
    "network",
    "connections",
    "rate",
    "sender",
    "relay",
    "recipients",
    "size",
    "auth",
)


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def error_class(reply: str) -> str:
    """``4xx``/``5xx`` from a reply's code; ``network`` when there is no code."""
    head = reply[:3]
    if len(head) == 3 and head.isdigit() and head[0] in "45":
        return head[0] + "xx"
    return "network"


class Histogram:
    """Cumulative buckets, a sum and a count (not thread-safe alone: ``Metrics`` locks)."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1


class Metrics:
    """Every counter of one server process. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.accepted = 0  # messages committed by the listener
        self.accepted_bytes = 0
        self.rejections = dict.fromkeys(REJECT_REASONS, 0)
        self.delivered = 0  # recipients accepted by a relay
        self.bounced = 0  # recipients given up
        self.deferred = 0  # attempts deferred
        self.relay_errors = dict.fromkeys(ERROR_CLASSES, 0)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.connections = 0  # open SMTP sessions (set by the listener)

    def message_accepted(self, size: int) -> None:
        with self._lock:
            self.accepted += 1
            self.accepted_bytes += size

    def rejected(self, reason: str) -> None:
        with self._lock:
            if reason in self.rejections:
                self.rejections[reason] += 1

    def delivery(self, status: str, reply: str, delay: float | None) -> None:
        """One recipient's attempt, as the runner logged it."""
        with self._lock:
            if status == "sent":
                self.delivered += 1
                if delay is not None:
                    self.latency.observe(delay)
                return
            if status == "bounced":
                self.bounced += 1
            elif status == "deferred":
                self.deferred += 1
            else:
                return
            self.relay_errors[error_class(reply)] += 1

    def render(self, gauges: QueueGauges | None, healthy: bool) -> str:
        """The exposition text: counters, the histogram, and the queue's gauges."""
        out: list[str] = []

        def metric(name: str, kind: str, text: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                out.append(f"{name}{labels} {_number(value)}")

        with self._lock:
            metric(
                "pysendmail_messages_accepted_total",
                "counter",
                "Messages the SMTP listener committed to the queue.",
                [("", self.accepted)],
            )
            metric(
                "pysendmail_accepted_bytes_total",
                "counter",
                "Octets of the messages the SMTP listener committed.",
                [("", self.accepted_bytes)],
            )
            metric(
                "pysendmail_smtp_rejections_total",
                "counter",
                "Connections, commands and messages the SMTP listener refused, by reason.",
                [(f'{{reason="{_escape(r)}"}}', n) for r, n in self.rejections.items()],
            )
            metric(
                "pysendmail_delivered_total",
                "counter",
                "Recipients a relay accepted.",
                [("", self.delivered)],
            )
            metric(
                "pysendmail_bounced_total",
                "counter",
                "Recipients given up (refused with 5xx, or expired).",
                [("", self.bounced)],
            )
            metric(
                "pysendmail_deferred_total",
                "counter",
                "Delivery attempts deferred for a recipient.",
                [("", self.deferred)],
            )
            metric(
                "pysendmail_relay_errors_total",
                "counter",
                "Recipients a delivery attempt failed for, by class (4xx, 5xx, network).",
                [(f'{{class="{c}"}}', n) for c, n in self.relay_errors.items()],
            )
            hist = self.latency
            name = "pysendmail_delivery_latency_seconds"
            out.append(f"# HELP {name} Seconds from arrival to delivery, per recipient.")
            out.append(f"# TYPE {name} histogram")
            for bound, count in zip(hist.bounds, hist.counts, strict=True):
                out.append(f'{name}_bucket{{le="{_number(bound)}"}} {count}')
            out.append(f'{name}_bucket{{le="+Inf"}} {hist.count}')
            out.append(f"{name}_sum {_number(hist.total)}")
            out.append(f"{name}_count {hist.count}")
            metric(
                "pysendmail_smtp_connections",
                "gauge",
                "Open SMTP sessions.",
                [("", self.connections)],
            )
        if gauges is not None:
            for name, text, value in (
                ("queued", "Messages in the queue (deferred ones included).", gauges.queued),
                ("deferred", "Queued messages with a deferred recipient.", gauges.deferred),
                ("held", "Messages on hold.", gauges.held),
                ("failed", "Messages given up and kept in failed/.", gauges.failed),
            ):
                metric(f"pysendmail_queue_{name}_messages", "gauge", text, [("", value)])
            metric(
                "pysendmail_queue_oldest_message_age_seconds",
                "gauge",
                "Age of the oldest message in the queue (0 when it is empty).",
                [("", round(gauges.oldest_age, 3))],
            )
        metric(
            "pysendmail_up",
            "gauge",
            "1 when /healthz would answer 200.",
            [("", 1 if healthy else 0)],
        )
        metric(
            "pysendmail_start_time_seconds",
            "gauge",
            "When this process started (Unix time).",
            [("", round(self.started, 3))],
        )
        return "\n".join(out) + "\n"


class QueueGauges:
    """What is in the queue right now (read from the spool)."""

    __slots__ = ("deferred", "failed", "held", "oldest_age", "queued")

    def __init__(self, queued: int, deferred: int, held: int, failed: int, oldest_age: float):
        self.queued = queued
        self.deferred = deferred
        self.held = held
        self.failed = failed
        self.oldest_age = oldest_age


def queue_gauges(queue: Queue, now: float | None = None) -> QueueGauges:
    """Count the queue: messages in queue/ (and how many have a deferred recipient), hold/, failed/.

    The oldest message's age is measured from its queue file's modification
    time: the commit wrote it last, and moves (hold, release) keep it.
    """
    from pysendmail.errors import DataError
    from pysendmail.queue.state import DEFERRED

    now = time.time() if now is None else now
    ids = queue.ids("queue")
    deferred = 0
    oldest: float | None = None
    for queue_id in ids:
        try:
            st = os.lstat(queue.path("queue", queue_id))
        except FileNotFoundError:
            continue  # delivered meanwhile
        if stat.S_ISREG(st.st_mode) and (oldest is None or st.st_mtime < oldest):
            oldest = st.st_mtime
        try:
            state = queue.read_state(queue_id)
        except (OSError, DataError):
            continue
        if state is not None and any(r.status == DEFERRED for r in state.recipients):
            deferred += 1
    return QueueGauges(
        queued=len(ids),
        deferred=deferred,
        held=len(queue.ids("hold")),
        failed=len(queue.ids("failed")),
        oldest_age=max(0.0, now - oldest) if oldest is not None else 0.0,
    )


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class ServerLogger(Logger):
    """The logger of ``serve``: thread-safe, JSON for every line, counting deliveries.

    Lines below ``level`` are dropped; the others are written as ``Logger``
    writes them (in JSON mode one object per line, ``message`` holding the
    text), one thread at a time.
    """

    __slots__ = ("_lock", "metrics", "threshold")

    def __init__(
        self,
        target: str,
        fmt: str,
        facility: str,
        *,
        metrics: Metrics | None = None,
        level: str = "info",
        stream: TextIO | None = None,
    ) -> None:
        super().__init__(target, fmt, facility, stream=stream)
        self._lock = threading.RLock()
        self.metrics = metrics
        self.threshold = _LEVELS.get(level, 20)

    def event(self, queue_id: str, level: str = "info", /, **fields: object) -> None:
        metrics = self.metrics
        to = fields.get("to")
        status = fields.get("status")
        if metrics is not None and to is not None and isinstance(status, str):
            word, _, rest = status.partition(" ")
            reply = rest[1:-1] if rest.startswith("(") and rest.endswith(")") else rest
            delay = fields.get("delay")
            try:
                seconds = float(delay) if isinstance(delay, str | int | float) else None
            except ValueError:
                seconds = None
            metrics.delivery(word, reply, seconds)
        if _LEVELS.get(level, 20) < self.threshold:
            return
        with self._lock:
            super().event(queue_id, level, **fields)

    def line(self, text: str, level: str = "info") -> None:
        if _LEVELS.get(level, 20) < self.threshold:
            return
        with self._lock:
            super().line(text, level)
