"""Where tests run: the reports' extras, and on an xdist worker a handle on the run's session.

:class:`ItemReporter` attaches what only the item knows to its reports (see
:func:`pytest_datacat.reports.report_extra`); xdist relays them to the controller, which records
them. A worker must not own the run's session (only the controller creates and ends it): its
``datacat_session`` is ``datacat.attach_session`` of the controller's session id, made on the
fixture's first use, which writes directly to the server and never creates or ends the session.
A worker whose tests never ask for the fixture imports nothing of DataCat, opens no connection
and starts no thread.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any

import pytest

from pytest_datacat import reports

logger = logging.getLogger("datacat.pytest")
#: The ``workeroutput`` key of how many items a worker's session did not deliver.
UNDELIVERED = "datacat_undelivered"


class ItemReporter:
    """Where tests run: attaches markers, recorded data and exception type to the reports."""

    def __init__(self) -> None:
        self.inherited: reports.Inherited = {}  # the collectors' marker names, looked up once

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if report.when != "call" and report.outcome == "passed":
            return report  # two of every test's three reports: nothing to add
        try:
            reports.report_extra(item, call, report, self.inherited)
        except Exception:
            logger.debug("datacat: cannot describe %s", item.nodeid, exc_info=True)
        return report


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
