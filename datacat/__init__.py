"""DataCat: session-based instrumentation for Python.

The front door: re-exports the public names. Importing it starts no thread and touches nothing,
and imports almost nothing: each name is imported on first use (PEP 562), so a program that only
creates a session never pays for ``wrapt`` (``track``, ``LoggingHandler``) and the pytest plugin
starts fast. ``session`` and ``track`` share their names with submodules; importing
``datacat.session`` or ``datacat.track`` must not replace the function on the package, so those
two are properties of the package's module class.

PYTEST_DONT_REWRITE: the pytest plugin loads DataCat's modules with Python's own loader, not
pytest's assertion rewriter (see ``pytest_datacat.plugin``). This marker keeps pytest from
warning about it in a later run in the same process.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datacat.autoinstrument.logging import LoggingHandler
    from datacat.client import DatacatClient
    from datacat.errors import (
        AuthenticationError,
        ConfigurationError,
        DatacatError,
        NotFoundError,
        ServerError,
        TransportError,
        ValidationError,
    )
    from datacat.session import (
        NoopSession,
        Session,
        Timer,
        attach_session,
        create_session,
        exception_fields,
    )
    from datacat.track import current_session, session, timer, track

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "DatacatClient",
    "DatacatError",
    "LoggingHandler",
    "NoopSession",
    "NotFoundError",
    "ServerError",
    "Session",
    "Timer",
    "TransportError",
    "ValidationError",
    "__version__",
    "attach_session",
    "create_session",
    "current_session",
    "exception_fields",
    "session",
    "timer",
    "track",
]

_ERRORS = (
    "AuthenticationError",
    "ConfigurationError",
    "DatacatError",
    "NotFoundError",
    "ServerError",
    "TransportError",
    "ValidationError",
)
#: public name -> the module that defines it
_WHERE: dict[str, str] = {
    **dict.fromkeys(_ERRORS, "datacat.errors"),
    "DatacatClient": "datacat.client",
    "LoggingHandler": "datacat.autoinstrument.logging",
    **dict.fromkeys(
        (
            "NoopSession",
            "Session",
            "Timer",
            "attach_session",
            "create_session",
            "exception_fields",
        ),
        "datacat.session",
    ),
    **dict.fromkeys(("current_session", "timer"), "datacat.track"),
}


#: Submodules that an eager ``import datacat`` used to load as a side effect: still reachable
#: as attributes (``datacat.autoinstrument.instrument()`` after a plain ``import datacat``).
_SUBMODULES = frozenset(
    {
        "autoinstrument",
        "batching",
        "client",
        "config",
        "errors",
        "heartbeat",
        "merge",
        "model",
        "otel",
        "spool",
        "transport",
        "worker",
    }
)


def __getattr__(name: str) -> Any:
    """Import a public name (or a submodule) on first use and keep it in the package."""
    if name in _SUBMODULES:
        return importlib.import_module(f"datacat.{name}")
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'datacat' has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _track_attribute(name: str) -> property:
    """``datacat.session`` / ``datacat.track``: always the function, also after the submodule
    of the same name was imported (the import system's ``setattr`` is ignored)."""

    def get(module: types.ModuleType) -> Any:
        return getattr(importlib.import_module("datacat.track"), name)

    def ignore(module: types.ModuleType, value: Any) -> None:
        pass

    return property(get, ignore)


class _Package(types.ModuleType):
    session = _track_attribute("session")
    track = _track_attribute("track")


if not TYPE_CHECKING:
    sys.modules[__name__].__class__ = _Package
