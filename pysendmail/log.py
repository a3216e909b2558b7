"""One line per event, in Postfix's words, to syslog (facility mail), a stream, or JSON.

    pysendmail[1234]: 4Bq9x2KfT0aZ: to=<admin@example.com>, orig_to=<root>,
        relay=smtp.example.com[192.0.2.1]:587, delay=0.21, tries=1,
        status=sent (250 2.0.0 Ok: queued as 4F3A)

Everything logged may come from a hostile peer (a server's reply, an address
from a header), so every value is made printable: control characters become
"?" and a value never spans lines. Credentials are never passed here.

Hot path: imports only os, sys, syslog and time at run time; json is imported
only when JSON lines are asked for (containers).
"""

import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

_FACILITIES = {
    "mail": 2 << 3,
    "daemon": 3 << 3,
    "user": 1 << 3,
    **{f"local{i}": (16 + i) << 3 for i in range(8)},
}
_LEVELS = {"error": 3, "warning": 4, "info": 6, "debug": 7}

#: This process's id and the current second's time stamp, for JSON records:
#: glibc no longer caches getpid(), and strftime is the dearest part of a
#: record; serve writes one or two records per message.
_PID = [os.getpid()]
_STAMP: "list[object]" = [-1, ""]


def _forked() -> None:
    _PID[0] = os.getpid()


os.register_at_fork(after_in_child=_forked)


def current_pid() -> int:
    """``os.getpid()``, kept up to date across fork."""
    return _PID[0]


def timestamp() -> str:
    """The time of a JSON record, ISO 8601 with the zone offset (made once per second)."""
    now = int(time.time())
    stamp = _STAMP
    if stamp[0] != now:
        stamp[:] = [now, time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now))]
    return str(stamp[1])


def printable(value: object, limit: int = 2000) -> str:
    """``value`` as one line with no control characters, cut at ``limit`` characters."""
    text = str(value)
    if text.isprintable() and len(text) <= limit:
        return text
    out = "".join(ch if ch.isprintable() else "?" for ch in text[:limit])
    return out + ("..." if len(text) > limit else "")


class Logger:
    """Writes events; ``target`` is "syslog", "stderr", "stdout" or "auto".

    "auto" means stderr when stderr is a terminal or ``verbose`` was asked for
    (``sendmail -v``), else syslog: the program that ran sendmail (cron, PHP)
    usually discards stderr, while the sysadmin reads the mail log.
    """

    __slots__ = ("_syslog_open", "facility", "format", "ident", "stream", "target")

    def __init__(
        self,
        target: str = "auto",
        fmt: str = "text",
        facility: str = "mail",
        *,
        verbose: bool = False,
        stream: "TextIO | None" = None,
        ident: str = "pysendmail",
    ) -> None:
        err = stream if stream is not None else sys.stderr
        if target == "auto":
            try:
                tty = err.isatty()
            except (AttributeError, ValueError):
                tty = False
            target = "stderr" if tty or verbose else "syslog"
        self.target = target
        self.format = fmt
        self.facility = _FACILITIES.get(facility, _FACILITIES["mail"])
        self.ident = ident
        self.stream = sys.stdout if target == "stdout" else err
        self._syslog_open = False

    def event(self, queue_id: str, level: str = "info", /, **fields: object) -> None:
        """Log ``QUEUEID: key=value, ...``; the value of ``status`` may carry a reply."""
        if self.format == "json":
            self._json(queue_id, level, fields)
            return
        parts = [f"{key}={printable(val)}" for key, val in fields.items() if val is not None]
        line = f"{printable(queue_id)}: " + ", ".join(parts)
        self.line(line, level)

    def line(self, text: str, level: str = "info") -> None:
        text = printable(text, 8000)
        if self.format == "json" and self.target != "syslog":
            self._write_json({"message": text}, level)
            return
        if self.target == "syslog":
            import syslog

            if not self._syslog_open:
                syslog.openlog(self.ident, syslog.LOG_PID, self.facility)
                self._syslog_open = True
            syslog.syslog(_LEVELS.get(level, 6), text)
            return
        try:
            self.stream.write(f"{self.ident}[{os.getpid()}]: {text}\n")
            self.stream.flush()
        except (OSError, ValueError):
            # sudo runs the MTA with stderr on /dev/null or closed: logging must
            # never be the reason a message is lost.
            pass

    def _json(self, queue_id: str, level: str, fields: dict[str, object]) -> None:
        record: dict[str, object] = {"queue_id": queue_id}
        for key, val in fields.items():
            if val is not None:
                record[key] = val if isinstance(val, int | float | bool) else printable(val)
        self._write_json(record, level)

    def _write_json(self, fields: dict[str, object], level: str) -> None:
        import json

        record: dict[str, object] = {
            "time": timestamp(),
            "level": level,
            "program": self.ident,
            "pid": current_pid(),
            **fields,
        }
        try:
            self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass


def delivery_fields(
    recipient: str,
    original: str | None,
    relay: str,
    delay: float,
    tries: int,
    status: str,
    reply: str,
) -> dict[str, object]:
    """The Postfix-style fields of one delivery attempt for one recipient."""
    fields: dict[str, object] = {"to": f"<{recipient}>"}
    if original and original != recipient:
        fields["orig_to"] = f"<{original}>"
    fields["relay"] = relay
    fields["delay"] = f"{delay:.2f}"
    fields["tries"] = tries
    fields["status"] = f"{status} ({reply})" if reply else status
    return fields
