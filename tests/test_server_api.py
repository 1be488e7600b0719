"""The REST endpoints over HTTP against a real server process, on SQLite and on PostgreSQL."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from serverproc import Api, ServerProcess


@pytest.fixture(scope="module")
def api(api_url: str) -> Api:
    return Api(api_url)


def unique(prefix: str = "p") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_the_reference_walkthrough(api: Api) -> None:
    session = api.create(product="MyApp")
    sid = session["id"]
    assert session["session_id"] == sid
    assert session["state"] == {"product": "MyApp", "version": "1.0.0"}
    assert session["status"] == "active" and session["active"] is True
    assert session["events"] == [] and session["metrics"] == []
    assert api.post(sid, "state", {"status": "running"}).json() == {"success": True}
    assert api.post(sid, "events", {"name": "startup", "data": {"config": "prod"}}).ok
    assert api.post(sid, "metrics", {"name": "memory_mb", "value": 512.5}).ok
    assert api.post(sid, "end").json() == {"success": True}
    final = api.get(sid)
    assert final["state"]["status"] == "running"
    assert [(e["name"], e["level"], e["data"]) for e in final["events"]] == [
        ("startup", "info", {"config": "prod"})
    ]
    assert final["metrics"][0]["value"] == 512.5 and final["metrics"][0]["type"] == "gauge"
    assert final["status"] == "ended" and final["active"] is False and final["ended_at"]


def test_create_keeps_machine_identity_and_initial_state(api: Api) -> None:
    session = api.create(machine_id="m-1", hostname="box", state={"mode": "cli"})
    assert (session["machine_id"], session["hostname"]) == ("m-1", "box")
    assert session["state"]["mode"] == "cli"


def test_create_with_client_id_is_idempotent(api: Api) -> None:
    sid = str(uuid.uuid4())
    assert api.create(id=sid)["id"] == sid
    again = api.request("POST", "/api/sessions", json={"id": sid, "product": "x", "version": "2"})
    assert again.status_code == 200
    assert again.json()["version"] == "1.0.0"


def test_event_fields_round_trip(api: Api) -> None:
    sid = api.create()["id"]
    event = {
        "name": "boom",
        "exception_type": "ValueError",
        "exception_msg": "bad",
        "stacktrace": "line 1\nline 2",
        "labels": ["a", "b"],
        "source_line": 12,
        "timestamp": "2026-01-02T03:04:05Z",
    }
    assert api.post(sid, "events", event).ok
    stored = api.get(sid)["events"][0]
    assert stored["level"] == "error"  # the default for exceptions
    assert stored["stacktrace"] == ["line 1", "line 2"]
    assert stored["timestamp"] == "2026-01-02T03:04:05.000000Z"
    assert (stored["labels"], stored["source_line"]) == (["a", "b"], 12)


def test_state_deep_merges_and_keeps_history(api: Api) -> None:
    sid = api.create(state={"player": {"level": 1, "name": "ada"}})["id"]
    api.post(sid, "state", {"player": {"level": 2}, "tags": ["a"]})
    api.post(sid, "state", {"state": {"player": {"name": None}}, "timestamp": time.time()})
    session = api.get(sid)
    assert session["state"] == {
        "product": "ApiTest",
        "version": "1.0.0",
        "player": {"level": 2},
        "tags": ["a"],
    }
    history = session["state_history"]
    assert [h["state"]["player"].get("level") for h in history] == [1, 2, 2]
    assert history[-1]["update"] == {"player": {"name": None}}


def test_counters_read_as_totals(api: Api) -> None:
    sid = api.create()["id"]
    for delta in (1, 2, 3.5):
        api.post(sid, "metrics", {"name": "requests", "value": delta, "type": "counter"})
    api.post(sid, "metrics", {"name": "rss", "value": 10})
    assert api.get(sid)["counters"] == {"requests": 6.5}


@pytest.fixture(scope="module")
def quick(storage_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A second server on the same database whose heartbeat timeout is SHORT seconds."""
    log_dir = tmp_path_factory.mktemp("quick-server")
    with ServerProcess(storage_url, heartbeat_timeout=SHORT, log_dir=log_dir) as server:
        yield Api(server.url)


SHORT = 0.5


