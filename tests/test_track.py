"""``@datacat.track`` against the real client and a real server.

The table runs the seven kinds of callable x {returns, raises, closed early} and reads back with
HTTP GETs what arrived: one timer per call tagged with its outcome and lasting about the known
sleep, one exception event per failure; exceptions reach the caller unchanged.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import os
import pickle
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from fork_helpers import lock_free_in_forked_child, run_script
from track_helpers import TEST_OPTIONS, exceptions, fetch, timings

import datacat
from datacat.errors import ConfigurationError

SLEEP = 0.05
MODES = ("returns", "raises", "closed early")


class Boom(Exception):
    """The failure the tracked callables raise."""


def _body(fail: bool) -> str:
    time.sleep(SLEEP)
    if fail:
        raise Boom("boom")
    return "done"


@datacat.track
def function(fail: bool = False) -> str:
    """A plain function."""
    return _body(fail)


class Service:
    @datacat.track
    def method(self, fail: bool = False) -> str:
        return _body(fail)

    @datacat.track
    @classmethod
    def klass(cls, fail: bool = False) -> str:
        return _body(fail)

    @datacat.track
    @staticmethod
    def static(fail: bool = False) -> str:
        return _body(fail)


@datacat.track
async def coroutine(fail: bool = False) -> str:
    await asyncio.sleep(SLEEP)
    if fail:
        raise Boom("boom")
    return "done"


@datacat.track
def generator(fail: bool = False) -> Iterator[int]:
    yield 1
    time.sleep(SLEEP)
    if fail:
        raise Boom("boom")
    yield 2


@datacat.track
async def async_generator(fail: bool = False) -> AsyncIterator[int]:
    yield 1
    await asyncio.sleep(SLEEP)
    if fail:
        raise Boom("boom")
    yield 2


def _drive_generator(mode: str) -> None:
    gen = generator(fail=mode == "raises")
    next(gen)
    if mode == "closed early":
        time.sleep(SLEEP)
        gen.close()
        return
    list(gen)


async def _drive_coroutine(mode: str) -> None:
    if mode != "closed early":
        await coroutine(fail=mode == "raises")
        return
    task = asyncio.ensure_future(coroutine())
    await asyncio.sleep(SLEEP)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _drive_async_generator(mode: str) -> None:
    agen = async_generator(fail=mode == "raises")
    await agen.__anext__()
    if mode == "closed early":
        await asyncio.sleep(SLEEP)
        await agen.aclose()
        return
    async for _ in agen:
        pass


#: kind -> (qualname of the metric, driver taking the mode, whether it can be closed early)
KINDS: dict[str, tuple[str, Callable[[str], Any], bool]] = {
    "function": ("function", lambda mode: function(fail=mode == "raises"), False),
    "method": ("Service.method", lambda mode: Service().method(mode == "raises"), False),
    "classmethod": ("Service.klass", lambda mode: Service.klass(fail=mode == "raises"), False),
    "staticmethod": ("Service.static", lambda mode: Service.static(mode == "raises"), False),
    "coroutine": ("coroutine", lambda mode: asyncio.run(_drive_coroutine(mode)), True),
    "generator": ("generator", _drive_generator, True),
    "async generator": (
        "async_generator",
        lambda mode: asyncio.run(_drive_async_generator(mode)),
        True,
    ),
}
CASES = [(k, m) for k, (_, _, lazy) in KINDS.items() for m in MODES if lazy or m != "closed early"]


@pytest.mark.parametrize(("kind", "mode"), CASES)
def test_every_kind_records_its_real_lifetime(server_url: str, kind: str, mode: str) -> None:
    qualname, drive, _ = KINDS[kind]
    raised: BaseException | None = None
    with datacat.session(server_url, product="track-tests", **TEST_OPTIONS) as session:
        try:
            drive(mode)
        except Boom as exc:
            raised = exc
    assert (raised is not None) == (mode == "raises")
    name = f"{__name__}.{qualname}"
    outcome = "error" if mode == "raises" else "ok"
    totals = timings(fetch(server_url, session.id, "metrics"), name)
    assert list(totals) == [outcome]
    count, seconds = totals[outcome]
    assert count == 1
    assert SLEEP * 0.9 <= seconds < SLEEP + 10  # the real lifetime, not the creation
    errors = exceptions(fetch(server_url, session.id, "events"))
    if mode != "raises":
        assert errors == []
        return
    assert [e["exception_type"] for e in errors] == [f"{__name__}.Boom"]
    assert errors[0]["level"] == "error"
    assert errors[0]["exception_msg"] == "boom"
    assert errors[0]["data"] == {"function": name}
    assert errors[0]["source_file"] == __file__


def test_an_exception_is_reraised_unchanged_and_recorded_once(server_url: str) -> None:
    error = Boom("deep")

    @datacat.track
    def inner() -> None:
        raise error

    @datacat.track
    def outer() -> None:
        inner()

    scope = datacat.session(server_url, product="track-tests", **TEST_OPTIONS)
    with scope as session, pytest.raises(Boom) as caught:
        outer()
    assert caught.value is error
    frames = [frame.name for frame in traceback.extract_tb(error.__traceback__)]
    assert frames[-1] == "inner"
    assert frames.index("outer") < frames.index("inner")
    events = exceptions(fetch(server_url, session.id, "events"))
    assert len(events) == 1
    assert events[0]["source_function"] == "inner"
    assert events[0]["data"]["function"].endswith("inner")
    metrics = fetch(server_url, session.id, "metrics")
    for name in ("inner", "outer"):
        qualname = f"{__name__}.test_an_exception_is_reraised_unchanged_and_recorded_once"
        assert timings(metrics, f"{qualname}.<locals>.{name}")["error"][0] == 1


def test_wrapped_callables_keep_name_signature_doc_and_kind() -> None:
    assert function.__name__ == "function"
    assert function.__doc__ == "A plain function."
    assert str(inspect.signature(function)) == "(fail: 'bool' = False) -> 'str'"
    assert str(inspect.signature(Service().method)) == "(fail: 'bool' = False) -> 'str'"
    assert inspect.iscoroutinefunction(coroutine)
    assert not inspect.iscoroutinefunction(function)
    assert inspect.isgeneratorfunction(generator)
    assert inspect.isasyncgenfunction(async_generator)
    assert Service.klass() == "done"
    assert Service().static() == "done"


@pytest.mark.parametrize(
    ("tracked", "args"),
    [(function, ()), (Service.method, (Service(),)), (Service().method, ()), (Service.klass, ())],
    ids=["function", "method via class", "bound method", "classmethod"],
)
def test_tracked_callables_pickle_by_reference(tracked: Any, args: tuple[Any, ...]) -> None:
    restored = pickle.loads(pickle.dumps(tracked))
    assert restored.__qualname__ == tracked.__qualname__
    assert restored(*args) == "done"
    assert pickle.loads(pickle.dumps(function)) is function


def test_options_name_tags_sampling_and_switches(server_url: str) -> None:
    @datacat.track(name="custom.name", tags={"team": "core"})
    def named() -> int:
        return 1

    @datacat.track(sample_rate=0.5)
    def sampled() -> int:
        return 2

    @datacat.track(sample_rate=0.0, record_timing=False)
    def untimed() -> None:
        raise Boom("still recorded")

    @datacat.track(record_exceptions=False)
    def quiet() -> None:
        raise Boom("not recorded")

    with datacat.session(server_url, product="track-tests", **TEST_OPTIONS) as session:
        named()
        for _ in range(200):
            sampled()
        for call in (untimed, quiet):
            with pytest.raises(Boom):
                call()
    metrics = fetch(server_url, session.id, "metrics")
    assert {m["name"]: m["tags"] for m in metrics}["custom.name"] == {
        "team": "core",
        "outcome": "ok",
    }
    sampled_metrics = [m for m in metrics if m["name"].endswith("sampled")]
    assert {m["tags"]["sample_rate"] for m in sampled_metrics} == {"0.5"}
    assert 20 <= sum(m["count"] for m in sampled_metrics) <= 180
    assert not [m for m in metrics if m["name"].endswith(("untimed",))]
    assert timings(metrics, next(m["name"] for m in metrics if m["name"].endswith("quiet")))
    assert [e["exception_msg"] for e in exceptions(fetch(server_url, session.id, "events"))] == [
        "still recorded"
    ]


def test_interrupts_propagate_as_errors_without_an_event(server_url: str) -> None:
    @datacat.track("interrupted")
    def interrupted() -> None:
        raise KeyboardInterrupt

    scope = datacat.session(server_url, product="track-tests", **TEST_OPTIONS)
    with scope as session, pytest.raises(KeyboardInterrupt):
        interrupted()
    assert timings(fetch(server_url, session.id, "metrics"), "interrupted") == {
        "error": (1, pytest.approx(0, abs=10))
    }
    assert exceptions(fetch(server_url, session.id, "events")) == []


def test_an_explicit_session_wins_over_the_current_one(server_url: str) -> None:
    with datacat.session(server_url, product="track-tests", **TEST_OPTIONS) as explicit:

        @datacat.track(session=explicit)
        def pinned() -> None:
            pass

        with datacat.session(server_url, product="track-tests", **TEST_OPTIONS) as current:
            pinned()
    assert len(fetch(server_url, explicit.id, "metrics")) == 1
    assert fetch(server_url, current.id, "metrics") == []


def test_a_bad_sample_rate_is_refused_at_decoration() -> None:
    with pytest.raises(ConfigurationError):
        datacat.track(sample_rate=1.5)(function)


def test_an_unreachable_server_never_reaches_the_caller() -> None:
    options = {**TEST_OPTIONS, "exit_timeout": 0.2, "timeout": 0.2}
    with datacat.session("http://127.0.0.1:9", product="track-tests", **options):
        assert function() == "done"
        with pytest.raises(Boom):
            function(fail=True)


def test_a_broken_session_never_reaches_the_caller() -> None:
    class Broken:  # a session whose every verb fails: no real one can be made to
        id = "broken"

        def __getattr__(self, name: str) -> Any:
            raise RuntimeError(name)

    @datacat.track(session=Broken())  # type: ignore[arg-type]
    def guarded(fail: bool) -> str:
        return _body(fail)

    assert guarded(False) == "done"
    with pytest.raises(Boom):
        guarded(True)


@pytest.mark.parametrize(
    "env",
    [{}, {"DATACAT_URL": "http://127.0.0.1:9", "DATACAT_DISABLED": "1"}],
    ids=["no URL", "disabled"],
)
def test_unconfigured_tracking_is_a_no_op_that_starts_nothing(env: dict[str, str]) -> None:
    code = """if True:
        import threading, datacat
        @datacat.track
        def f(x):
            return x * 2
        assert f(21) == 42
        assert datacat.current_session() is None
        assert threading.active_count() == 1, threading.enumerate()
    """
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DATACAT_")}
    subprocess.run([sys.executable, "-c", code], env={**clean, **env}, check=True, timeout=60)


def test_disabled_tracking_inside_a_session_block_starts_no_thread() -> None:
    code = """if True:
        import threading, datacat
        @datacat.track
        def f(x):
            return x * 2
        with datacat.session("http://127.0.0.1:9", product="off") as s:
            assert f(21) == 42 and datacat.current_session() is s
            with datacat.timer("t"):
                f(1)
        ours = [t.name for t in threading.enumerate() if t.name.startswith("datacat-")]
        assert not ours, ours
    """
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DATACAT_")}
    env = {**clean, "DATACAT_DISABLED": "1"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)


def test_sampling_leaves_the_applications_random_sequence_alone(server_url: str) -> None:
    import random

    @datacat.track(sample_rate=0.5)
    def sampled() -> None:
        pass

    with datacat.session(server_url, product="track-rng", **TEST_OPTIONS):
        random.seed(3)
        expected = [random.random() for _ in range(3)]
        random.seed(3)
        for _ in range(10):
            sampled()
        assert [random.random() for _ in range(3)] == expected


def test_the_default_session_lock_is_free_in_a_forked_child() -> None:
    module = 'sys.modules["datacat.track"]'  # ``datacat.track`` is also the decorator's name
    assert lock_free_in_forked_child("import datacat.track", f"{module}._default_lock")


def test_many_calls_from_many_threads_become_a_few_exact_aggregates(server_url: str) -> None:
    @datacat.track("hot")
    def hot(value: float) -> None:
        pass

    def hammer() -> None:
        for _ in range(5000):
            hot(1.0)

    options = {**TEST_OPTIONS, "flush_interval": 1.0}
    with datacat.session(server_url, product="track-tests", **options) as session:
        threads = [
            threading.Thread(target=contextvars.copy_context().run, args=(hammer,))
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    metrics = [m for m in fetch(server_url, session.id, "metrics") if m["name"] == "hot"]
    assert sum(m["count"] for m in metrics) == 20_000  # none lost to races
    assert len(metrics) <= 10  # one per flush interval, not one per call
    for metric in metrics:
        assert sum(metric["bucket_counts"]) == metric["count"]
        assert metric["min"] <= metric["value"] / metric["count"] <= metric["max"]


def test_timings_of_an_idle_function_arrive_while_its_session_lives(server_url: str) -> None:
    name = f"{__name__}.function"
    with datacat.session(server_url, product="track-tests", **TEST_OPTIONS) as session:
        function()
        session.flush(10)  # the session itself has arrived; the timing is still folded here
        deadline = time.monotonic() + 20
        while not timings(fetch(server_url, session.id, "metrics"), name):
            assert time.monotonic() < deadline, "the folded timing never arrived"
            time.sleep(0.05)
        assert fetch(server_url, session.id)["status"] == "active"
    assert timings(fetch(server_url, session.id, "metrics"), name) == {
        "ok": (1, pytest.approx(SLEEP, abs=10))
    }


FORK_SCRIPT = """
import os, sys, datacat

