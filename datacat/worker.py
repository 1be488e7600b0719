"""The sender: a bounded in-process queue drained by one named daemon thread.

Owns what happens between a session verb and the server: the queue (the caller only appends a
tuple; queue full means drop and count), turning queued items into batch operations (``Batcher``:
client-made ``op_id``s, state updates that change nothing dropped, consecutive updates of one
session folded, heartbeats collapsed, observations aggregated per flush interval, non-JSON values
converted), delivery through a ``Transport`` with exponential backoff and jitter (429
``Retry-After`` honoured, other 4xx never retried), the offline spool, ``flush(timeout)``, the
``atexit`` flush with a deadline, and fork safety (the child starts with an empty queue and a new
thread). One ``Worker`` per destination (URL, API key, spool): a stalled server cannot delay
sessions that report elsewhere. The local daemon reuses ``Worker`` to forward what it receives
(``put_operations``).
"""

from __future__ import annotations

import atexit
import bisect
import math
import os
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from datacat import _internal
from datacat._internal import jsonable, log_once, logger, swallow
from datacat.config import Config
from datacat.merge import changes_nothing, combine_updates, deep_merge
from datacat.model import MAX_BATCH_OPERATIONS
from datacat.spool import Spool
from datacat.transport import BatchResult, HttpTransport, Transport

JSONDict = dict[str, Any]
Item = tuple[str, str, Any]

OBSERVE = "observe"  # raw observation, aggregated by the sender
RAW = "raw"  # a ready wire operation (the daemon forwards these)
DROPPED_METRIC = "datacat.dropped_items"
_MIN_REQUEST_TIMEOUT = 0.05


class Batcher:
    """Turns queued items into wire operations; remembers each session's state to filter."""

    def __init__(self) -> None:
        self.states: dict[str, JSONDict] = {}
        self.nonfinite = 0

    def operations(self, items: Iterable[Item]) -> list[JSONDict]:
        ops: list[JSONDict] = []
        last: dict[str, JSONDict] = {}  # the latest operation of each session in ``ops``
        aggregates = _Aggregates()
        for op, sid, payload in items:
            if op == OBSERVE:
                self._observe(aggregates, sid, payload)
                continue
            if op in ("end", "crash"):
                ops.extend(aggregates.pop(sid))
            wire = self._fold(op, sid, payload, last.get(sid))
            if wire is not None:
                ops.append(wire)
                last[sid] = wire
        ops.extend(aggregates.pop(None))
        return ops

    def _fold(self, op: str, sid: str, payload: Any, previous: JSONDict | None) -> JSONDict | None:
        """The wire operation for one item, or None when it was folded into ``previous``."""
        if op == RAW:
            return dict(payload, op_id=payload.get("op_id") or new_id())
        if op == "state":
            return self._state(sid, payload, previous)
        if op == "heartbeat" and previous is not None and previous["op"] == "heartbeat":
            previous["data"] = payload
            return None
        if op == "metric" and not self._finite(payload):
            return None
        if op == "event" and type(payload) is tuple:
            payload = event_body(*payload)
        if op == "create":
            self.states.setdefault(sid, jsonable(payload.get("state") or {}))
        elif op in ("end", "crash"):
            self.states.pop(sid, None)
        return wire(op, sid, jsonable(payload))

    def _state(self, sid: str, payload: JSONDict, previous: JSONDict | None) -> JSONDict | None:
        update = jsonable(payload["state"])
        known = self.states.get(sid)
        if known is not None:
            if changes_nothing(known, update):
                return None
            self.states[sid] = deep_merge(known, update)
        if previous is not None and previous["op"] == "state":
            combined = combine_updates(previous["data"]["state"], update)
            if combined is not None:
                previous["data"] = {"state": combined, "timestamp": payload["timestamp"]}
                return None
        return wire("state", sid, {"state": update, "timestamp": payload["timestamp"]})

    def _finite(self, metric: JSONDict) -> bool:
        value = metric.get("value")
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return True
        self.nonfinite += 1
        log_once(
            "nonfinite",
            "datacat: metric %r has value %r (not a finite number); dropped "
            "(further ones are only counted)",
            metric.get("name"),
            value,
        )
        return False

    def _observe(self, aggregates: _Aggregates, sid: str, payload: tuple[Any, ...]) -> None:
        value = payload[1]
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            aggregates.add(sid, payload)
        else:
            self._finite({"name": payload[0], "value": value})


