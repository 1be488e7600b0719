"""The one place where exceptions become the JSON error shape ``{"error", "details"}``.

Validation problems are 400 (a body nested too deeply is refused while ``api`` reads it; a
RecursionError anywhere else is the server's fault: 500), unknown sessions 404, HTTP errors keep
their status (401, 404, 405, 413, ...), and anything unexpected is logged and answered 500
without internals.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from datacat.errors import ValidationError
from datacat_server.storage import NotFound

log = logging.getLogger("datacat_server")


def error_response(status: int, error: str, details: str = "") -> Response:
    response = jsonify({"error": error, "details": details})
    response.status_code = status
    return response


def register(app: Flask) -> None:
    """Install the JSON error handlers on ``app``."""
    app.register_error_handler(ValidationError, _validation)
    app.register_error_handler(NotFound, _not_found)
    app.register_error_handler(sa.exc.DataError, _bad_value)
    app.register_error_handler(HTTPException, _http)
    app.register_error_handler(Exception, _unexpected)


def _validation(exc: ValidationError) -> Response:
    return error_response(400, exc.message, exc.details)


def _not_found(exc: NotFound) -> Response:
    return error_response(404, "session not found", str(exc))


def _bad_value(exc: sa.exc.DataError) -> Response:
    # The database refused a value the model let through (PostgreSQL text cannot hold NUL).
    return error_response(400, "invalid value", str(exc.orig).splitlines()[0][:200])


def _http(exc: HTTPException) -> Response:
    response = error_response(exc.code or 500, exc.name.lower(), exc.description or "")
    for name, value in exc.get_headers():
        if name.lower() == "allow":
            response.headers[name] = value
    return response


def _unexpected(exc: Exception) -> Response:
    log.exception("unexpected error while answering a request")
    return error_response(500, "internal server error", type(exc).__name__)
