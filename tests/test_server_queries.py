"""Read-side pure logic: derived status, cursors, counter totals (paging and filters over HTTP
are in ``test_server_api.py``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from datacat_server import queries

from datacat.errors import ValidationError

CLOCK = queries.Clock(now=1_000.0, heartbeat_timeout=60.0)


def row(**kw: Any) -> Any:
    fields = {"ended_at": None, "crashed_at": None, "hung": False, "last_heartbeat": None}
    return SimpleNamespace(**{**fields, **kw})


@pytest.mark.parametrize(
    "fields,status,flags",
    [
        ({}, "active", {"active": True, "suspended": False, "hung": False}),
        ({"last_heartbeat": 950.0}, "active", {"suspended": False}),
        ({"last_heartbeat": 900.0}, "suspended", {"suspended": True, "active": True}),
        ({"hung": True}, "hung", {"hung": True}),
        ({"hung": True, "last_heartbeat": 1.0}, "hung", {"hung": True, "suspended": True}),
        ({"ended_at": 990.0}, "ended", {"active": False, "ended": True, "crashed": False}),
        ({"ended_at": 990.0, "hung": True}, "ended", {"hung": False}),
        ({"ended_at": 990.0, "crashed_at": 990.0}, "crashed", {"ended": False, "crashed": True}),
        ({"ended_at": 990.0, "last_heartbeat": 1.0}, "ended", {"suspended": False}),
    ],
)
def test_status_of(fields: dict[str, Any], status: str, flags: dict[str, bool]) -> None:
    derived = queries.status_of(row(**fields), CLOCK)
    assert derived["status"] == status
    assert {k: derived[k] for k in flags} == flags


@pytest.mark.parametrize("key", [[1_700_000_000.123456, "a-b"], 42])
def test_cursor_round_trip(key: Any) -> None:
    cursor = queries.encode_cursor(key)
    assert cursor.isascii() and "=" not in cursor
    assert queries.decode_cursor(cursor, lambda _k: True) == key


@pytest.mark.parametrize("cursor", ["%%%", "", "bm90IGpzb24", queries.encode_cursor("x")])
def test_foreign_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(ValidationError):
        queries.decode_cursor(cursor, lambda k: isinstance(k, int) and not isinstance(k, bool))


def test_counter_totals_add_deltas_per_name() -> None:
    bodies = [
        {"name": "a", "type": "counter", "value": 1.0},
        {"name": "a", "type": "counter", "value": 2.5},
        {"name": "b", "type": "gauge", "value": 9.0},
        {"name": "c", "type": "counter", "value": -1.0},
    ]
    assert queries.counter_totals(bodies) == {"a": 3.5, "c": -1.0}
