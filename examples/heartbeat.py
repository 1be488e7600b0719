"""Heartbeats and the hang watchdog.

    datacat server &                 # or: make run
    python examples/heartbeat.py     # --url http://127.0.0.1:9090

The main loop calls ``session.heartbeat()`` every turn, which arms the watchdog. One turn then
blocks for longer than ``hang_timeout`` (1 s here): the client logs
``application_appears_hung`` with every thread's stack, and ``application_recovered`` when the
loop beats again. A known long operation inside ``pause_hang_detection()`` is not flagged.
``start_heartbeat()`` keeps sending heartbeats from a background thread ("the process is
alive") without feeding the watchdog.
"""

from __future__ import annotations

import argparse
import time

import datacat


def slow_database_call(seconds: float) -> None:
    time.sleep(seconds)  # stands in for a call that hangs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:9090")
    url = parser.parse_args().url
    session = datacat.create_session(url, product="heartbeat-demo", version="1.0", hang_timeout=1.0)
    session.start_heartbeat(interval=0.5)
    for turn in range(6):
        session.heartbeat()
        if turn == 2:
            slow_database_call(2.0)  # hangs: longer than hang_timeout
        elif turn == 4:
            session.pause_hang_detection()
            slow_database_call(1.5)  # known to be long: not a hang
            session.resume_hang_detection()
        else:
            time.sleep(0.1)
    session.end()
    events = [e["name"] for e in session.get_details().get("events", [])]
    print(f"session {session.id} events: {events}")
    print(f"see {url}/sessions/{session.id}")


if __name__ == "__main__":
    main()
