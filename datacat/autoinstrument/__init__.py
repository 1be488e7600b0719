"""Auto-instrumentation: ``instrument(targets=None, session=None)`` and ``uninstrument()``.

One module per target (``excepthook``, ``logging``, ``requests``, ``flask``, ``otel``), each a
singleton with ``instrument(session)`` / ``uninstrument()``, safe to call twice and exactly
reversible. A target patches its library lazily, through a wrapt post-import hook: a library that
is never imported is never touched. ``suppressed()`` marks DataCat's own work (its traffic), which
no instrumentor records.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

from datacat.autoinstrument._base import Instrumentor, logged_errors, suppressed

TARGETS = ("excepthook", "logging", "requests", "flask", "otel")

_session: Any = None

__all__ = ["TARGETS", "instrument", "instrumentor", "suppressed", "uninstrument"]


def instrumentor(target: str) -> Instrumentor:
    """The singleton instrumentor of ``target`` (one of ``TARGETS``)."""
    if target not in TARGETS:
        raise ValueError(f"unknown instrumentation target {target!r}; known: {', '.join(TARGETS)}")
    module = importlib.import_module(f"datacat.autoinstrument.{target}")
    found: Instrumentor = module.instrumentor
    return found


def instrument(targets: Iterable[str] | None = None, session: Any = None) -> Any:
    """Turn on ``targets`` (default: all) for ``session`` and return the session.

    Without a session, the one ``@datacat.track`` uses is taken (made from the environment if
    needed) and stays the default of both.
    Targets already on switch to the given session. Unknown targets raise ``ValueError``.
    """
    global _session
    chosen = [instrumentor(t) for t in (TARGETS if targets is None else targets)]
    if session is None:
        session = _session if _session is not None else _create_session()
    _session = session
    for one in chosen:
        with logged_errors(f"instrument {one.module}"):
            one.instrument(session)
    return session


def uninstrument() -> None:
    """Turn every target off, restoring every patched object."""
    global _session
    for target in TARGETS:
        instrumentor(target).uninstrument()
    _session = None


def _create_session() -> Any:
    """The session ``@datacat.track`` would use (made from the environment if there is none
    yet), shared with it: one process, one session."""
    datacat: Any = importlib.import_module("datacat")  # late: the front door imports this package
    session = datacat.current_session() or datacat.create_session()
    importlib.import_module("datacat.track").set_default_session(session)
    return session
