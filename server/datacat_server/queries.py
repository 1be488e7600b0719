"""Reads: sessions, their events and metrics shaped as the API answers them.

Status is derived here, at read time, from stored facts and the clock (the server runs no
timers). Lists page with an opaque cursor: base64 of the last row's sort key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from datacat.errors import ValidationError
from datacat.limits import MAX_TIMESTAMP
from datacat.merge import deep_merge
from datacat.model import JSONDict, iso
from datacat_server.schema import events, metrics, sessions, state_updates, state_values
from datacat_server.storage import value_key

STATUSES = ("active", "ended", "suspended", "hung", "crashed")
#: The largest row id (a signed 64-bit integer column); larger numbers overflow the drivers.
MAX_ROW_ID = 2**63 - 1


@dataclass(frozen=True)
class Clock:
    """The moment of the read and the heartbeat timeout that decides ``suspended``."""

    now: float
    heartbeat_timeout: float

    @property
    def stale_before(self) -> float:
        return self.now - self.heartbeat_timeout


@dataclass
class SessionFilter:
    """Filters of ``GET /api/data/sessions``; every one given must hold."""

    product: str | None = None
    version: str | None = None
    status: str | None = None
    created_after: float | None = None
    created_before: float | None = None
    machine_id: str | None = None
    state: list[tuple[str, str]] = field(default_factory=list)
    summary: bool = False
    limit: int = 100
    cursor: str | None = None


@dataclass
class RowFilter:
    """Filters of ``/events`` and ``/metrics``: name, level (events) or type (metrics), since."""

    name: str | None = None
    kind: str | None = None
    since: float | None = None
    limit: int = 1000
    cursor: str | None = None


def encode_cursor(key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, shape: Callable[[Any], bool]) -> Any:
    """The key inside a cursor; anything not made by ``encode_cursor`` with ``shape`` is a 400."""
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        key = None
    if key is None or not shape(key):
        raise ValidationError("invalid cursor", "pass back the cursor a list answered")
    return key


def _is_session_key(key: Any) -> bool:
    """``[created_at, id]``: a timestamp the database can compare, an id it can encode."""
    return (
        isinstance(key, list)
        and len(key) == 2
        and isinstance(key[0], int | float)
        and not isinstance(key[0], bool)
        and 0 <= key[0] <= MAX_TIMESTAMP  # (also False for NaN)
        and isinstance(key[1], str)
        and len(key[1]) <= 64
        and key[1].isascii()  # session ids are UUIDs
    )


def _is_row_key(key: Any) -> bool:
    """A row id: an integer both databases' 64-bit columns can hold."""
    return isinstance(key, int) and not isinstance(key, bool) and 0 <= key <= MAX_ROW_ID


def status_of(row: Row[Any], clock: Clock) -> JSONDict:
    """The derived status fields of a session row."""
    suspended = (
        row.ended_at is None
        and row.last_heartbeat is not None
        and row.last_heartbeat < clock.stale_before
    )
    crashed = row.crashed_at is not None
    ended = row.ended_at is not None
    # The first that holds names the status: a crash outranks an end, a hang a silence.
    ranked = (("crashed", crashed), ("ended", ended), ("hung", row.hung), ("suspended", suspended))
    return {
        "status": next((name for name, holds in ranked if holds), "active"),
        "active": not ended,
        "ended": ended and not crashed,
        "crashed": crashed,
        "hung": bool(row.hung) and not ended,
        "suspended": suspended,
    }


def session_dict(row: Row[Any], clock: Clock) -> JSONDict:
    """The fields every form of a session has."""
    return {
        "id": row.id,
        "session_id": row.id,
        "product": row.product,
        "version": row.version,
        "machine_id": row.machine_id,
        "hostname": row.hostname,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
        "ended_at": iso(row.ended_at),
        "crashed_at": iso(row.crashed_at),
        "crash_reason": row.crash_reason,
        "last_heartbeat": iso(row.last_heartbeat),
        **status_of(row, clock),
        "state": json.loads(row.state),
    }


