"""The local daemon with real processes: an app using ``daemon=True``, killed, stopped, resumed.

Every app here is a real Python process started in its own process group; what the daemon
reports is read back from a real server over HTTP.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from autoinstrument_helpers import PYTHON, client_env, event_named, events, session, wait_for

from datacat import daemon
from datacat.daemon import CRASH_REASON
from datacat.limits import HUNG_EVENT, RECOVERED_EVENT

APP = """
import sys, time
import datacat
s = datacat.create_session(daemon=True, product="daemon-test", heartbeat_interval=0.1)
s.start_heartbeat()
s.log_event("started")
time.sleep(0.3)  # a few heartbeats: the daemon watches a session once it has beaten
s.flush(10)
print(s.id, s._worker.transport.daemon_pid, flush=True)
if sys.argv[1:] == ["os._exit"]:
    import os
    os._exit(3)  # no exit hook, no end: like a segfault, as far as DataCat can tell
if sys.argv[1:] != ["exit"]:
    time.sleep(120)
"""


class App:
    """The app process, its session id and its daemon's pid."""

    def __init__(self, url: str, tmp_path: Path, *args: str, code: str = APP, **env: str) -> None:
        script = tmp_path / "app.py"
        script.write_text(code)
        env = {**os.environ, **client_env(url, tmp_path, DATACAT_HANG_TIMEOUT="1", **env)}
        env["DATACAT_DAEMON_LOG"] = str(tmp_path / "daemon.log")
        self.proc = subprocess.Popen(
            [PYTHON, str(script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        sid, daemon_pid = self.proc.stdout.readline().split()
        self.sid, self.daemon_pid = sid, int(daemon_pid)

    def tell(self, line: str) -> None:
        """A line on the app's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def close(self) -> None:
        self.signal_group(signal.SIGCONT)
        self.signal_group(signal.SIGKILL)
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[Callable[..., App]]:
    apps: list[App] = []

    def start(url: str, *args: str, code: str = APP, **env: str) -> App:
        apps.append(App(url, tmp_path, *args, code=code, **env))
        return apps[-1]

    yield start
    for app in apps:
        app.close()


def crashed(url: str, sid: str) -> dict[str, Any] | None:
    found = session(url, sid)
    return found if found["crashed"] else None


def alive(pid: int) -> bool:
    """The process runs (a zombie nobody reaped yet has exited: it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_kill_9_of_the_app_process_group_crashes_the_session(
    start_app: Callable[..., App], server_url: str
) -> None:
    app = start_app(server_url)
    app.signal_group(signal.SIGKILL)  # the daemon runs in a session of its own: it survives
    wait_for(lambda: crashed(server_url, app.sid), timeout=5, what="crash within 5 s")
    event = event_named(server_url, app.sid, "session_crashed_detected")
    assert CRASH_REASON in str(event)
    wait_for(lambda: not alive(app.daemon_pid), what="the daemon to exit")


def test_os_exit_crashes_the_session(start_app: Callable[..., App], server_url: str) -> None:
    app = start_app(server_url, "os._exit")
    assert app.proc.wait(30) == 3
    wait_for(lambda: crashed(server_url, app.sid), timeout=5, what="crash within 5 s")


def test_sigstop_is_a_hang_and_sigcont_a_recovery(
    start_app: Callable[..., App], server_url: str
) -> None:
    app = start_app(server_url)
    app.signal_group(signal.SIGSTOP)
    hung = event_named(server_url, app.sid, "application_appears_hung")
    assert hung["data"]["pid"] == app.proc.pid
    assert session(server_url, app.sid)["hung"]
    app.signal_group(signal.SIGCONT)
    event_named(server_url, app.sid, "application_recovered")
    assert not session(server_url, app.sid)["hung"]
    assert not session(server_url, app.sid)["crashed"]


def test_a_normal_exit_ends_the_session_and_the_daemon(
    start_app: Callable[..., App], server_url: str
) -> None:
    app = start_app(server_url, "exit")
    assert app.proc.wait(30) == 0
    ended = wait_for(lambda: session(server_url, app.sid)["ended_at"], what="end")
    assert ended and not session(server_url, app.sid)["crashed"]
    wait_for(lambda: not alive(app.daemon_pid), what="the daemon to exit")


JAMMED_EXIT_APP = """
import sys, datacat
s = datacat.create_session(daemon=True, product="daemon-test", exit_timeout=6)
s.flush(10)
print(s.id, s._worker.transport.daemon_pid, flush=True)
sys.stdin.readline()  # meanwhile the test stops the daemon
for i in range(300):
    s.log_event("padded", {"i": i, "pad": "x" * 1000})  # 300 KB: far more than a pipe holds
s.flush(0.5)
print("exiting", flush=True)  # no end(): the exit hook ends the session
"""


def test_an_exit_while_the_pipe_is_full_waits_for_the_daemon_within_the_deadline(
    start_app: Callable[..., App], server_url: str
) -> None:
    """Regression: the exit gave up on a full pipe at once and left a line half written; the
    daemon never saw the end and reported a crash."""
    app = start_app(server_url, code=JAMMED_EXIT_APP)
    os.kill(app.daemon_pid, signal.SIGSTOP)
    app.tell("go")
    assert app.proc.stdout is not None
    assert app.proc.stdout.readline().strip() == "exiting"
    time.sleep(0.5)  # the app is in its exit hook, waiting on the pipe (for up to 3 s)
    os.kill(app.daemon_pid, signal.SIGCONT)
    assert app.proc.wait(30) == 0
    wait_for(lambda: session(server_url, app.sid)["ended_at"], what="end")
    assert not session(server_url, app.sid)["crashed"]
    wait_for(lambda: len(events(server_url, app.sid, "padded")) == 300, what="every event")


def test_the_crash_reaches_a_server_that_was_down(
    start_app: Callable[..., App], server_factory: Callable[..., Any]
) -> None:
    server = server_factory()
    app = start_app(server.url, DATACAT_MAX_BACKOFF="0.2")
    server.kill()
    app.signal_group(signal.SIGKILL)
    time.sleep(0.5)  # the daemon tries, fails, spools and keeps retrying
    server.start()
    wait_for(lambda: crashed(server.url, app.sid), what="crash after the server came back")


BEATING_APP = """
import sys, threading, time, datacat
s = datacat.create_session(daemon=True, product="daemon-test")
stall, stop = threading.Event(), threading.Event()
def read():
    for line in sys.stdin:
        (stall if line.strip() == "stall" else stop).set()
threading.Thread(target=read, daemon=True).start()
s.heartbeat()
s.flush(10)
print(s.id, s._worker.transport.daemon_pid, flush=True)
while not stop.is_set():
    s.heartbeat()  # the app's own main loop: its in-process watchdog watches it too
    if stall.is_set():
        stall.clear()
        time.sleep(2.5)  # stuck while the process runs: both watchdogs see it
    time.sleep(0.05)
s.end()
"""


@pytest.mark.parametrize("how", ["sigstop", "stall"])
def test_an_app_that_beats_itself_gets_one_hang_and_one_recovery(
    how: str, start_app: Callable[..., App], server_url: str
) -> None:
    """Regression: the in-process watchdog and the daemon both reported the hang (and both the
    recovery). A stall shows it every time; after SIGSTOP/SIGCONT when the app's watchdog looks
    before its main loop beats, or when a heartbeat made before the stop arrives late."""
    app = start_app(server_url, code=BEATING_APP)
    if how == "sigstop":
        app.signal_group(signal.SIGSTOP)
        event_named(server_url, app.sid, HUNG_EVENT)  # the daemon's
        app.signal_group(signal.SIGCONT)
    else:
        app.tell("stall")
    event_named(server_url, app.sid, RECOVERED_EVENT)
    time.sleep(0.75)  # the app's watchdog (4 checks per hang_timeout) has had its turn
    app.tell("stop")
    assert app.proc.wait(30) == 0
    wait_for(lambda: session(server_url, app.sid)["ended_at"], what="end")
    names = [e["name"] for e in events(server_url, app.sid)]
    assert [n for n in names if n in (HUNG_EVENT, RECOVERED_EVENT)] == [
        HUNG_EVENT,
        RECOVERED_EVENT,
    ]


QUIET_APP = """
import time, datacat
s = datacat.create_session(daemon=True, product="daemon-test")  # no heartbeats at all
s.log_event("started")
s.flush(10)
print(s.id, s._worker.transport.daemon_pid, flush=True)
time.sleep(120)
"""


def test_a_session_without_heartbeats_gets_crash_detection_only(
    start_app: Callable[..., App], server_url: str
) -> None:
    """As the README says: hang watching starts at the first heartbeat."""
    app = start_app(server_url, code=QUIET_APP)
    app.signal_group(signal.SIGSTOP)
    time.sleep(1.6)  # past hang_timeout (1 s): several of the daemon's checks
    app.signal_group(signal.SIGKILL)
    wait_for(lambda: crashed(server_url, app.sid), timeout=5, what="crash within 5 s")
    assert not events(server_url, app.sid, HUNG_EVENT)


@pytest.mark.parametrize(
    ("line", "count"),
    [
        (b'{"operations": [{"op": "heartbeat"}, 3]}\n', 1),
        (b'{"operations": [{"op": "hea', 0),  # torn: the app died mid-write
        (b"[1, 2]\n", 0),
        (b'{"hello": {}}\n', 0),
    ],
)
def test_lines_that_are_not_batches_are_skipped(line: bytes, count: int) -> None:
    assert len(daemon._operations(line)) == count


def test_the_options_come_from_the_app_not_the_daemon_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATACAT_URL", "http://daemon-env.invalid:1")
    line = b'{"hello": {"url": "http://app:2", "hang_timeout": 3}}\n'
    hello = daemon.read_hello(io.BytesIO(line))
    config = daemon.config_from(hello)
    assert (config.url, config.hang_timeout) == ("http://app:2", 3.0)
    assert daemon.read_hello(io.BytesIO(b"")) == {}  # the app died before saying hello


def test_a_watch_reports_a_hang_once_and_the_recovery_once() -> None:
    watch = daemon.Watch()
    assert watch.newly_hung(100.0, timeout=1) is None  # never beat: never hung
    assert watch.beat(100.0) is None
    assert watch.newly_hung(100.5, timeout=1) is None
    assert watch.newly_hung(102.0, timeout=1) == 2.0
    assert watch.newly_hung(103.0, timeout=1) is None  # already reported
    assert watch.beat(104.0) == 4.0
    assert watch.beat(104.1) is None


def test_a_watch_drops_the_apps_duplicates_and_late_heartbeats() -> None:
    watch = daemon.Watch()
    watch.beat(100.0)
    assert watch.newly_hung(102.0, timeout=1) == 2.0
    assert watch.stale(watch.hung_at - 5)  # made before the daemon's report, delivered after
    assert not watch.stale(watch.hung_at + 1)
    assert watch.app_reported(HUNG_EVENT, 102.1) is False  # the daemon reported it already
    assert watch.app_reported("something else", 102.2) is True
    assert watch.app_reported(RECOVERED_EVENT, 103.0) is True
    assert watch.app_reported(RECOVERED_EVENT, 103.1) is False
    assert watch.beat(103.2) is None  # no second recovery
    assert watch.app_reported(HUNG_EVENT, 110.0) is True  # a hang only the app saw
    assert watch.newly_hung(120.0, timeout=1) is None  # reported once
