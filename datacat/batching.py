"""Turning queued items into batch operations: what the sender sends, and what it leaves out.

Owns the item kinds of the queue, ``Batcher`` (client-made ``op_id``s, state updates that change
nothing dropped, updates of one session waiting in one batch folded, heartbeats collapsed,
observations aggregated per session/name/type/tags, non-JSON values converted, non-finite
metrics dropped and counted), the event body built from ``Session.log_event``'s tuple, and the
id generator. Pure: no I/O, no threads.
"""

from __future__ import annotations

import bisect
import itertools
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from datacat import rows as rows_module
from datacat._internal import (
    MAX_STRING,
    has_surrogate,
    jsonable,
    log_once,
    logger,
    name_field,
    text_field,
)
from datacat.merge import changes_nothing, combine_updates, deep_merge

JSONDict = dict[str, Any]
# (op, session id, payload) as a session verb queued it; the two hot verbs queue their
# arguments flat instead, (op, session id, *arguments), to make one tuple per call, not two.
Item = tuple[Any, ...]

OBSERVE = "observe"  # raw observation, aggregated by the sender
RAW = "raw"  # a ready wire operation (the daemon forwards these)
ROWS = "rows"  # (ROWS, session id, template, rows): ``Session.log_rows`` (``datacat.rows``)
#: Rows in one ``rows`` operation at most (the server takes up to ``model.MAX_ROWS``): a
#: request of ~150 kB, and a refused operation costs no more than that.
ROWS_PER_OPERATION = 1000


