"""The wire model shared by client and server: parsing, defaults and rejections."""

from __future__ import annotations

import math
import uuid
from typing import Any

import pytest

from datacat import model
from datacat.errors import ValidationError


@pytest.mark.parametrize(
    "value,expected",
    [
        (0, 0.0),
        (1_700_000_000.5, 1_700_000_000.5),
        ("2026-11-26T10:30:00Z", 1_795_689_000.0),
        ("2026-11-26T10:30:00+01:00", 1_795_685_400.0),
        ("2026-11-26T10:30:00", 1_795_689_000.0),
        (model.MAX_TIMESTAMP, float(model.MAX_TIMESTAMP)),
    ],
)
def test_parse_timestamp(value: Any, expected: float) -> None:
    assert model.parse_timestamp(value) == expected


@pytest.mark.parametrize(
    "value",
    [True, -1, math.nan, math.inf, 1e300, 10**400, "soon", "0001-01-01T00:00:00+01:00", [], None],
)
def test_parse_timestamp_rejects(value: Any) -> None:
    with pytest.raises(ValidationError):
        model.parse_timestamp(value)


def test_iso_round_trips_through_parse_timestamp() -> None:
    assert model.iso(1_795_689_000.25) == "2026-11-26T10:30:00.250000Z"
    assert model.parse_timestamp(model.iso(1_795_689_000.25)) == 1_795_689_000.25
    assert model.iso(None) is None


def test_parse_uuid_canonicalises() -> None:
    raw = uuid.uuid4()
    assert model.parse_uuid(str(raw).upper()) == str(raw)
    for bad in ("x", 5, None):
        with pytest.raises(ValidationError):
            model.parse_uuid(bad)


def test_parse_create() -> None:
    sid = str(uuid.uuid4())
    out = model.parse_create({"product": "p", "version": "1", "id": sid, "state": {"a": 1}})
    assert (out["id"], out["state"], out["machine_id"]) == (sid, {"a": 1}, None)
    assert model.parse_create({"product": "p", "version": "1"})["id"] is None


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {"version": "1"},
        {"product": "p"},
        {"product": 1, "version": "1"},
        {"product": "p", "version": "1", "state": [1]},
        {"product": "p", "version": "1", "id": "x"},
    ],
)
def test_parse_create_rejects(body: Any) -> None:
    with pytest.raises(ValidationError):
        model.parse_create(body)


def test_parse_state_accepts_both_forms() -> None:
    assert model.parse_state({"a": 1})[0] == {"a": 1}
    update, ts = model.parse_state({"state": {"a": 1}, "timestamp": 5})
    assert (update, ts) == ({"a": 1}, 5.0)
    # a state that happens to have a key named "state" among others is the state itself
    assert model.parse_state({"state": {"a": 1}, "b": 2})[0] == {"state": {"a": 1}, "b": 2}


@pytest.mark.parametrize(
    "body,field,expected",
    [
        ({"name": "x"}, "level", "info"),
        ({"name": "x", "exception_type": "E"}, "level", "error"),
        ({"name": "x", "stacktrace": "a\nb"}, "stacktrace", ["a", "b"]),
        ({"name": "x"}, "labels", []),
        ({"name": "x", "source_line": 3}, "source_line", 3),
    ],
)
def test_parse_event(body: dict[str, Any], field: str, expected: Any) -> None:
    assert model.parse_event(body)[field] == expected


def test_parse_event_has_every_field_in_one_order_whatever_was_sent() -> None:
    """The fast path (only fields present are checked) answers the same shape as before."""
    fields = ["name", "level", "timestamp", "category", "message", "exception_type"]
    fields += ["exception_msg", "source_file", "source_function", "trace_id", "span_id"]
    fields += ["labels", "stacktrace", "data", "source_line"]
    bare = model.parse_event({"name": "x", "timestamp": 1})
    full = model.parse_event({"name": "x", "timestamp": 1, "trace_id": "t", "message": "m"})
    assert list(bare) == list(full) == fields
    assert bare["message"] is None and full["message"] == "m" and full["trace_id"] == "t"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": " "},
        {"name": "a\x00"},
        {"name": "x", "message": "\x00"},
        {"name": "x" * 201},
        {"name": "x", "level": "loud"},
        {"name": "x", "labels": "a"},
        {"name": "x", "data": []},
        {"name": "x", "source_line": 1.5},
        {"name": "x", "category": 3},
        {"name": "x", "span_id": "\x00"},
    ],
)
def test_parse_event_rejects(body: Any) -> None:
    with pytest.raises(ValidationError):
        model.parse_event(body)


