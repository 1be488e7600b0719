"""``datacat.pipe.PipeTransport`` against a real ``datacat daemon`` process and a real server."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from autoinstrument_helpers import session, wait_for
from fork_helpers import lock_free_in_forked_child

from datacat import config as config_module
from datacat.config import Config
from datacat.pipe import PIPE_FULL, PipeTransport, daemon_environment, hello
from datacat.worker import wire


@pytest.fixture
def config(server_url: str, tmp_path: Path) -> Config:
    return config_module.resolve(env={}, url=server_url, spool_dir=str(tmp_path / "spool"))


@pytest.fixture
def transport(
    config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[PipeTransport]:
    monkeypatch.setenv("DATACAT_DAEMON_LOG", str(tmp_path / "daemon.log"))
    pipe = PipeTransport(config)
    yield pipe
    pid = pipe.daemon_pid
    pipe.close(timeout=1)
    if pid is not None:
        _kill(pid, signal.SIGCONT)


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _create(sid: str) -> list[dict]:
    return [wire("create", sid, {"product": "pipe-test", "version": "1"})]


def _session(url: str, sid: str) -> dict:
    """The session as the server has it, once it exists."""
    return wait_for(lambda: session(url, sid), what=f"session {sid}")


def test_batches_reach_the_server_through_the_daemon(
    transport: PipeTransport, server_url: str
) -> None:
    sid = str(uuid.uuid4())
    result = transport.send_batch(_create(sid))
    assert result.delivered and result.applied == 1
    assert transport.daemon_pid is not None and transport.daemon_pid != os.getpid()
    assert _session(server_url, sid)["state"]["product"] == "pipe-test"


def test_a_full_pipe_never_blocks_and_answers_retryable(
    transport: PipeTransport, server_url: str
) -> None:
    sid = str(uuid.uuid4())
    transport.send_batch(_create(sid))
    assert transport.daemon_pid is not None
    os.kill(transport.daemon_pid, signal.SIGSTOP)  # the daemon stops reading
    big = [wire("heartbeat", sid, {"pad": "x" * 4000}) for _ in range(16)]  # 64 KiB a batch
    results = [transport.send_batch(big) for _ in range(64)]  # 4 MiB: far beyond a pipe
    full = [r for r in results if not r.delivered]
    assert full, "a stopped reader must fill the pipe"
    assert all(r.status == PIPE_FULL and r.retryable for r in full)
    assert transport.dropped_writes == len(full)
    os.kill(transport.daemon_pid, signal.SIGCONT)
    after = str(uuid.uuid4())  # the stream is intact: a line written after the jam arrives whole
    wait_for(lambda: transport.send_batch(_create(after)).delivered, what="the pipe to drain")
    assert _session(server_url, after)["id"] == after


def test_a_dead_daemon_means_sending_directly(transport: PipeTransport, server_url: str) -> None:
    transport.send_batch(_create(str(uuid.uuid4())))
    assert transport.daemon_pid is not None
    os.kill(transport.daemon_pid, signal.SIGKILL)
    sid = str(uuid.uuid4())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the first writes may still fit the dead pipe's buffer
        transport.send_batch(_create(sid))
        if requests.get(f"{server_url}/api/sessions/{sid}", timeout=5).status_code == 200:
            break
        time.sleep(0.05)
    assert _session(server_url, sid)["id"] == sid


def test_hello_carries_the_options_and_the_app_pid(config: Config) -> None:
    line = hello(config)
    assert line.endswith(b"\n")
    assert f'"pid":{os.getpid()}'.encode() in line
    assert config.url.encode() in line


def test_the_daemon_is_never_instrumented_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATACAT_RUN", "1")
    monkeypatch.setenv("DATACAT_DAEMON", "1")
    env = daemon_environment()
    assert "DATACAT_RUN" not in env and "DATACAT_DAEMON" not in env
    assert "_bootstrap" not in env["PYTHONPATH"]


def test_the_transports_lock_is_free_in_a_forked_child() -> None:
    """Regression: the parent's sender held it at fork time, and the child's sender blocked in
    ``send_batch`` forever."""
    setup = "from datacat.config import Config\nfrom datacat.pipe import PipeTransport\n"
    setup += "t = PipeTransport(Config(spool_dir=''))"
    assert lock_free_in_forked_child(setup, "t._lock")
