"""Client overhead: what a session verb costs the caller's thread, and how few requests it makes.

Starts ``datacat server`` on a temporary SQLite file (``server_ingest.server``) behind a small
counting proxy (a real HTTP hop that counts every request it forwards) and prints, in one run:

- the median caller-thread cost of ``session.log_event(name, data)`` next to ``list.append`` of
  the same dict (target <= 2 us per call), and of ``session.observe`` (the ``@track`` hot path),
  as the thread's CPU time (wall-clock time in parentheses: on a busy machine it also holds
  time the thread was descheduled or waited for the GIL), with the sender running as usual;
- the same for ``observe`` with tags, ``log_histogram``, ``with session.timer(...)``,
  ``log_timer`` and ``log_metric`` (one flat tuple each), and
  what folding an observation costs the sender thread (keys cached per distinct call);
- the sender thread's CPU time per event (the work moved off the caller's thread);
- the number of HTTP requests the server received for 10,000 log calls (target <= 100);
- the whole CPU a program spends on 20,000 events until all are delivered, with the sender
  thread in the program (``sender="thread"``) and in a child process (``sender="process"``),
  each in a fresh interpreter, and their ratio;
- what that child process costs: its start-up (``python -m datacat.offload`` given the app's
  options, with nothing to send: CPU and wall time) and its CPU per event + observation.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from server_ingest import server  # the same real server the ingest benchmark starts

import datacat
from datacat.batching import OBSERVE, Batcher
from datacat.limits import DEFAULT_BUCKETS

CALL_TARGET_US = 2.0
TAGS = {"route": "/checkout", "method": "POST"}
FLIPPED = {"method": "POST", "route": "/checkout"}
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


def per_call_us(func: Callable[[], None]) -> tuple[float, float]:
    """Medians over blocks of one call's cost in microseconds: CPU time of this thread (what
    the call itself costs; time spent descheduled or waiting for the GIL is not in it) and
    wall-clock time (which is, on a busy machine)."""
    cpu, wall = [], []
    for _ in range(BLOCKS):
        start_cpu, start_wall = time.thread_time(), time.perf_counter()
        for _ in range(BLOCK):
            func()
        cpu.append((time.thread_time() - start_cpu) / BLOCK * 1e6)
        wall.append((time.perf_counter() - start_wall) / BLOCK * 1e6)
    return statistics.median(cpu), statistics.median(wall)


def timed_block(session: datacat.Session) -> None:
    with session.timer("block", tags=TAGS):
        pass


def verb_costs(session: datacat.Session) -> list[tuple[str, float, float]]:
    """(label, CPU us, wall us) per call of list.append and the hot verbs."""
    data = {"user": 42, "path": "/checkout", "ok": True}
    sink: list[Any] = []
    rows = [
        ("list.append(dict)", *per_call_us(lambda: sink.append(data))),
        ("session.log_event(...)", *per_call_us(lambda: session.log_event("bench", data))),
        ("session.observe(...)", *per_call_us(lambda: session.observe("call", 0.001))),
        (
            "session.observe(tags=...)",
            *per_call_us(lambda: session.observe("call", 0.001, tags=TAGS)),
        ),
        ("session.log_histogram(...)", *per_call_us(lambda: session.log_histogram("h", 0.2))),
        ("with session.timer(...)", *per_call_us(lambda: timed_block(session))),
        ("session.log_timer(...)", *per_call_us(lambda: session.log_timer("t", 0.01))),
        ("session.log_metric(...)", *per_call_us(lambda: session.log_metric("g", 1.5))),
    ]
    session.flush(60)
    session.end()
    return rows


def aggregation_cost() -> None:
    """The sender's side of ``observe``: folding 100,000 observations of 10 series (tags
    given in either order) into metrics, per observation."""
    items = [
        (OBSERVE, "s", "call", 0.001 * i, "timer", TAGS if i % 2 else FLIPPED, "s", DEFAULT_BUCKETS)
        for i in range(100_000)
    ]
    for i in range(0, len(items), 10_000):
        items[i] = (*items[i][:2], f"call{i}", *items[i][3:])  # a few more series
    batcher = Batcher()
    start = time.thread_time()
    ops = batcher.operations(items)
    per = (time.thread_time() - start) / len(items) * 1e6
    print(f"-- sender thread: folding observations into {len(ops)} metrics: {per:.2f} us each")


def measure(url: str, spool: str) -> None:
    session = datacat.create_session(url, product="bench", version="1", spool_dir=spool)
    rows = verb_costs(session)
    print("-- caller thread, sender running: CPU us/call (wall us/call)")
    baseline = rows[0][1]
    for name, cpu, wall in rows:
        ratio = "baseline" if name.startswith("list") else f"{cpu / baseline:5.1f}x"
        print(f"   {name:28s} {cpu:7.3f}  ({wall:7.3f})  {ratio}")
    verdict = "OK" if rows[1][1] <= CALL_TARGET_US else "MISSED"
    print(f"   log_event target <= {CALL_TARGET_US} us: {verdict}")


def thread_cpu(thread: threading.Thread | None) -> float:
    """CPU seconds a thread has used (Linux: its own CPU clock)."""
    if thread is None or thread.ident is None:
        return 0.0
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def count_requests(proxy: CountingProxy, spool: str) -> None:
    session = datacat.create_session(proxy.url, product="bench", version="1", spool_dir=spool)
    session.flush(30)
    before = proxy.requests
    sender = session._worker.thread if session._worker is not None else None
    sender_cpu = thread_cpu(sender)
    for i in range(CALLS):
        session.log_event("bench", {"i": i})
    session.flush(60)
    sent = proxy.requests - before
    per_event = (thread_cpu(sender) - sender_cpu) / CALLS * 1e6
    print(
        f"sender thread CPU per event (batching, JSON, HTTP; off the caller's thread): "
        f"{per_event:.1f} us"
    )
    print(
        f"HTTP requests for {CALLS:,} log calls: {sent} (one request per call would be "
        f"{CALLS:,}; target <= {REQUEST_TARGET})  {'OK' if sent <= REQUEST_TARGET else 'MISSED'}"
    )
    session.end()


#: A program that logs ``EVENTS`` events with the sender given, then prints the CPU its own
#: process spent from the first call until ``end()`` returned with everything delivered.
PROGRAM = """
import os, sys, time, datacat
s = datacat.create_session(sys.argv[1], product="bench", sender=sys.argv[2], spool_dir=sys.argv[3])
s.flush(30)
started = time.process_time()
for i in range(int(sys.argv[4])):
    s.log_event("bench", {"i": i, "tags": ["a", "b"]})
    s.observe("bench.work", 0.001, tags={"route": "/checkout"})
