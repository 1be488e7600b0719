"""``POST /api/batch``: many operations for many sessions, applied in order in one transaction.

Each operation carries a client-made ``op_id``; ids already applied (in an earlier batch or
earlier in this one) are skipped, so a retried batch never duplicates data. An event's or a
metric's ``op_id`` is a unique column of its own row, and its INSERT skips a row whose op_id is
there already (``ON CONFLICT DO NOTHING``); other operations record theirs in ``applied_ops``,
looked up before they apply. Validation and row encoding happen before the write lock is taken
(in parallel across workers; events and metrics of the usual shape in one pass, ``plain``); under
the lock, runs of plain events and metrics are inserted with one ``executemany`` per table.
Validation and unknown-session failures are reported per operation; the rest still applies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from datacat.errors import ValidationError
from datacat.model import (
    OPERATIONS,
    JSONDict,
    Operation,
    now,
    parse_event_text,
    parse_metric,
    parse_operation_data,
    parse_rows,
)
from datacat.rowbodies import row_bodies
from datacat_server import plain, storage
from datacat_server.schema import applied_ops, events, metrics, sessions


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~1 us per operation
class _Valid:
    """An operation whose ``data`` passed validation; ``row`` is its ready-made row when it is
    a plain event or metric (``data`` is then the wire body: nothing reads it again), ``rows``
    the ready-made event and metric rows of a ``rows`` operation."""

    index: int
    op: Operation
    data: Any
    row: JSONDict | None = None
    rows: tuple[list[JSONDict], list[JSONDict]] | None = None


@dataclass
class _Run:
    """State of one batch while it applies."""

    conn: Connection
    heartbeat_timeout: float
    known: set[str]
    seen: set[str]
    failed: list[JSONDict]
    applied: int = 0
    logged: list[str] = field(default_factory=list)  # op ids that go to ``applied_ops``
    duplicates: int = 0
    event_rows: list[JSONDict] = field(default_factory=list)
    metric_rows: list[JSONDict] = field(default_factory=list)

    def flush(self) -> None:
        """Insert the queued rows; a row whose op_id is already stored (an earlier batch, or a
        concurrent copy of this one, which PostgreSQL makes us wait for) is a duplicate."""
        for table, rows in ((events, self.event_rows), (metrics, self.metric_rows)):
            inserted = storage.insert_rows(self.conn, table, rows, skip_duplicates=True)
            self.applied += inserted
            self.duplicates += len(rows) - inserted
        self.event_rows, self.metric_rows = [], []


def _failure(index: int, op_id: str | None, status: int, error: str, details: str) -> JSONDict:
    return {"index": index, "op_id": op_id, "status": status, "error": error, "details": details}


def apply_batch(store: storage.Storage, items: list[Operation | ValidationError]) -> JSONDict:
    """Apply the parsed operations; answer the ``POST /api/batch`` body."""
    failed: list[JSONDict] = []
    valid = [v for index, item in enumerate(items) if (v := _validate(index, item, failed))]
    # A driver IntegrityError: a copy of this batch (a client's retry while the first try was
    # in flight) committed the same op_ids first and ours rolled back whole. Run again, they
    # count as duplicates. Deadlocks and serialization failures run again too (Storage.run).
    integrity = store.engine.dialect.loaded_dbapi.IntegrityError
    run = store.run(lambda conn: _apply(conn, store, valid, list(failed)), retry=(integrity,))
    return {
        "success": not run.failed,
        "applied": run.applied,
        "duplicates": run.duplicates,
        "failed": sorted(run.failed, key=lambda f: f["index"]),
        "operations": OPERATIONS,  # what a client may send: older servers know no "rows"
    }


def _apply(
    conn: Connection, store: storage.Storage, valid: list[_Valid], failed: list[JSONDict]
) -> _Run:
    """One try at applying ``valid`` inside the write transaction ``conn``."""
    storage.lock_sessions(conn, {v.op.session_id for v in valid if not (v.row or v.rows)})
    run = _Run(
        conn,
        store.heartbeat_timeout,
        known=_existing(conn, [sessions.c.id], {v.op.session_id for v in valid}),
        seen=_existing(conn, [applied_ops.c.op_id], {v.op.op_id for v in valid if not v.row}),
        failed=failed,
    )
    for item in valid:
        _apply_item(run, item)
    run.flush()
    stamp = now()
    rows = [{"op_id": op_id, "applied_at": stamp} for op_id in run.logged]
    storage.insert_rows(conn, applied_ops, rows)
    return run


def _validate(
    index: int, item: Operation | ValidationError, failed: list[JSONDict]
) -> _Valid | None:
    """The operation with its parsed data, or None after recording why it failed."""
    if isinstance(item, ValidationError):
        failed.append(_failure(index, None, 400, item.message, item.details))
        return None
    fast = _PLAIN.get(item.op)
    if fast is not None and (row := fast(item.session_id, item.op_id, item.data)) is not None:
        return _Valid(index, item, item.data, row)  # the usual shape, in one pass
    if item.op == "rows":
        return _valid_rows(index, item, failed)
    text = None
    try:
        if item.op == "event":  # its data's JSON text comes with it, for the row
            data, text = parse_event_text(item.data)
        else:
            data = parse_operation_data(item)
    except ValidationError as exc:
        failed.append(_failure(index, item.op_id, 400, exc.message, exc.details))
        return None
    if item.op == "create" and data["id"] not in (None, item.session_id):
        failed.append(
            _failure(index, item.op_id, 400, "invalid field", "data.id is not session_id")
        )
        return None
    return _Valid(index, item, data, _row(item, data, text))


def _valid_rows(index: int, item: Operation, failed: list[JSONDict]) -> _Valid | None:
    """A ``rows`` operation with its rows made, or None after recording why it failed (whole:
    the client sends only rows it knows the server takes)."""
    try:
        spec, rows = parse_rows(item.data)
        return _Valid(index, item, None, rows=_rows(item.session_id, spec, rows))
    except ValidationError as exc:
        failed.append(_failure(index, item.op_id, 400, exc.message, exc.details))
        return None


def _rows(
    session_id: str, spec: JSONDict, rows: list[list[Any]]
) -> tuple[list[JSONDict], list[JSONDict]]:
    """The event rows and metric rows of a ``rows`` operation: each row's event and timer made
    as the client makes them (``row_bodies``), checked and stored as a plain event's and
    metric's are. Their op id is the operation's, in ``applied_ops``; the rows have none."""
    event_rows: list[JSONDict] = []
    metric_rows: list[JSONDict] = []
    for index, values in enumerate(rows):
        try:
            body, metric = row_bodies(spec, values)
            event_rows.append(plain.event_row(session_id, None, body) or _event(session_id, body))
            if metric is not None:
                metric_rows.append(
                    plain.metric_row(session_id, None, metric)
                    or storage.metric_row(session_id, parse_metric(metric))
                )
        except ValidationError as exc:
            raise ValidationError(exc.message, f"rows[{index}]: {exc.details}") from None
    return event_rows, metric_rows


def _event(session_id: str, body: JSONDict) -> JSONDict:
    data, text = parse_event_text(body)
    if storage.is_special(data):  # it changes its session: not a row to append
        raise ValidationError("invalid field", f"a row cannot be a {data['name']} event")
    return storage.event_row(session_id, data, None, text)


_PLAIN = {"event": plain.event_row, "metric": plain.metric_row}


def _row(op: Operation, data: Any, data_text: str | None) -> JSONDict | None:
    """The row of a plain event or metric, built outside the write lock."""
    if op.op == "event" and not storage.is_special(data):
        return storage.event_row(op.session_id, data, op.op_id, data_text)
    if op.op == "metric":
        return storage.metric_row(op.session_id, data, op.op_id)
    return None


def _existing(conn: Connection, columns: list[sa.Column[Any]], values: Iterable[str]) -> set[str]:
    """Which of ``values`` occur in any of ``columns`` (each indexed): one query on the driver's
    cursor, the values as one parameter (SQLAlchemy's expanding ``IN`` cost ~6 us per value)."""
    wanted = list(values)
    if not wanted:
        return set()
    if conn.dialect.name == "sqlite":
        member, param = "IN (SELECT value FROM json_each(?))", storage.dumps(wanted)
    else:
        member, param = "= ANY(%s)", wanted  # type: ignore[assignment]
    sql = " UNION ALL ".join(
        f"SELECT {c.name} FROM {c.table} WHERE {c.name} {member}" for c in columns
    )
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql, [param] * len(columns))
        return {v for (v,) in cursor.fetchall()}
    finally:
        cursor.close()


