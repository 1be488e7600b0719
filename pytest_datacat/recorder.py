"""The plugin objects of a recorded run: one session per run, also under pytest-xdist.

Imported only when the plugin is enabled. :class:`Recorder` lives in the process that owns the
run (the only process, or the xdist controller): it creates the session, hands its id to the
workers through ``workerinput``, records every result from the reports (xdist relays the workers'
reports to the controller's ``pytest_runtest_logreport``), keeps the live progress in the state,
and alone ends the session (the side where tests run is :mod:`pytest_datacat.relay`). Every
hook is guarded: an internal error is counted and shown in the terminal summary, never
raised into the run.

Per report the run pays for a deque append (``pytest_runtest_logreport``), and per test for a look
at the clock: at the end of a test, once every ``DRAIN_INTERVAL`` (and near the run's end by count,
``END_SHARE``), pytest's thread takes a round: it records the reports kept in one loop (events,
counters, the timer of each test) and hands them to the sender's child at once (``_round``); the
recorder's own thread only steps in during a long test (``_watch``). The item of a report (its
markers, its ``record_datacat`` data) is the item at the running index of ``session.items`` (tests
run in that order: no lookup), else found by node id; the type of what a failed report raised comes
from ``pytest_exception_interact``, which pytest calls only for failures, right after their report.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import pytest

import datacat
from datacat import rows
from datacat._internal import lazy_logger
from datacat.config import resolve
from pytest_datacat import metadata, reports
from pytest_datacat.plugin import RECORDED, SESSION, UNDELIVERED, Settings

logger = lazy_logger("datacat.pytest")

#: Seconds between two live progress updates of the state (the last one is always sent).
PROGRESS_INTERVAL = 0.5
#: The sender of a run, unless the environment sets it: in a child process
#: (``sender="process"``, ``datacat.offload``), so batching, JSON and HTTP never run under the
#: test run's GIL (on 2,000 trivial tests an in-process sender cost the run ~40 ms of CPU and,
#: sending at the end, ~0.2 s of waiting). The recorder's rounds hand the results over as they
#: log them, and the child sends each hand-over at once: the server stores them as the run goes,
#: and the end of the run waits only for the last ones (see ``END_SHARE``).
#: ``flush_interval`` is only how long the idle sender threads (ours and the child's) doze.
SENDER: dict[str, Any] = {"sender": "process", "flush_interval": 0.5, "batch_size": 5000}
#: Seconds between two rounds, each of which records the reports kept meanwhile in one go (a
#: call of ours per report, three per test, cost the run more than the loop does) and is one
#: request to the server. Rounds are taken by pytest's thread between two tests, so they wake
#: nothing of ours: on a 2-core machine, a wake-up on the other core slows the tests (a loop
#: there busy 2 ms of every 8 slowed a plain run by a third; 10 ms of every 40, by 6-9 %), and
#: the recorder's and sender's threads woken every 0.05 s, with the GIL handed to them and
#: back, made ~1,250 context switches in a 2,000-test run (~100 now; the child and the server
#: ~800 more, ~300 now). Every 0.5 s, as often as the live progress (``PROGRESS_INTERVAL``):
#: against 0.2 s, the child and the server spend ~10 % less CPU per run (fewer, larger
#: requests), and the end waits as long (``END_SHARE``).
DRAIN_INTERVAL = 0.5
#: Seconds between two looks of the recorder's thread at whether pytest's thread has taken
#: its rounds (``Recorder._watch``): only a test longer than this delays them.
WATCH_INTERVAL = 0.25
#: The end of a run waits for the child to deliver what the last round left, so rounds also
#: come by count: after a round, the next comes at the latest when only ``1 / END_SHARE`` of the
#: tests left then are still to run (``Recorder._tests_due``), until fewer than ``END_TESTS``
#: are. A geometric series (2,000 tests: rounds with ~250, ~30, ~4 left), counted in tests,
#: whatever their pace: a time estimate of the end missed it whenever the pace changed (tests
#: running faster once the child had started), and the end then waited for the server to store
#: up to a whole round (1,246 tests, 82 ms, against ~6 ms). Each round is handled long before
#: the end: the child and the server take ~40 us a test, a trivial test ~500 us.
END_SHARE = 8
END_TESTS = 16
#: "No round by count" (``Recorder._due_tests``).
_NEVER = sys.maxsize
#: The timer metric of each test's duration (setup + call + teardown).
DURATION = "pytest.test.duration"
#: The event of a test that passed with nothing but marker names to describe, as a row
#: ``(timestamp, nodeid, call duration, markers, location)`` (what ``reports.result_event``
#: makes); ``PASSED`` adds the test's duration timer to each row. The rows of a round are one
#: queue item, which the sender expands (``datacat.rows``): per test, no call of the session's
#: verbs and a tuple to pickle instead of two items (~2x cheaper for both the round and the
#: hand-over to the sender's child).
_PASSED_EVENT: dict[str, Any] = {
    "columns": ("nodeid", "duration", "markers", "location"),
    "level": "info",
    "category": "pytest",
    "data": {"outcome": "passed", "phase": "call", "worker": "main"},
    "message": "nodeid",
}
PASSED_EVENT = rows.template("test_passed", **_PASSED_EVENT)
PASSED = rows.template(
    "test_passed",
    **_PASSED_EVENT,
    timer=DURATION,
    timer_tags={"outcome": "passed"},
    timer_tag_columns=("nodeid",),
)
#: What the client's exit hook may still wait once the run's own flush deadline has passed:
#: just enough to move what is left to the spool.
EXIT_GRACE = 0.2

F = TypeVar("F", bound=Callable[..., Any])
_monotonic = time.monotonic
_now = time.time


def register(config: pytest.Config, settings: Settings) -> None:
    """Create the run's session and register the recorder (controller or single process)."""
    try:
        recorder = Recorder(config, settings)
    except Exception as exc:  # never break the run: say so in the summary instead
        logger.debug("datacat: not recording", exc_info=True)
        config.pluginmanager.register(_NotRecording(exc), "datacat-recorder")
        return
    config.stash[SESSION] = recorder.session
    config.pluginmanager.register(recorder, "datacat-recorder")