assert s.end(timeout=60)
spent = time.process_time() - started
child = getattr(s._worker, "_process", None)  # sender="process": the child, still running
stat = open(f"/proc/{child.pid}/stat").read().rpartition(")")[2].split() if child else []
print(spent, sum(map(int, stat[11:13])) / os.sysconf("SC_CLK_TCK"))  # its user + system time
"""
EVENTS = 20_000


def sender_cpu(url: str, spool: str) -> None:
    """The program's whole CPU per event (its caller and its sender), thread vs process, and
    the child's own CPU per event (past its start-up, ``child_start``)."""
    costs, child = {}, []
    for sender in ("thread", "process"):
        runs = []
        for _ in range(3):
            command = [sys.executable, "-c", PROGRAM, url, sender, spool, str(EVENTS)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            own, child_cpu = map(float, done.stdout.split())
            runs.append(own / EVENTS * 1e6)
            if sender == "process":
                child.append(child_cpu)
        costs[sender] = min(runs)
    print(
        f"the program's CPU per event + observation until delivered (best of 3): "
        f"sender='thread' {costs['thread']:.1f} us, sender='process' {costs['process']:.1f} us "
        f"({costs['process'] / costs['thread']:.2f}x)"
    )
    start_cpu, start_wall = child_start(url, spool)
    print(
        f"the sender process: start-up {start_cpu * 1e3:.0f} ms CPU, {start_wall * 1e3:.0f} ms "
        f"wall (median of 9); its CPU per event + observation past that "
        f"{(min(child) - start_cpu) / EVENTS * 1e6:.1f} us (best of 3)"
    )


def child_start(url: str, spool: str) -> tuple[float, float]:
    """CPU and wall seconds of ``python -m datacat.offload`` that is given the app's options
    and then nothing (medians): what each run of a ``sender="process"`` program pays first."""
    from datacat import offload
    from datacat.config import resolve

    hello = offload.hello_options(resolve(url=url, spool_dir=spool, sender="process"))
    frame = offload.frame(offload.HELLO, json.dumps(hello).encode())
    cpu, wall = [], []
    for _ in range(9):
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "datacat.offload"], stdin=subprocess.PIPE)
        assert child.stdin is not None
        child.stdin.write(frame)
        child.stdin.close()  # EOF: nothing to send, it exits
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall.append(time.perf_counter() - started)
        cpu.append(usage.ru_utime + usage.ru_stime)
    return statistics.median(cpu), statistics.median(wall)


def main() -> int:
    with (
        tempfile.TemporaryDirectory() as directory,
        server("gunicorn", f"sqlite:///{directory}/bench.db", 1, 4) as port,
    ):
        proxy = CountingProxy(port)
        spool = os.path.join(directory, "spool")
        measure(proxy.url, spool)
        aggregation_cost()
        count_requests(proxy, spool)
        sender_cpu(proxy.url, spool)
        proxy.server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
