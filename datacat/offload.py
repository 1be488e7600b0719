"""The sender in a child process (``sender="process"``): the app's side and the child's loop.

With ``sender="process"`` the batching, the JSON and the HTTP of a session's sender run in a
child process (``python -m datacat.offload``), on another core and outside the app's GIL. The
app's :class:`ProcessWorker` is a ``Worker`` whose sender thread does not build batches: every
``HAND_OVER_INTERVAL`` while items wait (or as soon as ``HAND_OVER_ITEMS`` wait) it hands the
queued items, exactly as the session verbs queued them, to the child through a pipe, one pickle
frame per hand-over; ``kick_soon`` (``Session.send_soon``) hands over on the caller's thread.
What the app pays per item is the deque append it always paid and a share of one
``pickle.dumps``; the child runs the ordinary ``Worker`` on the items (batching, retries with
backoff, the spool), and sends each frame at once.

- ``flush(timeout)`` is a round trip: the app writes a flush request and waits (at most
  ``timeout``) for the child's answer, which carries the child's counters (``undelivered``).
- The pipe closing while a session is still open (the app was killed, or ``os._exit``) is the
  child's signal: it marks such sessions crashed (``parent_process_terminated``), as the local
  daemon does. On a normal exit the app's exit hook ends its sessions first.
- After the pipe closes the child delivers what is left within ``exit_timeout``, spools the
  rest for a later run, and exits. It runs in its own session (Ctrl-C in the app's terminal does
  not reach it) with no terminal: its stdout is the answer pipe, its stderr ``/dev/null``.
- The child cannot start, or goes away: the app sends by itself (the ordinary thread sender),
  from the items the child had not yet taken on.
- Writes never block the app's threads: the pipe is non-blocking and what it cannot take yet
  waits in the app (bounded by ``queue_size`` items; beyond, items are dropped and counted).

Protocol, app to child (stdin): frames of one kind byte, a 4-byte big-endian length and the
payload: ``H`` hello (JSON: the sender options and the app's pid), ``I`` items (a pickle of a
list of item tuples that holds only built-in types: ``encode_items``), ``F`` flush request (JSON
``{"ticket": n, "timeout": s}``). Child to app (stdout): one JSON line per flush request,
``{"ticket", "ok", "pending", "stats"}``.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING, Any, cast

try:  # the C pickler itself: ``pickle``'s own module (its Python pickler) is 1-2 ms to import
    import _pickle as pickle
except ImportError:  # pragma: no cover - an interpreter without the C accelerator
    import pickle  # type: ignore[no-redef]

from datacat import rows
from datacat._internal import jsonable, log_once, logger, name_field
from datacat.batching import _BODIES, OBSERVE, RAW, ROWS, Item, wire
from datacat.limits import PARENT_TERMINATED
from datacat.transport import HttpTransport, Transport
from datacat.worker import Worker

if TYPE_CHECKING:
    import subprocess

    from datacat.config import Config
    from datacat.pipe import Outlet

JSONDict = dict[str, Any]

HELLO, ITEMS, FLUSH = b"H", b"I", b"F"
_HEADER = struct.Struct(">cI")
#: The reason of the crash the child reports for a session the app left open when it died.
CRASH_REASON = PARENT_TERMINATED
#: Seconds between two hand-overs by the app's sender thread while items wait, whatever
#: ``flush_interval`` is (the child batches and sends by ``flush_interval`` itself): items stay
#: short-lived in the app, and a short ``flush_interval`` does not wake the app's thread more
#: often. With nothing to hand over the thread dozes for ``flush_interval`` (``_wait_time``).
HAND_OVER_INTERVAL = 0.05
#: Seconds after a hand-over during which the sender thread keeps its ``HAND_OVER_INTERVAL``
#: rhythm (a burst's next items are batched); past it, it dozes and the next item wakes it.
BURST_WINDOW = 4 * HAND_OVER_INTERVAL
#: Seconds the exit path may wait for the pipe past its deadline (see ``_spill_all``).
EXIT_GRACE = 0.2
#: Queued items that wake the sender thread for a hand-over before ``HAND_OVER_INTERVAL`` is up
#: (fewer than ``batch_size``): a burst reaches the child, and the server, at once.
HAND_OVER_ITEMS = 64
#: Items per frame at most: a frame torn by the child's death or the exit costs little.
FRAME_ITEMS = 1000
#: The pickle protocol of the frames (5, the newest of every Python this runs on).
PICKLE_PROTOCOL = 5
#: Bytes asked for the pipe (Linux ``F_SETPIPE_SZ``): the child starting up does not stall it.
PIPE_BYTES = 1 << 20


def frame(kind: bytes, payload: bytes) -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


class _Encoder(pickle.Pickler):
    """Pickles queue items as the sender will see them. Exact built-in types (``str``,
    ``dict``, ``float``, ...) are written as they are, by the C pickler; ``reducer_override``
    sees every other object (a user's class, an ``IntEnum``, a NumPy array, a ``bytearray``),
    notes it (``odd``), and writes what the sender would make of it (``jsonable``) instead, so
    the stream holds only built-in types and the child never imports or runs the app's code."""

    odd = False

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type) and obj.__module__ == "builtins":
            return NotImplemented  # ``str``, ``dict``...: the replacements are made with them
        self.odd = True
        value = jsonable(obj)
        return NotImplemented if value is None else (type(value), (value,))


