"""On an xdist worker: what only the item knows, and a handle on the run's session.

A worker's reports go to the controller, which records them; what only the item knows
(markers, ``record_datacat`` data, the exception's type; see
:func:`pytest_datacat.reports.describe`) must travel with them. :class:`ItemTracker` remembers
the item of the report being made (and the type of what it raised) with a plain
``pytest_runtest_makereport`` implementation that returns nothing (no hook wrapper: pluggy runs
a wrapper as a generator, several µs per call and three calls per test), and
:class:`ItemReporter` attaches the description to the report (the JSON-safe attribute
``datacat_extra``) before xdist relays it. (Without xdist the recorder finds the item itself,
at no cost per test; see :mod:`pytest_datacat.recorder`.)

A worker must not own the run's session (only the controller creates and ends it): its
``datacat_session`` is ``datacat.attach_session`` of the controller's session id, made on the
fixture's first use, which writes directly to the server and never creates or ends the session.
A worker whose tests never ask for the fixture imports nothing of DataCat, opens no connection
and starts no thread.
"""

from __future__ import annotations

from typing import Any

import pytest

from datacat._internal import lazy_logger
from pytest_datacat import reports
from pytest_datacat.plugin import UNDELIVERED, plain_imports

logger = lazy_logger("datacat.pytest")


class ItemTracker:
    """Where tests run: the item of the report being made, to describe the reports that decide."""

    def __init__(self) -> None:
        self.item: pytest.Item | None = None
        # phase -> the type name of what it raised, for the item's phases so far: all three
        # reports of a test may be made before the first is logged (pytest-rerunfailures)
        self.raised: dict[str, str] = {}
        self.markers = reports.MarkerNames()

    # tryfirst: before pytest's own implementation, which returns the report (firstresult)
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> None:
        # Three times per test: an attribute write, and a dict write for a phase that raised.
        # Only the type's name is kept, not the exception (its traceback would keep the test's
        # frames alive until the next phase).
        self.item = item
        when = call.when
        if when == "setup" and self.raised:  # a test's (or an attempt's) first report
            self.raised = {}
        excinfo = call.excinfo
        if excinfo is not None:
            self.raised[when] = excinfo.typename
        elif self.raised and when in self.raised:  # a subtest's (the same phase) raised before
            del self.raised[when]

    def describe(self, report: pytest.TestReport) -> reports.Fields | None:
        """Markers, recorded data and exception type of the item of ``report``; ``None`` when
        the report is not the one just made from the item (e.g. one another plugin made
        without this hook), or the item cannot be described (the result is recorded all the
        same)."""
        item = self.item
        # pytest's report holds its item's own location tuple: one identity test, where
        # comparing node ids would cost two properties (``nodeid`` is one on both in pytest 9).
        # A subtest's report is a copy made through JSON: an equal tuple, not the same.
        if item is None:
            return None
        if item.location is not report.location and not (
            "context" in report.__dict__ and item.nodeid == report.nodeid
        ):
            return None
        raised = self.raised.get(report.when) if report.outcome in ("failed", "rerun") else None
        try:
            return reports.describe(item, raised, self.markers)
        except Exception:
            logger.debug("datacat: cannot describe %s", report.nodeid, exc_info=True)
            return None


class ItemReporter(ItemTracker):
    """On an xdist worker: attaches the description to each deciding report, which xdist relays
    to the controller with the report."""

    # tryfirst: before xdist's worker serializes the report for the controller
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call" and report.outcome == "passed":
            return  # two of every test's three reports: nothing to add
        extra = self.describe(report)
        subtest = reports.subtest_context(report) if "context" in report.__dict__ else None
        if subtest is not None:  # as made here: the controller's copy of the context, made
            extra = {**(extra or {}), "subtest": subtest}  # from JSON, repr()s its values again
        if extra is not None:
            setattr(report, reports.EXTRA, extra)


class WorkerSession:
    """On an xdist worker: attaches to the controller's session on first use, and delivers what
    the worker's tests logged before the worker ends (within the flush deadline)."""

    def __init__(
        self, workerinput: dict[str, Any], workeroutput: dict[str, Any] | None = None
    ) -> None:
        self.workerinput = workerinput
        # goes back to the controller when the worker ends
        self.workeroutput = {} if workeroutput is None else workeroutput
        self.session: Any = None

    def get(self) -> Any:
        if self.session is None:
            with plain_imports():  # as the recorder's (see ``pytest_datacat.plugin``)
                import datacat

                given = self.workerinput
                self.session = datacat.attach_session(
                    given["datacat_session_id"],
                    url=given["datacat_url"],
                    api_key=given.get("datacat_api_key"),
                    exit_timeout=given.get("datacat_flush_timeout", 2.0),
                )
        return self.session

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self) -> None:
        if self.session is not None:
            try:
                self.session.end()  # attached: flushes within exit_timeout, ends nothing
                # the controller's summary counts what this worker could not deliver too
                self.workeroutput[UNDELIVERED] = self.session.undelivered
            except Exception:
                logger.debug("datacat: worker flush failed", exc_info=True)


def register_worker(config: pytest.Config, workerinput: dict[str, Any]) -> None:
    """On an xdist worker: the fixture attaches to the controller's session; never ends it."""
    from pytest_datacat.plugin import WORKER

    worker = WorkerSession(workerinput, getattr(config, "workeroutput", {}))
    config.stash[WORKER] = worker
    config.pluginmanager.register(worker, "datacat-worker")
    config.pluginmanager.register(ItemReporter(), "datacat-items")
