"""``datacat.otel``: ids of the active OpenTelemetry span (None without one), and
``suppressed()``, which hides DataCat's own work from OpenTelemetry's instrumentations."""

from __future__ import annotations

import subprocess
import sys

from opentelemetry import context, trace
from opentelemetry.sdk.trace import TracerProvider

from datacat.otel import is_suppressed, span_ids, suppressed


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


def instrumentation_enabled() -> bool:
    """What OpenTelemetry's HTTP instrumentations ask before they open a span."""
    keys = (context._SUPPRESS_INSTRUMENTATION_KEY, context._SUPPRESS_HTTP_INSTRUMENTATION_KEY)
    return not any(context.get_value(key) for key in (*keys, "suppress_instrumentation"))


def test_suppressed_turns_instrumentation_off_inside_only() -> None:
    assert instrumentation_enabled() and not is_suppressed()
    with suppressed():
        assert not instrumentation_enabled() and is_suppressed()
    assert instrumentation_enabled() and not is_suppressed()


def test_suppressed_without_opentelemetry_imports_nothing() -> None:
    code = (
        "import sys; from datacat.otel import suppressed, is_suppressed\n"
        "with suppressed(): assert not is_suppressed()\n"
        "assert 'opentelemetry' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
