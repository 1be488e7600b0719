"""Per-call overhead of ``@datacat.track`` over a bare call, next to its baselines, in one run.

Prints the cost added to a trivial function call by:
  - ``@datacat.track`` (sync) recording into a real session whose server is a throwaway
    ``datacat server`` this script starts on a free port (SQLite in a temporary directory),
  - prometheus_client's ``Histogram.time()`` decorator (the baseline),
  - ``@datacat.track`` with no URL configured (no session anywhere),
and the ratios against the targets: tracked <= 0.5 x prometheus, unconfigured <= 1 us.
Figures are the best of many short rounds in which the cases take turns (the least disturbed
by other load on the machine).

    .venv/bin/python benchmarks/track_overhead.py [--calls 50000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import os
import socket
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Iterator
from typing import Any

import requests
from prometheus_client import CollectorRegistry, Histogram

os.environ.pop("DATACAT_URL", None)  # the "unconfigured" case must see no URL

import datacat

UNCONFIGURED = "@datacat.track, no URL configured"


def plain(x: int) -> int:
    return x


def per_call_ns(func: Callable[[int], Any], calls: int) -> float:
    """Time of one call in nanoseconds, loop overhead included (it cancels out)."""
    return timeit.timeit(lambda: func(1), number=calls) / calls * 1e9


@contextlib.contextmanager
def throwaway_server() -> Iterator[str]:
    """A ``datacat server`` on a free loopback port and a temporary SQLite file."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "datacat.cli", "server", "--port", str(port)]
        command += ["--db", f"sqlite:///{tmp}/bench.db"]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(url)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)


def wait_until_up(url: str, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/health", timeout=1).ok:
                return
        time.sleep(0.1)
    raise SystemExit(f"server at {url} did not start")


def measure(url: str, calls: int, rounds: int) -> dict[str, float]:
    """Best per-call time of each case; the cases take turns in every round, so load from
    elsewhere on the machine hits them alike."""
    histogram = Histogram("bench_seconds", "benchmark", registry=CollectorRegistry())
    tracked = datacat.track(plain)
    cases: dict[str, Callable[[], float]] = {
        "bare call": lambda: per_call_ns(plain, calls),
        "prometheus Histogram.time()": lambda: per_call_ns(histogram.time()(plain), calls),
        "@datacat.track, real session": lambda: per_call_ns(tracked, calls),
        # an empty context: no current session, and no URL configured for a default one
        UNCONFIGURED: lambda: contextvars.Context().run(per_call_ns, tracked, calls),
    }
    best = dict.fromkeys(cases, float("inf"))
    with datacat.session(url, product="track-overhead", spool_dir="") as session:
        for _ in range(rounds):
            for name, case in cases.items():
                best[name] = min(best[name], case())
    return {**best, "dropped": float(session.dropped)}


def report(figures: dict[str, float]) -> None:
    bare = figures["bare call"]
    over = {name: figures[name] - bare for name in figures if name not in ("bare call", "dropped")}
    print(f"{'bare call':40} {bare:8.0f} ns per call")
    for name, ns in over.items():
        print(f"{name:40} {ns:8.0f} ns over a bare call")
    prometheus = over["prometheus Histogram.time()"]
    tracked, unconfigured = over["@datacat.track, real session"], over[UNCONFIGURED]
    print(f"tracked / prometheus = {tracked / prometheus:.2f}   (target <= 0.50)")
    print(f"unconfigured = {unconfigured / 1000:.2f} us   (target <= 1.00 us)")
    print(f"items the client dropped (full queue): {figures['dropped']:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with throwaway_server() as url:
        report(measure(url, args.calls, args.rounds))


if __name__ == "__main__":
    main()
