"""Log records become events: ``datacat.LoggingHandler`` and the ``logging`` instrumentor.

The handler turns each record at or above its level into an event named ``log`` (category
``logging``) carrying the logger name, level, message and, when the record has one, the
exception. Records of DataCat's own loggers (``datacat.*``) are never captured, so DataCat
cannot feed itself. The instrumentor attaches one handler to the root logger and detaches it.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

from datacat.autoinstrument._base import Instrumentor, guarded

EVENT_NAME = "log"
CATEGORY = "logging"
DEFAULT_LEVEL = logging.WARNING


def level_name(levelno: int) -> str:
    """The event level for a logging level number (custom levels map down to the nearest)."""
    for threshold, name in (
        (logging.CRITICAL, "critical"),
        (logging.ERROR, "error"),
        (logging.WARNING, "warning"),
        (logging.INFO, "info"),
    ):
        if levelno >= threshold:
            return name
    return "debug"


class LoggingHandler(logging.Handler):
    """A ``logging.Handler`` that logs each record as an event of a DataCat session."""

    def __init__(self, session: Any = None, level: int = DEFAULT_LEVEL) -> None:
        super().__init__(level)
        self.session = session

    def emit(self, record: logging.LogRecord) -> None:
        if self.session is None or record.name.split(".", 1)[0] == "datacat":
            return
        guarded(self._record, record)

    def _record(self, record: logging.LogRecord) -> None:
        fields: dict[str, Any] = {
            "level": level_name(record.levelno),
            "category": CATEGORY,
            "message": record.getMessage(),
            "labels": [record.name],
        }
        data = {"logger": record.name, "level": record.levelname, "thread": record.threadName}
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            self.session.log_exception(exc, data=data, name=EVENT_NAME, **fields)
        else:
            self.session.log_event(EVENT_NAME, data, **_source(record), **fields)


def _source(record: logging.LogRecord) -> dict[str, Any]:
    return {
        "source_file": record.pathname,
        "source_line": record.lineno,
        "source_function": record.funcName,
    }


class LoggingInstrumentor(Instrumentor):
    """Attaches a ``LoggingHandler`` to the root logger while instrumented."""

    module = "logging"

    def __init__(self) -> None:
        super().__init__()
        self.handler = LoggingHandler()
        self._root: logging.Logger | None = None

    def instrument(self, session: Any, level: int = DEFAULT_LEVEL) -> None:
        self.handler.session = session
        self.handler.setLevel(level)
        super().instrument(session)

    def _patch(self, module: ModuleType) -> None:
        root = module.getLogger()
        root.addHandler(self.handler)
        self._on_undo(lambda: root.removeHandler(self.handler))

    def uninstrument(self) -> None:
        super().uninstrument()
        self.handler.session = None


instrumentor = LoggingInstrumentor()
instrument = instrumentor.instrument
uninstrument = instrumentor.uninstrument
