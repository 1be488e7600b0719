"""pytest entry point ``datacat``: options, fixtures, marker; the recorder registers when enabled.

This module owns what pytest loads for every run: the ``datacat`` option group with its ini and
environment twins (precedence ini < environment < command line), the ``datacat`` marker, and the
``datacat_session`` / ``record_datacat`` fixtures. Importing it imports nothing of DataCat, starts
no thread and patches nothing; only when a URL is set (and ``--no-datacat`` is not) does
``pytest_configure`` import :mod:`pytest_datacat.recorder` and register its plugin objects.

It imports them with the ordinary loader (``plain_imports``), not pytest's assertion rewriter:
pytest marks every module of a plugin's distribution for rewriting (``datacat`` too, once
installed from a wheel), and its loader reads each cached module about three times slower
(``marshal.load`` from the file, a hash of the source) for modules with no assertion to rewrite.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from importlib.machinery import ModuleSpec, PathFinder
from types import ModuleType
from typing import Any, NamedTuple

import pytest

#: Key under ``item.stash`` where ``record_datacat`` and the marker collect a test's metadata.
RECORDED = pytest.StashKey[dict[str, Any]]()
#: Key under ``config.stash`` holding the run's session (on the controller or single process).
SESSION = pytest.StashKey[Any]()
#: Key under ``config.stash`` of an xdist worker: attaches to the run's session on first use.
WORKER = pytest.StashKey[Any]()
#: The ``workeroutput`` key of how many items a worker's session did not deliver.
UNDELIVERED = "datacat_undelivered"

_TRUE = ("1", "true", "yes", "on")

# (option suffix, environment twin, metavar, help)
_OPTIONS = (
    ("url", "DATACAT_URL", "URL", "record the run on the DataCat server at URL"),
    ("product", "DATACAT_PRODUCT", "NAME", "product name (default: the rootdir's project name)"),
    ("version", "DATACAT_VERSION", "VERSION", "product version (default: the project's version)"),
    ("api-key", "DATACAT_API_KEY", "KEY", "API key for the server"),
    ("flush-timeout", "DATACAT_EXIT_TIMEOUT", "SECONDS", "deadline to deliver data at the end"),
)


class Settings(NamedTuple):
    """The plugin's options after precedence (ini < environment < command line). A named
    tuple, not a dataclass: this module is imported by every pytest run where the plugin is
    installed, and making a dataclass costs such a run ~1.5 ms."""

    url: str | None = None
    product: str | None = None
    version: str | None = None
    api_key: str | None = None
    flush_timeout: float = 2.0
    disabled: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.url) and not self.disabled


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("datacat", "record the test run as one DataCat session")
    for suffix, env, metavar, text in _OPTIONS:
        dest = "datacat_" + suffix.replace("-", "_")
        help_text = f"{text} (ini {dest}, env {env})"
        group.addoption(f"--datacat-{suffix}", dest=dest, metavar=metavar, help=help_text)
        parser.addini(dest, help_text, default="")
    group.addoption(
        "--no-datacat",
        dest="datacat_disabled",
        action="store_true",
        default=None,
        help="do not record this run (ini datacat_disabled, env DATACAT_DISABLED)",
    )
    parser.addini("datacat_disabled", "do not record runs (true/false)", default="")


def resolve(config: pytest.Config, environ: dict[str, str] | None = None) -> Settings:
    """Each option's value from the command line, else the environment, else the ini file."""
    env = os.environ if environ is None else environ
    values: dict[str, str | None] = {}
    for suffix, env_name, _, _ in (*_OPTIONS, ("disabled", "DATACAT_DISABLED", "", "")):
        key = suffix.replace("-", "_")
        cli = config.getoption("datacat_" + key, None)
        values[key] = _first(cli, env.get(env_name), config.getini("datacat_" + key))
    return Settings(
        url=values["url"],
        product=values["product"],
        version=values["version"],
        api_key=values["api_key"],
        flush_timeout=_seconds(values["flush_timeout"], 2.0),
        disabled=str(values["disabled"] or "").strip().lower() in _TRUE,
    )


def _first(*candidates: object) -> str | None:
    for value in candidates:
        if value not in (None, ""):
            return str(value)
    return None


def _seconds(value: str | None, default: float) -> float:
    try:
        return max(0.1, float(value)) if value else default
    except ValueError:
        return default


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "datacat(*labels, **data): attach labels and data to this test's DataCat event"
    )
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None:
        if workerinput.get("datacat_session_id"):
            with plain_imports():
                from pytest_datacat import relay  # light: nothing of DataCat until the fixture

                relay.register_worker(config, workerinput)
        return
    settings = resolve(config)
    if settings.enabled:
        with plain_imports():  # the session's modules too, imported on its creation
            from pytest_datacat import recorder

            recorder.register(config, settings)


#: The packages whose modules ``plain_imports`` loads itself.
_OURS = ("datacat", "pytest_datacat")


class _PlainFinder:
    """Finds DataCat's own modules with the ordinary path finder, ahead of pytest's assertion
    rewriter (a meta path finder; the modules found are cached and loaded as any other)."""

    @staticmethod
    def find_spec(
        name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name.partition(".")[0] not in _OURS:
            return None
        return PathFinder.find_spec(name, path, target)  # None: left to the next finder


@contextlib.contextmanager
def plain_imports() -> Iterator[None]:
    """Our submodules imported meanwhile load without pytest's assertion rewriting (they
    hold no assertion for it; see the module docstring). Only while our plugin imports them:
    every other module, a test module first of all, is left to pytest."""
    finder = _PlainFinder()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(finder)


@pytest.fixture(scope="session")
def datacat_session(pytestconfig: pytest.Config) -> Any:
    """The run's DataCat session (a no-op one when the plugin is off); session-scoped, so
    session fixtures may use it too."""
    session = pytestconfig.stash.get(SESSION, None)
    if session is None:
        worker = pytestconfig.stash.get(WORKER, None)
        if worker is not None:
            return worker.get()
        import datacat

        session = pytestconfig.stash[SESSION] = datacat.NoopSession()
    return session


@pytest.fixture
def record_datacat(request: pytest.FixtureRequest) -> Callable[[str, Any], None]:
    """``record_datacat(key, value)`` attaches ``key: value`` to this test's DataCat event."""
    recorded = request.node.stash.setdefault(RECORDED, {})

    def record(key: str, value: Any) -> None:
        recorded[key] = value

    return record
