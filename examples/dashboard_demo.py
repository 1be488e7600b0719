"""Fill a running DataCat server with realistic demo sessions, then print the dashboard's URL.

    datacat server &                      # or: make run
    python examples/dashboard_demo.py     # --url http://127.0.0.1:9090 --api-key KEY --live 60

The sessions are spread over the last two days (with their own timestamps, through the
``POST /api/batch`` endpoint over plain HTTP): three products in several versions, state that
evolves, events with exceptions and stack traces, gauges, counters, histograms and timers, and
every status: ended, crashed, hung, suspended and active. ``--live SECONDS`` keeps one session
running that long (heartbeats, metrics, events), to watch the session page refresh itself.
"""

from __future__ import annotations

import argparse
import json
import random
import time
import urllib.request
import uuid
from typing import Any

import datacat

PRODUCTS = {
    "photo-sorter": ["1.3.0", "1.4.0"],
    "ingest-worker": ["2.0.1", "2.1.0"],
    "game-client": ["0.9.0"],
}
HOSTS = ["build-01", "laptop-ana", "worker-7", "kiosk-3"]
STAGES = ["starting", "loading", "running", "saving", "done"]
BOUNDS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]


class Demo:
    """Collects batch operations and posts them."""

    def __init__(self, url: str, api_key: str | None) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.ops: list[dict[str, Any]] = []

    def op(self, kind: str, session_id: str, data: dict[str, Any]) -> None:
        self.ops.append(
            {"op_id": str(uuid.uuid4()), "op": kind, "session_id": session_id, "data": data}
        )

    def post(self) -> dict[str, Any]:
        body = json.dumps({"operations": self.ops}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        request = urllib.request.Request(self.url + "/api/batch", body, headers, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            answer: dict[str, Any] = json.loads(response.read())
        self.ops = []
        return answer


def fill_session(demo: Demo, rng: random.Random, start: float, fate: str) -> str:
    """One session's whole life from ``start``; ``fate`` is how it ends."""
    sid = str(uuid.uuid4())
    product = rng.choice(list(PRODUCTS))
    version = rng.choice(PRODUCTS[product])
    create = {
        "product": product,
        "version": version,
        "hostname": rng.choice(HOSTS),
        "timestamp": start,
    }
    create["machine_id"] = uuid.UUID(int=rng.getrandbits(128)).hex
    create["state"] = {
        "stage": "starting",
        "config": {"threads": rng.choice([2, 4, 8]), "mode": "batch"},
    }
    demo.op("create", sid, create)
    t = start
    for step, stage in enumerate(STAGES[1:] if fate == "ended" else STAGES[1:4]):
        t += rng.uniform(20, 90)
        demo.op(
            "state",
            sid,
            {"state": {"stage": stage, "progress": {"step": step + 1}}, "timestamp": t},
        )
        demo.op("heartbeat", sid, {"timestamp": t})
        t = log_activity(demo, rng, sid, t)
    finish(demo, rng, sid, t, fate)
    return sid


def log_activity(demo: Demo, rng: random.Random, sid: str, t: float) -> float:
    """A burst of events and metrics after ``t``; returns the time of the last one."""
    for _ in range(rng.randint(3, 8)):
        t += rng.uniform(1, 10)
        demo.op(
            "metric",
            sid,
            {
                "name": "memory_mb",
                "value": round(rng.uniform(180, 520), 1),
                "unit": "MB",
                "timestamp": t,
            },
        )
        demo.op(
            "metric",
            sid,
            {
                "name": "items_processed",
                "type": "counter",
                "value": rng.randint(5, 50),
                "timestamp": t,
            },
        )
        demo.op(
            "metric",
            sid,
            {
                "name": "load_time",
                "type": "timer",
                "value": rng.uniform(0.05, 1.5),
                "unit": "s",
                "timestamp": t,
            },
        )
        demo.op(
            "event",
            sid,
            {
                "name": rng.choice(["file_opened", "item_saved", "cache_hit", "user_click"]),
                "message": "routine work",
                "data": {"n": rng.randint(1, 99)},
                "timestamp": t,
            },
        )
    for status, share in (("200", 0.95), ("500", 0.05)):
        requests = {"name": "http_requests", "type": "counter", "tags": {"status": status}}
        demo.op(
            "metric",
            sid,
            {**requests, "value": round(rng.randint(50, 400) * share), "timestamp": t},
        )
    counts = [rng.randint(0, 30) for _ in range(len(BOUNDS) + 1)]
    demo.op(
        "metric",
        sid,
        {
            "name": "request_seconds",
            "type": "histogram",
            "value": sum(counts) * rng.uniform(0.1, 0.6),
            "count": sum(counts),
            "buckets": BOUNDS,
            "bucket_counts": counts,
            "unit": "s",
            "timestamp": t,
        },
    )
    if rng.random() < 0.3:
        demo.op(
            "event",
            sid,
            {
                "name": "slow_disk",
                "level": "warning",
                "message": "write took 2.3 s",
                "timestamp": t,
            },
        )
    return t


def finish(demo: Demo, rng: random.Random, sid: str, t: float, fate: str) -> None:
    t += rng.uniform(5, 30)
    if fate in ("crashed", "ended") and rng.random() < 0.7:
        demo.op("event", sid, exception_event(t))
    if fate == "ended":
        demo.op("end", sid, {"timestamp": t + 1})
    elif fate == "crashed":
        demo.op(
            "crash",
            sid,
            {"reason": "SIGSEGV in image decoder", "data": {"signal": 11}, "timestamp": t + 1},
        )
    elif fate == "active":
        demo.op("heartbeat", sid, {})  # the server's clock: heartbeating right now
    elif fate == "hung":
        demo.op(
            "event",
            sid,
            {
                "name": "application_appears_hung",
                "level": "warning",
                "message": "main thread blocked 45 s",
                "timestamp": t,
            },
        )


def exception_event(t: float) -> dict[str, Any]:
    return {
        "name": "exception",
        "exception_type": "ValueError",
        "exception_msg": "could not parse EXIF block",
        "source_file": "sorter/exif.py",
        "source_line": 88,
        "source_function": "parse_block",
        "stacktrace": [
            'File "sorter/main.py", line 41, in run',
            "    sort_folder(path)",
            'File "sorter/exif.py", line 88, in parse_block',
            "    raise ValueError('could not parse EXIF block')",
        ],
        "timestamp": t,
    }


def live(demo: Demo, seconds: float) -> str:
    """A session that keeps working for ``seconds`` (open its page to watch it refresh)."""
    sid = str(uuid.uuid4())
    demo.op(
        "create",
        sid,
        {
            "product": "game-client",
            "version": "0.9.0",
            "hostname": "kiosk-3",
            "state": {"stage": "running", "level": 1},
        },
    )
    demo.post()
    print(f"live session: {demo.url}/sessions/{sid} (for {seconds:.0f} s)", flush=True)
    deadline, level = time.monotonic() + seconds, 1
    while time.monotonic() < deadline:
        level += 1
        demo.op("heartbeat", sid, {})
        demo.op("metric", sid, {"name": "fps", "value": random.uniform(40, 60)})
        demo.op("event", sid, {"name": "level_up", "data": {"level": level}})
        demo.op("state", sid, {"level": level})
        demo.post()
        time.sleep(2)
    demo.op("end", sid, {})
    demo.post()
    return sid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:9090")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--sessions", type=int, default=24)
    parser.add_argument("--live", type=float, default=0.0, metavar="SECONDS")
    args = parser.parse_args()
    demo, rng = Demo(args.url, args.api_key), random.Random(7)
    fates = ["ended", "crashed", "ended", "active", "ended", "hung", "ended", "suspended"]
    now = time.time()
    for index in range(args.sessions):
        fate = fates[index % len(fates)]
        # an active session's activity (at most ~10 minutes of it) must not lie in the future
        start = now - 900 if fate == "active" else now - rng.uniform(900, 2 * 86400)
        fill_session(demo, rng, start, fate)
    answer = demo.post()
    failed = len(answer["failed"])
    print(f"datacat {datacat.__version__}: {answer['applied']} operations applied, {failed} failed")
    print(f"dashboard: {demo.url}/")
    if args.live > 0:
        live(demo, args.live)


if __name__ == "__main__":
    main()
