"""The client's examples run against a real server and show what they promise."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client_helpers import details, wait_for
from serverproc import free_port

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_basic(server_url: str) -> None:
    out = run(str(EXAMPLES / "basic.py"), "--url", server_url)
    assert "'status': 'done'" in out and "2 events, 4 metrics" in out


def test_event_rows(server_url: str) -> None:
    out = run(str(EXAMPLES / "event_rows.py"), "--url", server_url)
    assert ": 200 events, 200 metrics" in out  # a timer per row, never folded
    assert "first: job-0 {'job': 'job-0', 'worker': 'w0', 'attempts': 1, 'outcome': 'ok'}" in out


def test_heartbeat_reports_one_hang_and_its_recovery(server_url: str) -> None:
    out = run(str(EXAMPLES / "heartbeat.py"), "--url", server_url)
    assert "['application_appears_hung', 'application_recovered']" in out


def test_offline_then_replay(server_factory: Callable[..., Any], tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = run(str(EXAMPLES / "offline.py"), "--url", url, "--spool-dir", str(tmp_path))
    assert "delivered now: False" in first
    sid = first.split()[1].rstrip(":")
    server_factory(port=port)
    second = run(
        str(EXAMPLES / "offline.py"), "--url", url, "--spool-dir", str(tmp_path), "--replay"
    )
    assert "spool replayed and session ended" in second
    assert not list(tmp_path.glob("*/*.batch.json"))
    got = details(url, sid)
    assert [e["data"]["step"] for e in got["events"]] == list(range(10))
    assert got["state"]["step"] == 9 and got["ended_at"]


def test_process_sender_delivers_everything_and_a_kill_is_a_crash(server_url: str) -> None:
    out = run(str(EXAMPLES / "process_sender.py"), "--url", server_url)
    assert "delivered: True" in out and "holds 20000 events; status ended" in out
    killed = subprocess.run(
        [sys.executable, str(EXAMPLES / "process_sender.py"), "--url", server_url, "--kill"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr
    sid = killed.stdout.split()[1].rstrip(":")
    got = wait_for(lambda: (found := details(server_url, sid))["crashed"] and found, 15)
    assert got["crash_reason"] == "parent_process_terminated"


def test_track(server_url: str) -> None:
    """``examples/track.py`` reads its server from ``DATACAT_URL``, as its docstring says."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "track.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "DATACAT_URL": server_url},
    )
    assert done.returncode == 0, done.stderr
    assert "timer __main__.fetch           x1" in done.stdout
    assert "event exception: LookupError: item 3 is missing" in done.stdout
    assert "second session crashed: RuntimeError: the block failed" in done.stdout


def test_autoinstrument(server_url: str) -> None:
    out = run(str(EXAMPLES / "autoinstrument.py"), "--url", server_url)
    assert "GET /checkout -> 500" in out
    sid = out.strip().splitlines()[-1].rsplit("/", 1)[1]
    names = {event["name"] for event in details(server_url, sid)["events"]}
    assert {"log", "exception", "http_request_exception"} <= names


def test_crash_detection_shows_a_hang_a_recovery_and_a_crash(server_url: str) -> None:
    out = run(str(EXAMPLES / "crash_detection.py"), "--url", server_url)
    for seen in ("the session is hung", "the session recovered", "the session crashed"):
        assert f"server saw: {seen}" in out
