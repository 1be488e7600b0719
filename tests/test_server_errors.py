"""Every malformed request gets the JSON error shape with the right status, never a 500."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from serverproc import Api, ServerProcess

SID = "{sid}"  # (the table runs on SQLite and PostgreSQL: ``api_url``)


@pytest.fixture(scope="module")
def session_id(api_url: str) -> str:
    return Api(api_url).create()["id"]


DEEP = b'{"product": "a", "version": "1", "state": ' + b'{"a": ' * 900 + b"1" + b"}" * 901


@pytest.mark.parametrize(
    "method,path,body,status",
    [
        ("POST", "/api/sessions", b"{not json", 400),
        ("POST", "/api/sessions", b"[]", 400),
        ("POST", "/api/sessions", b"", 400),
        ("POST", "/api/sessions", b'{"product": 1, "version": "1"}', 400),
        ("POST", "/api/sessions", b'{"version": "1"}', 400),
        ("POST", "/api/sessions", b'{"product": "a", "version": "1", "id": "x"}', 400),
        ("POST", "/api/sessions", b'{"product": "a", "version": "1", "state": []}', 400),
        ("POST", "/api/sessions", b'{"product": "a", "version": "1", "timestamp": 1e300}', 400),
        ("POST", "/api/sessions", b"\xff\xfe\x00", 400),
        ("POST", "/api/sessions", b"[" * 100_000, 400),
        ("POST", f"/api/sessions/{SID}/events", b'{"name": ""}', 400),
        ("POST", f"/api/sessions/{SID}/events", b'{"name": "x", "level": "loud"}', 400),
        ("POST", f"/api/sessions/{SID}/events", b'{"name": "x", "labels": [1]}', 400),
        ("POST", f"/api/sessions/{SID}/events", b'{"name": "x", "timestamp": "soon"}', 400),
        ("POST", f"/api/sessions/{SID}/events", b'{"name": "x", "source_line": "7"}', 400),
        ("POST", f"/api/sessions/{SID}/events", '{"name": "' + "x" * 201 + '"}', 400),
        ("POST", f"/api/sessions/{SID}/metrics", b'{"name": "x"}', 400),
        ("POST", f"/api/sessions/{SID}/metrics", b'{"name": "x", "value": NaN}', 400),
        ("POST", f"/api/sessions/{SID}/metrics", b'{"name": "x", "value": Infinity}', 400),
        (
            "POST",
            f"/api/sessions/{SID}/metrics",
            b'{"name": "x", "value": 1' + b"0" * 400 + b"}",
            400,
        ),
        ("POST", f"/api/sessions/{SID}/metrics", b'{"name": "x", "value": true}', 400),
        ("POST", f"/api/sessions/{SID}/metrics", b'{"name": "x", "value": 1, "type": "y"}', 400),
        (
            "POST",
            f"/api/sessions/{SID}/metrics",
            b'{"name": "x", "value": 1, "buckets": [2, 1], "bucket_counts": [0, 0, 0]}',
            400,
        ),
        ("POST", f"/api/sessions/{SID}/state", b"3", 400),
        ("POST", f"/api/sessions/{SID}/state", b'{"a": 1e400}', 400),
        ("POST", f"/api/sessions/{SID}/state", b'{"\\ud800": 1}', 400),
        ("POST", f"/api/sessions/{SID}/state", b'{"a": ["\\udcff"]}', 400),
        ("POST", f"/api/sessions/{SID}/events", b'{"name": "\\ud800"}', 400),
        ("POST", f"/api/sessions/{SID}/events", b'{"name": "x", "data": {"a": -1e999}}', 400),
        ("POST", f"/api/sessions/{SID}/metrics", b'{"name": "\\udcff", "value": 1}', 400),
        (
            "POST",
            f"/api/sessions/{SID}/metrics",
            b'{"name": "m", "value": 1, "metadata": {"a": 1e400}}',
            400,
        ),
        ("POST", f"/api/sessions/{SID}/crash", b'{"reason": "\\ud800"}', 400),
        ("POST", f"/api/sessions/{SID}/crash", b'{"data": {"x": 1e400}}', 400),
        ("POST", "/api/sessions", b'{"product": "\\ud800", "version": "1"}', 400),
        ("POST", "/api/sessions", b'{"product": "a", "version": "1", "state": {"a": 1e400}}', 400),
        ("POST", "/api/sessions", DEEP, 400),
        ("POST", f"/api/sessions/{SID}/heartbeat", b"[1]", 400),
        ("POST", f"/api/sessions/{SID}/crash", b'{"reason": 5}', 400),
        ("POST", "/api/batch", b'{"operations": 3}', 400),
        ("DELETE", "/api/sessions", b"", 405),
        ("PUT", f"/api/sessions/{SID}", b"", 405),
        ("GET", f"/api/sessions/{SID}/state", b"", 405),
        ("GET", "/api/nothing", b"", 404),
        ("GET", "/api/data/sessions?limit=0", b"", 400),
        ("GET", "/api/data/sessions?limit=%C2%B2", b"", 400),
        ("GET", "/api/data/sessions?limit=99999", b"", 400),
        ("GET", "/api/data/sessions?status=asleep", b"", 400),
        ("GET", "/api/data/sessions?cursor=%%%", b"", 400),
        ("GET", "/api/data/sessions?cursor=WzFd", b"", 400),
        ("GET", "/api/data/sessions?limit=1&cursor=W3RydWUsICJ4Il0", b"", 400),
        ("GET", f"/api/sessions/{SID}/events?cursor=OTIyMzM3MjAzNjg1NDc3NTgwOA", b"", 400),
        ("GET", f"/dashboard/api/sessions/{SID}?events_after=99999999999999999999", b"", 400),
        ("GET", "/api/data/sessions?created_after=yesterday", b"", 400),
        ("GET", "/api/data/sessions?created_after=nan", b"", 400),
        ("GET", f"/api/sessions/{SID}/events?cursor=WyJhIl0", b"", 400),
        ("GET", f"/api/sessions/{SID}/events?level=loud", b"", 400),
        ("GET", f"/api/sessions/{SID}/metrics?type=y", b"", 400),
    ],
)
def test_malformed_request(
    api_url: str, session_id: str, method: str, path: str, body: bytes | str, status: int
) -> None:
    response = Api(api_url).request(method, path.replace(SID, session_id), data=body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error", "details"}
    assert response.headers["Content-Type"] == "application/json"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with an API key and a 1000-byte body limit."""
    directory = tmp_path_factory.mktemp("guarded")
    server = ServerProcess(
        f"sqlite:///{directory}/db.sqlite", api_key="s3cret", max_body=1000, log_dir=directory
    )
    yield server.start()
    server.stop()


