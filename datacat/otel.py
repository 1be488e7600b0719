"""The only module that imports OpenTelemetry.

``span_ids()`` gives the hex trace and span ids of the active span, so events can be joined to
traces. It never imports OpenTelemetry itself: when the application has not imported
``opentelemetry.trace``, there is no active span and the call costs one dictionary lookup.
``span(name)`` opens the spans ``@datacat.track`` creates on request, from the application's
SDK tracer provider; without one it is a null context. ``suppressed()`` wraps DataCat's own
sends: OpenTelemetry's instrumentations record no span for them (else, with the ``otel``
auto-instrumentation target, each batch POST would become a span, a metric, another POST, ...).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from typing import Any, cast


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


# -- spans opened by @datacat.track (span=True or DATACAT_OTEL_SPANS=1) ----------------------

_TRUE = ("1", "true", "yes", "on")
_tracer: tuple[Any, Any] | None = None  # (provider, tracer): one tracer per provider


def spans_requested() -> bool:
    """Whether ``DATACAT_OTEL_SPANS`` asks ``@track`` to open spans by default."""
    return os.environ.get("DATACAT_OTEL_SPANS", "").strip().lower() in _TRUE


def span(name: str, *, current: bool = True) -> AbstractContextManager[Any]:
    """A span named ``name`` from the global tracer provider, ended when the block exits and
    marked as errored by an escaping exception; a null context when no SDK tracer provider is
    configured. ``current=False`` does not make it the active span (for generators, whose
    yields would otherwise leak it into the consumer's context)."""
    try:
        tracer = _sdk_tracer()
        if tracer is None:
            return nullcontext()
        if current:
            return cast(AbstractContextManager[Any], tracer.start_as_current_span(name))
        return _ended_on_exit(tracer.start_span(name))
    except Exception:  # a broken or exotic OpenTelemetry must not reach the caller
        return nullcontext()


@contextmanager
def _ended_on_exit(opened: Any) -> Iterator[Any]:
    """Like ``use_span(end_on_exit=True)`` without making the span current; an early close
    (GeneratorExit) is not an error."""
    try:
        yield opened
    except Exception as exc:
        trace = sys.modules["opentelemetry.trace"]
        opened.record_exception(exc)
        opened.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        opened.end()


def _sdk_tracer() -> Any:
    """The tracer of the global provider when an SDK (not the API's no-op) one is set."""
    global _tracer
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    if _tracer is None or _tracer[0] is not provider:
        _tracer = (provider, provider.get_tracer("datacat"))
    return _tracer[1]


# -- DataCat's own traffic is not OpenTelemetry's to trace ----------------------------------

# The context keys instrumentations check (``opentelemetry.instrumentation.utils``): the
# general one, the HTTP one (newer APIs), and the plain string older instrumentations read.
_SUPPRESS_KEYS = ("_SUPPRESS_INSTRUMENTATION_KEY", "_SUPPRESS_HTTP_INSTRUMENTATION_KEY")
_LEGACY_KEY = "suppress_instrumentation"


@contextmanager
def suppressed() -> Iterator[None]:
    """Within this block OpenTelemetry instrumentations trace nothing (they honour the
    suppression keys of the context). Free when OpenTelemetry is not imported."""
    context: Any = sys.modules.get("opentelemetry.context")
    token = _suppress(context)
    try:
        yield
    finally:
        if token is not None:
            with suppress(Exception):  # OpenTelemetry logs a failed detach itself
                context.detach(token)


def _suppress(context: Any) -> Any:
    if context is None:
        return None
    try:
        values = context.set_value(_LEGACY_KEY, True)
        for name in _SUPPRESS_KEYS:
            if hasattr(context, name):
                values = context.set_value(getattr(context, name), True, values)
        return context.attach(values)
    except Exception:  # a broken or exotic OpenTelemetry must not stop DataCat's sends
        return None


def is_suppressed() -> bool:
    """Whether the current OpenTelemetry context suppresses instrumentation (DataCat's sends,
    or the SDK's own exporters)."""
    context = sys.modules.get("opentelemetry.context")
    if context is None:
        return False
    try:
        key = getattr(context, _SUPPRESS_KEYS[0], _LEGACY_KEY)
        return bool(context.get_value(key) or context.get_value(_LEGACY_KEY))
    except Exception:
        return False
