"""``HttpTransport``: batches and single calls over real HTTP, failures as results or our errors."""

from __future__ import annotations

import contextlib
import email.utils
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from client_helpers import Peer

from datacat import transport as transport_module
from datacat.errors import AuthenticationError, NotFoundError, ServerError, TransportError
from datacat.transport import BatchResult, HttpTransport


def create_op(sid: str) -> dict[str, Any]:
    data = {"id": sid, "product": "p", "version": "1"}
    return {"op_id": str(uuid.uuid4()), "op": "create", "session_id": sid, "data": data}


def test_batch_is_applied_once_even_when_sent_twice(server_url: str) -> None:
    transport = HttpTransport(server_url + "/")
    sid = str(uuid.uuid4())
    ops = [
        create_op(sid),
        {"op_id": str(uuid.uuid4()), "op": "event", "session_id": sid, "data": {"name": "e"}},
    ]
    first = transport.send_batch(ops)
    again = transport.send_batch(ops)
    assert first.delivered and (first.applied, first.failed) == (2, [])
    assert (again.applied, again.duplicates) == (0, 2)
    assert len(transport.request("GET", f"/api/sessions/{sid}")["events"]) == 1


def test_per_operation_failures_are_reported(server_url: str) -> None:
    bad = {
        "op_id": str(uuid.uuid4()),
        "op": "event",
        "session_id": str(uuid.uuid4()),
        "data": {"name": "orphan"},
    }
    result = HttpTransport(server_url).send_batch([bad])
    assert result.delivered and result.failed[0]["status"] == 404
    with pytest.raises(NotFoundError):
        result.raise_for_failure()


def test_no_answer_is_status_0_and_retryable() -> None:
    result = HttpTransport("http://127.0.0.1:9", timeout=1).send_batch([])
    assert (result.status, result.retryable, result.delivered) == (0, True, False)
    with pytest.raises(TransportError):
        result.raise_for_failure()


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (500, True),
        (503, True),
        (408, True),
        (429, True),
        (400, False),
        (401, False),
        (404, False),
        (413, False),
    ],
)
def test_statuses_map_to_retry_or_not(status: int, retryable: bool) -> None:
    with Peer("status", status=status) as peer:
        result = HttpTransport(peer.url).send_batch([])
    assert result.status == status and result.retryable is retryable
    assert result.error == f"status {status}"


def test_stalled_answer_times_out_as_retryable() -> None:
    with Peer("stall") as peer:
        start = time.monotonic()
        result = HttpTransport(peer.url, timeout=5).send_batch([], timeout=0.2)
        assert time.monotonic() - start < 3 and result.retryable and result.status == 0


@pytest.mark.parametrize(
    ("header", "low", "high"),
    [("2", 2, 2), ("0.5", 0.5, 0.5), ("date+30", 25, 31), ("soon", None, None)],
)
def test_retry_after_seconds_or_http_date(header: str, low: Any, high: Any) -> None:
    if header == "date+30":
        header = email.utils.formatdate(time.time() + 30, usegmt=True)
    with Peer("status", status=429, headers={"Retry-After": header}) as peer:
        after = HttpTransport(peer.url).send_batch([]).retry_after
    assert after is None if low is None else low <= after <= high


def test_request_raises_our_errors_with_the_server_text(server_factory: Callable[..., Any]) -> None:
    server = server_factory(api_key="secret")
    with pytest.raises(AuthenticationError) as denied:
        HttpTransport(server.url).request("GET", f"/api/sessions/{uuid.uuid4()}")
    assert denied.value.status == 401 and "API key" in str(denied.value)
    keyed = HttpTransport(server.url, api_key="secret")
    with pytest.raises(NotFoundError):
        keyed.request("GET", f"/api/sessions/{uuid.uuid4()}")
    with pytest.raises(ServerError) as invalid:
        keyed.request("POST", "/api/sessions", {"product": 1})
    assert invalid.value.status == 400 and invalid.value.details
    assert isinstance(BatchResult(400).retryable, bool)
    keyed.close()


def test_a_connection_closed_meanwhile_is_reopened_once(server_url: str) -> None:
    transport = HttpTransport(server_url)
    sid = str(uuid.uuid4())
    assert transport.send_batch([create_op(sid)]).delivered
    transport._local.conn.sock.close()  # as a server closing an idle keep-alive connection
    event = {"op_id": str(uuid.uuid4()), "op": "event", "session_id": sid, "data": {"name": "e"}}
    assert transport.send_batch([event]).applied == 1
    transport.close()


