"""The transport seam: how a batch of operations reaches a server.

Owns ``BatchResult``, the ``Transport`` protocol the sender talks to (``send_batch`` and
``close``), and ``HttpTransport``, the default. This is the only module that imports
``requests``; its errors are translated here, once, into ``datacat.errors``. ``send_batch`` never
raises: a failure is a ``BatchResult`` saying whether a retry may help.

``send_batch`` (the sender's hot path) talks to an ``http://`` or ``https://`` server over a
plain socket, one keep-alive HTTP/1.1 connection per thread (``_Connection``: a POST with a
length, and an answer with a length, chunked, or up to the close). ``requests`` costs ~0.1 s of
CPU to import and ~3x the CPU per request, and even ``http.client`` ~20 ms to import (``email``,
``ssl``), which an instrumented program, or the process sender's child at each start, pays.
``https://`` always means TLS with the certificate and host name verified against the system's
CAs (or ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``/``SSL_CERT_FILE``, as with ``requests``). A
proxy from the environment and the single API calls of ``request`` go through ``requests``,
imported on first use.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, Protocol

from datacat._internal import Record
from datacat.errors import (
    AuthenticationError,
    NotFoundError,
    ServerError,
    TransportError,
    ValidationError,
)

if TYPE_CHECKING:
    import io
    import socket
    import ssl

    import requests

JSONDict = dict[str, Any]

#: Statuses worth retrying besides 5xx and "no answer" (0).
RETRYABLE = frozenset({408, 429})


class BatchResult(Record):
    """The outcome of one ``send_batch``; ``status`` 0 means no HTTP answer at all."""

    __slots__ = ("status", "applied", "duplicates", "failed", "retry_after", "error", "operations")  # noqa: RUF023

    def __init__(
        self,
        status: int,
        applied: int = 0,
        duplicates: int = 0,
        failed: list[JSONDict] | None = None,
        retry_after: float | None = None,
        error: str = "",
        operations: tuple[str, ...] = (),
    ) -> None:
        self.status = status
        self.applied = applied
        self.duplicates = duplicates
        self.failed: list[JSONDict] = [] if failed is None else failed
        self.retry_after = retry_after
        self.error = error
        self.operations = operations  # the kinds of operation the server said it takes

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
        return _batch_result(status, body, error, headers.get("retry-after"))

    def _post_plain(
        self, data: bytes, timeout: float | None
    ) -> tuple[int, str, dict[str, str], bytes]:
        """POST to ``/api/batch`` on this thread's connection; a kept-alive connection the
        server has closed meanwhile is reopened once (resending is safe: ``op_id``s)."""
        seconds = self.timeout if timeout is None else timeout
        for attempt in (0, 1):
            conn: _Connection | None = None
            fresh = True  # a connection that cannot be opened is not retried
            try:
                conn, fresh = self._connection(seconds)
                answer = conn.post(self._batch_path, self._headers, data, seconds)
                if not answer[4]:  # the server closes it: the next POST opens another
                    self._drop_connection(conn)
                return answer[:4]
            except (OSError, HttpProtocolError) as exc:
                if conn is not None:
                    self._drop_connection(conn)
                if fresh or attempt or isinstance(exc, TimeoutError):
                    reason = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
                    raise TransportError(f"POST {self.url}/api/batch: {reason}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _connection(self, seconds: float) -> tuple[_Connection, bool]:
        """This thread's connection (new in a forked child) and whether it was just made."""
        local = self._local
        conn: _Connection | None = getattr(local, "conn", None)
        if conn is not None and local.conn_pid == os.getpid():
            return conn, False
        assert self._plain is not None
        conn = local.conn = _Connection(self._plain, seconds)
        local.conn_pid = os.getpid()
        return conn, True

    def _drop_connection(self, conn: _Connection) -> None:
        conn.close()
        self._local.conn = None

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


class HttpProtocolError(Exception):
    """An answer that is not HTTP/1.x as we read it (or none at all: the server closed)."""


class RemoteDisconnected(HttpProtocolError):
    """The server closed the connection without answering (an idle keep-alive one, say)."""


#: Lines longer than this, or more header lines, are not an answer (``http.client``'s bounds).
_MAX_LINE = 65536
_MAX_HEADERS = 100


