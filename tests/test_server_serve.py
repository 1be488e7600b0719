"""``datacat server``: option precedence, the URL it prints, clean shutdown on signals."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from datacat_server import serve
from serverproc import Api, free_port

from datacat.cli import build_parser
from datacat.errors import ConfigurationError


def parsed(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["server", *argv])


def test_defaults() -> None:
    opts = serve.resolve(parsed(), environ={})
    assert (opts["host"], opts["port"], opts["db"]) == ("127.0.0.1", 9090, "sqlite:///datacat.db")
    assert (opts["heartbeat_timeout"], opts["api_key"]) == (60.0, None)
    assert opts["checkpoint_interval"] == 0.1


def test_checkpoint_interval_from_argument_or_environment() -> None:
    env = {"DATACAT_SERVER_CHECKPOINT_INTERVAL": "0"}
    assert serve.resolve(parsed(), environ=env)["checkpoint_interval"] == 0.0
    argument = parsed("--checkpoint-interval", "2.5")
    assert serve.resolve(argument, environ=env)["checkpoint_interval"] == 2.5


def test_arguments_beat_environment_beat_defaults() -> None:
    env = {"DATACAT_SERVER_PORT": "7000", "DATACAT_SERVER_WORKERS": "3", "DATACAT_SERVER_HOST": ""}
    opts = serve.resolve(parsed("--port", "8000", "--heartbeat-timeout", "5"), environ=env)
    assert (opts["port"], opts["workers"], opts["heartbeat_timeout"]) == (8000, 3, 5.0)
    assert opts["host"] == "127.0.0.1"  # an empty variable counts as unset


def test_bad_environment_value_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="port"):
        serve.resolve(parsed(), environ={"DATACAT_SERVER_PORT": "ninety"})


def run_cli(*argv: str, tmp_path: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "datacat.cli", "server", *argv]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path
    )


def test_bad_option_exits_2_with_a_message(tmp_path: Path) -> None:
    env_run = subprocess.run(
        [sys.executable, "-m", "datacat.cli", "server"],
        env={"DATACAT_SERVER_HEARTBEAT_TIMEOUT": "soon", "PATH": "/usr/bin"},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert env_run.returncode == 2 and "heartbeat_timeout" in env_run.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_prints_its_url_and_exits_cleanly_on_signal(tmp_path: Path, signum: int) -> None:
    port = free_port()
    proc = run_cli("--port", str(port), "--workers", "1", tmp_path=tmp_path)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == f"DataCat server on http://127.0.0.1:{port}"
    assert Api(f"http://127.0.0.1:{port}").create()["product"] == "ApiTest"
    assert (tmp_path / "datacat.db").exists()  # the default database, in the working directory
    proc.send_signal(signum)
    assert proc.wait(timeout=30) == 0
