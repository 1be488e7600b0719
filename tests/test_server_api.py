"""The REST API over HTTP against a real server process, on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests


def create(url: str, **body: Any) -> dict[str, Any]:
    body.setdefault("product", "ApiTest")
    body.setdefault("version", "1.0.0")
    response = requests.post(f"{url}/api/sessions", json=body, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def post(url: str, path: str, body: Any = None) -> requests.Response:
    return requests.post(f"{url}/api/sessions/{path}", json=body, timeout=10)


def get(url: str, session_id: str) -> dict[str, Any]:
    response = requests.get(f"{url}/api/sessions/{session_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_reference_walkthrough(api_url: str) -> None:
    session = create(api_url, product="MyApp")
    sid = session["id"]
    assert session["session_id"] == sid
    assert session["state"] == {"product": "MyApp", "version": "1.0.0"}
    assert session["status"] == "active" and session["active"] is True
    assert post(api_url, f"{sid}/state", {"status": "running"}).json() == {"success": True}
    assert post(api_url, f"{sid}/events", {"name": "startup", "data": {"config": "prod"}}).ok
    assert post(api_url, f"{sid}/metrics", {"name": "memory_mb", "value": 512.5}).ok
    assert post(api_url, f"{sid}/end").json() == {"success": True}
    final = get(api_url, sid)
    assert final["state"]["status"] == "running"
    assert [e["name"] for e in final["events"]] == ["startup"]
    assert final["events"][0]["level"] == "info"
    assert final["metrics"][0]["value"] == 512.5
    assert final["status"] == "ended" and final["active"] is False


def test_create_with_client_id_is_idempotent(api_url: str) -> None:
    sid = str(uuid.uuid4())
    assert create(api_url, id=sid)["id"] == sid
    again = requests.post(
        f"{api_url}/api/sessions", json={"id": sid, "product": "x", "version": "2"}, timeout=10
    )
    assert again.status_code == 200
    assert again.json()["version"] == "1.0.0"


def test_state_deep_merges_and_keeps_history(api_url: str) -> None:
    sid = create(api_url, state={"player": {"level": 1, "name": "ada"}})["id"]
    post(api_url, f"{sid}/state", {"player": {"level": 2}, "tags": ["a"]})
    post(api_url, f"{sid}/state", {"state": {"player": {"name": None}}, "timestamp": 1e9 * 1.8})
    session = get(api_url, sid)
    assert session["state"] == {
        "product": "ApiTest",
        "version": "1.0.0",
        "player": {"level": 2},
        "tags": ["a"],
    }
    levels = [h["state"].get("player", {}).get("level") for h in session["state_history"]]
    assert levels == [1, 2, 2]


def test_ever_had_state_filter(api_url: str) -> None:
    product = f"p-{uuid.uuid4().hex[:8]}"
    first = create(api_url, product=product)["id"]
    second = create(api_url, product=product)["id"]
    post(api_url, f"{first}/state", {"player": {"level": 3}})
    post(api_url, f"{first}/state", {"player": {"level": 4}})
    post(api_url, f"{second}/state", {"player": {"level": "3x"}})
    found = requests.get(
        f"{api_url}/api/data/sessions",
        params={"product": product, "state.player.level": "3", "summary": "1"},
        timeout=10,
    ).json()
    assert [s["id"] for s in found] == [first]


def test_unknown_session_is_404_everywhere(api_url: str) -> None:
    sid = str(uuid.uuid4())
    for path, body in [
        ("state", {"a": 1}),
        ("events", {"name": "x"}),
        ("metrics", {"name": "x", "value": 1}),
        ("heartbeat", None),
        ("end", None),
        ("crash", None),
    ]:
        response = post(api_url, f"{sid}/{path}", body)
        assert response.status_code == 404, path
        assert response.json()["error"] == "session not found"
    assert requests.get(f"{api_url}/api/sessions/{sid}", timeout=10).status_code == 404


def test_crash_logs_the_reason_and_end_after_it_changes_nothing(api_url: str) -> None:
    sid = create(api_url)["id"]
    crashed = post(api_url, f"{sid}/crash", {"reason": "segfault"})
    assert crashed.json() == {"status": "ok"}
    assert post(api_url, f"{sid}/end").ok
    session = get(api_url, sid)
    assert session["status"] == "crashed" and session["crash_reason"] == "segfault"
    names = [e["name"] for e in session["events"]]
    assert names == ["session_crashed_detected"]


def test_batch_applies_in_order_and_is_idempotent(api_url: str) -> None:
    sid = str(uuid.uuid4())
    ops = [
        {"op": "create", "data": {"product": "B", "version": "1"}},
        {"op": "state", "data": {"k": 1}},
        {"op": "event", "data": {"name": "e"}},
        {"op": "metric", "data": {"name": "c", "value": 2, "type": "counter"}},
        {"op": "metric", "data": {"name": "c", "value": 3, "type": "counter"}},
        {"op": "heartbeat", "data": None},
        {"op": "end", "data": {}},
    ]
    body = {"operations": [{"op_id": str(uuid.uuid4()), "session_id": sid, **op} for op in ops]}
    first = requests.post(f"{api_url}/api/batch", json=body, timeout=10).json()
    assert first == {"success": True, "applied": 7, "duplicates": 0, "failed": []}
    again = requests.post(f"{api_url}/api/batch", json=body, timeout=10).json()
    assert again == {"success": True, "applied": 0, "duplicates": 7, "failed": []}
    session = get(api_url, sid)
    assert session["counters"] == {"c": 5.0}
    assert len(session["events"]) == 1 and session["status"] == "ended"


def test_batch_reports_failed_operations(api_url: str) -> None:
    sid = create(api_url)["id"]
    body = {
        "operations": [
            {"op_id": str(uuid.uuid4()), "op": "event", "session_id": sid, "data": {}},
            {
                "op_id": str(uuid.uuid4()),
                "op": "event",
                "session_id": str(uuid.uuid4()),
                "data": {"name": "x"},
            },
            {"op_id": "nope", "op": "event", "session_id": sid, "data": {"name": "x"}},
            {"op_id": str(uuid.uuid4()), "op": "event", "session_id": sid, "data": {"name": "ok"}},
        ]
    }
    answer = requests.post(f"{api_url}/api/batch", json=body, timeout=10).json()
    assert answer["success"] is False and answer["applied"] == 1
    assert [(f["index"], f["status"]) for f in answer["failed"]] == [(0, 400), (1, 404), (2, 400)]
    assert [e["name"] for e in get(api_url, sid)["events"]] == ["ok"]


@pytest.mark.parametrize(
    "method,path,body,status",
    [
        ("POST", "/api/sessions", b"{not json", 400),
        ("POST", "/api/sessions", b"[]", 400),
        ("POST", "/api/sessions", b'{"product": 1, "version": "1"}', 400),
        ("POST", "/api/sessions", b'{"version": "1"}', 400),
        ("POST", "/api/sessions", b'{"product": "a", "version": "1", "id": "x"}', 400),
        ("POST", "/api/sessions", b"", 400),
        ("POST", "/api/batch", b'{"operations": 3}', 400),
        ("POST", "/api/batch", b"\xff\xfe\x00", 400),
        ("DELETE", "/api/sessions", b"", 405),
        ("GET", "/api/nothing", b"", 404),
        ("GET", "/api/data/sessions?limit=0", b"", 400),
        ("GET", "/api/data/sessions?status=asleep", b"", 400),
        ("GET", "/api/data/sessions?cursor=%%%", b"", 400),
        ("GET", "/api/data/sessions?created_after=yesterday", b"", 400),
    ],
)
def test_malformed_requests_get_json_errors(
    api_url: str, method: str, path: str, body: bytes, status: int
) -> None:
    response = requests.request(method, api_url + path, data=body, timeout=10)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error", "details"}
