"""Cost that auto-instrumentation adds to the calls it watches, next to the bare calls.

For each target, the same call is timed bare and instrumented, in alternating rounds (the best
round of each counts: the least disturbed by other load), and the added microseconds and the
ratio are printed:
  - ``requests``: ``Session.send`` of a prepared GET to an in-process adapter (no network),
  - ``logging``: ``logger.warning`` with a ``NullHandler`` (baseline) vs DataCat's handler too,
  - ``flask``: one request through Flask's test client.
The session records into a real session whose server is a throwaway ``datacat server``
(``track_overhead.throwaway_server``: free loopback port, temporary SQLite file).

    .venv/bin/python benchmarks/autoinstrument_overhead.py [--calls 2000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import logging
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flask
import requests
from requests.adapters import BaseAdapter

import datacat
import datacat.autoinstrument

sys.path.insert(0, str(Path(__file__).resolve().parent))
from track_overhead import throwaway_server


class CannedAdapter(BaseAdapter):
    """Answers every request with 200 and an empty body, in-process."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        response = requests.Response()
        response.status_code, response.request, response.url = 200, request, request.url or ""
        response._content = b""
        return response

    def close(self) -> None:
        pass


def cases() -> dict[str, Callable[[], Any]]:
    http = requests.Session()
    http.trust_env = False  # scanning the environment for proxies would dwarf what is measured
    http.mount("http://", CannedAdapter())
    prepared = http.prepare_request(requests.Request("GET", "http://bench.invalid/x"))
    logger = logging.getLogger("bench.app")
    logger.addHandler(logging.NullHandler())
    logger.propagate = True
    client = flask.Flask("bench").test_client()
    client.application.add_url_rule("/", "index", lambda: "ok")
    return {
        "requests Session.send (in-process)": lambda: http.send(prepared),
        "logging warning": lambda: logger.warning("stock low: %d", 3),
        "flask test-client request": lambda: client.get("/"),
    }


def best_us(func: Callable[[], Any], calls: int) -> float:
    return timeit.timeit(func, number=calls) / calls * 1e6


def measure(url: str, calls: int, rounds: int) -> dict[str, tuple[float, float]]:
    """Best per-call microseconds of each case, (bare, instrumented)."""
    session = datacat.create_session(url=url, product="bench", spool_dir="")
    logging.getLogger().handlers.clear()  # root stays silent; only the DataCat handler joins it
    found = {name: [float("inf"), float("inf")] for name in cases()}
    for _ in range(rounds):
        for instrumented in (False, True):
            if instrumented:
                datacat.autoinstrument.instrument(["requests", "logging", "flask"], session)
            for name, func in cases().items():
                found[name][instrumented] = min(found[name][instrumented], best_us(func, calls))
            datacat.autoinstrument.uninstrument()
    session.end(timeout=0.1)
    return {name: (bare, inst) for name, (bare, inst) in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"{'case':36} {'bare µs':>9} {'instr. µs':>10} {'added µs':>9} {'ratio':>6}")
    with throwaway_server() as url:
        found = measure(url, args.calls, args.rounds)
    for name, (bare, inst) in found.items():
        print(f"{name:36} {bare:9.2f} {inst:10.2f} {inst - bare:9.2f} {inst / bare:6.2f}")


if __name__ == "__main__":
    main()
