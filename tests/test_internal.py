"""``datacat._internal``: JSON-safe values, snapshots, log-once and swallowed internal errors."""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Any

import pytest

import datacat
from datacat import _internal
from datacat._internal import (
    MAX_STRING,
    jsonable,
    log_once,
    name_field,
    snapshot,
    swallow,
    text_field,
    truncate,
)
from datacat.client import DatacatClient
from datacat.limits import MAX_NAME


class Odd:
    def __repr__(self) -> str:
        return "<odd>"


class Broken:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, True),
        (3, 3),
        (1.5, 1.5),
        (math.nan, "nan"),
        (-math.inf, "-inf"),
        ("text", "text"),
        ((1, 2), [1, 2]),
        ({1: {2}}, {"1": [2]}),
        (Odd(), "<odd>"),
        (Broken(), "<unrepresentable Broken>"),
        (datetime.date(2026, 11, 26), "2026-11-26"),
        (b"\x00", "b'\\x00'"),
        ("a\x00b", "a\ufffdb"),
        ({"k\x00": ["v\x00", 1]}, {"k\ufffd": ["v\ufffd", 1]}),
    ],
)
def test_jsonable_makes_strict_json(value: Any, expected: Any) -> None:
    converted = jsonable(value)
    assert converted == expected
    json.dumps(converted, allow_nan=False)


def test_long_strings_are_cut_with_a_marker_and_deep_nesting_ends() -> None:
    assert truncate("x" * (MAX_STRING + 5)) == "x" * MAX_STRING + "…[truncated 5 chars]"
    deep: Any = []
    for _ in range(100):
        deep = [deep]
    json.dumps(jsonable(deep))


def test_text_and_name_fields_are_what_the_server_takes() -> None:
    assert text_field(7) == "7" and text_field(None) == "None"
    assert text_field("m\x00") == "m\ufffd"
    assert name_field("n" * 500) == "n" * (MAX_NAME - 1) + "…"
    assert name_field("short") == "short"


def test_values_the_server_would_refuse_arrive_repaired(server_url: str, tmp_path: Path) -> None:
    session = datacat.create_session(server_url, spool_dir=str(tmp_path), flush_interval=0.05)
    """State updates always pass through ``jsonable``. (Event bodies that are plain JSON skip
    it in ``datacat.batching``, whose fast path must also send NULs the slow way.)"""
    session.update_state({"key\x00": {"nested": "value\x00"}})
    assert session.end(10)
    got = DatacatClient(server_url).get_session(session.id)
    assert got["state"]["key\ufffd"] == {"nested": "value\ufffd"}


def test_snapshot_is_independent_of_later_mutation() -> None:
    original = {"a": {"b": [1]}}
    copy = snapshot(original)
    original["a"]["b"].append(2)
    assert copy == {"a": {"b": [1]}}


def test_log_once_logs_a_key_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_internal, "_seen", set())
    for _ in range(3):
        log_once("k", "datacat: once %s", "only")
    assert caplog.text.count("once only") == 1


def test_swallow_logs_and_returns_the_default(caplog: pytest.LogCaptureFixture) -> None:
    @swallow(default=-1)
    def explode() -> int:
        raise ValueError("inside")

    assert explode() == -1
    assert "internal error" in caplog.text or "explode" in str(_internal._seen)


def test_lone_surrogates_become_replacement_characters_and_pairs_their_character() -> None:
    assert jsonable({"k\ud800": ["a\udcffb", "\ud83d\ude00"]}) == {"k\ufffd": ["a\ufffdb", "😀"]}
    assert text_field("x\udc80\x00") == "x\ufffd\ufffd"
