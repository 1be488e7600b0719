"""Auto-instrumentation: logging, requests, Flask and uncaught exceptions, without code changes.

    datacat server &                          # or: make run
    python examples/autoinstrument.py         # --url http://127.0.0.1:9090

The same instrumentation for a program you do not want to touch at all:

    datacat run --product my-tool --version 1.2 -- python my_tool.py ARGS

This script turns every instrumentor on for one session, then does what a small web service
does: logs a warning, calls an HTTP API (the DataCat server's own ``/health``), serves three
requests from a Flask app (one of them fails), and loses a worker thread to an exception. It
prints the page of the session, where all of it shows up as events and timers.
"""

from __future__ import annotations

import argparse
import logging
import threading

import flask
import requests

import datacat
import datacat.autoinstrument


def make_app() -> flask.Flask:
    app = flask.Flask("shop")

    @app.get("/items/<int:item>")
    def item(item: int) -> dict[str, int]:
        return {"item": item}

    @app.get("/checkout")
    def checkout() -> str:
        raise RuntimeError("payment provider unreachable")

    return app


def work(url: str) -> None:
    logging.getLogger("shop.stock").warning("only %d left of item %s", 2, "A-17")
    requests.get(f"{url}/health", timeout=5)
    client = make_app().test_client()
    for path in ("/items/1", "/items/2", "/checkout"):
        print(f"GET {path} -> {client.get(path).status_code}")
    prices: dict[str, float] = {}
    worker = threading.Thread(target=lambda: prices["A-17"], name="price-updater")
    worker.start()
    worker.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:9090")
    url = parser.parse_args().url
    session = datacat.create_session(url=url, product="autoinstrument-demo", version="1.0")
    datacat.autoinstrument.instrument(session=session)
    try:
        work(url)
    finally:
        datacat.autoinstrument.uninstrument()
        session.end()
    print(f"see {url}/sessions/{session.id}")


if __name__ == "__main__":
    main()
