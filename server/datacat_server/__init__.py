"""The DataCat server: ``create_app(config)`` builds the Flask application.

The app owns one ``Storage`` (in ``app.extensions["datacat"]``), its ``Retention`` rule (in
``app.extensions["datacat_retention"]``), the ``/api`` blueprint, the JSON
error handlers, ``/health`` and ``/openapi.json``. Further blueprints (the dashboard) register on
the returned app the same way; the API claims only ``/api``, ``/health`` and ``/openapi.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Any

import sqlalchemy as sa
from flask import Flask, Response, current_app, jsonify
from flask.json.provider import DefaultJSONProvider

from datacat_server import api, dashboard, errors
from datacat_server.retention import Retention
from datacat_server.storage import CHECKPOINT_INTERVAL, Storage

DEFAULTS: dict[str, Any] = {
    "DATACAT_DB": "sqlite:///datacat.db",
    "DATACAT_HEARTBEAT_TIMEOUT": 60.0,
    "DATACAT_API_KEY": None,
    "DATACAT_MAX_BODY": 16 * 1024 * 1024,
    "DATACAT_RETENTION_DAYS": None,  # keep everything
    "DATACAT_CHECKPOINT_INTERVAL": CHECKPOINT_INTERVAL,  # SQLite: seconds (0: SQLite's own)
}


class StrictJSONProvider(DefaultJSONProvider):
    """Answers are strict JSON: a non-finite number raises (a 500 the tests see) instead of
    going out as ``Infinity``, which no JSON parser but Python's accepts."""

    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("allow_nan", False)
        return super().dumps(obj, **kwargs)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """A configured app; ``config`` overrides ``DEFAULTS`` (keys ``DATACAT_*``)."""
    app = Flask(__name__)
    app.json = StrictJSONProvider(app)
    app.config.from_mapping(DEFAULTS)
    app.config.from_mapping(config or {})
    app.config["MAX_CONTENT_LENGTH"] = int(app.config["DATACAT_MAX_BODY"])
    app.extensions["datacat"] = Storage(
        app.config["DATACAT_DB"],
        float(app.config["DATACAT_HEARTBEAT_TIMEOUT"]),
        float(app.config["DATACAT_CHECKPOINT_INTERVAL"]),
    )
    days = app.config["DATACAT_RETENTION_DAYS"]
    app.extensions["datacat_retention"] = Retention(float(days) if days else None)
    app.register_blueprint(api.bp)
    app.register_blueprint(dashboard.bp)
    app.add_url_rule("/health", view_func=_health)
    app.add_url_rule("/openapi.json", view_func=_openapi)
    errors.register(app)
    return app


def _health() -> Response:
    store: Storage = current_app.extensions["datacat"]
    with store.read() as conn:
        conn.execute(sa.text("SELECT 1"))
    return jsonify({"status": "ok", "database": store.engine.dialect.name})


def _openapi() -> Response:
    document = resources.files(__package__).joinpath("openapi.json").read_bytes()
    return Response(document, mimetype="application/json")
