"""Many alike events, each with its own timer, logged as rows: ``session.log_rows``.

    datacat server &                 # or: make run
    python examples/event_rows.py    # --url http://127.0.0.1:9090

A template names the events' shape once; each row is ``(timestamp, *values)``. One call queues
a whole list of rows as one item, and the sender makes of each row the event and the timer
``log_event`` and ``observe`` would have made, except that each row's timer is its own metric
(``observe`` folds those of equal tags). The pytest plugin logs its passing tests so.
"""

from __future__ import annotations

import argparse
import random
import time

import datacat
from datacat import rows

JOBS = rows.template(
    "job_done",
    columns=("job", "worker", "attempts"),
    category="jobs",
    data={"outcome": "ok"},
    message="job",
    timer="job.duration",
    timer_tags={"outcome": "ok"},
    timer_tag_columns=("worker",),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:9090")
    url = parser.parse_args().url
    session = datacat.create_session(url, product="rows-demo", version="1.0")
    done = []
    for n in range(200):
        seconds = random.uniform(0.001, 0.05)
        done.append((time.time(), f"job-{n}", f"w{n % 4}", 1 + n % 3, seconds))
    session.log_rows(JOBS, done)  # ``done`` is handed over: the next rows go in a new list
    session.end()
    details = session.get_details()
    events, metrics = details.get("events", []), details.get("metrics", [])
    print(f"session {session.id}: {len(events)} events, {len(metrics)} metrics")
    print(f"first: {events[0]['message']} {events[0]['data']}" if events else "no events")
    print(f"see {url}/sessions/{session.id}")


if __name__ == "__main__":
    main()
