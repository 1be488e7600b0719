"""``datacat.batching``: what the sender puts into a batch (pure; no I/O)."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from datacat import _internal
from datacat.batching import OBSERVE, RAW, Batcher, event_body, new_id
from datacat.limits import MAX_NAME

SID = "00000000-0000-4000-8000-000000000001"


def state(update: dict[str, Any], ts: float = 1.0) -> tuple[str, str, Any]:
    return ("state", SID, {"state": update, "timestamp": ts})


def test_consecutive_state_updates_fold_and_no_op_updates_vanish() -> None:
    batcher = Batcher()
    create = ("create", SID, {"id": SID, "state": {"a": 1}})
    ops = batcher.operations(
        [create, state({"a": 1}), state({"b": {"x": 1}}), state({"b": {"y": 2}}, 2)]
    )
    assert [op["op"] for op in ops] == ["create", "state"]
    assert ops[1]["data"] == {"state": {"b": {"x": 1, "y": 2}}, "timestamp": 2}
    assert batcher.operations([state({"b": {"x": 1}})]) == []


def test_updates_fold_across_other_operations_at_the_later_place() -> None:
    ops = Batcher().operations(
        [state({"a": 1}), state({"a": {"b": 1}}), ("event", SID, {"name": "e"}), state({"c": 1}, 2)]
    )
    assert [op["op"] for op in ops] == ["state", "event", "state"]
    assert ops[0]["data"]["state"] == {"a": 1}  # an object cannot fold onto a replaced key
    assert ops[2]["data"] == {"state": {"a": {"b": 1}, "c": 1}, "timestamp": 2}


def test_updates_never_fold_across_the_end_of_a_session() -> None:
    items = [state({"a": 1}), ("end", SID, {}), ("create", SID, {"id": SID}), state({"b": 1})]
    assert [op["op"] for op in Batcher().operations(items)] == ["state", "end", "create", "state"]


def test_heartbeats_collapse_and_op_ids_are_unique() -> None:
    ops = Batcher().operations([("heartbeat", SID, {"timestamp": t}) for t in (1, 2, 3)])
    assert len(ops) == 1 and ops[0]["data"] == {"timestamp": 3}
    many = Batcher().operations([("event", SID, {"name": str(i)}) for i in range(100)])
    assert len({op["op_id"] for op in many}) == 100


def test_observations_aggregate_and_precede_the_end_of_their_session() -> None:
    observe = [
        (OBSERVE, SID, "t", v, "histogram", {"k": "v"}, None, (1.0, 2.0)) for v in (0.5, 1.5, 9)
    ]
    counter = [(OBSERVE, SID, "c", 2, "counter", None, None, None)] * 3
    ops = Batcher().operations([*observe, *counter, ("end", SID, {})])
    assert [op["op"] for op in ops] == ["metric", "metric", "end"]
    hist, count = ops[0]["data"], ops[1]["data"]
    assert (hist["count"], hist["value"], hist["min"], hist["max"]) == (3, 11, 0.5, 9)
    assert hist["bucket_counts"] == [1, 1, 1] and hist["tags"] == {"k": "v"}
    assert (count["type"], count["value"], count["count"]) == ("counter", 6, 3)


def test_non_finite_metrics_are_dropped_and_counted(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_internal, "_seen", set())  # earlier tests may have logged it once
    batcher = Batcher()
    items = [
        ("metric", SID, {"name": "m", "value": float("nan")}),
        ("metric", SID, {"name": "m", "value": "12"}),
        (OBSERVE, SID, "o", float("inf"), "timer", None, "s", None),
    ]
    assert batcher.operations(items) == []
    assert batcher.nonfinite == 3 and "not a finite number" in caplog.text


def test_ids_are_uuid7_and_ignore_the_applications_random_seed() -> None:
    random.seed(7)
    first = new_id()
    random.seed(7)
    second = new_id()
    parsed = uuid.UUID(first)
    assert first != second and str(parsed) == first
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122


def test_ids_made_later_sort_later() -> None:
    """Time-ordered ids keep the server's op-id index append-mostly."""
    earlier = new_id()
    time.sleep(0.002)
    assert new_id() > earlier
    assert int(earlier[:8] + earlier[9:13], 16) == pytest.approx(time.time() * 1000, abs=5000)


def test_raw_operations_keep_their_op_id() -> None:
    op = {"op_id": "kept", "op": "event", "session_id": SID, "data": {"name": "x"}}
    assert Batcher().operations([(RAW, SID, op)]) == [op]


