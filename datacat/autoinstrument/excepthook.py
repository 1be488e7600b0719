"""Uncaught exceptions: ``sys.excepthook``, ``threading.excepthook`` and asyncio's handler.

Each becomes an exception event, unless ``@datacat.track`` recorded that exception for the
session already (its mark on the exception object); an uncaught exception in the main thread also
marks the session crashed (reason ``uncaught_exception``), since the program is about to die of
it. The hooks that were installed before (the interpreter's, or the user's) still run, and for the
main thread they run first, so the traceback shows at once: the crash is only queued, and the
client's exit hook delivers it within the one exit deadline (``exit_timeout``).
"""

from __future__ import annotations

import sys
import threading
from types import ModuleType, TracebackType
from typing import Any

from datacat.autoinstrument._base import Instrumentor, guarded
from datacat.track import RECORDED_ATTR

CRASH_REASON = "uncaught_exception"


class ExcepthookInstrumentor(Instrumentor):
    """Patches ``sys.excepthook``, ``threading.excepthook`` and, once imported, asyncio."""

    module = "threading"

    def _patch(self, module: ModuleType) -> None:
        self._wrap(sys, "excepthook", self._sys_hook)
        self._wrap(module, "excepthook", self._thread_hook)
        self._asyncio.instrument(self.session)
        self._on_undo(self._asyncio.uninstrument)

    def __init__(self) -> None:
        super().__init__()
        self._asyncio = _AsyncioInstrumentor(self)

    def _sys_hook(self, wrapped: Any, _: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            return wrapped(*args, **kwargs)
        finally:  # the user sees the traceback first; recording then only queues
            if args and not issubclass(args[0], KeyboardInterrupt):
                guarded(self._crash, args[1], args[2])

    def _thread_hook(
        self, wrapped: Any, _: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        hook_args = args[0] if args else None
        if hook_args is not None and hook_args.exc_type is not SystemExit:
            thread = getattr(hook_args.thread, "name", None)
            guarded(self._record, hook_args.exc_value, {"thread": thread, "source": "thread"})
        return wrapped(*args, **kwargs)

    def _crash(self, exc: BaseException, tb: TracebackType | None) -> None:
        self._record(exc, {"thread": threading.current_thread().name, "source": "main"})
        data = {"exception_type": type(exc).__name__, "message": str(exc)}
        self.session.crash(CRASH_REASON, data, flush=False)  # the exit hook flushes, once

    def _record(self, exc: BaseException | None, data: dict[str, Any]) -> None:
        if exc is not None and not _recorded(exc, self.session.id):
            self.session.log_exception(exc, data=data, level="critical")


def _recorded(exc: BaseException, session_id: str) -> bool:
    """Whether ``@datacat.track`` logged ``exc`` into this session already (it marks the
    exception with the ids of the sessions it went to)."""
    seen = getattr(exc, RECORDED_ATTR, None)
    return isinstance(seen, set) and session_id in seen


class _AsyncioInstrumentor(Instrumentor):
    """asyncio's default exception handler path: exceptions no task or callback handled."""

    module = "asyncio"

    def __init__(self, owner: ExcepthookInstrumentor) -> None:
        super().__init__()
        self._owner = owner

    def _patch(self, module: ModuleType) -> None:
        loop_class = module.base_events.BaseEventLoop
        self._wrap(loop_class, "call_exception_handler", self._handler)

    def _handler(self, wrapped: Any, _: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        context = args[0] if args else kwargs.get("context", {})
        exc = context.get("exception") if isinstance(context, dict) else None
        if exc is not None:
            message = str(context.get("message", ""))
            guarded(self._owner._record, exc, {"source": "asyncio", "context": message})
        return wrapped(*args, **kwargs)


instrumentor = ExcepthookInstrumentor()
instrument = instrumentor.instrument
uninstrument = instrumentor.uninstrument
