"""Retention: deletes old finished sessions and old applied-operation ids, if asked to.

Off by default. With ``DATACAT_RETENTION_DAYS`` (``datacat server --retention-days N``) set,
sessions that ended or crashed more than N days ago are deleted with all their rows; sessions
still open (active, suspended or hung) are never deleted, however old. Ids of applied batch
operations kept in ``applied_ops`` are pruned after ``OP_ID_WINDOW`` (30 days, and never before
the retention period): longer than any client retries or keeps a spooled batch in practice, so
a retried batch still never duplicates. (Event and metric op ids live in their rows and go with
their session.)

No timer runs: each worker process runs a pass at most once per ``EVERY`` seconds, after a
write request's response has been sent, in the same process. A pass deletes at most
``MAX_SESSIONS`` sessions and ``MAX_OP_IDS`` op ids; when it hit a bound, the next pass may run
after ``BACKLOG_EVERY`` seconds instead, so a backlog drains without one long pass.
"""

from __future__ import annotations

import logging
import threading
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from datacat.model import now
from datacat_server.schema import (
    applied_ops,
    events,
    metrics,
    sessions,
    state_updates,
    state_values,
)
from datacat_server.storage import Storage

DAY = 86_400.0
OP_ID_WINDOW = 30 * DAY
EVERY = 3_600.0
BACKLOG_EVERY = 60.0
MAX_SESSIONS = 200
MAX_OP_IDS = 50_000

log = logging.getLogger(__name__)


class Pruned(NamedTuple):
    """What one pass deleted; at a bound (``MAX_*``) more may be left for the next pass."""

    sessions: int
    op_ids: int


class Retention:
    """The retention rule of one process; ``days`` None keeps everything."""

    def __init__(self, days: float | None) -> None:
        self.keep = days * DAY if days else None
        self._next = 0.0
        self._lock = threading.Lock()

    def after_write(self, store: Storage) -> None:
        """Run a pass if one is due (called after a write's response went out); never raises."""
        if self.keep is None or now() < self._next or not self._lock.acquire(blocking=False):
            return
        try:
            self._next = now() + EVERY
            sessions, op_ids = prune(store, now(), self.keep)
            if sessions >= MAX_SESSIONS or op_ids >= MAX_OP_IDS:
                self._next = now() + BACKLOG_EVERY
        except Exception:  # retention must never break the server; the next pass retries
            log.exception("retention pass failed")
        finally:
            self._lock.release()


def prune(store: Storage, at: float, keep: float) -> Pruned:
    """Delete sessions finished before ``at - keep`` and op ids older than the window."""
    with store.write() as conn:
        done = _prune_sessions(conn, at - keep)
        op_ids = _prune_op_ids(conn, at - max(OP_ID_WINDOW, keep))
    return Pruned(done, op_ids)


def _prune_sessions(conn: Connection, before: float) -> int:
    """Finished sessions (``ended_at`` is set by end and by crash) only, oldest first."""
    old = (
        sa.select(sessions.c.id)
        .where(sessions.c.ended_at.is_not(None), sessions.c.ended_at < before)
        .order_by(sessions.c.ended_at)
        .limit(MAX_SESSIONS)
    )
    ids = list(conn.scalars(old))
    if ids:
        for table in (events, metrics, state_updates, state_values):
            conn.execute(table.delete().where(table.c.session_id.in_(ids)))
        conn.execute(sessions.delete().where(sessions.c.id.in_(ids)))
    return len(ids)


def _prune_op_ids(conn: Connection, before: float) -> int:
    old = sa.select(applied_ops.c.op_id).where(applied_ops.c.applied_at < before)
    query = applied_ops.delete().where(applied_ops.c.op_id.in_(old.limit(MAX_OP_IDS)))
    return conn.execute(query).rowcount