def _create_session(config: pytest.Config, settings: Settings) -> datacat.Session:
    options: dict[str, Any] = {
        "url": settings.url,
        "product": settings.product or metadata.default_product(config.rootpath),
        "version": settings.version or metadata.default_version(config.rootpath),
        "api_key": settings.api_key,
        "exit_timeout": EXIT_GRACE,
        **sender_options(os.environ),
    }
    # create_session would quietly give a no-op session for an unusable option; resolving
    # first raises instead, so the summary can say why nothing is recorded.
    resolve(**options)
    state = {"pytest": metadata.run_metadata(config), "status": "running"}
    return datacat.create_session(**options, state=state)


def sender_options(environ: Mapping[str, str]) -> dict[str, Any]:
    """The run's batching (``SENDER``), except what the environment sets itself."""
    return {k: v for k, v in SENDER.items() if f"DATACAT_{k.upper()}" not in environ}


def _guarded(method: F) -> F:
    """Run a hook body so that nothing it raises reaches pytest; count it instead."""

    @functools.wraps(method)
    def guarded(self: Recorder, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception:
            self.internal_errors += 1
            logger.debug("datacat: internal error in %s", method.__name__, exc_info=True)
            return None

    return guarded  # type: ignore[return-value]


class Recorder:
    """Records one run as one session; registered only on the controller (or single process)."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.counts = dict.fromkeys(["collected", *reports.COUNTERS.values()], 0)
        self._last: pytest.TestReport | None = None  # the latest report recorded
        self._ended = False
        self._finished = False  # the end handed to the sender (``finish``)
        self.internal_errors = 0
        self.workers_undelivered = 0  # what xdist workers' own writes could not deliver
        self.delivered: bool | None = None
        self.markers = reports.MarkerNames()
        # the reports not recorded yet, and (by id) each failed one with what it raised
        self._reports: deque[pytest.TestReport] = deque()
        self._raised: dict[int, tuple[pytest.TestReport, str]] = {}
        self._rows: list[tuple[Any, ...]] = []  # rows of ``PASSED`` not handed over yet
        self._lock = threading.Lock()  # one drain at a time
        self._stop = threading.Event()
        # the run's items (``session.items``), the index of the one running, and by node id
        # (made only when a test does not run in that order)
        self._items: list[pytest.Item] = []
        self._index = 0
        self._by_nodeid: dict[str, pytest.Item] | None = None
        # test (its location, or node id from an xdist worker) -> summed duration of its reports
        # so far, and (only where it is not "passed") its outcome: no container per test, so
        # neither dict is ever tracked by the garbage collector
        self._durations: dict[Any, float] = {}
        # test (as for ``_durations``) -> the subtests of its attempt so far (``_Subtests``),
        # logged with its teardown's report, which tells whether the attempt runs again
        self._subtests: dict[Any, _Subtests] = {}
        self._outcomes: dict[Any, str] = {}
        self._next_progress = 0.0
        self._started = time.monotonic()
        self._interrupted = False
        self._due = 0.0  # when the next round is due (``_monotonic``)
        self._due_tests = _NEVER  # or as soon as this many tests ended since the last round
        self._ended_tests = 0  # tests ended (teardown reports) since the last round
        self.session = _create_session(config, settings)
        self.session.start_heartbeat()  # a killed run turns "suspended" instead of staying active
        # A test's ``os.fork()`` whose child goes on with pytest: that child records nothing (the
        # reports kept are the parent's, and the run is the parent's to record and end). Told by
        # the pid, not by a fork hook: the hook's function would hold this module's globals, and
        # through the module's loader (pytest's assertion rewriter) the whole run's objects,
        # until the interpreter's very end, which made every run's exit ~40 ms slower.
        self._pid = os.getpid()
        watcher = threading.Thread(target=self._watch, name="datacat-pytest", daemon=True)
        watcher.start()

    @property
    def dashboard_url(self) -> str:
        url = metadata.redact_url(self.settings.url or "")  # printed: no user:password
        return f"{url.rstrip('/')}/sessions/{self.session.id}"

    # -- xdist wiring ---------------------------------------------------------------------------

    @pytest.hookimpl(optionalhook=True)
    @_guarded
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput.update(
            datacat_session_id=self.session.id,
            datacat_url=self.settings.url,
            datacat_api_key=self.settings.api_key,
            datacat_flush_timeout=self.settings.flush_timeout,
        )

    @pytest.hookimpl(optionalhook=True)
    @_guarded
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        output = getattr(node, "workeroutput", None) or {}
        self.workers_undelivered += int(output.get(UNDELIVERED, 0))

    @pytest.hookimpl(optionalhook=True)
    @_guarded
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.counts["collected"] = max(self.counts["collected"], len(ids))
        self._progress(force=True)

    # -- results --------------------------------------------------------------------------------

    @_guarded
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._items = session.items
        self.counts["collected"] = len(session.items)
        self._progress(force=True)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Three times per test, so it keeps the report, and at a test's end takes a round when
        # one is due (``_round``): a call of ours per report cost the run more than the loop.
        self._reports.append(report)
        if report.when == "teardown":
            self._ended_tests += 1
            if self._ended_tests >= self._due_tests or _monotonic() >= self._due:
                self._round()

    def pytest_exception_interact(
        self, node: Any, call: pytest.CallInfo[Any], report: pytest.TestReport
    ) -> None:
        # Only for a report that failed with an exception (not a skip, not an expected
        # failure), right after its ``pytest_runtest_logreport``: the exception's type. The
        # report is kept with it, so no other report can take its id meanwhile.
        try:
            if call.excinfo is not None and isinstance(report, pytest.TestReport):
                self._raised[id(report)] = (report, call.excinfo.typename)
        except Exception:
            self._internal_error("pytest_exception_interact")

    def _round(self) -> None:
        """Record the reports kept so far and hand them to the sender at once, on the calling
        thread (pytest's, between two tests): no thread of ours wakes or takes the GIL from
        the tests for it, which on a 2-core machine slowed them more than the work itself."""
        try:
            if self._forked:  # a test's fork that goes on with pytest: nothing of ours to send
                return
            self._ended_tests = 0
            self._drain()
            self._due = _monotonic() + DRAIN_INTERVAL
            self._due_tests = self._tests_due()
            self.session.send_soon()
        except Exception:  # never into the run
            self._internal_error("a round")

    def _watch(self) -> None:
        """The recorder's thread: a round when pytest's thread has taken none for a while (a
        long test: the results before it, and the test now running, still reach the server)."""
        while not self._stop.wait(WATCH_INTERVAL):
            if self._reports and _monotonic() >= self._due + WATCH_INTERVAL:
                self._round()

    def _tests_due(self) -> int:
        """After how many more tests' ends the next round comes, before ``_due``: all but
        ``1 / END_SHARE`` of the tests left (counted by their teardowns: a test's subtests and
        reruns add reports, not tests), so the end of the run waits for a small last round
        whatever the tests' pace; ``_NEVER`` when fewer than ``END_TESTS`` are left (xdist's
        controller runs no items: always). Tests run out of the items' order leave ``_index``
        behind: then only more rounds than needed."""
        left = len(self._items) - self._index
        if left < END_TESTS:
            return _NEVER
        return left - left // END_SHARE

    @property
    def _forked(self) -> bool:
        """In a process forked from the run's: never take ``_lock`` there (the parent's thread
        may have held it at the fork) and record nothing."""
        return os.getpid() != self._pid

    def _drain(self, last: bool = False) -> None:
        """Record the reports kept so far, in order, then the live progress when it is due. A
        failed report that is the newest waits for its exception
        (``pytest_exception_interact`` comes right after its report), unless ``last``."""
        if self._forked:
            return
        with self._lock:
            reports, raised = self._reports, self._raised
            popleft = reports.popleft
            while reports:
                count = len(reports)
                if count >= 3:
                    try:
                        plain = self._plain_test(reports[0], reports[1], reports[2])
                    except Exception:
                        plain = False  # recorded report by report, which says what is wrong
                    if plain:
                        popleft(), popleft()
                        self._last = popleft()
                        continue
                elif count == 1 and not last and self._awaits_exception(reports[0]):
                    break
                report = popleft()
                self._log_rows()  # the events before this report's go first
                try:
                    entry = raised.pop(id(report), None) if raised else None
                    self._record(report, None if entry is None else entry[1])
                except Exception:
                    self._internal_error("recording a report")
                self._last = report
            if _monotonic() >= self._next_progress:
                self._progress(force=True)
            self._log_rows()  # last: with many rows, ``log_rows`` hands the round over at once

    def _log_rows(self) -> None:
        if self._rows:
            self.session.log_rows(PASSED, self._rows)
            self._rows = []

    def _awaits_exception(self, report: pytest.TestReport) -> bool:
        return (
            report.outcome == "failed"
            and id(report) not in self._raised
            and "worker_id" not in report.__dict__  # an xdist worker's: its description has it
        )

    def _plain_test(
        self, setup: pytest.TestReport, call: pytest.TestReport, teardown: pytest.TestReport
    ) -> bool:
        """Record the common case in one go: the three reports of a test that passed, made
        here (not relayed from an xdist worker: the same location tuple), with nothing but
        marker names to describe. False (nothing recorded) for anything else."""
        location = call.location
        durations, outcomes = self._durations, self._outcomes
        if not (
            setup.location is location
            and teardown.location is location
            and setup.when == "setup"
            and call.when == "call"
            and teardown.when == "teardown"
            and setup.outcome == "passed"
            and call.outcome == "passed"
            and teardown.outcome == "passed"
            and "wasxfail" not in call.__dict__
            # nothing left by an earlier attempt at the same test (a rerun), and no subtests
            # (logged before their test's setup when pytest-rerunfailures runs it)
            and (not durations or location not in durations)
            and (not outcomes or location not in outcomes)
            and (not self._subtests or location not in self._subtests)
        ):
            return False
        names = self._plain_pass(call)
        if names is None:
            return False
        # the event of ``_log_plain_pass`` and the timer of ``_record``, as one row
        self._rows.append(
            (
                _now(),
                call.nodeid,
                call.duration,
                names,
                location,
                setup.duration + call.duration + teardown.duration,
            )
        )
        self._next_item(teardown)
        return True

    def _internal_error(self, where: str) -> None:
        self.internal_errors += 1
        logger.debug("datacat: internal error in %s", where, exc_info=True)

    def _record(self, report: pytest.TestReport, raised: str | None) -> None:
        """One report: its duration adds to its test's, a deciding one (any not passed, and a
        passing call) is an event, and the teardown's closes the test with its timer."""
        attributes = report.__dict__
        relayed = "worker_id" in attributes  # from an xdist worker: reports of several tests
        # interleave, and the worker's description rides on the report (``reports.EXTRA``)
        when = report.when
        if when == "call" and "context" in attributes:
            subtest = reports.subtest_context(report)
            if subtest is not None:  # its time is in its test's call: no duration, no timer
                self._subtest(report, subtest, raised, relayed)
                return
        if when == "setup" and not relayed and report.outcome == "passed":
            durations = self._durations  # a test's first report (or a rerun's: it adds up)
            location = report.location
            durations[location] = durations.get(location, 0.0) + report.duration
            return
        key = _key(report, relayed)
        durations = self._durations
        duration = durations.pop(key, 0.0) + report.duration
        if when != "teardown":
            durations[key] = duration
        subtests = self._subtests.get(key) if self._subtests else None
        if subtests is not None:
            self._with_subtests(report, key, raised, subtests)
        elif when == "call" and report.outcome == "passed" and not relayed:
            if not self._passed(report, key, attributes):
                self._result(report, key, raised)
        elif report.outcome != "passed" or when == "call":
            self._result(report, key, raised)
        if when == "teardown":
            nodeid = report.nodeid
            outcomes = self._outcomes
            # the aggregated path: one tuple here; the sender makes the timer
            self.session.observe(
                DURATION,
                duration,
                type="timer",
                tags={
                    "nodeid": nodeid,
                    "outcome": outcomes.pop(key, "passed") if outcomes else "passed",
                },
                unit="s",
                buckets=None,
            )
            self._next_item(report)

    def _passed(self, report: pytest.TestReport, key: Any, attributes: dict[str, Any]) -> bool:
        """Log the common case inline: a passing call of a test that has nothing but marker
        names to describe and no outcome so far; False (nothing logged) for anything else."""
        if "wasxfail" in attributes or (self._outcomes and key in self._outcomes):
            return False
        return self._log_plain_pass(report) is not None

    def _plain_pass(self, call: pytest.TestReport) -> tuple[str, ...] | None:
        """The marker names of a passing ``call`` whose test has nothing else to describe
        (counted as passed), or ``None`` (nothing counted): there is more to describe."""
        item = self._item(call)
        if item is None:
            return None
        names = self.markers(item)
        if "datacat" in names or RECORDED in item.stash:
            return None
        self.counts["passed"] += 1
        return names

    def _log_plain_pass(self, call: pytest.TestReport) -> str | None:
        """The event of a passing ``call`` whose test has nothing but marker names to describe;
        its node id, or ``None`` (nothing logged) when there is more to describe."""
        names = self._plain_pass(call)
        if names is None:
            return None
        nodeid = call.nodeid
        row = (_now(), nodeid, call.duration, names, call.location)
        self.session.log_rows(PASSED_EVENT, [row])
        return nodeid

    def _result(
        self,
        report: pytest.TestReport,
        key: Any,
        raised: str | None,
        subtests: _Subtests | None = None,
    ) -> None:
        """The event and counter of a deciding report; with ``subtests`` (its test's attempt
        has some), the event waits in them for the attempt's end."""
        result = reports.outcome(report)
        if result is None:
            return
        failed_subtests = subtests.failed if subtests is not None else 0
        if failed_subtests and result == "passed":
            # what pytest's terminal reporter makes of it (without one, the report stays passed)
            result = "failed"
        self.counts[reports.COUNTERS[result]] += 1
        outcomes = self._outcomes
        earlier = outcomes.get(key)  # None: "passed" so far (it needs no entry)
        if earlier not in ("failed", "error") and (earlier is not None or result != "passed"):
            outcomes[key] = result  # a failure or error stays the test's outcome
        # from an xdist worker the report carries its description; here, the item gives it
        extra = report.__dict__.get(reports.EXTRA)
        if extra is None:
            extra = self._describe(report, raised)
        name, fields = reports.result_event(report, result, extra)
        if failed_subtests and result in ("failed", "rerun") and not fields.get("exception_msg"):
            plural = "s" if failed_subtests > 1 else ""
            fields["exception_msg"] = f"contains {failed_subtests} failed subtest{plural}"
        if subtests is not None:
            subtests.held.append((name, fields))
        else:
            self.session.log_event(name, **fields)

    def _subtest(
        self,
        report: pytest.TestReport,
        subtest: reports.Fields,
        raised: str | None,
        relayed: bool,
    ) -> None:
        """A subtest's result, kept until its attempt's teardown (``_with_subtests``). Its
        test's own result is the call report (which pytest fails when a subtest failed)."""
        result = reports.outcome(report)
        counter = reports.SUBTEST_COUNTERS.get(result or "")
        if result is None or counter is None:
            return
        extra = report.__dict__.get(reports.EXTRA)
        if extra is None:
            extra = self._describe(report, raised)
        else:  # an xdist worker's: its context as the worker had it (see relay.ItemReporter)
            subtest = extra.get("subtest", subtest)
        name, fields = reports.subtest_event(report, result, extra, subtest)
        key = _key(report, relayed)
        subtests = self._subtests.get(key)
        if subtests is None:
            subtests = self._subtests[key] = _Subtests()
        subtests.add(counter, name, fields)

    def _with_subtests(
        self, report: pytest.TestReport, key: Any, raised: str | None, subtests: _Subtests
    ) -> None:
        """A report of a test whose attempt has subtests: its event waits with them, and the
        attempt's last report (teardown, or ``???`` from a crashed xdist worker) logs them all,
        the subtests first."""
        when = report.when
        if report.outcome == "rerun":
            subtests.rerun = True
        if report.outcome != "passed" or when == "call":
            self._result(report, key, raised, subtests)
        if when in ("teardown", "???"):
            del self._subtests[key]
            self._log_subtests(subtests)

    def _log_subtests(self, subtests: _Subtests) -> None:
        """An attempt's subtests, then its test's events. When the attempt runs again
        (pytest-rerunfailures), its subtests are not counted (pytest drops them from its
        summary) and their events say so (``data.rerun``, a failure at level warning)."""
        counts, log_event, rerun = self.counts, self.session.log_event, subtests.rerun
        for counter, name, fields in subtests.results:
            if rerun:
                fields["data"]["rerun"] = True
                if fields["level"] == "error":
                    fields["level"] = "warning"
            else:
                counts[counter] = counts.get(counter, 0) + 1
            log_event(name, **fields)
        for name, fields in subtests.held:
            log_event(name, **fields)

    def _log_all_subtests(self) -> None:
        """The subtests of attempts cut short (Ctrl-C, the end), counted."""
        try:
            pending, self._subtests = self._subtests, {}
            for subtests in pending.values():
                self._log_subtests(subtests)
        except Exception:
            self._internal_error("logging subtests")

    def _describe(self, report: pytest.TestReport, raised: str | None) -> reports.Fields | None:
        item = self._item(report)
        if item is None:
            return {"exception_type": raised} if raised else None
        try:
            failed = raised if report.outcome in ("failed", "rerun") else None
            return reports.describe(item, failed, self.markers)
        except Exception:
            logger.debug("datacat: cannot describe %s", report.nodeid, exc_info=True)
            return None

    # -- which item a report is of --------------------------------------------------------------

    def _item(self, report: pytest.TestReport) -> pytest.Item | None:
        """The item ``report`` was made from. Tests run in the order of ``session.items``, so
        it is the item at the index (whose location is the report's very tuple): no lookup;
        otherwise (a test run again, a plugin's own order) found by node id."""
        items = self._items
        index = self._index
        if index < len(items):
            item = items[index]
            if item.location is report.location:
                return item
        if self._by_nodeid is None:
            self._by_nodeid = {item.nodeid: item for item in items}
        return self._by_nodeid.get(report.nodeid)

    def _next_item(self, report: pytest.TestReport) -> None:
        """After a test's teardown: the next test is the next item."""
        items = self._items
        if self._index < len(items) and items[self._index].location is report.location:
            self._index += 1

    @_guarded
    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.counts["errors"] += 1
        elif report.skipped:  # a whole module skipped (``allow_module_level``): pytest counts it
            self.counts["skipped"] += 1
        else:
            return
        name, fields = reports.collection_event(report)
        self.session.log_event(name, **fields)

    @_guarded
    def pytest_warning_recorded(
        self, warning_message: Any, when: str, nodeid: str, location: Any
    ) -> None:
        name, fields = reports.warning_event(warning_message, when, nodeid)
        self.session.log_event(name, **fields)

    @_guarded
    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        # Ctrl-C, and ``pytest.exit()`` (whatever return code it asks for)
        if self._forked:
            return
        self._interrupted = True
        self._drain(last=True)
        self._log_all_subtests()
        self.session.log_event(
            "run_interrupted",
            level="warning",
            category="pytest",
            message=f"{excinfo.typename}: {excinfo.value}",
            data={"current": self.current, **self.counts},
            exception_type=excinfo.typename,
        )

    @property
    def current(self) -> str | None:
        """The node id of the test of the latest report (the one running, or just finished)."""
        try:  # the recorder's thread may take the last report meanwhile (``_watch``)
            last: pytest.TestReport | None = self._reports[-1]
        except IndexError:
            last = self._last
        return None if last is None or self._ended else last.nodeid

    def _progress(self, force: bool = False) -> None:
        """Send the live progress, at most every ``PROGRESS_INTERVAL`` seconds unless forced."""
        now = time.monotonic()
        if force or now >= self._next_progress:
            self._next_progress = now + PROGRESS_INTERVAL
            self.session.update_state({"progress": {**self.counts, "current": self.current}})

    # -- the end --------------------------------------------------------------------------------

    @_guarded
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.finish(int(exitstatus))

    def finish(self, exitstatus: int | None) -> None:
        """Final state and totals and the session's end, handed to the sender at once (once);
        their delivery is awaited as late as the summary allows (``_await_delivery``)."""
        if self._finished or self._forked:
            return
        self._finished = True
        self._stop.set()
        self._drain(last=True)
        self._log_all_subtests()
        self._ended = True  # no current test any more
        seconds = time.monotonic() - self._started
        state = _final_state(exitstatus, seconds, self._interrupted)
        # the last progress with it: one state operation fewer for the server to apply while
        # the run waits for the end to be delivered
        state["progress"] = {**self.counts, "current": None}
        self.session.update_state(state)
        for name, count in self.counts.items():
            self.session.log_metric("pytest.tests", count, tags={"outcome": name})
        self.session.log_timer("pytest.run.duration", seconds)
        self.session.end(flush=False)
        self.session.send_soon()

    def _await_delivery(self) -> None:
        """Wait for the end to be delivered, at most the flush timeout (once). Called by the
        summary, the last thing it needs: what pytest does meanwhile
        (other plugins' ``sessionfinish``, the summary's sections) overlaps the child and the
        server storing it."""
        if self.delivered is not None or not self._finished or self._forked:
            return
        self.delivered = False
        # the whole flush timeout from here: the time since ``finish`` was pytest's, not a wait
        self.delivered = bool(self.session.flush(timeout=self.settings.flush_timeout))

    @_guarded
    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.finish(None)  # a run that never reached sessionfinish (usage error, crash)
        self._await_delivery()  # and one without a terminal summary (``-p no:terminal``)

    @pytest.hookimpl(trylast=True)
    @_guarded
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        self._await_delivery()
        write = terminalreporter.write_line
        write(f"datacat: session {self.session.id} -> {self.dashboard_url}")
        undelivered = self.session.undelivered + self.workers_undelivered
        if undelivered or not self.delivered:
            write(
                f"datacat: {undelivered} items not delivered to "
                f"{metadata.redact_url(self.settings.url or '')} within "
                f"{self.settings.flush_timeout:g} s (spooled for a later run; the run itself is "
                "unaffected)"
            )
        if self.internal_errors:
            write(f"datacat: {self.internal_errors} internal errors (see log level DEBUG)")


