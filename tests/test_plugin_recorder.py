"""A recorded run, read back from a real server over HTTP: one session per run, with and without
xdist; a server that is down, failing or stalling never changes the run; Ctrl-C ends the session."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

import pytest
import requests
from client_helpers import wait_for

from pytest_datacat import recorder, reports
from pytest_datacat.recorder import SENDER, sender_options

SUITE = """
import warnings

import pytest


def test_pass(record_datacat):
    record_datacat("answer", 42)


@pytest.mark.datacat("smoke", owner="team-a")
def test_fail():
    assert 1 == 2


@pytest.fixture
def broken():
    raise RuntimeError("setup broke")


def test_error(broken):
    pass


def test_skip():
    pytest.skip("not today")


@pytest.mark.xfail(reason="known bug")
def test_xfail():
    raise ValueError("bug")


@pytest.mark.xfail(reason="fixed?")
def test_xpass():
    pass


def test_warns():
    warnings.warn(UserWarning("careful"))


def test_own_event(datacat_session):
    datacat_session.log_event("custom", data={"from": "test"})
    datacat_session.log_metric("custom.metric", 3.5)
    with datacat_session.timer("custom.timer"):
        try:
            raise KeyError("k")
        except KeyError:
            datacat_session.log_exception()
"""
OUTCOMES = {"passed": 3, "failed": 1, "errors": 1, "skipped": 1, "xfailed": 1, "xpassed": 1}
NAMES = {"test_passed": 3, "test_failed": 1, "test_error": 1, "test_skipped": 1}
NAMES |= {"test_xfailed": 1, "test_xpassed": 1, "test_warning": 1, "custom": 1, "exception": 1}
OWN = ("test_warning", "custom", "exception")  # events that are not a test's result


@pytest.fixture(autouse=True)
def _no_datacat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner runs see only the options a test gives (not a DATACAT_URL of the outer run)."""
    for name in [n for n in os.environ if n.startswith("DATACAT_")]:
        monkeypatch.delenv(name)


def _get(url: str, **params: Any) -> Any:
    response = requests.get(url, params=params, timeout=10)
    response.raise_for_status()
    return response.json()


def _run(pytester: pytest.Pytester, url: str, *args: str) -> tuple[Any, dict[str, Any]]:
    """Run SUITE recorded at ``url``; the result and the only session of its product (read
    without the user:password ``url`` may carry)."""
    product = f"run-{uuid.uuid4()}"
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess(
        f"--datacat-url={url}", f"--datacat-product={product}", *args
    )
    server_url = re.sub(r"//[^@/]*@", "//", url)
    [listed] = _get(f"{server_url}/api/data/sessions", product=product)
    return result, _get(f"{server_url}/api/sessions/{listed['id']}")


def test_the_end_is_handed_over_at_sessionfinish_and_awaited_by_the_summary(
    pytester: pytest.Pytester, server_url: str
) -> None:
    """pytest's own end (here a later ``sessionfinish``, longer than the flush timeout)
    overlaps the end's delivery: the summary still says it was delivered (the timeout counts
    from the summary's wait), and the server has the session ended."""
    pytester.makeconftest(
        """
import time
import pytest

@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    recorder = session.config.pluginmanager.get_plugin("datacat-recorder")
    print("awaited at sessionfinish:", recorder.delivered is not None)
    time.sleep(0.6)
"""
    )
    result, session = _run(pytester, server_url, "-s", "--datacat-flush-timeout=0.5")
    result.stdout.fnmatch_lines(["*awaited at sessionfinish: False*"])
    assert "not delivered" not in result.stdout.str()
    assert session["ended_at"] and session["state"]["status"] == "finished"


class _Run(NamedTuple):
    """A recorded pytester run: pytest's result and the run's session as the server has it."""

    result: Any
    session: dict[str, Any]
    url: str  # the session's API URL

    def events(self) -> list[dict[str, Any]]:
        return list(_get(f"{self.url}/events"))

    def metrics(self) -> list[dict[str, Any]]:
        return list(_get(f"{self.url}/metrics"))


