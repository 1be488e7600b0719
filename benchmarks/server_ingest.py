"""Server ingest throughput: single-event POSTs (empty vs 10,000-event session) and batched events.

Starts ``datacat server`` on a temporary SQLite file (or ``--db URL``) and drives it with
several client processes, each on one keep-alive HTTP connection. Prints, in one run:

- single-event requests/s into an empty session (the baseline),
- single-event requests/s into a session already holding 10,000 events, and its ratio to the
  baseline (target >= 0.9: a write must not cost more as the session grows),
- batched events/s through ``POST /api/batch`` (target >= 50,000 on SQLite),
- what one pytest-shaped batch costs (the pytest plugin's: ``test_passed`` events and timer
  metrics, half each), as a fixed cost per request plus a cost per operation, from one client
  that sends one batch at a time (as the plugin's sender does),

next to the targets (>= 1,500 single-event req/s). ``--server waitress`` serves the same app with
waitress instead of gunicorn, for the comparison the README reports.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from datacat.batching import event_body, metric_body, new_id

SINGLE_TARGET = 1_500
BATCH_TARGET = 50_000
RATIO_TARGET = 0.9
PREFILL = 10_000
BATCH_SIZE = 500  # the client sends at most 500 operations per batch
PYTEST_BATCH = 200  # a recorded pytest run's sender posts ~150-250 operations at a time
SERVER_PID = [0]

WAITRESS = """
import sys
from waitress import serve
from datacat_server import create_app
serve(create_app({"DATACAT_DB": sys.argv[1]}), host="127.0.0.1", port=int(sys.argv[2]),
      threads=int(sys.argv[3]), _quiet=True)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(root: int) -> float:
    """User + system CPU of process ``root`` and its children (the server's workers), from /proc.

    Other engineers share this machine, so wall-clock rates move with their load; the server's
    CPU per request does not, and is printed next to the rates.
    """
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(stat.parent.name), int(fields[1])
        if root in (pid, ppid):
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@contextmanager
def server(kind: str, db: str, workers: int, threads: int) -> Iterator[int]:
    """A running server on a free port; yields the port (and records the pid in SERVER_PID)."""
    port = free_port()
    if kind == "waitress":
        command = [sys.executable, "-c", WAITRESS, db, str(port), str(threads)]
    else:
        command = [sys.executable, "-m", "datacat.cli", "server", "--port", str(port)]
        command += ["--db", db, "--workers", str(workers)]
    env = {**os.environ, "DATACAT_SERVER_THREADS": str(threads)}
    proc = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    SERVER_PID[0] = proc.pid
    try:
        wait_healthy(port)
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def wait_healthy(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            request(http.client.HTTPConnection("127.0.0.1", port), "GET", "/health")
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


def request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes = b"") -> Any:
    conn.request(method, path, body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    if response.status >= 300:
        raise RuntimeError(f"{method} {path}: {response.status} {data[:200]!r}")
    return json.loads(data)


def create_session(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    body = json.dumps({"product": "bench", "version": "1"}).encode()
    session_id: str = request(conn, "POST", "/api/sessions", body)["id"]
    return session_id


def batch_body(session_id: str, n: int) -> bytes:
    ops = [
        {
            "op_id": new_id(),  # time-ordered, as the client makes them
            "op": "event",
            "session_id": session_id,
            "data": {"name": "tick", "level": "info", "data": {"i": i, "phase": "bench"}},
        }
        for i in range(n)
    ]
    return json.dumps({"operations": ops}).encode()


def pytest_batch_body(session_id: str, n: int) -> bytes:
    """``n`` operations as a recorded pytest run sends them: per test, its ``test_passed``
    event and its duration timer (bodies made by the client's own builders)."""
    ops, stamp = [], time.time()
    for i in range(n // 2):
        module = f"tests/test_module_{i % 7}.py"
        nodeid = f"{module}::test_case_{i}"
        data = {
            "nodeid": nodeid,
            "outcome": "passed",
            "phase": "call",
            "duration": 0.000123 + i * 1e-7,
            "worker": "main",
            "markers": ["parametrize"],
            "location": [module, i * 3, f"test_case_{i}"],
        }
        event = event_body("test_passed", data, "info", "pytest", None, nodeid, {}, stamp, None)
        tags = {"nodeid": nodeid, "outcome": "passed"}
        seconds = 0.0003 + i * 1e-7
        timer = metric_body("pytest.test.duration", seconds, "timer", "s", tags, stamp, 1)
        timer.update(min=seconds, max=seconds)
        ops += [wire("event", session_id, event), wire("metric", session_id, timer)]
    return json.dumps({"operations": ops}).encode()


def wire(op: str, session_id: str, data: Any) -> dict[str, Any]:
    return {"op_id": new_id(), "op": op, "session_id": session_id, "data": data}


class KeepAlive:
    """A lean HTTP/1.1 keep-alive client: pre-built request bytes, minimal response parsing.

    The load generator shares the 2 cores with the server; ``http.client`` spent as much CPU per
    request as the server did, so it measured the client more than the server.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    @staticmethod
    def post(path: str, body: bytes) -> bytes:
        head = f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body

    def send(self, request_bytes: bytes) -> None:
        """Send one request and read its whole response; a status >= 300 raises."""
        self.sock.sendall(request_bytes)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        status = int(head[9:12])
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(rest) < length:
            rest += self._recv()
        self.buffer = rest[length:]
        if status >= 300:
            raise RuntimeError(f"HTTP {status}: {rest[:200]!r}")

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        return chunk


def _single_client(port: int, session_id: str, seconds: float, out: Any) -> None:
    client = KeepAlive(port)
    body = json.dumps({"name": "click", "data": {"button": "ok", "x": 10}}).encode()
    request_bytes = client.post(f"/api/sessions/{session_id}/events", body)
    count, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        client.send(request_bytes)
        count += 1
    out.put(count)


def _batch_client(port: int, bodies: list[bytes], out: Any) -> None:
    client = KeepAlive(port)
    for body in bodies:
        client.send(client.post("/api/batch", body))
    out.put(len(bodies))


def single_rates(
    port: int, sessions: dict[str, str], clients: int, seconds: float, rounds: int = 5
) -> dict[str, tuple[float, ...]]:
    """Per session: single-event POSTs per second and server CPU us per request.

    The sessions take turns in short slices, so a change in the machine's load (other people's
    work) falls on all of them alike instead of skewing their ratio.
    """
    totals = {name: [0, 0.0] for name in sessions}
    for _ in range(rounds):
        for name, session_id in sessions.items():
            cpu = cpu_seconds(SERVER_PID[0])
            args = [(port, session_id, seconds / rounds)] * clients
            totals[name][0] += sum(run_clients(_single_client, args))
            totals[name][1] += cpu_seconds(SERVER_PID[0]) - cpu
    return {name: (n / seconds, cpu / n * 1e6) for name, (n, cpu) in totals.items()}


def batch_rate(
    port: int, session_id: str, clients: int, batches: int
) -> tuple[float, float, float]:
    """Events per second through ``POST /api/batch`` (bodies built before the clock starts),
    server CPU us per event, and the load generator's CPU us per event (to show it is not
    what limits the rate)."""
    per_client = [
        [batch_body(session_id, BATCH_SIZE) for _ in range(batches)] for _ in range(clients)
    ]
    cpu, started = cpu_seconds(SERVER_PID[0]), time.perf_counter()
    load = client_cpu_seconds()
    counts = run_clients(_batch_client, [(port, bodies) for bodies in per_client])
    elapsed, cpu = time.perf_counter() - started, cpu_seconds(SERVER_PID[0]) - cpu
    load = client_cpu_seconds() - load
    events = sum(counts) * BATCH_SIZE
    return events / elapsed, cpu / events * 1e6, load / events * 1e6


def pytest_batch_cost(port: int, session_id: str, rounds: int) -> tuple[float, float, float]:
    """A pytest-shaped batch's fixed cost (ms per request), cost per operation (us, wall) and
    server CPU per operation (us): 2-operation and ``PYTEST_BATCH``-operation batches sent in
    turn from one connection, the difference of their median latencies per extra operation."""
    client = KeepAlive(port)
    sizes = (2, PYTEST_BATCH)
    bodies = {n: [pytest_batch_body(session_id, n) for _ in range(rounds)] for n in sizes}
    latencies: dict[int, list[float]] = {n: [] for n in sizes}
    cpu: dict[int, float] = dict.fromkeys(sizes, 0.0)
    for i in range(rounds):
        for n in sizes:
            request_bytes = client.post("/api/batch", bodies[n][i])
            before, started = cpu_seconds(SERVER_PID[0]), time.perf_counter()
            client.send(request_bytes)
            latencies[n].append(time.perf_counter() - started)
            cpu[n] += cpu_seconds(SERVER_PID[0]) - before
    small, large = (statistics.median(latencies[n]) for n in sizes)
    per_op = (large - small) / (PYTEST_BATCH - 2)
    cpu_per_op = (cpu[PYTEST_BATCH] - cpu[2]) / rounds / (PYTEST_BATCH - 2)
    return (small - 2 * per_op) * 1e3, per_op * 1e6, cpu_per_op * 1e6


def client_cpu_seconds() -> float:
    """CPU of this process and of its finished (joined) children: the load generator."""
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_clients(target: Any, arg_lists: list[tuple[Any, ...]]) -> list[int]:
    out: Any = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=target, args=(*args, out)) for args in arg_lists]
    for proc in procs:
        proc.start()
    counts = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    return counts


def prefill(port: int, session_id: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(PREFILL // BATCH_SIZE):
        request(conn, "POST", "/api/batch", batch_body(session_id, BATCH_SIZE))


def measure(args: argparse.Namespace) -> dict[str, tuple[float, ...]]:
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or f"sqlite:///{tmp}/bench.db"
        with server(args.server, db, args.workers, args.threads) as port:
            if args.pytest_only:
                return {"pytest": pytest_batch_cost(port, create_session(port), args.pytest_rounds)}
            sessions = {"empty": create_session(port), "full": create_session(port)}
            prefill(port, sessions["full"])
            figures = single_rates(port, sessions, args.clients, args.seconds)
            figures["batched"] = batch_rate(port, create_session(port), args.clients, args.batches)
            figures["pytest"] = pytest_batch_cost(port, create_session(port), args.pytest_rounds)
    return figures


def report(args: argparse.Namespace, measured: dict[str, tuple[float, ...]]) -> None:
    print(
        f"server: {args.server} (workers={args.workers}, threads={args.threads}), "
        f"clients={args.clients}, db={args.db or 'sqlite (temporary file)'}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    fixed, per_op, cpu_per_op = measured["pytest"]
    pytest_line = (
        f"pytest-shaped batch ({PYTEST_BATCH} ops, one client): {fixed:5.2f} ms/request + "
        f"{per_op:4.1f} us/op wall, {cpu_per_op:4.1f} us/op server CPU"
    )
    if args.pytest_only:
        print(pytest_line)
        return
    (empty, empty_cpu), (full, full_cpu) = measured["empty"], measured["full"]
    batched, batched_cpu, load_cpu = measured["batched"]
    print(
        f"single-event POST, empty session       : {empty:9,.0f} req/s    "
        f"{empty_cpu:5.0f} us server CPU/req   (target >= {SINGLE_TARGET:,} req/s)"
    )
    print(
        f"single-event POST, {PREFILL:,}-event session: {full:9,.0f} req/s    "
        f"{full_cpu:5.0f} us server CPU/req   ratio to empty {full / empty:.2f} "
        f"(target >= {RATIO_TARGET}; by CPU {empty_cpu / full_cpu:.2f})"
    )
    print(
        f"batched events ({BATCH_SIZE} per request)      : {batched:9,.0f} events/s "
        f"{batched_cpu:5.1f} us server CPU/event (target >= {BATCH_TARGET:,} events/s); "
        f"load generator {load_cpu:.1f} us CPU/event"
    )
    print(f"{pytest_line} (single-event POST: {empty_cpu:.0f} us server CPU/request)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=["gunicorn", "waitress"], default="gunicorn")
    parser.add_argument("--db", help="database URL (default: a temporary SQLite file)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batches", type=int, default=10, help="batches per client")
    parser.add_argument(
        "--pytest-rounds", type=int, default=100, help="pytest-shaped batches of each size"
    )
    parser.add_argument(
        "--pytest-only", action="store_true", help="measure only the pytest-shaped batches"
    )
    args = parser.parse_args()
    report(args, measure(args))


if __name__ == "__main__":
    main()
