"""``@datacat.track(span=True)`` / ``DATACAT_OTEL_SPANS=1``: OpenTelemetry spans named like the
metric, against a real SDK tracer provider and a real server.

Each case runs in a subprocess, because OpenTelemetry's global tracer provider can be set only
once per process and would leak into every later test of the worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from track_helpers import exceptions, fetch

SCRIPT = """
import asyncio, json, sys
import datacat

if sys.argv[2] == "sdk":
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

@datacat.track("spans.fails", span=True)
def fails():
    raise ValueError("inside a span")

@datacat.track("spans.coroutine", span=True)
async def coroutine():
    await asyncio.sleep(0)

@datacat.track("spans.generator", span=True)
def generator():
    yield 1
    yield 2

@datacat.track("spans.by_environment")
def by_environment():
    return 1

@datacat.track("spans.off", span=False)
def off():
    return 1

with datacat.session(sys.argv[1], product="otel-span-tests", spool_dir="") as session:
    try:
        fails()
    except ValueError:
        pass
    asyncio.run(coroutine())
    list(generator())
    by_environment()
    off()
spans = []
if sys.argv[2] == "sdk":
    for span in exporter.get_finished_spans():
        context = span.get_span_context()
        spans.append({"name": span.name, "status": span.status.status_code.name,
                      "trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"})
print(json.dumps({"session": session.id, "spans": spans,
                  "otel_imported": "opentelemetry.trace" in sys.modules}))
"""


def run(server_url: str, mode: str, **env: str) -> dict[str, Any]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DATACAT_")}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, server_url, mode],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_spans_named_like_the_metric_carry_errors_and_exception_events(server_url: str) -> None:
    result = run(server_url, "sdk", DATACAT_OTEL_SPANS="1")
    spans = {span["name"]: span for span in result["spans"]}
    assert set(spans) == {
        "spans.fails",
        "spans.coroutine",
        "spans.generator",
        "spans.by_environment",
    }
    assert spans["spans.fails"]["status"] == "ERROR"
    assert spans["spans.coroutine"]["status"] == "UNSET"
    [event] = exceptions(fetch(server_url, result["session"], "events"))
    assert (event["trace_id"], event["span_id"]) == (
        spans["spans.fails"]["trace_id"],
        spans["spans.fails"]["span_id"],
    )


def test_spans_are_opened_only_on_request(server_url: str) -> None:
    spans = run(server_url, "sdk")["spans"]
    assert sorted(span["name"] for span in spans) == [
        "spans.coroutine",
        "spans.fails",
        "spans.generator",
    ]


def test_without_an_sdk_provider_spans_cost_nothing_and_import_nothing(server_url: str) -> None:
    result = run(server_url, "none", DATACAT_OTEL_SPANS="1")
    assert result["otel_imported"] is False
    metrics = fetch(server_url, result["session"], "metrics")
    assert {m["name"] for m in metrics} >= {"spans.fails", "spans.coroutine", "spans.off"}