class Batcher:
    """Turns queued items into wire operations; remembers each session's state to filter.

    ``on_drop(session_id, count)`` hears of every item left out because it cannot be sent (a
    non-finite metric, an item whose arguments break its body): the worker reports those as
    ``datacat.dropped_items``. One such item never costs the others of its batch."""

    def __init__(self, on_drop: Callable[[str, int], None] | None = None) -> None:
        self.states: dict[str, JSONDict] = {}
        # Sessions whose server state is not what this batcher saw (inherited by a forked
        # child, whose parent writes too): their updates are never filtered as no-ops.
        self.unknown: set[str] = set()
        self.nonfinite = 0
        self.on_drop = on_drop
        #: The server takes ``rows`` operations (its last answer listed them): rows go as they
        #: are, instead of an event and a metric operation each (``_rows``).
        self.rows_on_wire = False

    def operations(self, items: Iterable[Item]) -> list[JSONDict]:
        batch = _Batch()
        for item in items:
            try:
                self._add(batch, item)
            except Exception:  # one malformed item must not cost the batch (and its creates)
                self._broken(item)
        batch.ops.extend(batch.aggregates.pop(None, self._broken_metric))
        folded = batch.folded
        return [op for op in batch.ops if id(op) not in folded] if folded else batch.ops

    def _add(self, batch: _Batch, item: Item) -> None:
        op, sid = item[0], item[1]
        if op == OBSERVE:
            self._observe(batch.aggregates, sid, item[2:])
            return
        if op == ROWS:
            self._rows(batch, sid, item[2], item[3])
            return
        payload = item[2] if len(item) == 3 else _BODIES[op](*item[2:])
        if op in ("create", "end", "crash"):
            if op != "create":
                batch.ops.extend(batch.aggregates.pop(sid, self._broken_metric))
            batch.updates.pop(sid, None)  # never fold an update across these
        if op == "state":
            wire_op = self._state(sid, payload, batch.updates, batch.folded)
        else:
            wire_op = self._fold(op, sid, payload, batch.last.get(sid))
        if wire_op is not None:
            batch.ops.append(wire_op)
            batch.last[sid] = wire_op

    def _rows(self, batch: _Batch, sid: str, spec: JSONDict, rows: list[Any]) -> None:
        if self.rows_on_wire:  # the rows as they are, but those the server would refuse
            ready, rows = rows_module.split_ready(spec, rows, _plain_tree)
            for start in range(0, len(ready), ROWS_PER_OPERATION):
                chunk = ready[start : start + ROWS_PER_OPERATION]
                batch.append(sid, [wire(ROWS, sid, rows_module.wire_form(spec, chunk))])
        self._rows_expanded(batch, sid, spec, rows)

    def _rows_expanded(self, batch: _Batch, sid: str, spec: JSONDict, rows: list[Any]) -> None:
        def broken(row: Any) -> None:
            self._broken((ROWS, sid), "row of events", rows_module.events_in([row], spec))

        ops = rows_module.operations(sid, spec, rows, wire, _plain_tree, self._finite, broken)
        batch.append(sid, ops)

    def expand(self, op: JSONDict) -> list[JSONDict]:
        """The event and timer operations of a ``rows`` operation (the server refused it, or it
        is too big for the server), made as ``_rows`` makes those of rows it does not send as
        they are."""
        sid, data = op.get("session_id", ""), op["data"]
        batch = _Batch()
        self._rows_expanded(batch, sid, data["template"], data["rows"])
        return batch.ops

    def _broken(self, item: Any, what: str = "item", count: int = 1) -> None:
        """An item (or aggregated metric) whose body cannot be built: logged once, dropped."""
        log_once(
            "broken-item",
            "datacat: a %s could not be turned into an operation (bad arguments?); dropped "
            "(further ones are only counted)",
            what,
        )
        logger.debug("datacat: dropped %r", item, exc_info=True)
        self._dropped(item[1] if isinstance(item, tuple) and len(item) > 1 else "", count)

    def _broken_metric(self, sid: str, count: int) -> None:
        self._broken(("metric", sid), "metric", count)

    def _dropped(self, sid: Any, count: int = 1) -> None:
        if self.on_drop is not None and isinstance(sid, str):
            self.on_drop(sid, count)

    def _fold(self, op: str, sid: str, payload: Any, previous: JSONDict | None) -> JSONDict | None:
        """The wire operation for one item, or None when it was folded into ``previous``."""
        if op == RAW:
            return dict(payload, op_id=payload.get("op_id") or new_id())
        if op == "heartbeat" and previous is not None and previous["op"] == "heartbeat":
            previous["data"] = payload
            return None
        if op == "metric" and not self._finite(payload, sid):
            return None
        if op == "create":
            if sid not in self.unknown:
                self.states.setdefault(sid, jsonable(payload.get("state") or {}))
        elif op in ("end", "crash"):
            self.states.pop(sid, None)
        return wire(op, sid, payload if _plain_tree(payload) else jsonable(payload))

    def _state(
        self, sid: str, payload: JSONDict, updates: dict[str, JSONDict], folded: set[int]
    ) -> JSONDict | None:
        """A state update, or None when it changes nothing. An update of the same session
        already waiting in this batch is folded into it, at this later place (and time)."""
        update = jsonable(payload["state"])
        known = self.states.get(sid)
        if known is not None:
            if changes_nothing(known, update):
                return None
            self.states[sid] = deep_merge(known, update)
        waiting = updates.get(sid)
        if waiting is not None:
            combined = combine_updates(waiting["data"]["state"], update)
            if combined is not None:
                folded.add(id(waiting))
                update = combined
        updates[sid] = wire("state", sid, {"state": update, "timestamp": payload["timestamp"]})
        return updates[sid]

    def _finite(self, metric: JSONDict, sid: str) -> bool:
        value = metric.get("value")
        if finite_number(value):
            return True
        self.nonfinite += 1
        self._dropped(sid)
        log_once(
            "nonfinite",
            "datacat: metric %.200r has value %.60r (not a finite number); dropped "
            "(further ones are only counted)",
            metric.get("name"),
            value,
        )
        return False

    def _observe(self, aggregates: _Aggregates, sid: str, payload: tuple[Any, ...]) -> None:
        if finite_number(payload[1]):
            aggregates.add(sid, payload)
        else:
            self._finite({"name": payload[0], "value": payload[1]}, sid)