def observe(name: str, value: float, tags: Any = None, buckets: Any = None) -> tuple[Any, ...]:
    kind = "histogram" if buckets is not None else "timer"
    return (OBSERVE, SID, name, value, kind, tags, "s", buckets)


def test_observations_fold_whatever_the_order_of_their_tags() -> None:
    items = [
        observe("t", 1.0, {"a": "1", "b": "2"}),
        observe("t", 3.0, {"b": "2", "a": "1"}),
        observe("t", 5.0, {"a": "1"}),
    ]
    ops = Batcher().operations(items)
    by_tags = {tuple(op["data"]["tags"].items()): op["data"] for op in ops}
    assert by_tags[(("a", "1"), ("b", "2"))]["count"] == 2
    assert by_tags[(("a", "1"), ("b", "2"))]["value"] == 4.0
    assert by_tags[(("a", "1"),)]["count"] == 1


def test_buckets_given_as_a_list_are_copied_and_unhashable_tags_still_fold() -> None:
    bounds = [1.0, 10.0]
    items = [observe("h", 0.5, buckets=bounds), observe("h", 5.0, buckets=[1.0, 10.0])]
    [hist] = Batcher().operations(items)
    assert hist["data"]["bucket_counts"] == [1, 1, 0] and hist["data"]["count"] == 2
    odd = [observe("u", 1.0, {"k": ["x"]}), observe("u", 2.0, {"k": ["x"]})]
    [metric] = Batcher().operations(odd)
    assert metric["data"]["count"] == 2 and metric["data"]["tags"] == {"k": "['x']"}


def test_an_ended_session_gets_no_observation_made_before_its_end_twice() -> None:
    items = [observe("t", 1.0), ("end", SID, {}), ("create", SID, {"id": SID}), observe("t", 2.0)]
    ops = Batcher().operations(items)
    assert [(op["op"], op["data"].get("value")) for op in ops] == [
        ("metric", 1.0),
        ("end", None),
        ("create", None),
        ("metric", 2.0),
    ]


def test_plain_bodies_are_sent_as_they_are_and_the_rest_converted() -> None:
    plain = {"name": "e", "data": {"a": [1, 2.5, None, True, {"b": "x"}]}}
    odd = {
        "name": "e",
        "data": {1: object, "nan": float("nan"), "long": "y" * 20_000, "nul\x00": "a\x00b"},
    }
    [sent_plain, sent_odd] = Batcher().operations([("event", SID, plain), ("event", SID, odd)])
    assert sent_plain["data"] is plain  # nothing to convert: no copy made
    data = sent_odd["data"]["data"]
    assert data["1"] == "<class 'object'>" and data["nan"] == "nan"
    assert data["long"].startswith("y" * 100) and "truncated" in data["long"]
    assert "\x00" not in str(data)  # NUL repaired, as the server needs


def test_event_text_fields_are_made_acceptable_to_the_server() -> None:
    body = event_body("n\x00" + "x" * 1000, None, "info", 7, [1, "l"], b"m", {}, 1.0, None)
    assert "\x00" not in body["name"] and len(body["name"]) == MAX_NAME
    assert (body["category"], body["labels"], body["message"]) == ("7", ["1", "l"], "b'm'")


class Unreadable(Mapping[str, Any]):
    """A mapping that cannot be copied (its iteration fails)."""

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("unreadable")

    def __len__(self) -> int:
        return 1


def test_a_broken_item_is_dropped_alone_and_reported() -> None:
    drops: list[tuple[str, int]] = []
    batcher = Batcher(on_drop=lambda sid, n: drops.append((sid, n)))
    items = [
        ("create", SID, {"id": SID, "state": {}}),
        ("event", SID, "bad", None, "info", None, 5, None, {}, 1.0, None),  # labels=5: one label
        ("event", SID, "worse", Unreadable(), "info", None, None, None, {}, 1.0, None),
        ("metric", SID, "huge", 10**400, "gauge", None, None, 1.0),
        (OBSERVE, SID, "h", 1.0, "histogram", None, None, ("a", 2)),
        ("event", SID, "good", None, "info", None, None, None, {}, 1.0, None),
    ]
    ops = batcher.operations(items)
    assert [op["op"] for op in ops] == ["create", "event", "event"]
    assert ops[1]["data"]["labels"] == ["5"] and ops[2]["data"]["name"] == "good"
    assert drops == [(SID, 1), (SID, 1), (SID, 1)]


def test_sessions_of_unknown_state_are_never_filtered() -> None:
    batcher = Batcher()
    batcher.unknown.add(SID)
    create = ("create", SID, {"id": SID, "state": {"a": 1}})
    assert [op["op"] for op in batcher.operations([create, state({"a": 1})])] == ["create", "state"]