def _apply_item(run: _Run, item: _Valid) -> None:
    op = item.op
    if op.op_id in run.seen:
        run.duplicates += 1
        return
    if op.op != "create" and op.session_id not in run.known:
        run.failed.append(_failure(item.index, op.op_id, 404, "session not found", op.session_id))
        return
    if item.row is not None:  # its op_id is checked by the row's unique index as it goes in
        (run.event_rows if op.op == "event" else run.metric_rows).append(item.row)
        return
    if item.rows is not None:  # in order with the rest; its op_id goes to applied_ops
        run.event_rows += item.rows[0]
        run.metric_rows += item.rows[1]
        run.seen.add(op.op_id)
        run.logged.append(op.op_id)
        return
    try:
        _apply_op(run, op, item.data)
    except ValueError as exc:  # a value the model let through that cannot be stored
        run.failed.append(_failure(item.index, op.op_id, 400, "invalid value", str(exc)[:200]))
        return
    run.seen.add(op.op_id)
    run.applied += 1
    run.logged.append(op.op_id)


def _apply_op(run: _Run, op: Operation, data: Any) -> None:
    """Apply one operation other than a plain event or metric, after the rows queued so far."""
    run.flush()  # it may depend on what came before it
    if op.op == "create":
        storage.create_session(run.conn, {**data, "id": op.session_id}, run.heartbeat_timeout)
        run.known.add(op.session_id)
    else:
        _APPLY[op.op](run.conn, op.session_id, data)


_APPLY: dict[str, Any] = {
    "state": lambda conn, sid, data: storage.update_state(conn, sid, data[0], data[1]),
    "event": storage.add_event,
    "heartbeat": lambda conn, sid, data: storage.heartbeat(conn, sid, data["timestamp"]),
    "end": lambda conn, sid, data: storage.end(conn, sid, data["timestamp"]),
    "crash": lambda conn, sid, data: storage.crash(
        conn, sid, data["reason"], data["data"], data["timestamp"]
    ),
}
