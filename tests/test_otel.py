"""``datacat.otel.span_ids``: ids of the active OpenTelemetry span, None without one."""

from __future__ import annotations

import subprocess
import sys

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from datacat.otel import span_ids


def test_no_active_span_gives_none() -> None:
    assert span_ids() is None


def test_active_span_ids_are_hex() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        ids = span_ids()
    context = span.get_span_context()
    assert ids == (f"{context.trace_id:032x}", f"{context.span_id:016x}")
    assert span_ids() is None
    assert trace.get_current_span().get_span_context().is_valid is False


def test_opentelemetry_is_not_imported_by_span_ids() -> None:
    code = (
        "import sys; from datacat.otel import span_ids; "
        "assert span_ids() is None; assert 'opentelemetry' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
