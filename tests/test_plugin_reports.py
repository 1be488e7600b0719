"""From pytest reports to DataCat events: outcomes and the fields of failures (pure functions)."""

from __future__ import annotations

import gc
import json
import warnings
from typing import Any

import pytest

from pytest_datacat import reports


def _report(outcome: str, when: str, longrepr: Any = None, **extra: Any) -> pytest.TestReport:
    return pytest.TestReport(
        "t.py::test_x", ("t.py", 3, "test_x"), {}, outcome, longrepr, when, duration=0.5, **extra
    )


@pytest.mark.parametrize(
    ("outcome", "when", "extra", "expected"),
    [
        ("passed", "setup", {}, None),
        ("passed", "call", {}, "passed"),
        ("passed", "teardown", {}, None),
        ("passed", "call", {"wasxfail": ""}, "xpassed"),
        ("skipped", "setup", {}, "skipped"),
        ("skipped", "call", {"wasxfail": "bug"}, "xfailed"),
        ("failed", "call", {}, "failed"),
        ("failed", "setup", {}, "error"),
        ("failed", "teardown", {}, "error"),
        ("failed", "???", {}, "failed"),  # the test of a crashed xdist worker: pytest says failed
        ("rerun", "call", {}, "rerun"),  # pytest-rerunfailures: the attempt runs again
        ("rerun", "setup", {}, "rerun"),
    ],
)
def test_outcome_counts_like_pytest(
    outcome: str, when: str, extra: dict[str, Any], expected: str | None
) -> None:
    assert reports.outcome(_report(outcome, when, **extra)) == expected


def test_a_text_failure_names_its_exception_from_the_E_lines() -> None:
    text = "def test_x():\n>       boom()\nE       KeyError: 'k'\n\nt.py:3: KeyError"
    name, fields = reports.result_event(_report("failed", "call", text), "failed")
    assert name == "test_failed" and fields["level"] == "error"
    assert fields["exception_type"] == "KeyError" and fields["exception_msg"] == "'k'"
    assert fields["stacktrace"] == text.splitlines()
    assert fields["data"]["worker"] == "main"
    # the report's own tuple, which the client sends as a JSON list
    assert json.loads(json.dumps(fields["data"])) == {
        "nodeid": "t.py::test_x",
        "outcome": "failed",
        "phase": "call",
        "duration": 0.5,
        "worker": "main",
        "markers": [],
        "location": ["t.py", 3, "test_x"],
    }


def test_a_qualified_exception_name_is_cut_from_the_message() -> None:
    text = "E       _pytest.outcomes.Exit: stop here"
    fields = reports.failure_fields(_report("failed", "call", text), None)
    assert (fields["exception_type"], fields["exception_msg"]) == ("Exit", "stop here")


def test_prose_with_a_colon_is_no_exception_type() -> None:
    text = "E       see config.path: missing entry"
    fields = reports.failure_fields(_report("failed", "call", text), None)
    assert fields["exception_type"] == "Failed"
    assert fields["exception_msg"] == "see config.path: missing entry"


def test_xdists_header_line_is_never_the_message() -> None:
    """A relayed report with no ``E`` lines: the last line is xdist's ``[gw0] ...`` header."""
    text = "contains 1 failed subtest\n[gw0] linux -- Python 3.11.7 /usr/bin/python"
    fields = reports.failure_fields(_report("failed", "call", text), None)
    assert fields["exception_msg"] == "contains 1 failed subtest"


def test_a_skip_carries_its_reason_and_extra_data() -> None:
    extra = {"markers": ["slow"], "labels": ["a"], "recorded": {"k": 1}}
    longrepr = ("t.py", 3, "Skipped: later")
    report = _report("skipped", "setup", longrepr, datacat_extra=extra, worker_id="gw1")
    name, fields = reports.result_event(report, "skipped")
    assert name == "test_skipped" and fields["level"] == "info" and fields["labels"] == ["a"]
    assert fields["data"]["reason"] == "Skipped: later" and fields["data"]["recorded"] == {"k": 1}
    assert fields["data"]["worker"] == "gw1" and fields["data"]["markers"] == ["slow"]


def test_a_warning_event_points_at_its_source() -> None:
    message = warnings.WarningMessage(DeprecationWarning("old"), DeprecationWarning, "m.py", 7)
    name, fields = reports.warning_event(message, "call", "t.py::test_x")
    assert name == "test_warning" and fields["level"] == "warning" and fields["message"] == "old"
    assert (fields["source_file"], fields["source_line"]) == ("m.py", 7)
    assert fields["data"]["category"] == "DeprecationWarning"


def test_an_events_data_holds_no_list() -> None:
    """An event's ``data`` holds only atoms and the tuples it was given (no list, which the
    garbage collector would track), so once those tuples are old the dict is untracked."""
    report = _report("passed", "call")
    shared = ("slow",)
    gc.collect()  # the location and the shared names have been seen by a collection
    _, fields = reports.result_event(report, "passed", {"markers": shared})
    assert not gc.is_tracked(fields["data"])
    assert fields["data"]["markers"] is shared and fields["data"]["location"] is report.location


def test_equal_marker_names_share_one_tuple(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmarkers =\n    slow\n    fast\n")
    items = pytester.getitems(
        """
        import pytest

        pytestmark = pytest.mark.slow

        @pytest.mark.fast
        @pytest.mark.slow
        def test_a(): pass

        @pytest.mark.fast
        def test_b(): pass

        def test_c(): pass
        """
    )
    names = reports.MarkerNames()
    a, b, c = (names(item) for item in items)
    assert a == ("slow", "fast") and b == ("fast", "slow") and c == ("slow",)  # closest first
    assert names(items[1]) is b and names(items[2]) is c  # the same tuple every time
