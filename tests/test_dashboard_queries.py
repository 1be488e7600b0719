"""The dashboard's aggregate queries: pure helpers, and the queries on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from datacat_server import dashboard_queries as dq
from datacat_server import storage
from datacat_server.queries import Clock, SessionFilter
from datacat_server.storage import Storage

from datacat import model

NOW = 1_800_000_000.0
TIMEOUT = 60.0
CLOCK = Clock(NOW, TIMEOUT)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([5.0], {"avg": 5.0, "min": 5.0, "max": 5.0, "median": 5.0, "stddev": 0.0}),
        ([1.0, 2.0, 3.0, 10.0], {"avg": 4.0, "min": 1.0, "max": 10.0, "median": 2.5}),
        ([0.1, 0.1, 0.1], {"stddev": 0.0}),
    ],
)
def test_describe(values: list[float], expected: dict[str, float]) -> None:
    figures = dq.describe(values)
    assert {k: figures[k] for k in expected} == pytest.approx(expected)


def test_describe_uses_population_stddev() -> None:
    assert dq.describe([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])["stddev"] == pytest.approx(2.0)


def test_histogram_bars_sum_aggregates_and_place_single_values() -> None:
    rows = [
        {"value": 1.0, "buckets": [0.1, 1.0], "bucket_counts": [1, 2, 0]},
        {"value": 2.0, "buckets": [0.1, 1.0], "bucket_counts": [0, 1, 1]},
        {"value": 0.05},
        {"value": 7.0, "buckets": [5.0], "bucket_counts": [0, 1]},  # other bounds: by value
    ]
    assert dq.histogram_bars(rows) == {"buckets": [0.1, 1.0], "counts": [2, 3, 2]}


def test_histogram_bars_default_buckets_for_plain_observations() -> None:
    bars = dq.histogram_bars([{"value": 0.0005}, {"value": 100.0}])
    assert bars["buckets"] == list(model.DEFAULT_BUCKETS)
    assert bars["counts"][0] == 1 and bars["counts"][-1] == 1 and sum(bars["counts"]) == 2


def test_state_changes_are_leaf_diffs() -> None:
    history = [
        {"timestamp": "t1", "update": {"a": 1}, "state": {"a": 1, "b": {"c": 2}}},
        {"timestamp": "t2", "update": {"a": 5, "b": None, "d": [1]}, "state": {"a": 5, "d": [1]}},
    ]
    first, second = dq.state_changes(history)
    assert first["diff"] == [
        {"path": "a", "old": None, "new": 1},
        {"path": "b.c", "old": None, "new": 2},
    ]
    assert second["diff"] == [
        {"path": "a", "old": 1, "new": 5},
        {"path": "b.c", "old": 2, "new": None},
        {"path": "d", "old": None, "new": [1]},
    ]


def test_natural_order_of_products_and_versions() -> None:
    pairs = [("b", "1.10"), ("a", "2"), ("b", "1.9"), ("b", "1.9rc1"), ("ab", "1")]
    ordered = sorted(pairs, key=lambda pair: dq.natural(*pair))
    assert ordered == [("a", "2"), ("ab", "1"), ("b", "1.9"), ("b", "1.9rc1"), ("b", "1.10")]


def test_thin_keeps_the_bound_and_the_last_point() -> None:
    rows = list(range(10 * dq.MAX_POINTS + 3))
    thinned = dq._thin(rows)
    assert len(thinned) == dq.MAX_POINTS and thinned[0] == 0 and thinned[-1] == rows[-1]


def test_metric_summaries_per_type() -> None:
    rows = [
        {"name": "hits", "type": "counter", "value": 2.0, "ts": 1.0},
        {"name": "hits", "type": "counter", "value": 3.0, "ts": 2.0},
        {"name": "mem", "type": "gauge", "value": 9.0, "ts": 0.0},
    ]
    hits, mem = dq.metric_summaries(rows, {"mem": "MB"})
    assert (hits["name"], hits["total"], hits["count"], hits["unit"]) == ("hits", 5.0, 2, None)
    assert (mem["unit"], mem["last"]) == ("MB", 9.0)
    assert mem["series"] == [["1970-01-01T00:00:00.000000Z", 9.0]]


# ---- against a real database --------------------------------------------------------------


class Data:
    """A small, known set of sessions in one database."""

    def __init__(self, store: Storage) -> None:
        self.store = store
        self.ids: dict[str, str] = {}

    def create(self, key: str, product: str, version: str, ts: float) -> str:
        body = model.parse_create({"product": product, "version": version, "timestamp": ts})
        sid = self.ids[key] = str(uuid.uuid4())
        with self.store.write() as conn:
            storage.create_session(conn, {**body, "id": sid}, TIMEOUT)
        return sid

    def event(self, sid: str, name: str, ts: float) -> None:
        with self.store.write() as conn:
            storage.add_event(conn, sid, model.parse_event({"name": name, "timestamp": ts}))

    def metric(self, sid: str, **body: Any) -> None:
        with self.store.write() as conn:
            storage.add_metrics(conn, [storage.metric_row(sid, model.parse_metric(body))])

    def write(self, verb: str, sid: str, *args: Any) -> None:
        with self.store.write() as conn:
            getattr(storage, verb)(conn, sid, *args)


@pytest.fixture(scope="module")
def data(storage_url: str) -> Iterator[Data]:
    store = Storage(storage_url, TIMEOUT)
    d = Data(store)
    t = NOW - 1000
    ended = d.create("ended", "alpha", "1.0", t)
    d.write("update_state", ended, {"level": 3}, t + 1)
    d.write("update_state", ended, {"level": 4}, t + 2)
    d.event(ended, "checkout", t + 3)
    for value in (10.0, 20.0):
        d.metric(ended, name="fps", value=value, timestamp=t + 4, unit="Hz")
    d.metric(ended, name="items", type="counter", value=2, timestamp=t + 4)
    d.metric(ended, name="items", type="counter", value=3, timestamp=t + 4)
    d.write("end", ended, t + 5)
    crashed = d.create("crashed", "alpha", "2.0", t + 10)
    d.write("update_state", crashed, {"level": 3}, t + 11)
    d.event(crashed, model.HUNG_EVENT, t + 12)
    d.metric(crashed, name="fps", value=60.0, timestamp=t + 12)
    d.metric(crashed, name="lat", type="histogram", value=3.0, count=6, timestamp=t + 12)
    for outcome, count in (("passed", 40), ("failed", 2)):
        d.metric(crashed, name="tests", value=count, tags={"outcome": outcome}, timestamp=t + 12)
    d.write("crash", crashed, "segfault", {}, t + 13)
    recovered = d.create("recovered", "beta", "1.0", t + 20)
    d.event(recovered, model.HUNG_EVENT, t + 21)
    d.write("heartbeat", recovered, NOW - 1, NOW - 1)  # logs application_recovered
    asleep = d.create("suspended", "beta", "1.0", t + 30)
    d.write("heartbeat", asleep, t + 31, t + 31)  # (received: the server clock)
    yield d
    store.engine.dispose()


def run(data: Data, func: Any, *args: Any) -> Any:
    with data.store.read() as conn:
        return func(conn, *args)


def ids_of(data: Data, **kw: Any) -> set[str]:
    flt = dq.DashboardFilter(**kw)
    page = run(data, dq.session_page, flt, CLOCK)
    names = {v: k for k, v in data.ids.items()}
    return {names[s["id"]] for s in page["sessions"]}


def test_grid_counts_sessions_per_product_version_and_status(data: Data) -> None:
    grid = {(g["product"], g["version"]): g for g in run(data, dq.grid, CLOCK)}
    assert grid[("alpha", "1.0")]["counts"]["ended"] == 1
    assert grid[("alpha", "2.0")]["counts"]["crashed"] == 1
    beta = grid[("beta", "1.0")]
    assert (beta["counts"]["active"], beta["counts"]["suspended"], beta["total"]) == (1, 1, 2)


def test_totals_follow_the_filters(data: Data) -> None:
    flt = dq.DashboardFilter(base=SessionFilter(product="alpha"))
    conds = run(data, dq.conditions, flt, CLOCK)
    totals = run(data, dq.totals, conds, CLOCK)
    assert totals == {"sessions": 2, "active": 0, "events": 3, "metrics": 8}
    everything = run(data, dq.totals, [], CLOCK)
    assert (everything["sessions"], everything["active"]) == (4, 1)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"event": "checkout"}, {"ended"}),
        ({"base": SessionFilter(state=[("level", "3")])}, {"ended", "crashed"}),
        ({"state_now": [("level", "3")]}, {"crashed"}),
        ({"state_now": [("level", "4")]}, {"ended"}),
        ({"hang": "ever"}, {"crashed", "recovered"}),
        ({"hang": "recovered"}, {"recovered"}),
        ({"hang": "crashed"}, {"crashed"}),
        ({"hang": "ended"}, set()),
        ({"base": SessionFilter(status="suspended")}, {"suspended"}),
    ],
)
def test_filters(data: Data, filters: dict[str, Any], expected: set[str]) -> None:
    assert ids_of(data, **filters) == expected


def test_sorting_and_paging(data: Data) -> None:
    flt = dq.DashboardFilter(sort="version", descending=False, per_page=3, page=1)
    first = run(data, dq.session_page, flt, CLOCK)
    assert (first["total"], first["pages"]) == (4, 2)
    assert [s["version"] for s in first["sessions"]] == ["1.0", "1.0", "1.0"]
    flt.page = 2
    second = run(data, dq.session_page, flt, CLOCK)
    assert [s["version"] for s in second["sessions"]] == ["2.0"]
    assert "state" not in second["sessions"][0] and second["sessions"][0]["metric_count"] == 4


@pytest.mark.parametrize("descending", [True, False])
def test_sessions_without_an_end_sort_last(data: Data, descending: bool) -> None:
    flt = dq.DashboardFilter(sort="ended", descending=descending)
    page = run(data, dq.session_page, flt, CLOCK)
    assert [s["ended_at"] is None for s in page["sessions"]] == [False, False, True, True]


def test_metric_stats_one_figure_per_session(data: Data) -> None:
    stats = {m["name"]: m for m in run(data, dq.metric_stats, [])}
    fps = stats["fps"]  # per-session means 15 and 60
    assert (fps["sessions"], fps["avg"], fps["min"], fps["max"]) == (2, 37.5, 15.0, 60.0)
    assert fps["stddev"] == pytest.approx(22.5)
    assert stats["items"]["avg"] == 5.0  # a counter's total
    assert stats["lat"]["avg"] == 0.5  # a histogram's mean observation: 3.0 / 6
    assert [p[2] for p in fps["points"]] == [data.ids["ended"], data.ids["crashed"]]


def test_tagged_metrics_are_separate_series(data: Data) -> None:
    stats = [m for m in run(data, dq.metric_stats, []) if m["name"] == "tests"]
    assert [(m["tags"], m["avg"]) for m in stats] == [
        ({"outcome": "failed"}, 2.0),
        ({"outcome": "passed"}, 40.0),
    ]
    detail = run(data, dq.session_detail, data.ids["crashed"], CLOCK)
    series = [(m["tags"], m["last"]) for m in detail["metrics"] if m["name"] == "tests"]
    assert series == [({"outcome": "failed"}, 2.0), ({"outcome": "passed"}, 40.0)]


def test_session_detail(data: Data) -> None:
    detail = run(data, dq.session_detail, data.ids["ended"], CLOCK)
    assert detail["status"] == "ended" and detail["event_total"] == 1
    assert [c["diff"][0]["path"] for c in detail["changes"]][-2:] == ["level", "level"]
    assert {m["name"]: m["unit"] for m in detail["metrics"]} == {"fps": "Hz", "items": None}
    assert run(data, dq.session_detail, str(uuid.uuid4()), CLOCK) is None
    crashed = run(data, dq.session_detail, data.ids["crashed"], CLOCK)
    assert [e["name"] for e in crashed["events"]] == [model.HUNG_EVENT, model.CRASH_EVENT]
    newer = run(data, dq.session_detail, data.ids["crashed"], CLOCK, crashed["last_event_id"] - 1)
    assert [e["name"] for e in newer["events"]] == [model.CRASH_EVENT]
    assert (newer["event_total"], newer["last_event_id"]) == (2, crashed["last_event_id"])
