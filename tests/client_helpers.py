"""Test helpers of the client suite: a misbehaving HTTP peer and session plumbing.

``Peer`` is a real HTTP server (``http.server`` in a thread on a free loopback port) whose answer
the test chooses: a status (500, 429 with ``Retry-After``, 400, ...), a stall until released, or
forwarding to a real DataCat server. It records every request body, so tests count requests and
see exactly what the client sent.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

import datacat
from datacat.client import DatacatClient
from datacat.session import Session

#: Options that make a session fast to test: short intervals, a private spool.
FAST = {"flush_interval": 0.05, "max_backoff": 0.3, "timeout": 2.0, "exit_timeout": 2.0}


class Peer:
    """A loopback HTTP server answering as ``mode`` says: ``"ok"``, ``"status"``, ``"stall"``
    or ``"forward"`` (to ``target``)."""

    def __init__(
        self,
        mode: str = "ok",
        status: int = 500,
        headers: dict[str, str] | None = None,
        target: str | None = None,
    ) -> None:
        self.mode, self.status, self.headers, self.target = mode, status, headers or {}, target
        self.limit: int | None = None  # more operations than this in one request: 413
        self.byte_limit: int | None = None  # a longer body: 413
        # listed in each answer, as a server does ("rows" among them: the client sends rows
        # operations); None: answer as a server that lists none (before rows existed)
        self.lists: list[str] | None = None
        self.refuse_rows = False  # answer each rows operation as a server that knows none
        self.accepted: list[dict[str, Any]] = []  # operations of requests answered 200
        self.bodies: list[Any] = []
        self.times: list[float] = []
        self.release = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Peer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    @property
    def operations(self) -> list[dict[str, Any]]:
        return [op for body in self.bodies for op in (body or {}).get("operations", [])]

    def answer(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        self.bodies.append(json.loads(body) if body else None)
        self.times.append(time.monotonic())
        if self.mode == "stall":
            self.release.wait(30)
        if self.mode == "forward" and self.target:
            reply = requests.post(
                self.target + path,
                data=body,
                timeout=10,
                headers={"Content-Type": "application/json"},
            )
            return reply.status_code, {}, reply.content
        if self.mode == "status":
            error = json.dumps({"error": f"status {self.status}", "details": "peer"}).encode()
            return self.status, self.headers, error
        ops = (json.loads(body) or {}).get("operations", []) if body else []
        too_long = self.byte_limit is not None and len(body) > self.byte_limit
        if too_long or (self.limit is not None and len(ops) > self.limit):
            return 413, {}, json.dumps({"error": "too large", "details": "peer"}).encode()
        failed = [
            {"index": i, "op_id": op.get("op_id"), "status": 400, "error": "invalid field",
             "details": "op must be one of create, state, event, metric, heartbeat, end, crash"}
            for i, op in enumerate(ops) if self.refuse_rows and op.get("op") == "rows"
        ]  # fmt: skip
        self.accepted.extend(op for op in ops if not (self.refuse_rows and op.get("op") == "rows"))
        ok: dict[str, Any] = {"success": not failed, "applied": len(ops) - len(failed),
                              "duplicates": 0, "failed": failed}  # fmt: skip
        if self.lists is not None:
            ok["operations"] = self.lists
        return 200, {}, json.dumps(ok).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, headers, reply = peer.answer(self.path, body)
                try:
                    self.send_response(status)
                    for name, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except OSError:
                    pass  # the client gave up on a stalled answer

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def session_factory(tmp_path: Path) -> Iterator[Callable[..., Session]]:
    """Yields ``make(url, **options)``; afterwards every session made is ended and its sender
    closed (so no thread of one test outlives it)."""
    made: list[Session] = []

    def make(url: str, **options: Any) -> Session:
        options = {**FAST, "spool_dir": str(tmp_path / "spool"), **options}
        options.setdefault("product", "client-tests")
        options.setdefault("version", "1.0")
        session = datacat.create_session(url, **options)
        made.append(session)
        return session

    yield make
    deadline = time.monotonic() + 1.0
    for session in made:
        worker = getattr(session, "_worker", None)
        if worker is not None:
            worker.close(deadline)


def details(url: str, session_id: str) -> dict[str, Any]:
    """The session as the real server has it."""
    return DatacatClient(url).get_session(session_id)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``predicate`` until it is truthy (generous timeout: a loaded 2-core machine)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)
