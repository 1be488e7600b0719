"""``datacat.rows`` and ``Session.log_rows``: event rows make exactly the operations that
``log_event`` and ``observe`` make, and reach a real server through either sender."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from client_helpers import Peer, session_factory, wait_for

import datacat
from datacat import rows
from datacat.batching import OBSERVE, ROWS, ROWS_PER_OPERATION, Batcher, _plain_tree

SID = "00000000-0000-4000-8000-000000000001"
TEMPLATE = rows.template(
    "test_passed",
    columns=("nodeid", "duration", "markers", "location"),
    category="pytest",
    data={"outcome": "passed", "worker": "main"},
    message="nodeid",
    timer="pytest.test.duration",
    timer_tags={"outcome": "passed"},
    timer_tag_columns=("nodeid",),
)
ODD_VALUES: list[tuple[Any, ...]] = [
    ("t.py::test_plain", 0.25, (), ("t.py", 3, "test_plain"), 0.5),
    ("t.py::test_ünïcode[é]", 1e-7, ("slow", "smoke"), ("t.py", 9, "x"), 3e-7),
    ("t.py::lone\udcffsurrogate", 0.0, ("a",), ("t.py", 1, "y"), 0.0),
    ("t.py::nul\x00byte", 2, [object()], None, 2),
    ("t.py::" + "long" * 20_000, float("inf"), (), ("t.py", 1, "z"), 1.0),
    ("t.py::nan_timer", 0.1, (), ("t.py", 2, "w"), float("nan")),
    (None, 0.1, (), ("t.py", 2, "w"), 0.1),
    (42, 0.1, {"not": "a tuple"}, ("t.py", 2, "w"), 10**400),
]


def _as_verbs(values: tuple[Any, ...], ts: float) -> list[tuple[Any, ...]]:
    """The items ``log_event`` and ``observe`` queue for the same event and timer."""
    nodeid, duration, markers, location, total = values
    data = {"nodeid": nodeid, "duration": duration, "markers": markers, "location": location}
    data.update(outcome="passed", worker="main")
    event = ("event", SID, "test_passed", data, "info", "pytest", None, nodeid, {}, ts, None)
    tags = {"nodeid": nodeid, "outcome": "passed"}
    return [event, (OBSERVE, SID, "pytest.test.duration", total, "timer", tags, "s", None)]


def _without_ids(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The operations without what differs by design: op ids, and when a timer was made."""
    plain = []
    for op in ops:
        assert op.pop("op_id")
        if op["op"] == "metric":
            op["data"].pop("timestamp")
        plain.append(op)
    return plain


def _operations(items: list[tuple[Any, ...]]) -> tuple[list[dict[str, Any]], list[int]]:
    drops: list[int] = []
    ops = Batcher(on_drop=lambda sid, n: drops.append(n)).operations(items)
    return _without_ids(ops), drops


