"""How pytest's reports become DataCat events: outcomes, test events, collection errors, warnings.

Two halves meet here. :func:`report_extra` runs where the test runs (the only process, or an
xdist worker) and attaches what only the item knows (markers, ``record_datacat`` data, the
exception's type) to the report as the JSON-safe attribute ``datacat_extra``, which xdist
relays to the controller with the report. The other functions run where results are recorded
and turn a report into the keyword arguments of ``Session.log_event``. Pure functions; no I/O.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest

from pytest_datacat.plugin import RECORDED

EXTRA = "datacat_extra"
MAX_TRACEBACK_LINES = 400

#: The counters of the session's ``progress`` state, one per outcome.
COUNTERS = {
    "passed": "passed",
    "failed": "failed",
    "error": "errors",
    "skipped": "skipped",
    "xfailed": "xfailed",
    "xpassed": "xpassed",
}
_LEVELS = {"failed": "error", "error": "error", "xpassed": "warning"}

Fields = dict[str, Any]


def outcome(report: pytest.TestReport) -> str | None:
    """The outcome a report decides, as pytest's summary counts it; ``None`` for a passing
    setup or teardown (which decides nothing)."""
    expected_failure = hasattr(report, "wasxfail")
    if report.passed:
        if report.when != "call":
            return None
        return "xpassed" if expected_failure else "passed"
    if report.skipped:
        return "xfailed" if expected_failure else "skipped"
    return "failed" if report.when == "call" else "error"


def report_extra(item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
    """Attach the item's markers, recorded data and exception type to a deciding report."""
    if not report.passed or report.when == "call":
        setattr(report, EXTRA, _describe(item, call, report))


def _describe(item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> Fields:
    marks = list(item.iter_markers())  # one walk up the node chain: it is per test
    labels: list[str] = []
    data: dict[str, Any] = {}
    for mark in marks:
        if mark.name == "datacat":
            labels.extend(str(arg) for arg in mark.args)
            data = {**mark.kwargs, **data}  # the closest marker wins
    recorded: dict[str, Any] = item.stash.get(RECORDED, {})
    data.update(recorded)
    extra: Fields = {"markers": list(dict.fromkeys(m.name for m in marks))}
    if labels:
        extra["labels"] = labels
    if data:
        extra["recorded"] = json_safe(data)
    if call.excinfo is not None and not report.passed:
        extra["exception_type"] = call.excinfo.typename
    return extra


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON types, so xdist can relay it and the server can store it."""
    return json.loads(json.dumps(value, default=repr))


def result_event(report: pytest.TestReport, result: str) -> tuple[str, Fields]:
    """Name and ``log_event`` keyword arguments of the event for a deciding report."""
    extra: Fields = getattr(report, EXTRA, None) or {}
    data: Fields = {
        "nodeid": report.nodeid,
        "outcome": result,
        "phase": report.when,
        "duration": report.duration,
        "worker": getattr(report, "worker_id", None) or "main",  # set by xdist on relay
        "markers": extra.get("markers", []),
        "location": list(report.location),
    }
    if "recorded" in extra:
        data["recorded"] = extra["recorded"]
    fields: Fields = {
        "level": _LEVELS.get(result, "info"),
        "category": "pytest",
        "labels": extra.get("labels", []),
        "message": report.nodeid,
        "data": data,
    }
    if result in ("failed", "error"):
        fields.update(failure_fields(report, extra.get("exception_type")))
    elif result in ("skipped", "xfailed"):
        data["reason"] = _reason(report)
    return f"test_{result}", fields


def _reason(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        return str(report.wasxfail)
    if isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    return str(report.longrepr or "")


def failure_fields(report: pytest.TestReport | pytest.CollectReport, kind: str | None) -> Fields:
    """Exception type, message, traceback text and source location of a failed report."""
    lines = report.longreprtext.splitlines()
    fields: Fields = {"stacktrace": lines[-MAX_TRACEBACK_LINES:]}
    crash = getattr(report.longrepr, "reprcrash", None)
    message = crash.message if crash is not None else _last_error_line(lines)
    guessed, _, rest = message.partition(": ")
    if kind is None and guessed.isidentifier() and rest:
        kind = guessed
    if kind and message.startswith(f"{kind}: "):
        message = message[len(kind) + 2 :]
    fields.update(exception_type=kind or "Failed", exception_msg=message)
    if crash is not None:
        fields.update(source_file=str(crash.path), source_line=int(crash.lineno))
    return fields


def _last_error_line(lines: list[str]) -> str:
    """pytest marks the exception lines of a text traceback with ``E``; the last one names it."""
    errors = [line[1:].strip() for line in lines if line.startswith("E ")]
    return errors[-1] if errors else (lines[-1] if lines else "")


def collection_event(report: pytest.CollectReport) -> tuple[str, Fields]:
    """Name and ``log_event`` keyword arguments of the event for a failed collection."""
    fields: Fields = {
        "level": "error",
        "category": "pytest",
        "message": report.nodeid,
        "data": {"nodeid": report.nodeid, "outcome": "error", "phase": "collect"},
    }
    fields.update(failure_fields(report, None))
    return "collection_error", fields


def warning_event(message: warnings.WarningMessage, when: str, nodeid: str) -> tuple[str, Fields]:
    """Name and ``log_event`` keyword arguments of the event for a captured warning."""
    fields: Fields = {
        "level": "warning",
        "category": "pytest",
        "message": str(message.message),
        "data": {"nodeid": nodeid, "phase": when, "category": message.category.__name__},
        "source_file": str(message.filename),
        "source_line": int(message.lineno),
    }
    return "test_warning", fields
