"""``datacat run -- COMMAND``: real programs run instrumented against a real server."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from autoinstrument_helpers import (
    PYTHON,
    client_env,
    events,
    metrics,
    session,
    sessions_of,
    wait_for,
)
from serverproc import ServerProcess

from datacat import runner

DATACAT = [PYTHON, "-m", "datacat.cli", "run"]

FAILING = """
import logging, sys, requests
logging.getLogger("shop").warning("stock low")
print("out:", sys.stdin.read().strip())
print("err: to stderr", file=sys.stderr)
requests.get(sys.argv[1] + "/health", timeout=10)
raise RuntimeError("boom")
"""

EXITING = """
import sys
import datacat

@datacat.track
def compute():
    pass

compute()
print("args:", sys.argv[1:])
sys.exit(7)
"""


def run(
    code: str, tmp_path: Path, url: str, *options: str, args: tuple[str, ...] = (), stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(code)
    command = [*DATACAT, *options, "--", PYTHON, str(script), *args]
    env = {**os.environ, **client_env(url, tmp_path)}
    return subprocess.run(command, input=stdin, capture_output=True, text=True, env=env, timeout=60)


def only_session(url: str, product: str) -> dict[str, Any]:
    return wait_for(lambda: next(iter(sessions_of(url, product)), None), what=product)


def test_a_crashing_program_is_reported_and_passes_everything_through(
    server_url: str, tmp_path: Path
) -> None:
    product = f"run-{uuid.uuid4().hex[:8]}"
    done = run(
        FAILING, tmp_path, server_url, "--product", product, "--version", "2.1",
        args=(server_url,), stdin="hello\n",
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stdout == "out: hello\n"
    assert done.stderr.startswith("err: to stderr\n")
    assert "RuntimeError: boom" in done.stderr
    sid = only_session(server_url, product)["id"]
    found = wait_for(lambda: (s := only_session(server_url, product))["crashed"] and s)
    assert found["state"]["version"] == "2.1"
    names = {e["name"]: e for e in events(server_url, sid)}
    assert names["log"]["message"] == "stock low"
    assert names["exception"]["exception_type"] == "RuntimeError"
    (timer,) = metrics(server_url, sid, "http.client.duration")
    assert timer["tags"]["status_class"] == "2xx" and timer["count"] == 1


def test_exit_code_and_arguments_pass_through_and_the_session_ends(
    server_url: str, tmp_path: Path
) -> None:
    product = f"run-{uuid.uuid4().hex[:8]}"
    done = run(EXITING, tmp_path, server_url, "--product", product, args=("a", "--b"))
    assert (done.returncode, done.stdout, done.stderr) == (7, "args: ['a', '--b']\n", "")
    found = wait_for(lambda: (s := only_session(server_url, product))["ended_at"] and s)
    assert not found["crashed"]
    assert len(sessions_of(server_url, product)) == 1  # @datacat.track shares the run's session
    assert metrics(server_url, found["id"])[0]["name"].endswith("compute")


def test_daemon_mode_runs_through_the_local_daemon(server_url: str, tmp_path: Path) -> None:
    product = f"run-{uuid.uuid4().hex[:8]}"
    done = run(EXITING, tmp_path, server_url, "--product", product, "--daemon")
    assert done.returncode == 7
    wait_for(lambda: only_session(server_url, product)["ended_at"], what="end via the daemon")


SLEEPING = """
import time
print("ready", flush=True)
time.sleep(60)
"""


def test_daemon_mode_reports_a_frozen_then_killed_program(server_url: str, tmp_path: Path) -> None:
    product = f"run-{uuid.uuid4().hex[:8]}"
    script = tmp_path / "script.py"
    script.write_text(SLEEPING)
    env = {**os.environ, **client_env(server_url, tmp_path)}
    env.update(DATACAT_HEARTBEAT_INTERVAL="0.1", DATACAT_HANG_TIMEOUT="1")
    command = [*DATACAT, "--product", product, "--daemon", "--", PYTHON, str(script)]
    program = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert program.stdout is not None and program.stdout.readline() == "ready\n"
        sid = only_session(server_url, product)["id"]
        wait_for(lambda: session(server_url, sid)["last_heartbeat"], what="heartbeats")
        program.send_signal(signal.SIGSTOP)  # the exec'd program itself: datacat run is gone
        wait_for(lambda: only_session(server_url, product)["hung"], what="hang")
    finally:
        program.kill()
        program.wait(10)
        assert program.stdout is not None
        program.stdout.close()
    wait_for(lambda: only_session(server_url, product)["crashed"], what="crash")


def test_an_existing_sitecustomize_still_runs(server_url: str, tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text("import builtins\nbuiltins.THEIRS = True\n")
    script = tmp_path / "script.py"
    script.write_text("import sys, builtins\nprint(builtins.THEIRS, 'datacat' in sys.modules)\n")
    env = {**os.environ, **client_env(server_url, tmp_path), "PYTHONPATH": str(theirs)}
    done = subprocess.run(
        [*DATACAT, "--", PYTHON, str(script)], capture_output=True, text=True, env=env, timeout=60
    )
    assert (done.returncode, done.stdout) == (0, "True True\n"), done.stderr


def test_a_missing_command_is_reported() -> None:
    done = subprocess.run([*DATACAT, "--", "no-such-program-x"], capture_output=True, text=True)
    assert done.returncode == 127 and "no-such-program-x" in done.stderr
    done = subprocess.run(DATACAT, capture_output=True, text=True)
    assert done.returncode == 2


def test_the_environment_carries_the_options() -> None:
    args = argparse.Namespace(product="p", version="v", url="http://x:1", daemon=True)
    env = runner.environment(args, {"PYTHONPATH": "/theirs"})
    assert env["PYTHONPATH"] == os.pathsep.join([runner.BOOTSTRAP_DIR, "/theirs"])
    options = (env["DATACAT_PRODUCT"], env["DATACAT_VERSION"], env["DATACAT_URL"])
    assert options == ("p", "v", "http://x:1")
    assert env["DATACAT_DAEMON"] == "1" and env[runner.RUN_ENV] == "1"
    assert Path(runner.BOOTSTRAP_DIR, "sitecustomize.py").is_file()


@pytest.mark.parametrize(
    ("given", "command"), [(["--", "a", "--b"], ["a", "--b"]), (["a", "--", "b"], ["a", "--", "b"])]
)
def test_only_a_leading_double_dash_is_dropped(given: list[str], command: list[str]) -> None:
    assert runner.command_of(argparse.Namespace(program=given)) == command


def test_bootstrap_does_nothing_outside_datacat_run() -> None:
    assert runner.bootstrap({}) is None


@pytest.mark.parametrize(
    ("command", "product"),
    [
        (["python3", "-u", "tools/sync_photos.py", "x"], "sync_photos"),
        (["/usr/bin/python3.11", "-m", "http.server"], "http.server"),
        (["python", "-c", "pass"], "python"),
        (["./my-tool", "--flag"], "my-tool"),
        ([], "python"),
    ],
)
def test_the_product_defaults_to_the_program_name(command: list[str], product: str) -> None:
    assert runner.default_product(command) == product
    args = argparse.Namespace(program=["--", *command], product=None)
    assert runner.environment(args, {})["DATACAT_PRODUCT"] == product


CRASH_AT_ONCE = """
import sys
print("raising", file=sys.stderr, flush=True)
raise ValueError("fatal")
"""


@contextlib.contextmanager
def stalled(server: ServerProcess) -> Iterator[str]:
    """A real server stopped with SIGSTOP: connections queue in its backlog, nothing answers."""
    assert server.proc is not None
    os.killpg(server.proc.pid, signal.SIGSTOP)
    try:
        yield server.url
    finally:
        os.killpg(server.proc.pid, signal.SIGCONT)


def test_a_crash_against_a_stalled_server_takes_one_exit_deadline(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    exit_timeout = 3.0
    script = tmp_path / "script.py"
    script.write_text(CRASH_AT_ONCE)
    with stalled(server_factory()) as url:
        env = {**os.environ, **client_env(url, tmp_path, DATACAT_EXIT_TIMEOUT=str(exit_timeout))}
        program = subprocess.Popen(
            [*DATACAT, "--", PYTHON, str(script)], stderr=subprocess.PIPE, text=True, env=env
        )
        assert program.stderr is not None
        with program, program.stderr:
            assert program.stderr.readline() == "raising\n"
            raised = time.monotonic()
            lines = iter(program.stderr.readline, "")
            assert any(line == "ValueError: fatal\n" for line in lines)
            shown = time.monotonic() - raised
            code = program.wait(30)
            exited = time.monotonic() - raised
    assert code == 1
    assert shown < exit_timeout / 2  # the traceback does not wait for the network
    assert exited < exit_timeout + 2.5  # one exit deadline (a second flush took 2x before)


TRACKED_RAISE = """
import datacat

@datacat.track
def compute():
    raise KeyError("missing")

compute()
"""


def test_an_exception_seen_by_track_then_uncaught_is_recorded_once(
    server_url: str, tmp_path: Path
) -> None:
    product = f"run-{uuid.uuid4().hex[:8]}"
    done = run(TRACKED_RAISE, tmp_path, server_url, "--product", product)
    assert done.returncode == 1 and "KeyError: 'missing'" in done.stderr
    found = wait_for(lambda: (s := only_session(server_url, product))["crashed"] and s)
    (event,) = [e for e in events(server_url, found["id"]) if e.get("exception_type")]
    assert event["exception_type"] == "KeyError"
