"""Read-only aggregate queries behind the dashboard's JSON (``/dashboard/api/...``).

The REST API answers one session or one page of sessions; the dashboard also needs totals, the
product → version grid with counts per status, sorting, offset paging with a total, an event-name
filter, a "current state" filter and per-metric statistics across many sessions. Those live here.
This module only reads: it uses the server's tables and its read-side rules (status, "ever had
state path = value") from ``queries`` so the dashboard and the API never disagree.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from datacat.limits import DEFAULT_BUCKETS, HUNG_EVENT, RECOVERED_EVENT
from datacat.model import JSONDict, iso
from datacat_server import queries
from datacat_server.queries import (
    STATUSES,
    Clock,
    SessionFilter,
    finite,
    session_dict,
    state_history,
)
from datacat_server.schema import events, metrics, sessions
from datacat_server.storage import leaves, value_key

SORTS: dict[str, sa.Column[Any]] = {
    "created": sessions.c.created_at,
    "updated": sessions.c.updated_at,
    "ended": sessions.c.ended_at,
    "product": sessions.c.product,
    "version": sessions.c.version,
    "hostname": sessions.c.hostname,
}
MAX_EVENTS = 5000  # newest events a session page loads; the page says when there are more
MAX_POINTS = 400  # points per line chart; longer series are thinned evenly


@dataclass
class DashboardFilter:
    """The API's list filters plus the dashboard's own: event name, current state, sort, page."""

    base: SessionFilter = field(default_factory=SessionFilter)
    event: str | None = None
    hang: str | None = None
    state_now: list[tuple[str, str]] = field(default_factory=list)
    sort: str = "created"
    descending: bool = True
    page: int = 1
    per_page: int = 25


def conditions(conn: Connection, flt: DashboardFilter, clock: Clock) -> list[Any]:
    """WHERE clauses on ``sessions`` for every filter given."""
    conds: list[Any] = queries.session_conditions(flt.base, clock)
    if flt.event:
        conds.append(_with_event(flt.event))
    if flt.hang:
        conds.extend(HANGS[flt.hang])
    for path, raw in flt.state_now:
        conds.append(sessions.c.id.in_(_holding_now(conn, path, raw)))
    return conds


def _with_event(name: str) -> Any:
    return sessions.c.id.in_(sa.select(events.c.session_id).where(events.c.name == name))


# The predecessor's hang filters. ``hung`` stays set when a session ends or crashes, so it says
# whether the session was hung at that moment.
HANGS: dict[str, list[Any]] = {
    "ever": [_with_event(HUNG_EVENT)],
    "recovered": [_with_event(HUNG_EVENT), _with_event(RECOVERED_EVENT)],
    "ended": [
        sessions.c.hung.is_(True),
        sessions.c.ended_at.is_not(None),
        sessions.c.crashed_at.is_(None),
    ],
    "crashed": [sessions.c.hung.is_(True), sessions.c.crashed_at.is_not(None)],
}


def _holding_now(conn: Connection, path: str, raw: str) -> list[str]:
    """Ids of sessions whose current state holds ``path`` = ``raw``.

    Only sessions that ever held the value can hold it now, so the indexed "ever had" lookup
    narrows the candidates and their current state is checked here, the same way on every
    database (JSON operators differ between SQLite and PostgreSQL).
    """
    wanted = queries.value_keys(path, raw)
    query = sa.select(sessions.c.id, sessions.c.state).where(queries.ever_had_state(path, raw))
    held = []
    for sid, state in conn.execute(query):
        current = dict(leaves(json.loads(state)))
        if path in current and value_key(path, current[path]) in wanted:
            held.append(sid)
    return held


def _filtered_ids(conds: list[Any]) -> sa.Select[Any]:
    return sa.select(sessions.c.id).where(*conds)


def totals(conn: Connection, conds: list[Any], clock: Clock) -> JSONDict:
    """Sessions, active sessions, events and metrics of the filtered sessions."""
    count = sa.select(sa.func.count()).select_from(sessions)
    active = queries.status_condition("active", clock)
    ids = _filtered_ids(conds)
    return {
        "sessions": conn.execute(count.where(*conds)).scalar_one(),
        "active": conn.execute(count.where(*conds, active)).scalar_one(),
        "events": _count_rows(conn, events, ids),
        "metrics": _count_rows(conn, metrics, ids),
    }


def _count_rows(conn: Connection, table: sa.Table, ids: sa.Select[Any]) -> int:
    query = sa.select(sa.func.count()).select_from(table).where(table.c.session_id.in_(ids))
    return int(conn.execute(query).scalar_one())


def grid(conn: Connection, clock: Clock) -> list[JSONDict]:
    """Product → version rows with a count per status, in natural order (1.9 before 1.10)."""
    status = sa.case(*((queries.status_condition(s, clock), s) for s in STATUSES))
    sub = sa.select(sessions.c.product, sessions.c.version, status.label("status")).subquery()
    keys = (sub.c.product, sub.c.version, sub.c.status)
    query = sa.select(*keys, sa.func.count()).group_by(*keys)
    cells: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATUSES, 0))
    for product, version, state, n in conn.execute(query):
        cells[(product, version)][state or "active"] += n
    return [
        {"product": p, "version": v, "counts": counts, "total": sum(counts.values())}
        for (p, v), counts in sorted(cells.items(), key=lambda item: natural(*item[0]))
    ]


def natural(*texts: str) -> list[tuple[int, int | str]]:
    """A sort key that orders numbers inside text by value: 1.9 before 1.10."""
    return [
        (0, int(part)) if part.isdigit() else (1, part)
        for text in texts
        for part in [*re.split(r"(\d+)", text), "\0"]  # "\0" ends each text
    ]


def session_page(conn: Connection, flt: DashboardFilter, clock: Clock) -> JSONDict:
    """One sorted page of session summaries, with the total and the number of pages."""
    conds = conditions(conn, flt, clock)
    count = sa.select(sa.func.count()).select_from(sessions).where(*conds)
    total = int(conn.execute(count).scalar_one())
    column = SORTS.get(flt.sort, sessions.c.created_at)
    # ties (same product, say) keep the newest first, then a stable order for paging
    then = [sessions.c.created_at.desc(), sessions.c.id.desc()]
    # NULLs (no end yet, no hostname) last either way, on SQLite and PostgreSQL alike
    first = (column.desc() if flt.descending else column.asc()).nulls_last()
    order = [first, *then]
    offset = (flt.page - 1) * flt.per_page
    query = sa.select(sessions).where(*conds).order_by(*order).limit(flt.per_page).offset(offset)
    items = queries.session_summaries(conn, conn.execute(query).all(), clock)
    for item in items:
        del item["state"]  # the list shows none of it; a session page loads it
    pages = max(1, -(-total // flt.per_page))
    return {"sessions": items, "total": total, "page": flt.page, "pages": pages}


def metric_stats(conn: Connection, conds: list[Any]) -> list[JSONDict]:
    """Per metric series (name, type, tags), one figure per filtered session and
    avg/min/max/median/std-dev of them.

    A session's figure is its total for a counter (clients send deltas), the mean observation
    for a histogram (sum of values / sum of counts) and the mean value for gauges and timers.
    """
    per_series: dict[tuple[str, str, str], list[tuple[float, str, float]]] = defaultdict(list)
    for (name, kind, tags, sid, created), figure in _session_figures(conn, conds).items():
        per_series[(name, kind, tags)].append((created, sid, figure))
    return [_stats(key, rows) for key, rows in sorted(per_series.items())]


# Rows whose stored body must be read: histograms (their count) and tagged rows (their series).
# ``"tags":{"`` only occurs in a body whose tags are not empty (inside strings quotes are escaped).
_TAGGED = metrics.c.body.like('%"tags":{"%')
_READ_BODY = sa.or_(metrics.c.type == "histogram", _TAGGED)


def _session_figures(conn: Connection, conds: list[Any]) -> dict[tuple[Any, ...], float]:
    """(name, type, tags, session, created) → that session's figure. Untagged gauges, timers
    and counters are summed up in the database; only the rest is read row by row."""
    m = metrics.c
    keys = (m.name, m.type, m.session_id, sessions.c.created_at)
    joined = sa.select(*keys).join_from(metrics, sessions, m.session_id == sessions.c.id)
    # PostgreSQL's float sum raises once it passes 1e308; a numeric sum does not (the figure
    # then comes out as inf, and is left out below).
    value = sa.cast(m.value, sa.Numeric) if conn.dialect.name == "postgresql" else m.value
    plain = joined.add_columns(sa.func.sum(value), sa.func.count()).where(
        *conds, sa.not_(_READ_BODY)
    )
    sums: dict[tuple[Any, ...], list[float]] = {
        (name, kind, "", sid, created): [float(total), float(n)]
        for name, kind, sid, created, total, n in conn.execute(plain.group_by(*keys))
    }
    for name, kind, sid, created, value, raw in conn.execute(
        joined.add_columns(m.value, m.body).where(*conds, _READ_BODY)
    ):
        body = json.loads(raw)
        acc = sums.setdefault((name, kind, _tags_label(body), sid, created), [0.0, 0.0])
        acc[0] += value
        acc[1] += float(body.get("count") or 1) if kind == "histogram" else 1.0
    figures = {key: s if key[1] == "counter" else s / n for key, (s, n) in sums.items()}
    return {key: f for key, f in figures.items() if math.isfinite(f)}  # beyond float: left out


def _tags_label(row: JSONDict) -> str:
    """A series' tags as canonical JSON ("" when untagged): part of what tells series apart."""
    tags = row.get("tags")
    return json.dumps(tags, sort_keys=True) if tags else ""


