"""The sender: a bounded in-process queue drained by one named daemon thread.

Owns what happens between a session verb and the server: the queue (the caller only appends a
tuple; queue full means drop and count), batching per flush interval (``datacat.batching``
decides what goes into a batch), delivery through a ``Transport`` with exponential backoff and
jitter (429 ``Retry-After`` honoured, other 4xx never retried), the offline spool,
``flush(timeout)``, the ``atexit`` flush with a deadline (the transport is closed within it), and
fork safety (the child starts with an empty queue and a new thread). One ``Worker`` per set of
sender options (``Config.destination``): a stalled server cannot delay sessions that report
elsewhere. A sender thread with no open session and nothing to send for ``IDLE_RETIRE`` seconds
ends (the next ``put`` starts another), so per-tenant options do not pile up threads. The
local daemon reuses ``Worker`` to forward what it receives (``put_operations``).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from datacat import _internal, batching, otel
from datacat import rows as rows_module
from datacat._internal import ERROR, log_once, logger
from datacat.batching import OBSERVE, RAW, ROWS, Batcher, Item, new_id, wire
from datacat.batching import _rng as rng  # private: the app's seeded ``random`` stays its own
from datacat.limits import MAX_BATCH_OPERATIONS
from datacat.spool import Spool, bounded_timeout
from datacat.transport import BatchResult, HttpTransport, Transport

if TYPE_CHECKING:
    from datacat.config import Config

JSONDict = dict[str, Any]
_current = threading.current_thread

# Re-exported: the daemon and sessions build on these names from here.
__all__ = ["OBSERVE", "RAW", "Batcher", "Item", "Worker", "get_worker", "new_id", "wire"]

DROPPED_METRIC = "datacat.dropped_items"
_MIN_REQUEST_TIMEOUT = 0.05
#: Seconds past the exit's deadline that ``close`` waits for the sender thread to finish a cycle
#: that failed (its spool writes), before spooling what is left itself.
SPILL_GRACE = 0.2
#: Backoff doubles per failure up to this many (2**1024 would overflow a float; the delay is
#: capped by ``max_backoff`` long before).
_MAX_BACKOFF_EXPONENT = 30
#: Seconds a sender thread with no open session and nothing to send lives on.
IDLE_RETIRE = 60.0


class Worker:
    """Queue + sender thread for one destination. ``put`` is the only call on the hot path."""

    idle_retire = IDLE_RETIRE

    def __init__(self, transport: Transport, config: Config) -> None:
        self.transport = transport
        self.config = config
        self.maxsize = config.queue_size
        self.batch_size = min(config.batch_size, MAX_BATCH_OPERATIONS)
        #: queued items that wake the sender before its interval is up
        self.kick_size = self.batch_size
        self.queue: deque[Item] = deque()
        self.spool = Spool.for_url(config) if config.spool_dir else None
        self.sessions = _Sessions()  # open sessions, ended at exit
        self.stats = dict.fromkeys(
            ("requests", "batches", "operations", "rejected", "dropped", "spooled"), 0
        )
        self._batcher = Batcher(on_drop=self.count_dropped)
        self._recreate: list[Item] = []
        self._outbox: deque[list[JSONDict]] = deque()  # batches with op_ids, oldest first
        self._failures = 0
        self._retry_at = 0.0
        self._request_timeout: float | None = None
        self._deadline: float | None = None  # of an inline flush (no sender thread to wait for)
        self._lost: dict[str, int] = {}  # items dropped per session id, not yet reported
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
        self._dozing = False  # the sender sleeps long: the next ``put`` wakes it
        self._last_ok = True
        self._stopped = False  # the thread has left its loop for ``close``: no more tickets
        self._force = False
        self._busy_at = time.monotonic()

    # -- caller side ---------------------------------------------------------------------------

    def put(self, item: Item) -> bool:
        """Enqueue one item; False (nothing enqueued) when the queue is full."""
        queue = self.queue
        if len(queue) >= self.maxsize:
            self.stats["dropped"] += 1
            return False
        queue.append(item)
        if len(queue) >= self.kick_size or self.thread is None or self._dozing:
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
        if not self._wake.is_set():  # while the sender is busy, puts over the mark stay cheap
            self._wake.set()

    def kick_soon(self) -> None:
        """Send what is queued as soon as possible, never waiting (``Session.send_soon``)."""
        self.kick()

    def flush(self, timeout: float | None = None) -> bool:
        """Deliver everything enqueued so far; True when it all reached the server in time."""
        self.kick()
        thread = self.thread
        if thread is None or self._closed or not thread.is_alive() or thread is _current():
            return self._flush_inline(timeout)  # no sender thread (shutdown, closed)
        with self._flushed:
            stopped = self._stopped
            if not stopped:
                self._requested += 1
                ticket = self._requested
                retired = self.thread is not thread
        if stopped:  # the thread has stopped for ``close`` meanwhile: it serves no ticket
            return self._flush_inline(timeout)
        if retired:  # the sender ended in between: a new one serves the ticket
            self.kick()
        self._force = True
        self._wake.set()
        with self._flushed:
            done = self._flushed.wait_for(lambda: self._done >= ticket, timeout)
            return done and self._last_ok

    def _flush_inline(self, timeout: float | None) -> bool:
        """Send on the caller's thread, giving up (and parking what is left) at ``timeout``."""
        self._deadline = None if timeout is None else time.monotonic() + timeout
        try:
            return self._cycle(force=True)
        finally:
            self._deadline = None

    def count_dropped(self, session_id: str, count: int = 1, *, counted: bool = False) -> None:
        """Count items of ``session_id`` lost on the way (reported to the server as the
        ``datacat.dropped_items`` counter of that session at the next send). ``counted``: the
        drop is in ``stats`` already (a ``put`` that found the queue full)."""
        if not counted:
            self.stats["dropped"] += count
        self._lost[session_id] = self._lost.get(session_id, 0) + count

    def _busy(self) -> bool:
        """Something waits to be sent (the exit flushes it; the sender thread stays)."""
        return bool(self.queue or self._outbox)

    def pending(self) -> int:
        """How many items and operations wait in this process to be sent (queue and outbox)."""
        with self._outbox_lock:
            waiting = sum(map(_weight, self._outbox))
        return len(self.queue) + waiting

    def close(self, deadline: float) -> bool:
        """Exit: end open sessions, flush until ``deadline`` (monotonic), spool what is left."""
        if self._closed:
            return True
        if not (self._busy() or self.sessions):
            self._closed = True  # nothing of ours to send: no network at exit
            self._close_transport(deadline)
            return True
        for session in list(self.sessions.values()):
            session.end_for_exit()
        self._request_timeout = max(_MIN_REQUEST_TIMEOUT, (deadline - time.monotonic()) / 2)
        ok = self.flush(timeout=max(0.0, deadline - time.monotonic()))
        self._closed = True  # the sender thread's loop ends after the cycle it is in
        self._wake.set()
        if not ok:
            if self.spool is not None:  # without one, the thread has no writes to finish
                self._join_sender(deadline + SPILL_GRACE)
            self._spill_all()
        self._close_transport(deadline)
        return ok

    def _join_sender(self, deadline: float) -> None:
        """Let the sender thread finish its cycle (until ``deadline``): one whose send failed
        moves the outbox to the spool file by file, and ``_spill_all`` would find the outbox
        empty meanwhile; the process's exit would then cut those writes short."""
        thread = self.thread
        if thread is not None and thread is not _current() and thread.is_alive():
            thread.join(max(0.0, deadline - time.monotonic()))

    def _close_transport(self, deadline: float) -> None:
        """Release the transport within what is left until ``deadline``: the pipe to the local
        daemon finishes a line it wrote in part (a torn last line would lose the daemon the
        session's end, and it would report a crash), then closes."""
        close: Callable[..., None] = self.transport.close  # the pipe takes a timeout
        try:
            if _takes_timeout(close):
                close(timeout=max(0.0, deadline - time.monotonic()))
            else:
                close()
        except Exception:  # a foreign transport's bug must not break the exit
            logger.debug("datacat: closing the transport failed", exc_info=True)

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
            try:
                self._wake.wait(self._wait_time())
                self._wake.clear()
                if self._closed and not self._last_ok:
                    break  # woken by a ``close`` whose flush failed: it spools what is left
                force, self._force = self._force, False
                self._cycle(force)
                if self._idle_long_enough() and self._retire():
                    return
            except Exception:  # the sender must never die: a dead one loses everything after
                log_once("run", "datacat: internal error in the sender", level=ERROR)
                logger.debug("datacat: sender loop failed", exc_info=True)
                time.sleep(min(1.0, self.config.max_backoff))
        self._answer_waiting()  # closed: flushes that took a ticket meanwhile are not left waiting

    def _answer_waiting(self) -> None:
        """Flushes waiting for this thread get their answer (not delivered), and later ones are
        sent inline (``_stopped``): it sends no more."""
        with self._flushed:
            self._stopped = True
            self._done = max(self._done, self._requested)
            self._last_ok = False
            self._flushed.notify_all()

    def _idle_long_enough(self) -> bool:
        if self.sessions or self._busy() or self._lost or self._failures:
            self._busy_at = time.monotonic()
            return False
        return time.monotonic() - self._busy_at >= self.idle_retire

    def _retire(self) -> bool:
        """End this sender thread unless something came in (a ``put`` or ``flush`` that saw
        it still running is served by a new one)."""
        if self.spool is not None and self.spool.has_files():
            return False
        with self._start_lock, self._flushed:
            if self.queue or self._requested > self._done:
                return False
            self.thread = None
        if self.queue:  # put after the check above, seeing the old thread: it did not kick
            self.kick()
        return True

    def _wait_time(self) -> float:
        interval = self.config.flush_interval
        if self._failures:
            return max(0.0, min(interval, self._retry_at - time.monotonic()))
        return interval

    def _cycle(self, force: bool = False) -> bool:
        with self._flushed:
            target = self._requested
        try:
            with otel.suppressed():  # DataCat's sends are not OpenTelemetry's to trace
                ok = self._cycle_once(force)
        except Exception:  # a bug or a foreign transport: count it as a failed attempt
            log_once("cycle", "datacat: internal error in the sender", level=ERROR)
            logger.debug("datacat: sender cycle failed", exc_info=True)
            self._failed(None)  # backs off, so a persistent error cannot spin
            ok = False
        with self._flushed:
            self._done = max(self._done, target)
            self._last_ok = ok
            self._flushed.notify_all()
        return ok

    def _cycle_once(self, force: bool) -> bool:
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
        """Counter operations telling the server how many items each session lost: queue full
        (counted by the session, also after it ended), and batches the spool or the memory
        bound could not keep (counted here, per session)."""
        lost, self._lost = self._lost, {}
        for session in self.sessions.reporting():
            delta = session.dropped - session.dropped_reported
            if delta > 0:
                session.dropped_reported += delta
                lost[session.id] = lost.get(session.id, 0) + delta
        now = time.time()
        return [
            wire("metric", sid, {"name": DROPPED_METRIC, "type": "counter", "value": n,
                                 "timestamp": now})
            for sid, n in lost.items()
        ]  # fmt: skip

    def _replay_spool(self) -> bool:
        if self.spool is None or not self.spool.has_files():
            return True
        self._park()  # keep order: what is newer than the spool goes behind it
        result = self.spool.replay(self.transport, self._request_timeout, self._deadline)
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
            timeout = bounded_timeout(self._request_timeout, self._deadline)
            if timeout == 0.0:  # an inline flush ran out of time: keep the rest for later
                self._park()
                return False
            result = self.transport.send_batch(batch, timeout=timeout)
            self.stats["requests"] += 1
            if result.status == 413 and len(batch) > 1:
                self._split_head(batch)  # too big for the server: send it in halves
                continue
            if result.status == 413 and self._expand_head(batch):
                continue  # a lone ``rows`` operation: its events and timers, in halves
            if result.retryable:
                self._failed(result)
                self._park()
                return False
            again = self._account(batch, result)
            with self._outbox_lock:
                if self._outbox and self._outbox[0] is batch:
                    self._outbox.popleft()
                    if again:
                        self._outbox.appendleft(again)

    def _split_head(self, batch: list[JSONDict]) -> None:
        half = len(batch) // 2
        with self._outbox_lock:
            if self._outbox and self._outbox[0] is batch:
                self._outbox[0] = batch[half:]
                self._outbox.appendleft(batch[:half])

    def _expand_head(self, batch: list[JSONDict]) -> bool:
        """Replace a lone ``rows`` operation at the head of the outbox by its events and timers
        (which ``_split_head`` can halve); False for any other batch."""
        if len(batch) != 1 or batch[0].get("op") != ROWS:
            return False
        ops = self._batcher.expand(batch[0])
        with self._outbox_lock:
            if self._outbox and self._outbox[0] is batch and ops:
                self._outbox[0] = ops
                return True
        return False

    def _account(self, batch: list[JSONDict], result: BatchResult) -> list[JSONDict]:
        """Count what the server took; the operations to send next: the events and timers of
        ``rows`` operations it refused (a server of an older version behind the same URL, or a
        row it reads otherwise), which then fail, if at all, each on its own."""
        self._succeeded()
        if not result.delivered:
            log_once(
                f"refused:{result.status}",
                "datacat: server refused a batch (%s %s); dropped, not retried",
                result.status,
                result.error,
            )
            self.stats["rejected"] += _weight(batch)
            return []
        self.stats["batches"] += 1
        self.stats["operations"] += len(batch)
        self._batcher.rows_on_wire = ROWS in result.operations
        again: list[JSONDict] = []
        for failure in result.failed:
            op = _op_of(batch, failure)
            if op is not None and op.get("op") == ROWS:
                again += self._batcher.expand(op)
            else:
                self.stats["rejected"] += 1
        for failure in result.failed[:1]:
            log_once(
                f"op-refused:{failure.get('status')}:{failure.get('error')}",
                "datacat: server refused an operation: %s",
                failure,
            )
        return again

    def _succeeded(self) -> None:
        self._failures = 0

    def _failed(self, result: BatchResult | None) -> None:
        self._failures += 1
        exponent = min(self._failures, _MAX_BACKOFF_EXPONENT)
        delay = min(self.config.max_backoff, self.config.flush_interval * 2**exponent)
        delay *= rng.uniform(0.5, 1.0)
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
            batch = self._expanded(batch)
            if self.spool.write(batch):
                self.stats["spooled"] += _weight(batch)
            else:
                self._count_lost(batch)

    def _expanded(self, batch: list[JSONDict]) -> list[JSONDict]:
        """``batch`` with each ``rows`` operation as its events and timers: what is spooled is
        replayed maybe to another server, and the spool's replay sends batches as they are."""
        if not any(op.get("op") == ROWS for op in batch):
            return batch
        return [
            each
            for op in batch
            for each in (self._batcher.expand(op) if op.get("op") == ROWS else [op])
        ]

    def _bound_outbox(self) -> None:
        with self._outbox_lock:
            while sum(map(_weight, self._outbox)) > self.maxsize:
                self._count_lost(self._outbox.popleft())

    def _count_lost(self, batch: list[JSONDict]) -> None:
        """A batch that could be neither sent nor kept. A drop report in it is not itself a
        drop: its count goes back into the next report."""
        for op in batch:
            sid = op.get("session_id", "")
            if _is_drop_report(op):
                self._lost[sid] = self._lost.get(sid, 0) + op["data"]["value"]
            else:
                self.count_dropped(sid, _weight([op]))

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
        # The parent writes these sessions' states too: what it filtered is no guide here.
        self._batcher = Batcher(on_drop=self.count_dropped)
        self._batcher.unknown.update(self.sessions)
        self.sessions = _Sessions()
        self._lost = {}
        self.spool = Spool.for_url(self.config) if self.config.spool_dir else None
        self._failures = 0
        self._closed = False
        self._init_sync()


