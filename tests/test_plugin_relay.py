"""Where tests run: an xdist worker's handle on the run's session (``attach_session``), against
a real server. The whole path through xdist runs in ``test_plugin_recorder.py``; here are the
edges."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from client_helpers import details

import datacat
from pytest_datacat.relay import ItemTracker, WorkerSession


@pytest.fixture(autouse=True)
def _own_spool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATACAT_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("DATACAT_FLUSH_INTERVAL", "0.05")


def _worker_session(sid: str, url: str) -> WorkerSession:
    given = {"datacat_session_id": sid, "datacat_url": url, "datacat_flush_timeout": 5.0}
    return WorkerSession(given)


def test_a_worker_writes_to_the_run_session_and_never_ends_it(server_url: str) -> None:
    owner = datacat.create_session(server_url, product=f"relay-{uuid.uuid4()}", version="1")
    assert owner.flush(10)
    worker = _worker_session(owner.id, server_url)
    assert worker.session is None  # nothing attached until a test asks for the fixture
    attached = worker.get()
    assert worker.get() is attached and attached.id == owner.id
    attached.log_event("from_worker", {"n": 1})
    with attached.timer("worker.timer"):
        pass
    worker.pytest_sessionfinish()  # the worker's end: flushes, does not end the session
    got = details(server_url, owner.id)
    assert [e["name"] for e in got["events"]] == ["from_worker"]
    assert not got["ended_at"] and attached.undelivered == 0
    assert owner.end(10)
    assert details(server_url, owner.id)["ended_at"]


def test_attaching_never_creates_a_session(server_url: str) -> None:
    sid = str(uuid.uuid4())
    attached = datacat.attach_session(sid, url=server_url, exit_timeout=5.0)
    attached.log_event("orphan")
    attached.end()
    deadline = time.monotonic() + 10
    while attached.undelivered == 0 and time.monotonic() < deadline:
        time.sleep(0.02)  # the refusal is counted once the server answered
    assert attached.undelivered == 1  # the server refused the event: no such session
    with pytest.raises(datacat.NotFoundError):
        datacat.DatacatClient(server_url).get_session(sid)


def test_only_the_report_just_made_from_the_item_is_described(pytester: pytest.Pytester) -> None:
    """The plain ``pytest_runtest_makereport`` remembers the item and what its phase raised;
    a report that was not made from that item right after (another plugin's) gets nothing."""
    [item] = pytester.getitems("def test_x(): pass")
    tracker = ItemTracker()
    passed = pytest.CallInfo.from_call(lambda: None, "call")
    assert tracker.pytest_runtest_makereport(item, passed) is None  # pytest's makes the report
    made = pytest.TestReport.from_item_and_call(item, passed)
    assert tracker.describe(made) == {"markers": ()}
    location = tuple(list(item.location))  # equal, not the same tuple
    other = pytest.TestReport(item.nodeid, location, {}, "passed", None, "call")
    assert tracker.describe(other) is None
    failed = pytest.CallInfo.from_call(lambda: 1 / 0, "call")
    tracker.pytest_runtest_makereport(item, failed)
    made = pytest.TestReport.from_item_and_call(item, failed)
    assert tracker.describe(made) == {"markers": (), "exception_type": "ZeroDivisionError"}


def test_each_phase_keeps_what_it_raised_until_the_next_test(pytester: pytest.Pytester) -> None:
    """pytest-rerunfailures makes all three reports of an attempt before it logs the first:
    the call's report is described with what the call raised, not what the teardown did."""
    [item] = pytester.getitems("def test_x(): pass")
    tracker = ItemTracker()
    calls = {
        "setup": pytest.CallInfo.from_call(lambda: None, "setup"),
        "call": pytest.CallInfo.from_call(lambda: [][1], "call"),
        "teardown": pytest.CallInfo.from_call(lambda: {}["k"], "teardown"),
    }
    made = {}
    for when, call in calls.items():
        tracker.pytest_runtest_makereport(item, call)
        made[when] = pytest.TestReport.from_item_and_call(item, call)
    assert tracker.describe(made["call"]) == {"markers": (), "exception_type": "IndexError"}
    assert tracker.describe(made["teardown"]) == {"markers": (), "exception_type": "KeyError"}
    tracker.pytest_runtest_makereport(item, calls["setup"])  # the next test (or attempt)
    assert tracker.raised == {}


def test_an_item_that_cannot_be_described_gets_no_description(pytester: pytest.Pytester) -> None:
    """``None``, as for a report not made from the item: its result is recorded all the same."""
    source = """
import pytest

class Unprintable:
    def __str__(self):
        raise RuntimeError("no text")

@pytest.mark.datacat(Unprintable())
def test_x():
    pass
"""
    [item] = pytester.getitems(source)
    tracker = ItemTracker()
    call = pytest.CallInfo.from_call(lambda: None, "call")
    tracker.pytest_runtest_makereport(item, call)
    assert tracker.describe(pytest.TestReport.from_item_and_call(item, call)) is None