def _stats(key: tuple[str, str, str], rows: list[tuple[float, str, float]]) -> JSONDict:
    name, kind, tags = key
    rows.sort()
    values = [figure for _, _, figure in rows]
    return {
        "name": name,
        "type": kind,
        "tags": json.loads(tags) if tags else {},
        "sessions": len(values),
        **describe(values),
        "points": [[iso(ts), figure, sid] for ts, sid, figure in _thin(rows)],
    }


def describe(values: Sequence[float]) -> JSONDict:
    """avg, min, max, median and population std-dev of a non-empty sequence."""
    low, high = min(values), max(values)
    return {
        "avg": _figure(statistics.fmean, values),
        "min": low,
        "max": high,
        "median": _figure(statistics.median, values),
        # equal values give 0, not float noise like 1e-17
        "stddev": 0.0 if low == high else _figure(statistics.pstdev, values),
    }


def _figure(statistic: Callable[[Sequence[float]], float], values: Sequence[float]) -> float | None:
    """``statistic(values)``, or None when it leaves float's range (values near 1e308)."""
    try:
        return finite(statistic(values))
    except (OverflowError, ValueError):
        return None


def _thin(rows: Sequence[Any]) -> list[Any]:
    """At most ``MAX_POINTS`` rows spread evenly, always keeping the last."""
    if len(rows) <= MAX_POINTS:
        return list(rows)
    step = len(rows) / MAX_POINTS
    return [rows[int(i * step)] for i in range(MAX_POINTS - 1)] + [rows[-1]]


