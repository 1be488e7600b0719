"""The only module that imports OpenTelemetry.

``span_ids()`` gives the hex trace and span ids of the active span, so events can be joined to
traces. It never imports OpenTelemetry itself: when the application has not imported
``opentelemetry.trace``, there is no active span and the call costs one dictionary lookup.
"""

from __future__ import annotations

import sys


def span_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` in hex of the current valid span, or None."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    try:
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return None
        return f"{context.trace_id:032x}", f"{context.span_id:016x}"
    except Exception:  # a broken or exotic OpenTelemetry must not reach the caller
        return None
