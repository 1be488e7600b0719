"""Storage guarantees through a real server: atomic merges under concurrent writers, idempotent
concurrent creates, constant-size writes, and acknowledged writes surviving ``kill -9``; SQLite's
checkpoints in a thread of their own (on a real SQLite file)."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from datacat_server import create_app, schema, storage
from serverproc import Api, ServerProcess


def hammer(workers: int, job: Callable[[int], Any]) -> list[Any]:
    """Run ``job(i)`` on ``workers`` threads at once; return their results."""
    results: list[Any] = [None] * workers
    barrier = threading.Barrier(workers)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = job(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_state_writers_never_lose_a_key(api_url: str) -> None:
    api = Api(api_url)
    sid = api.create()["id"]

    def writer(i: int) -> list[int]:
        with requests.Session() as http:
            return [
                http.post(
                    f"{api_url}/api/sessions/{sid}/state",
                    json={"shared": {f"w{i}k{k}": k}, f"top{i}": k},
                    timeout=30,
                ).status_code
                for k in range(15)
            ]

    statuses = hammer(8, writer)
    assert {code for codes in statuses for code in codes} == {200}
    state = api.get(sid)["state"]
    assert len(state["shared"]) == 8 * 15
    assert all(state[f"top{i}"] == 14 for i in range(8))


def test_concurrent_creates_of_one_id_make_one_session(api_url: str) -> None:
    sid = str(uuid.uuid4())
    body = {"id": sid, "product": "race", "version": "1"}
    codes = hammer(
        6, lambda _i: requests.post(f"{api_url}/api/sessions", json=body, timeout=30).status_code
    )
    assert sorted(codes) == [200] * 5 + [201]
    assert len(Api(api_url).get(sid)["state_history"]) == 1


def test_acknowledged_writes_survive_kill_9_and_restart(api_server: ServerProcess) -> None:
    api = Api(api_server.url)
    sid = api.create()["id"]
    for i in range(40):
        assert api.post(sid, "events", {"name": f"e{i}"}).ok
    assert api.post(sid, "state", {"last": 39}).ok
    port = api_server.port
    api_server.kill()  # SIGKILL to master and workers at once
    api_server.start()
    session = api.get(sid)
    assert [e["name"] for e in session["events"]] == [f"e{i}" for i in range(40)]
    assert session["state"]["last"] == 39
    api_server.restart()
    assert api_server.port == port and api.get(sid)["state"]["last"] == 39


@pytest.mark.parametrize(
    "document,expected",
    [
        ({}, []),
        ({"a": 1, "b": None}, [("a", 1)]),
        ({"a": {"b": {"c": [1, 2]}}, "d": "x"}, [("a.b.c", [1, 2]), ("d", "x")]),
        ({"a": {}}, []),
    ],
)
def test_leaves(document: dict[str, Any], expected: list[tuple[str, Any]]) -> None:
    assert list(storage.leaves(document)) == expected


def test_value_key_treats_integral_floats_as_ints() -> None:
    assert storage.value_key("a", 3.0) == storage.value_key("a", 3)
    assert storage.value_key("a", "3") != storage.value_key("a", 3)
    assert storage.value_key("a.b", 1) != storage.value_key("a", 1)
    assert storage.value_key("k", {"y": 1, "x": 2}) == storage.value_key("k", {"x": 2, "y": 1})


# -- SQLite checkpoints in their own thread ------------------------------------------------------


def _pragma(store: storage.Storage, name: str) -> Any:
    with store.read() as conn:
        return conn.exec_driver_sql(f"PRAGMA {name}").scalar()


def _write_events(app: Any, session_id: str, batches: int) -> None:
    client = app.test_client()
    for b in range(batches):
        event = {"name": "e", "timestamp": 1.0, "data": {"n": b, "pad": "x" * 400}}
        ops = [
            {"op_id": str(uuid.uuid4()), "op": "event", "session_id": session_id, "data": event}
            for _ in range(20)
        ]
        answer = client.post("/api/batch", json={"operations": ops}).get_json()
        assert answer["applied"] == 20, answer


def _wait(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_checkpoints_run_in_their_own_thread_and_stop_when_idle(tmp_path: Path) -> None:
    app = create_app(
        {"DATACAT_DB": f"sqlite:///{tmp_path}/c.db", "DATACAT_CHECKPOINT_INTERVAL": 0.02}
    )
    store: storage.Storage = app.extensions["datacat"]
    checkpoints = store.checkpoints
    assert checkpoints is not None and not checkpoints.running  # nothing written yet
    # commits no longer checkpoint at SQLite's 1,000 pages, only past the backstop
    assert _pragma(store, "wal_autocheckpoint") == storage.WAL_BACKSTOP
    sid = (
        app.test_client()
        .post("/api/sessions", json={"product": "p", "version": "1"})
        .get_json()["id"]
    )
    _write_events(app, sid, 30)
    assert checkpoints.running
    # a pass copied the whole log back (log pages == checkpointed pages), with no busy reader
    assert _wait(
        lambda: checkpoints.last is not None and checkpoints.last[1] == checkpoints.last[2]
    )
    assert checkpoints.last is not None and checkpoints.last[0] == 0 and checkpoints.last[1] > 0
    # idle: the thread ends; the next write starts another
    assert _wait(lambda: not checkpoints.running)
    passes = checkpoints.passes
    _write_events(app, sid, 1)
    assert checkpoints.running
    assert _wait(lambda: checkpoints.passes > passes)
    # the rows are in the database file itself (``immutable``: read without the log)
    assert _wait(lambda: not checkpoints.running)
    with sqlite3.connect(f"file:{tmp_path}/c.db?immutable=1", uri=True) as db:
        assert db.execute("SELECT count(*) FROM events").fetchone() == (31 * 20,)


def test_checkpoint_interval_0_leaves_checkpoints_to_sqlite(tmp_path: Path) -> None:
    store = storage.Storage(f"sqlite:///{tmp_path}/d.db", checkpoint_interval=0)
    assert store.checkpoints is None
    assert _pragma(store, "wal_autocheckpoint") == 1000  # SQLite's default
    with store.write() as conn:
        conn.exec_driver_sql("SELECT 1")


def test_a_server_worker_starts_its_own_checkpoint_thread(tmp_path: Path) -> None:
    """gunicorn's worker calls ``dispose`` after the fork: the parent's thread is not its own."""
    store = storage.Storage(f"sqlite:///{tmp_path}/f.db", checkpoint_interval=0.02)
    with store.write() as conn:
        conn.exec_driver_sql("SELECT 1")
    inherited = store.checkpoints
    assert inherited is not None and inherited.running
    store.dispose()
    assert store.checkpoints is not inherited and not store.checkpoints.running
    with store.write() as conn:
        conn.exec_driver_sql("SELECT 1")
    assert store.checkpoints.running


def test_in_memory_sqlite_has_no_checkpoint_thread(tmp_path: Path) -> None:
    """Nothing to checkpoint, and its pool (a connection per thread) must not collect ours."""
    for url in ("sqlite://", "sqlite:///:memory:"):
        assert storage.Storage(url, checkpoint_interval=0.02).checkpoints is None
    assert schema.sqlite_file(sa.make_url("sqlite:///file:m?mode=memory&uri=true")) is None
    assert schema.sqlite_file(sa.make_url(f"sqlite:///{tmp_path}/f.db")) == f"{tmp_path}/f.db"


def test_a_checkpoint_thread_that_cannot_start_never_fails_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = storage.Storage(f"sqlite:///{tmp_path}/g.db", checkpoint_interval=0.02)
    checkpoints = store.checkpoints
    assert checkpoints is not None

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    for _ in range(2):  # logged once
        with store.write() as conn:
            conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (x)")
    assert not checkpoints.running
    assert caplog.text.count("cannot start the checkpoint thread") == 1
    monkeypatch.undo()
    with store.write() as conn:  # the next write tries again
        conn.exec_driver_sql("SELECT 1")
    assert checkpoints.running


def test_every_thread_of_a_busy_worker_gets_its_connections(tmp_path: Path) -> None:
    """Each thread keeps a writer and a reader connection for its life: 12 threads hold 24, past
    the pool's default bound of 15 (whose 16th would wait 30 s, then fail)."""
    store = storage.Storage(f"sqlite:///{tmp_path}/p.db", checkpoint_interval=0)

    def use(i: int) -> bool:
        with store.write() as conn:
            conn.exec_driver_sql("SELECT 1")
        with store.read() as conn:
            conn.exec_driver_sql("SELECT 1")
        return True

    threads = 12
    barrier = threading.Barrier(threads + 1)
    results: list[bool] = []

    def hold(i: int) -> None:
        results.append(use(i))
        barrier.wait(20)  # keep the thread, and its connections, until all have theirs

    workers = [threading.Thread(target=hold, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait(10)  # raises BrokenBarrierError when a thread is stuck waiting for the pool
    for worker in workers:
        worker.join(5)
    assert results == [True] * threads