def test_with_a_proxy_in_the_environment_batches_go_through_requests(
    server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # requests honours both
    transport = HttpTransport(server_url)
    assert transport.send_batch([create_op(str(uuid.uuid4()))]).applied == 1
    assert transport._local.session is not None
    transport.close()


def test_a_value_json_cannot_hold_is_refused_not_raised() -> None:
    result = HttpTransport("http://127.0.0.1:9").send_batch([{"value": float("nan")}])
    assert (result.status, result.retryable) == (400, False) and "not JSON" in result.error


def _certificate(folder: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (made by the openssl command)."""
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


@contextlib.contextmanager
def tls_front(server_url: str, folder: Path) -> Iterator[tuple[str, str]]:
    """A TLS server in front of the real server (forwards each POST); its URL and CA file."""

    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the client's connection stays to be seen

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            answer = requests.post(server_url + self.path, data=body, headers=dict(self.headers))
            self.send_response(answer.status_code)
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        def log_message(self, *args: Any) -> None:
            pass

    cert, key = _certificate(folder)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()
        server.server_close()


def test_https_urls_go_over_verified_tls_never_plain_http(
    server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with tls_front(server_url, tmp_path) as (url, cert):
        transport = HttpTransport(url, timeout=5)
        refused = transport.send_batch([create_op(str(uuid.uuid4()))])
        assert not refused.delivered and "SSL" in refused.error  # self-signed: not trusted
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", cert)
        transport_module.tls_context.cache_clear()
        trusted = HttpTransport(url, timeout=5)
        assert trusted.send_batch([create_op(str(uuid.uuid4()))]).applied == 1
        assert isinstance(trusted._local.conn.sock, ssl.SSLSocket)
        trusted.close()
    transport_module.tls_context.cache_clear()


class ScriptedServer:
    """A raw TCP server that answers each POST with the next scripted bytes (closing the
    connection after an answer marked so), and keeps the requests it read."""

    def __init__(self, answers: list[tuple[bytes, bool]]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while self.answers:
            conn, _ = self.listener.accept()
            self.connections += 1
            with conn, conn.makefile("rb") as reader:
                while self.answers and self._answer(conn, reader):
                    pass

    def _answer(self, conn: socket.socket, reader: Any) -> bool:
        head = b"".join(iter(lambda: reader.readline(), b"\r\n"))
        if not head:
            return False
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        self.requests.append(head + b"\r\n" + reader.read(length))
        answer, close = self.answers.pop(0)
        conn.sendall(answer)
        return not close


JSON_ONE = b'{"applied": 1, "duplicates": 0, "failed": []}'
LENGTH = b"Content-Length: %d\r\n" % len(JSON_ONE)


@pytest.mark.parametrize(
    ("answer", "close", "applied"),
    [
        (b"HTTP/1.1 200 OK\r\n" + LENGTH + b"\r\n" + JSON_ONE, False, 1),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n" % (10, JSON_ONE[:10])
            + b"%x;ext=1\r\n%s\r\n" % (len(JSON_ONE) - 10, JSON_ONE[10:])
            + b"0\r\nX-Trailer: t\r\n\r\n",
            False,
            1,
        ),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n" + LENGTH + b"\r\n" + JSON_ONE,
            False,
            1,
        ),
        (b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + JSON_ONE, True, 1),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n" + LENGTH + b"\r\n" + JSON_ONE, True, 1),
    ],
    ids=["length", "chunked", "interim-100", "http-1.0-to-the-close", "connection-close"],
)
def test_answers_are_read_by_length_chunks_or_to_the_close(
    answer: bytes, close: bool, applied: int
) -> None:
    """Whatever form the answer takes, it is read whole; a connection the server keeps is used
    for the next batch, one it closes is opened again."""
    server = ScriptedServer([(answer, close), (answer, close)])
    transport = HttpTransport(server.url, api_key="k")
    assert transport.send_batch([{"op": 1}]).applied == applied
    assert transport.send_batch([{"op": 2}]).applied == applied
    assert server.connections == (2 if close else 1)
    first = server.requests[0]
    assert first.startswith(b"POST /api/batch HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nX-API-Key: k\r\n" in first and first.endswith(b'{"operations":[{"op":1}]}')
    transport.close()


def test_an_answer_that_is_not_http_is_no_answer() -> None:
    server = ScriptedServer([(b"SSH-2.0-OpenSSH_9.2\r\n\r\n", True)])
    result = HttpTransport(server.url).send_batch([])
    assert (result.status, result.retryable) == (0, True)
    assert "HttpProtocolError" in result.error


def test_an_error_answer_keeps_its_retry_after() -> None:
    body = b'{"error": "busy"}'
    head = b"HTTP/1.1 503 Busy\r\nretry-AFTER: 7\r\nContent-Length: %d\r\n\r\n" % len(body)
    result = HttpTransport(ScriptedServer([(head + body, False)]).url).send_batch([])
    assert (result.status, result.retry_after, result.error) == (503, 7.0, "busy")
