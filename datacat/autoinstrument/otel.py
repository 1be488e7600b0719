"""OpenTelemetry spans feed DataCat: a span processor added to the SDK's tracer providers.

When ``opentelemetry.sdk.trace`` is imported, a ``SpanProcessor`` is added to the global SDK
tracer provider (if one is set already) and to every ``TracerProvider`` created afterwards. Each
finished span feeds the timer ``otel.span.duration`` tagged with the span's ``span`` name,
``kind`` and ``status``; each exception recorded on a span becomes an exception event carrying
the span's ``trace_id`` and ``span_id``. Spans that end while instrumentation is suppressed
(DataCat's own sends, see ``datacat.otel.suppressed``) are ignored. The processor is duck-typed,
so this module never imports OpenTelemetry (only ``datacat.otel`` does); the SDK module arrives
through the import hook.
"""

from __future__ import annotations

import sys
import weakref
from types import ModuleType
from typing import Any

from datacat import otel
from datacat.autoinstrument._base import Instrumentor, guarded, logged_errors

METRIC = "otel.span.duration"
EXCEPTION_EVENT = "span_exception"


class DatacatSpanProcessor:
    """Turns finished spans into timer observations and span exceptions into events."""

    def __init__(self, owner: OtelInstrumentor) -> None:
        self._owner = owner

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def _on_ending(self, span: Any) -> None:
        pass

    def on_end(self, span: Any) -> None:
        # A span ended under suppression is DataCat's own send (or the SDK exporter's) traced
        # by an instrumentation that ignores the keys: recording it would feed a loop.
        if self._owner.active and self._owner.session is not None and not otel.is_suppressed():
            guarded(self._record, span)

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def _record(self, span: Any) -> None:
        session = self._owner.session
        seconds = max(0, (span.end_time or 0) - (span.start_time or 0)) / 1e9
        status = getattr(getattr(span, "status", None), "status_code", None)
        tags = {
            "span": str(span.name),
            "kind": str(getattr(span.kind, "name", span.kind)).lower(),
            "status": str(getattr(status, "name", status)).lower(),
        }
        session.observe(METRIC, seconds, type="timer", tags=tags)
        for event in span.events or ():
            if event.name == "exception":
                session.log_event(EXCEPTION_EVENT, **_exception_fields(span, event))


def _exception_fields(span: Any, event: Any) -> dict[str, Any]:
    attrs = dict(event.attributes or {})
    context = span.get_span_context()
    return {
        "level": "error",
        "category": "otel",
        "data": {"span": str(span.name)},
        "exception_type": str(attrs.get("exception.type", "")) or None,
        "exception_msg": str(attrs.get("exception.message", "")),
        "stacktrace": str(attrs.get("exception.stacktrace", "")).splitlines(),
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
    }


class OtelInstrumentor(Instrumentor):
    """Adds ``DatacatSpanProcessor`` to SDK tracer providers while instrumented."""

    module = "opentelemetry.sdk.trace"

    def __init__(self) -> None:
        super().__init__()
        self.processor = DatacatSpanProcessor(self)
        self._providers: weakref.WeakSet[Any] = weakref.WeakSet()

    def _patch(self, module: ModuleType) -> None:
        self._wrap(module.TracerProvider, "__init__", self._provider_init)
        self._on_undo(self._detach_all)
        api = sys.modules.get("opentelemetry.trace")
        current = api.get_tracer_provider() if api is not None else None
        if isinstance(current, module.TracerProvider):
            self._attach(current)

    def _provider_init(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> None:
        wrapped(*args, **kwargs)
        with logged_errors("attach span processor"):
            self._attach(instance)

    def _attach(self, provider: Any) -> None:
        if provider not in self._providers:
            provider.add_span_processor(self.processor)
            self._providers.add(provider)

    def _detach_all(self) -> None:
        for provider in list(self._providers):
            # the SDK cannot remove a processor: filter its tuple (the processor is inert anyway)
            multi = provider._active_span_processor
            with multi._lock:
                kept = tuple(p for p in multi._span_processors if p is not self.processor)
                multi._span_processors = kept
        self._providers = weakref.WeakSet()


instrumentor = OtelInstrumentor()
instrument = instrumentor.instrument
uninstrument = instrumentor.uninstrument