def _recorded(pytester: pytest.Pytester, server_url: str, *args: str) -> _Run:
    """Run the pytester files recorded at ``server_url`` (a product of its own), in a subprocess."""
    product = f"run-{uuid.uuid4()}"
    result = pytester.runpytest_subprocess(
        f"--datacat-url={server_url}", f"--datacat-product={product}", *args
    )
    [listed] = _get(f"{server_url}/api/data/sessions", product=product)
    url = f"{server_url}/api/sessions/{listed['id']}"
    return _Run(result, _get(url), url)


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["single", "xdist"])
def test_a_run_is_one_session(
    pytester: pytest.Pytester, server_url: str, xdist: tuple[str, ...]
) -> None:
    result, session = _run(pytester, server_url, *xdist)
    result.assert_outcomes(**OUTCOMES, warnings=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    sid = session["id"]
    result.stdout.fnmatch_lines([f"datacat: session {sid} -> {server_url}/sessions/{sid}"])
    assert requests.get(f"{server_url}/sessions/{sid}", timeout=10).status_code == 200
    _check_state(session["state"], collected=8)
    assert session["ended_at"] and not session["active"]
    events = _get(f"{server_url}/api/sessions/{sid}/events")
    assert Counter(e["name"] for e in events) == NAMES
    results = [e for e in events if e["name"] not in OWN]
    by_test = {e["data"]["nodeid"].split("::")[-1]: e for e in results}
    by_test |= {e["name"]: e for e in events if e["name"] in OWN}
    _check_events(by_test, xdist)
    _check_metrics(_get(f"{server_url}/api/sessions/{sid}/metrics"))


def _check_state(state: dict[str, Any], collected: int) -> None:
    progress = {**OUTCOMES, "reruns": 0, "collected": collected}
    assert state["progress"] == progress  # "current": None deleted
    assert state["status"] == "finished" and state["exit_status"] == 1
    assert state["exit_code"] == "TESTS_FAILED"
    meta = state["pytest"]
    assert {"args", "rootdir", "python", "pytest", "platform", "hostname", "pid"} <= set(meta)
    assert any(arg.startswith("--datacat-url=") for arg in meta["args"])


def _check_events(by_test: dict[str, dict[str, Any]], xdist: tuple[str, ...]) -> None:
    failed, error, passed = by_test["test_fail"], by_test["test_error"], by_test["test_pass"]
    assert failed["level"] == "error" and failed["exception_type"] == "AssertionError"
    assert "assert 1 == 2" in "\n".join(failed["stacktrace"])
    assert failed["source_file"].endswith("test_suite.py")
    assert SUITE.strip().splitlines()[failed["source_line"] - 1] == "    assert 1 == 2"
    assert failed["labels"] == ["smoke"] and failed["data"]["recorded"] == {"owner": "team-a"}
    assert "datacat" in failed["data"]["markers"]
    assert error["exception_type"] == "RuntimeError" and error["data"]["phase"] == "setup"
    assert error["exception_msg"] == "setup broke"
    assert passed["data"]["recorded"] == {"answer": 42} and passed["data"]["duration"] >= 0
    # sent as tuples (the item's own location, one shared tuple of marker names): JSON lists
    assert passed["data"]["location"] == ["test_suite.py", 5, "test_pass"]  # line from 0
    assert passed["data"]["markers"] == [] and by_test["test_xfail"]["data"]["markers"] == ["xfail"]
    assert by_test["test_skip"]["data"]["reason"] == "Skipped: not today"
    assert by_test["test_xfail"]["data"]["reason"] == "known bug"
    assert by_test["test_warns"]["level"] == "info"
    assert by_test["test_warning"]["message"] == "careful"
    assert by_test["custom"]["data"] == {"from": "test"}
    assert by_test["exception"]["exception_type"] == "KeyError"
    assert by_test["exception"]["source_function"] == "test_own_event"
    workers = {by_test[name]["data"]["worker"] for name in ("test_pass", "test_fail", "test_skip")}
    assert workers <= ({"gw0", "gw1"} if xdist else {"main"})


def _check_metrics(metrics: list[dict[str, Any]]) -> None:
    durations = {
        m["tags"]["nodeid"].split("::")[-1]: m
        for m in metrics
        if m["name"] == "pytest.test.duration"
    }
    assert len(durations) == 8 and durations["test_fail"]["tags"]["outcome"] == "failed"
    assert durations["test_error"]["type"] == "timer" and durations["test_error"]["value"] >= 0
    totals = {m["tags"]["outcome"]: m["value"] for m in metrics if m["name"] == "pytest.tests"}
    assert totals == {**OUTCOMES, "reruns": 0, "collected": 8}
    assert [m["value"] for m in metrics if m["name"] == "custom.metric"] == [3.5]
    assert [m["type"] for m in metrics if m["name"] == "custom.timer"] == ["timer"]


def test_ctrl_c_and_collection_errors(pytester: pytest.Pytester, server_url: str) -> None:
    """A module that cannot be imported is an error event; Ctrl-C (a test raising
    KeyboardInterrupt) is recorded and the session still ends."""
    product = f"interrupted-{uuid.uuid4()}"
    pytester.makepyfile(
        test_broken="import no_such_module_here",
        test_run="def test_a(): pass\ndef test_b(): raise KeyboardInterrupt\ndef test_c(): pass\n",
    )
    result = pytester.runpytest_subprocess(
        f"--datacat-url={server_url}",
        f"--datacat-product={product}",
        "--continue-on-collection-errors",
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED
    [listed] = _get(f"{server_url}/api/data/sessions", product=product)
    session = _get(f"{server_url}/api/sessions/{listed['id']}")
    assert session["ended_at"] and session["state"]["status"] == "interrupted"
    assert session["state"]["progress"]["passed"] == 1
    assert session["state"]["progress"]["errors"] == 1
    events = _get(f"{server_url}/api/sessions/{listed['id']}/events")
    [interrupted] = [e for e in events if e["name"] == "run_interrupted"]
    assert interrupted["exception_type"] == "KeyboardInterrupt"
    assert interrupted["data"]["current"].endswith("test_b")
    [broken] = [e for e in events if e["name"] == "collection_error"]
    assert broken["level"] == "error" and broken["message"] == "test_broken.py"
    assert broken["exception_type"] == "ModuleNotFoundError"
    assert "no_such_module_here" in broken["exception_msg"]


class _Failing(BaseHTTPRequestHandler):
    """A server that answers every request with 500 (no real server can be made to)."""

    def do_POST(self) -> None:
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "internal", "details": "always"}')

    do_GET = do_POST

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def failing_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def stalling_url() -> Iterator[str]:
    """A socket that accepts connections into its backlog and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def down_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def unusable_url() -> str:
    return "localhost:9090"  # no scheme: the client cannot use it


def _timed_run(pytester: pytest.Pytester, *args: str) -> tuple[Any, float]:
    started = time.monotonic()
    result = pytester.runpytest_subprocess(*args)
    return result, time.monotonic() - started


# What a recorded run against a broken server may add to the same run without the plugin: the
# flush deadline (1 s) plus a margin for a loaded 2-core machine (interpreter, imports, xdist).
FLUSH_DEADLINE, MARGIN = 1.0, 15.0
UNDELIVERED_LINE = re.compile(r"datacat: (\d+) items not delivered to (\S+) within 1 s")


@pytest.mark.parametrize(
    ("server", "xdist"),
    [("down_url", ()), ("down_url", ("-n", "2")), ("failing_url", ()), ("stalling_url", ())],
    ids=["down", "down-xdist", "failing", "stalling"],
)
def test_a_broken_server_never_changes_the_run(
    pytester: pytest.Pytester,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    server: str,
    xdist: tuple[str, ...],
) -> None:
    url = request.getfixturevalue(server)
    pytester.makepyfile(test_suite=SUITE)
    monkeypatch.setenv("DATACAT_SPOOL_DIR", str(pytester.path / "spool"))
    monkeypatch.setenv("DATACAT_TIMEOUT", "1")
    _, without = _timed_run(pytester, "-p", "no:datacat", *xdist)
    options = (f"--datacat-url={url}", "--datacat-flush-timeout=1", *xdist)
    result, elapsed = _timed_run(pytester, *options)
    result.assert_outcomes(**OUTCOMES, warnings=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    (line,) = UNDELIVERED_LINE.findall(result.stdout.str())
    assert line[1] == url and int(line[0]) >= 8  # nothing arrived: at least the 8 results
    assert elapsed <= without + FLUSH_DEADLINE + MARGIN


def test_the_summary_counts_what_xdist_workers_did_not_deliver(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, down_url: str
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    monkeypatch.setenv("DATACAT_SPOOL_DIR", str(pytester.path / "spool"))
    counts = []
    for xdist in ((), ("-n", "2")):
        result = pytester.runpytest_subprocess(
            f"--datacat-url={down_url}", "--datacat-flush-timeout=1", *xdist
        )
        counts.append(int(UNDELIVERED_LINE.findall(result.stdout.str())[0][0]))
    # The same items either way; under xdist, test_own_event's 4 are written by a worker (not
    # counting them there gave 4 fewer). A little slack for a throttled progress update.
    assert counts[1] >= counts[0] - 2


def test_an_unusable_url_is_reported_and_the_run_goes_on(
    pytester: pytest.Pytester, unusable_url: str
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess(f"--datacat-url={unusable_url}")
    result.assert_outcomes(**OUTCOMES, warnings=1)
    result.stdout.fnmatch_lines(["datacat: not recording this run: *url must start with http*"])


def test_secrets_reach_neither_the_state_nor_the_terminal(
    pytester: pytest.Pytester, server_url: str
) -> None:
    with_user = server_url.replace("http://", "http://user:SECRET1@")
    result, session = _run(pytester, with_user, "--datacat-api-key", "SECRET2", "-q")
    result.assert_outcomes(**OUTCOMES, warnings=1)
    args = session["state"]["pytest"]["args"]
    assert f"--datacat-url={with_user}".replace("user:SECRET1", "***") in args
    assert "--datacat-api-key" in args and "***" in args
    assert "SECRET" not in str(session["state"]) + result.stdout.str()


def test_a_run_sends_from_a_child_process_unless_the_environment_says_otherwise() -> None:
    assert sender_options({}) == SENDER and SENDER["sender"] == "process"
    assert sender_options({"DATACAT_FLUSH_INTERVAL": "0.5", "DATACAT_SENDER": "thread"}) == {
        "batch_size": 5000
    }


FLAKY = """
import pathlib


def test_flaky():
    attempted = pathlib.Path(__file__).with_name("attempted")
    first = not attempted.exists()
    attempted.write_text("once")
    assert not first  # a bare assert: its message does not name the exception's type


def test_steady():
    pass
"""


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["single", "xdist"])
def test_a_rerun_attempt_is_a_rerun_not_a_failure(
    pytester: pytest.Pytester, server_url: str, xdist: tuple[str, ...]
) -> None:
    """pytest-rerunfailures: the failed attempt is a ``test_rerun`` event (a warning, with what
    it raised) and counts as a rerun; the attempt that passed is the test's result."""
    pytester.makepyfile(test_flaky=FLAKY)
    run = _recorded(pytester, server_url, "--reruns", "1", *xdist)
    assert run.result.ret == 0 and run.result.parseoutcomes() == {"passed": 2, "rerun": 1}
    session = run.session
    progress = session["state"]["progress"]
    assert (progress["passed"], progress["failed"], progress["reruns"]) == (2, 0, 1)
    events = run.events()
    flaky = [e for e in events if e["data"].get("nodeid", "").endswith("test_flaky")]
    assert [e["name"] for e in flaky] == ["test_rerun", "test_passed"]
    rerun = flaky[0]
    assert rerun["level"] == "warning" and rerun["exception_type"] == "AssertionError"
    assert "assert not True" in rerun["exception_msg"] and rerun["data"]["phase"] == "call"
    timers = [
        m["tags"]["outcome"]
        for m in run.metrics()
        if m["name"] == "pytest.test.duration" and m["tags"]["nodeid"].endswith("test_flaky")
    ]
    assert sorted(timers) == ["passed", "rerun"]  # one timer per attempt


SUBTESTS = """
def test_cases(subtests):
    for i in range(3):
        with subtests.test(msg="case", i=i):
            assert i != 1


def test_plain():
    pass
"""


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["single", "xdist"])
def test_subtests_are_events_and_counters_of_their_own(
    pytester: pytest.Pytester, server_url: str, xdist: tuple[str, ...]
) -> None:
    """pytest's ``subtests``: each subtest is a ``subtest_<outcome>`` event with its ``msg`` and
    ``kwargs``; the tests' counters count tests (the test with a failed subtest failed)."""
    pytester.makepyfile(test_subtests=SUBTESTS)
    run = _recorded(pytester, server_url, *xdist)
    assert run.result.ret == pytest.ExitCode.TESTS_FAILED
    session = run.session
    progress = session["state"]["progress"]
    assert (progress["collected"], progress["passed"], progress["failed"]) == (2, 1, 1)
    assert (progress["subtests_passed"], progress["subtests_failed"]) == (2, 1)
    events = run.events()
    subtests = sorted(
        (e for e in events if e["name"].startswith("subtest_")),
        key=lambda e: e["data"]["subtest"]["kwargs"]["i"],
    )
    assert [e["name"] for e in subtests] == ["subtest_passed", "subtest_failed", "subtest_passed"]
    failed = subtests[1]
    assert failed["level"] == "error" and failed["exception_type"] == "AssertionError"
    assert failed["data"]["subtest"] == {"msg": "case", "kwargs": {"i": "1"}}
    assert failed["message"] == "test_subtests.py::test_cases [case] (i=1)"
    tests = {
        e["data"]["nodeid"].split("::")[-1]: e["name"] for e in events if "subtest" not in e["data"]
    }
    assert tests == {"test_cases": "test_failed", "test_plain": "test_passed"}
    timers = [
        m["tags"]["nodeid"].split("::")[-1]
        for m in run.metrics()
        if m["name"] == "pytest.test.duration"
    ]
    assert sorted(timers) == ["test_cases", "test_plain"]  # one per test, none per subtest