_ENCODING_ERRORS = (RecursionError, pickle.PicklingError, TypeError, ValueError, AttributeError)


def encode_items(items: list[Item]) -> bytes:
    """The pickle of ``items`` (see ``_Encoder``), built-in types only. A hand-over holding an
    object of another type is encoded again item by item: such an item is first put in the form
    the sender reads it in (``_normal``: its body built as the sender builds it, so a ``Path``
    message is its ``str``, as it would be, not its ``repr``); one nothing can pickle (nested
    deeper than the pickler's recursion limit, say) goes as ``jsonable`` makes it, alone."""
    try:
        data, odd = _dumps(items)
        if not odd:
            return data
    except _ENCODING_ERRORS:
        pass
    return _dumps([each for item in items for each in _encodables(item)])[0]


def _encodables(item: Item) -> list[Item]:
    """``_encodable(item)``; rows (``log_rows``) holding objects of the app's own types as the
    verbs' items, whose text the sender makes of them here (``rows.verb_items``)."""
    if item[0] != ROWS or len(item) != 4:
        return [_encodable(item)]
    try:
        if not _dumps(item)[1]:
            return [item]
    except _ENCODING_ERRORS:
        pass
    items, unfit = rows.verb_items(item[1], item[2], item[3])
    if unfit:
        items.append((ROWS, item[1], item[2], unfit))
    return [_encodable(each) for each in items]


def _dumps(value: Any) -> tuple[bytes, bool]:
    buffer = io.BytesIO()
    encoder = _Encoder(buffer, protocol=PICKLE_PROTOCOL)
    encoder.dump(value)
    return buffer.getvalue(), encoder.odd


def _encodable(item: Item) -> Item:
    try:
        if not _dumps(item)[1]:
            return item
    except _ENCODING_ERRORS:
        pass
    item = _normal(item)
    try:
        _dumps(item)
    except _ENCODING_ERRORS:
        return tuple(jsonable(part) for part in item)  # cut at jsonable's depth
    return item


def _normal(item: Item) -> Item:
    """``item`` as the sender would read it: a flat event or metric with its body built (by
    the sender's own ``event_body``/``metric_body``), an observation's name and tags as text."""
    op = item[0]
    try:
        if op in _BODIES and len(item) > 3:
            return (op, item[1], _BODIES[op](*item[2:]))
        if op == OBSERVE:
            name, value, kind, tags, unit, buckets = item[2:]
            if tags:
                tags = {str(k): str(v) for k, v in tags.items()}
            if buckets is not None:
                buckets = tuple(buckets)
            return (op, item[1], name_field(name), value, kind, tags, unit, buckets)
    except Exception:  # arguments the sender cannot use either: it drops and counts the item
        pass
    return item


def decode_items(payload: bytes) -> list[Item]:
    items: list[Item] = pickle.loads(payload)
    return items


