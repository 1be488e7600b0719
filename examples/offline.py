"""Offline: log while the server is down; the data arrives later, in order, exactly once.

    python examples/offline.py                  # needs no server for the first part
    datacat server &                            # then start one (or: make run) ...
    python examples/offline.py --replay         # ... and the next run sends what was spooled
    datacat upload                              # (or replay by hand, without a new run)

The session id is made by the client, so the session exists before the server has seen it.
What cannot be delivered is spooled to ``~/.cache/datacat/spool`` (``--spool-dir`` here) when
the program exits (within ``exit_timeout``, 2 s by default), and replayed by the next process.
"""

from __future__ import annotations

import argparse
import time

import datacat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:9090")
    parser.add_argument("--spool-dir", default=None, help="default: ~/.cache/datacat/spool")
    parser.add_argument("--replay", action="store_true", help="only replay the spool, then end")
    args = parser.parse_args()
    session = datacat.create_session(
        args.url,
        product="offline-demo",
        version="1.0",
        spool_dir=args.spool_dir,
        exit_timeout=1.0,
    )
    if args.replay:
        delivered = session.end(timeout=10)  # the worker replays the spool first, in order
        print("spool replayed and session ended" if delivered else "server still unreachable")
        return
    for step in range(10):
        session.update_state({"step": step})
        session.log_event("work", data={"step": step})
        time.sleep(0.02)
    delivered = session.flush(timeout=1.0)
    print(f"session {session.id}: delivered now: {delivered}")
    if not delivered:
        print("server unreachable: the exit hook spools the rest; run again with --replay")


if __name__ == "__main__":
    main()