class _Aggregates:
    """Observations of one drain folded into one metric per (session, name, type, tags)."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[Any, ...], list[Any]] = {}  # key -> the values observed

    def add(self, sid: str, payload: tuple[Any, ...]) -> None:
        # Only collect here; count/sum/min/max run once per key in C (``_metric``).
        name, value, kind, tags, unit, buckets = payload
        tag_key = tuple(sorted(tags.items())) if tags else ()
        bounds = tuple(buckets) if buckets is not None and kind != "counter" else None
        key = (sid, name, kind, tag_key, unit, bounds)
        values = self._by_key.get(key)
        if values is None:
            self._by_key[key] = [value]
        else:
            values.append(value)

    def pop(self, sid: str | None) -> list[JSONDict]:
        """Metric operations of one session (``None``: of all), removed from the aggregates."""
        keys = [k for k in self._by_key if sid is None or k[0] == sid]
        return [self._metric(k, self._by_key.pop(k)) for k in keys]

    @staticmethod
    def _metric(key: tuple[Any, ...], values: list[Any]) -> JSONDict:
        sid, name, kind, tag_key, unit, bounds = key
        body: JSONDict = {
            "name": name,
            "type": kind,
            "value": sum(values),
            "count": len(values),
            "timestamp": time.time(),
        }
        if kind != "counter":
            body.update(min=min(values), max=max(values))
        if bounds:
            counts = [0] * (len(bounds) + 1)
            for value in values:
                counts[bisect.bisect_left(bounds, value)] += 1
            body.update(buckets=list(bounds), bucket_counts=counts)
        if unit:
            body["unit"] = unit
        if tag_key:
            body["tags"] = {str(k): str(v) for k, v in tag_key}
        return wire("metric", sid, body)


def event_body(
    name: Any,
    data: Any,
    level: Any,
    category: Any,
    labels: Any,
    message: Any,
    fields: JSONDict,
    timestamp: float,
    trace: tuple[str, str] | None,
) -> JSONDict:
    """The wire body of an event queued by ``Session.log_event`` as a tuple."""
    body: JSONDict = {"name": name, "level": level, "timestamp": timestamp}
    if data is not None:
        body["data"] = dict(data) if isinstance(data, Mapping) else {"value": data}
    if category is not None:
        body["category"] = category
    if labels:
        body["labels"] = [str(label) for label in labels]
    if message is not None:
        body["message"] = message
    body.update(fields)
    if trace is not None:
        body["trace_id"], body["span_id"] = trace
    return body


# A private generator: an application's ``random.seed(...)`` must not repeat our ids; it is
# reseeded in forked children (``_after_fork``). UUID version 4 bits set by hand: ~4x faster
# than ``str(uuid.uuid4())``, which matters at one id per operation.
_rng = random.Random()
_V4_CLEAR = ~((0xC000 << 48) | (0xF000 << 64)) & ((1 << 128) - 1)
_V4_SET = (0x8000 << 48) | (4 << 76)


def new_id() -> str:
    """A random UUID (version 4) in canonical form."""
    h = f"{(_rng.getrandbits(128) & _V4_CLEAR) | _V4_SET:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def wire(op: str, sid: str, data: Any) -> JSONDict:
    return {"op_id": new_id(), "op": op, "session_id": sid, "data": data}


class Worker:
    """Queue + sender thread for one destination. ``put`` is the only call on the hot path."""

    def __init__(self, transport: Transport, config: Config) -> None:
        self.transport = transport
        self.config = config
        self.maxsize = config.queue_size
        self.batch_size = min(config.batch_size, MAX_BATCH_OPERATIONS)
        self.queue: deque[Item] = deque()
        self.spool = Spool.for_url(config) if config.spool_dir else None
        self.sessions: dict[str, Any] = {}  # open sessions, ended at exit
        self.stats = dict.fromkeys(
            ("requests", "batches", "operations", "rejected", "dropped", "spooled"), 0
        )
        self._batcher = Batcher()
        self._recreate: list[Item] = []
        self._outbox: deque[list[JSONDict]] = deque()  # batches with op_ids, oldest first
        self._failures = 0
        self._retry_at = 0.0
        self._request_timeout: float | None = None
        self._closed = False
        self._init_sync()
        _register(self)

    def _init_sync(self) -> None:
        """Fresh thread state (at start, and in a forked child)."""
        self.thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        self._outbox_lock = threading.Lock()
        self._flushed = threading.Condition()
        self._requested = 0
        self._done = 0
        self._last_ok = True
        self._force = False

    # -- caller side ---------------------------------------------------------------------------

    def put(self, item: Item) -> bool:
        """Enqueue one item; False (nothing enqueued) when the queue is full."""
        queue = self.queue
        if len(queue) >= self.maxsize:
            self.stats["dropped"] += 1
            return False
        queue.append(item)
        if len(queue) >= self.batch_size or self.thread is None:
            if self._recreate:
                self._put_recreate()
            self.kick()
        return True

    def _put_recreate(self) -> None:
        """First item in a forked child: the inherited sessions are created again before it
        (idempotent: same id), because the parent may not have delivered their creation yet."""
        items, self._recreate = self._recreate, []
        self.queue.extendleft(reversed(items))

    def put_operations(self, operations: Iterable[JSONDict]) -> int:
        """Enqueue ready wire operations (kept ``op_id``s); how many were accepted."""
        return sum(self.put((RAW, op.get("session_id", ""), op)) for op in operations)

    def kick(self) -> None:
        """Wake the sender now (starting it if this process has none yet)."""
        if self.thread is None:
            self._start()
        self._wake.set()

    def flush(self, timeout: float | None = None) -> bool:
        """Deliver everything enqueued so far; True when it all reached the server in time."""
        self.kick()
        thread = self.thread
        if thread is None or self._closed or not thread.is_alive():
            return self._cycle(force=True)  # no sender thread (shutdown, closed): send inline
        with self._flushed:
            self._requested += 1
            ticket = self._requested
        self._force = True
        self._wake.set()
        with self._flushed:
            done = self._flushed.wait_for(lambda: self._done >= ticket, timeout)
            return done and self._last_ok

    def close(self, deadline: float) -> bool:
        """Exit: end open sessions, flush until ``deadline`` (monotonic), spool what is left."""
        if self._closed:
            return True
        if not (self.queue or self._outbox or self.sessions):
            self._closed = True  # nothing of ours to send: no network at exit
            return True
        for session in list(self.sessions.values()):
            session.end_for_exit()
        self._request_timeout = max(_MIN_REQUEST_TIMEOUT, (deadline - time.monotonic()) / 2)
        ok = self.flush(timeout=max(0.0, deadline - time.monotonic()))
        if not ok:
            self._spill_all()
        self._closed = True
        self._wake.set()
        return ok

    # -- sender side ---------------------------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self.thread is not None or self._closed or not _internal.may_start_thread():
                return
            thread = threading.Thread(target=self._run, name="datacat-sender", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # "can't create new thread at interpreter shutdown"
                return
            self.thread = thread

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._wait_time())
            self._wake.clear()
            force, self._force = self._force, False
            self._cycle(force)

    def _wait_time(self) -> float:
        interval = self.config.flush_interval
        if self._failures:
            return max(0.0, min(interval, self._retry_at - time.monotonic()))
        return interval

    def _cycle(self, force: bool = False) -> bool:
        with self._flushed:
            target = self._requested
        ok = bool(self._cycle_safely(force))
        with self._flushed:
            self._done = max(self._done, target)
            self._last_ok = ok
            self._flushed.notify_all()
        return ok

    @swallow(default=False)
    def _cycle_safely(self, force: bool) -> bool:
        self._collect()
        if self._failures and not force and time.monotonic() < self._retry_at:
            self._park()
            return False
        return self._replay_spool() and self._send_outbox()

    def _collect(self) -> None:
        items = _drain(self.queue)
        ops = self._batcher.operations(items) if items else []
        ops.extend(self._dropped_counts())
        with self._outbox_lock:
            for start in range(0, len(ops), self.batch_size):
                self._outbox.append(ops[start : start + self.batch_size])

    def _dropped_counts(self) -> list[JSONDict]:
        """Counter operations telling the server how many items each session lost."""
        ops = []
        for sid, session in list(self.sessions.items()):
            delta = session.dropped - session.dropped_reported
            if delta > 0:
                session.dropped_reported += delta
                ops.append(
                    wire(
                        "metric",
                        sid,
                        {
                            "name": DROPPED_METRIC,
                            "type": "counter",
                            "value": delta,
                            "timestamp": time.time(),
                        },
                    )
                )
        return ops

    def _replay_spool(self) -> bool:
        if self.spool is None or not self.spool.has_files():
            return True
        self._park()  # keep order: what is newer than the spool goes behind it
        result = self.spool.replay(self.transport, timeout=self._request_timeout)
        self.stats["rejected"] += result.rejected
        self.stats["requests"] += result.sent + (0 if result.complete or result.busy else 1)
        if result.complete:
            self._succeeded()
        elif not result.busy:  # another process replaying is no reason to back off
            self._failed(None)
        return result.complete

    def _send_outbox(self) -> bool:
        while True:
            with self._outbox_lock:
                if not self._outbox:
                    return True
                batch = self._outbox[0]
            result = self.transport.send_batch(batch, timeout=self._request_timeout)
            self.stats["requests"] += 1
            if result.status == 413 and len(batch) > 1:
                self._split_head(batch)  # too big for the server: send it in halves
                continue
            if result.retryable:
                self._failed(result)
                self._park()
                return False
            self._account(batch, result)
            with self._outbox_lock:
                if self._outbox and self._outbox[0] is batch:
                    self._outbox.popleft()

    def _split_head(self, batch: list[JSONDict]) -> None:
        half = len(batch) // 2
        with self._outbox_lock:
            if self._outbox and self._outbox[0] is batch:
                self._outbox[0] = batch[half:]
                self._outbox.appendleft(batch[:half])

    def _account(self, batch: list[JSONDict], result: BatchResult) -> None:
        self._succeeded()
        if not result.delivered:
            log_once(
                f"refused:{result.status}",
                "datacat: server refused a batch (%s %s); dropped, not retried",
                result.status,
                result.error,
            )
            self.stats["rejected"] += len(batch)
            return
        self.stats["batches"] += 1
        self.stats["operations"] += len(batch)
        self.stats["rejected"] += len(result.failed)
        for failure in result.failed[:1]:
            log_once(
                f"op-refused:{failure.get('status')}:{failure.get('error')}",
                "datacat: server refused an operation: %s",
                failure,
            )

    def _succeeded(self) -> None:
        self._failures = 0

    def _failed(self, result: BatchResult | None) -> None:
        self._failures += 1
        delay = min(self.config.max_backoff, self.config.flush_interval * 2**self._failures)
        delay *= random.uniform(0.5, 1.0)
        if result is not None and result.retry_after is not None:
            delay = max(delay, min(result.retry_after, self.config.max_backoff))
        self._retry_at = time.monotonic() + delay
        if result is not None:
            log_once(
                f"retry:{result.status}",
                "datacat: cannot deliver to %s (%s); retrying with backoff, spooling meanwhile",
                self.config.url,
                result.error or result.status,
            )

    def _park(self) -> None:
        """Move waiting batches to the spool (they survive exit); memory-only mode bounds them."""
        if self.spool is None:
            self._bound_outbox()
            return
        with self._outbox_lock:
            batches = list(self._outbox)
            self._outbox.clear()
        for batch in batches:
            if self.spool.write(batch):
                self.stats["spooled"] += len(batch)
            else:
                self.stats["dropped"] += len(batch)

    def _bound_outbox(self) -> None:
        with self._outbox_lock:
            while sum(map(len, self._outbox)) > self.maxsize:
                self.stats["dropped"] += len(self._outbox.popleft())

    def _spill_all(self) -> None:
        """Exit gave up on the server: whatever is still queued goes to the spool."""
        if self.spool is None:
            return
        self._collect()
        self._park()

    def _after_fork(self) -> None:
        """In a forked child: the parent's items and sessions are the parent's to send and end."""
        self.queue.clear()
        self._outbox.clear()
        self._recreate = [("create", sid, s.create_body) for sid, s in self.sessions.items()]
        self.sessions.clear()
        self.spool = Spool.for_url(self.config) if self.config.spool_dir else None
        self._failures = 0
        self._closed = False
        self._init_sync()


def _drain(queue: deque[Item]) -> list[Item]:
    items = []
    popleft = queue.popleft
    try:
        for _ in range(len(queue)):
            items.append(popleft())
    except IndexError:
        pass
    return items


# -- one worker per destination; exit and fork hooks ------------------------------------------

_workers: dict[tuple[Any, ...], Worker] = {}
_all_workers: weakref.WeakSet[Worker] = weakref.WeakSet()
_registry_lock = threading.Lock()
_hooks_installed = False


def get_worker(config: Config, transport: Transport | None = None) -> Worker:
    """The shared worker of ``config``'s destination (made on first use)."""
    key = config.destination()
    with _registry_lock:
        worker = _workers.get(key)
        if worker is None or worker._closed:
            worker = _workers[key] = Worker(transport or transport_factory(config), config)
        return worker


