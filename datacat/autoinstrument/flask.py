"""Requests served by Flask apps: one timer per request, an event per unhandled exception.

``Flask.full_dispatch_request`` is wrapped to feed the timer ``http.server.duration`` tagged
with ``endpoint``, ``method`` and ``status``; ``Flask.handle_exception`` (Flask's path for an
exception no error handler took) is wrapped to log it as an exception event. Flask also logs such
exceptions on ``app.logger``; that record is not captured again by the logging instrumentor.
"""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any

from datacat.autoinstrument._base import Instrumentor, guarded, suppressed

METRIC = "http.server.duration"
EXCEPTION_EVENT = "http_request_exception"
UNMATCHED = "<unmatched>"


class FlaskInstrumentor(Instrumentor):
    """Wraps ``flask.Flask`` for every app, created before or after instrumenting."""

    module = "flask"

    def __init__(self) -> None:
        super().__init__()
        self._flask: ModuleType | None = None

    def _patch(self, module: ModuleType) -> None:
        self._flask = module
        self._wrap(module.Flask, "full_dispatch_request", self._dispatch)
        self._wrap(module.Flask, "handle_exception", self._exception)

    def _dispatch(self, wrapped: Any, _: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        start = time.perf_counter()
        status = 500
        try:
            response = wrapped(*args, **kwargs)
            status = response.status_code
            return response
        finally:
            guarded(self._record, time.perf_counter() - start, status)

    def _exception(
        self, wrapped: Any, _: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        exc = args[0] if args else kwargs.get("e")
        guarded(self._record_exception, exc)
        with suppressed():  # Flask logs the same exception; one event for it is enough
            return wrapped(*args, **kwargs)

    def _request_tags(self) -> dict[str, str]:
        request = self._flask.request if self._flask is not None else None
        rule = getattr(request, "url_rule", None)
        endpoint = getattr(rule, "endpoint", None) or UNMATCHED
        return {"endpoint": endpoint, "method": str(getattr(request, "method", ""))}

    def _record(self, seconds: float, status: int) -> None:
        tags = {**self._request_tags(), "status": str(status)}
        self.session.observe(METRIC, seconds, type="timer", tags=tags)

    def _record_exception(self, exc: BaseException | None) -> None:
        if exc is not None:
            data = {**self._request_tags(), "path": str(self._flask.request.path)}  # type: ignore[union-attr]
            self.session.log_exception(exc, data=data, name=EXCEPTION_EVENT, category="http")


instrumentor = FlaskInstrumentor()
instrument = instrumentor.instrument
uninstrument = instrumentor.uninstrument
