"""The otel target: finished spans become timers, span exceptions become events."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from autoinstrument_helpers import (
    client_env,
    events,
    instrumented,
    metrics,
    run_python,
    wait_for,
)
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from test_otel import instrumentation_enabled

from datacat import autoinstrument
from datacat.otel import suppressed


@pytest.fixture
def dc_session(server_url: str, tmp_path: Path) -> Iterator[Any]:
    with instrumented(server_url, tmp_path, ["otel"]) as s:
        yield s


def test_spans_become_timers_and_exceptions_events(dc_session: Any, server_url: str) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("checkout"):
        pass
    with pytest.raises(KeyError), tracer.start_as_current_span("pay") as span:
        raise KeyError("card")
    assert dc_session.flush(10)
    timers = {m["tags"]["span"]: m for m in metrics(server_url, dc_session.id)}
    assert timers["checkout"]["tags"]["status"] == "unset"
    assert timers["pay"]["tags"]["status"] == "error"
    assert timers["pay"]["name"] == "otel.span.duration" and timers["pay"]["count"] == 1
    (event,) = events(server_url, dc_session.id, "span_exception")
    assert event["exception_type"] == "KeyError"
    assert event["trace_id"] == f"{span.get_span_context().trace_id:032x}"
    assert event["span_id"] == f"{span.get_span_context().span_id:016x}"


def test_uninstrument_detaches_the_processor(dc_session: Any) -> None:
    provider = TracerProvider()
    processor = autoinstrument.instrumentor("otel").processor  # type: ignore[attr-defined]
    assert processor in provider._active_span_processor._span_processors
    autoinstrument.uninstrument()
    assert processor not in provider._active_span_processor._span_processors


GLOBAL_PROVIDER = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
import datacat, datacat.autoinstrument
trace.set_tracer_provider(TracerProvider())  # set up before DataCat, as an app would
s = datacat.autoinstrument.instrument(["otel"], session=datacat.create_session())
with trace.get_tracer("app").start_as_current_span("startup"):
    pass
s.end()
print(s.id)
"""


def test_the_global_provider_set_before_instrumenting_is_covered(
    server_url: str, tmp_path: Path
) -> None:
    done = run_python(GLOBAL_PROVIDER, tmp_path, client_env(server_url, tmp_path))
    assert done.returncode == 0, done.stderr
    sid = done.stdout.strip()
    (metric,) = wait_for(lambda: metrics(server_url, sid, "otel.span.duration"), what="timer")
    assert metric["tags"]["span"] == "startup"


class Recorder(SpanProcessor):
    """Every span the SDK finishes, as an exporter would see them."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.names.append(span.name)


def emulate_http_instrumentation(monkeypatch: pytest.MonkeyPatch, tracer: Any) -> None:
    """What opentelemetry-instrumentation-requests/-urllib3 do (not installed here): a span
    around each HTTP request, unless the context suppresses instrumentation."""
    original = http.client.HTTPConnection.request

    def request(self: http.client.HTTPConnection, method: str, *args: Any, **kw: Any) -> Any:
        if not instrumentation_enabled():
            return original(self, method, *args, **kw)
        with tracer.start_as_current_span(f"{method} {self.host}"):
            return original(self, method, *args, **kw)

    monkeypatch.setattr(http.client.HTTPConnection, "request", request)


def test_datacats_own_sends_make_no_spans_and_no_loop(
    dc_session: Any, server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider, recorder = TracerProvider(), Recorder()
    provider.add_span_processor(recorder)
    emulate_http_instrumentation(monkeypatch, provider.get_tracer("http"))
    with provider.get_tracer("app").start_as_current_span("user-work"):
        dc_session.log_event("work-done")
    for _ in range(3):  # a loop would add a span and a metric per send
        assert dc_session.flush(10)
    monkeypatch.undo()  # the test's own reads below are not under test
    assert recorder.names == ["user-work"]
    assert [m["tags"]["span"] for m in metrics(server_url, dc_session.id)] == ["user-work"]


def test_spans_ended_under_suppression_are_ignored(dc_session: Any, server_url: str) -> None:
    tracer = TracerProvider().get_tracer("ignores-the-keys")
    with suppressed(), tracer.start_as_current_span("datacat-send"):
        pass
    with tracer.start_as_current_span("user-work"):
        pass
    assert dc_session.flush(10)
    assert [m["tags"]["span"] for m in metrics(server_url, dc_session.id)] == ["user-work"]
