"""The instrumentor machinery every target module shares.

An ``Instrumentor`` is a singleton per target. ``instrument()`` registers a wrapt post-import hook
once (wrapt cannot unregister hooks, so the hook checks whether the instrumentor is still on when
it fires); the hook applies the patches the first time the target module is imported, or at once
if it already is. Every wrap is recorded with its wrapt handle so ``uninstrument()`` can remove it
exactly. Nothing here may raise into the host program: failures are logged on DataCat's own logger.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import wrapt

log = logging.getLogger("datacat.autoinstrument")

Wrapper = Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Any]

# Set while DataCat itself does work that instrumentation must not observe (its own traffic).
_suppressed: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "datacat_suppressed", default=False
)


@contextlib.contextmanager
def suppressed() -> Iterator[None]:
    """Within this block, no DataCat instrumentor records anything (used for DataCat's traffic)."""
    token = _suppressed.set(True)
    try:
        yield
    finally:
        _suppressed.reset(token)


def is_suppressed() -> bool:
    return _suppressed.get()


class Instrumentor:
    """One target: ``instrument(session)`` / ``uninstrument()``, idempotent and exactly reversible.

    Subclasses name the ``module`` whose import triggers patching and implement ``_patch`` (using
    ``_wrap`` / ``_on_undo``); ``session`` is the DataCat session the records go to.
    """

    module: str = ""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._active = False
        self._hooked = False
        self._patched = False
        self._undo: list[Callable[[], None]] = []
        self.session: Any = None

    @property
    def active(self) -> bool:
        return self._active

    def instrument(self, session: Any) -> None:
        with self._lock:
            self.session = session
            if self._active:
                return
            self._active = True
            if not self._hooked:
                self._hooked = True
                wrapt.register_post_import_hook(self._on_import, self.module)
            elif self.module in sys.modules:
                self._on_import(sys.modules[self.module])

    def uninstrument(self) -> None:
        with self._lock:
            self._active = False
            while self._undo:
                with logged_errors("uninstrument"):
                    self._undo.pop()()
            self._patched = False
            self.session = None

    def _on_import(self, module: ModuleType) -> None:
        with self._lock, logged_errors(f"instrument {self.module}"):
            if self._active and not self._patched:
                self._patched = True
                self._patch(module)

    def _patch(self, module: ModuleType) -> None:
        raise NotImplementedError

    def _wrap(self, target: Any, name: str, wrapper: Wrapper) -> None:
        """Wrap ``target.name`` with a wrapt FunctionWrapper and remember how to remove it."""
        handle = wrapt.wrap_function_wrapper(target, name, wrapper)
        self._on_undo(lambda: wrapt.unwrap_object(target, name, handle, missing_ok=True))

    def _on_undo(self, undo: Callable[[], None]) -> None:
        self._undo.append(undo)


@contextlib.contextmanager
def logged_errors(what: str) -> Iterator[None]:
    """Log (on DataCat's logger) instead of raising: for DataCat's own setup and teardown steps."""
    try:
        yield
    except Exception:
        log.exception("datacat: %s failed", what)


def guarded(record: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Call a recording function, never letting its failure reach the host program."""
    if _suppressed.get():
        return
    token = _suppressed.set(
        True
    )  # records made while recording (e.g. log calls) are not re-recorded
    try:
        record(*args, **kwargs)
    except Exception:
        log.debug("datacat: recording failed", exc_info=True)
    finally:
        _suppressed.reset(token)