class _Sessions(dict[str, Any]):
    """The open sessions of a worker by id. A session leaves when it ends (``pop``); it is
    kept until the next send's drop report, which may still have to tell its last drops."""

    def __init__(self) -> None:
        super().__init__()
        self.ended: list[Any] = []
        # ``attach_session`` handles: never ended here, but their drops are reported too.
        self.attached: weakref.WeakSet[Any] = weakref.WeakSet()

    def pop(self, key: str, *default: Any) -> Any:
        session = super().pop(key, *default)
        if session is not None:
            self.ended.append(session)
        return session

    def reporting(self) -> list[Any]:
        """Sessions whose drops are reported now: the open ones and those ended since the last
        report (forgotten from here on)."""
        ended, self.ended = self.ended, []
        return [*self.values(), *ended, *self.attached]


def _takes_timeout(func: Callable[..., Any]) -> bool:
    """``func`` has a ``timeout`` parameter. A plain function or method is asked its code
    object: ``inspect`` (~10 ms to import) only for other callables, which few transports have."""
    code = getattr(func, "__code__", None)
    if code is not None and not hasattr(func, "__wrapped__"):
        return "timeout" in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    import inspect

    return "timeout" in inspect.signature(func).parameters


def _is_drop_report(op: JSONDict) -> bool:
    data = op.get("data")
    named = isinstance(data, dict) and data.get("name") == DROPPED_METRIC
    return named and op.get("op") == "metric"


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
            worker = _workers[key] = _new_worker(config, transport)
        return worker


def _new_worker(config: Config, transport: Transport | None) -> Worker:
    if config.sender == "process":
        from datacat.offload import ProcessWorker  # late: only its users pay for it

        return ProcessWorker(transport or http_transport(config), config)
    return Worker(transport or transport_factory(config), config)


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
    batching.reseed()
    for worker in list(_all_workers):
        worker._after_fork()


def _weight(batch: list[JSONDict]) -> int:
    """The items a batch stands for: a ``rows`` operation, each of its events and timers."""
    weight = 0
    for op in batch:
        if op.get("op") == ROWS:
            data = op["data"]
            weight += rows_module.events_in(data["rows"], data["template"])
        else:
            weight += 1
    return weight


def _op_of(batch: list[JSONDict], failure: JSONDict) -> JSONDict | None:
    index = failure.get("index")
    return batch[index] if type(index) is int and 0 <= index < len(batch) else None
