"""``POST /api/batch``: many operations for many sessions, applied in order in one transaction.

Each operation carries a client-made ``op_id``; ids already applied (in an earlier batch or
earlier in this one) are skipped, so a retried batch never duplicates data. Runs of plain events
and metrics are inserted with one ``executemany`` each, which is what makes batching fast.
Validation and unknown-session failures are reported per operation; the rest still applies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from datacat.errors import ValidationError
from datacat.model import JSONDict, Operation, now, parse_operation_data
from datacat_server import storage
from datacat_server.schema import applied_ops, sessions

_CHUNK = 500  # bound the number of bound parameters of one IN (...) query


@dataclass(frozen=True)
class _Valid:
    """An operation whose ``data`` passed validation (done before the write lock is taken)."""

    index: int
    op: Operation
    data: Any


@dataclass
class _Run:
    """State of one batch while it applies."""

    conn: Connection
    heartbeat_timeout: float
    known: set[str]
    seen: set[str]
    failed: list[JSONDict]
    applied: list[str] = field(default_factory=list)
    duplicates: int = 0
    event_rows: list[JSONDict] = field(default_factory=list)
    metric_rows: list[JSONDict] = field(default_factory=list)

    def flush(self) -> None:
        storage.add_events(self.conn, self.event_rows)
        storage.add_metrics(self.conn, self.metric_rows)
        self.event_rows, self.metric_rows = [], []


def _failure(index: int, op_id: str | None, status: int, error: str, details: str) -> JSONDict:
    return {"index": index, "op_id": op_id, "status": status, "error": error, "details": details}


def apply_batch(store: storage.Storage, items: list[Operation | ValidationError]) -> JSONDict:
    """Apply the parsed operations; answer the ``POST /api/batch`` body."""
    try:
        return _apply_once(store, items)
    except store.engine.dialect.loaded_dbapi.IntegrityError:
        # A copy of this batch (a client's retry while the first try was in flight) committed
        # the same op_ids first; ours rolled back whole. Again, they now count as duplicates.
        return _apply_once(store, items)


def _apply_once(store: storage.Storage, items: list[Operation | ValidationError]) -> JSONDict:
    failed: list[JSONDict] = []
    valid = [v for index, item in enumerate(items) if (v := _validate(index, item, failed))]
    with store.write() as conn:
        run = _Run(
            conn,
            store.heartbeat_timeout,
            known=_existing(conn, sessions.c.id, {v.op.session_id for v in valid}),
            seen=_existing(conn, applied_ops.c.op_id, {v.op.op_id for v in valid}),
            failed=failed,
        )
        for item in valid:
            _apply_item(run, item)
        run.flush()
        stamp = now()
        if run.applied:
            rows = [{"op_id": op_id, "applied_at": stamp} for op_id in run.applied]
            storage.insert_rows(conn, applied_ops, rows)
    return {
        "success": not failed,
        "applied": len(run.applied),
        "duplicates": run.duplicates,
        "failed": sorted(failed, key=lambda f: f["index"]),
    }


def _validate(
    index: int, item: Operation | ValidationError, failed: list[JSONDict]
) -> _Valid | None:
    """The operation with its parsed data, or None after recording why it failed."""
    if isinstance(item, ValidationError):
        failed.append(_failure(index, None, 400, item.message, item.details))
        return None
    try:
        data = parse_operation_data(item)
    except ValidationError as exc:
        failed.append(_failure(index, item.op_id, 400, exc.message, exc.details))
        return None
    if item.op == "create" and data["id"] not in (None, item.session_id):
        failed.append(
            _failure(index, item.op_id, 400, "invalid field", "data.id is not session_id")
        )
        return None
    return _Valid(index, item, data)


def _existing(conn: Connection, column: sa.Column[Any], values: Iterable[str]) -> set[str]:
    wanted = sorted(values)
    found: set[str] = set()
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        found.update(v for (v,) in conn.execute(sa.select(column).where(column.in_(chunk))))
    return found


def _apply_item(run: _Run, item: _Valid) -> None:
    op = item.op
    if op.op_id in run.seen:
        run.duplicates += 1
        return
    if op.op != "create" and op.session_id not in run.known:
        run.failed.append(_failure(item.index, op.op_id, 404, "session not found", op.session_id))
        return
    _apply_op(run, op, item.data)
    run.seen.add(op.op_id)
    run.applied.append(op.op_id)


def _apply_op(run: _Run, op: Operation, data: Any) -> None:
    """Apply one valid operation; plain events and metrics are queued for ``executemany``."""
    sid = op.session_id
    if op.op == "event" and not storage.is_special(data):
        run.event_rows.append(storage.event_row(sid, data))
    elif op.op == "metric":
        run.metric_rows.append(storage.metric_row(sid, data))
    elif op.op == "create":
        run.flush()  # everything else may depend on what came before it
        storage.create_session(run.conn, {**data, "id": sid}, run.heartbeat_timeout)
        run.known.add(sid)
    else:
        run.flush()
        _APPLY[op.op](run.conn, sid, data)


_APPLY: dict[str, Any] = {
    "state": lambda conn, sid, data: storage.update_state(conn, sid, data[0], data[1]),
    "event": storage.add_event,
    "heartbeat": lambda conn, sid, data: storage.heartbeat(conn, sid, data["timestamp"]),
    "end": lambda conn, sid, data: storage.end(conn, sid, data["timestamp"]),
    "crash": lambda conn, sid, data: storage.crash(
        conn, sid, data["reason"], data["data"], data["timestamp"]
    ),
}
