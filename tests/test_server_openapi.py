"""``/openapi.json`` is the contract: it covers every route, and real answers match its schemas."""

from __future__ import annotations

import json
import re
import uuid
from importlib import resources
from typing import Any

import jsonschema
import pytest
import requests
from datacat_server import create_app
from serverproc import Api

DOCUMENT: dict[str, Any] = json.loads(
    resources.files("datacat_server").joinpath("openapi.json").read_text()
)
FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER


def check(response: requests.Response, path: str, method: str = "get") -> None:
    """Validate ``response`` against the schema the document gives for its path and status."""
    spec = DOCUMENT["paths"][path][method]["responses"][str(response.status_code)]
    schema = {**spec["content"]["application/json"]["schema"], "components": DOCUMENT["components"]}
    jsonschema.validate(response.json(), schema, format_checker=FORMATS)
    for header in spec.get("headers", {}):
        if header in response.headers:
            assert isinstance(response.headers[header], str)


def test_document_is_openapi_3_1_with_valid_schemas() -> None:
    assert DOCUMENT["openapi"].startswith("3.1")
    for schema in DOCUMENT["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_every_route_is_documented_and_nothing_else(tmp_path: Any) -> None:
    app = create_app({"DATACAT_DB": f"sqlite:///{tmp_path}/doc.db"})
    routes = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("api.") or rule.rule in ("/health", "/openapi.json")
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    documented = {(path, method) for path, ops in DOCUMENT["paths"].items() for method in ops}
    assert routes == documented


def test_served_document_is_the_file(server_url: str) -> None:
    assert requests.get(f"{server_url}/openapi.json", timeout=10).json() == DOCUMENT


@pytest.fixture(scope="module")
def full_session(server_url: str) -> str:
    api = Api(server_url)
    sid = api.create(machine_id="m", hostname="h", state={"a": {"b": 1}})["id"]
    api.post(sid, "state", {"a": {"c": [1, 2]}})
    api.post(sid, "events", {"name": "boom", "exception_type": "E", "stacktrace": ["x"]})
    api.post(sid, "metrics", {"name": "c", "value": 1, "type": "counter", "tags": {"k": "v"}})
    api.post(
        sid,
        "metrics",
        {
            "name": "h",
            "value": 0.3,
            "type": "histogram",
            "count": 2,
            "buckets": [0.1, 1],
            "bucket_counts": [0, 2, 0],
        },
    )
    api.post(sid, "heartbeat")
    return sid


def test_session_answers_match(server_url: str, full_session: str) -> None:
    api = Api(server_url)
    created = api.request("POST", "/api/sessions", json={"product": "o", "version": "1"})
    check(created, "/api/sessions", "post")
    check(api.request("GET", f"/api/sessions/{full_session}"), "/api/sessions/{session_id}")
    for summary in ("0", "1"):
        listing = api.request("GET", "/api/data/sessions", params={"summary": summary, "limit": 3})
        check(listing, "/api/data/sessions")
    for kind in ("events", "metrics"):
        path = f"/api/sessions/{{session_id}}/{kind}"
        check(api.request("GET", f"/api/sessions/{full_session}/{kind}"), path)


def test_write_and_error_answers_match(server_url: str, full_session: str) -> None:
    api = Api(server_url)
    sid = full_session
    check(api.post(sid, "state", {"x": 1}), "/api/sessions/{session_id}/state", "post")
    check(api.post(sid, "events", {"name": 1}), "/api/sessions/{session_id}/events", "post")
    check(api.post(str(uuid.uuid4()), "end"), "/api/sessions/{session_id}/end", "post")
    check(api.post(sid, "crash", {"reason": "r"}), "/api/sessions/{session_id}/crash", "post")
    batch = api.batch([{"op_id": str(uuid.uuid4()), "op": "event", "session_id": sid, "data": {}}])
    check(batch, "/api/batch", "post")
    check(api.request("GET", "/health"), "/health")