FLAKY_SUBTEST = """
import pathlib


def test_flaky_subtest(subtests):
    attempted = pathlib.Path(__file__).with_name("attempted")
    first = not attempted.exists()
    attempted.write_text("once")
    with subtests.test(msg="flaky"):
        assert not first
"""


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["single", "xdist"])
def test_the_subtests_of_an_attempt_that_runs_again_are_not_counted(
    pytester: pytest.Pytester, server_url: str, xdist: tuple[str, ...]
) -> None:
    """As pytest-rerunfailures drops them from pytest's summary: a green run stays green."""
    pytester.makepyfile(test_flaky_subtest=FLAKY_SUBTEST)
    run = _recorded(pytester, server_url, "--reruns", "1", *xdist)
    assert run.result.ret == 0
    progress = run.session["state"]["progress"]
    assert (progress["passed"], progress["failed"], progress["reruns"]) == (1, 0, 1)
    assert progress["subtests_passed"] == 1 and "subtests_failed" not in progress
    events = run.events()
    names = [e["name"] for e in events]
    assert names == ["subtest_failed", "test_rerun", "subtest_passed", "test_passed"]
    assert events[0]["level"] == "warning" and events[0]["data"]["rerun"] is True
    assert events[1]["exception_msg"] == "contains 1 failed subtest"
    assert "rerun" not in events[2]["data"]


