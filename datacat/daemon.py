"""The local daemon: forwards an app's batches and reports when the app dies or hangs.

``datacat daemon`` is started by ``datacat.pipe.PipeTransport`` as a detached child of the app,
reading the pipe protocol of ``datacat.pipe`` on stdin. It forwards every operation with the
client's own sender (``datacat.worker.Worker``: batching, retry with backoff, disk spool) and
watches the sessions it has seen:

- the pipe closes while sessions are not ended (SIGKILL, ``os._exit``, a segfault): each gets
  ``/crash`` with reason ``parent_process_terminated`` at once;
- a session's heartbeats stop while the pipe is open (stopped, frozen, stuck holding the GIL):
  ``application_appears_hung`` after ``hang_timeout``, ``application_recovered`` on the next one.

The daemon owns a session's hang state: the app's own watchdog (``datacat.heartbeat``) sees the
hangs it cannot (a main loop stuck while background heartbeats go on) and reports them with
every thread's stack, and after a SIGSTOP/SIGCONT both would report the same hang. So an app's
hang event for a session the daemon already reported hung, or an app's recovery for one it does
not hold hung, is a duplicate and is not forwarded; so is a heartbeat the app made before the
daemon's hang report and delivered after it. One hang event and one recovery per hang.

It writes to no pipe (its stdout and stderr are ``/dev/null``; it logs to ``--log-file`` if
given), so it cannot block on one. After the pipe closes it keeps delivering until everything
has reached the server, or for ``linger`` seconds while the server is down (what is still
undelivered then stays in the spool for the next DataCat process), and exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any

from datacat import config as config_module
from datacat.config import Config
from datacat.limits import HUNG_EVENT, PARENT_TERMINATED, RECOVERED_EVENT
from datacat.pipe import HELLO_OPTIONS
from datacat.transport import HttpTransport
from datacat.worker import Worker, wire

JSONDict = dict[str, Any]

CRASH_REASON = PARENT_TERMINATED
#: Seconds the daemon keeps retrying after the app has gone, while the server is down.
DEFAULT_LINGER = 300.0

log = logging.getLogger("datacat.daemon")


@dataclass
class Watch:
    """What the daemon knows of one open session's heartbeats."""

    last_heartbeat: float | None = None  # monotonic; None until the first heartbeat
    hung: bool = False
    hung_at: float = 0.0  # wall clock of the daemon's hang report

    def stale(self, sent: Any) -> bool:
        """A heartbeat made before the daemon reported the hang, delivered late (the app's
        sender was stopped with it): no sign of recovery, and the server would take it for
        one, so it is not forwarded."""
        return self.hung and isinstance(sent, int | float) and sent < self.hung_at

    def beat(self, now: float) -> float | None:
        """A heartbeat arrived; the seconds of silence if the session had been reported hung."""
        silent = now - self.last_heartbeat if self.hung and self.last_heartbeat else None
        self.last_heartbeat, self.hung = now, False
        return silent

    def app_reported(self, name: str, now: float) -> bool:
        """The app's watchdog sent a hang or recovery event ``name``: False if it is a
        duplicate (already hung / not hung), else True and the state follows it."""
        if name not in (HUNG_EVENT, RECOVERED_EVENT):
            return True
        hung = name == HUNG_EVENT
        if self.hung == hung:
            return False
        self.hung, self.hung_at = hung, 0.0
        if not hung:
            self.last_heartbeat = now  # alive: the heartbeat behind it may come in a later line
        return True

    def newly_hung(self, now: float, timeout: float) -> float | None:
        """The seconds of silence when this check is the first to find the session hung."""
        last = self.last_heartbeat
        if last is None or self.hung or now - last <= timeout:
            return None
        self.hung, self.hung_at = True, time.time()
        return now - last


