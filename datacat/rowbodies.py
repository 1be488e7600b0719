"""The event and timer bodies of one row of a ``rows`` template (``datacat.rows``).

Core, shared by the client and the server: the client's sender expands with it the rows it
cannot send as they are, and the server the rows of a ``rows`` operation, so both store the
same. Pure, and imports nothing: the sender's child imports it at its start.
"""

from __future__ import annotations

from typing import Any

JSONDict = dict[str, Any]


def row_width(spec: JSONDict) -> int:
    """How many values a row of ``spec`` holds: its timestamp, a value per column, and its
    timer's value when the template has a timer."""
    return 1 + len(spec["columns"]) + (spec["timer"] is not None)


def row_bodies(spec: JSONDict, row: Any) -> tuple[JSONDict, JSONDict | None]:
    """The event body of one row of a ``rows`` template (``datacat.rows``) and its timer's
    metric body (None without a timer), as ``log_event`` and ``observe`` would send them.
    The client and the server both expand rows with it; it checks nothing."""
    columns, width = spec["columns"], 1 + len(spec["columns"])
    data = dict(zip(columns, row[1:width], strict=True))
    data.update(spec["data"])
    body: JSONDict = {"name": spec["name"], "level": spec["level"], "timestamp": row[0]}
    body["data"] = data
    if spec["category"] is not None:
        body["category"] = spec["category"]
    message = None if spec["message"] is None else row[1 + spec["message"]]
    if message is not None:
        body["message"] = message
    timer = spec["timer"]
    if timer is None:
        return body, None
    value = row[width]
    tags = dict(timer["tags"])
    for tag, index in timer["tag_columns"]:
        tags[tag] = str(row[index])
    metric: JSONDict = {"name": timer["name"], "type": "timer", "value": value, "count": 1,
                        "timestamp": row[0], "min": value, "max": value}  # fmt: skip
    if timer["unit"]:
        metric["unit"] = timer["unit"]
    if tags:
        metric["tags"] = {k: tags[k] for k in sorted(tags)}
    return body, metric