TEARDOWN_RERUN = """
import pathlib

import pytest


@pytest.fixture
def flaky_teardown():
    yield
    attempted = pathlib.Path(__file__).with_name("attempted")
    if not attempted.exists():
        attempted.write_text("once")
        raise OSError("the first teardown fails")


def test_x(subtests, flaky_teardown):
    with subtests.test(msg="a"):
        pass
"""


def test_an_attempt_whose_teardown_runs_it_again_does_not_count_its_subtests(
    pytester: pytest.Pytester, server_url: str
) -> None:
    """The call passed, the teardown failed and runs the test again: the attempt's subtests are
    not counted (pytest drops them), its call still is (pytest counts a pass and a rerun)."""
    pytester.makepyfile(test_teardown_rerun=TEARDOWN_RERUN)
    run = _recorded(pytester, server_url, "--reruns", "1")
    assert run.result.ret == 0
    progress = run.session["state"]["progress"]
    assert (progress["subtests_passed"], progress["reruns"], progress["passed"]) == (1, 1, 2)
    events = run.events()
    names = [e["name"] for e in events]
    assert names == ["subtest_passed", "test_passed", "test_rerun", "subtest_passed", "test_passed"]
    assert events[0]["data"]["rerun"] is True and "rerun" not in events[3]["data"]


