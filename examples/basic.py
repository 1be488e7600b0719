"""The client's verbs in one short run: state, events, an exception, metrics, a timer.

    datacat server &                 # or: make run
    python examples/basic.py         # --url http://127.0.0.1:9090

Every call only queues; one background thread sends batches. ``session.end()`` flushes and ends
the session; the script then reads it back and prints what the server holds.
"""

from __future__ import annotations

import argparse
import random
import time

import datacat


def checkout(session: datacat.Session, cart: list[float]) -> float:
    with session.timer("checkout.duration") as timer:
        total = 0.0
        for price in cart:
            total += price
            timer.count = (timer.count or 0) + 1  # items processed
        time.sleep(0.01)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:9090")
    url = parser.parse_args().url
    session = datacat.create_session(url, product="basic-demo", version="1.0")
    session.update_state({"status": "running", "config": {"region": "eu", "debug": False}})
    session.log_event("startup", data={"config": "prod"}, category="lifecycle")
    session.send_soon()  # the startup goes out now, not at the next flush interval
    for _ in range(50):
        session.log_histogram("request.latency", random.uniform(0.001, 0.3))
        session.log_counter("requests")
    session.log_gauge("memory_mb", 512.5)
    total = checkout(session, [9.99, 5.0, 12.5])
    try:
        {}["missing"]
    except KeyError:
        session.log_exception(data={"total": total})
    session.update_state({"status": "done", "config": {"debug": None}})
    session.end()
    details = session.get_details()
    print(f"session {session.id}: state {details.get('state')}")
    print(f"{len(details.get('events', []))} events, {len(details.get('metrics', []))} metrics")
    print(f"see {url}/sessions/{session.id}")


if __name__ == "__main__":
    main()
