"""The offline spool: atomic ordered files, the bound, replay in order, the replay lock, and
replay by the next process and by ``datacat upload``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client_helpers import Peer, details
from serverproc import free_port

from datacat import cli
from datacat.config import resolve
from datacat.spool import Spool, spools
from datacat.transport import HttpTransport


def op(name: str) -> dict[str, Any]:
    return {
        "op_id": str(uuid.uuid4()),
        "op": "event",
        "session_id": str(uuid.uuid4()),
        "data": {"name": name},
    }


def test_files_keep_order_and_no_temporary_files_remain(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    for i in range(5):
        assert spool.write([op(str(i))])
    names = [spool.read(path)[0]["data"]["name"] for path in spool.files()]  # type: ignore[index]
    assert names == ["0", "1", "2", "3", "4"]
    assert not list(tmp_path.glob(".tmp-*"))
    assert oct(tmp_path.stat().st_mode & 0o777) == oct(0o700) or tmp_path.exists()


def test_replay_removes_stale_half_written_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    stale, fresh = tmp_path / ".tmp-stale", tmp_path / ".tmp-fresh"
    stale.write_text("{")
    fresh.write_text("{")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    with Peer("ok") as peer:
        assert spool.replay(HttpTransport(peer.url)).complete
    assert not stale.exists() and fresh.exists()


def test_bound_refuses_and_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", 300)
    assert spool.write([op("a")])
    assert not spool.write([op("b"), op("c")])
    assert spool.refused == 2 and len(spool.files()) == 1


def test_unreadable_file_is_set_aside(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    (tmp_path / "00000000000000000001-1-000000.batch.json").write_text("{not json")
    (path,) = spool.files()
    assert spool.read(path) is None
    assert not spool.files() and list(tmp_path.glob("*.bad"))


def test_replay_stops_at_a_retryable_failure_and_drops_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.write([op("first")])
    spool.write([op("second")])
    with Peer("status", status=503) as down:
        result = spool.replay(HttpTransport(down.url))
    assert not result.complete and len(down.bodies) == 1 and len(spool.files()) == 2
    with Peer("status", status=400) as refusing:
        result = spool.replay(HttpTransport(refusing.url))
    assert result.complete and result.rejected == 2 and not spool.files()


LOCK_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()
"""


def test_another_process_replaying_holds_us_off(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.write([op("x")])
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(tmp_path / ".lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with Peer("ok") as peer:
            busy = spool.replay(HttpTransport(peer.url))
            assert busy.complete is False and busy.busy
            assert peer.bodies == []
    finally:
        holder.communicate("\n", timeout=10)
    with Peer("ok") as peer:
        assert spool.replay(HttpTransport(peer.url)).complete and len(peer.bodies) == 1


OFFLINE_RUN = """
import sys, datacat
s = datacat.create_session(sys.argv[1], product="offline", version="1", spool_dir=sys.argv[2],
                           exit_timeout=0.5, timeout=0.5)
for i in range(20):
    s.log_event("offline", {"i": i})
s.update_state({"phase": "done"})
print(s.id)
"""
NEXT_RUN = """
import sys, datacat
s = datacat.create_session(sys.argv[1], product="next", version="1", spool_dir=sys.argv[2])
s.log_event("next run")
assert s.end(10)
"""


def run(script: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_next_process_replays_what_an_offline_run_spooled(
    server_factory: Callable[..., Any], tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    sid = run(OFFLINE_RUN, url, str(tmp_path))  # nothing listens there yet
    assert list(tmp_path.glob("*/*.batch.json"))
    server_factory(port=port)
    run(NEXT_RUN, url, str(tmp_path))
    got = details(url, sid)
    assert [e["data"]["i"] for e in got["events"]] == list(range(20))
    assert got["state"]["phase"] == "done" and got["ended_at"]  # the exit hook ended it
    assert not list(tmp_path.glob("*/*.batch.json"))


def test_datacat_upload_replays_by_hand(
    server_factory: Callable[..., Any], tmp_path: Path, capsys: Any
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    sid = run(OFFLINE_RUN, url, str(tmp_path))
    (found,) = spools(str(tmp_path), 1 << 20)
    assert found.url == url
    assert cli.main(["upload", "--spool-dir", str(tmp_path)]) == 1  # still down: kept
    server_factory(port=port)
    assert cli.main(["upload", "--spool-dir", str(tmp_path), "--url", url]) == 0
    assert len(details(url, sid)["events"]) == 20
    assert "sent" in capsys.readouterr().out


def test_spool_is_per_server_url(tmp_path: Path) -> None:
    a = Spool.for_url(resolve(env={}, url="http://a.test", spool_dir=str(tmp_path)))
    b = Spool.for_url(resolve(env={}, url="http://b.test", spool_dir=str(tmp_path)))
    a.write([op("a")])
    assert a.directory != b.directory and not b.files()
    assert json.loads(a.files()[0].read_text())["operations"][0]["data"]["name"] == "a"


def test_the_test_suite_never_spools_into_the_users_cache(tmp_path_factory: Any) -> None:
    """Tests and the programs they start point at dead URLs on purpose: what they spool must
    land in pytest's temporary directory (``private_spool`` in ``conftest.py``)."""
    from datacat.config import default_spool_dir

    spool_dir = Path(resolve().spool_dir)
    assert spool_dir != Path(default_spool_dir())
    assert spool_dir.is_relative_to(tmp_path_factory.getbasetemp())
    code = "import datacat.config as c; print(c.resolve().spool_dir)"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert Path(child.stdout.strip()) == spool_dir
