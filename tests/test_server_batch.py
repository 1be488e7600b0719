"""``POST /api/batch`` over HTTP: ordering, idempotency, per-operation failures, both backends."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from serverproc import Api

from datacat import rows
from datacat.batching import ROWS, Batcher
from datacat.limits import HUNG_EVENT
from datacat.model import OPERATIONS


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
    assert first == {"success": True, "applied": 8, "duplicates": 0, "failed": [],
                     "operations": list(OPERATIONS)}  # fmt: skip
    again = api.batch(operations).json()
    assert again == {"success": True, "applied": 0, "duplicates": 8, "failed": [],
                     "operations": list(OPERATIONS)}  # fmt: skip
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


def _concurrent_batches(api: Api, batches: list[list[dict[str, Any]]]) -> list[int]:
    """Send every batch at once from its own thread; their statuses."""
    barrier = threading.Barrier(len(batches))

    def send(operations: list[dict[str, Any]]) -> int:
        barrier.wait()
        return Api(api.url).batch(operations).status_code

    with ThreadPoolExecutor(len(batches)) as pool:
        return list(pool.map(send, batches))


def test_concurrent_batches_on_one_session_never_deadlock(api: Api) -> None:
    """An event's foreign key locks its session KEY SHARE; a later state/heartbeat in the same
    batch locking it FOR UPDATE deadlocked against a concurrent copy (PostgreSQL: 500s)."""
    sid = api.create()["id"]
    batches = [
        ops(
            sid,
            ("event", {"name": "e"}),
            ("state", {f"k{i}": n}),
            ("heartbeat", {}),
            ("state", {f"k{i}": n}),
        )
        for n in range(4)
        for i in range(8)
    ]
    assert set(_concurrent_batches(api, batches)) == {200}
    state = api.get(sid)["state"]
    assert {f"k{i}" for i in range(8)} <= set(state)


def test_concurrent_batches_locking_two_sessions_in_opposite_orders(api: Api) -> None:
    a, b = api.create()["id"], api.create()["id"]

    def batch(first: str, second: str, n: int) -> list[dict[str, Any]]:
        return [
            *ops(first, ("event", {"name": "e"}), ("state", {"n": n})),
            *ops(second, ("heartbeat", {}), ("state", {"n": n})),
        ]

    batches = [batch(a, b, n) if n % 2 else batch(b, a, n) for n in range(24)]
    assert set(_concurrent_batches(api, batches)) == {200}
    assert len(api.get(a)["events"]) + len(api.get(b)["events"]) == 24


def _raw_batch(api: Api, session_id: str, *datas: str) -> dict[str, Any]:
    """A batch of events whose ``data`` JSON is given as text (``1e400`` cannot be dumped)."""
    items = [
        f'{{"op_id": "{uuid.uuid4()}", "op": "event", "session_id": "{session_id}", "data": {d}}}'
        for d in datas
    ]
    body = '{"operations": [' + ", ".join(items) + "]}"
    response = api.request("POST", "/api/batch", data=body.encode())
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.mark.parametrize(
    "bad",
    [
        '{"name": "x", "data": {"big": 1e400}}',
        '{"name": "x", "data": {"deep": [[-1e999]]}}',
        '{"name": "\\ud800"}',
        '{"name": "x", "message": "\\udcff"}',
        '{"name": "x", "data": {"\\ud800": 1}}',
        '{"name": "x", "labels": ["\\udcff"]}',
        '{"name": "x", "data": ' + '{"a": ' * 100 + "1" + "}" * 100 + "}",
    ],
)
def test_unstorable_values_fail_their_operation_only(api: Api, bad: str) -> None:
    """Non-finite numbers, lone surrogates and too deep nesting were a 500 for the whole batch
    (which the client retries forever); now they are that operation's 400."""
    sid = api.create()["id"]
    answer = _raw_batch(api, sid, '{"name": "before"}', bad, '{"name": "after"}')
    assert answer["applied"] == 2
    assert [(f["index"], f["status"]) for f in answer["failed"]] == [(1, 400)]
    assert [e["name"] for e in api.get(sid)["events"]] == ["before", "after"]


