"""How pytest's reports become DataCat events: outcomes, test events, collection errors, warnings.

Two halves meet here. :func:`describe` runs where the test runs (the only process, or an
xdist worker) and tells what only the item knows (markers, ``record_datacat`` data, the
exception's type); an xdist worker attaches it to the report as the JSON-safe attribute
``datacat_extra``, which xdist relays to the controller with the report. The other functions
run where results are recorded and turn a report into the keyword arguments of
``Session.log_event``. Pure functions (and one cache of marker names); no I/O.
"""

from __future__ import annotations

import json
import re
import warnings
from typing import Any

import pytest

from pytest_datacat.plugin import RECORDED

EXTRA = "datacat_extra"
_XDIST_HEADER = re.compile(r"\[gw\d+\] ")
MAX_TRACEBACK_LINES = 400

#: The counters of the session's ``progress`` state, one per outcome.
COUNTERS = {
    "passed": "passed",
    "failed": "failed",
    "error": "errors",
    "skipped": "skipped",
    "xfailed": "xfailed",
    "xpassed": "xpassed",
    "rerun": "reruns",  # pytest-rerunfailures: a failed attempt that runs again
}
#: The counters of subtests (pytest's ``subtests`` fixture, or the pytest-subtests plugin), in
#: the progress from a run's first subtest on: each subtest's result, apart from its test's.
SUBTEST_COUNTERS = {
    "passed": "subtests_passed",
    "failed": "subtests_failed",
    "skipped": "subtests_skipped",
    "xfailed": "subtests_xfailed",
    "xpassed": "subtests_xpassed",
}
_LEVELS = {"failed": "error", "error": "error", "xpassed": "warning", "rerun": "warning"}
#: Outcomes whose event carries the exception (type, message, traceback, source location).
FAILURES = frozenset(("failed", "error", "rerun"))
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
    if state == "rerun":  # pytest-rerunfailures: this attempt failed, the test runs again
        return "rerun"
    # an error in setup or teardown; a failed call, or a test whose xdist worker crashed ("???")
    return "error" if report.when in ("setup", "teardown") else "failed"


class MarkerNames:
    """The names of the markers that apply to an item, closest first, each once, as one shared
    tuple per distinct list of names.

    The tests of a module share one walk up the node chain (the collectors' names are looked up
    once per collector), and equal lists of names share one tuple: an event waiting in the
    session's queue holds no list of its own (CPython's garbage collector tracks every list, and
    promotes what outlives a collection) and no tuple made for it alone.
    """

    def __init__(self) -> None:
        # id of a collector -> (the collector, the names of its and its parents' markers)
        self._inherited: dict[int, tuple[Any, tuple[str, ...]]] = {}
        self._shared: dict[tuple[str, ...], tuple[str, ...]] = {}

    def __call__(self, item: pytest.Item) -> tuple[str, ...]:
        parent = item.parent
        cached = self._inherited.get(id(parent))
        if cached is None or cached[0] is not parent:
            names = tuple(m.name for m in parent.iter_markers()) if parent is not None else ()
            cached = self._inherited[id(parent)] = (parent, self._share(names))
        own = item.own_markers
        if not own:
            return cached[1]
        return self._share((*(m.name for m in own), *cached[1]))

    def _share(self, names: tuple[str, ...]) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(names))
        return self._shared.setdefault(names, names)


def describe(item: pytest.Item, raised: str | None, markers: MarkerNames) -> Fields:
    """What only the item knows about its deciding report: the names of its markers, the labels
    and data of its ``datacat`` markers and ``record_datacat``, and ``raised`` (the type name of
    the exception a failed report's phase raised) as ``exception_type``."""
    names = markers(item)
    extra: Fields = {"markers": names}
    stash = item.stash
    # ``in``, not ``stash.get``: a missing key raises (and catches) inside
    if "datacat" in names or RECORDED in stash:
        _add_recorded(item, stash, extra)
    if raised is not None:
        extra["exception_type"] = raised
    return extra