def test_status_suspended_after_heartbeats_stop(api: Api, quick: Api) -> None:
    sid = api.create()["id"]
    api.post(sid, "heartbeat")
    assert api.get(sid)["status"] == "active"
    time.sleep(2 * SHORT)  # the server's clock decides, so only time passing suspends
    session = quick.get(sid)
    assert session["status"] == "suspended" and session["suspended"] is True


def test_liveness_is_the_servers_clock_not_the_clients(api: Api) -> None:
    """A client clock an hour behind (or a heartbeat arriving late, out of order) must not show
    a live session suspended, nor move its last heartbeat back."""
    sid = api.create()["id"]
    api.post(sid, "heartbeat")
    first = api.get(sid)["last_heartbeat"]
    api.post(sid, "heartbeat", {"timestamp": time.time() - 3600})
    session = api.get(sid)
    assert session["status"] == "active" and session["last_heartbeat"] >= first


def test_session_without_heartbeats_is_never_suspended_or_hung(api: Api) -> None:
    sid = api.create(timestamp=time.time() - 3600)["id"]
    session = api.get(sid)
    assert session["status"] == "active"
    assert (session["hung"], session["suspended"]) == (False, False)


def test_hang_until_a_heartbeat_logs_recovery(api: Api) -> None:
    sid = api.create()["id"]
    api.post(sid, "events", {"name": "application_appears_hung", "level": "warning"})
    assert api.get(sid)["status"] == "hung"
    api.post(sid, "heartbeat")
    session = api.get(sid)
    assert session["status"] == "active" and session["hung"] is False
    names = [e["name"] for e in session["events"]]
    assert names == ["application_appears_hung", "application_recovered"]


def test_crash_logs_the_reason_and_end_after_it_changes_nothing(api: Api) -> None:
    sid = api.create()["id"]
    assert api.post(sid, "crash", {"reason": "segfault"}).json() == {"status": "ok"}
    assert api.post(sid, "end").ok
    assert api.post(sid, "crash", {"reason": "again"}).json() == {"status": "ok"}
    session = api.get(sid)
    assert session["status"] == "crashed" and session["crash_reason"] == "segfault"
    crash_events = [e for e in session["events"] if e["name"] == "session_crashed_detected"]
    assert len(crash_events) == 1 and crash_events[0]["message"] == "segfault"


def test_end_twice_keeps_the_first_end(api: Api) -> None:
    sid = api.create()["id"]
    api.post(sid, "end", {"timestamp": 1_800_000_000})
    api.post(sid, "end", {"timestamp": 1_900_000_000})
    assert api.post(sid, "crash").ok
    session = api.get(sid)
    assert session["ended_at"].startswith("2027-01-15") and session["status"] == "ended"


def test_new_session_from_machine_crashes_its_suspended_one(quick: Api) -> None:
    machine = unique("machine")
    old = quick.create(machine_id=machine)["id"]
    quick.post(old, "heartbeat")
    ended = quick.create(machine_id=machine)["id"]
    quick.post(ended, "end")
    time.sleep(2 * SHORT)
    quick.create(machine_id=machine)
    assert quick.get(old)["status"] == "crashed"
    assert quick.get(ended)["status"] == "ended"
    assert "session_crashed_detected" in [e["name"] for e in quick.get(old)["events"]]


def test_machine_rule_ignores_the_creates_clock(api: Api) -> None:
    """A create whose client clock is an hour ahead must not crash the machine's live session."""
    machine = unique("machine")
    live = api.create(machine_id=machine)["id"]
    api.post(live, "heartbeat")
    api.create(machine_id=machine, timestamp=time.time() + 3600)
    assert api.get(live)["status"] == "active"


def hung_sessions(api: Api, hang: str) -> set[str]:
    answer = api.request("GET", "/dashboard/api/sessions", params={"hang": hang, "per_page": 100})
    return {s["id"] for s in answer.json()["sessions"]}


