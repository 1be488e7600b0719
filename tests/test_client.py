"""``DatacatClient`` (one method per endpoint) and ``datacat sessions``, against the real server."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from datacat import DatacatClient, cli
from datacat.errors import NotFoundError, ServerError, ValidationError


def test_every_endpoint(server_url: str) -> None:
    client = DatacatClient(server_url)
    created = client.create_session("client-app", "3.0", machine_id="m1", state={"a": 1})
    sid = created["id"]
    assert created["state"] == {"product": "client-app", "version": "3.0", "a": 1}
    assert client.update_state(sid, {"b": 2}) == {"success": True}
    client.log_event(sid, "e", level="warning", data={"k": 1})
    client.log_metric(sid, "m", 1.5, type="timer", unit="s")
    client.heartbeat(sid)
    op = {"op_id": str(uuid.uuid4()), "op": "event", "session_id": sid, "data": {"name": "b"}}
    assert client.batch([op])["applied"] == 1
    got = client.get_session(sid)
    assert got["state"]["b"] == 2 and [e["name"] for e in got["events"]] == ["e", "b"]
    assert got["metrics"][0]["unit"] == "s" and got["last_heartbeat"]
    assert client.end_session(sid) == {"success": True}
    listed = client.get_all_sessions(product="client-app")
    assert sid in [s["id"] for s in listed]
    other = client.create_session("client-app", "3.0")["id"]
    assert client.crash_session(other, "boom", {"code": 1}) == {"status": "ok"}
    assert client.get_session(other)["crashed"] is True
    client.close()


def test_errors_carry_the_server_text(server_url: str) -> None:
    client = DatacatClient(server_url)
    with pytest.raises(NotFoundError) as missing:
        client.get_session(str(uuid.uuid4()))
    assert missing.value.status == 404 and missing.value.error
    sid = client.create_session("p", "1")["id"]
    with pytest.raises(ServerError) as invalid:
        client.log_event(sid, "")
    assert invalid.value.status == 400 and "name" in str(invalid.value)
    with pytest.raises(ValidationError):
        client.log_metric(sid, "m", float("nan"))


def test_sessions_command_lists_a_table_and_json(server_url: str, capsys: Any) -> None:
    client = DatacatClient(server_url)
    product = f"cli-{uuid.uuid4().hex[:8]}"
    sid = client.create_session(product, "9")["id"]
    assert cli.main(["sessions", "--url", server_url, "--product", product]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["id", "product", "version", "status"]
    assert out[1].split()[:3] == [sid, product, "9"]
    assert cli.main(["sessions", "--url", server_url, "--product", product, "--json"]) == 0
    assert sid in capsys.readouterr().out
    assert cli.main(["sessions", "--url", "http://127.0.0.1:9"]) == 1
