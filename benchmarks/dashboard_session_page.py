"""What the dashboard's JSON costs next to the REST API reading the same data.

Starts ``datacat server`` on a temporary SQLite file (``server_ingest.server``), fills one session
with 50,000 metrics (five names, gauges and a counter) and 10,000 events, plus 200 small sessions,
and prints the best of five wall times of:

- the session page's JSON ``/dashboard/api/sessions/<id>`` (summaries, thinned series, the newest
  5,000 events) next to the REST API's full session ``GET /api/sessions/<id>`` (the baseline);
- the list page's JSON (``/dashboard/api/sessions``, ``/metrics``, ``/overview``) next to
  ``GET /api/data/sessions?summary=1&limit=25``.

No target is set for these; the figures show what a page load costs the server.

    .venv/bin/python benchmarks/dashboard_session_page.py
"""

from __future__ import annotations

import json
import tempfile
import time
import urllib.request
import uuid
from typing import Any

from server_ingest import server  # the same real server the ingest benchmark starts

METRICS = 50_000
EVENTS = 10_000
SMALL_SESSIONS = 200
ROUNDS = 5


def post(base: str, operations: list[dict[str, Any]]) -> None:
    body = json.dumps({"operations": operations}).encode()
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(base + "/api/batch", body, headers, method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        assert json.loads(response.read())["success"]


def op(kind: str, sid: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"op_id": str(uuid.uuid4()), "op": kind, "session_id": sid, "data": data}


def fill(base: str) -> str:
    """The big session's id, after writing it and the small ones."""
    big = str(uuid.uuid4())
    post(base, [op("create", big, {"product": "big", "version": "1"})])
    per_event = METRICS // EVENTS
    for start in range(0, METRICS, 5_000):
        ops = []
        for i in range(start, start + 5_000):
            kind = "counter" if i % 5 == 0 else "gauge"
            ops.append(op("metric", big, {"name": f"m{i % 5}", "type": kind, "value": i % 97}))
            if i % per_event == 0:
                ops.append(op("event", big, {"name": f"e{i % 7}", "message": "x" * 40}))
        post(base, ops)
    small = []
    for n in range(SMALL_SESSIONS):
        sid = str(uuid.uuid4())
        small += [op("create", sid, {"product": f"p{n % 4}", "version": "1"})]
        small += [
            op("metric", sid, {"name": "fps", "value": n % 60}),
            op("event", sid, {"name": "x"}),
        ]
    post(base, small)
    return big


def best(base: str, paths: list[str]) -> float:
    """Best wall time in seconds of fetching every path once."""
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for path in paths:
            with urllib.request.urlopen(base + path, timeout=120) as response:
                response.read()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    with (
        tempfile.TemporaryDirectory() as folder,
        server("gunicorn", f"sqlite:///{folder}/b.db", 1, 4) as port,
    ):
        base = f"http://127.0.0.1:{port}"
        big = fill(base)
        rows = [
            ("session page", [f"/dashboard/api/sessions/{big}"], [f"/api/sessions/{big}"]),
            (
                "list page",
                ["/dashboard/api/sessions", "/dashboard/api/metrics", "/dashboard/api/overview"],
                ["/api/data/sessions?summary=1&limit=25"],
            ),
        ]
        for name, dashboard, baseline in rows:
            ours, theirs = best(base, dashboard), best(base, baseline)
            figures = f"dashboard JSON {ours * 1000:.0f} ms, REST {theirs * 1000:.0f} ms"
            print(f"{name}: {figures}, ratio {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
