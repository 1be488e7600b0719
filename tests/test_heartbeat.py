"""Heartbeats and the hang watchdog, against the real server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from client_helpers import details, session_factory, wait_for
from fork_helpers import lock_free_in_forked_child, run_script

import datacat
from datacat.heartbeat import thread_stacks
from datacat.limits import HUNG_EVENT, RECOVERED_EVENT
from datacat.session import Session

Make = Callable[..., Session]
TIMEOUT = 0.2


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    yield from session_factory(tmp_path)


def names(url: str, session: Session) -> list[str]:
    session.flush(10)
    return [e["name"] for e in details(url, session.id)["events"]]


def stuck_in_a_long_loop(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)


def test_hang_is_reported_with_the_stuck_threads_stack_then_recovery(
    make: Make, server_url: str
) -> None:
    session = make(server_url, hang_timeout=TIMEOUT)
    session.heartbeat()
    stuck_in_a_long_loop(TIMEOUT * 6)
    assert wait_for(lambda: HUNG_EVENT in names(server_url, session))
    assert details(server_url, session.id)["hung"] is True
    session.heartbeat()
    assert wait_for(lambda: RECOVERED_EVENT in names(server_url, session))
    got = details(server_url, session.id)
    assert got["hung"] is False
    hung = [e for e in got["events"] if e["name"] == HUNG_EVENT]
    assert len(hung) == 1 and any("stuck_in_a_long_loop" in line for line in hung[0]["stacktrace"])
    threads = hung[0]["data"]["threads"]
    assert any(name.startswith("MainThread") for name in threads)
    assert hung[0]["data"]["seconds_since_heartbeat"] > TIMEOUT


def test_a_session_that_never_beats_is_never_hung(make: Make, server_url: str) -> None:
    session = make(server_url, hang_timeout=TIMEOUT)
    session.send_heartbeat()  # background-style heartbeats do not arm the watchdog
    time.sleep(TIMEOUT * 5)
    assert HUNG_EVENT not in names(server_url, session)


def test_paused_detection_reports_nothing(make: Make, server_url: str) -> None:
    session = make(server_url, hang_timeout=TIMEOUT)
    session.heartbeat()
    session.pause_hang_detection()
    stuck_in_a_long_loop(TIMEOUT * 5)
    session.resume_hang_detection()
    session.heartbeat()
    assert HUNG_EVENT not in names(server_url, session)


def test_background_heartbeats_reach_the_server_until_stopped(make: Make, server_url: str) -> None:
    session = make(server_url)
    session.start_heartbeat(interval=0.05)

    def beats() -> Any:
        session.flush(10)
        return details(server_url, session.id)["last_heartbeat"]

    first = wait_for(beats)
    assert first and wait_for(lambda: beats() != first)
    session.stop_heartbeat()
    time.sleep(0.2)
    assert not any(t.name == "datacat-heartbeat" and t.is_alive() for t in threading.enumerate())


def test_ended_session_stops_watching(make: Make, server_url: str) -> None:
    session = make(server_url, hang_timeout=TIMEOUT)
    session.heartbeat()
    assert session.end()
    stuck_in_a_long_loop(TIMEOUT * 4)
    assert HUNG_EVENT not in [e["name"] for e in details(server_url, session.id)["events"]]


def test_thread_stacks_cover_every_thread() -> None:
    ready, done = threading.Event(), threading.Event()

    def parked() -> None:
        ready.set()
        done.wait(5)

    thread = threading.Thread(target=parked, name="parked-thread")
    thread.start()
    ready.wait(5)
    try:
        stacks = thread_stacks()
    finally:
        done.set()
        thread.join()
    key = next(k for k in stacks if k.startswith("parked-thread"))
    assert any("parked" in line for line in stacks[key])
    assert any(k.startswith("MainThread") for k in stacks)


def test_background_heartbeats_do_not_end_a_hang(make: Make, server_url: str) -> None:
    session = make(server_url, hang_timeout=TIMEOUT)
    session.start_heartbeat(interval=0.02)
    session.heartbeat()
    stuck_in_a_long_loop(TIMEOUT * 6)
    session.heartbeat()
    session.stop_heartbeat()
    events = names(server_url, session)
    assert events.count(HUNG_EVENT) == 1 and events.count(RECOVERED_EVENT) == 1


CHILD_HANG_SCRIPT = """
import os, sys, time, datacat
s = datacat.create_session(sys.argv[1], spool_dir="", flush_interval=0.05, hang_timeout=0.2)
s.heartbeat()
s.pause_hang_detection()  # the parent's own watchdog stays quiet
assert s.flush(10)
pid = os.fork()
if pid == 0:
    s.resume_hang_detection()
    s.heartbeat()
    deadline = time.monotonic() + 10  # the child's main loop stops turning
    while not s._monitor.hung and time.monotonic() < deadline:
        time.sleep(0.02)
    os._exit(0 if s.flush(10) else 1)
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
s.end(10)
print(s.id, code)
"""


def test_a_forked_child_that_beats_is_watched_for_hangs(server_url: str) -> None:
    """Regression: the child's new watchdog did not watch the sessions it inherited, so hang
    detection was silently off in a forked child."""
    sid, child_code = run_script(CHILD_HANG_SCRIPT, server_url).split()
    assert child_code == "0"
    assert HUNG_EVENT in [e["name"] for e in details(server_url, sid)["events"]]


def test_a_monitors_lock_is_free_in_a_forked_child() -> None:
    setup = "import datacat.heartbeat as hb\nclass S: pass\ns = S()\n"
    setup += "m = hb.HangMonitor(s, 60.0)\nhb.watchdog.add(m)"
    assert lock_free_in_forked_child(setup, "m._lock")


def test_a_blocking_sessions_heartbeat_thread_survives_an_unreachable_server(
    server_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    server = server_factory()
    session = datacat.create_session(server.url, blocking=True, spool_dir="", timeout=1.0)
    server.kill()
    session.start_heartbeat(0.02)
    beater = session._beater
    assert beater is not None
    assert wait_for(lambda: "background heartbeat failed" in caplog.text)
    time.sleep(0.1)  # several more failed beats
    assert beater.thread.is_alive()
    assert caplog.text.count("background heartbeat failed") == 1  # logged once
    session.stop_heartbeat()
