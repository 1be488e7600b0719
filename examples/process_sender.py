"""The sender in a child process: the program pays a queue append, another process the rest.

    datacat server &                               # or: make run
    python examples/process_sender.py              # sender="process" (DATACAT_SENDER=process)
    python examples/process_sender.py --sender thread    # the same with the in-process sender
    python examples/process_sender.py --kill       # dies with its session open: crashed

With ``sender="process"`` a child process (``python -m datacat.offload``) builds the batches,
speaks HTTP and spools; this process only hands it the queued items through a pipe. The example
logs 20,000 events and prints the CPU this process spent from the first call until ``end()``
returned (every event delivered), then what the server holds. ``--kill`` sends itself SIGKILL
with the session open: the child sees the pipe close and marks the session crashed.
"""

from __future__ import annotations

import argparse
import os
import signal
import time

import datacat
from datacat.client import DatacatClient

EVENTS = 20_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:9090")
    parser.add_argument("--sender", choices=("process", "thread"), default="process")
    parser.add_argument("--kill", action="store_true", help="die by SIGKILL with the session open")
    args = parser.parse_args()
    session = datacat.create_session(args.url, product="process-sender-demo", sender=args.sender)
    started = time.process_time()
    for step in range(EVENTS):
        session.log_event("work", data={"step": step, "tags": ["a", "b"]})
    session.update_state({"steps": EVENTS})
    if args.kill:
        session.flush(10)  # delivered so far; the child is watching the pipe
        print(f"session {session.id}: killing myself with the session open", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    delivered = session.end(timeout=30)
    cpu = time.process_time() - started
    print(f"session {session.id}: sender={args.sender}, delivered: {delivered}")
    print(f"this process's CPU for {EVENTS:,} events, until all were delivered: {cpu:.3f} s")
    got = DatacatClient(args.url).get_session(session.id)
    print(f"the server holds {len(got['events'])} events; status {got['status']}")


if __name__ == "__main__":
    main()
