"""The REST blueprint under ``/api``: parse and validate, call storage, shape responses.

Views stay thin: bodies are validated by ``datacat.model`` (the shared core), writes go through
``storage`` inside one transaction, reads through ``queries``. Errors are raised, never returned;
``datacat_server.errors`` turns them into the JSON error shape.
"""

from __future__ import annotations

import hmac
import json
import math
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge, Unauthorized

from datacat import model
from datacat.errors import ValidationError
from datacat_server import batch, queries, storage
from datacat_server.schema import events, metrics

bp = Blueprint("api", __name__, url_prefix="/api")

_SUCCESS = b'{"success":true}\n'
_CRASH_OK = b'{"status":"ok"}\n'
MAX_LIMIT = 10_000


def _store() -> storage.Storage:
    store: storage.Storage = current_app.extensions["datacat"]
    return store


def _clock() -> queries.Clock:
    return queries.Clock(model.now(), _store().heartbeat_timeout)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)  # built once: per-call costs


def _body() -> Any:
    """The request body as JSON; an empty body is ``None``."""
    raw = _raw_body()
    if not raw.strip():
        return None
    try:
        return _DECODER.decode(raw.decode(json.detect_encoding(raw)))
    except (ValueError, RecursionError) as exc:
        raise ValidationError("invalid JSON", str(exc)[:200]) from None


def _raw_body() -> bytes:
    """The body's bytes. One sent chunked (no Content-Length) is read up to the size limit
    from the server's own stream: Werkzeug's cuts it at the limit without a word, and the
    truncated JSON was answered "invalid JSON" instead of 413."""
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if request.content_length is not None or not limit:
        return request.get_data(cache=False)
    raw: bytes = request.environ["wsgi.input"].read(limit + 1)
    if len(raw) > limit:
        raise RequestEntityTooLarge(f"the body is larger than {limit} bytes")
    return raw


def _json(raw: bytes, status: int = 200) -> Response:
    return Response(raw, status=status, mimetype="application/json")


@bp.before_request
def _check_api_key() -> None:
    """With ``DATACAT_API_KEY`` set, every ``/api`` request needs it (Bearer or X-API-Key)."""
    expected = current_app.config.get("DATACAT_API_KEY")
    if expected and not key_given(str(expected)):
        raise Unauthorized("missing or wrong API key (Authorization: Bearer KEY or X-API-Key)")


def key_given(expected: str) -> bool:
    """Whether the request carries ``expected`` as ``Authorization: Bearer`` or ``X-API-Key``;
    the one timing-safe comparison of the key (the dashboard uses it too)."""
    given = request.headers.get("X-API-Key") or ""
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


@bp.after_request
def _retention_after_write(response: Response) -> Response:
    """A due retention pass runs after a write's response has gone out, not in its way."""
    if request.method == "POST":
        retention = current_app.extensions["datacat_retention"]
        if retention.keep is not None:
            store = _store()
            response.call_on_close(lambda: retention.after_write(store))
    return response


@bp.post("/sessions")
def create_session() -> tuple[Response, int]:
    data = model.parse_create(_body())
    data["id"] = data["id"] or str(uuid.uuid4())
    store = _store()
    created = store.run(lambda conn: storage.create_session(conn, data, store.heartbeat_timeout))
    return jsonify(_get(data["id"])), 201 if created else 200


def _get(session_id: str) -> model.JSONDict:
    with _store().read() as conn:
        session = queries.get_session(conn, session_id, _clock())
    if session is None:
        raise storage.NotFound(session_id)
    return session


@bp.get("/sessions/<session_id>")
def get_session(session_id: str) -> Response:
    return jsonify(_get(session_id))


@bp.post("/sessions/<session_id>/state")
def update_state(session_id: str) -> Response:
    update, ts = model.parse_state(_body())
    return _commit(storage.update_state, session_id, update, ts)


@bp.post("/sessions/<session_id>/events")
def add_event(session_id: str) -> Response:
    return _commit(storage.add_event, session_id, model.parse_event(_body()))


@bp.post("/sessions/<session_id>/metrics")
def add_metric(session_id: str) -> Response:
    row = storage.metric_row(session_id, model.parse_metric(_body()))
    return _commit(storage.add_metrics, [row])


