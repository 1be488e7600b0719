"""The excepthook target: uncaught exceptions in threads, asyncio and the main thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from autoinstrument_helpers import (
    client_env,
    event_named,
    events,
    instrumented,
    run_python,
    session,
    wait_for,
)
from autoinstrument_helpers import new_session as make_session

from datacat import autoinstrument


@pytest.fixture
def dc_session(server_url: str, tmp_path: Path) -> Iterator[Any]:
    with instrumented(server_url, tmp_path, ["excepthook"]) as s:
        yield s


def test_thread_exceptions_become_events_and_the_old_hook_still_runs(
    server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.thread.name))
    s = make_session(server_url, tmp_path)
    autoinstrument.instrument(["excepthook"], session=s)
    try:
        worker = threading.Thread(target=lambda: 1 / 0, name="worker-7")
        worker.start()
        worker.join()
    finally:
        autoinstrument.uninstrument()
    assert seen == ["worker-7"]
    assert s.flush(10)
    event = event_named(server_url, s.id, "exception")
    assert event["exception_type"] == "ZeroDivisionError"
    assert event["data"] == {"thread": "worker-7", "source": "thread"}
    s.end()
    assert not session(server_url, s.id)["crashed"]  # a thread dying does not crash the app


def test_asyncio_exceptions_nobody_handled_become_events(dc_session: Any, server_url: str) -> None:
    async def main() -> None:
        asyncio.get_running_loop().call_soon(lambda: 1 / 0)
        await asyncio.sleep(0.01)

    asyncio.run(main())
    assert dc_session.flush(10)
    event = event_named(server_url, dc_session.id, "exception")
    assert event["exception_type"] == "ZeroDivisionError"
    assert event["data"]["source"] == "asyncio"


CRASHING = """
import sys
import datacat
from datacat import autoinstrument
s = autoinstrument.instrument(["excepthook"], session=datacat.create_session())
print(s.id, flush=True)
raise ValueError("fatal")
"""


def test_an_uncaught_main_thread_exception_crashes_the_session(
    server_url: str, tmp_path: Path
) -> None:
    done = run_python(CRASHING, tmp_path, client_env(server_url, tmp_path))
    assert done.returncode == 1
    assert "ValueError: fatal" in done.stderr  # the interpreter's own hook still printed it
    sid = done.stdout.strip()
    crashed = wait_for(lambda: session(server_url, sid)["crashed"] or None, what="crash")
    assert crashed
    event = event_named(server_url, sid, "exception")
    assert (event["exception_type"], event["level"]) == ("ValueError", "critical")


def test_an_exception_track_recorded_is_not_logged_again_by_the_thread_hook(
    server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datacat

    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # keep pytest's output clean
    s = make_session(server_url, tmp_path)

    @datacat.track(session=s)
    def fail() -> None:
        raise LookupError("gone")

    autoinstrument.instrument(["excepthook"], session=s)
    try:
        worker = threading.Thread(target=fail, name="worker-8")
        worker.start()
        worker.join()
    finally:
        autoinstrument.uninstrument()
    assert s.flush(10)
    (event,) = [e for e in events(server_url, s.id) if e.get("exception_type")]
    assert event["exception_type"] == "LookupError" and "function" in event["data"]  # track's
    s.end()
