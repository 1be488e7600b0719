"""HTTP calls made with ``requests``: one timer per call, an event per failure.

``requests.Session.send`` (which every ``requests`` call goes through) is wrapped: each call
feeds the timer ``http.client.duration`` tagged with ``method``, ``host`` and ``status_class``
(``2xx`` ... ``5xx``, or ``error`` when no answer came); a call that raises becomes an exception
event ``http_request_failed``. DataCat's own traffic (sent by ``datacat.transport``, or inside
``suppressed()``) is never recorded.
"""

from __future__ import annotations

import sys
import time
from types import FrameType, ModuleType
from typing import Any
from urllib.parse import urlsplit

from datacat.autoinstrument._base import Instrumentor, guarded, is_suppressed

METRIC = "http.client.duration"
FAILURE_EVENT = "http_request_failed"
# Modules whose requests calls are DataCat's own traffic.
_OWN_MODULES = frozenset({"datacat.transport", "datacat.daemon", "datacat.pipe"})
_OWN_FRAME_DEPTH = 8


def is_own_traffic() -> bool:
    """True when the current call comes from DataCat's sender (looked up a few frames up)."""
    if is_suppressed():
        return True
    frame: FrameType | None = sys._getframe(2)
    for _ in range(_OWN_FRAME_DEPTH):
        if frame is None:
            return False
        if frame.f_globals.get("__name__") in _OWN_MODULES:
            return True
        frame = frame.f_back
    return False


def status_class(status: int | None) -> str:
    return "error" if status is None else f"{status // 100}xx"


class RequestsInstrumentor(Instrumentor):
    """Wraps ``requests.sessions.Session.send``."""

    module = "requests"

    def _patch(self, module: ModuleType) -> None:
        self._wrap(module.sessions.Session, "send", self._send)

    def _send(self, wrapped: Any, _: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if is_own_traffic():
            return wrapped(*args, **kwargs)
        request = args[0] if args else kwargs.get("request")
        start = time.perf_counter()
        try:
            response = wrapped(*args, **kwargs)
        except Exception as exc:
            guarded(self._record, request, time.perf_counter() - start, None, exc)
            raise
        guarded(self._record, request, time.perf_counter() - start, response.status_code, None)
        return response

    def _record(
        self, request: Any, seconds: float, status: int | None, exc: Exception | None
    ) -> None:
        method = str(getattr(request, "method", "") or "GET").upper()
        parts = urlsplit(str(getattr(request, "url", "") or ""))
        host = parts.netloc.rpartition("@")[2]  # without credentials
        tags = {"method": method, "host": host, "status_class": status_class(status)}
        self.session.observe(METRIC, seconds, type="timer", tags=tags)
        if exc is not None:
            url = f"{parts.scheme}://{host}{parts.path}"  # no credentials, no query: secrets
            data = {"method": method, "url": url, "seconds": seconds}
            self.session.log_exception(exc, data=data, name=FAILURE_EVENT, category="http")


instrumentor = RequestsInstrumentor()
instrument = instrumentor.instrument
uninstrument = instrumentor.uninstrument