def test_unstorable_state_and_create_fail_their_operation_only(api: Api) -> None:
    sid, new = api.create()["id"], str(uuid.uuid4())
    deep: Any = 1
    for _ in range(900):
        deep = {"d": deep}
    operations = [
        *ops(sid, ("state", {"ok": 1}), ("state", deep), ("state", {"\udcff": 1})),
        *ops(new, ("create", {"product": "p", "version": "1", "state": deep})),
        *ops(sid, ("crash", {"reason": "r", "data": deep})),
    ]
    answer = api.batch(operations).json()
    assert [(f["index"], f["status"]) for f in answer["failed"]] == [(i, 400) for i in (1, 2, 3, 4)]
    assert api.get(sid)["state"]["ok"] == 1 and api.get(sid)["status"] == "active"
    assert api.request("GET", f"/api/sessions/{new}").status_code == 404


# -- rows: many events (and their timers) of one shape in one operation -------------------------

TEMPLATE = rows.template(
    "test_passed",
    columns=("nodeid", "duration", "markers", "location"),
    category="pytest",
    data={"outcome": "passed"},
    message="nodeid",
    timer="pytest.test.duration",
    timer_tags={"outcome": "passed"},
    timer_tag_columns=("nodeid",),
)
#: Rows the client sends as they are (``rows.split_ready``), some with unusual values the
#: server checks the general way (non-ASCII text, nested data, a tiny and a huge float).
ROWS_SENT = [
    (1_700_000_000.5, "t.py::test_a", 0.25, ("slow",), ("t.py", 1, "test_a"), 0.5),
    (1_700_000_001.0, "t.py::test_\u00e9", 1e-300, (), ("t.py", 2, "test_\u00e9"), 1e300),
    (1_700_000_002.0, "t.py::test_c", 0.0, ({"k": [1, None, True]},), ("t.py", 3, "c"), 0.0),
]


def _stored(api: Api, sid: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    session = api.get(sid)
    return session["events"], session["metrics"]


def test_a_rows_operation_stores_what_its_events_and_timers_would(api: Api) -> None:
    """Its rows are stored exactly as the event and metric operations the client would
    otherwise send for them (``Batcher`` without rows on the wire)."""
    as_rows, as_ops = api.create()["id"], api.create()["id"]
    assert rows.split_ready(TEMPLATE, ROWS_SENT, lambda row: True)[1] == []
    (op,) = ops(as_rows, ("rows", rows.wire_form(TEMPLATE, ROWS_SENT)))
    answer = api.batch([op]).json()
    assert answer["success"] and answer["applied"] == 6 and "rows" in answer["operations"]
    expanded = Batcher().operations([(ROWS, as_ops, TEMPLATE, ROWS_SENT)])
    assert [o["op"] for o in expanded] == ["event", "metric"] * 3
    assert api.batch(expanded).json()["applied"] == 6
    assert _stored(api, as_rows) == _stored(api, as_ops)
    assert api.batch([op]).json()["duplicates"] == 1  # a retry stores nothing twice
    assert len(_stored(api, as_rows)[0]) == 3


@pytest.mark.parametrize(
    ("data", "details"),
    [
        ({"template": TEMPLATE, "rows": [[1.0, "x", 0.1, [], ["t.py", 1, "x"]]]}, "rows[0] has 5"),
        ({"template": TEMPLATE, "rows": [[1.0, "x", 0.1, [], [], "no"]]}, "rows[0]: value"),
        ({"template": TEMPLATE, "rows": [[-1.0, "x", 0.1, [], [], 1.0]]}, "rows[0]: timestamp"),
        ({"template": {**TEMPLATE, "columns": ["a", "a"]}, "rows": []}, "template.columns"),
        ({"template": {**TEMPLATE, "message": 9}, "rows": []}, "template.message"),
        (
            {
                "template": {**TEMPLATE, "name": HUNG_EVENT},
                "rows": [[1.0, "x", 0, [], [], 1.0]],
            },
            "rows[0]: a row cannot be",
        ),
        ({"template": TEMPLATE, "rows": "no"}, "rows must be a list of lists"),
        ({"rows": []}, "template must be"),
    ],
)
def test_a_rows_operation_the_server_cannot_store_fails_whole(
    api: Api, data: Any, details: str
) -> None:
    sid = api.create()["id"]
    good = (1.0, "ok", 0.1, (), ("t.py", 1, "ok"), 0.2)
    operations = ops(sid, ("rows", rows.wire_form(TEMPLATE, [good])), ("rows", data))
    answer = api.batch(operations).json()
    [failure] = answer["failed"]
    assert failure["index"] == 1 and failure["status"] == 400
    assert failure["details"].startswith(details), failure
    assert len(_stored(api, sid)[0]) == 1  # the good operation, not a row of the bad one