def session_detail(
    conn: Connection, session_id: str, clock: Clock, events_after: int = 0
) -> JSONDict | None:
    """Everything a session page shows: header, state, state changes, events, metric summaries.

    ``events`` are the newest ``MAX_EVENTS`` after the row id ``events_after`` (a refreshing page
    passes the ``last_event_id`` it has, so it only downloads what is new).
    """
    row = conn.execute(sa.select(sessions).where(sessions.c.id == session_id)).first()
    if row is None:
        return None
    out = session_dict(row, clock)
    out["changes"] = state_changes(state_history(conn, session_id))
    out.update(_newest_events(conn, session_id, events_after))
    out["metrics"] = metric_summaries(_metric_rows(conn, session_id), _units(conn, session_id))
    return out


def state_changes(history: Iterable[JSONDict]) -> list[JSONDict]:
    """Each state update as the leaves it changed: ``{"path", "old", "new"}`` (None = absent)."""
    before: dict[str, Any] = {}
    out = []
    for snapshot in history:
        after = dict(leaves(snapshot["state"]))
        diff = [
            {"path": p, "old": before.get(p), "new": after.get(p)}
            for p in sorted(before.keys() | after.keys())
            if before.get(p) != after.get(p)
        ]
        out.append({"timestamp": snapshot["timestamp"], "diff": diff})
        before = after
    return out


