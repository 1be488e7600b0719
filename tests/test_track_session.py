"""``datacat.session()``, ``datacat.timer``, ``datacat.current_session`` and the default session,
against the real client and a real server (read back with HTTP GETs)."""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from track_helpers import TEST_OPTIONS, exceptions, fetch, timings

import datacat

# ``datacat.track`` is the decorator; the module of the same name is reached through importlib.
track_module = importlib.import_module("datacat.track")

PRODUCT = "track-session-tests"


@datacat.track("work")
def work() -> None:
    pass


@datacat.track("async.work")
async def async_work() -> None:
    await asyncio.sleep(0)


def scope(server_url: str, **kw: Any) -> Any:
    return datacat.session(server_url, product=PRODUCT, **{**TEST_OPTIONS, **kw})


@pytest.fixture(autouse=True)
def no_default_session(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No ``DATACAT_URL`` here, and a default session resolved afresh by each test."""
    monkeypatch.delenv("DATACAT_URL", raising=False)
    monkeypatch.setattr(track_module, "_default", track_module._UNRESOLVED)
    yield


def test_the_block_runs_in_a_new_current_session_ended_on_exit(server_url: str) -> None:
    assert datacat.current_session() is None
    with scope(server_url, version="1.2", state={"stage": "load"}) as session:
        assert datacat.current_session() is session
        work()
    assert datacat.current_session() is None
    details = fetch(server_url, session.id)
    assert details["status"] == "ended"
    assert details["state"] == {"product": PRODUCT, "version": "1.2", "stage": "load"}
    assert timings(fetch(server_url, session.id, "metrics"), "work") == {
        "ok": (1, pytest.approx(0, abs=1))
    }


def test_an_escaping_exception_crashes_the_session_and_propagates(server_url: str) -> None:
    error = KeyError("missing")

    @datacat.track
    def fails() -> None:
        raise error

    with pytest.raises(KeyError) as caught, scope(server_url) as session:
        fails()
    assert caught.value is error
    details = fetch(server_url, session.id)
    assert details["crashed"] is True
    assert "KeyError" in details["crash_reason"]
    recorded = exceptions(fetch(server_url, session.id, "events"))
    assert [e["exception_type"] for e in recorded] == ["KeyError"]  # once, not per frame


def test_a_clean_system_exit_ends_the_session_without_a_crash(server_url: str) -> None:
    with pytest.raises(SystemExit), scope(server_url) as session:
        sys.exit(0)
    assert fetch(server_url, session.id)["status"] == "ended"


def test_sessions_nest_and_the_inner_one_is_current_inside(server_url: str) -> None:
    with scope(server_url) as outer:
        work()
        with scope(server_url) as inner:
            assert datacat.current_session() is inner
            work()
            work()
        assert datacat.current_session() is outer
        work()
    assert timings(fetch(server_url, outer.id, "metrics"), "work")["ok"][0] == 2
    assert timings(fetch(server_url, inner.id, "metrics"), "work")["ok"][0] == 2


def test_asyncio_tasks_see_the_session_of_their_block(server_url: str) -> None:
    async def job(calls: int) -> Any:
        async with scope(server_url) as session:
            for _ in range(calls):
                await asyncio.gather(async_work(), asyncio.create_task(async_work()))
            assert datacat.current_session() is session
        return session

    async def main() -> list[Any]:
        return await asyncio.gather(job(1), job(3))

    one, three = asyncio.run(main())
    assert timings(fetch(server_url, one.id, "metrics"), "async.work")["ok"][0] == 2
    assert timings(fetch(server_url, three.id, "metrics"), "async.work")["ok"][0] == 6


def test_one_scope_and_one_timer_object_serve_concurrent_tasks(server_url: str) -> None:
    shared_scope, shared_timer = scope(server_url), datacat.timer("shared")

    async def job(pause: float) -> Any:
        async with shared_scope as session, shared_timer:
            await asyncio.sleep(pause)  # the first to enter is the first to leave
            assert datacat.current_session() is session
        return session

    async def main() -> list[Any]:
        return await asyncio.gather(job(0.01), job(0.2))

    fast, slow = asyncio.run(main())
    assert slow is not fast
    for session, pause in ((slow, 0.2), (fast, 0.01)):
        assert fetch(server_url, session.id)["status"] == "ended"
        count, seconds = timings(fetch(server_url, session.id, "metrics"), "shared")["ok"]
        assert count == 1 and pause * 0.9 <= seconds < 10


def test_threads_started_with_a_copied_context_see_the_session(server_url: str) -> None:
    seen: dict[str, Any] = {}

    def look(key: str) -> None:
        seen[key] = datacat.current_session()
        work()

    with scope(server_url) as session:
        copied = threading.Thread(target=contextvars.copy_context().run, args=(look, "copied"))
        plain = threading.Thread(target=look, args=("plain",))
        for thread in (copied, plain):
            thread.start()
            thread.join()
    assert seen == {"copied": session, "plain": None}
    assert timings(fetch(server_url, session.id, "metrics"), "work")["ok"][0] == 1


def test_timer_times_a_block_and_a_function_into_the_current_session(server_url: str) -> None:
    @datacat.timer("timed.function", tags={"part": "f"})
    def timed() -> None:
        time.sleep(0.02)

    with datacat.timer("outside"):  # no session: nothing to record into, nothing breaks
        pass
    with scope(server_url) as session:
        with datacat.timer("timed.block"):
            time.sleep(0.02)
        timed()
    metrics = fetch(server_url, session.id, "metrics")
    for name in ("timed.block", "timed.function"):
        count, seconds = timings(metrics, name)["ok"]
        assert count == 1 and 0.018 <= seconds < 10
    assert next(m for m in metrics if m["name"] == "timed.function")["tags"]["part"] == "f"


def test_a_session_set_as_default_is_used_outside_any_block(server_url: str) -> None:
    session = datacat.create_session(server_url, product=PRODUCT, **TEST_OPTIONS)
    track_module.set_default_session(session)
    assert datacat.current_session() is session
    work()
    track_module.flush_timings()
    session.end()
    assert timings(fetch(server_url, session.id, "metrics"), "work")["ok"][0] == 1


DEFAULT_SCRIPT = """
import threading
import datacat

@datacat.track("default.work")
def work():
    pass

for _ in range(3):
    work()
thread = threading.Thread(target=work)
thread.start()
thread.join()
assert datacat.current_session() is datacat.current_session()
print(datacat.current_session().id)
"""


@pytest.mark.parametrize("how", ["script", "module"])
def test_the_default_session_is_created_once_and_ended_at_exit(
    server_url: str, tmp_path: Path, how: str
) -> None:
    name = f"default_{uuid.uuid4().hex[:8]}"  # the product: named after the script or package
    if how == "script":
        (tmp_path / f"{name}.py").write_text(DEFAULT_SCRIPT)
        command = [sys.executable, str(tmp_path / f"{name}.py")]
    else:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__main__.py").write_text(DEFAULT_SCRIPT)
        command = [sys.executable, "-m", name]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATACAT_")}
    env.update(DATACAT_URL=server_url, DATACAT_SPOOL_DIR="", DATACAT_VERSION="9")
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    listed = requests.get(
        f"{server_url}/api/data/sessions", params={"product": name}, timeout=10
    ).json()
    assert [s["id"] for s in listed] == [done.stdout.strip()]  # exactly one session
    details = fetch(server_url, listed[0]["id"])
    assert details["status"] == "ended"
    assert details["state"]["version"] == "9"
    assert timings(fetch(server_url, details["id"], "metrics"), "default.work")["ok"][0] == 4


CLASH_SCRIPT = """
import datacat.session, datacat.track  # the submodules of the same names, imported last
import datacat
from datacat.track import session, track
assert datacat.session is session and datacat.track is track, (datacat.session, datacat.track)
with datacat.session("http://127.0.0.1:9", spool_dir="", exit_timeout=0.1) as s:
    assert isinstance(s, datacat.Session)
"""


def test_importing_the_submodules_never_hides_the_functions_of_the_same_name() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CLASH_SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
