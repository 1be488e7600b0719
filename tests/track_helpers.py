"""Helpers of the ``@track`` / ``datacat.session()`` tests: read back what reached the server."""

from __future__ import annotations

from typing import Any

import requests

#: Options for sessions in tests: no disk spool (no shared files), quick flushes.
TEST_OPTIONS: dict[str, Any] = {"spool_dir": "", "flush_interval": 0.05, "exit_timeout": 5.0}


def fetch(server_url: str, session_id: str, what: str = "") -> Any:
    """``GET /api/sessions/{id}`` (``what=""``), ``.../events`` or ``.../metrics`` as JSON."""
    path = f"{server_url}/api/sessions/{session_id}" + (f"/{what}" if what else "")
    response = requests.get(path, timeout=10)
    response.raise_for_status()
    return response.json()


def timings(metrics: list[dict[str, Any]], name: str) -> dict[str, tuple[int, float]]:
    """``{outcome: (count, seconds)}`` of the timer ``name``, summed over flush intervals."""
    totals: dict[str, tuple[int, float]] = {}
    for metric in metrics:
        if metric["name"] == name and metric["type"] == "timer":
            outcome = metric["tags"].get("outcome", "")
            count, seconds = totals.get(outcome, (0, 0.0))
            totals[outcome] = (count + metric["count"], seconds + metric["value"])
    return totals


def exceptions(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The exception events of a session."""
    return [event for event in events if event.get("exception_type")]