@bp.post("/sessions/<session_id>/heartbeat")
def heartbeat(session_id: str) -> Response:
    return _commit(storage.heartbeat, session_id, model.parse_heartbeat(_body())["timestamp"])


@bp.post("/sessions/<session_id>/end")
def end(session_id: str) -> Response:
    return _commit(storage.end, session_id, model.parse_end(_body())["timestamp"])


@bp.post("/sessions/<session_id>/crash")
def crash(session_id: str) -> Response:
    data = model.parse_crash(_body())
    args = (session_id, data["reason"], data["data"], data["timestamp"])
    return _commit(storage.crash, *args, answer=_CRASH_OK)


def _commit(write: Callable[..., None], *args: Any, answer: bytes = _SUCCESS) -> Response:
    """Run ``write(conn, *args)`` in one write transaction and answer ``answer``."""
    _store().run(lambda conn: write(conn, *args))
    return _json(answer)


@bp.post("/batch")
def apply_batch() -> Response:
    items = model.parse_batch(_body())
    return jsonify(batch.apply_batch(_store(), items))


@bp.get("/data/sessions")
def list_sessions() -> Response:
    args = request.args
    status = args.get("status")
    if status is not None and status not in queries.STATUSES:
        raise ValidationError("invalid parameter", f"status must be one of {queries.STATUSES}")
    flt = queries.SessionFilter(
        product=args.get("product"),
        version=args.get("version"),
        status=status,
        machine_id=args.get("machine_id"),
        created_after=query_time("created_after"),
        created_before=query_time("created_before"),
        state=_state_args(),
        summary=_flag_arg("summary"),
        limit=query_int("limit", 100),
        cursor=args.get("cursor"),
    )
    with _store().read() as conn:
        page, cursor = queries.list_sessions(conn, flt, _clock())
    return _page(page, cursor)


@bp.get("/sessions/<session_id>/events")
def list_events(session_id: str) -> Response:
    return _list_rows(events, session_id, "level", model.LEVELS)


@bp.get("/sessions/<session_id>/metrics")
def list_metrics(session_id: str) -> Response:
    return _list_rows(metrics, session_id, "type", model.METRIC_TYPES)


def _list_rows(table: sa.Table, session_id: str, kind_arg: str, kinds: tuple[str, ...]) -> Response:
    """One page of ``table``'s rows; ``kind_arg`` (level or type) must be one of ``kinds``."""
    kind = request.args.get(kind_arg)
    if kind is not None and kind not in kinds:
        raise ValidationError("invalid parameter", f"{kind_arg} must be one of {kinds}")
    flt = queries.RowFilter(
        name=request.args.get("name"),
        kind=kind,
        since=query_time("since"),
        limit=query_int("limit", 1000),
        cursor=request.args.get("cursor"),
    )
    with _store().read() as conn:
        result = queries.list_rows(conn, table, session_id, flt)
    if result is None:
        raise storage.NotFound(session_id)
    return _page(*result)


def _page(items: list[model.JSONDict], cursor: str | None) -> Response:
    """A JSON array; the next page's cursor travels in ``X-Next-Cursor`` (absent at the end)."""
    response = jsonify(items)
    if cursor:
        response.headers["X-Next-Cursor"] = cursor
    return response


def _state_args() -> list[tuple[str, str]]:
    """``?state.player.level=3`` pairs: (``player.level``, ``3``)."""
    pairs = request.args.items(multi=True)
    return [(k.removeprefix("state."), v) for k, v in pairs if k.startswith("state.")]


def query_int(name: str, default: int, low: int = 1, high: int = MAX_LIMIT) -> int:
    """A query-string integer in low..high (``default`` when absent)."""
    raw = request.args.get(name)
    if raw is None:
        return default
    # (length first: int() of a huge digit string is slow and may be refused)
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 20 and low <= int(raw) <= high):
        raise ValidationError("invalid parameter", f"{name} must be an integer in {low}..{high}")
    return int(raw)


def _flag_arg(name: str) -> bool:
    return request.args.get(name, "").lower() in ("1", "true", "yes")


def query_time(name: str) -> float | None:
    """A query-string time: Unix seconds or ISO 8601."""
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        number = float(raw)
    except ValueError:
        return model.parse_timestamp(raw, name)
    if not math.isfinite(number):
        raise ValidationError("invalid parameter", f"{name} must be finite")
    return model.parse_timestamp(number, name)
