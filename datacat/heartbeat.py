"""Heartbeats and the hang watchdog.

Owns ``HeartbeatThread`` (background heartbeats: "the process is alive") and ``HangMonitor``
plus the one watchdog thread per process that checks every monitor. A monitor exists only once
the application has called ``session.heartbeat()`` itself: that call says "my main loop is
turning". When it stops for longer than ``hang_timeout`` the session logs
``application_appears_hung`` with every thread's stack (the stack of the thread that used to beat
as the event's ``stacktrace``), and ``application_recovered`` at the next heartbeat. Background
heartbeats never feed the watchdog, or a hung main loop would never be noticed, and pause while
the session is hung, or the server would take them for the recovery.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from datacat import _internal
from datacat._internal import log_once, logger, swallow
from datacat.limits import HUNG_EVENT, RECOVERED_EVENT

_MIN_CHECK = 0.02
_MAX_CHECK = 1.0


class _Beating(Protocol):
    def log_event(self, name: str, data: Any = None, **fields: Any) -> None: ...

    def background_heartbeat(self) -> None: ...


def thread_stacks(skip: int | None = None) -> dict[str, list[str]]:
    """Every thread's current stack as text lines, keyed ``"name (ident)"``."""
    names = {t.ident: t.name for t in threading.enumerate()}
    stacks = {}
    for ident, frame in sys._current_frames().items():
        if ident == skip:
            continue
        key = f"{names.get(ident, 'unknown')} ({ident})"
        stacks[key] = [line.rstrip("\n") for line in traceback.format_stack(frame)]
    return stacks


class HangMonitor:
    """Hang state of one session; ``beat`` is called on the app's thread, ``check`` by the
    watchdog."""

    def __init__(self, session: _Beating, timeout: float) -> None:
        self._session = weakref.ref(session)
        self.timeout = timeout
        self.last = time.monotonic()
        self.thread_id = threading.get_ident()
        self.paused = False
        self.hung = False
        self._lock = threading.Lock()

    def beat(self) -> None:
        self.last = time.monotonic()
        self.thread_id = threading.get_ident()
        if watchdog.thread is None:  # a forked child's first beat: it needs its own watchdog
            watchdog.add(self)
        if self.hung:
            self._recovered()

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.last = time.monotonic()
        self.paused = False

    def check(self, now: float) -> None:
        if self.paused or self.hung or now - self.last <= self.timeout:
            return
        session = self._session()
        if session is None:
            return
        stacks = thread_stacks(skip=threading.get_ident())  # slow: before taking the lock
        stuck = next((v for k, v in stacks.items() if k.endswith(f"({self.thread_id})")), [])
        data = {
            "seconds_since_heartbeat": round(now - self.last, 3),
            "hang_timeout": self.timeout,
            "threads": stacks,
        }
        with self._lock:  # flag and event together: see ``unless_hung``
            if self.hung or self.paused or time.monotonic() - self.last <= self.timeout:
                return  # it beat (or was paused) while the stacks were taken
            self.hung = True
            session.log_event(HUNG_EVENT, data, level="error", category="hang", stacktrace=stuck)

    def unless_hung(self, send: Callable[[], None]) -> None:
        """Run ``send`` (a background heartbeat) only while not hung, atomically with the hang
        and recovery events: a heartbeat queued after the hang event and before the recovery
        would make the server log a recovery of its own."""
        with self._lock:
            if not self.hung:
                send()

    def _recovered(self) -> None:
        session = self._session()
        with self._lock:
            if not self.hung:
                return
            self.hung = False
            if session is not None:
                session.log_event(
                    RECOVERED_EVENT, {"hang_timeout": self.timeout}, level="info", category="hang"
                )


class _Watchdog:
    """One thread per process checking every monitor a few times per ``hang_timeout``."""

    def __init__(self) -> None:
        self.monitors: weakref.WeakSet[HangMonitor] = weakref.WeakSet()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.wake = threading.Event()

    def add(self, monitor: HangMonitor) -> None:
        with self.lock:
            self.monitors.add(monitor)
            if self.thread is None and _internal.may_start_thread():
                self.thread = threading.Thread(
                    target=self._run, name="datacat-watchdog", daemon=True
                )
                self.thread.start()
        self.wake.set()

    def adopt(self, monitors: list[HangMonitor]) -> None:
        """Watch ``monitors`` once the thread runs (started by the next ``add``)."""
        for monitor in monitors:
            self.monitors.add(monitor)

    def discard(self, monitor: HangMonitor) -> None:
        self.monitors.discard(monitor)

    def _run(self) -> None:
        while True:
            self.wake.wait(self._interval())
            self.wake.clear()
            self._check_all()

    def _interval(self) -> float:
        timeouts = [m.timeout for m in list(self.monitors)]
        return min(_MAX_CHECK, max(_MIN_CHECK, min(timeouts, default=_MAX_CHECK) / 4))

    @swallow()
    def _check_all(self) -> None:
        now = time.monotonic()
        for monitor in list(self.monitors):
            monitor.check(now)


watchdog = _Watchdog()


def _after_fork() -> None:
    """In a forked child: the parent's watchdog thread does not exist here. The sessions it
    watched are the child's too (same objects), so a new watchdog watches them, started at the
    child's first beat; their locks are new (the parent's watchdog may have held one)."""
    global watchdog
    inherited = list(watchdog.monitors)
    for monitor in inherited:
        monitor._lock = threading.Lock()
        monitor.last = time.monotonic()  # the child's main loop has just begun turning
    watchdog = _Watchdog()
    watchdog.adopt(inherited)


os.register_at_fork(after_in_child=_after_fork)


class HeartbeatThread:
    """Sends a heartbeat every ``interval`` seconds until stopped."""

    def __init__(self, session: _Beating, interval: float) -> None:
        self._session = weakref.ref(session)
        self.interval = interval
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="datacat-heartbeat", daemon=True)

    def start(self) -> bool:
        if not _internal.may_start_thread():
            return False
        self.thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            session = self._session()
            if session is None:
                return
            try:  # a ``blocking=True`` session raises when the server is unreachable
                session.background_heartbeat()
            except Exception as exc:
                log_once("heartbeat", "datacat: background heartbeat failed (%s); retrying", exc)
                logger.debug("datacat: background heartbeat failed", exc_info=True)
            del session