@datacat.track("forked")
def work():
    pass

with datacat.session(sys.argv[1], product="track-fork", spool_dir="") as session:
    for _ in range(3):
        work()  # folded, not handed over yet when the process forks
    pid = os.fork()
    if pid == 0:
        work()
        folds = list(sys.modules["datacat.track"]._live)
        os._exit(0 if [len(fold.durations) + fold.count for fold in folds] == [1] else 1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, "the child kept parent timings"
print(session.id)
"""


def test_a_forked_child_drops_the_timings_its_parent_folded(server_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATACAT_")}
    done = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, server_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    totals = timings(fetch(server_url, done.stdout.strip(), "metrics"), "forked")
    assert totals["ok"][0] in (3, 4)  # the parent's three once (maybe also the child's one)


CHILD_TIMINGS_SCRIPT = """
import os, sys, time, datacat, requests

@datacat.track("child-work")
def work():
    pass

def count():
    url = f"{sys.argv[1]}/api/sessions/{session.id}/metrics"
    answer = requests.get(url, timeout=10)
    if answer.status_code != 200:  # the session's create may not have arrived yet
        return 0
    return sum(m["count"] for m in answer.json() if m["name"] == "child-work")

with datacat.session(sys.argv[1], product="track-fork-child", spool_dir="") as session:
    work()  # the parent made the fold (and has its sweeper)
    deadline = time.monotonic() + 20
    while count() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = os.fork()
    if pid == 0:
        for _ in range(3):
            work()
        deadline = time.monotonic() + 10
        while count() < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        os._exit(0 if count() == 4 else 1)  # no exit hook runs: sent while the child ran
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_a_forked_child_sends_its_own_timings_while_it_runs(server_url: str) -> None:
    """Regression: the child's sweeper started only with a new fold, so timings of functions
    the parent had tracked already were never sent by the child."""
    out = run_script(CHILD_TIMINGS_SCRIPT, server_url, DATACAT_FLUSH_INTERVAL="0.05")
    assert out.split() == ["0"]
