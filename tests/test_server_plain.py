"""``datacat_server.plain``: the one-pass rows of usual events and metrics are the general path's.

The property: for any body, ``plain`` either declines (None) or makes exactly the row that
``parse_event``/``parse_metric`` and ``storage.event_row``/``metric_row`` make; and the shapes
clients send (the pytest plugin's above all) do take it. ``json_text`` and the event row built
from it are held to the model's walk (``check_json``) and plain ``dumps`` the same way.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from datacat_server import plain, storage

from datacat import model
from datacat.errors import ValidationError

SID, OP = "0190a6b4-1111-7222-8333-444455556666", "0190a6b4-1111-7222-8333-777788889999"

ODD: list[Any] = [0, -1, 10**400, 1.5, 1e308, float("inf"), float("nan"), True, None, "", " "]
ODD += ["a", "é", "😀", "\ud800", "\\ud800", "a\x00b", "[[{{", "x" * 201, [], {}, [1.5], 7]
ODD += ["info", "error", "timer", "gauge", "s", {"k": "v"}, {"k": 1}, {"é": "v"}, 1.7e9, -2.0]
ODD += [model.HUNG_EVENT, model.RECOVERED_EVENT, 3e11]


def nested(depth: int, leaf: Any = 1) -> Any:
    for _ in range(depth):
        leaf = {"d": leaf}
    return leaf


def document(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 5 and roll < 0.3:
        keys = [rng.choice(["k", "é", "\ud800", "😀", "a"]) for _ in range(rng.randint(0, 4))]
        return {f"{key}{i}": document(rng, depth + 1) for i, key in enumerate(keys)}
    if depth < 5 and roll < 0.45:
        return [document(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return rng.choice(ODD)


def body(rng: random.Random, fields: tuple[str, ...], usual: dict[str, Any]) -> Any:
    """``usual`` with some fields dropped, replaced by odd values or documents, or added."""
    out = dict(usual)
    for key in rng.sample(fields, rng.randint(0, 3)):
        roll = rng.random()
        if roll < 0.2:
            out.pop(key, None)
        elif roll < 0.7:
            out[key] = rng.choice(ODD)
        else:
            out[key] = document(rng)
    if rng.random() < 0.2:
        deep = rng.choice([62, 63, 64, 65, 66])
        out["data"] = {"d": nested(deep, rng.choice([1, float("nan"), "\ud800", "😀"]))}
    return out if rng.random() < 0.97 else rng.choice([None, [], "x"])


EVENT = {
    "name": "test_passed",
    "level": "info",
    "timestamp": 1.7e9,
    "category": "pytest",
    "message": "tests/test_a.py::test_b",
    "data": {"nodeid": "tests/test_a.py::test_b", "duration": 0.001, "markers": ["slow"]},
}
EVENT_FIELDS = (*EVENT, "labels", "source_line", "exception_type", "trace_id", "data")
METRIC = {
    "name": "pytest.test.duration",
    "value": 0.25,
    "type": "timer",
    "timestamp": 1.7e9,
    "unit": "s",
    "count": 1,
    "min": 0.25,
    "max": 0.25,
    "tags": {"nodeid": "tests/test_a.py::test_b", "outcome": "passed"},
}
METRIC_FIELDS = (*METRIC, "metadata", "buckets")


def general_event(data: Any) -> dict[str, Any] | None:
    try:
        event, text = model.parse_event_text(data)
    except ValidationError:
        return None
    if storage.is_special(event):
        return None
    row = storage.event_row(SID, event, OP)
    assert storage.event_row(SID, event, OP, text) == row  # the spliced data text, too
    return row


def general_metric(data: Any) -> dict[str, Any] | None:
    try:
        return storage.metric_row(SID, model.parse_metric(data), OP)
    except ValidationError:
        return None


@pytest.mark.parametrize("seed", range(4))
def test_plain_rows_are_the_general_paths_rows(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (model, plain):  # an absent timestamp is now: the same on both paths
        monkeypatch.setattr(module, "now", lambda: 1.8e9)
    rng = random.Random(seed)
    taken = 0
    for _ in range(3000):
        for fast, general, usual, fields in (
            (plain.event_row, general_event, EVENT, EVENT_FIELDS),
            (plain.metric_row, general_metric, METRIC, METRIC_FIELDS),
        ):
            data = body(rng, fields, usual)
            row = fast(SID, OP, data)
            if row is not None:
                assert row == general(data), data
                taken += 1
    assert taken > 1000  # the property was not checked vacuously


def test_the_usual_shapes_take_the_fast_path() -> None:
    wire = json.loads(json.dumps({"event": EVENT, "metric": METRIC}))
    assert plain.event_row(SID, OP, wire["event"]) == general_event(wire["event"])
    assert plain.metric_row(SID, OP, wire["metric"]) == general_metric(wire["metric"])
    assert plain.event_row(SID, OP, {"name": "e"}) is not None
    assert plain.metric_row(SID, OP, {"name": "m", "value": 1.0, "timestamp": 1.0}) is not None


@pytest.mark.parametrize("seed", range(4))
def test_json_text_agrees_with_the_walk(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(3000):
        doc = rng.choice([document(rng), nested(rng.randint(60, 68), rng.choice(ODD))])
        if not isinstance(doc, dict | list):
            continue
        try:
            model.check_json(doc, "k")
        except ValidationError as exc:
            with pytest.raises(ValidationError) as raised:
                model.json_text(doc, "k")
            assert (raised.value.message, raised.value.details) == (exc.message, exc.details)
            continue
        assert model.json_text(doc, "k") == model.dumps(doc)