def finite_number(value: Any) -> bool:
    """An int or float (not a bool) a JSON reader takes: finite, and an int a float can hold."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range (10**400)
        return False


class _Batch:
    """What one ``Batcher.operations`` call is building."""

    def __init__(self) -> None:
        self.ops: list[JSONDict] = []
        self.last: dict[str, JSONDict] = {}  # the latest operation of each session in ``ops``
        self.updates: dict[str, JSONDict] = {}  # each session's state update waiting in ``ops``
        self.folded: set[int] = set()  # ids of updates folded into a later one
        self.aggregates = _Aggregates()

    def append(self, sid: str, ops: list[JSONDict]) -> None:
        """Ready operations of session ``sid``, in order, after those so far."""
        if ops:
            self.ops.extend(ops)
            self.last[sid] = ops[-1]


class _Aggregates:
    """Observations of one drain folded into one metric per (session, name, type, tags)."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[Any, ...], list[Any]] = {}  # key -> the values observed
        # The arguments as given (tags in their order) -> that key's values: a repeated
        # observation (``@track``, a loop) costs one lookup, not a sort of its tags.
        self._by_call: dict[tuple[Any, ...], list[Any]] = {}

    def add(self, sid: str, payload: tuple[Any, ...]) -> None:
        # Only collect here; count/sum/min/max run once per key in C (``_metric``).
        name, value, kind, tags, unit, buckets = payload
        if buckets is not None and type(buckets) is not tuple:
            buckets = tuple(buckets)  # a list may change after the call; a tuple cannot
        call: tuple[Any, ...] = (
            sid,
            name,
            kind,
            tuple(tags.items()) if tags else (),
            unit,
            buckets,
        )
        try:
            values = self._by_call.get(call)
        except TypeError:  # an unhashable tag value: the key made from its text
            values, call = None, ()
        if values is None:
            values = self._values(sid, name, kind, tags, unit, buckets)
            if call:
                self._by_call[call] = values
        values.append(value)

    def _values(
        self, sid: str, name: Any, kind: Any, tags: Any, unit: Any, buckets: Any
    ) -> list[Any]:
        """The list of values of the metric these arguments name (made on first use)."""
        bounds = buckets if kind != "counter" else None
        try:
            key = (sid, name, kind, tuple(sorted(tags.items())) if tags else (), unit, bounds)
            return self._by_key.setdefault(key, [])
        except TypeError:  # tags that cannot be sorted or hashed: keyed by their text
            text = tuple(sorted((str(k), str(v)) for k, v in tags.items()))
            return self._by_key.setdefault((sid, name, kind, text, unit, bounds), [])

    def pop(self, sid: str | None, broken: Callable[[str, int], None]) -> list[JSONDict]:
        """Metric operations of one session (``None``: of all), removed from the aggregates;
        ``broken(session_id, observations)`` hears of one that cannot be built (odd bounds)."""
        keys = [k for k in self._by_key if sid is None or k[0] == sid]
        if sid is None:
            self._by_call.clear()
        elif keys:  # what is popped must not be added to again
            calls = self._by_call
            self._by_call = {c: v for c, v in calls.items() if c[0] != sid}
        metrics = []
        for key in keys:
            values = self._by_key.pop(key)
            try:
                metrics.append(self._metric(key, values))
            except Exception:
                broken(key[0], len(values))
        return metrics

    @staticmethod
    def _metric(key: tuple[Any, ...], values: list[Any]) -> JSONDict:
        sid, name, kind, tag_key, unit, bounds = key
        if len(values) == 1:  # common for tagged series (one per test, say): no folding
            total = low = high = values[0]
        else:
            total, low, high = sum(values), min(values), max(values)
        body: JSONDict = {
            "name": name_field(name),
            "type": kind,
            "value": total,
            "count": len(values),
            "timestamp": time.time(),
        }
        if kind != "counter":
            body["min"], body["max"] = low, high
        if bounds:
            counts = [0] * (len(bounds) + 1)
            for value in values:
                counts[bisect.bisect_left(bounds, value)] += 1
            body.update(buckets=list(bounds), bucket_counts=counts)
        if unit:
            body["unit"] = unit
        if tag_key:
            body["tags"] = {str(k): str(v) for k, v in tag_key}
        return wire("metric", sid, body)


_LEAVES = frozenset({int, bool, type(None)})
_MAX_DEPTH = 32


def _plain_tree(value: Any, depth: int = 0) -> bool:
    """``value`` (a dict, list or tuple) is strict JSON as it is, so ``jsonable`` need not
    rebuild it: str keys; str (not too long, no NUL, no lone surrogate), int, bool, None,
    finite float leaves (what ``_internal.jsonable`` leaves alone; keep the two in step). A
    tuple passes as it is: JSON writes it as the array ``jsonable``'s list would be (the pytest
    plugin's events hold tuples: rebuilding them cost more than the rest of the event). One
    call per container, the tests inline: ~3x cheaper than rebuilding, and most bodies pass."""
    kind = type(value)
    if kind is dict:
        for key in value:
            if (
                type(key) is not str
                or "\x00" in key
                or not (key.isascii() or not has_surrogate(key))
            ):
                return False
        items: Any = value.values()
    elif kind is list or kind is tuple:
        items = value
    else:
        return False
    for item in items:
        kind = type(item)
        if kind is str:
            if (
                len(item) > MAX_STRING
                or "\x00" in item
                or not (item.isascii() or not has_surrogate(item))
            ):
                return False  # the server refuses these
        elif kind is float:
            if not math.isfinite(item):
                return False
        elif kind is dict or kind is list or kind is tuple:
            if depth >= _MAX_DEPTH or not _plain_tree(item, depth + 1):
                return False
        elif kind not in _LEAVES:
            return False
    return True


