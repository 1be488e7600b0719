"""The logging target and ``datacat.LoggingHandler``, read back from a real server."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from autoinstrument_helpers import events, instrumented, new_session

import datacat
from datacat.autoinstrument.logging import level_name


@pytest.fixture
def dc_session(server_url: str, tmp_path: Path) -> Iterator[Any]:
    with instrumented(server_url, tmp_path, ["logging"]) as s:
        yield s


def test_warnings_become_events_with_logger_level_and_message(
    dc_session: Any, server_url: str
) -> None:
    logging.getLogger("shop.cart").warning("stock low: %d left", 3)
    logging.getLogger("shop.cart").info("below the level: not captured")
    assert dc_session.flush(10)
    (event,) = events(server_url, dc_session.id, "log")
    assert event["level"] == "warning"
    assert event["message"] == "stock low: 3 left"
    assert event["category"] == "logging"
    assert event["data"]["logger"] == "shop.cart"
    assert event["source_function"] == "test_warnings_become_events_with_logger_level_and_message"


def test_exception_records_carry_the_exception(dc_session: Any, server_url: str) -> None:
    try:
        {}["missing"]
    except KeyError:
        logging.getLogger("shop").exception("lookup failed")
    assert dc_session.flush(10)
    (event,) = events(server_url, dc_session.id, "log")
    assert event["level"] == "error"
    assert event["exception_type"] == "KeyError"
    assert event["message"] == "lookup failed"
    assert any("missing" in line for line in event["stacktrace"])


def test_datacat_own_loggers_are_never_captured(dc_session: Any, server_url: str) -> None:
    logging.getLogger("datacat").warning("internal")
    logging.getLogger("datacat.worker").error("internal too")
    assert dc_session.flush(10)
    assert events(server_url, dc_session.id, "log") == []


def test_the_handler_can_be_attached_by_hand(server_url: str, tmp_path: Path) -> None:
    s = new_session(server_url, tmp_path)
    logger = logging.getLogger("by.hand")
    handler = datacat.LoggingHandler(s, level=logging.INFO)
    logger.addHandler(handler)
    try:
        logger.setLevel(logging.INFO)
        logger.info("hello")
    finally:
        logger.removeHandler(handler)
    s.end()
    assert [e["message"] for e in events(server_url, s.id, "log")] == ["hello"]


@pytest.mark.parametrize(
    ("levelno", "name"),
    [
        (5, "debug"),
        (10, "debug"),
        (20, "info"),
        (25, "info"),
        (30, "warning"),
        (45, "error"),
        (50, "critical"),
        (60, "critical"),
    ],
)
def test_levels_map_down_to_the_nearest(levelno: int, name: str) -> None:
    assert level_name(levelno) == name
