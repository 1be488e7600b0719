"""The ``datacat`` command: one sub-command per front end.

Each sub-command's work lives in the module that owns it; this module only parses arguments and
imports that module lazily, so ``datacat --help`` stays fast and the client never imports the
server package unless ``datacat server`` is asked for.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence


def _add_server(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="run the DataCat server (production WSGI server)")
    p.add_argument("--host", help="interface to bind (DATACAT_SERVER_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (DATACAT_SERVER_PORT, default 9090)")
    p.add_argument("--db", help="sqlite:///path or postgresql://... (DATACAT_SERVER_DB)")
    p.add_argument("--workers", type=int, help="worker processes (DATACAT_SERVER_WORKERS)")
    p.add_argument(
        "--heartbeat-timeout",
        type=float,
        help="seconds without heartbeat before a session is suspended (default 60)",
    )
    p.add_argument(
        "--retention-days",
        type=float,
        help="delete sessions ended more than N days ago (DATACAT_SERVER_RETENTION_DAYS; off)",
    )
    p.add_argument(
        "--checkpoint-interval",
        type=float,
        help="SQLite: seconds between background checkpoints (default 0.1; 0: in the commit)",
    )
    p.set_defaults(handler="datacat_server.serve:main")


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a Python program instrumented (datacat run -- CMD ...)")
    p.add_argument("--product", help="product name (DATACAT_PRODUCT, default: program name)")
    p.add_argument("--version", help="product version (DATACAT_VERSION)")
    p.add_argument("--url", help="DataCat server URL (DATACAT_URL)")
    p.add_argument("--daemon", action="store_true", help="send through the local daemon")
    p.add_argument("program", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="and its args")
    p.set_defaults(handler="datacat.runner:main")


def _add_daemon(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("daemon", help="local daemon reading batches on stdin (client-started)")
    p.add_argument("--log-file", help="where the daemon logs (default: nowhere)")
    p.add_argument("--linger", type=float, help="seconds to keep retrying after the app exits")
    p.set_defaults(handler="datacat.daemon:main")


def _add_upload(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("upload", help="send spooled (offline) batches to the server now")
    p.add_argument("--url", help="only the spool of this server URL (default: every spool)")
    p.add_argument("--api-key", help="API key (DATACAT_API_KEY)")
    p.add_argument("--spool-dir", help="spool directory (DATACAT_SPOOL_DIR)")
    p.set_defaults(handler="datacat.spool:upload_command")


def _add_sessions(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sessions", help="list sessions on the server, newest first")
    p.add_argument("--url", help="DataCat server URL (DATACAT_URL)")
    p.add_argument("--api-key", help="API key (DATACAT_API_KEY)")
    p.add_argument("--product", help="only this product")
    p.add_argument("--version", dest="product_version", help="only this product version")
    p.add_argument("--status", help="active, ended, crashed, hung or suspended")
    p.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    p.add_argument("--json", action="store_true", help="print the JSON the server answers")
    p.set_defaults(handler="datacat.client:sessions_command")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="datacat", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_server(sub)
    _add_run(sub)
    _add_daemon(sub)
    _add_upload(sub)
    _add_sessions(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, func_name = args.handler.split(":")
    handler = getattr(importlib.import_module(module_name), func_name)
    return int(handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
