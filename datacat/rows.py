"""Event rows: many events of one shape, each with its own timer, queued as one item.

A caller that logs thousands of alike events (the pytest plugin: one per passing test, each
with the test's duration timer) pays per event for ``log_event``'s and ``observe``'s
arguments, two queue items, and their pickle on the way to the sender's child. With a
template made once (:func:`template`), each event is a row, a tuple of its own values, and
``Session.log_rows`` queues a list of rows as one item. The sender (``Batcher``) sends the rows
a server takes as they are (:func:`split_ready`, :func:`wire_form`: a ``rows`` operation, which
the server expands with ``rowbodies.row_bodies``), and expands the others (:func:`operations`) into
the very operations ``log_event`` and ``observe`` would have made: the same bodies, text fields
and checks (``tests/test_rows.py``). The differences: each row's timer is a metric of its own
(count 1, dated as its event), never folded with another row's of the same tags, as
``observe`` would fold them (rows are for events that each have their own: a test's node id);
an event gets no OpenTelemetry trace and span ids; and a row that fits no event (or whose tag
cannot be made text) is left out whole, event and timer, and counted.

A template is a plain dict (the sender's child receives it pickled, built-in types only):

- ``name``, ``level``, ``category``: the events' (checked once, here);
- ``columns``: the names of a row's own values in each event's ``data``; ``data``: the fields
  every event's ``data`` shares, after them; ``message``: the column whose value is each
  event's message, or None;
- ``timer``: None, or ``{"name", "unit", "tags", "tag_columns"}``: each row's last value is
  then a timer of that name, tagged with ``tags`` and with the named columns' values, as
  ``observe(name, value, type="timer", tags=..., unit=unit, buckets=None)`` makes it alone.

A row is ``(timestamp, *values)``: one value per column, then the timer's value if any.
Pure: no I/O, no threads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from datacat._internal import jsonable, name_field, text_field
from datacat.limits import LEVELS, MAX_TIMESTAMP
from datacat.rowbodies import row_bodies, row_width

JSONDict = dict[str, Any]
Row = tuple[Any, ...]


def template(
    name: str,
    *,
    columns: Sequence[str],
    level: str = "info",
    category: str | None = None,
    data: Mapping[str, Any] | None = None,
    message: str | None = None,
    timer: str | None = None,
    timer_unit: str | None = "s",
    timer_tags: Mapping[str, Any] | None = None,
    timer_tag_columns: Sequence[str] = (),
) -> JSONDict:
    """The template of ``Session.log_rows``; ``message`` and ``timer_tag_columns`` name columns.
    Raises ``ValueError`` for a template no row could fill (a caller's bug, found at once)."""
    columns = tuple(str(column) for column in columns)
    named = [c for c in (message, *timer_tag_columns) if c is not None and c not in columns]
    named += [c for c in columns if c in (data or {})]  # a row's value or the shared one?
    if named or level not in LEVELS or len(set(columns)) != len(columns):
        raise ValueError(f"datacat: a bad event rows template ({name!r}: {named or level})")
    spec: JSONDict = {
        "name": name_field(name),
        "level": level,
        "category": None if category is None else text_field(category),
        "data": jsonable(dict(data or {})),
        "columns": columns,
        "message": None if message is None else columns.index(message),
        "timer": None,
    }
    if timer is not None:
        tags = {str(k): str(v) for k, v in (timer_tags or {}).items()}
        spec["timer"] = {
            "name": name_field(timer),
            "unit": timer_unit,
            "tags": tags,
            "tag_columns": tuple((str(c), 1 + columns.index(c)) for c in timer_tag_columns),
        }
    return spec


def operations(
    sid: str,
    spec: JSONDict,
    rows: Sequence[Row],
    wire: Callable[[str, str, Any], JSONDict],
    plain: Callable[[Any], bool],
    finite: Callable[[JSONDict, str], bool],
    broken: Callable[[Any], None],
) -> list[JSONDict]:
    """The event (and timer) operations of ``rows``, made as the sender makes those of
    ``log_event`` and ``observe``: ``wire`` makes an operation, ``plain(body)`` tells a body
    that needs no ``jsonable``, ``finite(metric, sid)`` keeps (or drops and counts) a timer,
    ``broken(row)`` hears of a row that fits no event (it is left out; the others are not)."""
    ops: list[JSONDict] = []
    for row in rows:
        try:
            ops.extend(_row(sid, spec, row, wire, plain, finite))
        except Exception:
            broken(row)
    return ops


def _row(
    sid: str,
    spec: JSONDict,
    row: Row,
    wire: Callable[[str, str, Any], JSONDict],
    plain: Callable[[Any], bool],
    finite: Callable[[JSONDict, str], bool],
) -> list[JSONDict]:
    body, metric = bodies(spec, row, plain)
    event = wire("event", sid, body)
    if metric is None:
        return [event]
    return [event, wire("metric", sid, metric)] if finite(metric, sid) else [event]


def bodies(spec: JSONDict, row: Row, plain: Callable[[Any], bool]) -> tuple[JSONDict, Any]:
    """The event body of ``row`` and its timer's metric body (None without a timer), as the
    verbs make them (``rowbodies.row_bodies``, which the server's ``rows`` operation expands with
    too); ``plain(body)`` tells a body that needs no ``jsonable``. Raises for a row that fits
    no event."""
    _check_width(spec, row)
    body, metric = row_bodies(spec, row)
    if "message" in body:
        body["message"] = text_field(body["message"])
    if not plain(body):
        body = jsonable(body)
    return body, metric


def _check_width(spec: JSONDict, row: Row) -> None:
    width = row_width(spec)
    if len(row) != width:
        raise ValueError(f"a row of {len(row)} values, not {width}")


def split_ready(
    spec: JSONDict, rows: Sequence[Row], plain: Callable[[Any], bool]
) -> tuple[list[Row], list[Row]]:
    """The rows the server may take as they are (a ``rows`` operation), and the others, which
    ``operations`` expands (and repairs, or drops and counts, as the verbs would). A row is
    ready when its values are strict JSON (``plain(row)``), its timestamp and timer a finite float,
    its message and timer tag columns clean text (or no message): then the server's expansion
    (``rowbodies.row_bodies``) makes exactly the bodies ``bodies`` makes here."""
    width = row_width(spec)
    message = None if spec["message"] is None else 1 + spec["message"]
    timer = spec["timer"]
    texts = [index for _, index in timer["tag_columns"]] if timer is not None else []
    ready: list[Row] = []
    other: list[Row] = []
    for row in rows:
        ok = (
            type(row) is tuple
            and len(row) == width
            and _finite(row[0])
            and 0.0 <= row[0] <= MAX_TIMESTAMP  # as the server reads a timestamp
            and (timer is None or _finite(row[-1]))
            and (message is None or row[message] is None or _clean(row[message]))
            and all(_clean(row[index]) for index in texts)
            and plain(row)
        )
        (ready if ok else other).append(row)
    return ready, other


def _finite(value: Any) -> bool:
    return type(value) is float and math.isfinite(value)


def _clean(value: Any) -> bool:
    return type(value) is str and text_field(value) is value


def wire_form(spec: JSONDict, rows: Sequence[Row]) -> JSONDict:
    """The ``data`` of a ``rows`` operation of ``POST /api/batch``."""
    return {"template": spec, "rows": rows}


def verb_items(
    sid: str, spec: JSONDict, rows: Sequence[Row]
) -> tuple[list[tuple[Any, ...]], list[Row]]:
    """The queue items ``log_event`` and ``log_timer`` would have made of ``rows`` (the timer
    a flat metric with its count, min and max, as ``row_bodies`` makes it), and apart the rows
    that fit no event. For a hand-over that holds objects of the app's own types: there the
    sender's child must get them as the verbs' items, whose message and tags are made text in
    this process, as the sender in this process would (``offload.encode_items``)."""
    name, level, category = spec["name"], spec["level"], spec["category"]
    items: list[tuple[Any, ...]] = []
    unfit: list[Row] = []
    for row in rows:
        try:
            _check_width(spec, row)
            body, metric = row_bodies(spec, row)
            event: tuple[Any, ...] = ("event", sid, name, body["data"], level, category, None,
                                      body.get("message"), {}, row[0], None)  # fmt: skip
            if metric is None:
                items.append(event)
                continue
            value = metric["value"]
            flat = ("metric", sid, metric["name"], value, "timer", metric.get("unit"),
                    metric.get("tags"), metric["timestamp"], 1, value, value)  # fmt: skip
            items += (event, flat)
        except Exception:
            unfit.append(row)  # the child drops and counts it, as it does any row that fits not
    return items, unfit


def events_in(rows: Sequence[Row], spec: JSONDict) -> int:
    """How many queue items ``rows`` stand for (what a refused ``log_rows`` counts as lost)."""
    return len(rows) * (1 if spec.get("timer") is None else 2)
