"""The mail log: one Postfix-style line per event, hostile values made inert."""

from __future__ import annotations

import io
import json
import sys
import types
from pathlib import Path

import pytest

from pysendmail.log import Logger, delivery_fields, printable


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_control_characters_from_a_server_cannot_forge_log_lines() -> None:
    assert printable("250 ok\r\nFAKE: to=<x>, status=sent") == "250 ok??FAKE: to=<x>, status=sent"
    assert printable("\x1b[31mred") == "?[31mred"
    assert printable("x" * 5000, 10) == "x" * 10 + "..."


def test_a_delivery_line_in_postfix_form() -> None:
    out = io.StringIO()
    log = Logger("stderr", stream=out)
    fields = delivery_fields(
        "admin@example.com", "root", "smtp.example.com[192.0.2.1]:587", 0.214, 1, "sent", "250 ok"
    )
    log.event("4BQ9X2", "info", **fields)
    line = out.getvalue()
    assert line.startswith("pysendmail[")
    assert line.split("]: ", 1)[1] == (
        "4BQ9X2: to=<admin@example.com>, orig_to=<root>, "
        "relay=smtp.example.com[192.0.2.1]:587, delay=0.21, tries=1, status=sent (250 ok)\n"
    )


def test_the_same_recipient_has_no_orig_to_and_a_bare_status_has_no_reply() -> None:
    fields = delivery_fields("a@b.example", "a@b.example", "none", 0, 2, "deferred", "")
    assert "orig_to" not in fields
    assert fields["status"] == "deferred"
    assert fields["tries"] == 2


def test_json_lines_for_containers_events_and_plain_lines() -> None:
    out = io.StringIO()
    log = Logger("stdout", "json", stream=out)
    log.stream = out  # stdout target: capture it
    log.event("Q1", "warning", to="<a@b>", status="deferred (451 4.3.0\r\nlater)", tries=3)
    log.line("listening on 127.0.0.1:2525")
    first, second = (json.loads(x) for x in out.getvalue().splitlines())
    assert first["queue_id"] == "Q1" and first["level"] == "warning"
    assert first["status"] == "deferred (451 4.3.0??later)"
    assert first["tries"] == 3
    assert second["message"] == "listening on 127.0.0.1:2525"
    assert second["program"] == "pysendmail" and isinstance(second["pid"], int)


def test_auto_means_stderr_on_a_terminal_or_with_verbose_else_syslog() -> None:
    assert Logger("auto", stream=Tty()).target == "stderr"
    assert Logger("auto", stream=io.StringIO(), verbose=True).target == "stderr"
    assert Logger("auto", stream=io.StringIO()).target == "syslog"


def test_syslog_gets_facility_mail_and_the_level(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, tuple[object, ...]]] = []
    fake = types.ModuleType("syslog")
    fake.LOG_PID = 1  # type: ignore[attr-defined]
    fake.openlog = lambda *a: calls.append(("openlog", a))  # type: ignore[attr-defined]
    fake.syslog = lambda *a: calls.append(("syslog", a))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "syslog", fake)
    log = Logger("syslog", facility="mail")
    log.event("Q2", "warning", to="<a@b>", status="bounced (550 no)")
    log.event("Q2", "info", removed=True)
    assert calls[0] == ("openlog", ("pysendmail", 1, 2 << 3))
    assert calls[1] == ("syslog", (4, "Q2: to=<a@b>, status=bounced (550 no)"))
    assert calls[2] == ("syslog", (6, "Q2: removed=True"))
    assert [c[0] for c in calls].count("openlog") == 1


def test_a_closed_stderr_never_stops_delivery() -> None:
    out = io.StringIO()
    out.close()
    Logger("stderr", stream=out).event("Q3", "info", status="sent")
    json_log = Logger("stdout", "json")
    json_log.stream = out
    json_log.line("x")
    json_log.event("Q3", "info", status="sent")


def test_json_records_carry_the_pid_of_the_process_that_writes_them(tmp_path: Path) -> None:
    import json
    import os

    from pysendmail.log import Logger

    out = tmp_path / "out"
    with out.open("w") as stream:
        log = Logger("stderr", "json", stream=stream)
        log.line("parent")
        stream.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child's coverage is not collected
            log.line("child")
            stream.flush()
            os._exit(0)
        os.waitpid(pid, 0)
        log.line("parent again")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["message"], r["pid"]) for r in records] == [
        ("parent", os.getpid()),
        ("child", pid),
        ("parent again", os.getpid()),
    ]
    assert all(r["time"][:2] == "20" and r["time"][-5] in "+-" for r in records)
