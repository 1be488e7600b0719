"""The offline spool: batches that could not be delivered, kept on disk until they can.

Owns the spool directory (per user, ``~/.cache/datacat/spool`` by default, mode 0700), one JSON
file per batch written atomically (temporary file, then rename), names that sort in the order
the batches were made, a byte bound (a batch that would pass it is refused and counted), the
replay of the files in order (by the sender, by the next process, or by ``datacat upload``), and
a per-process advisory lock so two processes do not replay the same files at once. Batches carry
their ``op_id``s, so a file sent twice (a crash between send and delete) is skipped by the server.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datacat._internal import Record, log_once, logger
from datacat.transport import Transport

if TYPE_CHECKING:
    import argparse

    from datacat.config import Config

JSONDict = dict[str, Any]
SUFFIX = ".batch.json"
STALE_TEMPORARY = 600.0  # seconds


class ReplayResult(Record):
    """What one replay did: files sent, operations the server refused, whether all went."""

    __slots__ = ("sent", "rejected", "complete", "busy")  # noqa: RUF023 (repr shows this order)

    def __init__(
        self, sent: int = 0, rejected: int = 0, complete: bool = True, busy: bool = False
    ) -> None:
        self.sent = sent
        self.rejected = rejected
        self.complete = complete
        self.busy = busy  # another process holds the replay lock


class Spool:
    """A directory of undelivered batches."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.refused = 0
        self._seq = itertools.count()
        self._last_ns = 0
        self._lock = threading.Lock()
        self._size: int | None = None
        self.url: str | None = None

    @classmethod
    def for_url(cls, config: Config) -> Spool:
        """The spool of one server: a sub-directory of ``config.spool_dir`` per URL, which
        records the URL so ``datacat upload`` knows where its batches go."""
        digest = hashlib.sha256(config.url.encode()).hexdigest()[:16]
        spool = cls(Path(config.spool_dir) / digest, config.spool_max_bytes)
        spool.url = config.url
        return spool

    def write(self, operations: list[JSONDict]) -> bool:
        """Store one batch; False (and counted) when the bound or the disk refuses it."""
        data = json.dumps({"operations": operations}, allow_nan=False).encode()
        if self._size is None:
            self._size = self.size()
        if self._size + len(data) > self.max_bytes:
            self.refused += len(operations)
            log_once("spool-full", "datacat: spool %s is full; dropping data", self.directory)
            return False
        try:
            self._atomic_write(self._next_name(), data)
            self._size += len(data)
        except OSError as exc:
            self.refused += len(operations)
            log_once("spool-write", "datacat: cannot write spool %s: %s", self.directory, exc)
            return False
        return True

    def files(self) -> list[Path]:
        """Spooled batches, oldest first."""
        try:
            return sorted(p for p in self.directory.iterdir() if p.name.endswith(SUFFIX))
        except OSError:
            return []

    def has_files(self) -> bool:
        try:
            with os.scandir(self.directory) as entries:
                return any(e.name.endswith(SUFFIX) for e in entries)
        except OSError:
            return False

    def size(self) -> int:
        total = 0
        for path in self.files():
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        return total

    def read(self, path: Path) -> list[JSONDict] | None:
        """The operations of one file; None (and the file set aside) when it is unreadable."""
        try:
            operations = json.loads(path.read_bytes())["operations"]
            if isinstance(operations, list):
                return operations
        except FileNotFoundError:
            return None  # another process replayed it meanwhile
        except (OSError, ValueError, KeyError, TypeError):
            pass
        log_once(f"spool-bad:{path}", "datacat: unreadable spool file %s set aside", path)
        with contextlib.suppress(OSError):
            path.rename(path.with_suffix(".bad"))
        return None

    def remove(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    @contextlib.contextmanager
    def replay_lock(self) -> Iterator[bool]:
        """Yields True when this process may replay now (no other process is replaying)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            yield False
            return
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            yield False
            return
        try:
            yield True
        finally:
            os.close(fd)  # closing releases the lock

    def replay(
        self, transport: Transport, timeout: float | None = None, deadline: float | None = None
    ) -> ReplayResult:
        """Send the files in order until one fails in a way a retry may fix, or ``deadline``
        (monotonic) passes; each request waits at most ``timeout`` and what is left of that."""
        result = ReplayResult()
        self._size = None  # other processes may have written or replayed: count again later
        with self.replay_lock() as mine:
            if not mine:
                return ReplayResult(complete=False, busy=True)
            self._remove_stale_temporaries()
            for path in self.files():
                wait = bounded_timeout(timeout, deadline)
                if wait == 0.0 or not self._replay_one(path, transport, wait, result):
                    result.complete = False
                    break
        return result

    def _replay_one(
        self, path: Path, transport: Transport, timeout: float | None, result: ReplayResult
    ) -> bool:
        operations = self.read(path)
        if operations is None:
            return True
        answer = transport.send_batch(operations, timeout=timeout)
        if answer.retryable:
            return False
        if not answer.delivered:
            log_once(
                f"spool-rejected:{answer.status}",
                "datacat: server refused a spooled batch (%s %s); dropped it",
                answer.status,
                answer.error,
            )
        result.rejected += len(answer.failed) if answer.delivered else len(operations)
        result.sent += 1
        self.remove(path)
        return True

    def _remove_stale_temporaries(self) -> None:
        """Half-written files of a process killed while spooling (they never became batches)."""
        for path in self.directory.glob(".tmp-*"):
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime > STALE_TEMPORARY:
                    path.unlink()

    def _next_name(self) -> str:
        with self._lock:
            self._last_ns = max(time.time_ns(), self._last_ns + 1)
            return f"{self._last_ns:020d}-{os.getpid()}-{next(self._seq):06d}{SUFFIX}"

    def _atomic_write(self, name: str, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.url is not None and not (self.directory / "url").exists():
            (self.directory / "url").write_text(self.url)
        import tempfile  # late: ~20 ms to import, and most processes never spool

        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.directory / name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def bounded_timeout(timeout: float | None, deadline: float | None) -> float | None:
    """A request's timeout: ``timeout``, cut to what is left until ``deadline`` (monotonic);
    0.0 when the deadline has passed (send nothing more)."""
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        return 0.0
    return left if timeout is None else min(timeout, left)


def spools(spool_dir: str, max_bytes: int) -> list[Spool]:
    """Every per-server spool below ``spool_dir`` (each knows its URL)."""
    found = []
    for url_file in sorted(Path(spool_dir).glob("*/url")):
        with contextlib.suppress(OSError):
            spool = Spool(url_file.parent, max_bytes)
            spool.url = url_file.read_text().strip()
            found.append(spool)
    return found


def upload_command(args: argparse.Namespace) -> int:
    """``datacat upload``: replay spooled batches now; exit 1 if any are left."""
    from datacat import config as config_module
    from datacat.transport import HttpTransport

    config = config_module.resolve(url=args.url, api_key=args.api_key, spool_dir=args.spool_dir)
    left = 0
    for spool in spools(config.spool_dir, config.spool_max_bytes):
        if args.url and spool.url != config.url:
            continue
        before = len(spool.files())
        transport = HttpTransport(spool.url or config.url, config.api_key, config.timeout)
        result = spool.replay(transport)
        remaining = len(spool.files())
        left += remaining
        print(
            f"{spool.url}: sent {result.sent} of {before} batches, {result.rejected} "
            f"operations refused, {remaining} left"
        )
    if left:
        logger.warning("datacat upload: %d batches left (server unreachable?)", left)
    return 0 if left == 0 else 1
