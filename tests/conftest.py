"""Shared fixtures: real DataCat servers on free loopback ports, over SQLite and PostgreSQL.

- ``server_url``: one server per test session (per xdist worker) on a temporary SQLite file.
- ``server_factory(**kw)``: a fresh ``ServerProcess`` per call (``tests/serverproc.py``), all
  stopped at teardown; ``db`` defaults to a new SQLite file.
- ``storage_url``: parametrised over ``sqlite`` and ``postgresql``, one fresh database per test
  module. PostgreSQL comes from ``DATACAT_TEST_POSTGRES_URL`` (``scripts/with-postgres.sh``);
  without it the PostgreSQL cases skip locally and FAIL when ``CI`` is set.
- ``api_server``: a server per module on ``storage_url`` (the API suite runs on both backends).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from serverproc import ServerProcess

POSTGRES_ENV = "DATACAT_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of one shared server (SQLite) for tests that only need *a* server."""
    directory = tmp_path_factory.mktemp("server")
    server = ServerProcess(f"sqlite:///{directory}/datacat.db", log_dir=directory).start()
    yield server.url
    server.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """``server_factory(**kw)`` starts a ``ServerProcess``; every one is stopped afterwards."""
    started: list[ServerProcess] = []

    def factory(**kw: Any) -> ServerProcess:
        kw.setdefault("db", f"sqlite:///{tmp_path}/datacat-{len(started)}.db")
        kw.setdefault("log_dir", tmp_path)
        server = ServerProcess(**kw)
        started.append(server)
        return server.start()

    yield factory
    for server in started:
        server.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def storage_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A fresh, empty database URL of each backend, one per test module."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite')}/datacat.db"
        return
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        if os.environ.get("CI"):
            pytest.fail(f"{POSTGRES_ENV} is not set in CI: PostgreSQL tests must not be skipped")
        pytest.skip(f"{POSTGRES_ENV} is not set (run under scripts/with-postgres.sh)")
    with postgres_database(base) as url:
        yield url


@contextmanager
def postgres_database(base_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on the server of ``base_url``; dropped afterwards."""
    import psycopg

    name = f"datacat_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield base_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def api_server(
    storage_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server on ``storage_url`` shared by one test module (2 workers, like production)."""
    log_dir = tmp_path_factory.mktemp("api-server")
    server = ServerProcess(storage_url, workers=2, heartbeat_timeout=10.0, log_dir=log_dir)
    yield server.start()
    server.stop()


@pytest.fixture(scope="module")
def api_url(api_server: ServerProcess) -> str:
    return api_server.url


@pytest.fixture(scope="session", autouse=True)
def private_spool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every test (and every program a test starts) spools into a temporary directory, never
    into the user's real ``~/.cache/datacat/spool``; tests may still pass their own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DATACAT_SPOOL_DIR", str(tmp_path_factory.mktemp("spool")))
        yield