class _Recorded:
    """A stand-in session: what the recorder logs."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def log_event(self, name: str, **fields: Any) -> None:
        self.events.append(name)

    def observe(self, *args: Any, **kwargs: Any) -> None:
        pass


def test_xdist_each_keeps_one_workers_subtests_from_anothers_test() -> None:
    """``--dist each`` runs a test on every worker at once: relayed reports are the worker's."""
    rec = recorder.Recorder.__new__(recorder.Recorder)
    rec.counts = dict.fromkeys(["collected", *reports.COUNTERS.values()], 0)
    rec._durations, rec._outcomes, rec._subtests, rec._raised = {}, {}, {}, {}
    rec._items, rec._index, rec._by_nodeid, rec.markers = [], 0, None, reports.MarkerNames()
    rec.session = _Recorded()  # type: ignore[assignment]

    def report(worker: str, when: str, outcome: str, subtest: bool = False) -> pytest.TestReport:
        made = pytest.TestReport("t.py::test_x", ("t.py", 0, "test_x"), {}, outcome, None, when)
        made.worker_id = worker  # type: ignore[attr-defined]
        if subtest:
            made.context = type("Context", (), {"msg": "s", "kwargs": {}})()  # type: ignore[attr-defined]
        return made

    for made in (
        report("gw1", "setup", "passed"),
        report("gw1", "call", "failed", subtest=True),
        report("gw0", "setup", "passed"),
        report("gw0", "call", "passed"),
        report("gw0", "teardown", "passed"),
        report("gw1", "call", "failed"),  # pytest failed it: it contains a failed subtest
        report("gw1", "teardown", "passed"),
    ):
        rec._record(made, None)
    assert (rec.counts["passed"], rec.counts["failed"], rec.counts["subtests_failed"]) == (1, 1, 1)
    assert rec.session.events == ["test_passed", "subtest_failed", "test_failed"]  # type: ignore[attr-defined]
    assert not rec._subtests and not rec._durations


def test_a_failed_subtest_fails_its_test_without_the_terminal_reporter(
    pytester: pytest.Pytester, server_url: str
) -> None:
    """pytest's terminal reporter is what fails the test's own report: without it, we do."""
    pytester.makepyfile(test_subtests=SUBTESTS)
    run = _recorded(pytester, server_url, "-p", "no:terminal")
    assert run.result.ret == pytest.ExitCode.TESTS_FAILED
    progress = run.session["state"]["progress"]
    assert (progress["passed"], progress["failed"], progress["subtests_failed"]) == (1, 1, 1)
    events = run.events()
    [failed] = [e for e in events if e["name"] == "test_failed"]
    assert failed["exception_msg"] == "contains 1 failed subtest"


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["single", "xdist"])
def test_a_module_skipped_whole_counts_as_pytest_counts_it(
    pytester: pytest.Pytester, server_url: str, xdist: tuple[str, ...]
) -> None:
    pytester.makepyfile(
        test_skipped_module="""
import pytest
pytest.skip("no database here", allow_module_level=True)

def test_never():
    pass
""",
        test_ok="def test_ok():\n    pass\n",
    )
    run = _recorded(pytester, server_url, *xdist)
    run.result.assert_outcomes(passed=1, skipped=1)
    progress = run.session["state"]["progress"]
    assert (progress["passed"], progress["skipped"], progress["errors"]) == (1, 1, 0)
    events = run.events()
    [skipped] = [e for e in events if e["name"] == "test_skipped"]
    assert skipped["level"] == "info" and skipped["message"] == "test_skipped_module.py"
    assert skipped["data"]["phase"] == "collect"
    assert skipped["data"]["reason"] == "Skipped: no database here"


def test_pytest_exit_with_its_own_return_code_is_an_interruption(
    pytester: pytest.Pytester, server_url: str
) -> None:
    pytester.makepyfile(
        """
import pytest

def test_a():
    pass

def test_b():
    pytest.exit("stop here", returncode=3)
"""
    )
    run = _recorded(pytester, server_url)
    assert run.result.ret == 3
    session = run.session
    assert session["ended_at"] and session["state"]["status"] == "interrupted"
    assert session["state"]["exit_status"] == 3
    events = run.events()
    [interrupted] = [e for e in events if e["name"] == "run_interrupted"]
    assert interrupted["exception_type"] == "Exit" and "stop here" in interrupted["message"]


def test_near_the_end_rounds_come_by_count_whatever_the_pace() -> None:
    rec = recorder.Recorder.__new__(recorder.Recorder)  # only the state _tests_due reads
    rec._items = [object()] * 2000  # type: ignore[list-item]

    def due_after(done: int) -> int:
        rec._index = done
        return rec._tests_due()

    # the next round at the latest when an eighth of the tests left is still to run
    assert due_after(0) == 2000 - 250
    assert due_after(1750) == 250 - 31
    assert due_after(1969) == 31 - 3
    assert due_after(1997) == recorder._NEVER  # a handful left: the end takes them
    assert due_after(2000) == recorder._NEVER
    rec._items = []  # xdist's controller runs no items
    assert due_after(0) == recorder._NEVER