def get_session(conn: Connection, session_id: str, clock: Clock) -> JSONDict | None:
    """The full session object: state, its history, every event and metric, counter totals."""
    row = conn.execute(sa.select(sessions).where(sessions.c.id == session_id)).first()
    if row is None:
        return None
    return _full(conn, row, clock)


def _full(conn: Connection, row: Row[Any], clock: Clock) -> JSONDict:
    out = session_dict(row, clock)
    out["state_history"] = state_history(conn, row.id)
    out["events"] = [row_body(r) for r in conn.execute(_rows(events, row.id))]
    out["metrics"] = [row_body(r) for r in conn.execute(_rows(metrics, row.id))]
    out["counters"] = counter_totals(out["metrics"])
    last = [e["timestamp"] for e in (out["events"][-1:] + out["metrics"][-1:])]
    out["updated_at"] = max([out["updated_at"], *last])
    return out


def _rows(table: sa.Table, session_id: str) -> sa.Select[Any]:
    return sa.select(table).where(table.c.session_id == session_id).order_by(table.c.id)


def row_body(row: Row[Any]) -> JSONDict:
    """An event's or metric's stored body with its ISO timestamp."""
    body: JSONDict = json.loads(row.body)
    body["timestamp"] = iso(row.ts)
    return body


def counter_totals(metric_bodies: Sequence[JSONDict]) -> dict[str, float | None]:
    """A counter's rows carry deltas; readers see the total per name (None when it is beyond
    float's range: each delta is finite, their sum need not be)."""
    totals: dict[str, float] = {}
    for m in metric_bodies:
        if m.get("type") == "counter":
            totals[m["name"]] = totals.get(m["name"], 0.0) + m["value"]
    return {name: finite(total) for name, total in totals.items()}


def finite(value: float) -> float | None:
    """``value``, or None when it is not finite (answers are strict JSON: no Infinity/NaN)."""
    return value if math.isfinite(value) else None


def state_history(conn: Connection, session_id: str) -> list[JSONDict]:
    """Snapshots rebuilt from the stored updates: ``{"timestamp", "update", "state"}`` each."""
    query = sa.select(state_updates.c.ts, state_updates.c.body).where(
        state_updates.c.session_id == session_id
    )
    state: JSONDict = {}
    history = []
    for row in conn.execute(query.order_by(state_updates.c.id)):
        update = json.loads(row.body)
        state = deep_merge(state, update)
        history.append({"timestamp": iso(row.ts), "update": update, "state": state})
    return history


def list_sessions(
    conn: Connection, flt: SessionFilter, clock: Clock
) -> tuple[list[JSONDict], str | None]:
    """One page of sessions, newest first, and the cursor of the next page (or None)."""
    query = sa.select(sessions).where(*session_conditions(flt, clock))
    if flt.cursor:
        created, sid = decode_cursor(flt.cursor, _is_session_key)
        query = query.where(
            sa.or_(
                sessions.c.created_at < created,
                sa.and_(sessions.c.created_at == created, sessions.c.id < sid),
            )
        )
    query = query.order_by(sessions.c.created_at.desc(), sessions.c.id.desc())
    rows = conn.execute(query.limit(flt.limit + 1)).all()
    page, more = rows[: flt.limit], len(rows) > flt.limit
    cursor = encode_cursor([page[-1].created_at, page[-1].id]) if more else None
    if flt.summary:
        return session_summaries(conn, page, clock), cursor
    return [_full(conn, row, clock) for row in page], cursor


def session_summaries(conn: Connection, rows: Sequence[Row[Any]], clock: Clock) -> list[JSONDict]:
    """Session objects without events/metrics, with their event and metric counts."""
    ids = [row.id for row in rows]
    counts = {table.name: _counts(conn, table, ids) for table in (events, metrics)}
    out = []
    for row in rows:
        item = session_dict(row, clock)
        item["event_count"] = counts["events"].get(row.id, 0)
        item["metric_count"] = counts["metrics"].get(row.id, 0)
        out.append(item)
    return out


