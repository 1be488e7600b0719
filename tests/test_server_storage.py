"""Storage guarantees through a real server: atomic merges under concurrent writers, idempotent
concurrent creates, constant-size writes, and acknowledged writes surviving ``kill -9``."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
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
