"""The requests target: timers per call, events per failure, DataCat's own traffic untouched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from autoinstrument_helpers import events, instrumented, metrics
from serverproc import free_port

from datacat import autoinstrument
from datacat.autoinstrument.requests import status_class


@pytest.fixture
def dc_session(server_url: str, tmp_path: Path) -> Iterator[Any]:
    with instrumented(server_url, tmp_path, ["requests"]) as s:
        yield s


def test_each_call_feeds_a_timer_tagged_method_host_status(
    dc_session: Any, server_url: str
) -> None:
    for _ in range(3):
        assert requests.get(server_url + "/health", timeout=10).ok
    requests.get(server_url + "/api/sessions/not-a-uuid", timeout=10)  # a 4xx answer
    assert dc_session.flush(10)
    found = metrics(server_url, dc_session.id, "http.client.duration")
    host = urlsplit(server_url).netloc
    by_class: dict[str, int] = {}
    for metric in found:
        assert metric["type"] == "timer" and metric["tags"]["host"] == host
        assert metric["tags"]["method"] == "GET"
        cls = metric["tags"]["status_class"]
        by_class[cls] = by_class.get(cls, 0) + metric["count"]
    # exactly the user's calls: the session's own batches to the same host are not counted
    assert by_class == {"2xx": 3, "4xx": 1}


def test_a_failed_call_becomes_an_event_and_still_raises(dc_session: Any, server_url: str) -> None:
    url = f"http://user:secret@127.0.0.1:{free_port()}/x?token=t"
    with pytest.raises(requests.ConnectionError):
        requests.post(url, timeout=5)
    assert dc_session.flush(10)
    (event,) = events(server_url, dc_session.id, "http_request_failed")
    assert event["exception_type"] == "requests.exceptions.ConnectionError"
    assert event["data"]["method"] == "POST"
    assert "secret" not in event["data"]["url"] and "token" not in event["data"]["url"]
    # (the query just above went through ``requests`` too: its timer may have arrived already)
    timers = metrics(server_url, dc_session.id, "http.client.duration")
    (metric,) = [m for m in timers if m["tags"]["host"] == urlsplit(url).netloc.rpartition("@")[2]]
    assert metric["tags"]["status_class"] == "error"


def test_suppressed_calls_are_not_recorded(dc_session: Any, server_url: str) -> None:
    with autoinstrument.suppressed():
        requests.get(server_url + "/health", timeout=10)
    assert dc_session.flush(10)
    assert metrics(server_url, dc_session.id, "http.client.duration") == []


@pytest.mark.parametrize(
    ("status", "cls"), [(None, "error"), (200, "2xx"), (304, "3xx"), (404, "4xx"), (503, "5xx")]
)
def test_status_classes(status: int | None, cls: str) -> None:
    assert status_class(status) == cls