class Daemon:
    """Session bookkeeping between the pipe and the sender (``receive`` / ``check_hangs``)."""

    def __init__(self, config: Config, worker: Worker, app_pid: int | None = None) -> None:
        self.config = config
        self.worker = worker
        self.app_pid = app_pid
        self.watches: dict[str, Watch] = {}
        self._lock = threading.Lock()

    def receive(self, operations: Iterable[JSONDict]) -> None:
        """Track and forward one batch from the app (in order, with daemon-made events inserted)."""
        out: list[JSONDict] = []
        with self._lock:
            for op in operations:
                out.extend(self._track(op, time.monotonic()))
        self.worker.put_operations(out)

    def _track(self, op: JSONDict, now: float) -> list[JSONDict]:
        """Update the session's watch; what to forward for ``op`` (it, nothing, or a recovery
        event and it)."""
        sid, kind = str(op.get("session_id", "")), op.get("op")
        if kind in ("end", "crash"):
            self.watches.pop(sid, None)
            return [op]
        watch = self.watches.setdefault(sid, Watch())
        if kind == "event":
            return [op] if watch.app_reported(_field(op, "name"), now) else []
        if kind == "heartbeat" and watch.stale(_field(op, "timestamp")):
            return []
        silent = watch.beat(now) if kind == "heartbeat" else None
        if silent is None:
            return [op]
        return [self._event(sid, RECOVERED_EVENT, "info", silent), op]

    def check_hangs(self) -> int:
        """Report sessions whose heartbeats stopped ``hang_timeout`` ago; how many were new."""
        now, timeout = time.monotonic(), self.config.hang_timeout
        with self._lock:
            found = [(sid, w.newly_hung(now, timeout)) for sid, w in self.watches.items()]
        hung = [self._event(sid, HUNG_EVENT, "error", silent) for sid, silent in found if silent]
        if hung:
            self.worker.put_operations(hung)
            self.worker.kick()
        return len(hung)

    def app_gone(self) -> int:
        """The pipe closed: crash every session that was not ended; how many."""
        with self._lock:
            crashed = [self._crash(sid) for sid in self.watches]
            self.watches.clear()
        self.worker.put_operations(crashed)
        return len(crashed)

    def deliver(self, linger: float) -> bool:
        """Flush until everything is delivered or ``linger`` seconds passed; True if delivered."""
        deadline = time.monotonic() + linger
        pause = self.config.flush_interval
        while True:
            left = deadline - time.monotonic()
            if self.worker.flush(timeout=max(0.0, min(left, self.config.timeout * 2))):
                return True
            if left <= 0:
                return False
            time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
            pause = min(pause * 2, self.config.max_backoff)

    def _event(self, sid: str, name: str, level: str, silent: float) -> JSONDict:
        data = {"silent_seconds": round(silent, 3), "pid": self.app_pid}
        body = {"name": name, "level": level, "category": "daemon", "timestamp": time.time()}
        return wire("event", sid, {**body, "data": data})

    def _crash(self, sid: str) -> JSONDict:
        data = {"pid": self.app_pid, "detected_by": "datacat daemon"}
        return wire("crash", sid, {"reason": CRASH_REASON, "data": data, "timestamp": time.time()})


def _field(op: JSONDict, name: str) -> Any:
    data = op.get("data")
    return data.get(name) if isinstance(data, dict) else None


def read_hello(stream: IO[bytes]) -> JSONDict:
    """The first line of the pipe: the app's options (empty if the app died before sending)."""
    try:
        hello = json.loads(stream.readline() or b"{}").get("hello", {})
    except ValueError:
        return {}
    return hello if isinstance(hello, dict) else {}


def config_from(hello: JSONDict) -> Config:
    """The daemon's options: exactly the app's, never the daemon's own environment."""
    options = {name: hello.get(name) for name in HELLO_OPTIONS}
    return config_module.resolve(env={}, **options)


def serve(daemon: Daemon, stream: IO[bytes]) -> None:
    """Read batches until the pipe closes; a watchdog thread checks heartbeats meanwhile."""
    stop = threading.Event()
    interval = min(0.25, daemon.config.hang_timeout / 4)
    watchdog = threading.Thread(
        target=_watch, args=(daemon, stop, interval), name="datacat-daemon-watchdog", daemon=True
    )
    watchdog.start()
    for line in stream:
        operations = _operations(line)
        if operations:
            daemon.receive(operations)
    stop.set()
    daemon.app_gone()


def _watch(daemon: Daemon, stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        try:
            daemon.check_hangs()
        except Exception:
            log.exception("datacat daemon: hang check failed")


def _operations(line: bytes) -> list[JSONDict]:
    """The operations of one line; a torn or foreign line (the app died mid-write) is skipped."""
    try:
        message = json.loads(line)
    except ValueError:
        log.warning("datacat daemon: skipped a malformed line (%d bytes)", len(line))
        return []
    operations = message.get("operations") if isinstance(message, dict) else None
    if not isinstance(operations, list):
        return []
    return [op for op in operations if isinstance(op, dict)]


def _setup_logging(log_file: str | None) -> None:
    if log_file:
        logging.basicConfig(
            filename=log_file,
            level=logging.INFO,
            format=f"%(asctime)s datacat-daemon[{os.getpid()}] %(levelname)s %(message)s",
        )


def main(args: argparse.Namespace) -> int:
    """``datacat daemon``: serve the pipe on stdin, then deliver what is left, then exit."""
    _setup_logging(getattr(args, "log_file", None))
    stream = os.fdopen(0, "rb", closefd=False)
    hello = read_hello(stream)
    config = config_from(hello)
    worker = Worker(HttpTransport(config.url, config.api_key, config.timeout), config)
    daemon = Daemon(config, worker, hello.get("pid"))
    log.info("serving app pid %s, forwarding to %s", daemon.app_pid, config.url)
    serve(daemon, stream)
    delivered = daemon.deliver(float(getattr(args, "linger", None) or DEFAULT_LINGER))
    log.info("app gone; delivered=%s stats=%s", delivered, worker.stats)
    return 0 if delivered else 1
