"""Where tests run: the reports' extras, and on an xdist worker the run's session relayed.

:class:`ItemReporter` attaches what only the item knows to its reports (see
:func:`pytest_datacat.reports.report_extra`). A worker must not own the run's session (only the
controller creates and ends it), and the client has no way to write to an existing session id
without creating and, at exit, ending it. So the worker's ``datacat_session`` is a
:class:`RelayedSession`: each verb call is stored as JSON-safe ``(verb, args, kwargs)``, the next
report of that worker carries the calls (``datacat_extra``, which xdist relays with the report),
and the controller's recorder replays them on the real session with :func:`replay`. The worker
imports nothing of DataCat (unless a test times or logs an exception through the fixture), opens
no connection and starts no thread.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_datacat import reports
from pytest_datacat.reports import json_safe

if TYPE_CHECKING:
    from datacat.session import Timer

logger = logging.getLogger("datacat.pytest")

Call = tuple[str, list[Any], dict[str, Any]]

#: The verbs a relayed call may name; nothing else is ever called on the controller.
RELAYED = frozenset(
    {
        "update_state",
        "log_event",
        "log_metric",
        "log_gauge",
        "log_counter",
        "log_histogram",
        "log_timer",
        "observe",
    }
)


def _relayed(verb: str) -> Callable[..., None]:
    def relay(self: RelayedSession, *args: Any, **kwargs: Any) -> None:
        try:
            self.calls.append((verb, json_safe(list(args)), json_safe(kwargs)))
        except (TypeError, ValueError):  # not even repr() makes it JSON (a cycle): drop, count
            self.dropped += 1

    relay.__name__ = relay.__qualname__ = verb
    relay.__doc__ = f"Relayed to the controller's ``Session.{verb}``."
    return relay


class RelayedSession:
    """A worker's handle on the controller's session: same verbs, delivered by the controller."""

    update_state = _relayed("update_state")
    log_metric = _relayed("log_metric")
    log_gauge = _relayed("log_gauge")
    log_counter = _relayed("log_counter")
    log_histogram = _relayed("log_histogram")
    log_timer = _relayed("log_timer")
    observe = _relayed("observe")
    _log_event = _relayed("log_event")

    def __init__(self, session_id: str, url: str) -> None:
        self.id = session_id
        self.url = url
        self.ended = False
        self.dropped = 0
        self.calls: list[Call] = []

    def __repr__(self) -> str:
        return f"<datacat relayed session {self.id} {self.url}>"

    def take(self) -> list[Call]:
        """The calls made since the last ``take`` (they leave with the next report)."""
        calls, self.calls = self.calls, []
        return calls

    def log_event(self, name: str, data: Any = None, **fields: Any) -> None:
        """Relayed with the worker's clock, so the event keeps the time it happened."""
        fields.setdefault("timestamp", time.time())
        self._log_event(name, data, **fields)

    def log_exception(self, exc: Any = None, **fields: Any) -> None:
        """Described here (exceptions do not travel), relayed as an event; same arguments as
        ``Session.log_exception``."""
        exc = exc[1] if isinstance(exc, tuple) else exc
        exc = exc if exc is not None else sys.exc_info()[1]
        if isinstance(exc, BaseException):
            from datacat.session import exception_fields

            name, data = fields.pop("name", "exception"), fields.pop("data", None)
            fields.setdefault("level", "error")
            self.log_event(name, data, **{**exception_fields(exc), **fields})

    def timer(self, name: str, *, tags: dict[str, str] | None = None) -> Timer:
        from datacat.session import Timer

        return Timer(self, name, tags)  # type: ignore[arg-type]  # duck-typed: log_timer

    # The session's life belongs to the controller: these do nothing on a worker.
    def heartbeat(self) -> None: ...
    def start_heartbeat(self, interval: float | None = None) -> None: ...
    def stop_heartbeat(self) -> None: ...
    def pause_hang_detection(self) -> None: ...
    def resume_hang_detection(self) -> None: ...

    def end(self, timeout: float | None = None) -> bool:
        return True

    def crash(self, reason: str, data: Any = None) -> bool:
        return True

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def get_details(self, timeout: float | None = None) -> dict[str, Any]:
        return {}


def replay(session: Any, calls: list[Call]) -> int:
    """On the controller: perform a worker's relayed calls on the real session; how many
    could not be (unknown verb, arguments the verb does not take)."""
    failed = 0
    for verb, args, kwargs in calls:
        try:
            if verb not in RELAYED:
                raise ValueError(f"not a relayed verb: {verb!r}")
            getattr(session, verb)(*args, **kwargs)
        except Exception:
            failed += 1
            logger.debug("datacat: cannot replay %s from a worker", verb, exc_info=True)
    return failed


class ItemReporter:
    """Where tests run: attaches markers, recorded data and exception type to the reports, and
    on a worker the calls its relayed session collected."""

    def __init__(self, relayed: RelayedSession | None = None) -> None:
        self.relayed = relayed

    def _pending(self) -> bool:
        return self.relayed is not None and bool(self.relayed.calls)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if report.outcome == "passed" and report.when != "call" and not self._pending():
            return report  # two of every test's three reports: nothing to add
        try:
            calls = self.relayed.take() if self.relayed is not None else []
            reports.report_extra(item, call, report, calls)
        except Exception:
            logger.debug("datacat: cannot describe %s", item.nodeid, exc_info=True)
        return report


def register_worker(config: pytest.Config, workerinput: dict[str, Any]) -> None:
    """On an xdist worker: the fixture's session relays to the controller's; never ends it."""
    from pytest_datacat.plugin import SESSION

    relayed = RelayedSession(workerinput["datacat_session_id"], workerinput["datacat_url"])
    config.stash[SESSION] = relayed
    config.pluginmanager.register(ItemReporter(relayed), "datacat-items")