def http_transport(config: Config) -> Transport:
    return HttpTransport(config.url, config.api_key, config.timeout)


def default_transport(config: Config) -> Transport:
    """HTTP, or with ``daemon=True`` the pipe to a local daemon (issue 6, ``datacat.pipe``)."""
    if config.daemon:
        from datacat.pipe import PipeTransport  # late: only daemon users pay for it

        return PipeTransport(config)
    return http_transport(config)


#: Makes the transport of a new worker; the local daemon replaces it with a pipe-backed one.
transport_factory: Callable[[Config], Transport] = default_transport


def _register(worker: Worker) -> None:
    global _hooks_installed
    _all_workers.add(worker)
    if not _hooks_installed:
        _hooks_installed = True
        atexit.register(_at_exit)
        os.register_at_fork(after_in_child=_after_fork)


def _at_exit() -> None:
    _internal.mark_shutting_down()
    workers = list(_all_workers)
    if not workers:
        return
    deadline = time.monotonic() + max(w.config.exit_timeout for w in workers)
    for worker in workers:
        try:
            worker.close(deadline)
        except Exception:
            logger.debug("datacat: exit flush failed", exc_info=True)


def _after_fork() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    _internal.reset_after_fork()
    _rng.seed()  # from os.urandom: the child must not repeat the parent's ids
    for worker in list(_all_workers):
        worker._after_fork()