def test_body_over_the_limit_is_413(guarded: ServerProcess) -> None:
    api = Api(guarded.url, {"X-API-Key": "s3cret"})
    response = api.request("POST", "/api/sessions", data=b"x" * 2000)
    assert response.status_code == 413
    assert response.json()["error"] == "request entity too large"


def test_api_key_is_required_when_configured(guarded: ServerProcess) -> None:
    anonymous = Api(guarded.url).request("POST", "/api/sessions", json={"product": "a"})
    assert anonymous.status_code == 401 and set(anonymous.json()) == {"error", "details"}
    wrong = Api(guarded.url, {"Authorization": "Bearer nope"})
    assert wrong.request("GET", "/api/data/sessions").status_code == 401
    for headers in ({"Authorization": "Bearer s3cret"}, {"X-API-Key": "s3cret"}):
        assert Api(guarded.url, headers).create()["product"] == "ApiTest"
    assert Api(guarded.url).request("GET", "/health").ok  # health and the contract stay open
    assert Api(guarded.url).request("GET", "/openapi.json").ok
    assert Api(guarded.url).request("GET", f"/api/sessions/{uuid.uuid4()}").status_code == 401


def chunks(*parts: bytes) -> Iterator[bytes]:
    """A body ``requests`` sends chunked (no Content-Length)."""
    yield from parts


def test_chunked_body_over_the_limit_is_413(guarded: ServerProcess) -> None:
    api = Api(guarded.url, {"X-API-Key": "s3cret"})
    big = chunks(b'{"product": "a", "version": "1", "state": {"x": "', b"y" * 2000, b'"}}')
    response = api.request("POST", "/api/sessions", data=big)
    assert response.status_code == 413, response.text
    small = chunks(b'{"product": "a", ', b'"version": "1"}')
    assert api.request("POST", "/api/sessions", data=small).status_code == 201


def test_long_filter_urls_are_served(api_url: str) -> None:
    """gunicorn answered an HTML 414 to request lines over 4094 bytes; past its 8190 limit the
    414 is in the JSON error shape."""
    state = {f"state.key{i}": "x" * 50 for i in range(100)}  # ~6,500 bytes
    response = Api(api_url).request("GET", "/api/data/sessions", params=state)
    assert response.status_code == 200 and response.json() == []
    too_long = Api(api_url).request("GET", "/api/data/sessions?x=" + "x" * 9000)
    assert too_long.status_code == 414 and set(too_long.json()) == {"error", "details"}
