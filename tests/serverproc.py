"""``ServerProcess``: a real ``datacat server`` in a subprocess on a free loopback port.

Shared by every test that needs a server. ``Api`` parses every JSON answer strictly: a
``NaN``/``Infinity`` in an answer (not JSON; only Python's parser takes it) fails the test.
The process runs in its own process group so ``kill()``
takes gunicorn's master and workers down together (a real ``kill -9`` of the server), and
``restart()`` brings it back on the same port and database.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """``python -m datacat.cli server --port P --db URL`` until ``stop()``."""

    def __init__(
        self,
        db: str,
        *,
        port: int | None = None,
        workers: int = 1,
        threads: int = 4,
        heartbeat_timeout: float | None = None,
        api_key: str | None = None,
        max_body: int | None = None,
        env: dict[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.db = db
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = ["--port", str(self.port), "--db", db, "--workers", str(workers)]
        self.env = {**os.environ, "DATACAT_SERVER_THREADS": str(threads), **(env or {})}
        for name, value in (
            ("HEARTBEAT_TIMEOUT", heartbeat_timeout),
            ("API_KEY", api_key),
            ("MAX_BODY", max_body),
        ):
            if value is not None:
                self.env[f"DATACAT_SERVER_{name}"] = str(value)
        self.log_path = (
            log_dir or Path(os.environ.get("TMPDIR", "/tmp"))
        ) / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> ServerProcess:
        """Start the process and wait until ``/health`` answers."""
        command = [sys.executable, "-m", "datacat.cli", "server", *self.args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        self._wait_healthy(timeout)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log()}")
            try:
                if requests.get(self.url + "/health", timeout=1).ok:
                    return
            except requests.RequestException:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"server did not become healthy in {timeout}s: {self.log()}")

    def log(self) -> str:
        """What the server printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (clean shutdown); SIGKILL the group if it does not exit in time."""
        return self._signal(signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        """SIGKILL the whole process group: master and workers die at once, like ``kill -9``."""
        return self._signal(signal.SIGKILL, 10.0)

    def restart(self, timeout: float = 15.0) -> ServerProcess:
        """Stop (if running) and start again on the same port and database."""
        self.stop()
        return self.start(timeout)

    def _signal(self, signum: int, timeout: float) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        os.killpg(proc.pid, signum)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
        _reap_group(proc.pid)
        return code

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _reap_group(pgid: int) -> None:
    """Make sure no worker of the group outlives its master (they would hold the port)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _not_json(name: str) -> Any:
    raise AssertionError(f"the server answered {name}, which is not JSON")


def strict_json(text: str | bytes) -> Any:
    """``json.loads`` that refuses ``NaN``, ``Infinity`` and ``-Infinity``."""
    return json.loads(text, parse_constant=_not_json)


def check_strict_json(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    """A ``requests`` response hook: every JSON answer must be strict JSON."""
    if response.headers.get("Content-Type", "").startswith("application/json"):
        strict_json(response.content)


class Api:
    """Thin helpers over ``requests`` for the API tests (answers are checked by the caller)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.headers = headers or {}
        self.http = requests.Session()  # keep-alive: a new connection per call is slow
        self.http.hooks["response"].append(check_strict_json)

    def create(self, **body: Any) -> dict[str, Any]:
        """Create a session (product/version defaulted) and return it; asserts 201."""
        body.setdefault("product", "ApiTest")
        body.setdefault("version", "1.0.0")
        response = self.request("POST", "/api/sessions", json=body)
        assert response.status_code == 201, response.text
        session: dict[str, Any] = response.json()
        return session

    def post(self, session_id: str, verb: str, body: Any = None) -> requests.Response:
        """``POST /api/sessions/{id}/{verb}`` with a JSON body."""
        return self.request("POST", f"/api/sessions/{session_id}/{verb}", json=body)

    def get(self, session_id: str) -> dict[str, Any]:
        """The full session; asserts 200."""
        response = self.request("GET", f"/api/sessions/{session_id}")
        assert response.status_code == 200, response.text
        session: dict[str, Any] = response.json()
        return session

    def batch(self, operations: list[dict[str, Any]]) -> requests.Response:
        return self.request("POST", "/api/batch", json={"operations": operations})

    def request(self, method: str, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", 30)
        headers = {**self.headers, **kw.pop("headers", {})}
        return self.http.request(method, self.url + path, headers=headers, **kw)