def test_late_writes_do_not_rewrite_how_a_session_ended(api: Api) -> None:
    """hung → crash → a late heartbeat: no recovery is logged after the crash and the session
    stays "hung when it crashed"; a late recovery event after an end changes nothing either."""
    crashed, ended = api.create()["id"], api.create()["id"]
    for sid, verb in ((crashed, "crash"), (ended, "end")):
        api.post(sid, "events", {"name": "application_appears_hung"})
        api.post(sid, verb, {})
    api.post(crashed, "heartbeat")
    api.post(ended, "events", {"name": "application_recovered"})
    names = [e["name"] for e in api.get(crashed)["events"]]
    assert names == ["application_appears_hung", "session_crashed_detected"]
    assert crashed in hung_sessions(api, "crashed") and ended in hung_sessions(api, "ended")


def test_unknown_session_is_404_everywhere(api: Api) -> None:
    sid = str(uuid.uuid4())
    for verb, body in [
        ("state", {"a": 1}),
        ("events", {"name": "x"}),
        ("metrics", {"name": "x", "value": 1}),
        ("heartbeat", None),
        ("end", None),
        ("crash", None),
    ]:
        response = api.post(sid, verb, body)
        assert response.status_code == 404, verb
        assert response.json() == {"error": "session not found", "details": sid}
    for path in (sid, f"{sid}/events", f"{sid}/metrics", "not-a-uuid"):
        assert api.request("GET", f"/api/sessions/{path}").status_code == 404


def list_sessions(api: Api, **params: Any) -> tuple[list[dict[str, Any]], str | None]:
    response = api.request("GET", "/api/data/sessions", params=params)
    assert response.status_code == 200, response.text
    return response.json(), response.headers.get("X-Next-Cursor")


def test_list_filters_by_product_version_status_and_time(api: Api) -> None:
    product = unique()
    a = api.create(product=product, version="1", timestamp=1_700_000_000)["id"]
    b = api.create(product=product, version="2", timestamp=1_700_000_100)["id"]
    api.post(b, "end")
    assert [s["id"] for s in list_sessions(api, product=product)[0]] == [b, a]
    assert [s["id"] for s in list_sessions(api, product=product, version="1")[0]] == [a]
    assert [s["id"] for s in list_sessions(api, product=product, status="ended")[0]] == [b]
    assert [s["id"] for s in list_sessions(api, product=product, status="active")[0]] == [a]
    after = list_sessions(api, product=product, created_after="2023-11-14T22:14:00Z")[0]
    assert [s["id"] for s in after] == [b]
    before = list_sessions(api, product=product, created_before=1_700_000_050)[0]
    assert [s["id"] for s in before] == [a]


def test_list_pages_with_a_cursor(api: Api) -> None:
    product = unique()
    made = [api.create(product=product)["id"] for _ in range(5)]
    seen = every_page(api, product)
    assert sorted(seen) == sorted(made) and len(seen) == 5


def every_page(api: Api, product: str) -> list[str]:
    """The ids of every page of ``product``'s sessions, two at a time, following the cursor."""
    seen, cursor = [], None
    while True:
        params = {"product": product, "limit": 2, "summary": "true"}
        page, cursor = list_sessions(api, **params, **({"cursor": cursor} if cursor else {}))
        seen += [s["id"] for s in page]
        if cursor is None:
            return seen


def test_list_pages_through_sessions_created_at_the_same_moment(api: Api) -> None:
    product = unique()
    made = {api.create(product=product, timestamp=1_750_000_000)["id"] for _ in range(7)}
    seen = every_page(api, product)
    assert len(seen) == 7 and set(seen) == made  # none skipped, none repeated


def cursor_of(key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "key",
    [[True, "x"], [1, "\ud800"], [10**30, "x"], [-1, "x"], [1, "x" * 100], [[1], "x"]],
)
def test_malformed_session_cursor_is_400(api: Api, key: Any) -> None:
    response = api.request(
        "GET", "/api/data/sessions", params={"limit": 1, "cursor": cursor_of(key)}
    )
    assert response.status_code == 400, response.text


@pytest.mark.parametrize("key", [2**63, -1, True, 1.5, "x"])
def test_malformed_row_cursor_is_400(api: Api, key: Any) -> None:
    sid = api.create()["id"]
    for raw in (cursor_of(key), base64.urlsafe_b64encode(b"[" * 5000).decode()):
        response = api.request("GET", f"/api/sessions/{sid}/events", params={"cursor": raw})
        assert response.status_code == 400, response.text


