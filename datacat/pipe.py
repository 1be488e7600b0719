"""The app's side of the local daemon: ``PipeTransport`` and the pipe's line protocol.

``PipeTransport`` is a ``datacat.transport.Transport``: the client's sender hands it batches as
it would to ``HttpTransport``, and it writes them to the stdin pipe of a detached
``datacat daemon`` process (started on first use, in its own session so a signal to the app's
process group does not reach it, with no output pipe at all so it can never block on one).
Writes never block the app: the pipe is non-blocking (the sender thread waits at most
``PARTIAL_WAIT`` for a daemon that is just behind; at exit, when the sender passes a ``timeout``,
that long instead), a batch the pipe cannot take is answered as
retryable (the sender keeps it, retries, spools), and what a full pipe took only in part is
finished before anything else is written. If the daemon is gone the batches go over HTTP.

The protocol is one JSON object per line: first ``{"hello": {...}}`` with the options the daemon
needs (``HELLO_OPTIONS``), then ``{"operations": [...]}`` per batch, exactly as ``/api/batch``
takes them. The app's end of the pipe closing is the daemon's crash signal.
"""

from __future__ import annotations

import errno
import json
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from typing import Any

from datacat._internal import lazy_logger
from datacat.config import Config
from datacat.transport import BatchResult, HttpTransport

JSONDict = dict[str, Any]

#: Options of ``Config`` the daemon needs to forward, spool and watch like the app would.
HELLO_OPTIONS = (
    "url",
    "api_key",
    "timeout",
    "batch_size",
    "flush_interval",
    "queue_size",
    "spool_dir",
    "spool_max_bytes",
    "exit_timeout",
    "hang_timeout",
    "max_backoff",
)
#: Environment variable naming a file the daemon logs to (default: it logs nowhere).
LOG_ENV = "DATACAT_DAEMON_LOG"
#: Status of a batch the pipe could not take right now: retryable, like "no answer".
PIPE_FULL = 0
#: Seconds the sender thread (never the app's) waits for a daemon that is just behind.
PARTIAL_WAIT = 0.05

log = lazy_logger("datacat.pipe")

_transports: weakref.WeakSet[PipeTransport] = weakref.WeakSet()


def hello(config: Config) -> bytes:
    """The first line the daemon reads: its options and the app's process id."""
    options = {name: getattr(config, name) for name in HELLO_OPTIONS}
    return encode({"hello": {**options, "pid": os.getpid()}})


def encode(message: JSONDict) -> bytes:
    return json.dumps(message, allow_nan=False, separators=(",", ":")).encode() + b"\n"


def daemon_command() -> list[str]:
    command = [sys.executable, "-m", "datacat.cli", "daemon"]
    log_file = os.environ.get(LOG_ENV)
    return [*command, "--log-file", log_file] if log_file else command


def daemon_environment() -> dict[str, str]:
    """The app's environment minus what would instrument the daemon itself."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATACAT_RUN", "DATACAT_DAEMON")}
    bootstrap = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bootstrap")
    kept = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != bootstrap]
    env["PYTHONPATH"] = os.pathsep.join(kept)
    return env


def spawn_daemon() -> subprocess.Popen[bytes]:
    """Start ``datacat daemon`` detached: own session, stdin a pipe, no output pipes."""
    return subprocess.Popen(
        daemon_command(),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
        env=daemon_environment(),
    )


def wait_writable(fd: int, timeout: float | None) -> bool:
    """Wait at most ``timeout`` seconds (``None``: no limit) until ``fd`` can be written."""
    return _wait(fd, select.POLLOUT if _POLL else 0, timeout)


def wait_readable(fd: int, timeout: float | None) -> bool:
    """Wait at most ``timeout`` seconds until ``fd`` can be read (or its writer has gone)."""
    return _wait(fd, select.POLLIN if _POLL else 1, timeout)


_POLL = hasattr(select, "poll")


def _wait(fd: int, event: int, timeout: float | None) -> bool:
    # ``poll``: ``select`` refuses descriptors over 1023, which a busy server has
    if not _POLL:  # Windows: no poll (and no non-blocking pipes either)
        readers, writers = ([fd], []) if event else ([], [fd])
        return bool(select.select(readers, writers, [], timeout)[0 if event else 1])
    poller = select.poll()
    poller.register(fd, event)
    return bool(poller.poll(None if timeout is None else math.ceil(timeout * 1000)))


def _write(fd: int, data: bytes) -> int:
    """``os.write`` that reports a reader gone as ``BrokenPipeError`` even when the program
    restored SIGPIPE's default action (which would kill it): the signal is blocked on this
    thread for the write and a pending one is taken back."""
    if _SIGPIPE is None or signal.getsignal(_SIGPIPE) != signal.SIG_DFL:
        return os.write(fd, data)  # Python's own default: ignored, EPIPE raises
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {_SIGPIPE})
    try:
        return os.write(fd, data)
    except BrokenPipeError:
        signal.sigtimedwait({_SIGPIPE}, 0)
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


_SIGPIPE = getattr(signal, "SIGPIPE", None) if hasattr(signal, "pthread_sigmask") else None


class Outlet:
    """The app's non-blocking write end of a pipe: what the pipe could not take yet waits in
    ``pending``, in order, and goes first. Writing never blocks; ``drain`` waits (``poll``) at
    most as long as it is told. A closed reader (EPIPE) or another error makes it ``broken``."""

    def __init__(self, fd: int, reader: str = "local daemon") -> None:
        os.set_blocking(fd, False)
        self.reader = reader  # named in the warning when it goes
        self.fd: int | None = fd
        self.pending = b""
        self.broken = False

    def push(self) -> bool:
        """Write what is pending without waiting; True when all of it went in."""
        try:
            while self.pending:
                sent = _write(self.fd, self.pending)  # type: ignore[arg-type]
                self.pending = self.pending[sent:]
        except BlockingIOError:
            return False
        except (OSError, TypeError) as exc:  # TypeError: closed meanwhile (fd None)
            self._lost(exc)
            return False
        return True

    def drain(self, timeout: float | None) -> bool:
        """Write what is pending, waiting at most ``timeout`` seconds (``None``: no limit) for
        the reader."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.push():
            left = None if deadline is None else deadline - time.monotonic()
            if self.fd is None or self.broken or (left is not None and left <= 0):
                return False
            wait_writable(self.fd, left)
        return True

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.fd = None
        self.broken = True

    def forget(self) -> None:
        """In a forked child: close the inherited end (the parent's reader must still see EOF
        when the parent ends) and write nothing more."""
        self.close()
        self.pending = b""

    def _lost(self, exc: BaseException) -> None:
        if isinstance(exc, OSError) and exc.errno == errno.EPIPE:
            log.warning("datacat: the %s has gone; sending directly", self.reader)
        else:
            log.warning(
                "datacat: writing to the %s failed (%s); sending directly", self.reader, exc
            )
        self.broken = True
        self.pending = b""


