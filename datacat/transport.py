"""The transport seam: how a batch of operations reaches a server.

Owns ``BatchResult``, the ``Transport`` protocol the sender talks to (``send_batch`` and
``close``), and ``HttpTransport``, the default. This is the only module that imports
``requests``; its errors are translated here, once, into ``datacat.errors``. ``send_batch`` never
raises: a failure is a ``BatchResult`` saying whether a retry may help.
"""

from __future__ import annotations

import email.utils
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests

from datacat.errors import (
    AuthenticationError,
    NotFoundError,
    ServerError,
    TransportError,
    ValidationError,
)

JSONDict = dict[str, Any]

#: Statuses worth retrying besides 5xx and "no answer" (0).
RETRYABLE = frozenset({408, 429})


@dataclass
class BatchResult:
    """The outcome of one ``send_batch``; ``status`` 0 means no HTTP answer at all."""

    status: int
    applied: int = 0
    duplicates: int = 0
    failed: list[JSONDict] = field(default_factory=list)
    retry_after: float | None = None
    error: str = ""

    @property
    def delivered(self) -> bool:
        """The server took the batch (single operations may still be in ``failed``)."""
        return 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        """Sending the same batch again later may succeed."""
        return self.status == 0 or self.status >= 500 or self.status in RETRYABLE

    def raise_for_failure(self) -> None:
        """Raise the error this result stands for (used by ``blocking=True`` sessions)."""
        if self.status == 0:
            raise TransportError(self.error)
        if not self.delivered:
            raise error_for(self.status, self.error, "")
        if self.failed:
            first = self.failed[0]
            raise error_for(
                int(first.get("status", 400)),
                str(first.get("error", "")),
                str(first.get("details", "")),
            )


class Transport(Protocol):
    """What the sender needs from a way to reach the server."""

    def send_batch(self, operations: list[JSONDict], timeout: float | None = None) -> BatchResult:
        """Deliver ``operations`` in order; never raises."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def error_for(status: int, error: str, details: str) -> ServerError:
    """The ``ServerError`` subclass for an HTTP error status."""
    if status == 404:
        return NotFoundError(status, error, details)
    if status == 401:
        return AuthenticationError(status, error, details)
    return ServerError(status, error, details)


class HttpTransport:
    """Talks JSON over HTTP with ``requests``; one ``Session`` (connection pool) per thread."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._headers = {"Content-Type": "application/json", "User-Agent": "datacat-python"}
        if api_key:
            self._headers["X-API-Key"] = api_key
        self._local = threading.local()

    def send_batch(self, operations: list[JSONDict], timeout: float | None = None) -> BatchResult:
        try:
            response = self._post("/api/batch", {"operations": operations}, timeout)
        except ValidationError as exc:
            return BatchResult(400, error=str(exc))  # sending it again cannot help
        except TransportError as exc:
            return BatchResult(0, error=str(exc))
        body = _json_or_none(response)
        if not 200 <= response.status_code < 300:
            error, _ = _error_text(response, body)
            return BatchResult(
                response.status_code, error=error, retry_after=_retry_after(response)
            )
        body = body if isinstance(body, dict) else {}
        return BatchResult(
            response.status_code,
            applied=int(body.get("applied", 0)),
            duplicates=int(body.get("duplicates", 0)),
            failed=list(body.get("failed") or []),
        )

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Any = None,
        timeout: float | None = None,
    ) -> Any:
        """One API call; the decoded JSON answer, or a ``DatacatError`` with the server's text."""
        response = self._call(method, path, body, params, timeout)
        payload = _json_or_none(response)
        if response.status_code >= 400:
            error, details = _error_text(response, payload)
            raise error_for(response.status_code, error, details)
        return payload

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None

    def _post(self, path: str, body: Any, timeout: float | None) -> requests.Response:
        return self._call("POST", path, body, None, timeout)

    def _call(
        self, method: str, path: str, body: Any, params: Any, timeout: float | None
    ) -> requests.Response:
        try:
            data = None if body is None else json.dumps(body, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValidationError("invalid body", f"not JSON: {exc}") from None
        try:
            return self._session().request(
                method,
                self.url + path,
                data=data,
                params=params,
                headers=self._headers,
                timeout=self.timeout if timeout is None else timeout,
            )
        except requests.RequestException as exc:
            reason = "timed out" if isinstance(exc, requests.Timeout) else type(exc).__name__
            raise TransportError(f"{method} {self.url}{path}: {reason}") from exc

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None or self._local.pid != os.getpid():
            # new thread, or a forked child: never share the parent's sockets
            session = self._local.session = requests.Session()
            self._local.pid = os.getpid()
        return session


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _error_text(response: requests.Response, body: Any) -> tuple[str, str]:
    if isinstance(body, dict) and "error" in body:
        return str(body["error"]), str(body.get("details", ""))
    return response.reason or f"HTTP {response.status_code}", response.text[:500]


def _retry_after(response: requests.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - time.time())
