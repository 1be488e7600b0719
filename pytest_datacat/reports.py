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
_NAMES = {result: f"test_{result}" for result in COUNTERS}
_NO_EXTRA: dict[str, Any] = {}

Fields = dict[str, Any]


def outcome(report: pytest.TestReport) -> str | None:
    """The outcome a report decides, as pytest's summary counts it; ``None`` for a passing
    setup or teardown (which decides nothing)."""
    expected_failure = "wasxfail" in report.__dict__  # not hasattr: no exception per test
    state = report.outcome
    if state == "passed":
        if report.when != "call":
            return None
        return "xpassed" if expected_failure else "passed"
    if state == "skipped":
        return "xfailed" if expected_failure else "skipped"
    return "failed" if report.when == "call" else "error"


#: id of a collector -> (the collector, the names of its and its parents' markers): the tests
#: of a module share one walk up the node chain instead of one each.
Inherited = dict[int, tuple[Any, tuple[str, ...]]]


def report_extra(
    item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport, inherited: Inherited
) -> None:
    """Attach the item's markers, recorded data and exception type to a deciding report."""
    if not report.passed or report.when == "call":
        setattr(report, EXTRA, _describe(item, call, report, inherited))


def _describe(
    item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport, inherited: Inherited
) -> Fields:
    names = marker_names(item, inherited)
    extra: Fields = {"markers": names}
    labels: list[str] = []
    data: dict[str, Any] = {}
    if "datacat" in names:
        for mark in item.iter_markers("datacat"):
            labels.extend(str(arg) for arg in mark.args)
            data = {**mark.kwargs, **data}  # the closest marker wins
    recorded: dict[str, Any] = item.stash.get(RECORDED, {})
    data.update(recorded)
    if labels:
        extra["labels"] = labels
    if data:
        extra["recorded"] = json_safe(data)
    if call.excinfo is not None and not report.passed:
        extra["exception_type"] = call.excinfo.typename
    return extra


def marker_names(item: pytest.Item, inherited: Inherited) -> list[str]:
    """The names of the markers that apply to ``item``, closest first, each once."""
    parent = item.parent
    cached = inherited.get(id(parent))
    if cached is None or cached[0] is not parent:
        names = tuple(m.name for m in parent.iter_markers()) if parent is not None else ()
        cached = inherited[id(parent)] = (parent, names)
    return list(dict.fromkeys([*(m.name for m in item.own_markers), *cached[1]]))


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON types, so xdist can relay it and the server can store it."""
    return json.loads(json.dumps(value, default=repr))


def result_event(report: pytest.TestReport, result: str) -> tuple[str, Fields]:
    """Name and ``log_event`` keyword arguments of the event for a deciding report."""
    attributes = report.__dict__  # ``datacat_extra`` and xdist's ``worker_id`` live here
    extra: Fields = attributes.get(EXTRA) or _NO_EXTRA
    data: Fields = {
        "nodeid": report.nodeid,
        "outcome": result,
        "phase": report.when,
        "duration": report.duration,
        "worker": attributes.get("worker_id") or "main",
        "markers": extra.get("markers", []),
        "location": list(report.location),
    }
    if "recorded" in extra:
        data["recorded"] = extra["recorded"]
    fields: Fields = {
        "level": _LEVELS.get(result, "info"),
        "category": "pytest",
        "labels": extra.get("labels"),
        "message": report.nodeid,
        "data": data,
    }
    if result in ("failed", "error"):
        fields.update(failure_fields(report, extra.get("exception_type")))
    elif result in ("skipped", "xfailed"):
        data["reason"] = _reason(report)
    return _NAMES[result], fields


def _reason(report: pytest.TestReport) -> str:
    if "wasxfail" in report.__dict__:
        return str(report.__dict__["wasxfail"])
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