class _Report:
    def __init__(self, when: str) -> None:
        self.when = when


def _bare_recorder(monkeypatch: pytest.MonkeyPatch, clock: list[float]) -> recorder.Recorder:
    """A recorder with only the state rounds use; its rounds are counted in ``rec.rounds``."""
    monkeypatch.setattr(recorder, "_monotonic", lambda: clock[0])
    rec = recorder.Recorder.__new__(recorder.Recorder)
    rec._reports, rec._due, rec._stop = deque(), 0.0, threading.Event()
    rec._due_tests, rec._ended_tests = recorder._NEVER, 0
    rec.rounds = []  # type: ignore[attr-defined]
    rec._round = lambda: rec.rounds.append(clock[0])  # type: ignore[attr-defined,method-assign]
    return rec


def test_pytests_thread_takes_a_round_at_a_tests_end_once_one_is_due(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [10.0]
    rec = _bare_recorder(monkeypatch, clock)
    rec._due = 10.5
    for when in ("setup", "call", "teardown"):  # not due yet
        rec.pytest_runtest_logreport(_Report(when))  # type: ignore[arg-type]
    clock[0] = 11.0
    for when in ("setup", "call"):  # due, but a test's end waits for its teardown
        rec.pytest_runtest_logreport(_Report(when))  # type: ignore[arg-type]
    assert rec.rounds == []  # type: ignore[attr-defined]
    rec.pytest_runtest_logreport(_Report("teardown"))  # type: ignore[arg-type]
    assert rec.rounds == [11.0] and len(rec._reports) == 6  # type: ignore[attr-defined]


def test_a_tests_end_takes_a_round_early_once_enough_tests_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [10.0]
    rec = _bare_recorder(monkeypatch, clock)
    rec._due, rec._due_tests = 20.0, 2  # by time much later; by count after two tests
    # subtests add reports, not tests: only teardowns count
    for when in ("setup", "call", "call", "call", "call", "teardown", "setup", "call", "call"):
        rec.pytest_runtest_logreport(_Report(when))  # type: ignore[arg-type]
    assert rec.rounds == []  # type: ignore[attr-defined]
    rec.pytest_runtest_logreport(_Report("teardown"))  # type: ignore[arg-type]
    assert rec.rounds == [10.0]  # type: ignore[attr-defined]


def test_a_round_hands_over_at_once_and_never_raises_into_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [5.0]
    monkeypatch.setattr(recorder, "_monotonic", lambda: clock[0])
    rec = recorder.Recorder.__new__(recorder.Recorder)
    sent: list[float] = []

    class Session:
        def send_soon(self) -> None:
            sent.append(clock[0])

    rec.session, rec.internal_errors, rec._pid = Session(), 0, os.getpid()  # type: ignore[assignment]
    rec._items, rec._index, rec._ended_tests = [object()] * 100, 20, 5  # type: ignore[list-item]
    rec._drain = lambda last=False: None  # type: ignore[method-assign]
    rec._round()
    assert rec._ended_tests == 0  # counted afresh from this round
    assert sent == [5.0] and rec._due == pytest.approx(5.0 + recorder.DRAIN_INTERVAL)
    assert rec._due_tests == 80 - 10

    def broken(last: bool = False) -> None:
        raise RuntimeError("a bug of ours")

    rec._drain = broken  # type: ignore[method-assign]
    rec._round()  # counted, not raised
    assert rec.internal_errors == 1 and sent == [5.0]


def test_the_recorders_thread_takes_a_round_only_when_pytests_thread_is_late(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """During a long test no round comes from pytest's thread: the recorder's thread takes it,
    once the round is overdue by ``WATCH_INTERVAL`` (sooner it would vie with pytest's)."""
    monkeypatch.setattr(recorder, "WATCH_INTERVAL", 0.01)
    clock = [100.0]
    rec = _bare_recorder(monkeypatch, clock)
    rec._due = 100.0
    watcher = threading.Thread(target=rec._watch)
    watcher.start()
    try:
        time.sleep(0.1)
        assert rec.rounds == []  # type: ignore[attr-defined]  # nothing kept
        rec._reports.append(_Report("setup"))  # type: ignore[arg-type]
        clock[0] = 100.005  # due, not overdue
        time.sleep(0.1)
        assert rec.rounds == []  # type: ignore[attr-defined]
        clock[0] = 100.02
        assert wait_for(lambda: rec.rounds)  # type: ignore[attr-defined]
    finally:
        rec._stop.set()
        watcher.join(5)
    assert not watcher.is_alive()


DESCRIBED = """
import pytest


class Custom(Exception):
    pass


@pytest.fixture
def broken_teardown():
    yield
    raise Custom("teardown broke")


@pytest.mark.slow
@pytest.mark.datacat("a", kind="unit")
def test_custom(broken_teardown):
    raise Custom("boom")


def test_plain_raise():
    raise ValueError


@pytest.mark.parametrize("n", [1, 2])
def test_param(n, pytestconfig):
    hook = pytestconfig.pluginmanager.hook
    names = ("pytest_runtest_makereport", "pytest_runtest_logreport")
    hooks = [impl for name in names for impl in getattr(hook, name).get_hookimpls()]
    ours = [impl for impl in hooks if impl.plugin_name.startswith("datacat")]
    # the plugin's own are plain calls, no generator-based wrapper (single process and worker)
    assert ours and not any(impl.wrapper or impl.hookwrapper for impl in ours)
"""


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["single", "xdist"])
def test_each_deciding_report_is_described_without_a_hook_wrapper(
    pytester: pytest.Pytester, server_url: str, xdist: tuple[str, ...]
) -> None:
    """The exception's type is its class's own name (pytest's text would say
    ``test_described.Custom``, or nothing for a bare raise), for a call and a teardown; the
    markers and ``datacat`` labels and data come with every deciding report."""
    product = f"described-{uuid.uuid4()}"
    pytester.makepyfile(test_described=DESCRIBED)
    result = pytester.runpytest_subprocess(
        f"--datacat-url={server_url}", f"--datacat-product={product}", *xdist
    )
    result.assert_outcomes(passed=2, failed=2, errors=1)
    [listed] = _get(f"{server_url}/api/data/sessions", product=product)
    events = _get(f"{server_url}/api/sessions/{listed['id']}/events")
    by_phase = {(e["data"]["nodeid"].split("::")[-1], e["data"]["phase"]): e for e in events}
    failed, broken = by_phase["test_custom", "call"], by_phase["test_custom", "teardown"]
    # (the message keeps pytest's qualified name: "test_described.Custom: boom")
    assert failed["exception_type"] == "Custom" and failed["exception_msg"].endswith("boom")
    assert broken["exception_type"] == "Custom" and broken["exception_msg"].endswith("broke")
    for event in (failed, broken):
        assert event["data"]["markers"] == ["datacat", "slow"]
        assert event["labels"] == ["a"] and event["data"]["recorded"] == {"kind": "unit"}
    assert by_phase["test_plain_raise", "call"]["exception_type"] == "ValueError"
    param = by_phase["test_param[1]", "call"]
    assert param["name"] == "test_passed" and param["data"]["markers"] == ["parametrize"]


KILLED = """
import os, signal, time

def test_before():
    pass

def test_dies():
    time.sleep(0.5)  # the results so far are handed to the sender's child meanwhile
    os.kill(os.getpid(), signal.SIGKILL)  # the interpreter dies: no sessionfinish, no atexit
"""


def test_a_killed_run_is_marked_crashed(pytester: pytest.Pytester, server_url: str) -> None:
    """The run's sender lives in a child process: it sees the run's end of the pipe close with
    the session open and marks it crashed, with what the run had recorded until then."""
    product = f"killed-{uuid.uuid4()}"
    pytester.makepyfile(test_killed=KILLED)
    result = pytester.runpytest_subprocess(
        f"--datacat-url={server_url}", f"--datacat-product={product}"
    )
    assert result.ret == -signal.SIGKILL

    def crashed() -> dict[str, Any] | None:
        listed = _get(f"{server_url}/api/data/sessions", product=product)
        found = _get(f"{server_url}/api/sessions/{listed[0]['id']}") if listed else None
        return found if found and found["crashed"] else None

    session = wait_for(crashed, 15)
    assert session["crash_reason"] == "parent_process_terminated"
    assert [e["data"]["nodeid"] for e in session["events"] if e["name"] == "test_passed"] == [
        "test_killed.py::test_before"
    ]


REORDERED = """
import pytest

@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    # runs the items backwards, and the first one again: not the order of session.items
    items = [*reversed(session.items), session.items[0]]
    for index, item in enumerate(items):
        following = items[index + 1] if index + 1 < len(items) else None
        item.config.hook.pytest_runtest_protocol(item=item, nextitem=following)
    return True
"""


def test_tests_run_out_of_collection_order_are_described_all_the_same(
    pytester: pytest.Pytester, server_url: str
) -> None:
    """The recorder finds a report's item by its index in ``session.items`` while tests run in
    that order, and by node id when they do not (a plugin's own order, a test run again)."""
    product = f"reordered-{uuid.uuid4()}"
    pytester.makeconftest(REORDERED)
    pytester.makepyfile(
        test_order="""
import pytest

@pytest.mark.first
def test_a():
    pass

@pytest.mark.second
def test_b():
    pass
"""
    )
    result = pytester.runpytest_subprocess(
        f"--datacat-url={server_url}", f"--datacat-product={product}", "-p", "no:warnings"
    )
    assert result.ret == 0
    [listed] = _get(f"{server_url}/api/data/sessions", product=product)
    events = _get(f"{server_url}/api/sessions/{listed['id']}/events")
    ran = [(e["data"]["nodeid"].split("::")[-1], e["data"]["markers"]) for e in events]
    assert ran == [("test_b", ["second"]), ("test_a", ["first"]), ("test_a", ["first"])]


HELD = """
import json, os, time, urllib.error, urllib.request
import pytest

@pytest.fixture
def broken():
    yield
    raise KeyError("teardown")

def test_1(broken):
    pass

def test_2_long(datacat_session):
    url = os.environ["DATACAT_CHECK_URL"] + f"/api/sessions/{datacat_session.id}/events"
    names = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            names = [event["name"] for event in json.load(urllib.request.urlopen(url))]
        except urllib.error.HTTPError:  # 404: the session itself is not stored yet
            names = []
        if "test_error" in names:
            return
        time.sleep(0.05)
    raise AssertionError(names)
"""


def test_results_reach_the_server_while_the_next_test_runs(
    pytester: pytest.Pytester, server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recorder's thread records what earlier tests reported while a long test runs (the
    last report, a teardown error, included): the long test itself reads them back."""
    monkeypatch.setenv("DATACAT_CHECK_URL", server_url)
    pytester.makepyfile(test_held=HELD)
    result = pytester.runpytest_subprocess(
        f"--datacat-url={server_url}", f"--datacat-product=held-{uuid.uuid4()}"
    )
    result.assert_outcomes(passed=2, errors=1)


FORKED = """
import os, time

import pytest

@pytest.mark.parametrize("n", range(300))
def test_many(n):
    pass

def test_fork():
    pid = os.fork()
    if pid == 0:
        raise RuntimeError("the forked child goes on with the run")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.02)
    raise AssertionError("the forked child did not finish")