class _Subtests:
    """The subtests of a test's attempt (in ``Recorder._subtests``) and its test's events so far,
    until the attempt's teardown tells whether it runs again."""

    __slots__ = ("failed", "held", "rerun", "results")

    def __init__(self) -> None:
        self.results: list[tuple[str, str, reports.Fields]] = []  # (counter, name, fields)
        self.held: list[tuple[str, reports.Fields]] = []  # the test's own events
        self.failed = 0
        self.rerun = False

    def add(self, counter: str, name: str, fields: reports.Fields) -> None:
        self.results.append((counter, name, fields))
        if fields["data"]["outcome"] == "failed":
            self.failed += 1


def _key(report: pytest.TestReport, relayed: bool) -> Any:
    """A test's key in the recorder's tables: its location (the report's own tuple, no property
    call), or, from an xdist worker, the worker and node id (``--dist each`` runs a test on
    every worker at once)."""
    if relayed:
        return (report.__dict__["worker_id"], report.nodeid)
    return report.location


def _final_state(
    exitstatus: int | None, seconds: float, interrupted: bool = False
) -> dict[str, Any]:
    """The end of the run in the state; ``interrupted``: Ctrl-C or ``pytest.exit()`` stopped it
    (the latter with any return code it chose)."""
    if exitstatus is None:
        return {"status": "aborted", "duration": seconds}
    try:
        name = pytest.ExitCode(exitstatus).name
    except ValueError:
        name = str(exitstatus)
    interrupted = interrupted or exitstatus == pytest.ExitCode.INTERRUPTED
    status = "interrupted" if interrupted else "finished"
    return {"status": status, "exit_status": exitstatus, "exit_code": name, "duration": seconds}


class _NotRecording:
    """Registered instead of the recorder when the session could not even be created."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.write_line(f"datacat: not recording this run: {self.error!r}")