class PipeTransport:
    """Hands batches to a local daemon through a non-blocking pipe (see the module docstring)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.dropped_writes = 0  # batches the full pipe refused (then retried by the sender)
        self._lock = threading.Lock()
        self._outlet: Outlet | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._pid = os.getpid()
        self._broken = False
        self._http: HttpTransport | None = None
        _transports.add(self)

    def send_batch(self, operations: list[JSONDict], timeout: float | None = None) -> BatchResult:
        wait = PARTIAL_WAIT if timeout is None else max(PARTIAL_WAIT, timeout)
        with self._lock:
            if self._usable():
                written = self._write(encode({"operations": operations}), wait)
                if written:
                    return BatchResult(200, applied=len(operations))
                if not self._dead():
                    self.dropped_writes += 1
                    return BatchResult(PIPE_FULL, error="daemon pipe full")
        return self._fallback().send_batch(operations, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Finish a partly written line (bounded wait), then close our end: the daemon's EOF."""
        with self._lock:
            if self._outlet is not None and os.getpid() == self._pid:
                self._outlet.drain(self.config.exit_timeout if timeout is None else timeout)
                self._outlet.close()
            self._outlet = None
            self._broken = True  # what comes after close goes over HTTP, never to a new daemon
        if self._http is not None:
            self._http.close()

    @property
    def daemon_pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _forget_after_fork(self) -> None:
        """In a forked child: close the inherited end, or the parent's death would go unseen.
        The lock is new: the parent's sender may have held it at fork time, and it would stay
        held here forever (the child's sender blocked in ``send_batch``)."""
        self._lock = threading.Lock()
        if self._outlet is not None:
            self._outlet.forget()
        self._outlet, self._process, self._pid = None, None, os.getpid()
        self._broken = True  # the child's batches go over HTTP

    def _usable(self) -> bool:
        if self._outlet is None and not self._broken:
            self._start()
        return self._outlet is not None and not self._dead()

    def _dead(self) -> bool:
        """Never to be written again: closed, forked, failed to start, or the daemon gone."""
        return self._broken or (self._outlet is not None and self._outlet.broken)

    def _start(self) -> None:
        try:
            self._process = spawn_daemon()
        except (OSError, RuntimeError, ValueError) as exc:  # e.g. at interpreter shutdown
            log.warning("datacat: cannot start the local daemon (%s); sending directly", exc)
            self._broken = True
            return
        assert self._process.stdin is not None
        self._outlet = Outlet(os.dup(self._process.stdin.fileno()))
        self._process.stdin.close()
        self._outlet.pending = hello(self.config)

    def _write(self, line: bytes, wait: float) -> bool:
        """True when ``line`` went into the pipe whole within ``wait`` seconds. A line the pipe
        took only in part stays pending and is finished before anything else (the stream must
        stay parseable); the batch is still answered "retry", and its ``op_id``s make the
        second copy harmless."""
        outlet = self._outlet
        assert outlet is not None
        deadline = time.monotonic() + wait
        if outlet.pending and not outlet.drain(wait):
            return False
        outlet.pending = line
        if outlet.drain(max(0.0, deadline - time.monotonic())):
            return True
        if len(outlet.pending) == len(line):
            outlet.pending = b""  # none of it went in: the sender retries it whole
        return False

    def _fallback(self) -> HttpTransport:
        if self._http is None:
            config = self.config
            self._http = HttpTransport(config.url, config.api_key, config.timeout)
        return self._http


def _after_fork_in_child() -> None:
    for transport in list(_transports):
        transport._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
