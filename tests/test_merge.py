"""The deep-merge rule shared by client and server (pure functions, plain tests)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from datacat.merge import changes_nothing, combine_updates, deep_merge, get_path


@pytest.mark.parametrize(
    "base,update,expected",
    [
        ({}, {"a": 1}, {"a": 1}),
        ({"a": 1}, {"a": 2}, {"a": 2}),
        ({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}, {"a": {"b": 3, "c": 2}}),
        ({"a": {"b": {"c": 1}}}, {"a": {"b": {"d": 2}}}, {"a": {"b": {"c": 1, "d": 2}}}),
        ({"a": [1, 2]}, {"a": [3]}, {"a": [3]}),
        ({"a": {"b": 1}}, {"a": 5}, {"a": 5}),
        ({"a": 5}, {"a": {"b": 1}}, {"a": {"b": 1}}),
        ({"a": 1, "b": 2}, {"a": None}, {"b": 2}),
        ({"a": {"b": 1, "c": 2}}, {"a": {"b": None}}, {"a": {"c": 2}}),
        ({}, {"gone": None}, {}),
        ({}, {"a": {"b": None, "c": 1}}, {"a": {"c": 1}}),
        ({"a": 1}, {}, {"a": 1}),
    ],
)
def test_deep_merge(base: dict[str, Any], update: dict[str, Any], expected: dict[str, Any]) -> None:
    before = (copy.deepcopy(base), copy.deepcopy(update))
    assert deep_merge(base, update) == expected
    assert (base, update) == before  # inputs are never mutated


@pytest.mark.parametrize(
    "first,second",
    [
        ({"a": 1}, {"b": 2}),
        ({"a": {"x": 1}}, {"a": {"y": 2}}),
        ({"a": {"x": 1}}, {"a": {"x": None}}),
        ({"a": None}, {"a": 3}),
        ({"a": [1]}, {"a": [2]}),
    ],
)
def test_combined_update_equals_applying_both(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    combined = combine_updates(first, second)
    assert combined is not None
    for base in ({}, {"a": {"x": 0, "z": 9}, "b": 1}, {"a": 7}):
        assert deep_merge(base, combined) == deep_merge(deep_merge(base, first), second)


@pytest.mark.parametrize("first", [{"a": 1}, {"a": None}, {"a": [1]}])
def test_object_over_a_replaced_key_cannot_combine(first: dict[str, Any]) -> None:
    assert combine_updates(first, {"a": {"b": 1}}) is None


@pytest.mark.parametrize(
    "base,update,expected",
    [
        ({"a": 1}, {"a": 1}, True),
        ({"a": 1}, {"a": 2}, False),
        ({"a": {"b": 1}}, {"a": {}}, True),
        ({}, {"a": None}, True),
        ({"a": 1}, {"a": None}, False),
    ],
)
def test_changes_nothing(base: dict[str, Any], update: dict[str, Any], expected: bool) -> None:
    assert changes_nothing(base, update) is expected


def test_get_path() -> None:
    document = {"player": {"level": 3, "tags": ["x"]}, "flat": 1}
    assert get_path(document, "player.level") == 3
    assert get_path(document, "flat") == 1
    for missing in ("player.name", "flat.deeper", "nope"):
        with pytest.raises(KeyError):
            get_path(document, missing)
