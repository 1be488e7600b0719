"""Read-back helpers for the auto-instrumentation, runner and daemon tests.

Everything is read from the real server over HTTP, as a user would see it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import requests

T = TypeVar("T")
PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent


def get(url: str, path: str) -> Any:
    response = requests.get(url + path, timeout=10)
    response.raise_for_status()
    return response.json()


def wait_for(probe: Callable[[], T | None], timeout: float = 15.0, what: str = "") -> T:
    """Poll ``probe`` until it returns something truthy (generous bound: a loaded CI box)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except requests.RequestException:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or probe}")
        time.sleep(0.05)


def session(url: str, sid: str) -> dict[str, Any]:
    return dict(get(url, f"/api/sessions/{sid}"))


def events(url: str, sid: str, name: str | None = None) -> list[dict[str, Any]]:
    found = get(url, f"/api/sessions/{sid}/events")
    return [e for e in found if name is None or e["name"] == name]


def metrics(url: str, sid: str, name: str | None = None) -> list[dict[str, Any]]:
    found = get(url, f"/api/sessions/{sid}/metrics")
    return [m for m in found if name is None or m["name"] == name]


def event_named(url: str, sid: str, name: str, timeout: float = 15.0) -> dict[str, Any]:
    return wait_for(lambda: next(iter(events(url, sid, name)), None), timeout, f"event {name}")


def sessions_of(url: str, product: str) -> list[dict[str, Any]]:
    return list(get(url, f"/api/data/sessions?product={product}"))


def run_python(
    code: str, tmp_path: Path, env: dict[str, str] | None = None, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as a script file in a fresh interpreter (real process, captured output)."""
    script = tmp_path / "script.py"
    script.write_text(code)
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [PYTHON, str(script)], env=full_env, capture_output=True, text=True, timeout=60, **kw
    )


def client_env(url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment for a child program reporting to ``url`` with its own spool."""
    return {
        "DATACAT_URL": url,
        "DATACAT_SPOOL_DIR": str(tmp_path / "spool"),
        "DATACAT_FLUSH_INTERVAL": "0.05",
        **extra,
    }


def new_session(url: str, tmp_path: Path, **options: Any) -> Any:
    """A real client session with a short flush interval and a spool of its own."""
    import datacat

    options = {"flush_interval": 0.05, "spool_dir": str(tmp_path / "spool"), **options}
    return datacat.create_session(url=url, product="autoinstrument-test", version="1", **options)


@contextlib.contextmanager
def instrumented(url: str, tmp_path: Path, targets: list[str]) -> Iterator[Any]:
    """A real session with ``targets`` instrumented for it; all undone and ended afterwards."""
    from datacat import autoinstrument

    s = new_session(url, tmp_path)
    autoinstrument.instrument(targets, session=s)
    try:
        yield s
    finally:
        autoinstrument.uninstrument()
        s.end()
