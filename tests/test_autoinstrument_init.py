"""``datacat.autoinstrument``: every target on and off again, restoring what it patched."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flask
import pytest
import requests
from autoinstrument_helpers import client_env, new_session, run_python, session, wait_for
from opentelemetry.sdk.trace import TracerProvider

from datacat import autoinstrument


@pytest.fixture
def dc_session(server_url: str, tmp_path: Path) -> Iterator[Any]:
    s = new_session(server_url, tmp_path)
    yield s
    autoinstrument.uninstrument()
    s.end()


def patched_objects() -> dict[str, Any]:
    """Every object an instrumentor replaces, read where it lives."""
    return {
        "sys.excepthook": sys.excepthook,
        "threading.excepthook": threading.excepthook,
        "asyncio": vars(asyncio.base_events.BaseEventLoop)["call_exception_handler"],
        "requests": vars(requests.sessions.Session)["send"],
        "flask.dispatch": vars(flask.Flask)["full_dispatch_request"],
        "flask.exception": vars(flask.Flask)["handle_exception"],
        "otel": vars(TracerProvider)["__init__"],
    }


def test_uninstrument_restores_every_patched_object(dc_session: Any) -> None:
    before = patched_objects()
    handlers = list(logging.getLogger().handlers)
    autoinstrument.instrument(session=dc_session)
    autoinstrument.instrument(session=dc_session)  # twice: no double wrapping
    during = patched_objects()
    assert all(during[k] is not before[k] for k in before)
    assert all(getattr(during[k], "__wrapped__", None) is before[k] for k in before)
    assert len(logging.getLogger().handlers) == len(handlers) + 1
    autoinstrument.uninstrument()
    autoinstrument.uninstrument()  # twice: nothing left to undo
    after = patched_objects()
    assert all(after[k] is before[k] for k in before)
    assert logging.getLogger().handlers == handlers


def test_reinstrumenting_switches_sessions(server_url: str, tmp_path: Path) -> None:
    first, second = new_session(server_url, tmp_path), new_session(server_url, tmp_path)
    try:
        autoinstrument.instrument(["logging"], session=first)
        assert autoinstrument.instrument(["logging"], session=second) is second
        assert autoinstrument.instrumentor("logging").session is second
    finally:
        autoinstrument.uninstrument()
        first.end()
        second.end()


def test_unknown_targets_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown instrumentation target"):
        autoinstrument.instrument(["nope"], session=object())


LAZY = """
import sys
from datacat import autoinstrument
autoinstrument.instrument(["flask", "otel"], session=object())
assert "flask" not in sys.modules, "patched eagerly"
assert "opentelemetry.sdk.trace" not in sys.modules, "patched eagerly"
import flask
assert hasattr(flask.Flask.full_dispatch_request, "__wrapped__"), "not patched on import"
autoinstrument.uninstrument()
assert not hasattr(flask.Flask.full_dispatch_request, "__wrapped__")
from opentelemetry.sdk.trace import TracerProvider
assert not hasattr(TracerProvider.__init__, "__wrapped__"), "patched after uninstrument"
print("lazy ok")
"""


def test_targets_patch_only_when_their_library_is_imported(tmp_path: Path) -> None:
    done = run_python(LAZY, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "lazy ok" in done.stdout


WITHOUT_SESSION = """
import datacat.autoinstrument as ai
s = ai.instrument(["logging"])
print(s.id)
s.end()
"""


def test_without_a_session_one_is_made_from_the_environment(
    server_url: str, tmp_path: Path
) -> None:
    done = run_python(WITHOUT_SESSION, tmp_path, client_env(server_url, tmp_path))
    assert done.returncode == 0, done.stderr
    sid = done.stdout.strip()
    assert wait_for(lambda: session(server_url, sid))["ended_at"]
