"""``POST /api/batch`` over HTTP: ordering, idempotency, per-operation failures, both backends."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from serverproc import Api


@pytest.fixture(scope="module")
def api(api_url: str) -> Api:
    return Api(api_url)


def ops(session_id: str, *items: tuple[str, Any]) -> list[dict[str, Any]]:
    return [
        {"op_id": str(uuid.uuid4()), "op": op, "session_id": session_id, "data": data}
        for op, data in items
    ]


def test_batch_applies_in_order_and_a_retry_changes_nothing(api: Api) -> None:
    sid = str(uuid.uuid4())
    operations = ops(
        sid,
        ("create", {"product": "B", "version": "1", "machine_id": "m"}),
        ("state", {"k": 1}),
        ("event", {"name": "e"}),
        ("metric", {"name": "c", "value": 2, "type": "counter"}),
        ("state", {"state": {"k": 2}, "timestamp": 1_800_000_000}),
        ("metric", {"name": "c", "value": 3, "type": "counter"}),
        ("heartbeat", None),
        ("end", {}),
    )
    first = api.batch(operations).json()
    assert first == {"success": True, "applied": 8, "duplicates": 0, "failed": []}
    again = api.batch(operations).json()
    assert again == {"success": True, "applied": 0, "duplicates": 8, "failed": []}
    session = api.get(sid)
    assert session["counters"] == {"c": 5.0} and session["state"]["k"] == 2
    assert len(session["events"]) == 1 and session["status"] == "ended"


def test_same_op_id_twice_in_one_batch_applies_once(api: Api) -> None:
    sid = api.create()["id"]
    (event,) = ops(sid, ("event", {"name": "once"}))
    answer = api.batch([event, event]).json()
    assert (answer["applied"], answer["duplicates"]) == (1, 1)
    assert len(api.get(sid)["events"]) == 1


def test_batch_for_many_sessions(api: Api) -> None:
    sids = [str(uuid.uuid4()) for _ in range(3)]
    operations = [
        op
        for sid in sids
        for op in ops(sid, ("create", {"product": "M", "version": "1"}), ("event", {"name": "x"}))
    ]
    assert api.batch(operations).json()["applied"] == 6
    assert all(len(api.get(sid)["events"]) == 1 for sid in sids)


def test_batch_hang_then_heartbeat_recovers_in_order(api: Api) -> None:
    sid = api.create()["id"]
    api.batch(ops(sid, ("event", {"name": "application_appears_hung"}), ("heartbeat", {})))
    session = api.get(sid)
    assert session["hung"] is False
    assert [e["name"] for e in session["events"]][-1] == "application_recovered"


def test_batch_reports_each_failed_operation_and_applies_the_rest(api: Api) -> None:
    sid = api.create()["id"]
    operations = [
        *ops(sid, ("event", {})),
        *ops(str(uuid.uuid4()), ("event", {"name": "x"})),
        {"op_id": "nope", "op": "event", "session_id": sid, "data": {"name": "x"}},
        {"op_id": str(uuid.uuid4()), "op": "fly", "session_id": sid, "data": {}},
        *ops(sid, ("create", {"product": "a", "version": "1", "id": str(uuid.uuid4())})),
        *ops(sid, ("metric", {"name": "m", "value": "NaN"})),
        *ops(sid, ("event", {"name": "ok"})),
    ]
    answer = api.batch(operations).json()
    assert answer["success"] is False and answer["applied"] == 1
    statuses = [(f["index"], f["status"]) for f in answer["failed"]]
    assert statuses == [(0, 400), (1, 404), (2, 400), (3, 400), (4, 400), (5, 400)]
    assert answer["failed"][1]["op_id"] == operations[1]["op_id"]
    assert [e["name"] for e in api.get(sid)["events"]] == ["ok"]


@pytest.mark.parametrize(
    "body",
    [{"operations": {}}, {"ops": []}, [], {"operations": [{}] * 10_001}],
)
def test_malformed_envelope_is_400(api: Api, body: Any) -> None:
    response = api.request("POST", "/api/batch", json=body)
    assert response.status_code == 400
    assert set(response.json()) == {"error", "details"}


def test_concurrent_copies_of_one_batch_apply_once(api: Api) -> None:
    """A client that retries while its first attempt is still in flight must not duplicate."""
    sid = api.create()["id"]
    operations = ops(sid, *[("event", {"name": f"e{i}"}) for i in range(50)])
    barrier = threading.Barrier(4)

    def send(_i: int) -> dict[str, Any]:
        barrier.wait()
        response = Api(api.url).batch(operations)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(send, range(4)))
    assert sorted(a["applied"] for a in answers) == [0, 0, 0, 50]
    assert len(api.get(sid)["events"]) == 50