def _counts(conn: Connection, table: sa.Table, ids: list[str]) -> dict[str, int]:
    if not ids:
        return {}
    query = (
        sa.select(table.c.session_id, sa.func.count())
        .where(table.c.session_id.in_(ids))
        .group_by(table.c.session_id)
    )
    return {sid: n for sid, n in conn.execute(query)}


def session_conditions(flt: SessionFilter, clock: Clock) -> list[Any]:
    """WHERE conditions on ``sessions`` for every filter of ``flt`` but cursor and limit."""
    c = sessions.c
    conditions: list[Any] = []
    for column, value in ((c.product, flt.product), (c.version, flt.version)):
        if value is not None:
            conditions.append(column == value)
    if flt.machine_id is not None:
        conditions.append(c.machine_id == flt.machine_id)
    if flt.created_after is not None:
        conditions.append(c.created_at >= flt.created_after)
    if flt.created_before is not None:
        conditions.append(c.created_at < flt.created_before)
    if flt.status is not None:
        conditions.append(status_condition(flt.status, clock))
    conditions.extend(ever_had_state(path, raw) for path, raw in flt.state)
    return conditions


def status_condition(status: str, clock: Clock) -> Any:
    """The WHERE condition of sessions whose derived status at ``clock`` is ``status``."""
    c = sessions.c
    is_open = c.ended_at.is_(None)
    stale = sa.and_(c.last_heartbeat.is_not(None), c.last_heartbeat < clock.stale_before)
    fresh = sa.or_(c.last_heartbeat.is_(None), c.last_heartbeat >= clock.stale_before)
    return {
        "crashed": c.crashed_at.is_not(None),
        "ended": sa.and_(c.ended_at.is_not(None), c.crashed_at.is_(None)),
        "hung": sa.and_(is_open, c.hung.is_(True)),
        "suspended": sa.and_(is_open, c.hung.is_(False), stale),
        "active": sa.and_(is_open, c.hung.is_(False), fresh),
    }[status]


def ever_had_state(path: str, raw: str) -> Any:
    """Sessions whose state ever held ``path`` = ``raw`` (a JSON literal, or else a string)."""
    held = sa.select(state_values.c.session_id).where(state_values.c.key.in_(value_keys(path, raw)))
    return sessions.c.id.in_(held)


def value_keys(path: str, raw: str) -> set[str]:
    """The indexed keys ``path`` = ``raw`` may stand for: ``raw`` as typed in a query string is a
    JSON literal (3, true, "x") or else a plain string."""
    keys = {value_key(path, raw)}
    with contextlib.suppress(ValueError, RecursionError):
        keys.add(value_key(path, json.loads(raw)))
    return keys


def list_rows(
    conn: Connection, table: sa.Table, session_id: str, flt: RowFilter
) -> tuple[list[JSONDict], str | None] | None:
    """One page of a session's events or metrics in order; None for an unknown session."""
    if conn.execute(sa.select(sessions.c.id).where(sessions.c.id == session_id)).first() is None:
        return None
    query = _rows(table, session_id)
    kind = table.c.level if table is events else table.c.type
    for column, value in ((table.c.name, flt.name), (kind, flt.kind)):
        if value is not None:
            query = query.where(column == value)
    if flt.since is not None:
        query = query.where(table.c.ts >= flt.since)
    if flt.cursor:
        query = query.where(table.c.id > decode_cursor(flt.cursor, _is_row_key))
    rows = conn.execute(query.limit(flt.limit + 1)).all()
    page = rows[: flt.limit]
    cursor = encode_cursor(page[-1].id) if len(rows) > flt.limit else None
    return [row_body(r) for r in page], cursor
