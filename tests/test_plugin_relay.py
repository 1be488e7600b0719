"""A worker's relayed session: calls become JSON-safe data and replay on a real session.

The whole path through xdist runs in ``test_plugin_recorder.py``; here are the edges."""

from __future__ import annotations

from typing import Any

import datacat
from pytest_datacat.relay import RelayedSession, replay


def test_calls_are_json_safe_and_taken_once() -> None:
    relayed = RelayedSession("sid", "http://x")
    relayed.update_state({"k": (1, 2), "obj": object})
    relayed.log_metric("m", 1.5, tags={"a": "b"})
    with relayed.timer("t", tags={"x": "y"}) as timer:
        timer.count = 3
    [state, metric, timed] = relayed.take()
    assert state == ("update_state", [{"k": [1, 2], "obj": "<class 'object'>"}], {})
    assert metric == ("log_metric", ["m", 1.5], {"tags": {"a": "b"}})
    assert timed[0] == "log_timer" and timed[2] == {"count": 3, "tags": {"x": "y"}}
    assert relayed.take() == []


def test_what_cannot_travel_is_dropped_not_raised() -> None:
    relayed = RelayedSession("sid", "http://x")
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    relayed.update_state(cycle)
    assert relayed.take() == [] and relayed.dropped == 1


def test_an_exception_travels_as_its_description() -> None:
    relayed = RelayedSession("sid", "http://x")
    try:
        raise KeyError("k")
    except KeyError:
        relayed.log_exception(data={"d": 1})
    [(verb, args, kwargs)] = relayed.take()
    assert verb == "log_event" and args == ["exception", {"d": 1}]
    assert kwargs["exception_type"] == "KeyError" and kwargs["level"] == "error"
    assert kwargs["source_function"] == "test_an_exception_travels_as_its_description"
    assert isinstance(kwargs["timestamp"], float)


def test_replay_performs_known_verbs_and_counts_the_rest() -> None:
    relayed = RelayedSession("sid", "http://x")
    relayed.log_event("e", {"a": 1}, level="warning")
    relayed.log_counter("c", 2)
    calls = [*relayed.take(), ("end", [], {})]
    assert replay(datacat.NoopSession(), calls) == 1  # a worker never ends the session
