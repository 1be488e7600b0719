"""``sender="process"``: the sender in a child process, against a real server and real processes.

What the app's process keeps is the queue and a pipe; these tests prove the rest still holds
with the child doing the work: everything arrives (in order, once), ``flush``/``end`` round-trip
within their deadline and say what was not delivered, the server down or stalling never blocks
the app, an app killed with a session open gets it crashed by the child, a child that cannot
start or dies leaves the app sending by itself, values marshal cannot carry arrive as the thread
sender would send them, and a forked app does not share its parent's child.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from autoinstrument_helpers import (
    PYTHON,
    client_env,
    event_named,
    events,
    metrics,
    run_python,
    session,
)
from client_helpers import Peer, session_factory, wait_for

import datacat
import datacat.transport
import datacat.worker
from datacat import offload
from datacat.batching import RAW
from datacat.config import CHILD_OPTIONS, resolve
from datacat.errors import ConfigurationError
from datacat.offload import CRASH_REASON, ProcessWorker
from datacat.session import Session


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., Session]]:
    def process_session(url: str, **options: Any) -> Session:
        return factory(url, **{"sender": "process", **options})

    factory_gen = session_factory(tmp_path)
    factory = next(factory_gen)
    yield process_session
    next(factory_gen, None)


def child_of(session: Session) -> subprocess.Popen[bytes]:
    worker = session._worker
    assert isinstance(worker, ProcessWorker)
    wait_for(lambda: worker._process is not None or worker._gone, 10)
    assert worker._process is not None
    return worker._process


def test_everything_arrives_in_order_through_the_child(
    make: Callable[..., Session], server_url: str
) -> None:
    s = make(server_url, product="offload-basic")
    assert isinstance(s._worker, ProcessWorker)
    s.update_state({"phase": "start", "nested": {"a": 1}})
    for i in range(300):
        s.log_event("step", {"i": i}, labels=("x",))
        s.observe("work", 0.001 * i, tags={"kind": "k"})
    s.log_metric("size", 42, unit="bytes")
    s.update_state({"phase": "done", "nested": {"b": 2}})
    assert s.end(timeout=10)
    assert s.undelivered == 0
    got = session(server_url, s.id)
    assert got["status"] == "ended"
    assert got["state"]["phase"] == "done"
    assert got["state"]["nested"] == {"a": 1, "b": 2}
    steps = [e for e in events(server_url, s.id) if e["name"] == "step"]
    assert [e["data"]["i"] for e in steps] == list(range(300))
    assert steps[0]["labels"] == ["x"]
    work = metrics(server_url, s.id, "work")
    assert sum(m["count"] for m in work) == 300
    assert metrics(server_url, s.id, "size")[0]["value"] == 42
    assert child_of(s).pid != os.getpid()


def test_values_marshal_cannot_carry_arrive_as_the_thread_sender_sends_them(
    make: Callable[..., Session], tmp_path: Path, server_url: str
) -> None:
    class Odd:
        def __repr__(self) -> str:
            return "<odd>"

    data = {
        "obj": Odd(),
        "buf": bytearray(b"ab"),
        "view": memoryview(b"cd"),
        "tuple": (1, "two"),
        "set": {3},
        "nan": float("nan"),
        "nested": {"deep": [Odd(), 1.5]},
    }
    stored = []
    for sender in ("thread", "process"):
        factory = next(session_factory(tmp_path / sender))
        s = factory(server_url, sender=sender, product="offload-values")
        s.log_event("odd", data)
        s.update_state({"odd": Odd()})
        assert s.end(timeout=10)
        stored.append((events(server_url, s.id, "odd")[0]["data"], session(server_url, s.id)))
    (thread_data, thread_session), (process_data, process_session) = stored
    assert process_data == thread_data
    assert process_data["obj"] == "<odd>" and process_data["buf"] == "bytearray(b'ab')"
    assert process_session["state"]["odd"] == thread_session["state"]["odd"] == "<odd>"


def test_items_cross_the_pipe_as_built_in_types_only() -> None:
    plain = (
        "event",
        "sid",
        "name",
        {"a": [1, "b"], "s": {2}},
        "info",
        None,
        None,
        None,
        {},
        1.5,
        None,
    )
    observed = ("observe", "sid", "t", 0.5, "timer", {"k": "v"}, "s", (0.1, 1.0))
    assert offload.decode_items(offload.encode_items([plain, observed])) == [plain, observed]

    class Odd:
        def __repr__(self) -> str:
            return "<odd>"

    odd = ("event", "sid", "odd", {"o": Odd(), "cls": Odd, "fn": len, "t": int}, "info")
    [decoded] = offload.decode_items(offload.encode_items([odd]))
    assert decoded[3]["o"] == "<odd>" and decoded[3]["t"] is int
    assert "Odd" in decoded[3]["cls"] and "len" in decoded[3]["fn"]


def test_an_item_too_deep_to_pickle_costs_only_itself() -> None:
    deep: dict[str, object] = {}
    node = deep
    for _ in range(5000):
        node["a"] = node = {}
    items = [("event", "sid", "deep", deep), ("event", "sid", "fine", {"x": 1})]
    decoded = offload.decode_items(offload.encode_items(items))
    assert decoded[1] == items[1]
    assert decoded[0][2] == "deep" and isinstance(decoded[0][3], dict)


def test_server_down_never_blocks_and_counts_what_is_undelivered(
    make: Callable[..., Session], tmp_path: Path
) -> None:
    with Peer("status", status=503) as peer:
        s = make(peer.url, product="offload-down")
        started = time.monotonic()
        for i in range(2000):
            s.log_event("e", {"i": i})
        logging_took = time.monotonic() - started
        started = time.monotonic()
        assert not s.end(timeout=0.5)
        ending_took = time.monotonic() - started
        assert s.undelivered > 0
    assert logging_took < 1.0  # the caller only queues
    assert ending_took < 1.5  # the deadline holds (0.5 s and the answer's way back)


def test_a_stalled_server_does_not_hold_the_flush_past_its_deadline(
    make: Callable[..., Session],
) -> None:
    with Peer("stall") as peer:
        s = make(peer.url, product="offload-stall", timeout=5.0)
        s.log_event("e")
        started = time.monotonic()
        assert not s.flush(timeout=0.5)
        assert time.monotonic() - started < 1.5
        peer.release.set()


def test_what_the_server_refused_while_down_arrives_later(
    make: Callable[..., Session], tmp_path: Path, server_url: str
) -> None:
    """Down, then up: the child spooled and retried; everything arrives exactly once."""
    with Peer("status", status=503) as peer:
        s = make(peer.url, product="offload-recover")
        for i in range(50):
            s.log_event("e", {"i": i})
        assert not s.flush(timeout=0.3)
        peer.mode, peer.target = "forward", server_url
        assert wait_for(lambda: s.flush(timeout=2), 20)
        assert s.end(timeout=5)
    assert [e["data"]["i"] for e in events(server_url, s.id, "e")] == list(range(50))


APP = """
import os, sys, time
import datacat
s = datacat.create_session(sender="process", product="offload-app", flush_interval=0.05)
s.log_event("started")
s.flush(10)
print(s.id, s._worker._process.pid, flush=True)
if sys.argv[1:] == ["kill"]:
    time.sleep(60)
