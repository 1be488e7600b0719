"""Retention on both backends: finished sessions past the period go with all their rows, open
ones stay however old, old op ids are pruned, and a server runs a pass after a write."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from datacat_server import retention, storage
from datacat_server.retention import DAY, OP_ID_WINDOW, Retention, prune
from datacat_server.schema import applied_ops, events, metrics, state_updates, state_values
from serverproc import Api, ServerProcess

NOW = 2_000_000_000.0


@pytest.fixture(scope="module")
def store(storage_url: str) -> Iterator[storage.Storage]:
    store = storage.Storage(storage_url)
    yield store
    store.engine.dispose()


def make(store: storage.Storage, ts: float, finish: str | None = None) -> str:
    """A session created at ``ts`` with state, an event and a metric; ended or crashed if asked."""
    sid = str(uuid.uuid4())
    data = {"id": sid, "product": "R", "version": "1", "machine_id": None, "hostname": None}
    with store.write() as conn:
        storage.create_session(conn, {**data, "state": {"a": 1}, "timestamp": ts}, 60.0)
        storage.add_event(conn, sid, {"name": "e", "level": "info", "timestamp": ts})
        storage.add_metrics(
            conn,
            [
                storage.metric_row(
                    sid, {"name": "m", "type": "gauge", "value": 1.0, "timestamp": ts}
                )
            ],
        )
        if finish == "end":
            storage.end(conn, sid, ts)
        elif finish == "crash":
            storage.crash(conn, sid, "gone", {}, ts)
    return sid


def rows_of(store: storage.Storage, sid: str) -> int:
    with store.read() as conn:
        tables = (events, metrics, state_updates, state_values)
        return sum(
            conn.scalar(sa.select(sa.func.count()).where(t.c.session_id == sid)) or 0
            for t in tables
        )


def test_prune_deletes_only_finished_sessions_past_the_period(store: storage.Storage) -> None:
    old, recent = NOW - 10 * DAY, NOW - DAY
    ended, crashed = make(store, old, "end"), make(store, old, "crash")
    still_open, ended_recently = make(store, old), make(store, recent, "end")
    done = prune(store, NOW, 5 * DAY)
    assert done.sessions == 2
    assert rows_of(store, ended) == rows_of(store, crashed) == 0
    assert rows_of(store, still_open) > 0 and rows_of(store, ended_recently) > 0
    with store.read() as conn:
        kept = set(conn.scalars(sa.select(storage.sessions.c.id)))
    assert {still_open, ended_recently} <= kept and not {ended, crashed} & kept


def test_prune_keeps_op_ids_for_the_whole_retry_window(store: storage.Storage) -> None:
    old_id, young_id = str(uuid.uuid4()), str(uuid.uuid4())
    with store.write() as conn:
        conn.execute(
            applied_ops.insert(),
            [
                {"op_id": old_id, "applied_at": NOW - OP_ID_WINDOW - DAY},
                {"op_id": young_id, "applied_at": NOW - OP_ID_WINDOW + DAY},
            ],
        )
    assert prune(store, NOW, DAY).op_ids == 1
    with store.read() as conn:
        left = set(conn.scalars(sa.select(applied_ops.c.op_id)))
    assert young_id in left and old_id not in left


def test_a_pass_runs_at_most_once_per_period(
    store: storage.Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "now", lambda: NOW)
    rule = Retention(days=1)
    first = make(store, NOW - 3 * DAY, "end")
    rule.after_write(store)
    second = make(store, NOW - 3 * DAY, "end")
    rule.after_write(store)  # within the hour: no pass
    assert rows_of(store, first) == 0 and rows_of(store, second) > 0
    Retention(days=None).after_write(store)  # off: nothing happens
    assert rows_of(store, second) > 0


def test_server_prunes_after_a_write(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(env={"DATACAT_SERVER_RETENTION_DAYS": "1"})
    api = Api(server.url)
    ended, still_open = str(uuid.uuid4()), str(uuid.uuid4())
    long_ago = {"timestamp": time.time() - 10 * DAY}
    create = {"product": "R", "version": "1", **long_ago}
    operations = [
        {"op_id": str(uuid.uuid4()), "op": op, "session_id": sid, "data": data}
        for op, sid, data in (
            ("create", ended, create),
            ("end", ended, long_ago),
            ("create", still_open, create),
        )
    ]
    # The first write of a fresh server is followed by a pass (then none for an hour).
    assert api.batch(operations).json()["applied"] == 3
    deadline = time.monotonic() + 10
    while api.request("GET", f"/api/sessions/{ended}").status_code != 404:
        assert time.monotonic() < deadline, "the finished session was not deleted"
        time.sleep(0.05)
    assert api.get(still_open)["id"] == still_open
