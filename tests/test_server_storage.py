"""Storage guarantees through a real server: atomic merges under concurrent writers, idempotent
concurrent creates, constant-size writes, and acknowledged writes surviving ``kill -9``."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from datacat_server import storage
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


def test_acknowledged_writes_survive_kill_9(storage_url: str, tmp_path: Path) -> None:
    server = ServerProcess(storage_url, workers=2, log_dir=tmp_path).start()
    try:
        api = Api(server.url)
        sid = api.create()["id"]
        for i in range(40):
            assert api.post(sid, "events", {"name": f"e{i}"}).ok
        assert api.post(sid, "state", {"last": 39}).ok
        server.kill()
        server.start()
        session = api.get(sid)
        assert [e["name"] for e in session["events"]] == [f"e{i}" for i in range(40)]
        assert session["state"]["last"] == 39
    finally:
        server.stop()


def test_restart_keeps_the_port_and_the_data(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory()
    sid = Api(server.url).create()["id"]
    port = server.port
    server.restart()
    assert server.port == port and Api(server.url).get(sid)["id"] == sid


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
