"""The transport seam: how a batch of operations reaches a server.

Owns ``BatchResult``, the ``Transport`` protocol the sender talks to (``send_batch`` and
``close``), and ``HttpTransport``, the default. This is the only module that imports
``requests``; its errors are translated here, once, into ``datacat.errors``. ``send_batch`` never
raises: a failure is a ``BatchResult`` saying whether a retry may help.

``send_batch`` (the sender's hot path) talks to an ``http://`` or ``https://`` server over the
standard library's ``http.client``, one keep-alive connection per thread: ``requests`` costs
~0.1 s of CPU to import and ~3x the CPU per request, which an instrumented program (a test run)
pays. ``https://`` always means TLS (``HTTPSConnection``) with the certificate and host name
verified against the system's CAs (or ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``/``SSL_CERT_FILE``,
as with ``requests``). A proxy from the environment and the single API calls of ``request`` go
through ``requests``, imported on first use.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from datacat.errors import (
    AuthenticationError,
    NotFoundError,
    ServerError,
    TransportError,
    ValidationError,
)

if TYPE_CHECKING:
    import http.client
    import ssl

    import requests

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
    """Talks JSON over HTTP: batches over ``http.client`` (see the module docstring), the rest
    with ``requests``; one connection (pool) per thread."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._headers = {"Content-Type": "application/json", "User-Agent": "datacat-python"}
        if api_key:
            self._headers["X-API-Key"] = api_key
        self._local = threading.local()
        self._plain = _direct(self.url)
        self._batch_path = (self._plain[2] if self._plain else "") + "/api/batch"

    def send_batch(self, operations: list[JSONDict], timeout: float | None = None) -> BatchResult:
        try:
            if self._plain is not None:
                return self._send_plain(operations, timeout)
            response = self._post("/api/batch", {"operations": operations}, timeout)
        except ValidationError as exc:
            return BatchResult(400, error=str(exc))  # sending it again cannot help
        except TransportError as exc:
            return BatchResult(0, error=str(exc))
        body = _json_or_none(response)
        return _batch_result(
            response.status_code,
            body,
            _error_text(response, body)[0],
            response.headers.get("Retry-After"),
        )

    def _send_plain(self, operations: list[JSONDict], timeout: float | None) -> BatchResult:
        """``send_batch`` over ``http.client``: one ``json.dumps`` of the batch, one POST."""
        data = _dumps({"operations": operations}).encode()
        status, reason, headers, raw = self._post_plain(data, timeout)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if isinstance(body, dict) and "error" in body:
            error = str(body["error"])
        else:
            error = reason or f"HTTP {status}"
        return _batch_result(status, body, error, headers.get("Retry-After"))

    def _post_plain(
        self, data: bytes, timeout: float | None
    ) -> tuple[int, str, http.client.HTTPMessage, bytes]:
        """POST to ``/api/batch`` on this thread's connection; a kept-alive connection the
        server has closed meanwhile is reopened once (resending is safe: ``op_id``s)."""
        import http.client  # late, like ``_connect``: a process that never sends pays nothing

        seconds = self.timeout if timeout is None else timeout
        for attempt in (0, 1):
            conn, fresh = self._connection(seconds)
            try:
                if conn.sock is not None:
                    conn.sock.settimeout(seconds)
                conn.request("POST", self._batch_path, data, self._headers)
                response = conn.getresponse()
                return response.status, response.reason, response.msg, response.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._local.conn = None
                if fresh or attempt or isinstance(exc, TimeoutError):
                    reason = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
                    raise TransportError(f"POST {self.url}/api/batch: {reason}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _connection(self, seconds: float) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection (new in a forked child) and whether it was just made."""
        local = self._local
        conn: http.client.HTTPConnection | None = getattr(local, "conn", None)
        fresh = conn is None or local.conn_pid != os.getpid()
        if fresh:
            conn = local.conn = _connect(self._plain, seconds)
            local.conn_pid = os.getpid()
        assert conn is not None
        conn.timeout = seconds  # for its next connect; a connected socket is set by the caller
        return conn, fresh

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
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _post(self, path: str, body: Any, timeout: float | None) -> requests.Response:
        return self._call("POST", path, body, None, timeout)

    def _call(
        self, method: str, path: str, body: Any, params: Any, timeout: float | None
    ) -> requests.Response:
        data = None if body is None else _dumps(body)
        try:
            return self._session().request(
                method,
                self.url + path,
                data=data,
                params=params,
                headers=self._headers,
                timeout=self.timeout if timeout is None else timeout,
            )
        except _requests().RequestException as exc:
            reason = "timed out" if isinstance(exc, _requests().Timeout) else type(exc).__name__
            raise TransportError(f"{method} {self.url}{path}: {reason}") from exc

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None or self._local.pid != os.getpid():
            # new thread, or a forked child: never share the parent's sockets
            session = self._local.session = _requests().Session()
            self._local.pid = os.getpid()
        return session


# An ``http://``/``https://`` URL sent to directly: host, port, path prefix, TLS or not.
Direct = tuple[str, int, str, bool]
_PROXY_VARIABLES = {
    "http": ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"),
    "https": ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"),
}


def _direct(url: str) -> Direct | None:
    """Where batches go over ``http.client``: an ``http://`` or ``https://`` URL that no proxy
    variable of the environment may concern; ``None`` sends through ``requests`` (proxies)."""
    scheme = url.partition("://")[0].lower()
    names = _PROXY_VARIABLES.get(scheme)
    if names is None or any(os.environ.get(name) for name in names):
        return None
    try:
        parsed = urllib.parse.urlsplit(url)
        tls = scheme == "https"
        port = parsed.port or (443 if tls else 80)
        return parsed.hostname or "localhost", port, parsed.path.rstrip("/"), tls
    except ValueError:
        return None


def _connect(direct: Direct | None, seconds: float) -> http.client.HTTPConnection:
    """A new connection; TLS with verification for ``https://`` (never plain HTTP)."""
    # late: http.client imports ssl and email (~8 ms); with ``sender="process"`` the program
    # itself never sends a batch, and a program that only creates sessions never pays it
    import http.client

    host, port, _, tls = direct or ("", 0, "", False)
    if tls:
        return http.client.HTTPSConnection(host, port, timeout=seconds, context=tls_context())
    return http.client.HTTPConnection(host, port, timeout=seconds)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """Certificates and host names verified, against the CA bundle ``requests`` would use."""
    import ssl  # only for https:// (a plain run does not pay for it)

    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    return ssl.create_default_context(cafile=bundle or None)


def _dumps(body: Any) -> str:
    try:
        return json.dumps(body, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError("invalid body", f"not JSON: {exc}") from None


def _batch_result(status: int, body: Any, error: str, retry_after: str | None) -> BatchResult:
    """The ``BatchResult`` of an answer to ``POST /api/batch``."""
    if not 200 <= status < 300:
        return BatchResult(status, error=error, retry_after=_retry_after(retry_after))
    body = body if isinstance(body, dict) else {}
    return BatchResult(
        status,
        applied=int(body.get("applied", 0)),
        duplicates=int(body.get("duplicates", 0)),
        failed=list(body.get("failed") or []),
    )


def _requests() -> Any:
    """The ``requests`` module, imported on first use (see the module docstring)."""
    import requests

    return requests


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _error_text(response: requests.Response, body: Any) -> tuple[str, str]:
    if isinstance(body, dict) and "error" in body:
        return str(body["error"]), str(body.get("details", ""))
    return response.reason or f"HTTP {response.status_code}", response.text[:500]


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import email.utils  # late: only a 429 with an HTTP date needs it

    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - time.time())
