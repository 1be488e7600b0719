"""Crash and hang detection by the local daemon, shown on a real process.

    datacat server &                          # or: make run
    python examples/crash_detection.py        # --url http://127.0.0.1:9090

It starts a small app that reports through the local daemon (``daemon=True``; also
``DATACAT_DAEMON=1`` or ``datacat run --daemon``) and sends heartbeats, then:

1. stops it with SIGSTOP: its heartbeats stop, the daemon logs ``application_appears_hung``;
2. resumes it with SIGCONT: the next heartbeat logs ``application_recovered``;
3. kills it with SIGKILL: no exit hook runs, the pipe closes, the daemon sends ``/crash`` with
   reason ``parent_process_terminated`` (and keeps it for later if the server is down).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import datacat

APP = """
import time, datacat
session = datacat.create_session(daemon=True, product="crash-demo", version="1.0",
                                 heartbeat_interval=0.2, hang_timeout=1.0)
session.start_heartbeat()
time.sleep(0.5)
session.flush(5)
print(session.id, flush=True)
while True:
    time.sleep(1)
"""


def wait_until(check: Callable[[], Any], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"did not see {what} within {timeout} s")
        time.sleep(0.1)
    print(f"  server saw: {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:9090")
    url = parser.parse_args().url
    client = datacat.DatacatClient(url)
    env = {**os.environ, "DATACAT_URL": url}
    app = subprocess.Popen([sys.executable, "-c", APP], stdout=subprocess.PIPE, text=True, env=env)
    assert app.stdout is not None
    sid = app.stdout.readline().strip()
    print(f"app pid {app.pid}, session {sid}")

    print("SIGSTOP: the app freezes")
    app.send_signal(signal.SIGSTOP)
    wait_until(lambda: client.get_session(sid)["hung"], "the session is hung")
    print("SIGCONT: the app resumes")
    app.send_signal(signal.SIGCONT)
    wait_until(lambda: not client.get_session(sid)["hung"], "the session recovered")
    print("SIGKILL: the app dies without a word")
    app.kill()
    app.wait()
    wait_until(lambda: client.get_session(sid)["crashed"], "the session crashed")
    print(f"see {url}/sessions/{sid}")


if __name__ == "__main__":
    main()
