"""SQLite checkpoints in the server's own thread against SQLite's default (in the commit).

Starts two ``datacat server`` processes on temporary SQLite files: one with the default
``--checkpoint-interval`` (the write-ahead log is copied back into the database file by a thread,
see ``datacat_server.storage.Checkpointer``), the baseline with ``--checkpoint-interval 0``
(SQLite's own: the commit that takes the log past 1,000 pages does the copy). One client sends
pytest-shaped batches (the pytest plugin's ``test_passed`` events and timers) to both in turn,
one batch at a time on a keep-alive connection, as the plugin's sender does, and prints each
server's latency percentiles and total time side by side, and their ratios.

    .venv/bin/python benchmarks/server_checkpoints.py [--batches 600] [--ops 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from contextlib import ExitStack

from datacat_server.storage import CHECKPOINT_INTERVAL
from server_ingest import KeepAlive, create_session, pytest_batch_body, server


def percentiles(latencies: list[float]) -> dict[str, float]:
    """Median, 90th and 99th percentile, maximum and sum, in milliseconds."""
    ordered = sorted(latencies)
    at = lambda share: ordered[min(len(ordered) - 1, int(share * len(ordered)))]  # noqa: E731
    return {
        "median": 1e3 * statistics.median(ordered),
        "p90": 1e3 * at(0.9),
        "p99": 1e3 * at(0.99),
        "max": 1e3 * ordered[-1],
        "total": 1e3 * sum(ordered),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=600, help="batches sent to each server")
    parser.add_argument("--ops", type=int, default=200, help="operations per batch")
    args = parser.parse_args()
    intervals = {"in a thread": CHECKPOINT_INTERVAL, "in the commit (SQLite's)": 0.0}
    latencies: dict[str, list[float]] = {name: [] for name in intervals}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        clients, bodies = {}, {}
        for index, (name, interval) in enumerate(intervals.items()):
            os.environ["DATACAT_SERVER_CHECKPOINT_INTERVAL"] = str(interval)
            port = stack.enter_context(server("gunicorn", f"sqlite:///{tmp}/{index}.db", 2, 4))
            session_id = create_session(port)
            bodies[name] = [pytest_batch_body(session_id, args.ops) for _ in range(args.batches)]
            clients[name] = KeepAlive(port)
        for i in range(args.batches):  # in turn: a change of the machine's speed hits both
            for name, client in clients.items():
                request_bytes = client.post("/api/batch", bodies[name][i])
                started = time.perf_counter()
                client.send(request_bytes)
                latencies[name].append(time.perf_counter() - started)
    figures = {name: percentiles(values) for name, values in latencies.items()}
    print(f"{args.batches} pytest-shaped batches of {args.ops} operations to each server")
    print(f"{'checkpoints':26}" + "".join(f"{key:>10}" for key in ("median", "p90", "p99", "max")))
    for name, figure in figures.items():
        row = "".join(f"{figure[key]:8.2f}ms" for key in ("median", "p90", "p99", "max"))
        print(f"{name:26}{row}   total {figure['total'] / 1e3:6.2f} s")
    ours, sqlite = figures.values()
    ratios = "".join(f"{ours[key] / sqlite[key]:10.2f}" for key in ("median", "p90", "p99", "max"))
    print(f"{'ratio (thread / commit)':26}{ratios}   total {ours['total'] / sqlite['total']:.2f}")


if __name__ == "__main__":
    main()