def _newest_events(conn: Connection, session_id: str, after: int) -> JSONDict:
    where = events.c.session_id == session_id
    total = conn.execute(sa.select(sa.func.count()).select_from(events).where(where)).scalar_one()
    query = sa.select(events).where(where, events.c.id > after)
    rows = conn.execute(query.order_by(events.c.id.desc()).limit(MAX_EVENTS)).all()[::-1]
    return {
        "events": [queries.row_body(r) for r in rows],
        "event_total": int(total),
        "last_event_id": rows[-1].id if rows else after,
    }


def _metric_rows(conn: Connection, session_id: str) -> Iterator[JSONDict]:
    """name, type, ts, value of every row; the stored body only where it is needed.

    Decoding every body (and formatting every time) made a page of 50,000 metrics take seconds.
    """
    m = metrics.c
    body = sa.case((_READ_BODY, m.body), else_=sa.null())
    query = sa.select(m.name, m.type, m.ts, m.value, body.label("body"))
    query = query.where(m.session_id == session_id).order_by(m.id)
    for name, kind, ts, value, raw in conn.execute(query):
        row = json.loads(raw) if raw else {}
        yield {**row, "name": name, "type": kind, "ts": ts, "value": value}


def _units(conn: Connection, session_id: str) -> dict[str, str]:
    """Each metric's unit, as its newest row gives it."""
    m = metrics.c
    newest = sa.select(sa.func.max(m.id)).where(m.session_id == session_id).group_by(m.name)
    rows = conn.execute(sa.select(m.name, m.body).where(m.id.in_(newest)))
    return {name: unit for name, body in rows if (unit := json.loads(body).get("unit"))}


def metric_summaries(rows: Iterable[JSONDict], units: dict[str, str]) -> list[JSONDict]:
    """Per series (name, type, tags): unit, count, total, last, stats, a thinned line, bars.

    ``rows`` are in order, each with ``name``, ``type``, ``ts`` (Unix seconds) and ``value``.
    """
    series: dict[tuple[str, str, str], list[JSONDict]] = defaultdict(list)
    for row in rows:
        series[(row["name"], row["type"], _tags_label(row))].append(row)
    return [_summary(key, units.get(key[0]), group) for key, group in sorted(series.items())]


def _summary(key: tuple[str, str, str], unit: str | None, group: list[JSONDict]) -> JSONDict:
    name, kind, _ = key
    values = [r["value"] for r in group]
    out: JSONDict = {
        "name": name,
        "type": kind,
        "tags": group[-1].get("tags") or {},
        "unit": unit,
        "count": len(group),
        "total": finite(sum(values)),
        "last": values[-1],
        **describe(values),
        "series": [[iso(r["ts"]), r["value"]] for r in _thin(group)],
    }
    if kind == "histogram":
        out["histogram"] = histogram_bars(group)
    return out


def histogram_bars(group: Iterable[JSONDict]) -> JSONDict:
    """Bucket counts summed over the rows; a row without buckets is one observation of its value.

    Rows whose bounds differ from the first aggregate's are counted by their value, so the bars
    always add up to the number of observations they can place.
    """
    bounds: list[float] | None = None
    counts: list[int] = []
    singles: list[float] = []
    for row in group:
        if row.get("buckets") and (bounds is None or row["buckets"] == bounds):
            bounds = bounds or list(row["buckets"])
            counts = counts or [0] * (len(bounds) + 1)
            counts = [a + b for a, b in zip(counts, row["bucket_counts"], strict=False)]
        else:
            singles.append(row["value"])
    bounds = bounds or list(DEFAULT_BUCKETS)
    counts = counts or [0] * (len(bounds) + 1)
    for value in singles:
        counts[next((i for i, b in enumerate(bounds) if value <= b), len(bounds))] += 1
    return {"buckets": bounds, "counts": counts}


def exists(conn: Connection, session_id: str) -> bool:
    """Whether the session is stored (a page for an unknown id answers 404)."""
    query = sa.select(sessions.c.id).where(sessions.c.id == session_id)
    return conn.execute(query).first() is not None
