"""``datacat server``: resolve options, build the app, serve it with gunicorn.

Options resolve as command-line argument > ``DATACAT_SERVER_*`` environment variable > default.
gunicorn's master loads the app once (schema created before any worker starts), forks the
workers (each then opens its own database connections), prints the URL when ready, and shuts
down cleanly on SIGINT/SIGTERM. Errors gunicorn answers itself, before the app sees the request
(a request line over its limit: 414, malformed headers: 400/431), use the API's JSON error shape.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import sys
from typing import Any

import gunicorn.util
from flask import Flask
from gunicorn.app.base import BaseApplication

from datacat.errors import ConfigurationError
from datacat_server import DEFAULTS, create_app
from datacat_server.storage import Storage

OPTIONS: dict[str, tuple[Any, type]] = {
    "host": ("127.0.0.1", str),
    "port": (9090, int),
    "db": (DEFAULTS["DATACAT_DB"], str),
    "workers": (2, int),
    "threads": (4, int),
    "heartbeat_timeout": (DEFAULTS["DATACAT_HEARTBEAT_TIMEOUT"], float),
    "api_key": (None, str),
    "max_body": (DEFAULTS["DATACAT_MAX_BODY"], int),
    "retention_days": (None, float),
    "checkpoint_interval": (DEFAULTS["DATACAT_CHECKPOINT_INTERVAL"], float),
}


def resolve(
    args: argparse.Namespace | None, environ: dict[str, str] | None = None
) -> dict[str, Any]:
    """Every option's value: argument, else ``DATACAT_SERVER_<NAME>``, else the default."""
    environ = dict(os.environ if environ is None else environ)
    resolved: dict[str, Any] = {}
    for name, (default, kind) in OPTIONS.items():
        value = getattr(args, name, None)
        if value is None:
            value = environ.get(f"DATACAT_SERVER_{name.upper()}") or None
        try:
            resolved[name] = default if value is None else kind(value)
        except ValueError:
            raise ConfigurationError(f"{name}: {value!r} is not a valid {kind.__name__}") from None
    return resolved


class _Gunicorn(BaseApplication):
    """gunicorn serving an app object we built ourselves (no import string, no config file)."""

    def __init__(self, app: Flask, options: dict[str, Any]) -> None:
        self.application = app
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.application


def gunicorn_options(opts: dict[str, Any], app: Flask) -> dict[str, Any]:
    url = f"http://{opts['host']}:{opts['port']}"
    store: Storage = app.extensions["datacat"]
    return {
        "bind": f"{opts['host']}:{opts['port']}",
        "workers": opts["workers"],
        "worker_class": "gthread",
        "threads": opts["threads"],
        "keepalive": 30,
        "graceful_timeout": 5,
        "timeout": 60,
        "accesslog": None,
        # Long filter URLs (many ``state.*=`` pairs) must not meet gunicorn's HTML 414 at
        # 4094 bytes: 8190 is the most it allows short of no limit at all.
        "limit_request_line": 8190,
        "limit_request_field_size": 16384,
        # Workers touch a file to show they are alive, twice per request; on a container's
        # overlay /tmp that cost ~90 us each time, in memory it is free (gunicorn's advice).
        "worker_tmp_dir": "/dev/shm" if os.access("/dev/shm", os.W_OK) else None,
        "loglevel": "warning",
        "post_fork": lambda _server, _worker: _worker_started(store),
        "when_ready": lambda _server: print(f"DataCat server on {url}", flush=True),
    }


def _worker_started(store: Storage) -> None:
    """In a new worker: its own connections, and the garbage collector told to skip everything
    loaded so far (Flask, SQLAlchemy, gunicorn). A 500-operation batch allocates thousands of
    objects, and each full collection walked all of those too: measured in one process, batched
    ingest took 20 us per event instead of 25-35 (through gunicorn: lost in the machine's noise).
    """
    store.dispose()
    # gunicorn's workers write their own errors through this module function (HTML otherwise).
    gunicorn.util.write_error = _json_error
    gc.freeze()


def _json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's error page as ``{"error", "details"}`` JSON (same arguments as its own)."""
    body = json.dumps({"error": reason.lower(), "details": mesg[:200]}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    gunicorn.util.write_nonblock(sock, head.encode("latin-1") + body)


def main(args: argparse.Namespace | None = None) -> int:
    """Run the server until SIGINT/SIGTERM; the exit status is 0 after a clean shutdown."""
    try:
        opts = resolve(args)
    except ConfigurationError as exc:
        print(f"datacat server: {exc}", file=sys.stderr)
        return 2
    app = create_app(
        {
            "DATACAT_DB": opts["db"],
            "DATACAT_HEARTBEAT_TIMEOUT": opts["heartbeat_timeout"],
            "DATACAT_API_KEY": opts["api_key"],
            "DATACAT_MAX_BODY": opts["max_body"],
            "DATACAT_RETENTION_DAYS": opts["retention_days"],
            "DATACAT_CHECKPOINT_INTERVAL": opts["checkpoint_interval"],
        }
    )
    _Gunicorn(app, gunicorn_options(opts, app)).run()
    return 0