def test_summary_has_counts_instead_of_rows(api: Api) -> None:
    product = unique()
    sid = api.create(product=product)["id"]
    api.post(sid, "events", {"name": "e"})
    (summary,), _ = list_sessions(api, product=product, summary="1")
    assert (summary["event_count"], summary["metric_count"]) == (1, 0)
    assert "events" not in summary and "state_history" not in summary
    (full,), _ = list_sessions(api, product=product)
    assert [e["name"] for e in full["events"]] == ["e"]


def test_ever_had_state_filter(api: Api) -> None:
    product = unique()
    first = api.create(product=product)["id"]
    second = api.create(product=product)["id"]
    api.post(first, "state", {"player": {"level": 3}})
    api.post(first, "state", {"player": {"level": 4}})
    api.post(second, "state", {"player": {"level": "3x"}, "name": "3"})
    assert [
        s["id"] for s in list_sessions(api, product=product, **{"state.player.level": "3"})[0]
    ] == [first]
    assert [s["id"] for s in list_sessions(api, product=product, **{"state.name": "3"})[0]] == [
        second
    ]
    both = {"state.player.level": "4", "state.product": product}
    assert [s["id"] for s in list_sessions(api, product=product, **both)[0]] == [first]


def rows(api: Api, sid: str, kind: str, **params: Any) -> tuple[list[dict[str, Any]], str | None]:
    response = api.request("GET", f"/api/sessions/{sid}/{kind}", params=params)
    assert response.status_code == 200, response.text
    return response.json(), response.headers.get("X-Next-Cursor")


def test_events_endpoint_filters_and_pages(api: Api) -> None:
    sid = api.create()["id"]
    for i in range(5):
        level = "error" if i % 2 else "info"
        api.post(sid, "events", {"name": f"e{i % 2}", "level": level, "timestamp": 1_000 + i})
    page, cursor = rows(api, sid, "events", limit=3)
    assert [e["timestamp"][-10:-1] for e in page] == ["40.000000", "41.000000", "42.000000"]
    rest, end = rows(api, sid, "events", limit=3, cursor=cursor)
    assert len(rest) == 2 and end is None
    assert len(rows(api, sid, "events", level="error")[0]) == 2
    assert len(rows(api, sid, "events", name="e0")[0]) == 3
    assert len(rows(api, sid, "events", since=1_003)[0]) == 2


def test_metrics_endpoint_filters(api: Api) -> None:
    sid = api.create()["id"]
    api.post(sid, "metrics", {"name": "a", "value": 1, "type": "counter"})
    api.post(sid, "metrics", {"name": "b", "value": 2, "unit": "ms", "type": "timer", "count": 3})
    assert [m["name"] for m in rows(api, sid, "metrics", type="timer")[0]] == ["b"]
    assert rows(api, sid, "metrics", name="a")[0][0]["value"] == 1


def test_nul_is_refused_in_text_fields_and_kept_inside_data(api: Api) -> None:
    sid = api.create()["id"]
    assert api.post(sid, "events", {"name": "a\u0000b"}).status_code == 400
    assert api.post(sid, "crash", {"reason": "\u0000"}).status_code == 400
    created = api.request("POST", "/api/sessions", json={"product": "\u0000", "version": "1"})
    assert created.status_code == 400
    assert api.post(sid, "events", {"name": "ok", "data": {"k": "\u0000"}}).ok
    assert api.post(sid, "state", {"k": "\u0000"}).ok
    session = api.get(sid)
    assert session["events"][0]["data"] == {"k": "\x00"} and session["state"]["k"] == "\x00"


def test_too_deep_state_is_refused_before_anything_is_stored(api: Api) -> None:
    """900 levels: the row was committed, then every read of it answered 400 forever."""
    sid, deep = str(uuid.uuid4()), 1
    for _ in range(900):
        deep = {"d": deep}  # type: ignore[assignment]
    body = {"id": sid, "product": unique(), "version": "1", "state": deep}
    assert api.request("POST", "/api/sessions", json=body).status_code == 400
    assert api.request("GET", f"/api/sessions/{sid}").status_code == 404
    shallow: Any = 1
    for _ in range(64 - 1):
        shallow = {"d": shallow}
    assert api.create(id=sid, state=shallow)["id"] == sid
    assert list_sessions(api, product="ApiTest", limit=5)[0]
