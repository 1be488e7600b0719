"""The flask target: a timer per request, an event per unhandled exception."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flask
import pytest
from autoinstrument_helpers import events, instrumented, metrics


def make_app() -> flask.Flask:
    app = flask.Flask("shop")

    @app.get("/items/<int:item>")
    def item(item: int) -> str:
        return str(item)

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("kaboom")

    return app


@pytest.fixture
def dc_session(server_url: str, tmp_path: Path) -> Iterator[Any]:
    with instrumented(server_url, tmp_path, ["flask", "logging"]) as s:
        yield s


def test_requests_feed_a_timer_tagged_endpoint_method_status(
    dc_session: Any, server_url: str
) -> None:
    client = make_app().test_client()  # an app made after instrumenting is covered too
    assert client.get("/items/1").status_code == 200
    assert client.get("/items/2").status_code == 200
    assert client.get("/nowhere").status_code == 404
    assert dc_session.flush(10)
    counts = {
        (m["tags"]["endpoint"], m["tags"]["method"], m["tags"]["status"]): m["count"]
        for m in metrics(server_url, dc_session.id, "http.server.duration")
    }
    assert counts == {("item", "GET", "200"): 2, ("<unmatched>", "GET", "404"): 1}


def test_an_unhandled_exception_becomes_one_event(dc_session: Any, server_url: str) -> None:
    client = make_app().test_client()
    assert client.get("/boom").status_code == 500
    assert dc_session.flush(10)
    (event,) = events(server_url, dc_session.id, "http_request_exception")
    assert event["exception_type"] == "RuntimeError"
    assert event["data"] == {"endpoint": "boom", "method": "GET", "path": "/boom"}
    # Flask logs the same exception on app.logger: not captured a second time
    assert events(server_url, dc_session.id, "log") == []
    (metric,) = metrics(server_url, dc_session.id, "http.server.duration")
    assert metric["tags"]["status"] == "500"
