"""``DatacatClient``: the low-level synchronous client, one method per REST endpoint.

Owns nothing but the mapping of methods to paths: each call goes through
``HttpTransport.request`` at once, returns the decoded answer, and raises a ``DatacatError``
subclass carrying the server's error text (``NotFoundError`` for 404, ``AuthenticationError`` for
401, ``TransportError`` when the server cannot be reached). For queued, never-raising reporting
use ``datacat.create_session``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

from datacat.errors import DatacatError
from datacat.transport import HttpTransport

JSONDict = dict[str, Any]


class DatacatClient:
    """Calls the DataCat REST API directly and synchronously."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = HttpTransport(self.base_url, api_key, timeout)

    def create_session(self, product: str, version: str, **fields: Any) -> JSONDict:
        """``POST /api/sessions``; ``fields`` may hold ``id``, ``machine_id``, ``hostname``,
        ``state``."""
        return self._post("/api/sessions", {"product": product, "version": version, **fields})

    def get_session(self, session_id: str) -> JSONDict:
        return self._http.request("GET", f"/api/sessions/{session_id}")

    def update_state(self, session_id: str, state: Mapping[str, Any]) -> JSONDict:
        return self._post(f"/api/sessions/{session_id}/state", dict(state))

    def log_event(self, session_id: str, name: str, **fields: Any) -> JSONDict:
        return self._post(f"/api/sessions/{session_id}/events", {"name": name, **fields})

    def log_metric(self, session_id: str, name: str, value: float, **fields: Any) -> JSONDict:
        body = {"name": name, "value": value, **fields}
        return self._post(f"/api/sessions/{session_id}/metrics", body)

    def heartbeat(self, session_id: str) -> JSONDict:
        return self._post(f"/api/sessions/{session_id}/heartbeat", {})

    def end_session(self, session_id: str) -> JSONDict:
        return self._post(f"/api/sessions/{session_id}/end", {})

    def crash_session(
        self, session_id: str, reason: str = "unknown", data: Mapping[str, Any] | None = None
    ) -> JSONDict:
        body = {"reason": reason, "data": dict(data or {})}
        return self._post(f"/api/sessions/{session_id}/crash", body)

    def get_all_sessions(self, **filters: Any) -> Any:
        """``GET /api/data/sessions`` with the server's filters and paging as query parameters."""
        params = {k: v for k, v in filters.items() if v is not None}
        return self._http.request("GET", "/api/data/sessions", params=params or None)

    def batch(self, operations: list[JSONDict]) -> JSONDict:
        """``POST /api/batch`` with ready operations (``op_id``, ``op``, ``session_id``,
        ``data``)."""
        return self._post("/api/batch", {"operations": operations})

    def close(self) -> None:
        self._http.close()

    def _post(self, path: str, body: Any) -> JSONDict:
        return self._http.request("POST", path, body)


_COLUMNS = ("id", "product", "version", "status", "created_at", "hostname")


def sessions_command(args: argparse.Namespace) -> int:
    """``datacat sessions``: the server's sessions as a table (or JSON)."""
    from datacat.config import resolve

    config = resolve(url=args.url, api_key=args.api_key)
    client = DatacatClient(config.url, config.api_key, config.timeout)
    filters = {
        "product": args.product,
        "version": args.product_version,
        "status": args.status,
        "limit": args.limit,
        "summary": "1",
    }
    try:
        sessions = client.get_all_sessions(**filters)
    except DatacatError as exc:
        print(f"datacat sessions: {exc}")
        return 1
    if args.json:
        print(json.dumps(sessions, indent=2))
        return 0
    for row in [_COLUMNS, *([str(s.get(c) or "") for c in _COLUMNS] for s in sessions)]:
        print(
            "  ".join(
                f"{cell:<{width}}" for cell, width in zip(row, (36, 16, 10, 9, 27, 0), strict=True)
            ).rstrip()
        )
    return 0
