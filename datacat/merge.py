"""Deep merge of state documents: the one rule shared by client and server.

Objects merge recursively, arrays and scalars replace, ``None`` (JSON ``null``) deletes the key.
Pure functions: no I/O, no globals, inputs are never mutated.
"""

from __future__ import annotations

from typing import Any

JSONDict = dict[str, Any]


def deep_merge(base: JSONDict, update: JSONDict) -> JSONDict:
    """Return ``base`` with ``update`` merged in; neither argument is modified."""
    result = dict(base)
    for key, value in update.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = deep_merge(result[key], value)
        else:
            result[key] = _strip_nulls(value)
    return result


def combine_updates(first: JSONDict, second: JSONDict) -> JSONDict | None:
    """Fold two pending updates into one whose effect on any base equals applying both in order.

    Unlike ``deep_merge`` the ``None`` markers are kept, so the combined update still deletes.
    Returns ``None`` when no single update has that effect: an object landing on a key the first
    update replaced or deleted would have to *replace*, and a merge can only merge.
    """
    result = dict(first)
    for key, value in second.items():
        if not isinstance(value, dict) or key not in result:
            result[key] = value
        elif isinstance(result[key], dict):
            inner = combine_updates(result[key], value)
            if inner is None:
                return None
            result[key] = inner
        else:
            return None
    return result


def changes_nothing(base: JSONDict, update: JSONDict) -> bool:
    """True when applying ``update`` to ``base`` would leave it unchanged."""
    return deep_merge(base, update) == base


def get_path(document: JSONDict, path: str) -> Any:
    """Value at a dotted ``path`` (``"player.level"``), or ``KeyError`` when absent."""
    node: Any = document
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    return value
