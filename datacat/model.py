"""The data model shared by client and server: events, metrics, batch operations.

Each ``parse_*`` function takes a decoded JSON body (anything ``json.loads`` may return), checks
it against the contract in the README ("API decisions") and returns a normalised ``dict`` or
raises ``ValidationError`` naming the field. Timestamps are Unix seconds (float) inside the model;
the wire accepts a number or an ISO 8601 string and the server answers ISO 8601 UTC strings.
``dumps`` writes the compact JSON the server stores; ``json_text`` checks free-form JSON by
writing it (the server keeps the text). Stdlib only; no I/O.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from datacat.errors import ValidationError
from datacat.limits import CRASH_EVENT as CRASH_EVENT  # re-exported (``X as X``): the
from datacat.limits import DEFAULT_BUCKETS as DEFAULT_BUCKETS  # model's contract, as before
from datacat.limits import HUNG_EVENT as HUNG_EVENT
from datacat.limits import LEVELS as LEVELS
from datacat.limits import MAX_BATCH_OPERATIONS, MAX_DEPTH, MAX_NAME, MAX_TIMESTAMP
from datacat.limits import RECOVERED_EVENT as RECOVERED_EVENT
from datacat.rowbodies import row_width

JSONDict = dict[str, Any]

METRIC_TYPES = ("gauge", "counter", "histogram", "timer")
OPERATIONS = ("create", "state", "event", "metric", "heartbeat", "end", "crash", "rows")
#: Rows one ``rows`` operation may hold (each an event, and its timer if the template has one).
MAX_ROWS = 5_000

_MAX_FLOAT = sys.float_info.max
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


_EVENT_TEXT = (
    "category",
    "message",
    "exception_type",
    "exception_msg",
    "source_file",
    "source_function",
    "trace_id",
    "span_id",
)


@dataclass(frozen=True)
class Event:
    """One discrete occurrence in a session."""

    name: str
    level: str = "info"
    timestamp: float = 0.0
    category: str | None = None
    labels: list[str] = field(default_factory=list)
    message: str | None = None
    data: JSONDict = field(default_factory=dict)
    stacktrace: list[str] = field(default_factory=list)
    exception_type: str | None = None
    exception_msg: str | None = None
    source_file: str | None = None
    source_line: int | None = None
    source_function: str | None = None
    trace_id: str | None = None
    span_id: str | None = None

    def to_dict(self) -> JSONDict:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_dict(cls, body: Any) -> Event:
        return cls(**parse_event(body))


@dataclass(frozen=True)
class Metric:
    """One numeric measurement; histogram and timer aggregates carry count/min/max/buckets."""

    name: str
    value: float
    type: str = "gauge"
    timestamp: float = 0.0
    unit: str | None = None
    count: int | None = None
    min: float | None = None
    max: float | None = None
    buckets: list[float] | None = None
    bucket_counts: list[int] | None = None
    tags: dict[str, str] = field(default_factory=dict)
    metadata: JSONDict = field(default_factory=dict)

    def to_dict(self) -> JSONDict:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_dict(cls, body: Any) -> Metric:
        return cls(**parse_metric(body))


def now() -> float:
    """Current time as Unix seconds."""
    return time.time()  # the same clock as datetime.now(UTC).timestamp(), at a tenth the cost


def iso(ts: float | None) -> str | None:
    """Unix seconds as an ISO 8601 UTC string with microseconds (``...Z``)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_timestamp(value: Any, name: str = "timestamp") -> float:
    """A wire timestamp (number of Unix seconds, or ISO 8601 string) as Unix seconds."""
    if isinstance(value, bool):
        raise ValidationError("invalid field", f"{name} must be a number or ISO 8601 string")
    if isinstance(value, int | float):
        if not 0 <= value <= MAX_TIMESTAMP:
            raise ValidationError("invalid field", f"{name} must be Unix seconds before year 10000")
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError("invalid field", f"{name} is not ISO 8601: {value!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parse_timestamp(parsed.timestamp(), name)
    raise ValidationError("invalid field", f"{name} must be a number or ISO 8601 string")


def parse_uuid(value: Any, name: str = "id") -> str:
    """A UUID in canonical lower-case form."""
    if not isinstance(value, str):
        raise ValidationError("invalid field", f"{name} must be a UUID string")
    if _CANONICAL_UUID.fullmatch(value):  # the usual case, 10x cheaper than uuid.UUID()
        return value
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValidationError("invalid field", f"{name} is not a UUID: {value!r}") from None


def parse_create(body: Any) -> JSONDict:
    """Body of ``POST /api/sessions``: product, version, optional id, machine, state."""
    body = _object(body, "session")
    out: JSONDict = {
        "product": _text(body, "product", required=True),
        "version": _text(body, "version", required=True),
        "machine_id": _text(body, "machine_id"),
        "hostname": _text(body, "hostname"),
        "state": _dict(body, "state"),
        "timestamp": _timestamp(body),
    }
    out["id"] = parse_uuid(body["id"]) if body.get("id") is not None else None
    return out


def parse_state(body: Any) -> tuple[JSONDict, float]:
    """Body of a state update: the state itself, or ``{"state": {...}, "timestamp": ...}``."""
    body = _object(body, "state update")
    if isinstance(body.get("state"), dict) and set(body) <= {"state", "timestamp"}:
        return _dict(body, "state"), _timestamp(body)
    check_json(body, "state")
    return body, now()


def parse_event(body: Any) -> JSONDict:
    """Body of ``POST /api/sessions/{id}/events``."""
    return _event(body, text=False)[0]


def parse_event_text(body: Any) -> tuple[JSONDict, str | None]:
    """``parse_event`` and the compact JSON text of the event's ``data`` (``dumps``), which its
    check made as it went: the server stores it without encoding the data a second time. The
    text is None for data that passed the check but has no JSON form (never after a decode)."""
    return _event(body, text=True)


def _event(body: Any, text: bool) -> tuple[JSONDict, str | None]:
    """The hot path of batched ingest: fields that are absent take their defaults without a
    check each, and only the fields present go through their validator."""
    body = _object(body, "event")
    level = body.get("level", "error" if body.get("exception_type") else "info")
    if level not in LEVELS:
        raise ValidationError("invalid field", f"level must be one of {', '.join(LEVELS)}")
    out: JSONDict = {"name": _name(body), "level": level, "timestamp": _timestamp(body)}
    out.update(_EVENT_DEFAULTS)
    for key in _EVENT_TEXT_KEYS.intersection(body):
        out[key] = _text(body, key)
    if _EVENT_USUAL_KEYS.issuperset(body):  # no list field, no source_line: their defaults
        out["labels"], out["stacktrace"] = [], []
        out["data"], data_text = _data(body, text)
        out["source_line"] = None
        return out, data_text
    out["labels"] = _string_list(body, "labels")
    out["stacktrace"] = _stacktrace(body)
    out["data"], data_text = _data(body, text)
    out["source_line"] = _int(body, "source_line")
    return out, data_text


def _data(body: JSONDict, text: bool) -> tuple[JSONDict, str | None]:
    """An event's ``data`` (``_dict``), and its JSON text when ``text``."""
    value = body.get("data")
    if value is None:
        return {}, "{}"
    if not isinstance(value, dict):
        raise ValidationError("invalid field", "data must be an object")
    if not value:
        return value, "{}"
    if text:
        return value, json_text(value, "data")
    check_json(value, "data")
    return value, None


_EVENT_DEFAULTS = dict.fromkeys(_EVENT_TEXT)
_EVENT_TEXT_KEYS = frozenset(_EVENT_TEXT)
_EVENT_USUAL_KEYS = frozenset(("name", "level", "timestamp", "data", *_EVENT_TEXT))


def parse_metric(body: Any) -> JSONDict:
    """Body of ``POST /api/sessions/{id}/metrics``."""
    body = _object(body, "metric")
    kind = body.get("type", "gauge")
    if kind not in METRIC_TYPES:
        raise ValidationError("invalid field", f"type must be one of {', '.join(METRIC_TYPES)}")
    out: JSONDict = {
        "name": _name(body),
        "value": _number(body, "value", required=True),
        "type": kind,
        "timestamp": _timestamp(body),
        "unit": _text(body, "unit"),
        "count": _int(body, "count"),
        "min": _number(body, "min"),
        "max": _number(body, "max"),
        "tags": _tags(body),
        "metadata": _dict(body, "metadata"),
    }
    out.update(_buckets(body))
    return out


def parse_heartbeat(body: Any) -> JSONDict:
    """Body of a heartbeat (may be empty)."""
    body = {} if body is None else _object(body, "heartbeat")
    return {"timestamp": _timestamp(body)}


def parse_crash(body: Any) -> JSONDict:
    """Body of ``/crash``: optional reason and data."""
    body = {} if body is None else _object(body, "crash")
    return {
        "reason": _text(body, "reason") or "unknown",
        "data": _dict(body, "data"),
        "timestamp": _timestamp(body),
    }


def parse_end(body: Any) -> JSONDict:
    """Body of ``/end`` (may be empty)."""
    body = {} if body is None else _object(body, "end")
    return {"timestamp": _timestamp(body)}


def parse_rows(body: Any) -> tuple[JSONDict, list[list[Any]]]:
    """Data of a ``rows`` operation: ``{"template": {...}, "rows": [[timestamp, *values], ...]}``,
    many events of one shape (``datacat.rows``, the pytest plugin's passing tests). Checks the
    template and the rows' shape; each row's event and timer (``row_bodies``) are checked as
    any event and metric are."""
    body = _object(body, "rows")
    spec, rows = _template(body.get("template")), body.get("rows")
    if type(rows) is not list or not all(type(row) is list for row in rows):
        raise ValidationError("invalid field", "rows must be a list of lists")
    if len(rows) > MAX_ROWS:
        raise ValidationError("invalid field", f"at most {MAX_ROWS} rows in one operation")
    width = row_width(spec)
    for index, row in enumerate(rows):
        if len(row) != width:
            raise ValidationError(
                "invalid field", f"rows[{index}] has {len(row)} values, not {width}"
            )
    return spec, rows


def _template(spec: Any) -> JSONDict:
    """A ``rows`` template, checked (its event and timer fields are checked with each row)."""
    spec = _object(spec, "template")
    columns, message = spec.get("columns"), spec.get("message")
    shared, timer = spec.get("data") or {}, spec.get("timer")
    if type(columns) is not list or not all(type(c) is str for c in columns):
        raise ValidationError("invalid field", "template.columns must be a list of strings")
    if (
        len(set(columns)) != len(columns)
        or type(shared) is not dict
        or shared.keys() & set(columns)
    ):
        raise ValidationError("invalid field", "template.columns must be distinct, not in data")
    if message is not None and not (type(message) is int and 0 <= message < len(columns)):
        raise ValidationError("invalid field", "template.message must index a column, or be null")
    if timer is not None:
        timer = _object(timer, "template.timer")
        pairs = timer.get("tag_columns") or []
        if type(pairs) is not list or not all(_tag_column(p, columns) for p in pairs):
            raise ValidationError(
                "invalid field", "template.timer.tag_columns: [column, 1 + index]"
            )
        timer = {"name": timer.get("name"), "unit": timer.get("unit"),
                 "tags": _object(timer.get("tags") or {}, "template.timer.tags"),
                 "tag_columns": pairs}  # fmt: skip
    return {"name": spec.get("name"), "level": spec.get("level", "info"),
            "category": spec.get("category"), "data": shared, "columns": columns,
            "message": message, "timer": timer}  # fmt: skip


def _tag_column(pair: Any, columns: list[str]) -> bool:
    return (
        type(pair) is list
        and len(pair) == 2
        and type(pair[1]) is int
        and 1 <= pair[1] <= len(columns)
        and pair[0] == columns[pair[1] - 1]
    )


_PARSERS = {
    "rows": parse_rows,
    "create": parse_create,
    "event": parse_event,
    "metric": parse_metric,
    "heartbeat": parse_heartbeat,
    "end": parse_end,
    "crash": parse_crash,
}


@dataclass(frozen=True)
class Operation:
    """One item of ``POST /api/batch``: ``{"op_id", "op", "session_id", "data"}``."""

    op_id: str
    op: str
    session_id: str
    data: Any


def parse_batch(body: Any) -> list[Operation | ValidationError]:
    """The operations of a batch; a malformed envelope raises, a malformed item is returned
    as its ``ValidationError`` so the rest of the batch still applies."""
    body = _object(body, "batch")
    items = body.get("operations")
    if not isinstance(items, list):
        raise ValidationError("invalid field", "operations must be a list")
    if len(items) > MAX_BATCH_OPERATIONS:
        raise ValidationError("batch too large", f"at most {MAX_BATCH_OPERATIONS} operations")
    return [_operation_or_error(item) for item in items]


def parse_operation_data(op: Operation) -> Any:
    """Validate an operation's ``data`` with the parser of its kind."""
    if op.op == "state":
        return parse_state(op.data)
    return _PARSERS[op.op](op.data)


def _operation_or_error(item: Any) -> Operation | ValidationError:
    if type(item) is dict:  # the usual case, checked inline (one call per batched operation)
        op: Any = item.get("op")
        op_id: Any = item.get("op_id")
        session_id: Any = item.get("session_id")
        usual = op in OPERATIONS and type(op_id) is type(session_id) is str
        if usual and _CANONICAL_UUID.fullmatch(op_id) and _CANONICAL_UUID.fullmatch(session_id):
            return _operation(op_id, op, session_id, item.get("data"))
    try:
        item = _object(item, "operation")
        op = item.get("op")
        if op not in OPERATIONS:
            raise ValidationError("invalid field", f"op must be one of {', '.join(OPERATIONS)}")
        return _operation(
            parse_uuid(item.get("op_id"), "op_id"),
            op,
            parse_uuid(item.get("session_id"), "session_id"),
            item.get("data"),
        )
    except ValidationError as exc:
        return exc


def _operation(
    op_id: str, op: str, session_id: str, data: Any, _new: Any = object.__new__
) -> Operation:
    """``Operation(op_id, op, session_id, data)`` at less than half the cost (one per batched
    operation): a frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``;
    this fills the instance's ``__dict__`` (the same fields) in one call."""
    operation: Operation = _new(Operation)
    operation.__dict__.update(op_id=op_id, op=op, session_id=session_id, data=data)
    return operation


def _object(body: Any, what: str) -> JSONDict:
    if not isinstance(body, dict):
        raise ValidationError("invalid body", f"{what} must be a JSON object")
    return body


def _name(body: JSONDict) -> str:
    name = _text(body, "name", required=True)
    assert name is not None
    if not name.strip():
        raise ValidationError("invalid field", "name must not be empty")
    if len(name) > MAX_NAME:
        raise ValidationError("invalid field", f"name is longer than {MAX_NAME} characters")
    return name


def _text(body: JSONDict, key: str, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise ValidationError("missing field", f"{key} is required")
        return None
    if not isinstance(value, str):
        raise ValidationError("invalid field", f"{key} must be a string")
    if "\x00" in value:  # PostgreSQL text cannot hold it; refuse it on every backend alike
        raise ValidationError("invalid field", f"{key} must not contain NUL characters")
    if not value.isascii():
        _utf8(value, key)
    return value


def _utf8(text: str, key: str) -> None:
    """Refuse a lone surrogate (``"\\ud800"``, or Python's surrogateescape): UTF-8 cannot
    encode it, so no database or JSON reader could take it back."""
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValidationError(
            "invalid field", f"{key} holds a lone surrogate (not encodable as UTF-8)"
        ) from None


def _number(body: JSONDict, key: str, required: bool = False) -> float | None:
    value = body.get(key)
    if type(value) is float and -_MAX_FLOAT <= value <= _MAX_FLOAT:  # finite: the usual case
        return value
    if value is None:
        if required:
            raise ValidationError("missing field", f"{key} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError("invalid field", f"{key} must be a number")
    try:
        number = float(value)  # an int beyond float's range overflows here
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValidationError("invalid field", f"{key} must be finite")
    return number


def _int(body: JSONDict, key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("invalid field", f"{key} must be an integer")
    return value


def _dict(body: JSONDict, key: str) -> JSONDict:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError("invalid field", f"{key} must be an object")
    if value:
        check_json(value, key)
    return value


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
# JSONEncoder.encode builds a new C encoder on every call, which cost half of encoding a small
# row; this one is built once. No circular-reference check: values come from decoded JSON.
_C_ENCODER = (
    c_make_encoder(
        None, _ENCODER.default, encode_basestring_ascii, None, ":", ",", False, False, False
    )
    if c_make_encoder is not None
    else None
)


def dumps(value: Any) -> str:
    """Compact ASCII JSON, the form the server stores (non-finite numbers raise ``ValueError``)."""
    if _C_ENCODER is None:
        return _ENCODER.encode(value)
    return "".join(_C_ENCODER(value, 0))


def json_text(document: JSONDict | list[Any], key: str) -> str | None:
    """``document``'s ``dumps`` text, checked as ``check_json`` checks it (same errors); None
    when it passed the check but has no JSON form (never after a decode).

    The encoder does the check in C: it refuses non-finite numbers, escapes every non-ASCII
    character (a lone surrogate, like any character beyond the BMP, comes out as ``\\udXXX``)
    and writes one bracket per container (no more than ``MAX_DEPTH`` of them: not deeper).
    A text that fails any of these goes through ``check_json``'s walk, which has the final word.
    """
    try:
        text = dumps(document)
    except (ValueError, TypeError, RecursionError):
        check_json(document, key)  # raises the walk's error, or finds no fault in JSON terms
        return None
    if "\\ud" in text or text.count("{") + text.count("[") > MAX_DEPTH:
        check_json(document, key)
    return text


def check_json(document: JSONDict | list[Any], key: str) -> None:
    """Free-form JSON ``key`` must be storable and readable back: nested at most ``MAX_DEPTH``
    levels, finite numbers, strings and keys encodable as UTF-8. Iterative: a deep document
    must not exhaust the stack while it is being refused. (It runs on every event's ``data``,
    so the common scalars are let through first.)"""
    pending: list[tuple[Any, int]] = [(document, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise ValidationError("invalid field", f"{key} is nested deeper than {MAX_DEPTH}")
        if isinstance(node, dict):
            for name in node:
                if type(name) is str and not name.isascii():
                    _utf8(name, key)
            node = node.values()
        for value in node:
            kind = type(value)
            if kind is int or kind is bool or value is None:
                continue
            if isinstance(value, str):
                if not value.isascii():
                    _utf8(value, key)
            elif isinstance(value, float):
                if not math.isfinite(value):
                    raise ValidationError("invalid field", f"{key} holds a non-finite number")
            elif isinstance(value, dict | list):
                pending.append((value, depth + 1))


def _string_list(body: JSONDict, key: str) -> list[str]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationError("invalid field", f"{key} must be a list of strings")
    for text in value:
        if not text.isascii():
            _utf8(text, key)
    return value


def _stacktrace(body: JSONDict) -> list[str]:
    value = body.get("stacktrace")
    if isinstance(value, str):
        return _string_list({"stacktrace": value.splitlines()}, "stacktrace")
    return _string_list(body, "stacktrace")


def _tags(body: JSONDict) -> dict[str, str]:
    tags = body.get("tags")
    if type(tags) is dict:  # the usual case, ASCII names to ASCII text, in one loop
        for name, value in tags.items():
            if not (type(value) is type(name) is str and value.isascii() and name.isascii()):
                break
        else:
            return dict(tags)
    tags = _dict(body, "tags")
    if not all(isinstance(v, str | int | float | bool) for v in tags.values()):
        raise ValidationError("invalid field", "tags must map names to strings")
    return {k: str(v) for k, v in tags.items()}  # (check_json has checked them as text)


def _timestamp(body: JSONDict) -> float:
    value = body.get("timestamp")
    if type(value) is float and 0 <= value <= MAX_TIMESTAMP:  # the usual case, in one test
        return value
    return now() if value is None else parse_timestamp(value)


def _buckets(body: JSONDict) -> JSONDict:
    bounds, counts = body.get("buckets"), body.get("bucket_counts")
    if bounds is None and counts is None:
        return {"buckets": None, "bucket_counts": None}
    if not isinstance(bounds, list) or not isinstance(counts, list):
        raise ValidationError("invalid field", "buckets and bucket_counts go together as lists")
    if not all(
        isinstance(b, int | float) and not isinstance(b, bool) and math.isfinite(b) for b in bounds
    ) or bounds != sorted(bounds):
        raise ValidationError("invalid field", "buckets must be increasing finite numbers")
    if len(counts) != len(bounds) + 1 or not all(
        isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts
    ):
        raise ValidationError(
            "invalid field", "bucket_counts must hold len(buckets) + 1 non-negative integers"
        )
    return {"buckets": [float(b) for b in bounds], "bucket_counts": counts}
