"""Turning queued items into batch operations: what the sender sends, and what it leaves out.

Owns the item kinds of the queue, ``Batcher`` (client-made ``op_id``s, state updates that change
nothing dropped, updates of one session waiting in one batch folded, heartbeats collapsed,
observations aggregated per session/name/type/tags, non-JSON values converted, non-finite
metrics dropped and counted), the event body built from ``Session.log_event``'s tuple, and the
id generator. Pure: no I/O, no threads.
"""

from __future__ import annotations

import bisect
import math
import random
import time
from collections.abc import Iterable, Mapping
from typing import Any

from datacat._internal import MAX_STRING, jsonable, log_once, name_field, text_field
from datacat.merge import changes_nothing, combine_updates, deep_merge

JSONDict = dict[str, Any]
# (op, session id, payload) as a session verb queued it; the two hot verbs queue their
# arguments flat instead, (op, session id, *arguments), to make one tuple per call, not two.
Item = tuple[Any, ...]

OBSERVE = "observe"  # raw observation, aggregated by the sender
RAW = "raw"  # a ready wire operation (the daemon forwards these)


class Batcher:
    """Turns queued items into wire operations; remembers each session's state to filter."""

    def __init__(self) -> None:
        self.states: dict[str, JSONDict] = {}
        self.nonfinite = 0

    def operations(self, items: Iterable[Item]) -> list[JSONDict]:
        ops: list[JSONDict] = []
        last: dict[str, JSONDict] = {}  # the latest operation of each session in ``ops``
        updates: dict[str, JSONDict] = {}  # each session's state update waiting in ``ops``
        folded: set[int] = set()  # ids of updates folded into a later one
        aggregates = _Aggregates()
        for item in items:
            op, sid = item[0], item[1]
            if op == OBSERVE:
                self._observe(aggregates, sid, item[2:])
                continue
            payload = item[2] if len(item) == 3 else event_body(*item[2:])
            if op in ("create", "end", "crash"):
                ops.extend(aggregates.pop(sid) if op != "create" else ())
                updates.pop(sid, None)  # never fold an update across these
            if op == "state":
                wire_op = self._state(sid, payload, updates, folded)
            else:
                wire_op = self._fold(op, sid, payload, last.get(sid))
            if wire_op is not None:
                ops.append(wire_op)
                last[sid] = wire_op
        ops.extend(aggregates.pop(None))
        return [op for op in ops if id(op) not in folded] if folded else ops

    def _fold(self, op: str, sid: str, payload: Any, previous: JSONDict | None) -> JSONDict | None:
        """The wire operation for one item, or None when it was folded into ``previous``."""
        if op == RAW:
            return dict(payload, op_id=payload.get("op_id") or new_id())
        if op == "heartbeat" and previous is not None and previous["op"] == "heartbeat":
            previous["data"] = payload
            return None
        if op == "metric" and not self._finite(payload):
            return None
        if op == "create":
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

    def _finite(self, metric: JSONDict) -> bool:
        value = metric.get("value")
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return True
        self.nonfinite += 1
        log_once(
            "nonfinite",
            "datacat: metric %r has value %r (not a finite number); dropped "
            "(further ones are only counted)",
            metric.get("name"),
            value,
        )
        return False

    def _observe(self, aggregates: _Aggregates, sid: str, payload: tuple[Any, ...]) -> None:
        value = payload[1]
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            aggregates.add(sid, payload)
        else:
            self._finite({"name": payload[0], "value": value})


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

    def pop(self, sid: str | None) -> list[JSONDict]:
        """Metric operations of one session (``None``: of all), removed from the aggregates."""
        keys = [k for k in self._by_key if sid is None or k[0] == sid]
        if sid is None:
            self._by_call.clear()
        elif keys:  # what is popped must not be added to again
            calls = self._by_call
            self._by_call = {c: v for c, v in calls.items() if c[0] != sid}
        return [self._metric(k, self._by_key.pop(k)) for k in keys]

    @staticmethod
    def _metric(key: tuple[Any, ...], values: list[Any]) -> JSONDict:
        sid, name, kind, tag_key, unit, bounds = key
        if len(values) == 1:  # common for tagged series (one per test, say): no folding
            total = low = high = values[0]
        else:
            total, low, high = sum(values), min(values), max(values)
        body: JSONDict = {
            "name": name,
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
    """``value`` (a dict or list) is strict JSON as it is, so ``jsonable`` need not rebuild
    it: str keys; str (not too long, no NUL), int, bool, None, finite float leaves (what
    ``_internal.jsonable`` leaves alone; keep the two in step). One call per
    container, the leaves checked inline: ~3x cheaper than rebuilding, and most bodies pass."""
    if type(value) is dict:
        if not all(type(key) is str and "\x00" not in key for key in value):
            return False
        items: Any = value.values()
    elif type(value) is list:
        items = value
    else:
        return False
    for item in items:
        kind = type(item)
        if kind is str:
            if len(item) > MAX_STRING or "\x00" in item:  # the server refuses NUL
                return False
        elif kind is float:
            if not math.isfinite(item):
                return False
        elif kind is dict or kind is list:
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
        body["labels"] = [text_field(label) for label in labels]
    if message is not None:
        body["message"] = text_field(message)
    body.update(fields)
    if trace is not None:
        body["trace_id"], body["span_id"] = trace
    return body


# A private generator: an application's ``random.seed(...)`` must not repeat our ids; it is
# reseeded in forked children (``reseed``). UUID version 4 bits set by hand: ~4x faster
# than ``str(uuid.uuid4())``, which matters at one id per operation.
_rng = random.Random()
_V4_CLEAR = ~((0xC000 << 48) | (0xF000 << 64)) & ((1 << 128) - 1)
_V4_SET = (0x8000 << 48) | (4 << 76)


def new_id() -> str:
    """A random UUID (version 4) in canonical form."""
    h = f"{(_rng.getrandbits(128) & _V4_CLEAR) | _V4_SET:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def wire(op: str, sid: str, data: Any) -> JSONDict:
    return {"op_id": new_id(), "op": op, "session_id": sid, "data": data}


def reseed() -> None:
    """In a forked child: from ``os.urandom``, so the child never repeats the parent's ids."""
    _rng.seed()
