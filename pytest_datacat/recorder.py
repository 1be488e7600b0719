"""The plugin objects of a recorded run: one session per run, also under pytest-xdist.

Imported only when the plugin is enabled. :class:`Recorder` lives in the process that owns the
run (the only process, or the xdist controller): it creates the session, hands its id to the
workers through ``workerinput``, records every result from the reports (xdist relays the workers'
reports to the controller's ``pytest_runtest_logreport``), keeps the live progress in the state,
and alone ends the session (the side where tests run is :mod:`pytest_datacat.relay`). Every
hook is guarded: an internal error is counted and shown in the terminal summary, never
raised into the run.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import pytest

import datacat
from datacat.config import resolve
from pytest_datacat import metadata, reports
from pytest_datacat.plugin import SESSION, Settings
from pytest_datacat.relay import UNDELIVERED, ItemTracker

logger = logging.getLogger("datacat.pytest")

#: Seconds between two live progress updates of the state (the last one is always sent).
PROGRESS_INTERVAL = 0.5
#: The sender of a run, unless the environment sets it: in a child process
#: (``sender="process"``, ``datacat.offload``), so batching, JSON and HTTP never run under the
#: test run's GIL (on 2,000 trivial tests an in-process sender cost the run ~40 ms of CPU and,
#: sending at the end, ~0.2 s of waiting). This process hands the results over every 0.05 s;
#: the child sends every 0.1 s, so the server stores them as the run goes and the end of the
#: run waits only for the last ones. Sending more often shortens that wait (13-25 ms at
#: 0.02 s against 30-40 ms, in an emulated run of 2,700 tests/s) but costs the server more
#: (240-290 ms of CPU per 2,000-test run at 0.02 s, 180-210 ms at 0.1 s, 160-190 ms at 0.5 s),
#: which a machine with no idle core takes from the tests.
SENDER: dict[str, Any] = {"sender": "process", "flush_interval": 0.1, "batch_size": 5000}
#: The timer metric of each test's duration (setup + call + teardown).
DURATION = "pytest.test.duration"
#: What the client's exit hook may still wait once the run's own flush deadline has passed:
#: just enough to move what is left to the spool.
EXIT_GRACE = 0.2

F = TypeVar("F", bound=Callable[..., Any])
_monotonic = time.monotonic


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
    # Where tests run here (no xdist): the recorder describes each deciding report from its item.
    # Under xdist this process runs no test and the workers' reports carry their description.
    config.pluginmanager.register(recorder.items, "datacat-items")


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
        self.current: str | None = None
        self.internal_errors = 0
        self.workers_undelivered = 0  # what xdist workers' own writes could not deliver
        self.delivered: bool | None = None
        self.items = ItemTracker()
        # nodeid -> summed duration of the test's reports so far, and (only where it is not
        # "passed") its outcome: strings and floats only, so neither dict is ever tracked by
        # the garbage collector (a list per test was, and lived as long as the test)
        self._durations: dict[str, float] = {}
        self._outcomes: dict[str, str] = {}
        self._next_progress = 0.0
        self._started = time.monotonic()
        self.session = _create_session(config, settings)
        self.session.start_heartbeat()  # a killed run turns "suspended" instead of staying active

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
        self.counts["collected"] = len(session.items)
        self._progress(force=True)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Three times per test, so cheap: plain attribute reads, few calls, no per-test state
        # update (the progress is throttled), and the guard inlined rather than ``_guarded``.
        # A passing test's setup and teardown add their duration; its call is logged inline.
        try:
            nodeid = report.nodeid  # a property (pytest 9): read once
            durations = self._durations
            duration = durations.get(nodeid)
            if duration is None:  # the test's first report: it is the current one
                duration = 0.0
                self.current = nodeid
            when = report.when
            if when == "teardown":
                if report.outcome != "passed":
                    self._result(report, nodeid)
                durations.pop(nodeid, None)  # none when the teardown is the test's only report
                outcomes = self._outcomes
                # the aggregated path: one tuple on this thread; the sender makes the timer
                self.session.observe(
                    DURATION,
                    duration + report.duration,
                    type="timer",
                    tags={
                        "nodeid": nodeid,
                        "outcome": outcomes.pop(nodeid, "passed") if outcomes else "passed",
                    },
                    unit="s",
                    buckets=None,
                )
                if _monotonic() >= self._next_progress:
                    self._progress(force=True)
                return
            durations[nodeid] = duration + report.duration
            if report.outcome == "passed":
                if when == "call" and not self._passed(report, nodeid):
                    self._result(report, nodeid)
            else:  # the reports that decide
                self._result(report, nodeid)
        except Exception:
            self.internal_errors += 1
            logger.debug("datacat: internal error in pytest_runtest_logreport", exc_info=True)

    def _passed(self, report: pytest.TestReport, nodeid: str) -> bool:
        """Log the common case inline: a passing call of a test that has nothing but marker
        names to describe and no outcome so far; False (nothing logged) for anything else."""
        attributes = report.__dict__
        if "wasxfail" in attributes or self._outcomes or reports.EXTRA in attributes:
            return False
        names = self.items.plain_markers(report)
        if names is None:
            return False
        self.counts["passed"] += 1
        # the event ``reports.result_event`` makes, in one literal: explicit keywords, no labels
        self.session.log_event(
            "test_passed",
            {
                "nodeid": nodeid,
                "outcome": "passed",
                "phase": "call",
                "duration": report.duration,
                "worker": attributes.get("worker_id") or "main",
                "markers": names,
                "location": report.location,
            },
            level="info",
            category="pytest",
            message=nodeid,
        )
        return True

    def _result(self, report: pytest.TestReport, nodeid: str) -> None:
        result = reports.outcome(report)
        if result is None:
            return
        self.counts[reports.COUNTERS[result]] += 1
        outcomes = self._outcomes
        earlier = outcomes.get(nodeid)  # None: "passed" so far (it needs no entry)
        if earlier not in ("failed", "error") and (earlier is not None or result != "passed"):
            outcomes[nodeid] = result  # a failure or error stays the test's outcome
        # from an xdist worker the report carries its description; here, the item gives it
        extra = report.__dict__.get(reports.EXTRA)
        if extra is None:
            extra = self.items.describe(report)
        name, fields = reports.result_event(report, result, extra)
        self.session.log_event(name, **fields)

    @_guarded
    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.counts["errors"] += 1
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
        self.session.log_event(
            "run_interrupted",
            level="warning",
            category="pytest",
            message=f"{excinfo.typename}: {excinfo.value}",
            data={"current": self.current, **self.counts},
            exception_type=excinfo.typename,
        )

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
        """Final state and totals, end the session, deliver within the flush deadline (once)."""
        if self.delivered is not None:
            return
        self.delivered = False
        self.current = None
        self._progress(force=True)
        seconds = time.monotonic() - self._started
        self.session.update_state(_final_state(exitstatus, seconds))
        for name, count in self.counts.items():
            self.session.log_metric("pytest.tests", count, tags={"outcome": name})
        self.session.log_timer("pytest.run.duration", seconds)
        self.delivered = bool(self.session.end(timeout=self.settings.flush_timeout))

    @_guarded
    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.finish(None)  # a run that never reached sessionfinish (usage error, crash)

    @_guarded
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
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


def _final_state(exitstatus: int | None, seconds: float) -> dict[str, Any]:
    if exitstatus is None:
        return {"status": "aborted", "duration": seconds}
    try:
        name = pytest.ExitCode(exitstatus).name
    except ValueError:
        name = str(exitstatus)
    status = "interrupted" if exitstatus == pytest.ExitCode.INTERRUPTED else "finished"
    return {"status": status, "exit_status": exitstatus, "exit_code": name, "duration": seconds}


class _NotRecording:
    """Registered instead of the recorder when the session could not even be created."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.write_line(f"datacat: not recording this run: {self.error!r}")