def _kinds(ops: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [op for op in ops if op["op"] == kind]


def test_rows_make_the_operations_log_event_and_observe_make() -> None:
    """Also for the odd values the verbs repair (text, NUL, lone surrogates, long strings,
    non-JSON objects) or drop and count (a timer that is not a finite number)."""
    stamped = [(1000.0 + n, values) for n, values in enumerate(ODD_VALUES)]
    verbs = [item for ts, values in stamped for item in _as_verbs(values, ts)]
    from_verbs, verb_drops = _operations(verbs)
    from_rows, row_drops = _operations([(ROWS, SID, TEMPLATE, [(ts, *v) for ts, v in stamped])])
    assert _kinds(from_rows, "event") == _kinds(from_verbs, "event")
    assert len(_kinds(from_rows, "event")) == len(ODD_VALUES)
    # the verbs' timers come after the batch's events (aggregated), the rows' after each event
    assert _kinds(from_rows, "metric") == _kinds(from_verbs, "metric")
    assert len(_kinds(from_rows, "metric")) == len(ODD_VALUES) - 2  # NaN and 10**400: dropped
    assert row_drops == verb_drops == [1, 1]
    timestamps = [op["data"]["timestamp"] for op in _kinds(from_rows, "event")]
    assert timestamps == [ts for ts, _ in stamped]


def test_a_row_that_fits_no_event_is_dropped_alone_and_counted() -> None:
    good = (1.0, "t.py::test_ok", 0.1, (), ("t.py", 1, "test_ok"), 0.2)
    too_short = (2.0, "t.py::test_short", 0.1)
    ops, drops = _operations([(ROWS, SID, TEMPLATE, [good, too_short, good])])
    assert [op["op"] for op in ops] == ["event", "metric", "event", "metric"]
    assert drops == [2]  # the event and the timer the row stood for


@pytest.mark.parametrize(
    "arguments",
    [
        {"columns": ("a",), "message": "b"},  # not a column
        {"columns": ("a",), "timer": "t", "timer_tag_columns": ("b",)},
        {"columns": ("a", "a")},
        {"columns": ("a",), "data": {"a": 1}},  # the row's value or the shared one?
        {"columns": ("a",), "level": "loud"},
    ],
)
def test_a_template_no_row_could_fill_is_refused_at_once(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="template"):
        rows.template("e", **arguments)


@pytest.fixture
def make_session(tmp_path: Path) -> Iterator[Callable[..., datacat.Session]]:
    yield from session_factory(tmp_path)


@pytest.mark.parametrize("sender", ["thread", "process"])
def test_rows_reach_the_server_as_events_and_timers(
    make_session: Callable[..., datacat.Session], server_url: str, sender: str
) -> None:
    """Also with an object of the app's own type as the message and a tag (a ``Path``): its text,
    as the verbs make it, whichever process turns the rows into operations."""
    session = make_session(server_url, sender=sender)
    values = [*ODD_VALUES[:3], (Path("/tmp/t.py"), 0.1, (), None, 0.3)]
    session.log_rows(TEMPLATE, [(1_700_000_000.0 + n, *v) for n, v in enumerate(values)])
    assert session.end(timeout=10)
    events = wait_for(lambda: _read(server_url, session.id, "events"))
    messages = [e["message"] for e in events]
    odd = ["t.py::test_plain", "t.py::test_ünïcode[é]", "t.py::lone\ufffdsurrogate"]
    assert messages == [*odd, "/tmp/t.py"]
    assert events[1]["data"]["markers"] == ["slow", "smoke"]
    assert events[3]["data"]["nodeid"] == repr(Path("/tmp/t.py"))  # data: as ``jsonable`` has it
    timers = _read(server_url, session.id, "metrics", name="pytest.test.duration")
    by_test = {m["tags"]["nodeid"]: m for m in timers}
    assert math.isclose(by_test["t.py::test_plain"]["value"], 0.5)
    assert by_test["t.py::test_plain"]["tags"]["outcome"] == "passed"
    assert math.isclose(by_test["/tmp/t.py"]["value"], 0.3)
    assert session.dropped == 0


def test_rows_of_many_events_wake_the_sender_at_once(
    make_session: Callable[..., datacat.Session], server_url: str
) -> None:
    """One item, but as many events as a batch (40 rows, 80 events, batches of 50): sent now,
    not at the next interval."""
    session = make_session(server_url, flush_interval=60.0, batch_size=50)
    assert session.flush(timeout=10)  # the sender is now waiting for its next interval
    many = [
        (1_700_000_000.0 + n, f"t.py::test_{n}", 0.1, (), ("t.py", n, "x"), 0.2) for n in range(40)
    ]
    session.log_rows(TEMPLATE, many)

    def events() -> int:
        return len(_read(server_url, session.id, "events", limit="100"))

    assert wait_for(lambda: events() == 40, timeout=10), "not all sent within 10 s"


def _read(url: str, session_id: str, kind: str, **params: str) -> Any:
    answer = requests.get(f"{url}/api/sessions/{session_id}/{kind}", params=params, timeout=10)
    answer.raise_for_status()
    return answer.json()


def test_a_refused_hand_over_counts_every_event_and_timer_of_its_rows(
    make_session: Callable[..., datacat.Session], server_url: str
) -> None:
    session = make_session(server_url)
    worker = session._worker
    assert worker is not None
    before = worker.stats["dropped"]
    worker.maxsize = 0  # the queue is full
    session.log_rows(TEMPLATE, [(1.0, *ODD_VALUES[0]), (2.0, *ODD_VALUES[1])])
    assert session.dropped == 4  # as two log_event and two observe calls would count
    assert worker.stats["dropped"] - before == 4


def test_log_rows_never_raises_into_the_program(
    make_session: Callable[..., datacat.Session], server_url: str
) -> None:
    session = make_session(server_url)
    session.log_rows(None, [(1.0, "x")])  # type: ignore[arg-type]
    session.log_rows(TEMPLATE, (row for row in [(1.0, *ODD_VALUES[0])]))  # type: ignore[arg-type]


# -- rows on the wire: a server that lists ``rows`` among its operations takes them as they are --


def test_ready_rows_go_as_they_are_and_the_others_as_their_events_and_timers() -> None:
    stamped = [(1000.0 + n, *values) for n, values in enumerate(ODD_VALUES)]
    ready, other = rows.split_ready(TEMPLATE, stamped, _plain_tree)
    assert ready == stamped[:2]  # ASCII and non-ASCII text: the server checks both alike
    batcher = Batcher()
    batcher.rows_on_wire = True
    ops = batcher.operations([(ROWS, SID, TEMPLATE, stamped)])
    assert ops[0]["op"] == "rows" and ops[0]["data"] == rows.wire_form(TEMPLATE, ready)
    # the others: exactly what the verbs make of them (repaired, or dropped and counted)
    expanded = Batcher().operations([(ROWS, SID, TEMPLATE, other)])
    assert _without_ids(ops[1:]) == _without_ids(expanded)
    lots = [(1.0, f"t{n}", 0.1, (), ("t.py", n, "x"), 0.2) for n in range(ROWS_PER_OPERATION + 1)]
    ops = batcher.operations([(ROWS, SID, TEMPLATE, lots)])
    assert [len(op["data"]["rows"]) for op in ops] == [ROWS_PER_OPERATION, 1]


@pytest.mark.parametrize(
    "row",
    [
        (1.0, "t", 0.1, (), ("t.py", 1, "x")),  # a value short
        (1, "t", 0.1, (), ("t.py", 1, "x"), 0.2),  # an int timestamp: the server's general path
        (1.0, "t", 0.1, (), ("t.py", 1, "x"), 2),  # an int timer
        (1.0, 7, 0.1, (), ("t.py", 1, "x"), 0.2),  # a message (and tag) that is not text
        (1.0, "t\x00", 0.1, (), ("t.py", 1, "x"), 0.2),  # text the verbs repair
        (1.0, "t", 0.1, (), ("t.py", 1, "x"), float("nan")),
        (-1.0, "t", 0.1, (), ("t.py", 1, "x"), 0.2),  # timestamps the server refuses
        (1.7e12, "t", 0.1, (), ("t.py", 1, "x"), 0.2),  # (milliseconds, not seconds)
        [1.0, "t", 0.1, (), ("t.py", 1, "x"), 0.2],  # not a tuple
    ],
)
def test_rows_the_server_might_read_otherwise_are_expanded_here(row: Any) -> None:
    assert rows.split_ready(TEMPLATE, [row], _plain_tree) == ([], [row])


def test_rows_go_on_the_wire_once_the_server_says_it_takes_them(
    make_session: Callable[..., datacat.Session], server_url: str
) -> None:
    """Before the first answer (and from a server that does not list ``rows``) rows go as
    their events and timers; after it, as ``rows`` operations, stored as those would be."""
    with Peer("forward", target=server_url) as peer:
        session = make_session(peer.url)
        first = [(1_700_000_000.0, "t.py::first", 0.1, (), ("t.py", 1, "first"), 0.2)]
        session.log_rows(TEMPLATE, first)
        assert session.flush(timeout=10)
        later = [
            (1_700_000_001.0 + n, f"t.py::t{n}", 0.1, (), ("t.py", n, "t"), 0.2) for n in range(3)
        ]
        session.log_rows(TEMPLATE, later)
        assert session.end(timeout=10)
    kinds = [op["op"] for op in peer.operations]
    assert kinds[:3] == ["create", "event", "metric"] and kinds.count("rows") == 1
    events = _read(server_url, session.id, "events")
    assert [e["message"] for e in events] == ["t.py::first", "t.py::t0", "t.py::t1", "t.py::t2"]
    timers = _read(server_url, session.id, "metrics", name="pytest.test.duration")
    assert [m["tags"]["nodeid"] for m in timers] == [e["message"] for e in events]


def test_a_server_that_does_not_list_rows_gets_events_and_timers(
    make_session: Callable[..., datacat.Session],
) -> None:
    with Peer("ok") as peer:  # answers as a server before ``rows`` did: no "operations"
        session = make_session(peer.url)
        assert session.flush(timeout=10)
        session.log_rows(TEMPLATE, [(1.0, "t", 0.1, (), ("t.py", 1, "x"), 0.2)])
        assert session.flush(timeout=10)
    assert [op["op"] for op in peer.accepted] == ["create", "event", "metric"]


ROWS_LIKE_A_SERVER = ["create", "state", "event", "metric", "heartbeat", "end", "crash", "rows"]


def _many(count: int, text: str = "") -> list[tuple[Any, ...]]:
    return [(1_700_000_000.0 + n, f"t.py::t{n}{text}", 0.1, (), ("t.py", n, "t"), 0.2)
            for n in range(count)]  # fmt: skip


def test_a_rows_operation_an_older_server_refuses_goes_again_as_events_and_timers(
    make_session: Callable[..., datacat.Session],
) -> None:
    """One server behind the URL listed rows, the next (an older version) refuses them: the
    refused rows go again, as the events and timers they stand for, and none is lost."""
    with Peer("ok") as peer:
        peer.lists, peer.refuse_rows = ROWS_LIKE_A_SERVER, True
        session = make_session(peer.url)
        assert session.flush(timeout=10)  # the answer lists rows
        session.log_rows(TEMPLATE, _many(5))
        assert session.flush(timeout=10)
    kinds = [op["op"] for op in peer.accepted]
    assert kinds == ["create"] + ["event", "metric"] * 5
    assert session.undelivered == 0 and session.dropped == 0


def test_a_rows_operation_too_big_for_the_server_goes_as_events_and_timers_in_halves(
    make_session: Callable[..., datacat.Session],
) -> None:
    with Peer("ok") as peer:
        peer.lists, peer.byte_limit = ROWS_LIKE_A_SERVER, 20_000
        session = make_session(peer.url)
        assert session.flush(timeout=10)
        session.log_rows(TEMPLATE, _many(300, "x" * 40))  # ~30 kB as one rows operation
        assert session.flush(timeout=10)
    events = [op for op in peer.accepted if op["op"] == "event"]
    assert len(events) == 300 and session.undelivered == 0
    assert not any(op["op"] == "rows" for op in peer.accepted)


def test_rows_spooled_while_the_server_is_down_are_replayed_as_events_and_timers(
    make_session: Callable[..., datacat.Session],
) -> None:
    """The spool may be replayed to another server (an older one, say) and replays batches as
    they are: a ``rows`` operation is spooled as its events and timers."""
    with Peer("ok") as peer:
        peer.lists = ROWS_LIKE_A_SERVER
        session = make_session(peer.url)
        assert session.flush(timeout=10)  # the answer lists rows
        peer.mode, peer.status = "status", 503
        session.log_rows(TEMPLATE, _many(5))
        assert not session.flush(timeout=1)  # spooled
        peer.mode, peer.lists, peer.refuse_rows = "ok", None, True
        assert session.flush(timeout=10)  # the spool is replayed
    kinds = [op["op"] for op in peer.accepted]
    assert kinds == ["create"] + ["event", "metric"] * 5
    assert session.undelivered == 0