elif sys.argv[1:] == ["os._exit"]:
    os._exit(3)
else:
    s.log_event("last words")
"""


def run_app(url: str, tmp_path: Path, how: str) -> tuple[subprocess.Popen[str], str, int]:
    script = tmp_path / "app.py"
    script.write_text(APP)
    env = {**os.environ, **client_env(url, tmp_path)}
    proc = subprocess.Popen([PYTHON, str(script), how], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    sid, child = proc.stdout.readline().split()
    return proc, sid, int(child)


@pytest.mark.parametrize("how", ["kill", "os._exit"])
def test_an_app_that_dies_with_its_session_open_gets_it_crashed(
    server_url: str, tmp_path: Path, how: str
) -> None:
    proc, sid, child = run_app(server_url, tmp_path, how)
    if how == "kill":
        proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.stdout is not None
    proc.stdout.close()
    got = wait_for(lambda: (found := session(server_url, sid))["crashed"] and found, 15)
    assert got["crash_reason"] == CRASH_REASON
    wait_for(lambda: _gone(child), 15)  # the child ends once it has delivered


def test_a_normal_exit_ends_the_session_and_delivers_everything(
    server_url: str, tmp_path: Path
) -> None:
    proc, sid, child = run_app(server_url, tmp_path, "exit")
    assert proc.wait(10) == 0
    assert proc.stdout is not None
    proc.stdout.close()
    assert session(server_url, sid)["status"] == "ended"  # delivered before the app exited
    assert event_named(server_url, sid, "last words")
    wait_for(lambda: _gone(child), 15)


def test_the_child_exits_without_teardown_once_its_log_is_written(tmp_path: Path) -> None:
    """``quick_exit``: its exit status, and a log handler's last lines written, with no
    ``atexit`` callback run (the interpreter's teardown is skipped)."""
    log = tmp_path / "child.log"
    code = f"""
import atexit, logging
from datacat import offload
atexit.register(lambda: print("teardown ran"))
logging.basicConfig(filename={str(log)!r})
logging.getLogger("datacat").warning("last words")
offload.quick_exit(3)
"""
    done = run_python(code, tmp_path)
    assert done.returncode == 3 and "teardown ran" not in done.stdout
    assert "last words" in log.read_text()


def test_the_childs_exit_waits_for_its_sender_thread_to_spool_a_failed_outbox(
    tmp_path: Path,
) -> None:
    """The app goes (EOF) while the child's sender thread is in a request, which the server
    fails just before the exit's deadline: the thread moves the outbox to the spool, file by
    file. ``close`` waits for it, so the exit cuts none of it short (before, a third was lost)."""

    class Failing(Peer):
        def answer(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
            self.bodies.append(None)
            self.release.wait(30)
            return 503, {}, b'{"error": "down", "details": "peer"}'

    spool, count, exit_timeout = tmp_path / "spool", 300, 1.0
    with Failing() as peer:
        given = {"url": peer.url, "spool_dir": str(spool), "batch_size": 1, "timeout": 10.0,
                 "exit_timeout": exit_timeout, "queue_size": 10_000}  # fmt: skip
        options = {name: getattr(resolve(**given), name) for name in CHILD_OPTIONS}
        child = subprocess.Popen(
            [PYTHON, "-m", "datacat.offload"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert child.stdin is not None
        event = {"op": "event", "session_id": "s1", "data": {"name": "e"}}
        items = [(RAW, "s1", {**event, "op_id": f"op-{n}"}) for n in range(count)]
        child.stdin.write(offload.frame(offload.HELLO, json.dumps({"options": options}).encode()))
        child.stdin.write(offload.frame(offload.ITEMS, offload.encode_items(items)))
        child.stdin.flush()
        wait_for(lambda: peer.bodies, 10)  # the thread's first request is in flight
        child.stdin.close()  # the app has gone: close(now + exit_timeout)
        time.sleep(exit_timeout - 0.08)
        peer.release.set()
        assert child.wait(10) == 1  # not delivered: spooled
    batches = [json.loads(path.read_text()) for path in spool.glob("*/*.batch.json")]
    assert sum(len(batch["operations"]) for batch in batches) == count
    assert not list(spool.glob("*/.tmp-*"))


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie of an app that never reaped it still answers: read its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_a_child_that_cannot_start_leaves_the_app_sending_by_itself(
    make: Callable[..., Session], server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError("no processes left")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    s = make(server_url, product="offload-nochild")
    for i in range(20):
        s.log_event("e", {"i": i})
    assert s.end(timeout=10)
    assert s._worker._gone  # type: ignore[union-attr]
    assert [e["data"]["i"] for e in events(server_url, s.id, "e")] == list(range(20))


def test_a_child_that_dies_leaves_the_app_sending_by_itself(
    make: Callable[..., Session], server_url: str
) -> None:
    s = make(server_url, product="offload-childdies")
    s.log_event("before")
    assert s.flush(timeout=10)
    child = child_of(s)
    child.kill()
    child.wait(10)
    for i in range(20):
        s.log_event("after", {"i": i})
    assert s.end(timeout=10)
    assert s._worker._gone  # type: ignore[union-attr]
    assert [e["data"]["i"] for e in events(server_url, s.id, "after")] == list(range(20))


FORK_APP = """
import os, sys
import datacat
s = datacat.create_session(sender="process", product="offload-fork", flush_interval=0.05)
s.log_event("parent before fork")
s.flush(10)
parent_child = s._worker._process.pid
pid = os.fork()
if pid == 0:
    s.log_event("in the forked child")
    ok = s.flush(10)
    mine = s._worker._process.pid if s._worker._process else None
    print("forked", ok, mine != parent_child, flush=True)
    os._exit(0)
os.waitpid(pid, 0)
s.log_event("parent after fork")
print(s.id, s.end(timeout=10), flush=True)
"""


def test_a_forked_app_gets_its_own_child(server_url: str, tmp_path: Path) -> None:
    done = run_python(FORK_APP, tmp_path, client_env(server_url, tmp_path))
    assert done.returncode == 0, done.stderr
    forked, parent = done.stdout.splitlines()
    assert forked == "forked True True"
    sid, ended = parent.split()
    assert ended == "True"
    names = [e["name"] for e in events(server_url, sid)]
    assert names.count("in the forked child") == 1
    assert names.count("parent after fork") == 1
    assert session(server_url, sid)["status"] == "ended"


def test_sender_is_checked_and_read_from_the_environment() -> None:
    assert resolve(env={"DATACAT_SENDER": "process"}).sender == "process"
    assert resolve(env={}).sender == "thread"
    with pytest.raises(ConfigurationError, match="sender must be thread or process"):
        resolve(sender="fiber")
    assert resolve(sender="process").destination() != resolve().destination()


def test_the_child_is_made_with_the_apps_sender_options() -> None:
    """The child reads the app's options from its hello as they are (it does not import
    ``datacat.config``); a hello without them is resolved as before, with no environment."""
    app = resolve(url="http://example.test:1/", api_key="k", timeout=2, batch_size=7, spool_dir="")
    hello = json.loads(json.dumps(offload.hello_options(app)))
    child = offload.child_config(hello)
    mine = {name: getattr(child, name) for name in CHILD_OPTIONS}
    assert mine == {name: getattr(app, name) for name in CHILD_OPTIONS}
    fallback = offload.child_config({"url": "http://example.test:2", "pid": 1})
    assert fallback == resolve(env={}, url="http://example.test:2")


def test_a_process_session_and_a_thread_session_do_not_share_a_sender(
    make: Callable[..., Session], tmp_path: Path, server_url: str
) -> None:
    threaded = next(session_factory(tmp_path / "t"))(server_url, product="offload-mixed")
    processed = make(server_url, product="offload-mixed")
    assert type(threaded._worker) is datacat.worker.Worker
    assert isinstance(processed._worker, ProcessWorker)


def test_send_soon_hands_over_on_the_callers_thread_and_the_thread_dozes(
    make: Callable[..., Session], server_url: str
) -> None:
    """``send_soon`` hands the items to the child on the caller's thread (the child sends them
    at once); a sender thread whose caller hands over itself dozes for ``flush_interval``."""
    s = make(server_url, product="offload-soon", flush_interval=60.0)
    assert s.flush(10)  # the child is up
    worker = s._worker
    assert isinstance(worker, ProcessWorker)
    s.send_soon()  # from now on the thread's waits are dozes (its current one ends in 0.05 s)
    time.sleep(0.2)
    s.log_event("soon")
    assert worker._wait_time() == offload.HAND_OVER_INTERVAL  # queued: it would hand over soon
    started = time.monotonic()
    s.send_soon()
    assert time.monotonic() - started < 0.5 and not worker.queue  # handed over, not waited
    assert worker._wait_time() == 60.0 and not worker._dozing  # and puts do not wake it
    assert event_named(server_url, s.id, "soon", timeout=5)  # flush_interval is a minute


def test_a_flush_hands_over_on_the_callers_thread_once_the_child_is_up(
    make: Callable[..., Session], server_url: str
) -> None:
    """With the child up, ``flush`` hands the queue over and asks the child on the caller's
    thread: it neither wakes the sender thread nor waits for it (at the end of a pytest run,
    that wait was ~2 ms of the run's)."""
    s = make(server_url, product="offload-flush", flush_interval=60.0)
    assert s.flush(10)  # the child is up
    worker = s._worker
    assert isinstance(worker, ProcessWorker)
    served = worker._done  # the flush tickets the sender thread has served
    s.log_event("flushed")
    assert s.flush(10)
    assert worker._done == served and not worker.queue
    assert event_named(server_url, s.id, "flushed", timeout=5)


def test_a_flush_hands_over_a_full_queue_and_its_drop_report(
    make: Callable[..., Session], server_url: str
) -> None:
    """A queue at ``queue_size`` takes more than one hand-over (at most that many items wait in
    frames): a flush hands over everything queued before it, the drop report of what the full
    queue refused included, before it asks the child, so its True means all of it arrived."""
    s = make(server_url, product="offload-full-flush", flush_interval=60.0, queue_size=50)
    assert s.flush(10)
    worker = s._worker
    assert isinstance(worker, ProcessWorker)
    worker._taken_at = worker._inline_at = float("-inf")  # nothing handed over for long
    time.sleep(0.3)  # its current wait (at most 0.05 s) is over: the sender thread dozes...
    assert worker._dozing and not worker.queue
    worker._dozing = False  # ...for a minute, and no put wakes it: the flush alone hands over
    for index in range(60):
        s.log_event(f"full-{index}")  # the last 10 are refused and counted
    assert s.flush(10)
    assert not worker.queue
    [dropped] = metrics(server_url, s.id, "datacat.dropped_items")
    assert dropped["value"] == 10
    assert {e["name"] for e in events(server_url, s.id)} >= {f"full-{i}" for i in range(50)}


@contextlib.contextmanager
def _backed_up(
    make: Callable[..., Session], url: str, product: str, count: int
) -> Iterator[tuple[Session, ProcessWorker]]:
    """A session whose child is stopped (SIGSTOP, until the block ends) with its pipe and the
    frames waiting for it full (the queue holds 50): ``count`` events of ~100 kB, each its own
    text (the pickle's memo would write one text once per frame)."""
    s = make(url, product=product, flush_interval=60.0, queue_size=50)
    assert s.flush(10)
    worker = s._worker
    assert isinstance(worker, ProcessWorker)
    child = child_of(s)
    os.kill(child.pid, signal.SIGSTOP)
    try:
        big = "x" * 100_000
        for index in range(count):
            s.log_event(f"big-{index}", message=big + str(index))
            time.sleep(0.002)
        assert wait_for(lambda: worker._waiting >= 50, 10)  # the frames wait for the pipe
        yield s, worker
    finally:
        os.kill(child.pid, signal.SIGCONT)


def test_a_flush_waits_for_a_backed_up_pipe_to_take_the_whole_queue(
    make: Callable[..., Session], server_url: str
) -> None:
    """With the pipe full (a child that stopped reading) and a full queue behind it, a flush
    hands the queue over as the pipe drains, within its deadline, and only then says True."""
    with _backed_up(make, server_url, "offload-backed-up", 200) as (s, worker):
        for index in range(40):
            s.log_event(f"small-{index}")
        assert worker.queue
    assert s.flush(30)
    assert not worker.queue
    arrived = [e["name"] for e in events(server_url, s.id)]
    dropped = worker.stats["dropped"]  # refused by the full queue, and reported as such
    assert len(set(arrived)) == len(arrived) and len(arrived) + dropped == 240
    reports = metrics(server_url, s.id, "datacat.dropped_items")
    assert sum(report["value"] for report in reports) == dropped


def test_an_idle_process_sender_dozes_and_the_next_item_wakes_it(
    make: Callable[..., Session], server_url: str
) -> None:
    """Idle for ``flush_interval``, the thread sleeps that long, and the next item wakes it at
    once: the last words of an app that dies soon after still reach the child."""
    s = make(server_url, product="offload-doze", flush_interval=60.0)
    assert s.flush(10)
    worker = s._worker
    assert isinstance(worker, ProcessWorker)
    worker._taken_at = worker._inline_at = float("-inf")  # nothing handed over for long
    assert wait_for(lambda: worker._dozing, 5)  # its next wait is a doze of a minute
    s.log_event("last words")
    assert event_named(server_url, s.id, "last words", timeout=5)


def test_one_item_keeps_the_sender_thread_awake_only_briefly(
    make: Callable[..., Session], server_url: str
) -> None:
    """After a hand-over the thread keeps its 0.05 s rhythm for ``BURST_WINDOW`` (a burst's
    next items are batched), not for a whole ``flush_interval``, then dozes."""
    s = make(server_url, product="offload-burst", flush_interval=10.0)
    assert s.flush(10)
    worker = s._worker
    assert isinstance(worker, ProcessWorker)
    cycles: list[float] = []
    real_cycle = worker._cycle_once

    def cycle(force: bool) -> bool:
        cycles.append(time.monotonic())
        return real_cycle(force)

    worker._cycle_once = cycle  # type: ignore[method-assign]
    time.sleep(0.5)  # past the flush's burst
    cycles.clear()
    s.log_event("one")
    time.sleep(1.0)
    assert event_named(server_url, s.id, "one", timeout=5)
    # about BURST_WINDOW / HAND_OVER_INTERVAL cycles (4), far from 20 a second for 10 s
    assert len(cycles) <= 2 + offload.BURST_WINDOW / offload.HAND_OVER_INTERVAL, cycles


def test_send_soon_wakes_the_thread_when_the_pipe_is_not_free(
    make: Callable[..., Session], server_url: str
) -> None:
    s = make(server_url, product="offload-soon-busy", flush_interval=60.0)
    assert s.flush(10)
    worker = s._worker
    assert isinstance(worker, ProcessWorker)
    with worker._pipe_lock:  # the sender thread (or a flush) is using the pipe
        s.log_event("later")
        s.send_soon()  # returns at once, leaving the items to the thread it woke
        assert worker.queue and worker._wake.is_set()
    assert event_named(server_url, s.id, "later", timeout=5)


def test_ctrl_c_during_a_hand_over_on_the_main_thread_comes_once_it_is_done(
    make: Callable[..., Session], server_url: str
) -> None:
    """Python raises Ctrl-C's ``KeyboardInterrupt`` on the main thread between any two steps:
    in a hand-over it could tear a frame in the pipe. It comes once the hand-over is done,
    and the frame arrives whole."""
    s = make(server_url, product="offload-ctrl-c")
    assert s.flush(10)
    worker = s._worker
    assert isinstance(worker, ProcessWorker)
    s.send_soon()  # a caller that hands over itself: the thread dozes (after its 0.05 s wait)
    time.sleep(0.2)
    real_hand_over = worker._hand_over

    def interrupted_hand_over() -> None:
        real_hand_over()
        if threading.current_thread() is threading.main_thread():
            signal.raise_signal(signal.SIGINT)  # Ctrl-C, between the pickle and the write

    s.log_event("whole")
    worker._hand_over = interrupted_hand_over  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        s.send_soon()
    worker._hand_over = real_hand_over  # type: ignore[method-assign]
    assert not worker._frames and worker._writing is None and not worker.queue
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    assert event_named(server_url, s.id, "whole", timeout=10)
    assert s.end(timeout=10)


def test_ctrl_c_stops_a_flush_that_waits_for_a_stuck_child(
    make: Callable[..., Session], server_url: str
) -> None:
    """A flush holds Ctrl-C back only while it writes, never while it waits for the pipe: with
    the child stopped and the pipe full, Ctrl-C still stops a flush that has no deadline, and
    what was queued is delivered afterwards."""
    with _backed_up(make, server_url, "offload-ctrl-c-wait", 150) as (s, worker):
        started = time.monotonic()
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        with pytest.raises(KeyboardInterrupt):
            s.flush(None)
        assert time.monotonic() - started < 5 and not worker._pipe_lock.locked()
    assert s.end(timeout=30)


def test_send_soon_leaves_the_items_to_the_thread_when_the_child_goes_meanwhile(
    make: Callable[..., Session], server_url: str
) -> None:
    """The child is lost (by the sender thread) between ``kick_soon``'s first look and its
    lock: the items stay queued for the thread, which sends them itself, none in a frame that
    nobody would ever write."""
    s = make(server_url, product="offload-soon-gone")
    assert s.flush(10)
    worker = s._worker
    assert isinstance(worker, ProcessWorker)
    real_lock = worker._pipe_lock

    class LosingLock:
        def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
            got = real_lock.acquire(blocking, timeout)
            worker._gone, worker._outlet = True, None  # as ``_lost_child`` leaves them
            return got

        def release(self) -> None:
            real_lock.release()

    s.log_event("after the child")
    worker._pipe_lock = LosingLock()  # type: ignore[assignment]
    s.send_soon()
    worker._pipe_lock = real_lock
    assert not worker._frames and worker._writing is None
    assert event_named(server_url, s.id, "after the child", timeout=10)  # sent by this process


# -- regressions found in review -------------------------------------------------------------

BIG = "x" * 10_000


def test_undelivered_never_races_the_sender_thread(
    make: Callable[..., Session], server_url: str
) -> None:
    s = make(server_url, product="offload-race", batch_size=1, flush_interval=0.01)
    assert s.flush(10)
    child = child_of(s)
    os.kill(child.pid, signal.SIGSTOP)  # frames pile up while the sender keeps handing over
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        deadline = time.monotonic() + 2
        for _ in range(3000):  # bounded: what piles up must still arrive within end()'s timeout
            if time.monotonic() > deadline:
                break
            s.log_event("e", {"b": BIG})
            for _ in range(20):
                assert s.undelivered >= 0
    finally:
        sys.setswitchinterval(old)
        os.kill(child.pid, signal.SIGCONT)
    assert s.end(timeout=20)


def test_a_child_lost_during_a_flush_is_never_replaced(make: Callable[..., Session]) -> None:
    """The sender thread waits for the pipe while a flush holds it, and the child dies: the
    items go out from this process, in order, and no second child starts."""
    with Peer("stall") as peer:
        s = make(peer.url, product="offload-respawn", timeout=10.0)
        first = child_of(s)
        s.log_event("before")
        flushing = threading.Thread(target=s.flush, args=(5.0,))
        flushing.start()
        time.sleep(0.3)
        for i in range(20):
            s.log_event("during", {"i": i})
        time.sleep(0.3)
        first.kill()
        flushing.join()
        peer.release.set()
        peer.mode = "ok"
        assert s.flush(10)
    worker = s._worker
    assert isinstance(worker, ProcessWorker) and worker._gone
    assert worker._process is first
    during = [op["data"]["data"]["i"] for op in peer.accepted if op["op"] == "event"
              and op["data"]["name"] == "during"]  # fmt: skip
    assert sorted(set(during)) == list(range(20))


EXIT_APP = """
import os, signal, sys, time, datacat
s = datacat.create_session(sender="process", product="offload-slowchild", flush_interval=0.05,
                           exit_timeout=0.5)
s.flush(10)
print(s.id, s._worker._process.pid, flush=True)
os.kill(s._worker._process.pid, signal.SIGSTOP)
for i in range(400):
    s.log_event("e", {"i": i, "b": str(i) + "x" * 10_000})
if END:  # set by the test: the app ends its session itself, else the exit hook does
    s.end(timeout=0.3)
"""


@pytest.mark.parametrize("how", ["end", "exit hook"])
def test_a_slow_child_at_exit_loses_nothing(server_url: str, tmp_path: Path, how: str) -> None:
    """The child is stopped while the app logs and exits: what it could not take is spooled by
    the app (and delivered by the next process), what it took it delivers when resumed."""
    code = f"END = {how == 'end'}\n{EXIT_APP}"
    done = run_python(code, tmp_path, client_env(server_url, tmp_path))
    sid, child = done.stdout.split()
    os.kill(int(child), signal.SIGCONT)
    wait_for(lambda: _gone(int(child)), 15)
    replay = next(session_factory(tmp_path))(server_url, product="offload-replayer")
    assert replay.end(timeout=10)  # a later process replays the spool
    assert sorted(e["data"]["i"] for e in events(server_url, sid, "e")) == list(range(400))


def test_flush_works_with_descriptors_over_1023(
    make: Callable[..., Session], server_url: str
) -> None:
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        s = make(server_url, product="offload-fds")
        s.log_event("e")
        assert s.end(timeout=10)
    finally:
        for fd in held:
            os.close(fd)


SIGPIPE_APP = """
import signal, datacat
signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as CLIs do for `| head`
s = datacat.create_session(sender="process", product="offload-sigpipe", flush_interval=0.05)
assert s.flush(10)
s._worker._process.kill()
s._worker._process.wait()
for i in range(50):
    s.log_event("after", {"i": i})
print("alive", s.end(timeout=10), flush=True)
"""


def test_a_dead_child_never_kills_an_app_that_restored_sigpipe(
    server_url: str, tmp_path: Path
) -> None:
    done = run_python(SIGPIPE_APP, tmp_path, client_env(server_url, tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "alive True"


def test_text_fields_arrive_as_the_thread_sender_sends_them(
    server_url: str, tmp_path: Path
) -> None:
    import enum
    import types

    class Color(enum.Enum):
        RED = 1

    def labels() -> Iterator[str]:
        yield from ("a", "b")

    stored = []
    for sender in ("thread", "process"):
        s = next(session_factory(tmp_path / sender))(server_url, sender=sender, product="fields")
        s.log_event(
            Color.RED,
            types.MappingProxyType({"k": 1}),
            category=Color.RED,
            message=Path("/x"),
            labels=labels(),
        )
        s.observe("t", 0.5, tags={"path": Path("/y")})
        assert s.end(timeout=10)
        [event] = [e for e in events(server_url, s.id) if e["category"] == "Color.RED"]
        [metric] = metrics(server_url, s.id, "t")
        stored.append(
            ({k: event[k] for k in ("name", "data", "message", "labels")}, metric["tags"])
        )
    assert stored[0] == stored[1]
    assert stored[1][0]["message"] == "/x" and stored[1][1] == {"path": "/y"}


class _FullWorker(datacat.worker.Worker):
    """A sender whose queue stays full (a server that takes nothing): ``put`` refuses and
    counts, as ``Worker.put`` does then, and a flush cannot make room."""

    def put(self, item: Any) -> bool:
        self.stats["dropped"] += 1
        return False

    def flush(self, timeout: float | None = None) -> bool:
        return False


def test_a_full_child_queue_is_counted_once_and_reported_for_its_session() -> None:
    config = resolve(url="http://127.0.0.1:1", queue_size=2, spool_dir="")
    worker = _FullWorker(datacat.transport.HttpTransport(config.url), config)
    child = offload.Child(worker, io.BytesIO())
    child.receive([("event", "s1", "e", None, "info", None, None, None, {}, 1.0, None)] * 5)
    assert worker.stats["dropped"] == 5  # each once, not once by put and again by the child
    assert worker._lost == {"s1": 5}  # and reported as the session's dropped items
