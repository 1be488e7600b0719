"""The one exception root of DataCat and its subclasses.

Every error DataCat raises on purpose is a ``DatacatError``. Foreign errors (requests,
SQLAlchemy, ...) are translated into these once, at the module that owns the dependency.
"""

from __future__ import annotations


class DatacatError(Exception):
    """Root of every error DataCat raises."""


class ValidationError(DatacatError, ValueError):
    """Input does not match the data model; ``details`` says which field and why."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message if not details else f"{message}: {details}")
        self.message = message
        self.details = details


class ConfigurationError(DatacatError):
    """An option has a value DataCat cannot use."""


class TransportError(DatacatError):
    """The server could not be reached, or answered with something that is not the API."""


class ServerError(TransportError):
    """The server answered with an error status; carries the status and its error text."""

    def __init__(self, status: int, error: str, details: str = "") -> None:
        text = f"HTTP {status}: {error}" + (f" ({details})" if details else "")
        super().__init__(text)
        self.status = status
        self.error = error
        self.details = details


class NotFoundError(ServerError):
    """The server answered 404: unknown session or path."""


class AuthenticationError(ServerError):
    """The server answered 401: missing or wrong API key."""