def _add_recorded(item: pytest.Item, stash: pytest.Stash, extra: Fields) -> None:
    """The labels and data of the item's ``datacat`` markers and ``record_datacat``."""
    labels: list[str] = []
    data: dict[str, Any] = {}
    for mark in item.iter_markers("datacat"):
        labels.extend(str(arg) for arg in mark.args)
        data = {**mark.kwargs, **data}  # the closest marker wins
    recorded: dict[str, Any] = stash.get(RECORDED, {})
    data.update(recorded)
    if labels:
        extra["labels"] = labels
    if data:
        extra["recorded"] = json_safe(data)


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON types, so xdist can relay it and the server can store it."""
    return json.loads(json.dumps(value, default=repr))


def result_event(
    report: pytest.TestReport, result: str, extra: Fields | None = None
) -> tuple[str, Fields]:
    """Name and ``log_event`` keyword arguments of the event for a deciding report; ``extra``
    is :func:`describe`'s, else what an xdist worker attached to the report (``EXTRA``)."""
    attributes = report.__dict__  # ``datacat_extra`` and xdist's ``worker_id`` live here
    if extra is None:
        extra = attributes.get(EXTRA) or _NO_EXTRA
    nodeid = report.nodeid  # a property (pytest 9): read once
    data: Fields = {
        "nodeid": nodeid,
        "outcome": result,
        "phase": report.when,
        "duration": report.duration,
        "worker": attributes.get("worker_id") or "main",
        # tuples as they are (the client sends them as JSON lists): a list each would be two
        # more objects per event for the garbage collector while the event waits in the queue
        "markers": extra.get("markers", ()),
        "location": report.location,
    }
    if "recorded" in extra:
        data["recorded"] = extra["recorded"]
    fields: Fields = {
        "level": _LEVELS.get(result, "info"),
        "category": "pytest",
        "labels": extra.get("labels"),
        "message": nodeid,
        "data": data,
    }
    if result in FAILURES:
        fields.update(failure_fields(report, extra.get("exception_type")))
    elif result in ("skipped", "xfailed"):
        data["reason"] = _reason(report)
    return _NAMES[result], fields


def subtest_context(report: pytest.TestReport) -> Fields | None:
    """``msg`` and ``kwargs`` of a subtest's report (its ``context``: pytest's ``subtests``
    fixture and the pytest-subtests plugin both make one); ``None`` for any other report."""
    context = report.__dict__.get("context")
    if context is None or report.when != "call" or not hasattr(context, "kwargs"):
        return None
    return {"msg": getattr(context, "msg", None), "kwargs": dict(context.kwargs or {})}


def subtest_event(
    report: pytest.TestReport, result: str, extra: Fields | None, subtest: Fields
) -> tuple[str, Fields]:
    """Name and ``log_event`` keyword arguments of a subtest's result: the fields of
    :func:`result_event`, named ``subtest_<outcome>``, with ``data.subtest`` (its ``msg`` and
    ``kwargs``) and the subtest's description after the node id in the message."""
    _, fields = result_event(report, result, extra)
    fields["data"]["subtest"] = subtest
    described = [f"[{subtest['msg']}]"] if subtest["msg"] is not None else []
    if subtest["kwargs"]:
        pairs = ", ".join(f"{key}={value}" for key, value in subtest["kwargs"].items())
        described.append(f"({pairs})")
    fields["message"] = " ".join([fields["message"], *described])
    return f"subtest_{result}", fields


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
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
    head, _, rest = message.partition(": ")
    qualified = all(part.isidentifier() for part in head.split("."))  # ``_pytest.outcomes.Exit``
    if kind is None and qualified and rest:
        kind = head.rpartition(".")[2]
    if kind and rest and (head == kind or head.endswith(f".{kind}")):
        message = rest
    fields.update(exception_type=kind or "Failed", exception_msg=message)
    if crash is not None:
        fields.update(source_file=str(crash.path), source_line=int(crash.lineno))
    return fields


def _last_error_line(lines: list[str]) -> str:
    """pytest marks the exception lines of a text traceback with ``E``; the last one names it.
    Else the last line, but never the ``[gw0] linux -- Python ...`` line xdist adds."""
    errors = [line[1:].strip() for line in lines if line.startswith("E ")]
    if errors:
        return errors[-1]
    return next((line for line in reversed(lines) if not _XDIST_HEADER.match(line)), "")


def collection_event(report: pytest.CollectReport) -> tuple[str, Fields]:
    """Name and ``log_event`` keyword arguments of the event for a failed collection, or for a
    skipped one (a module that called ``pytest.skip(..., allow_module_level=True)``)."""
    outcome = "skipped" if report.skipped else "error"
    fields: Fields = {
        "level": "info" if report.skipped else "error",
        "category": "pytest",
        "message": report.nodeid,
        "data": {"nodeid": report.nodeid, "outcome": outcome, "phase": "collect"},
    }
    if report.skipped:
        fields["data"]["reason"] = _reason(report)
        return "test_skipped", fields
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
