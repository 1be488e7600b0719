"""Client overhead: what a session verb costs the caller's thread, and how few requests it makes.

Starts ``datacat server`` on a temporary SQLite file (``server_ingest.server``) behind a small
counting proxy (a real HTTP hop that counts every request it forwards) and prints, in one run:

- the median caller-thread cost of ``session.log_event(name, data)`` next to ``list.append`` of
  the same dict (target <= 2 us per call), and of ``session.observe`` (the ``@track`` hot path):
  once with the sender asleep (the enqueue alone), once with the sender running (its share of
  the GIL included);
- the number of HTTP requests the server received for 10,000 log calls (target <= 100).
"""

from __future__ import annotations

import http.client
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from server_ingest import server  # the same real server the ingest benchmark starts

import datacat

CALL_TARGET_US = 2.0
REQUEST_TARGET = 100
CALLS = 10_000
BLOCK = 1_000
BLOCKS = 30


class CountingProxy:
    """Forwards every POST to the server and counts them."""

    def __init__(self, upstream_port: int) -> None:
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                proxy.requests += 1
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                upstream.request("POST", self.path, body, {"Content-Type": "application/json"})
                reply = upstream.getresponse()
                data = reply.read()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def per_call_us(func: Callable[[], None]) -> float:
    """Median over blocks of the cost of one call, in microseconds."""
    samples = []
    for _ in range(BLOCKS):
        start = time.perf_counter()
        for _ in range(BLOCK):
            func()
        samples.append((time.perf_counter() - start) / BLOCK * 1e6)
    return statistics.median(samples)


def verb_costs(session: datacat.Session) -> tuple[float, float, float]:
    """Median us per call of list.append, log_event and observe (in that order)."""
    data = {"user": 42, "path": "/checkout", "ok": True}
    sink: list[Any] = []
    baseline = per_call_us(lambda: sink.append(data))
    log_event = per_call_us(lambda: session.log_event("bench", data))
    observe = per_call_us(lambda: session.observe("call", 0.001))
    session.flush(60)
    session.end()
    return baseline, log_event, observe


def measure(url: str, spool: str) -> None:
    quiet = {"batch_size": 2 * BLOCK * BLOCKS, "flush_interval": 600.0}  # sender stays asleep
    for label, options in (("caller thread alone", quiet), ("sender running too", {})):
        session = datacat.create_session(
            url, product="bench", version="1", spool_dir=spool, **options
        )
        baseline, log_event, observe = verb_costs(session)
        verdict = "OK" if log_event <= CALL_TARGET_US else "MISSED"
        print(f"-- {label}")
        print(f"   list.append(dict)       {baseline:7.3f} us/call (baseline)")
        print(
            f"   session.log_event(...)  {log_event:7.3f} us/call  {log_event / baseline:5.1f}x"
            f"  target <= {CALL_TARGET_US} us: {verdict}"
        )
        print(f"   session.observe(...)    {observe:7.3f} us/call  {observe / baseline:5.1f}x")


def count_requests(proxy: CountingProxy, spool: str) -> None:
    session = datacat.create_session(proxy.url, product="bench", version="1", spool_dir=spool)
    session.flush(30)
    before = proxy.requests
    for i in range(CALLS):
        session.log_event("bench", {"i": i})
    session.flush(60)
    sent = proxy.requests - before
    print(
        f"HTTP requests for {CALLS:,} log calls: {sent} (one request per call would be "
        f"{CALLS:,}; target <= {REQUEST_TARGET})  {'OK' if sent <= REQUEST_TARGET else 'MISSED'}"
    )
    session.end()


def main() -> int:
    with (
        tempfile.TemporaryDirectory() as directory,
        server("gunicorn", f"sqlite:///{directory}/bench.db", 1, 4) as port,
    ):
        proxy = CountingProxy(port)
        spool = os.path.join(directory, "spool")
        measure(proxy.url, spool)
        count_requests(proxy, spool)
        proxy.server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