"""


def test_a_forked_child_that_goes_on_with_the_run_records_nothing(
    pytester: pytest.Pytester, server_url: str
) -> None:
    """A test's ``os.fork()`` whose child goes on with pytest: the child inherits the reports
    the recorder had not recorded yet, and must neither record them again nor end the run."""
    product = f"forked-{uuid.uuid4()}"
    pytester.makepyfile(test_forked=FORKED)
    result = pytester.runpytest_subprocess(
        f"--datacat-url={server_url}", f"--datacat-product={product}"
    )
    result.assert_outcomes(passed=301)
    [listed] = _get(f"{server_url}/api/data/sessions", product=product)
    events = _get(f"{server_url}/api/sessions/{listed['id']}/events", limit="1000")
    names = Counter(event["name"] for event in events)
    assert names == {"test_passed": 301}, names


FORK_HOOKS = """
import os

hooks = []
register = os.register_at_fork


def _noting(**callbacks):
    hooks.extend(callbacks.values())
    register(**callbacks)


os.register_at_fork = _noting  # this conftest loads before the plugin's pytest_configure


def _holds_the_run(hook):
    loader = getattr(hook, "__globals__", {}).get("__loader__")
    return type(loader).__name__ == "AssertionRewritingHook"


def pytest_unconfigure(config):
    held = [hook.__qualname__ for hook in hooks if _holds_the_run(hook)]
    config.rootpath.joinpath("held.txt").write_text(" ".join(held) + "|" + str(len(hooks)))