class ProcessWorker(Worker):
    """The app's side: hands items to the child; sends by itself when there is no child.

    ``_pipe_lock`` guards the pipe and the frames; the app's threads take it with their
    deadline (``flush``, the exit path), never without one. Items wait in frames of at most
    ``FRAME_ITEMS``; while ``queue_size`` items wait, the sender hands nothing more over, so the
    queue fills and ``put`` refuses (the session counts it), as with a slow server."""

    def __init__(self, transport: Transport, config: Config) -> None:
        super().__init__(transport, config)
        self.kick_size = min(self.batch_size, HAND_OVER_ITEMS)
        self._pipe_lock = threading.Lock()
        self._exit_deadline: float | None = None
        self._init_child()

    def _init_child(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._outlet: Outlet | None = None
        self._answers: int | None = None  # the read end of the child's answers
        self._frames: deque[tuple[bytes, int]] = deque()  # frames to write, and their items
        self._writing: tuple[bytes, int] | None = None  # the frame in the pipe in part
        self._waiting = 0  # items in ``_frames`` and ``_writing``
        self._handed = 0  # items written to the child, ever
        self._marks: dict[int, int] = {}  # flush ticket -> ``_handed`` when it was written
        self._answer_buffer = b""
        self._tickets = 0
        self._gone = False  # no child (it could not start, or went away): send by ourselves
        self._in_child = 0  # items handed over since the child's last answer
        self._child_pending = 0  # items the child had not delivered at its last answer
        self._child_stats: dict[str, int] = {}
        self._inline_at = -math.inf  # the last hand-over by a caller's ``kick_soon``
        self._taken_at = -math.inf  # the last hand-over that took items

    # -- app side: the sender thread's cycle hands over instead of sending -----------------------

    def _wait_time(self) -> float:
        """``HAND_OVER_INTERVAL`` while items come; else a doze of ``flush_interval`` instead
        of waking every ``HAND_OVER_INTERVAL`` for nothing (on a 2-core machine each wake-up
        of ours slows the app's own thread). While it dozes with nobody handing over, the next
        ``put`` wakes it (``_dozing``): an item never waits longer than it did, so the last
        words of an app that dies soon after are still handed over."""
        self._dozing = not self._gone  # before the look at the queue: a put meanwhile wakes it
        if self._gone:
            return super()._wait_time()
        if self.queue or self._frames or self._writing is not None:
            self._dozing = False
            return HAND_OVER_INTERVAL
        doze = max(HAND_OVER_INTERVAL, self.config.flush_interval)
        now = time.monotonic()
        if now - self._inline_at < doze:  # a caller hands over itself (``kick_soon``)
            self._dozing = False
            return doze
        if now - self._taken_at < BURST_WINDOW:  # items came just now: more may, batch them
            self._dozing = False
            return HAND_OVER_INTERVAL
        return doze

    def kick_soon(self) -> None:
        """Hand the queued items over now, on the caller's thread, when the pipe is free and
        takes them at once (a pickle and a write that does not wait); else wake the sender
        thread. A caller that hands over itself never wakes that thread, nor waits for it."""
        if self._gone or self._outlet is None or not self._pipe_lock.acquire(blocking=False):
            self.kick()
            return
        held = _hold_interrupts()  # Ctrl-C mid-hand-over would tear a frame: it waits
        try:
            done = not self._gone and self._outlet is not None  # the child may have gone since
            if done:
                self._hand_over()
                done = self._write()
                self._inline_at = time.monotonic()
        finally:
            self._pipe_lock.release()
            _release_interrupts(held)
        if not done:  # the pipe is full, or no child: the thread goes on
            self.kick()

    def _busy(self) -> bool:
        handed = self._waiting or self._in_child or self._child_pending
        return super()._busy() or (not self._gone and bool(handed))

    def _cycle_once(self, force: bool) -> bool:
        with self._pipe_lock:
            if not self._gone and (self._outlet is not None or self._start_child()):
                self._hand_over()
                self._write()
        # no child (any more): this process sends, outside the lock (network I/O)
        return super()._cycle_once(force) if self._gone else True

    def _hand_over(self) -> None:
        """Queued items (and drop reports) into frames, as far as ``queue_size`` allows."""
        room = self.maxsize - self._waiting
        reports = self._dropped_counts()
        if reports:
            self.queue.extend((RAW, op["session_id"], op) for op in reports)
        if self.queue:
            self._taken_at = time.monotonic()
        while room > 0 and self.queue:
            items = _take(self.queue, min(room, FRAME_ITEMS))
            room -= len(items)
            self._frames.append((frame(ITEMS, encode_items(items)), len(items)))
            self._waiting += len(items)

    def _write(self, timeout: float | None = 0.0) -> bool:
        """Move frames into the pipe (waiting at most ``timeout``); True when all went in."""
        outlet = self._outlet
        if outlet is None:
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if outlet.pending and not outlet.drain(_left(deadline)):
                if outlet.broken:
                    self._lost_child()
                return False
            if self._writing is not None:  # in the pipe whole
                self._waiting -= self._writing[1]
                self._handed += self._writing[1]
                self._in_child += self._writing[1]
                self._writing = None
            if not self._frames:
                return True
            self._writing = self._frames.popleft()
            outlet.pending = self._writing[0]

    def pending(self) -> int:
        return super().pending() + self._waiting + self._in_child + self._child_pending

    def flush(self, timeout: float | None = None) -> bool:
        """Hand everything over, then ask the child to deliver it (a round trip, in ``timeout``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._gone or self._closed or self._outlet is None:
            # no child yet (the sender thread starts it), or none any more (it sends itself)
            handed = super().flush(timeout)
            if self._gone or not handed:
                return handed
        # else the round trip hands the queue over itself, on this thread: waking the sender
        # thread for it, and waiting for it, made the end of a pytest run ~2 ms longer
        if not _acquire(self._pipe_lock, deadline):
            return False
        try:
            ok = self._outlet is not None and self._round_trip(deadline)
        finally:
            self._pipe_lock.release()
        if self._gone:  # it went away meanwhile: what it had not taken on is sent from here
            return super().flush(_left(deadline))
        return ok

    def _round_trip(self, deadline: float | None) -> bool:
        self._tickets += 1
        ticket = self._tickets
        if not self._hand_over_all(deadline):
            return False
        left = _left(deadline)
        # the child answers a little before our deadline, so its answer can still reach us
        child_timeout = None if left is None else max(0.0, left * 0.9 - 0.01)
        request = json.dumps({"ticket": ticket, "timeout": child_timeout}).encode()
        self._frames.append((frame(FLUSH, request), 0))
        if not self._write_until(deadline):
            return False
        self._marks[ticket] = self._handed
        answer = self._await(ticket, deadline)
        return answer is not None and bool(answer.get("ok"))

    def _hand_over_all(self, deadline: float | None) -> bool:
        """Everything queued so far into the pipe, the drop reports too (``_hand_over`` queues
        them last, one per session). At most ``queue_size`` items wait in frames at a time, so
        a full queue takes several hand-overs, each once the pipe took the last (the first may
        take nothing: frames may wait already); what other threads queue meanwhile is not
        waited for. False when the pipe did not take it all by ``deadline``."""
        items = len(self.queue) + len(self._lost)
        for _ in range(items // max(1, self.maxsize) + 2):
            held = _hold_interrupts()  # Ctrl-C between taking items and framing them loses them
            try:
                self._hand_over()
            finally:
                _release_interrupts(held)
            if not self._write_until(deadline):
                return False
            if not self.queue:
                break
        return True

    def _write_until(self, deadline: float | None) -> bool:
        """``_write`` until ``deadline``, holding a Ctrl-C back only while it writes (one between
        a write and its bookkeeping would tear a frame), never while it waits for the pipe."""
        from datacat.pipe import wait_writable  # loaded: the child was started with it

        while True:
            held = _hold_interrupts()
            try:
                if self._write(0.0):
                    return True
            finally:
                _release_interrupts(held)
            outlet, left = self._outlet, _left(deadline)
            if outlet is None or outlet.fd is None or outlet.broken:
                return False
            if left is not None and left <= 0:
                return False
            wait_writable(outlet.fd, left)

    def _await(self, ticket: int, deadline: float | None) -> JSONDict | None:
        """Read answers until the one to ``ticket`` (older ones only update the counters)."""
        while self._answers is not None:
            for line in self._answer_lines():
                answer = self._absorb(line)
                if answer is not None and answer.get("ticket") == ticket:
                    return answer
            left = _left(deadline)
            if left is not None and left <= 0:
                return None
            if _wait_readable(self._answers, left) and not self._read_answers():
                self._lost_child()  # a closed end reads as ready, and empty
                return None
        return None

    def _read_answers(self) -> bool:
        """Read what the child wrote; False when its end is closed (it has gone)."""
        assert self._answers is not None
        try:
            data = os.read(self._answers, 65536)
        except BlockingIOError:
            return True
        except OSError:
            return False
        self._answer_buffer += data
        return bool(data)

    def _answer_lines(self) -> list[bytes]:
        *lines, self._answer_buffer = self._answer_buffer.split(b"\n")
        return lines

    def _absorb(self, line: bytes) -> JSONDict | None:
        """One answer: the child's counters become ours (by their change since the last one),
        and what was handed over after its request is still on its way."""
        try:
            answer = json.loads(line)
            stats = {str(k): int(v) for k, v in answer["stats"].items()}
            mark = self._marks.pop(answer["ticket"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        for key, value in stats.items():
            if key in self.stats:
                self.stats[key] += value - self._child_stats.get(key, 0)
        self._child_stats = stats
        self._child_pending = int(answer.get("pending") or 0)
        self._in_child = self._handed - mark
        return dict(answer)

    # -- the child process ------------------------------------------------------------------------

    def _start_child(self) -> bool:
        if self._closed or self._gone:  # never a second child, nor one after exit
            return False
        # late: the child, which imports this module too, needs neither
        import subprocess

        from datacat.pipe import Outlet, daemon_environment

        _reap()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "datacat.offload"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in the app's terminal must not cut delivery
                close_fds=True,
                env=daemon_environment(),
            )
        except (OSError, RuntimeError, ValueError) as exc:  # e.g. at interpreter shutdown
            log_once("offload-start", "datacat: cannot start the sender process (%s)", str(exc))
            self._gone = True
            return False
        assert process.stdin is not None and process.stdout is not None
        _grow_pipe(process.stdin.fileno())
        self._process = process
        # Our ends are dups: Popen's file objects must not flush, buffer or close them.
        self._outlet = Outlet(os.dup(process.stdin.fileno()), reader="sender process")
        self._answers = os.dup(process.stdout.fileno())
        process.stdin.close()
        process.stdout.close()
        os.set_blocking(self._answers, False)
        self._outlet.pending = frame(HELLO, json.dumps(hello_options(self.config)).encode())
        _children.append(process)  # kept referenced: it outlives us, Popen must not warn
        return True

    def _lost_child(self) -> None:
        """The child went away: what it had not taken on is sent by this process; what it had
        taken on and not delivered is lost, and counted."""
        if self._gone:
            return
        log_once("offload-lost", "datacat: the sender process has gone; sending directly")
        self._gone = True
        self.kick_size = self.batch_size  # this process batches again
        self._take_back_frames()
        self.stats["dropped"] += self._in_child + self._child_pending
        self._in_child = self._child_pending = 0
        self._close_child()
        _reap()

    def _close_child(self) -> None:
        if self._outlet is not None:
            self._outlet.close()
        if self._answers is not None:
            os.close(self._answers)
        self._outlet, self._answers = None, None

    def _take_back_frames(self) -> None:
        """The items of frames the child has not read whole (it drops a torn frame): back to
        the front of the queue, in order, for this process to send or spool."""
        if self._writing is not None:
            self._frames.appendleft(self._writing)
            self._writing = None
            if self._outlet is not None:
                self._outlet.pending = b""
        unsent = [decode_items(data[_HEADER.size :]) for data, count in self._frames if count]
        self._frames.clear()
        self._waiting = 0
        for items in reversed(unsent):
            self.queue.extendleft(reversed(items))

    # -- exit and fork ----------------------------------------------------------------------------

    def close(self, deadline: float) -> bool:
        self._exit_deadline = deadline
        return super().close(deadline)

    def _spill_all(self) -> None:
        """Exit gave up: what the child has not taken on goes to this process's spool."""
        # with a grace past the deadline: the sender thread holds the lock for a moment at a
        # time (it never waits under it), and what is not taken back here would be lost
        if _acquire(self._pipe_lock, self._exit_deadline, EXIT_GRACE):
            try:
                self._take_back_frames()
            finally:
                self._pipe_lock.release()
        super()._spill_all()

    def _close_transport(self, deadline: float) -> None:
        """Exit: close the pipe (the child's EOF: it delivers what it has, then exits)."""
        if _acquire(self._pipe_lock, deadline, EXIT_GRACE):
            try:
                if self._outlet is not None:
                    self._write(max(0.0, deadline - time.monotonic()))
                self._close_child()
            finally:
                self._pipe_lock.release()
        super()._close_transport(deadline)

    def _after_fork(self) -> None:
        """In a forked child: the parent's sender process is the parent's (the inherited ends
        are closed, or it would not see the parent end); a new one starts on first use."""
        if self._outlet is not None:
            self._outlet.forget()
        if self._answers is not None:
            os.close(self._answers)
        self._pipe_lock = threading.Lock()
        self._init_child()
        super()._after_fork()
        # The parent's sessions are created again here, but as ready operations: this
        # process's child must not take them for its own (and crash them when it ends).
        self._recreate = [(RAW, item[1], wire(*item)) for item in self._recreate]


_children: list[subprocess.Popen[bytes]] = []


def _hold_interrupts() -> tuple[Any, list[int]] | None:
    """On the main thread (where Python raises Ctrl-C's ``KeyboardInterrupt``, between any two
    steps, whichever thread the signal reached), hold SIGINT back: a handler of ours notes it
    until ``_release_interrupts``. None elsewhere, or when the handler is not Python's to swap."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGINT)
    if previous is None:  # set from C: it could not be put back; leave it be
        return None
    noted: list[int] = []
    try:
        signal.signal(signal.SIGINT, lambda signum, frame: noted.append(signum))
    except (ValueError, OSError):  # no SIGINT handler to swap here
        return None
    return previous, noted


def _release_interrupts(held: tuple[Any, list[int]] | None) -> None:
    """Put the SIGINT handler back, then deliver a Ctrl-C that came meanwhile to it."""
    if held is None:
        return
    previous, noted = held
    signal.signal(signal.SIGINT, previous)
    if noted:
        signal.raise_signal(signal.SIGINT)


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _acquire(lock: threading.Lock, deadline: float | None, grace: float = 0.0) -> bool:
    """``lock`` within ``deadline`` (``None``: no limit), or ``grace`` seconds if that is later."""
    left = _left(deadline)
    return lock.acquire(timeout=-1 if left is None else max(left, grace))


def _take(queue: deque[Item], count: int) -> list[Item]:
    items: list[Item] = []
    popleft = queue.popleft
    try:
        for _ in range(count):
            items.append(popleft())
    except IndexError:  # fewer than ``count``
        pass
    return items


def _wait_readable(fd: int, timeout: float | None) -> bool:
    from datacat.pipe import wait_readable  # late: the child never waits for answers

    return wait_readable(fd, timeout)


def _reap() -> None:
    """Forget child processes that have ended (``poll`` reaps them: no zombies)."""
    _children[:] = [process for process in _children if process.poll() is None]


def _grow_pipe(fd: int) -> None:
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (ImportError, AttributeError, OSError):  # not Linux, or over the system's limit
        pass


def hello_options(config: Config) -> JSONDict:
    """The hello: the app's pid, and the options the child's sender is made with
    (``config.CHILD_OPTIONS``, resolved and checked here: the child reads no environment)."""
    from datacat.config import CHILD_OPTIONS  # imported by the app already

    return {"options": {name: getattr(config, name) for name in CHILD_OPTIONS}, "pid": os.getpid()}


# -- the child ------------------------------------------------------------------------------------


class Child:
    """The child's loop: items into the ordinary ``Worker``, flush requests answered, and at
    EOF the sessions the app left open crashed."""

    def __init__(self, worker: Worker, answers: IO[bytes], app_pid: Any = None) -> None:
        self.worker = worker
        self.answers = answers
        self.app_pid = app_pid
        self.open: set[str] = set()  # sessions created and not ended or crashed

    def serve(self, stream: IO[bytes]) -> None:
        for kind, payload in read_frames(stream):
            if kind == ITEMS:
                self.receive(decode_items(payload))
            elif kind == FLUSH:
                self.answer(json.loads(payload))
        self.app_gone()

    def receive(self, items: Iterable[Item]) -> None:
        worker = self.worker
        for item in items:
            op = item[0]
            if op == "create":
                self.open.add(item[1])
            elif op in ("end", "crash"):
                self.open.discard(item[1])
            if len(worker.queue) >= worker.maxsize:  # far behind: let the sender catch up
                worker.flush(worker.config.timeout)
            if not worker.put(item):  # still full: lost, and reported for its session
                worker.count_dropped(item[1] if isinstance(item[1], str) else "", counted=True)
        # A frame is a hand-over's worth: sent at once, not at the next ``flush_interval``, so
        # little waits here when the app asks for a flush (at its exit, say).
        worker.kick()

    def answer(self, request: JSONDict) -> None:
        timeout = request.get("timeout")
        ok = self.worker.flush(None if timeout is None else float(timeout))
        line = {"ticket": request.get("ticket"), "ok": ok, "pending": self.worker.pending()}
        line["stats"] = self.worker.stats
        try:
            self.answers.write(json.dumps(line).encode() + b"\n")
            self.answers.flush()
        except OSError:  # the app has gone
            pass

    def app_gone(self) -> None:
        """EOF: sessions still open were left by an app that died."""
        data = {"pid": self.app_pid, "detected_by": "datacat sender process"}
        for sid in sorted(self.open):
            body = {"reason": CRASH_REASON, "data": data, "timestamp": time.time()}
            self.worker.put(("crash", sid, body))
        self.open.clear()


def read_frames(stream: IO[bytes]) -> Iterable[tuple[bytes, bytes]]:
    """The frames of ``stream`` until EOF (a torn last frame, the app dying mid-write, ends it)."""
    while True:
        header = stream.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        kind, size = _HEADER.unpack(header)
        payload = stream.read(size)
        if len(payload) < size:
            return
        yield kind, payload


class _Options:
    """The child's ``Config``: the sender options of the app's, as its hello gave them (resolved
    and checked in the app). A stand-in, since the child's ``Worker`` reads no other option, and
    the child need not import ``datacat.config``."""

    def __init__(self, options: JSONDict) -> None:
        for name, value in options.items():
            setattr(self, name, value)


def child_config(hello: JSONDict) -> Config:
    """The child's options: the app's (``hello["options"]``), or, for a hello without them (not
    the app's, or no hello at all), what ``config.resolve`` makes of the options it names, with
    no environment."""
    options = hello.get("options")
    if isinstance(options, dict):
        return cast("Config", _Options(options))
    from datacat import config as config_module

    given = {name: hello.get(name) for name in config_module.CHILD_OPTIONS}
    return config_module.resolve(env={}, **given)


def main() -> int:
    """``python -m datacat.offload``: serve the app on stdin, then deliver the rest, exit."""
    stream = os.fdopen(0, "rb", closefd=False)
    answers = os.fdopen(1, "wb", closefd=False)
    kind, payload = next(iter(read_frames(stream)), (b"", b""))
    hello = json.loads(payload) if kind == HELLO else {}
    config = child_config(hello)
    worker = Worker(HttpTransport(config.url, config.api_key, config.timeout), config)
    child = Child(worker, answers, hello.get("pid"))
    try:
        child.serve(stream)
    except Exception:  # a bug here must still deliver what came in
        logger.debug("datacat: sender process failed", exc_info=True)
        child.app_gone()
    return 0 if worker.close(time.monotonic() + config.exit_timeout) else 1


def quick_exit(code: int) -> None:
    """Exit without the interpreter's teardown. Once ``main`` returns, everything is delivered
    or spooled (``Worker.close`` waits for the sender thread's last cycle, whose spool writes
    the exit would cut short), its files closed, and nothing is left to flush but log handlers.
    The teardown (~10 ms of CPU) would run just as the app's own exit does, which on a 2-core
    machine made a pytest run's exit ~10-15 ms slower (its interpreter's teardown, on the other
    core)."""
    if "logging" in sys.modules:  # only imported if something was logged
        sys.modules["logging"].shutdown()
    os._exit(code)


if __name__ == "__main__":
    quick_exit(main())
