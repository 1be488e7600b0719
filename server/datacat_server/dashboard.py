"""The HTML dashboard blueprint: pages, their JSON, the login that guards them.

Pages (``/``, ``/sessions``, ``/sessions/<id>``) are static shells; the browser fills them from
``/dashboard/api/...`` with vanilla JavaScript that writes data only as text (``textContent``),
never as HTML, and draws charts as SVG it builds itself. Everything is served from here (no CDN),
and a Content-Security-Policy allowing only this origin backs that up. With ``DATACAT_API_KEY``
set, every page and JSON view needs the key: as a header like the API, or as the cookie the login
form sets (an HMAC of the key, so the key itself never sits in the browser). The session page
refreshes every ``DATACAT_DASHBOARD_REFRESH`` seconds (app config or environment; default 5).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import Unauthorized
from werkzeug.wrappers import Response as BaseResponse

from datacat import model
from datacat.errors import ValidationError
from datacat_server import api, dashboard_queries, queries
from datacat_server.dashboard_queries import DashboardFilter
from datacat_server.storage import NotFound, Storage

bp = Blueprint(
    "dashboard",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/dashboard/static",
)

COOKIE = "datacat_dashboard"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
PUBLIC_ENDPOINTS = ("dashboard.static", "dashboard.login")


def _store() -> Storage:
    store: Storage = current_app.extensions["datacat"]
    return store


def _clock() -> queries.Clock:
    return queries.Clock(model.now(), _store().heartbeat_timeout)


def _cookie_value(key: str) -> str:
    """What the login cookie holds: proof of the key that is useless as the key itself."""
    return hmac.new(key.encode(), b"datacat-dashboard-v1", hashlib.sha256).hexdigest()


def _authorised(key: str) -> bool:
    if api.key_given(key):
        return True
    cookie = request.cookies.get(COOKIE, "")
    return hmac.compare_digest(cookie.encode(), _cookie_value(key).encode())


@bp.before_request
def _require_key() -> BaseResponse | None:
    """Pages redirect to the login form; JSON views answer 401 like the API."""
    key = current_app.config.get("DATACAT_API_KEY")
    if not key or request.endpoint in PUBLIC_ENDPOINTS or _authorised(str(key)):
        return None
    if request.path.startswith("/dashboard/api/"):
        raise Unauthorized("missing or wrong API key (log in at /dashboard/login)")
    return redirect(url_for("dashboard.login", next=request.full_path.rstrip("?")))


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if not request.path.startswith("/dashboard/static/"):
        response.headers["Cache-Control"] = "no-store"
    return response


def _page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    refresh = float(
        current_app.config.get("DATACAT_DASHBOARD_REFRESH")
        or os.environ.get("DATACAT_DASHBOARD_REFRESH")
        or 5.0
    )
    secured = bool(current_app.config.get("DATACAT_API_KEY"))
    html = render_template(template, refresh_ms=int(refresh * 1000), secured=secured, **context)
    return html, status


@bp.get("/")
def overview() -> tuple[str, int]:
    return _page("dashboard/overview.html", page="overview")


@bp.get("/sessions")
def sessions() -> tuple[str, int]:
    return _page("dashboard/sessions.html", page="sessions")


@bp.get("/sessions/<session_id>")
def session(session_id: str) -> tuple[str, int]:
    with _store().read() as conn:
        found = dashboard_queries.exists(conn, session_id)
    if not found:
        return _page("dashboard/missing.html", 404, page="session", session_id=session_id)
    return _page("dashboard/session.html", page="session", session_id=session_id)


@bp.route("/dashboard/login", methods=["GET", "POST"])
def login() -> BaseResponse | tuple[str, int]:
    target = _safe_next(request.values.get("next", "/"))
    key = str(current_app.config.get("DATACAT_API_KEY") or "")
    if not key:
        return redirect(target)  # nothing to log in to
    if request.method == "GET":
        return _page("dashboard/login.html", page="login", next=target, failed=False)
    given = request.form.get("api_key", "")
    if not hmac.compare_digest(given.encode(), key.encode()):
        return _page("dashboard/login.html", 401, page="login", next=target, failed=True)
    response = redirect(target)
    cookie = _cookie_value(key)
    response.set_cookie(COOKIE, cookie, httponly=True, samesite="Strict", secure=request.is_secure)
    return response


@bp.post("/dashboard/logout")
def logout() -> BaseResponse:
    response = redirect(url_for("dashboard.login"))
    response.delete_cookie(COOKIE)
    return response


def _safe_next(target: str) -> str:
    """Only a path on this server: an open redirect would make the login form a phishing aid."""
    parts = urlsplit(target)
    # browsers read "/\\host" like "//host": another site
    if parts.scheme or parts.netloc or not target.startswith("/") or target[1:2] in ("/", "\\"):
        return "/"
    return target


@bp.get("/dashboard/api/overview")
def overview_data() -> Response:
    flt, clock = _filter(), _clock()
    with _store().read() as conn:
        conds = dashboard_queries.conditions(conn, flt, clock)
        data = {
            "totals": dashboard_queries.totals(conn, conds, clock),
            "grid": dashboard_queries.grid(conn, clock),
        }
    return jsonify(data)


@bp.get("/dashboard/api/sessions")
def sessions_data() -> Response:
    with _store().read() as conn:
        return jsonify(dashboard_queries.session_page(conn, _filter(), _clock()))


@bp.get("/dashboard/api/metrics")
def metrics_data() -> Response:
    flt, clock = _filter(), _clock()
    with _store().read() as conn:
        conds = dashboard_queries.conditions(conn, flt, clock)
        return jsonify({"metrics": dashboard_queries.metric_stats(conn, conds)})


@bp.get("/dashboard/api/sessions/<session_id>")
def session_data(session_id: str) -> Response:
    with _store().read() as conn:
        after = api.query_int("events_after", 0, low=0, high=queries.MAX_ROW_ID)
        detail = dashboard_queries.session_detail(conn, session_id, _clock(), after)
    if detail is None:
        raise NotFound(session_id)
    return jsonify(detail)


def _filter() -> DashboardFilter:
    """The filters of the list views from the query string (names as the API's, plus ours)."""
    args = request.args
    ever, now = _state_pairs()
    base = queries.SessionFilter(
        product=args.get("product") or None,
        version=args.get("version") or None,
        status=_choice("status", queries.STATUSES),
        machine_id=args.get("machine_id") or None,
        created_after=api.query_time("created_after"),
        created_before=api.query_time("created_before"),
        state=ever,
    )
    return DashboardFilter(
        base=base,
        event=args.get("event") or None,
        hang=_choice("hang", tuple(dashboard_queries.HANGS)),
        state_now=now,
        sort=args.get("sort", "created"),
        descending=args.get("order", "desc") != "asc",
        page=api.query_int("page", 1),
        per_page=api.query_int("per_page", 25),
    )


def _choice(name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.args.get(name) or None
    if value is not None and value not in allowed:
        raise ValidationError("invalid parameter", f"{name} must be one of {', '.join(allowed)}")
    return value


def _state_pairs() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``state_key``/``state_value`` with ``state_mode`` ever (default) or current."""
    key = (request.args.get("state_key") or "").strip()
    if not key:
        return [], []
    pair = [(key, request.args.get("state_value", ""))]
    if request.args.get("state_mode") == "current":
        return [], pair
    return pair, []