"""


def test_no_fork_hook_keeps_the_run_alive_until_the_interpreter_ends(
    pytester: pytest.Pytester, server_url: str
) -> None:
    """A fork hook lives as long as the interpreter. One defined in a module that pytest's
    assertion rewriter loaded (the plugin's modules) holds, through that module's ``__loader__``,
    the run's Config and every object of the run: they were then freed only after all modules,
    and each 2,000-test run's exit took ~40 ms longer."""
    pytester.makeconftest(FORK_HOOKS)
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = pytester.runpytest_subprocess(
        f"--datacat-url={server_url}", f"--datacat-product=fork-hooks-{uuid.uuid4()}"
    )
    result.assert_outcomes(passed=1)
    held, registered = (pytester.path / "held.txt").read_text().split("|")
    assert held == ""
    assert int(registered) > 0  # the check saw the hooks the run registered (datacat's own)


BROKEN_RECORDER = """
import pytest_datacat.recorder as recorder

recorder.DRAIN_INTERVAL = 60.0  # every report is recorded at the run's end
recorded = recorder.Recorder._record


def _record(self, report, raised):
    if report.when == "teardown" and report.nodeid.endswith("test_unlucky"):
        raise RuntimeError("a bug of the recorder's")
    return recorded(self, report, raised)


def _plain_test(self, *reports):
    raise RuntimeError("a bug of the one-go path")


recorder.Recorder._record = _record
recorder.Recorder._plain_test = _plain_test
"""


def test_a_bug_in_recording_a_report_is_counted_and_never_reaches_the_run(
    pytester: pytest.Pytester, server_url: str
) -> None:
    """A bug while recording one report (here at the run's end, where the rest of the
    recording still has to happen) is counted in the summary; the other results, the final
    state and the session's end are recorded all the same, and the run's outcomes, exit code
    and warnings (an unhandled exception in a thread would be one) stay as they were."""
    product = f"broken-{uuid.uuid4()}"
    pytester.makeconftest(BROKEN_RECORDER)
    pytester.makepyfile(test_broken="def test_lucky(): pass\ndef test_unlucky(): pass\n")
    result = pytester.runpytest_subprocess(
        f"--datacat-url={server_url}", f"--datacat-product={product}", "-W", "error"
    )
    assert result.ret == 0
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["datacat: 1 internal errors (see log level DEBUG)"])
    [listed] = _get(f"{server_url}/api/data/sessions", product=product)
    session = _get(f"{server_url}/api/sessions/{listed['id']}")
    assert session["ended_at"] and session["state"]["status"] == "finished"
    called = [e["data"]["nodeid"].split("::")[-1] for e in session["events"]]
    assert called == ["test_lucky", "test_unlucky"]