def event_body(
    name: Any,
    data: Any,
    level: Any,
    category: Any,
    labels: Any,
    message: Any,
    fields: JSONDict,
    timestamp: float,
    trace: tuple[str, str] | None,
) -> JSONDict:
    """The wire body of an event queued by ``Session.log_event`` as a tuple."""
    # Text fields as the server takes them (a str, no NUL, names cut to MAX_NAME): one
    # odd value must not get the whole event refused.
    body: JSONDict = {"name": name_field(name), "level": level, "timestamp": timestamp}
    if data is not None:
        body["data"] = dict(data) if isinstance(data, Mapping) else {"value": data}
    if category is not None:
        body["category"] = text_field(category)
    if labels:
        body["labels"] = [text_field(label) for label in _listed(labels)]
    if message is not None:
        body["message"] = text_field(message)
    body.update(fields)
    if trace is not None:
        body["trace_id"], body["span_id"] = trace
    return body


def _listed(labels: Any) -> Any:
    """Labels as an iterable of labels: one string (or any non-iterable) is one label."""
    if isinstance(labels, str | bytes) or not isinstance(labels, Iterable):
        return (labels,)
    return labels


def metric_body(
    name: Any,
    value: Any,
    kind: Any,
    unit: Any,
    tags: Any,
    timestamp: float,
    count: Any = None,
    low: Any = None,
    high: Any = None,
    buckets: Any = None,
    bucket_counts: Any = None,
) -> JSONDict:
    """The wire body of a metric queued flat by ``log_metric``/``log_timer``/``log_aggregate``
    (tags already text: ``Session`` made them so)."""
    body: JSONDict = {"name": name_field(name), "value": value, "type": kind}
    body["timestamp"] = timestamp
    if count is not None:
        body["count"] = count
    if low is not None or high is not None:
        body["min"], body["max"] = low, high
    if unit is not None:
        body["unit"] = unit
    if tags:
        body["tags"] = tags
    if buckets is not None:
        body.update(buckets=list(buckets), bucket_counts=list(bucket_counts or ()))
    return body


# How a flat item's arguments become its operation's body (items of other ops carry it ready).
_BODIES: dict[str, Callable[..., JSONDict]] = {"event": event_body, "metric": metric_body}

# A private generator: an application's ``random.seed(...)`` must not repeat our ids; it is
# reseeded in forked children (``reseed``).
_rng = random.Random()
#: The ids of the current millisecond: (that millisecond, the text of the id up to its last
#: group, the counter that makes the last group). Replaced whole, never changed in place, so
#: threads share it without a lock (``next`` on a counter is atomic).
_ids: tuple[int, str, Iterator[int]] = (-1, "", iter(()))
_COUNTER_START = 1 << 47  # the counter starts below this: 2**47 ids before its 48 bits run out


def new_id() -> str:
    """A time-ordered UUID (version 7, RFC 9562): 48 bits of Unix milliseconds, then 74 bits
    from a private random generator. Ids made later sort later, so the server's unique index of
    op ids grows at its end instead of dirtying pages all over it (with random ids, SQLite's
    commit of a batch grew with the table). Within a millisecond the last 48 bits count up from
    a random start (RFC 9562's "monotonic random", method 2): an id costs a clock read and one
    format, ~2.5x less than drawing 74 random bits each time."""
    ms = time.time_ns() // 1_000_000
    ids = _ids
    if ids[0] != ms:
        ids = _new_millisecond(ms)
    return f"{ids[1]}{next(ids[2]):012x}"


def _new_millisecond(ms: int) -> tuple[int, str, Iterator[int]]:
    global _ids
    rand = _rng.getrandbits(26)  # 12 bits after the version, 14 after the variant
    stamp = f"{ms & 0xFFFF_FFFF_FFFF:012x}"
    head = f"{stamp[:8]}-{stamp[8:]}-7{rand >> 14:03x}-{0x8000 | (rand & 0x3FFF):04x}-"
    _ids = (ms, head, itertools.count(_rng.randrange(_COUNTER_START)))
    return _ids


def wire(op: str, sid: str, data: Any) -> JSONDict:
    return {"op_id": new_id(), "op": op, "session_id": sid, "data": data}


def reseed() -> None:
    """In a forked child: from ``os.urandom``, so the child never repeats the parent's ids (nor
    goes on with its counter)."""
    global _ids
    _rng.seed()
    _ids = (-1, "", iter(()))


os.register_at_fork(after_in_child=reseed)  # also without a worker (a session's own id)
