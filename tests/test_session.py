"""``Session`` verbs against the real server: every verb lands with the right fields."""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from client_helpers import Peer, details, session_factory, wait_for
from opentelemetry.sdk.trace import TracerProvider

import datacat
from datacat._internal import MAX_STRING
from datacat.errors import ConfigurationError, NotFoundError, TransportError, ValidationError
from datacat.limits import DEFAULT_BUCKETS
from datacat.session import NoopSession, Session
from datacat.worker import DROPPED_METRIC

Make = Callable[..., Session]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    yield from session_factory(tmp_path)


def by_name(items: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [item for item in items if item["name"] == name]


def test_create_carries_product_version_machine_and_initial_state(
    make: Make, server_url: str
) -> None:
    session = make(server_url, product="shop", version="2.1", state={"mode": "test"})
    assert session.flush(10)
    got = details(server_url, session.id)
    assert (got["id"], got["state"]["product"], got["state"]["version"]) == (
        session.id,
        "shop",
        "2.1",
    )
    assert got["state"]["mode"] == "test"
    assert got["machine_id"] and got["hostname"] and got["active"] is True


def test_state_updates_deep_merge_and_null_deletes(make: Make, server_url: str) -> None:
    session = make(server_url)
    session.update_state({"player": {"level": 1, "hp": 10}, "tmp": 1})
    session.update_state({"player": {"level": 2}, "tmp": None})
    assert session.flush(10)
    state = details(server_url, session.id)["state"]
    assert state["player"] == {"level": 2, "hp": 10} and "tmp" not in state


def test_log_event_fields_land(make: Make, server_url: str) -> None:
    session = make(server_url)
    session.log_event(
        "checkout",
        {"cart": 3},
        level="warning",
        category="shop",
        labels=["a", "b"],
        message="slow",
        source_function="pay",
    )
    assert session.flush(10)
    (event,) = by_name(details(server_url, session.id)["events"], "checkout")
    assert event["data"] == {"cart": 3} and event["level"] == "warning"
    assert (event["category"], event["labels"], event["message"]) == ("shop", ["a", "b"], "slow")
    assert event["source_function"] == "pay"


def failing_function() -> None:
    raise KeyError("missing")


def test_log_exception_carries_type_message_stack_and_source(make: Make, server_url: str) -> None:
    session = make(server_url)
    try:
        failing_function()
    except KeyError:
        session.log_exception(data={"step": 1})
    session.log_exception(ValueError("given"), name="explicit", level="critical")
    assert session.flush(10)
    events = details(server_url, session.id)["events"]
    (handled,) = by_name(events, "exception")
    assert (handled["exception_type"], handled["exception_msg"]) == ("KeyError", "'missing'")
    assert handled["level"] == "error" and handled["data"] == {"step": 1}
    assert handled["source_function"] == "failing_function" and handled["source_line"] > 0
    assert handled["source_file"].endswith("test_session.py")
    assert any("failing_function" in line for line in handled["stacktrace"])
    (explicit,) = by_name(events, "explicit")
    assert explicit["exception_type"] == "ValueError" and explicit["level"] == "critical"


def test_metrics_of_every_type(make: Make, server_url: str) -> None:
    session = make(server_url)
    session.log_metric("memory_mb", 512.5, unit="MB", tags={"pool": "a"})
    session.log_gauge("temp", 20)
    session.log_counter("hits")
    session.log_counter("hits", 4)
    session.log_histogram("latency", 0.003)
    session.log_histogram("latency", 0.2)
    session.log_timer("load", 1.5, count=10)
    assert session.flush(10)
    metrics = details(server_url, session.id)["metrics"]
    (memory,) = by_name(metrics, "memory_mb")
    assert (memory["value"], memory["unit"], memory["tags"]) == (512.5, "MB", {"pool": "a"})
    assert by_name(metrics, "temp")[0]["type"] == "gauge"
    (hits,) = by_name(metrics, "hits")
    assert (hits["type"], hits["value"], hits["count"]) == ("counter", 5, 2)
    (latency,) = by_name(metrics, "latency")
    assert latency["type"] == "histogram" and latency["count"] == 2
    assert latency["buckets"] == list(DEFAULT_BUCKETS) and sum(latency["bucket_counts"]) == 2
    assert latency["bucket_counts"][DEFAULT_BUCKETS.index(0.005)] == 1
    (load,) = by_name(metrics, "load")
    assert (load["type"], load["value"], load["count"], load["unit"]) == ("timer", 1.5, 10, "s")


def test_timer_as_context_manager_and_decorator(make: Make, server_url: str) -> None:
    session = make(server_url)
    with session.timer("block") as timer:
        timer.count = 7

    @session.timer("decorated")
    def work(x: int) -> int:
        return x * 2

    assert work(21) == 42
    assert session.flush(10)
    metrics = details(server_url, session.id)["metrics"]
    assert by_name(metrics, "block")[0]["count"] == 7
    assert by_name(metrics, "decorated")[0]["value"] >= 0


def test_observe_aggregates_per_name_and_tags(make: Make, server_url: str) -> None:
    session = make(server_url, flush_interval=5.0)
    for value in (0.1, 0.2, 0.3):
        session.observe("call", value, tags={"fn": "a"})
    session.observe("call", 1.0, tags={"fn": "b"})
    assert session.flush(10)
    calls = by_name(details(server_url, session.id)["metrics"], "call")
    by_tag = {m["tags"]["fn"]: m for m in calls}
    assert by_tag["a"]["count"] == 3 and math.isclose(by_tag["a"]["value"], 0.6)
    assert (by_tag["a"]["min"], by_tag["a"]["max"]) == (0.1, 0.3)
    assert by_tag["b"]["count"] == 1 and len(calls) == 2


def test_heartbeat_end_and_crash(make: Make, server_url: str) -> None:
    session = make(server_url)
    session.heartbeat()
    assert session.end() and session.ended
    got = details(server_url, session.id)
    assert got["last_heartbeat"] and got["ended_at"] and got["active"] is False
    crashed = make(server_url)
    assert crashed.crash("segfault", {"signal": 11})
    got = details(server_url, crashed.id)
    assert got["crashed"] is True and got["crash_reason"] == "segfault"


@pytest.mark.parametrize("sender", ["thread", "process"])
def test_end_without_flush_only_queues_and_a_later_flush_delivers_it(
    make: Make, sender: str
) -> None:
    with Peer("stall") as peer:  # no answer until released: a flush would wait exit_timeout
        session = make(peer.url, sender=sender, exit_timeout=5.0)
        started = time.monotonic()
        assert session.end(flush=False) and session.ended
        assert time.monotonic() - started < 1.0
        peer.release.set()
        assert session.flush(10)
        assert [op["op"] for op in peer.operations] == ["create", "end"]


def test_get_details_and_context_manager(make: Make, server_url: str) -> None:
    session = make(server_url)
    with session:
        session.log_event("inside")
    got = session.get_details()
    assert got["id"] == session.id and got["ended_at"]


def test_events_carry_the_active_span_ids(make: Make, server_url: str) -> None:
    session = make(server_url)
    with TracerProvider().get_tracer("t").start_as_current_span("op") as span:
        session.log_event("traced")
    assert session.flush(10)
    (event,) = by_name(details(server_url, session.id)["events"], "traced")
    assert event["trace_id"] == f"{span.get_span_context().trace_id:032x}"


def test_unserialisable_values_become_repr_and_long_strings_are_cut(
    make: Make, server_url: str
) -> None:
    session = make(server_url)
    session.log_event("odd", {"obj": object(), "nan": math.nan, "long": "x" * (MAX_STRING + 10)})
    session.log_metric("bad", math.inf)
    session.log_metric("good", 1)
    assert session.flush(10)
    got = details(server_url, session.id)
    data = by_name(got["events"], "odd")[0]["data"]
    assert data["obj"].startswith("<object object") and data["nan"] == "nan"
    assert data["long"].startswith("x" * MAX_STRING) and data["long"].endswith(
        "[truncated 10 chars]"
    )
    assert sorted(m["name"] for m in got["metrics"]) == [DROPPED_METRIC, "good"]
    (dropped,) = by_name(got["metrics"], DROPPED_METRIC)  # the refused metric is reported
    assert dropped["value"] == 1


def test_state_update_that_changes_nothing_is_not_sent(make: Make, server_url: str) -> None:
    session = make(server_url, flush_interval=5.0)
    session.update_state({"a": 1})
    assert session.flush(10)
    session.update_state({"a": 1})
    session.update_state({"missing": None})
    assert session.flush(10)
    worker = session._worker
    assert worker is not None and worker.stats["operations"] == 2  # create + one state


def test_full_queue_drops_counts_and_reports(make: Make, server_url: str) -> None:
    session = make(server_url, queue_size=5, batch_size=1000, flush_interval=5.0)
    worker = session._worker
    assert worker is not None
    with worker._flushed:  # hold the sender off while the queue overflows
        for i in range(20):
            session.log_event(f"e{i}")
    assert session.dropped >= 15 - 1
    assert session.flush(10)
    (dropped,) = by_name(details(server_url, session.id)["metrics"], DROPPED_METRIC)
    assert dropped["value"] == session.dropped


def test_disabled_gives_a_noop_session(
    monkeypatch: pytest.MonkeyPatch, server_url: str, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATACAT_DISABLED", "1")
    session = datacat.create_session(server_url, spool_dir=str(tmp_path))
    assert isinstance(session, NoopSession)
    session.update_state({"a": 1})
    session.log_event("x")
    session.observe("t", 1.0)
    session.heartbeat()
    with session.timer("t") as timer:
        timer.count = 1
    assert session.flush() and session.end() and session.get_details() == {}
    assert not any(tmp_path.iterdir())


def test_bad_configuration_gives_noop_unless_blocking(caplog: pytest.LogCaptureFixture) -> None:
    session = datacat.create_session("ftp://nowhere", batch_size=-1)
    assert isinstance(session, NoopSession) and "unusable configuration" in caplog.text
    with pytest.raises(ConfigurationError):
        datacat.create_session("ftp://nowhere", blocking=True)


def test_blocking_sends_at_once_and_raises(server_url: str, tmp_path: Path) -> None:
    session = datacat.create_session(server_url, blocking=True, spool_dir=str(tmp_path))
    session.log_event("now")
    assert by_name(details(server_url, session.id)["events"], "now")
    bogus = Session.__new__(Session)
    bogus._setup(session.config, None, session._transport)
    with pytest.raises(NotFoundError):
        bogus.log_event("no such session")
    with pytest.raises(TransportError):
        datacat.create_session("http://127.0.0.1:9", blocking=True, timeout=1)
    with pytest.raises(ValidationError):  # what a background session drops alone
        session.log_metric("huge", 10**400)
    with pytest.raises(ValidationError):
        session.log_event("broken", BrokenMapping(a=1))


def test_verbs_return_at_once_when_nothing_listens(make: Make) -> None:
    session = make("http://127.0.0.1:9", timeout=0.2)
    start = time.perf_counter()
    for i in range(1000):
        session.log_event("e", {"i": i})
    assert time.perf_counter() - start < 1.0


def test_bad_arguments_never_raise_into_the_caller(make: Make, server_url: str) -> None:
    session = make(server_url)
    loop: dict[str, Any] = {}
    loop["self"] = loop
    session.update_state(loop)
    session.log_metric("m", 1, tags=5)  # type: ignore[arg-type]
    session.log_timer("t", "slow")  # type: ignore[arg-type]
    session.log_event("still works")
    assert session.flush(10)
    assert [e["name"] for e in details(server_url, session.id)["events"]] == ["still works"]


def test_log_aggregate_sends_a_folded_metric_as_is(make: Make, server_url: str) -> None:
    session = make(server_url)
    session.log_aggregate(
        "folded",
        0.6,
        count=3,
        min=0.1,
        max=0.3,
        tags={"fn": "f"},
        buckets=[0.25, 1.0],
        bucket_counts=[2, 1, 0],
    )
    assert session.flush(10)
    (metric,) = by_name(details(server_url, session.id)["metrics"], "folded")
    assert (metric["type"], metric["count"], metric["min"], metric["max"]) == ("timer", 3, 0.1, 0.3)
    assert metric["bucket_counts"] == [2, 1, 0] and metric["tags"] == {"fn": "f"}


def test_timer_times_coroutines_and_generators_to_the_end(make: Make, server_url: str) -> None:
    session = make(server_url)

    @session.timer("coroutine")
    async def sleepy() -> int:
        await asyncio.sleep(0.05)
        return 1

    @session.timer("generator")
    def numbers() -> Iterator[int]:
        yield 1
        time.sleep(0.05)
        yield 2

    assert inspect.iscoroutinefunction(sleepy) and asyncio.run(sleepy()) == 1
    assert list(numbers()) == [1, 2]
    assert session.flush(10)
    metrics = details(server_url, session.id)["metrics"]
    assert by_name(metrics, "coroutine")[0]["value"] >= 0.04
    assert by_name(metrics, "generator")[0]["value"] >= 0.04


class BrokenMapping(dict[str, Any]):
    """A mapping whose copy fails (``dict(...)`` of it raises)."""

    def keys(self) -> Any:
        raise RuntimeError("no keys")

    def __iter__(self) -> Any:
        raise RuntimeError("no iteration")


def test_a_malformed_call_costs_only_itself_not_the_batch_or_the_session(
    make: Make, server_url: str
) -> None:
    session = make(server_url, flush_interval=5.0)  # everything below goes in one send cycle
    session.log_event("before")
    session.log_counter("mixed", tags={1: "a", "b": 2})  # type: ignore[dict-item]
    session.log_counter("unhashable", tags={"k": ["v"]})
    session.log_metric("huge", 10**400)
    session.observe("odd-bounds", 1.0, type="histogram", buckets=("a", "b"))
    session.log_event("labels", labels=5)
    session.log_event("broken-data", BrokenMapping(a=1))
    session.log_metric("good", 1.5, tags={"k": 1})
    session.log_event("after")
    assert session.flush(10)
    session.update_state({"alive": True})  # the session is not lost either
    assert session.flush(10)
    got = details(server_url, session.id)
    names = {e["name"] for e in got["events"]}
    assert {"before", "labels", "after"} <= names and "broken-data" not in names
    assert by_name(got["events"], "labels")[0]["labels"] == ["5"]
    metrics = {m["name"]: m for m in got["metrics"]}
    assert metrics["good"]["tags"] == {"k": "1"}
    assert metrics["mixed"]["tags"] == {"1": "a", "b": "2"}
    assert metrics["unhashable"]["tags"] == {"k": "['v']"}
    assert "huge" not in metrics and "odd-bounds" not in metrics
    assert metrics[DROPPED_METRIC]["value"] == 3  # huge, odd-bounds, broken-data
    assert got["state"]["alive"] is True


def test_unsorted_histogram_buckets_are_sorted_at_the_verb(make: Make, server_url: str) -> None:
    session = make(server_url, flush_interval=5.0)
    for value in (0.5, 1.5, 7.0):
        session.log_histogram("h", value, buckets=[5, 1, math.inf, 2])
    assert session.flush(10)
    (metric,) = by_name(details(server_url, session.id)["metrics"], "h")
    assert metric["buckets"] == [1.0, 2.0, 5.0] and metric["bucket_counts"] == [1, 1, 0, 1]


def test_nul_and_lone_surrogates_arrive_repaired(make: Make, server_url: str) -> None:
    session = make(server_url, state={"s\ud800": "v\udcff", "pair": "\ud83d\ude00"})
    session.log_event(
        "e\x00\udc80",
        {"k\ud800": "x\x00y"},
        category="c\ud800",
        labels=["l\udfff"],
        message="m\ud800",
    )
    session.update_state({"u": "\udc00"})
    session.log_metric("m\ud800" + "x" * 300, 1)
    assert session.flush(10)
    got = details(server_url, session.id)
    expected = {"s\ufffd": "v\ufffd", "pair": "\U0001f600", "u": "\ufffd"}
    assert {k: got["state"][k] for k in expected} == expected
    (event,) = got["events"]
    assert event["name"] == "e\ufffd\ufffd" and event["data"] == {"k\ufffd": "x\ufffdy"}
    assert event["category"] == "c\ufffd" and event["labels"] == ["l\ufffd"]
    assert event["message"] == "m\ufffd"
    (metric,) = got["metrics"]
    assert metric["name"].startswith("m\ufffdxx") and len(metric["name"]) <= 200


def test_send_soon_sends_before_the_flush_interval_without_waiting(
    make: Make, server_url: str
) -> None:
    # (the thread sender; the process sender's is in test_offload.py)
    session = make(server_url, sender="thread", flush_interval=60.0)
    assert session.flush(10)  # created; the sender now waits out its interval
    session.log_event("soon")
    started = time.monotonic()
    session.send_soon()
    assert time.monotonic() - started < 0.5  # it does not wait for the server
    assert wait_for(lambda: by_name(details(server_url, session.id)["events"], "soon"))
    NoopSession().send_soon()  # nothing to wake, nothing raised
