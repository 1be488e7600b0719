"""``Session``: the user-facing verbs, and ``create_session``.

Owns what runs on the caller's thread. Every verb builds a small tuple and hands it to the
worker's queue (``Worker.put``); nothing here waits for the network, and nothing raises into the
caller except with ``blocking=True``, where each verb is sent at once and errors are raised.
``NoopSession`` has the same interface and does nothing (``DATACAT_DISABLED=1``, or unusable
configuration). Values given to a verb are copied shallowly (state updates deeply), so mutating a
dict after logging it does not change what was logged at its first level.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from datacat import heartbeat as heartbeat_module
from datacat import otel
from datacat import rows as rows_module
from datacat._asyncgen import wrap_async_generator_function
from datacat._internal import log_once, logger, snapshot
from datacat.batching import OBSERVE, ROWS, Batcher, Item, finite_number, new_id
from datacat.config import Config, resolve
from datacat.errors import ConfigurationError, DatacatError, ValidationError
from datacat.limits import DEFAULT_BUCKETS
from datacat.transport import HttpTransport
from datacat.worker import Worker, get_worker

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")
_OTEL_TRACE = "opentelemetry.trace"
_modules = sys.modules
_now = time.time
JSONDict = dict[str, Any]


def create_session(
    url: str | None = None, product: str | None = None, version: str | None = None, **options: Any
) -> Session:
    """Start a session; it is created on the server asynchronously (the id is made here)."""
    return _make(Session, None, url=url, product=product, version=version, **options)


def attach_session(session_id: str, url: str | None = None, **options: Any) -> Session:
    """A handle on a session that exists already (made by another process): it sends to
    ``session_id`` but never creates the session, and neither ``end()`` nor the exit hook
    ends it (its creator does); ``end()`` only flushes. pytest-xdist workers use it."""
    return _make(AttachedSession, str(session_id), url=url, **options)


def _make(kind: type[Session], session_id: str | None, **options: Any) -> Session:
    try:
        config = resolve(**options)
    except ConfigurationError:
        if options.get("blocking"):
            raise
        logger.exception("datacat: unusable configuration; this session records nothing")
        return NoopSession()
    if config.disabled:
        return NoopSession(config)
    if config.blocking:
        transport = HttpTransport(config.url, config.api_key, config.timeout)
        return kind(config, transport=transport, session_id=session_id)
    try:
        return kind(config, worker=get_worker(config), session_id=session_id)
    except Exception:  # never break the host: a session that records nothing instead
        logger.exception("datacat: cannot start a session; this one records nothing")
        return NoopSession(config)


@functools.cache
def machine_id() -> str:
    """A stable id of this machine: a hash of its primary MAC address."""
    return hashlib.sha256(f"{uuid.getnode():012x}".encode()).hexdigest()[:32]


class Timer:
    """``session.timer(name)``: a context manager and decorator logging a timer metric.
    ``count`` may be bumped inside the block (iterations done)."""

    def __init__(
        self, session: Session | NoopSession, name: str, tags: Mapping[str, str] | None
    ) -> None:
        self._session = session
        self.name = name
        self.tags = tags
        self.count: int | None = None
        self.elapsed = 0.0
        self._start = 0.0

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self._start
        self._session.log_timer(self.name, self.elapsed, count=self.count, tags=self.tags)

    def __call__(self, func: F) -> F:
        """Decorate ``func``; a coroutine, generator or async generator function is timed until
        what it makes finishes, not until it has made it."""
        if inspect.isasyncgenfunction(func):
            return wrap_async_generator_function(func, self._fresh)
        if inspect.iscoroutinefunction(func):
            return self._wrap_coroutine(func)
        if inspect.isgeneratorfunction(func):
            return self._wrap_generator(func)

        @functools.wraps(func)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with Timer(self._session, self.name, self.tags):
                return func(*args, **kwargs)

        return timed  # type: ignore[return-value]

    def _fresh(self) -> Timer:
        """A timer of the same name for one call (calls may overlap)."""
        return Timer(self._session, self.name, self.tags)

    def _wrap_coroutine(self, func: F) -> F:
        @functools.wraps(func)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            with Timer(self._session, self.name, self.tags):
                return await func(*args, **kwargs)

        return timed  # type: ignore[return-value]

    def _wrap_generator(self, func: F) -> F:
        @functools.wraps(func)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with Timer(self._session, self.name, self.tags):
                return (yield from func(*args, **kwargs))

        return timed  # type: ignore[return-value]


def _never_raises(default: Any = None) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """A verb that fails inside DataCat logs it once and returns ``default``; only a
    ``blocking=True`` session raises (that is what its users asked for)."""

    def wrap(method: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(method)
        def guarded(self: Session, *args: Any, **kwargs: Any) -> R:
            try:
                return method(self, *args, **kwargs)
            except Exception:
                if self.config.blocking:
                    raise
                log_once(
                    f"verb:{method.__name__}",
                    "datacat: session.%s failed; ignored",
                    method.__name__,
                    level=logging.ERROR,
                )
                logger.debug("datacat: %s failed", method.__name__, exc_info=True)
                return default

        return guarded

    return wrap


class Session:
    """One run of a program, reported to a DataCat server."""

    def __init__(
        self,
        config: Config,
        worker: Worker | None = None,
        transport: HttpTransport | None = None,
        session_id: str | None = None,
    ) -> None:
        self._setup(config, worker, transport)
        if session_id is not None:  # ``attach_session``: neither created nor ended here, so
            self.id = session_id  # not in ``worker.sessions`` (the exit hook ends those)
            self.create_body = {}
            if worker is not None:  # but its drops are reported with the others
                worker.sessions.attached.add(self)
            return
        if worker is not None:
            worker.sessions[self.id] = self
        self.create_body = self._create_body()
        self._enqueue("create", self.create_body)

    def _setup(
        self, config: Config, worker: Worker | None, transport: HttpTransport | None
    ) -> None:
        self.config = config
        self.id = new_id()
        self.url = config.url
        self.ended = False
        self.dropped = 0
        self.dropped_reported = 0
        self._worker = worker
        self._transport = transport
        # blocking mode: turns one item into its operation; one it cannot send raises
        self._batcher = Batcher(on_drop=_refuse)
        self._monitor: heartbeat_module.HangMonitor | None = None
        self._beater: heartbeat_module.HeartbeatThread | None = None
        self._put: Callable[[Item], bool] = worker.put if worker is not None else self._send_now
        self._stats_at_start = dict(worker.stats) if worker is not None else {}

    def _create_body(self) -> JSONDict:
        config = self.config
        return {
            "id": self.id,
            "product": config.product,
            "version": config.version,
            "machine_id": config.machine_id or machine_id(),
            "hostname": config.hostname or socket.gethostname(),
            "state": snapshot(dict(config.state or {})),
            "timestamp": time.time(),
        }

    def __repr__(self) -> str:
        return f"<datacat.Session {self.id} {self.config.product} {self.url}>"

    # -- the queue ------------------------------------------------------------------------------

    def _enqueue(self, op: str, payload: Any) -> None:
        if not self._put((op, self.id, payload)):
            self.dropped += 1

    def _send_now(self, item: Item) -> bool:
        """``blocking=True``: send the item's operation at once; raise what went wrong."""
        assert self._transport is not None
        ops = self._batcher.operations([item])
        if ops:
            self._transport.send_batch(ops).raise_for_failure()
        return True

    # -- state, events ---------------------------------------------------------------------------

    @_never_raises()
    def update_state(self, state: Mapping[str, Any]) -> None:
        """Deep-merge ``state`` into the session's state (``None`` values delete keys)."""
        if not isinstance(state, Mapping):
            log_once(
                "state-type", "datacat: update_state needs a mapping, not %s", type(state).__name__
            )
            return
        self._enqueue("state", {"state": snapshot(dict(state)), "timestamp": time.time()})

    def log_event(
        self,
        name: str,
        data: Any = None,
        *,
        level: str = "info",
        category: str | None = None,
        labels: Any = None,
        message: str | None = None,
        **fields: Any,
    ) -> None:
        """Record an event; ``fields`` are further event fields (``exception_type``, ...).
        The hot path: one flat tuple is queued; the sender builds the body (``event_body``)."""
        if type(data) is dict:
            data = data.copy()
        trace = None
        if _OTEL_TRACE in _modules and "trace_id" not in fields:
            trace = otel.span_ids()
        item = (
            "event",
            self.id,
            name,
            data,
            level,
            category,
            labels,
            message,
            fields,
            _now(),
            trace,
        )
        if not self._put(item):
            self.dropped += 1

    @_never_raises()
    def log_exception(
        self,
        exc: BaseException | tuple[Any, Any, Any] | None = None,
        *,
        data: Any = None,
        level: str = "error",
        **fields: Any,
    ) -> None:
        """Record an exception (the one being handled when ``exc`` is omitted) with its type,
        message, stack trace and the file/line/function that raised it."""
        if isinstance(exc, tuple):
            exc = exc[1]
        if exc is None:
            exc = sys.exc_info()[1]
        if not isinstance(exc, BaseException):
            log_once("no-exception", "datacat: log_exception called with no exception")
            return
        name = fields.pop("name", "exception")
        self.log_event(name, data, level=level, **{**exception_fields(exc), **fields})

    # -- metrics --------------------------------------------------------------------------------

    @_never_raises()
    def log_metric(
        self,
        name: str,
        value: float,
        *,
        tags: Mapping[str, Any] | None = None,
        type: str = "gauge",
        unit: str | None = None,
    ) -> None:
        """Record one measurement; counters are summed per flush interval."""
        if type == "counter":
            self.observe(name, value, type="counter", tags=tags, unit=unit, buckets=None)
            return
        self._metric(name, value, type, unit, tags)

    @_never_raises()
    def log_gauge(
        self,
        name: str,
        value: float,
        *,
        tags: Mapping[str, Any] | None = None,
        unit: str | None = None,
    ) -> None:
        self.log_metric(name, value, tags=tags, type="gauge", unit=unit)

    @_never_raises()
    def log_counter(
        self, name: str, delta: float = 1, *, tags: Mapping[str, Any] | None = None
    ) -> None:
        self.observe(name, delta, type="counter", tags=tags, unit=None, buckets=None)

    def log_histogram(
        self,
        name: str,
        value: float,
        *,
        buckets: Any = DEFAULT_BUCKETS,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        if buckets is not DEFAULT_BUCKETS:
            buckets = bucket_bounds(buckets)
        self.observe(name, value, type="histogram", tags=tags, unit=None, buckets=buckets)

    def log_timer(
        self,
        name: str,
        seconds: float,
        *,
        count: int | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        """One timing (``count``: iterations it covers). The hot path of ``session.timer``:
        one flat tuple is queued; the sender builds the body (``batching.metric_body``)."""
        self._metric(name, seconds, "timer", "s", tags, count)

    @_never_raises()
    def log_aggregate(
        self,
        name: str,
        value: float,
        *,
        count: int,
        min: float,
        max: float,
        type: str = "timer",
        unit: str | None = "s",
        tags: Mapping[str, Any] | None = None,
        buckets: Any = None,
        bucket_counts: Any = None,
    ) -> None:
        """One aggregate the caller folded itself (``count`` observations summing to
        ``value``), sent as one metric as it is (``@track`` folds in bulk this way)."""
        if buckets is not None:
            buckets, bucket_counts = tuple(buckets), tuple(bucket_counts or ())
        self._metric(name, value, type, unit, tags, count, min, max, buckets, bucket_counts)

    def _metric(self, name: Any, value: Any, kind: Any, unit: Any, tags: Any, *rest: Any) -> None:
        """Queue one metric flat: (name, value, type, unit, tags, timestamp, [count, min, max,
        buckets, bucket_counts]), as ``batching.metric_body`` takes them."""
        if tags:
            tags = text_tags(tags)
        if not self._put(("metric", self.id, name, value, kind, unit, tags, _now(), *rest)):
            self.dropped += 1

    def timer(self, name: str, *, tags: Mapping[str, str] | None = None) -> Timer:
        return Timer(self, name, tags)

    def observe(
        self,
        name: str,
        value: float,
        *,
        type: str = "timer",
        tags: Mapping[str, Any] | None = None,
        unit: str | None = "s",
        buckets: Any = DEFAULT_BUCKETS,
    ) -> None:
        """The hot path of ``@track``: aggregated per flush interval into one metric per
        (name, type, tags) with count, sum, min, max and bucket counts."""
        if not self._put((OBSERVE, self.id, name, value, type, tags, unit, buckets)):
            self.dropped += 1

    @_never_raises()
    def log_rows(self, template: JSONDict, rows: list[tuple[Any, ...]]) -> None:
        """Many events of one shape in one queue item: each row ``(timestamp, *values)`` is
        the event (and its timer) ``template`` describes (``datacat.rows.template``), as
        ``log_event`` and ``observe`` would have made them. ``rows`` is kept as it is: the
        caller hands it over and makes a new list for the next rows."""
        if not rows:
            return
        events = rows_module.events_in(rows, template)
        worker = self._worker
        if not self._put((ROWS, self.id, template, rows)):
            self.dropped += events
            if worker is not None:  # it counted the item once; the verbs' items, each
                worker.stats["dropped"] += events - 1
        elif worker is not None and events >= worker.kick_size:
            # one item, but as many events as that many items would be: sent at once, by the
            # caller's thread when it can hand them to the sender's child itself
            worker.kick_soon()

    # -- heartbeats and hangs -------------------------------------------------------------------

    @_never_raises()
    def heartbeat(self) -> None:
        """ "My main loop is turning": a heartbeat, and it arms the hang watchdog."""
        monitor = self._monitor
        if monitor is None:
            monitor = self._monitor = heartbeat_module.HangMonitor(self, self.config.hang_timeout)
            heartbeat_module.watchdog.add(monitor)
        monitor.beat()
        self.send_heartbeat()

    def send_heartbeat(self) -> None:
        """A heartbeat that does not feed the hang watchdog (the background thread's)."""
        self._enqueue("heartbeat", {"timestamp": time.time()})

    def background_heartbeat(self) -> None:
        """The heartbeat thread's beat: skipped while hung (the server would call a heartbeat
        after a hang its recovery)."""
        monitor = self._monitor
        if monitor is None:
            self.send_heartbeat()
        else:
            monitor.unless_hung(self.send_heartbeat)

    @_never_raises()
    def start_heartbeat(self, interval: float | None = None) -> None:
        self.stop_heartbeat()
        beater = heartbeat_module.HeartbeatThread(self, interval or self.config.heartbeat_interval)
        if beater.start():
            self._beater = beater

    @_never_raises()
    def stop_heartbeat(self) -> None:
        if self._beater is not None:
            self._beater.stop()
            self._beater = None

    @_never_raises()
    def pause_hang_detection(self) -> None:
        if self._monitor is not None:
            self._monitor.pause()

    @_never_raises()
    def resume_hang_detection(self) -> None:
        if self._monitor is not None:
            self._monitor.resume()

    # -- lifecycle ------------------------------------------------------------------------------

    @_never_raises(default=False)
    def end(self, timeout: float | None = None, *, flush: bool = True) -> bool:
        """End the session and flush (at most ``timeout``, default ``exit_timeout``).
        ``flush=False`` only queues the end, as ``crash`` does: for a caller that waits for it
        later (``flush``), and meanwhile does its own work while the sender delivers."""
        if self._finish("end", {"timestamp": time.time()}) and flush:
            return self.flush(self.config.exit_timeout if timeout is None else timeout)
        return True

    @_never_raises(default=False)
    def crash(self, reason: str, data: Any = None, *, flush: bool = True) -> bool:
        """Mark the session crashed (and ended), then flush like ``end``. ``flush=False`` only
        queues: for a program about to exit, whose exit hook does the one bounded flush."""
        body: JSONDict = {"reason": str(reason), "timestamp": time.time()}
        if data is not None:
            body["data"] = dict(data) if isinstance(data, Mapping) else {"value": data}
        if self._finish("crash", body) and flush:
            return self.flush(self.config.exit_timeout)
        return True

    def end_for_exit(self) -> None:
        """The exit hook ends sessions the program left open (it flushes them itself)."""
        self._finish("end", {"timestamp": time.time()})

    def _finish(self, op: str, body: JSONDict) -> bool:
        if self.ended:
            return False
        self.ended = True
        self.stop_heartbeat()
        if self._monitor is not None:
            heartbeat_module.watchdog.discard(self._monitor)
            self._monitor = None
        self._enqueue(op, body)
        if self._worker is not None:
            self._worker.sessions.pop(self.id, None)
        return True

    @property
    def undelivered(self) -> int:
        """How many items are not known to have reached the server: dropped (queue full),
        refused by the server, still waiting, or in the spool for a later run. Counted for
        this session's sender (all sessions of its destination), since this session began."""
        worker = self._worker
        if worker is None:
            return self.dropped
        stats, start = worker.stats, self._stats_at_start
        lost = sum(stats[k] - start.get(k, 0) for k in ("dropped", "rejected"))
        if worker.spool is not None and worker.spool.has_files():
            lost += stats["spooled"] - start.get("spooled", 0)
        return lost + worker.pending()

    @_never_raises(default=False)
    def flush(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout`` seconds) until what was logged so far reached the server."""
        if self._worker is None:
            return True
        return self._worker.flush(timeout)

    @_never_raises()
    def send_soon(self) -> None:
        """Send what was logged so far now, not at the sender's next ``flush_interval``;
        returns at once (``flush`` waits for the server's answer). With ``sender="process"``
        the calling thread hands the items to the child itself when the pipe takes them at
        once, so no thread of this process wakes for it."""
        if self._worker is not None:
            self._worker.kick_soon()

    def get_details(self, timeout: float | None = None) -> JSONDict:
        """The session as the server has it (after a flush); ``{}`` when it cannot be read."""
        self.flush(timeout if timeout is not None else self.config.exit_timeout)
        transport = self._transport or HttpTransport(
            self.url, self.config.api_key, timeout or self.config.timeout
        )
        try:
            return dict(transport.request("GET", f"/api/sessions/{self.id}"))
        except (DatacatError, TypeError, ValueError):
            if self.config.blocking:
                raise
            log_once("details", "datacat: cannot read session details from %s", self.url)
            return {}
        finally:
            if transport is not self._transport:
                transport.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and not isinstance(exc, GeneratorExit | KeyboardInterrupt):
            self.log_exception(exc)
        self.end()


def text_tags(tags: Any) -> dict[str, str] | None:
    """Metric tags as the server takes them, ``{str: str}`` (hashable, sortable); ``None``
    (no tags, logged once) when ``tags`` is not a mapping or its items cannot be read."""
    try:
        return {str(key): str(value) for key, value in tags.items()}
    except Exception:
        log_once("tags", "datacat: metric tags must be a mapping, not %s", type(tags).__name__)
        return None


def bucket_bounds(buckets: Any) -> tuple[float, ...]:
    """Histogram bucket bounds as the server takes them: finite numbers, increasing. Others
    are left out (logged once); unusable ``buckets`` give the default bounds."""
    try:
        bounds = tuple(sorted({float(b) for b in buckets if finite_number(b)}))
    except Exception:
        bounds = ()
    if not bounds:
        log_once("buckets", "datacat: histogram buckets %r unusable; default buckets", buckets)
        return DEFAULT_BUCKETS
    if bounds != tuple(buckets):
        log_once("buckets-order", "datacat: histogram buckets sorted (only finite numbers kept)")
    return bounds


def exception_fields(exc: BaseException) -> JSONDict:
    """Event fields of an exception: type, message, stack trace, raising frame."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).splitlines()
    fields: JSONDict = {
        "exception_type": _qualified(type(exc)),
        "exception_msg": _safe_str(exc),
        "stacktrace": lines,
    }
    if frames:
        last = frames[-1]
        fields.update(source_file=last.filename, source_line=last.lineno, source_function=last.name)
    return fields


def _qualified(kind: type) -> str:
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


class AttachedSession(Session):
    """``attach_session``: writes to a session another process created and will end."""

    def __repr__(self) -> str:
        return f"<datacat.Session {self.id} (attached) {self.url}>"

    def _finish(self, op: str, body: JSONDict) -> bool:
        self.stop_heartbeat()  # the session is its creator's to end: stop sending, then flush
        if self._monitor is not None:
            heartbeat_module.watchdog.discard(self._monitor)
            self._monitor = None
        self.ended = True
        return True  # ``end()`` flushes what this handle sent


class NoopSession(Session):
    """What ``create_session`` gives when DataCat is disabled: every verb does nothing."""

    def __init__(self, config: Config | None = None) -> None:
        self._setup(config or Config(spool_dir=""), None, None)
        self._put = _accept

    def heartbeat(self) -> None:
        pass

    def start_heartbeat(self, interval: float | None = None) -> None:
        pass

    def get_details(self, timeout: float | None = None) -> JSONDict:
        return {}


def _accept(item: Item) -> bool:
    return True


def _refuse(session_id: str, count: int) -> None:
    """``blocking=True``: an item that cannot be sent is an error for the caller."""
    raise ValidationError("invalid arguments", "this call cannot be sent (see the datacat log)")