class _Connection:
    """One HTTP/1.1 connection to ``/api/batch`` (TLS for ``https://``). What the socket
    receives is read through one buffer for the connection's whole life."""

    def __init__(self, direct: Direct, seconds: float) -> None:
        import socket  # late: a program whose sender is a child process never sends

        host, port, _, tls = direct
        sock: socket.socket = socket.create_connection((host, port), timeout=seconds)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as ``http.client``
            if tls:
                sock = tls_context().wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.reader: io.BufferedReader = sock.makefile("rb")
        name = f"[{host}]" if ":" in host else host  # an IPv6 address
        default = 443 if tls else 80
        self.host = name if port == default else f"{name}:{port}"

    def post(
        self, path: str, headers: dict[str, str], data: bytes, seconds: float
    ) -> tuple[int, str, dict[str, str], bytes, bool]:
        """Status, reason, headers (lower-case names), body of the answer, and whether the
        connection stays open."""
        lines = [f"POST {path} HTTP/1.1", f"Host: {self.host}", "Accept-Encoding: identity"]
        lines += [f"{name}: {_header_value(value)}" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(data)}\r\n\r\n")
        self.sock.settimeout(seconds)
        self.sock.sendall("\r\n".join(lines).encode("latin-1") + data)
        return _read_answer(self.reader)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def _header_value(value: str) -> str:
    if "\r" in value or "\n" in value:  # ``http.client`` refuses these too
        raise ValueError(f"invalid header value {value!r}")
    return value


def _read_answer(reader: io.BufferedReader) -> tuple[int, str, dict[str, str], bytes, bool]:
    while True:
        line = _line(reader)
        if not line:
            raise RemoteDisconnected("no answer")
        version, _, rest = line.decode("latin-1").rstrip("\r\n").partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not (len(code) == 3 and code.isdigit()):
            raise HttpProtocolError(f"not an HTTP status line: {line[:100]!r}")
        status, headers = int(code), _read_headers(reader)
        if status >= 200:
            break  # 1xx: an interim answer, the real one follows
    if status in (204, 304):
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body = _read_chunked(reader)
    elif "content-length" in headers:
        body = _read_exactly(reader, _length(headers["content-length"]))
    else:
        return status, reason, headers, reader.read(), False  # up to the close
    connection = headers.get("connection", "").lower()
    if version == "HTTP/1.0":
        return status, reason, headers, body, "keep-alive" in connection
    return status, reason, headers, body, "close" not in connection


def _line(reader: io.BufferedReader) -> bytes:
    line = reader.readline(_MAX_LINE + 1)
    if len(line) > _MAX_LINE:
        raise HttpProtocolError("line too long")
    return line


def _read_headers(reader: io.BufferedReader) -> dict[str, str]:
    """The header lines up to the empty one; the first of a repeated name counts."""
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS + 1):
        line = _line(reader)
        if line in (b"\r\n", b"\n"):
            return headers
        if not line:
            raise RemoteDisconnected("closed in the headers")
        name, _, value = line.decode("latin-1").partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    raise HttpProtocolError("too many headers")


def _length(text: str) -> int:
    try:
        length = int(text, 10)
    except ValueError:
        raise HttpProtocolError(f"bad length {text[:20]!r}") from None
    if length < 0:
        raise HttpProtocolError(f"bad length {text[:20]!r}")
    return length


def _read_exactly(reader: io.BufferedReader, size: int) -> bytes:
    data = reader.read(size)
    if len(data) < size:
        raise HttpProtocolError(f"answer cut short ({len(data)} of {size} bytes)")
    return data


def _read_chunked(reader: io.BufferedReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_text = _line(reader).split(b";")[0].strip().decode("latin-1")
        try:
            size = int(size_text, 16)
        except ValueError:
            raise HttpProtocolError(f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            _read_headers(reader)  # the trailer, up to its empty line
            return b"".join(parts)
        parts.append(_read_exactly(reader, size))
        _line(reader)  # the CRLF after the chunk


@functools.cache
def tls_context() -> ssl.SSLContext:
    """Certificates and host names verified, against the CA bundle ``requests`` would use."""
    import ssl  # only for https:// (a plain run does not pay for it)

    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    return ssl.create_default_context(cafile=bundle or None)


#: Compact, and no check for cycles (~20% of the encoding's time): the batcher's bodies cannot
#: hold one (``jsonable`` cuts nesting), and one that did would end in ``RecursionError``.
_ENCODER = json.JSONEncoder(allow_nan=False, check_circular=False, separators=(",", ":"))


def _dumps(body: Any) -> str:
    try:
        return _ENCODER.encode(body)
    except (TypeError, ValueError, RecursionError) as exc:
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
        operations=tuple(o for o in body.get("operations") or () if type(o) is str),
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
