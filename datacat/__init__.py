"""DataCat: session-based instrumentation for Python.

The front door: re-exports the public names. Importing it starts no thread and touches nothing.
"""

from __future__ import annotations

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
from datacat.session import NoopSession, Session, create_session
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
    "TransportError",
    "ValidationError",
    "__version__",
    "create_session",
    "current_session",
    "session",
    "timer",
    "track",
]