def test_parse_metric_defaults_and_aggregates() -> None:
    gauge = model.parse_metric({"name": "m", "value": 3})
    assert (gauge["type"], gauge["value"], gauge["buckets"]) == ("gauge", 3.0, None)
    hist = model.parse_metric(
        {
            "name": "h",
            "value": 1.5,
            "type": "histogram",
            "buckets": [1, 2],
            "bucket_counts": [1, 1, 0],
        }
    )
    assert hist["buckets"] == [1.0, 2.0] and hist["bucket_counts"] == [1, 1, 0]
    assert model.parse_metric({"name": "t", "value": 1, "tags": {"k": 1}})["tags"] == {"k": "1"}


@pytest.mark.parametrize(
    "body",
    [
        {"name": "m"},
        {"name": "m", "value": "1"},
        {"name": "m", "value": True},
        {"name": "m", "value": math.nan},
        {"name": "m", "value": 10**400},
        {"name": "m", "value": 1, "type": "x"},
        {"name": "m", "value": 1, "buckets": [1]},
        {"name": "m", "value": 1, "buckets": [2, 1], "bucket_counts": [0, 0, 0]},
        {"name": "m", "value": 1, "buckets": [1], "bucket_counts": [0]},
        {"name": "m", "value": 1, "buckets": [1], "bucket_counts": [0, -1]},
        {"name": "m", "value": 1, "tags": {"k": [1]}},
    ],
)
def test_parse_metric_rejects(body: Any) -> None:
    with pytest.raises(ValidationError):
        model.parse_metric(body)


def test_optional_bodies() -> None:
    assert model.parse_heartbeat(None)["timestamp"] > 0
    assert model.parse_end({"timestamp": 7})["timestamp"] == 7.0
    crash = model.parse_crash(None)
    assert (crash["reason"], crash["data"]) == ("unknown", {})


def test_parse_batch_keeps_bad_items_as_errors() -> None:
    good = {"op_id": str(uuid.uuid4()), "op": "event", "session_id": str(uuid.uuid4()), "data": {}}
    items = model.parse_batch({"operations": [good, {"op": "event"}, 3]})
    assert isinstance(items[0], model.Operation)
    assert all(isinstance(item, ValidationError) for item in items[1:])
    with pytest.raises(ValidationError):
        model.parse_operation_data(items[0])  # an event without a name


@pytest.mark.parametrize(
    "body", [None, [], {"operations": {}}, {"operations": [{}] * (model.MAX_BATCH_OPERATIONS + 1)}]
)
def test_parse_batch_rejects_the_envelope(body: Any) -> None:
    with pytest.raises(ValidationError):
        model.parse_batch(body)


def test_dataclasses_round_trip() -> None:
    event = model.Event.from_dict({"name": "e", "data": {"k": 1}, "timestamp": 3})
    assert event.to_dict()["data"] == {"k": 1} and event.timestamp == 3.0
    metric = model.Metric.from_dict({"name": "m", "value": 2, "type": "counter", "timestamp": 3})
    assert metric.to_dict() == {
        "name": "m",
        "value": 2.0,
        "type": "counter",
        "timestamp": 3.0,
        "tags": {},
        "metadata": {},
    }


def nested(depth: int) -> Any:
    """A JSON object ``depth`` levels deep."""
    document: Any = 1
    for _ in range(depth):
        document = {"d": document}
    return document


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "data": nested(model.MAX_DEPTH + 1)},
        {"name": "x", "data": {"list": [[[[float("inf")]]]]}},
        {"name": "x", "data": {"nan": float("nan")}},
        {"name": "x", "data": {"\udcff": 1}},
        {"name": "x", "data": {"k": ["ok", "\ud800"]}},
        {"name": "\ud800"},
        {"name": "x", "labels": ["\udcff"]},
        {"name": "x", "stacktrace": "line\udcff"},
    ],
)
def test_unstorable_event_values_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        model.parse_event(body)


def test_storable_values_still_pass() -> None:
    data = {"deep": nested(model.MAX_DEPTH - 1), "text": "é ✓ 😀", "big": 10**400, "n": 1e308}
    assert model.parse_event({"name": "ü", "data": data})["data"] is data
    assert model.parse_state(nested(model.MAX_DEPTH))[0] == nested(model.MAX_DEPTH)
    for bad in (nested(model.MAX_DEPTH + 1), {"state": {"k": float("inf")}}):
        with pytest.raises(ValidationError):
            model.parse_state(bad)
    with pytest.raises(ValidationError):
        model.parse_metric({"name": "m", "value": 1, "metadata": {"x": [float("-inf")]}})
    with pytest.raises(ValidationError):
        model.parse_create({"product": "p", "version": "1", "state": nested(900)})
