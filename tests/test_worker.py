"""The sender: batching, retry/backoff, offline spool, exit deadline and fork safety.

Everything runs against the real server (``server_factory`` for down-and-back) or a misbehaving
real HTTP peer (``Peer``); what goes into a batch is tested in ``test_batching.py``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from client_helpers import Peer, details, session_factory, wait_for
from fork_helpers import run_script
from track_helpers import fetch

import datacat
from datacat import _internal
from datacat.session import Session
from datacat.worker import DROPPED_METRIC, Worker

Make = Callable[..., Session]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    yield from session_factory(tmp_path)


# -- delivery against real peers ---------------------------------------------------------------


def test_many_calls_go_in_few_requests(make: Make, server_url: str) -> None:
    with Peer("forward", target=server_url) as peer:
        session = make(peer.url, flush_interval=0.2)
        for i in range(5000):
            session.log_event("e", {"i": i})
        assert session.flush(20)
    assert len(peer.bodies) <= 20
    assert len(peer.operations) == 5001


def test_server_down_then_back_delivers_everything_in_order_exactly_once(
    make: Make, server_factory: Callable[..., Any]
) -> None:
    server = server_factory()
    session = make(server.url)
    session.log_event("before", {"i": -1})
    assert session.flush(10)
    server.kill()
    for i in range(300):
        session.log_event("offline", {"i": i})
        if i % 100 == 0:
            time.sleep(0.1)  # several failed sends, several spooled batches
    assert not session.flush(2)
    server.start()
    assert wait_for(lambda: session.flush(2), timeout=20)
    events = details(server.url, session.id)["events"]
    assert [e["data"]["i"] for e in events] == list(range(-1, 300))


def test_500_is_retried_with_backoff_until_it_goes_through(make: Make, server_url: str) -> None:
    with Peer("status", status=500) as peer:
        session = make(peer.url, spool_dir="")
        session.log_event("retried")
        wait_for(lambda: len(peer.bodies) >= 3)
        peer.mode, peer.target = "forward", server_url
        assert wait_for(lambda: session.flush(2))
    gaps = [b - a for a, b in zip(peer.times[:2], peer.times[1:3], strict=True)]
    assert len(peer.bodies) >= 4 and all(gap >= 0.04 for gap in gaps)  # backoff, not a spin
    assert [e["name"] for e in details(server_url, session.id)["events"]] == ["retried"]


def test_4xx_is_not_retried_but_logged_and_counted(
    make: Make, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_internal, "_seen", set())
    with Peer("status", status=400) as peer:
        session = make(peer.url)
        session.log_event("refused")
        session.flush(5)
        time.sleep(0.3)
        assert len(peer.bodies) == 1
    worker = session._worker
    assert worker is not None and worker.stats["rejected"] == 2
    assert "refused a batch (400" in caplog.text


def test_429_retry_after_is_honoured(make: Make) -> None:
    with Peer("status", status=429, headers={"Retry-After": "1"}) as peer:
        session = make(peer.url, max_backoff=5.0)
        session.log_event("slow down")
        wait_for(lambda: peer.bodies)
        peer.mode = "ok"
        wait_for(lambda: len(peer.bodies) >= 2)
    assert len(peer.bodies) >= 2 and peer.times[1] - peer.times[0] >= 0.9


def test_batch_too_large_for_the_server_is_split(make: Make) -> None:
    with Peer("ok") as peer:
        peer.limit = 3
        session = make(peer.url, flush_interval=5.0)
        for i in range(10):
            session.log_event("e", {"i": i})
        assert session.flush(10)
    sent = [op["data"].get("data", {}).get("i") for op in peer.accepted]
    assert sent == [None, *range(10)]  # the create, then every event once, in order


def test_stalled_server_never_blocks_the_caller(make: Make) -> None:
    with Peer("stall") as peer:
        session = make(peer.url, timeout=5.0, batch_size=50)
        durations = []
        for i in range(2000):
            start = time.perf_counter()
            session.log_event("e", {"i": i})
            durations.append(time.perf_counter() - start)
        durations.sort()
        # generous: a busy machine may deschedule any call; a blocked one would take seconds
        assert durations[len(durations) * 99 // 100] < 0.01 and durations[-1] < 1.0
        assert session.flush(timeout=0.2) is False


EXIT_SCRIPT = """
import sys, time, datacat
s = datacat.create_session(sys.argv[1], spool_dir=sys.argv[2], exit_timeout=0.5, timeout=30.0)
for i in range(100):
    s.log_event("e", {"i": i})
print(time.monotonic(), flush=True)
"""


@pytest.mark.parametrize("mode", ["stall", "status"])  # never answers / answers 500
def test_process_exits_within_the_flush_deadline_when_server_fails(
    mode: str, tmp_path: Path
) -> None:
    with Peer(mode, status=500) as peer:
        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-c", EXIT_SCRIPT, peer.url, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        ended = time.monotonic()
    assert out.returncode == 0, out.stderr
    main_done = float(out.stdout.split()[0])
    assert ended - main_done < 0.5 + 4.0  # exit_timeout plus a margin, far below timeout=30
    assert ended - started < 15
    assert list(tmp_path.glob("*/*.batch.json"))  # what could not go is spooled


FORK_SCRIPT = """
import os, sys, datacat
s = datacat.create_session(sys.argv[1], spool_dir=sys.argv[2], flush_interval=0.05)
for i in range(50):
    s.log_event("parent", {"i": i})
pid = os.fork()
if pid == 0:
    for i in range(10):
        s.log_event("child", {"i": i})
    ok = s.flush(10)
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
s.log_event("parent-after")
assert s.end(10)
print(s.id, os.waitstatus_to_exitcode(status))
"""


def test_fork_child_sends_only_its_own_items(server_url: str, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, server_url, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    sid, child_code = out.stdout.split()
    assert child_code == "0"
    events = details(server_url, sid)["events"]
    names = [(e["name"], e.get("data", {}).get("i")) for e in events]
    assert len(names) == len(set(names)) == 61
    assert sorted(n for n, _ in names).count("child") == 10


FORK_ROUNDS_SCRIPT = """
import os, sys, threading, time, datacat

def round_():
    # A process that has sent nothing yet: its sender's first request (lazy imports) is in flight
    # when it forks, right after a thread was started.
    s = datacat.create_session(sys.argv[1], spool_dir=sys.argv[2], flush_interval=0.05)
    s.log_event("parent")
    threading.Thread(target=time.sleep, args=(0.5,), daemon=True).start()
    pid = os.fork()
    if pid == 0:
        s.log_event("child")
        os._exit(0 if s.flush(3) else 3)
    os._exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))

codes = []
for _ in range(int(sys.argv[3])):
    pid = os.fork()  # this process never starts a thread: every round begins pristine
    if pid == 0:
        round_()
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(*codes)
"""


def test_fork_child_can_flush_while_the_parents_first_send_is_in_flight(
    server_url: str, tmp_path: Path
) -> None:
    """Regression: the child inherited the import lock of the sender's half-done lazy import
    and its own sender hung on it (about 1 round in 5 failed)."""
    out = subprocess.run(
        [sys.executable, "-c", FORK_ROUNDS_SCRIPT, server_url, str(tmp_path), "20"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0"] * 20, out.stderr


SHUTDOWN_SCRIPT = """
import atexit, sys, datacat
def late():
    s = datacat.create_session(sys.argv[1], spool_dir=sys.argv[2], exit_timeout=0.5)
    s.log_event("late")
    s.heartbeat()
    s.start_heartbeat(0.01)
atexit.register(late)
datacat.create_session(sys.argv[1], spool_dir=sys.argv[2], exit_timeout=0.5).log_event("early")
"""


def test_no_thread_is_started_during_interpreter_shutdown(server_url: str, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-X", "dev", "-c", SHUTDOWN_SCRIPT, server_url, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr


def test_put_operations_forwards_ready_batches(server_url: str, tmp_path: Path) -> None:
    from datacat.config import resolve
    from datacat.transport import HttpTransport

    config = resolve(env={}, url=server_url, spool_dir=str(tmp_path), flush_interval=0.05)
    worker = Worker(HttpTransport(server_url), config)
    sid = str(uuid.uuid4())
    op = {
        "op_id": str(uuid.uuid4()),
        "op": "create",
        "session_id": sid,
        "data": {"id": sid, "product": "p", "version": "1"},
    }
    assert worker.put_operations([op, op]) == 2
    assert worker.flush(10)
    assert details(server_url, sid)["id"] == sid
    worker.close(time.monotonic() + 1)


QUIET_CHILD_SCRIPT = """
import os, sys, datacat
s = datacat.create_session(sys.argv[1], spool_dir=sys.argv[2], flush_interval=0.05)
assert s.flush(10)
pid = os.fork()
if pid == 0:
    sys.exit(0)  # a child that logs nothing: its exit hook must not send anything
os.waitpid(pid, 0)
assert s.end(10)
"""


def test_fork_child_that_logs_nothing_sends_nothing(server_url: str, tmp_path: Path) -> None:
    with Peer("forward", target=server_url) as peer:
        out = subprocess.run(
            [sys.executable, "-c", QUIET_CHILD_SCRIPT, peer.url, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
    assert [op["op"] for op in peer.operations] == ["create", "end"]


class ExplodingTransport:
    """A transport with a bug (a plug-in one, say): every send raises."""

    def __init__(self) -> None:
        self.calls = 0

    def send_batch(self, operations: list[Any], timeout: float | None = None) -> Any:
        self.calls += 1
        raise RuntimeError("bug in a transport")

    def close(self) -> None:
        pass


def test_a_failing_transport_backs_off_and_never_reaches_the_caller(tmp_path: Path) -> None:
    from datacat.config import resolve

    config = resolve(env={}, spool_dir="", flush_interval=0.01, max_backoff=0.2)
    transport = ExplodingTransport()
    worker = Worker(transport, config)
    for i in range(100):
        assert worker.put(("event", "s", {"name": str(i)}))
    time.sleep(0.5)
    assert 1 <= transport.calls < 15  # backed off, no spin
    assert worker.flush(1) is False
    worker.close(time.monotonic() + 0.5)


def test_memory_only_mode_keeps_a_bounded_backlog_and_counts_drops() -> None:
    from datacat.config import resolve
    from datacat.transport import HttpTransport

    config = resolve(env={}, spool_dir="", queue_size=20, batch_size=5, timeout=0.2)
    worker = Worker(HttpTransport("http://127.0.0.1:9", timeout=0.2), config)
    for round_ in range(3):
        for i in range(20):
            worker.put(("event", "s", {"name": f"{round_}-{i}"}))
        assert worker.flush(2) is False
    assert sum(map(len, worker._outbox)) <= 20 and worker.stats["dropped"] >= 40
    worker.close(time.monotonic() + 0.5)


# -- a sender that never dies; drops reported; inline flush bounded ----------------------------


def test_the_sender_survives_a_thousand_failures_and_delivers_when_the_server_is_back(
    make: Make, server_factory: Callable[..., Any]
) -> None:
    """Regression: ``flush_interval * 2**failures`` overflowed after ~1024 failures (hours of
    outage) and the sender thread died for good."""
    server = server_factory()
    session = make(server.url)
    assert session.flush(10)
    worker = session._worker
    assert worker is not None and worker.thread is not None
    server.kill()
    worker._failures = 5000
    session.log_event("during-outage")
    assert not session.flush(2)
    assert worker.thread.is_alive()
    server.start()
    assert wait_for(lambda: session.flush(2), timeout=20)
    assert worker.thread.is_alive()
    assert "during-outage" in [e["name"] for e in details(server.url, session.id)["events"]]


def _dropped_reported(url: str, session_id: str) -> float:
    metrics = details(url, session_id).get("metrics") or fetch(url, session_id, "metrics")
    return sum(m["value"] for m in metrics if m["name"] == DROPPED_METRIC)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"spool_dir": "", "queue_size": 20, "batch_size": 5}, id="memory-bound"),
        pytest.param({"spool_max_bytes": 1}, id="spool-full"),
    ],
)
def test_items_lost_while_the_server_is_down_are_reported_when_it_is_back(
    make: Make, server_factory: Callable[..., Any], options: dict[str, Any]
) -> None:
    server = server_factory()
    session = make(server.url, **options)
    assert session.flush(10)
    server.kill()
    for round_ in range(3):
        for i in range(20):
            session.log_event(f"{round_}-{i}")
        assert not session.flush(2)
    worker = session._worker
    assert worker is not None and worker.stats["dropped"] > 0
    server.start()
    assert wait_for(lambda: session.flush(2), timeout=20)
    assert _dropped_reported(server.url, session.id) == worker.stats["dropped"]


def test_drops_of_a_session_that_ended_before_the_next_send_are_reported(
    make: Make, server_url: str
) -> None:
    session = make(server_url, queue_size=10, flush_interval=30, spool_dir="")
    assert session.flush(10)
    for i in range(50):  # the sender sleeps: the queue fills up
        session.log_event("burst", {"i": i})
    assert session.dropped > 0
    assert session.end(10)
    assert _dropped_reported(server_url, session.id) == session.dropped


class SlowPeer(Peer):
    """Answers every request, each after ``delay`` seconds: slow but never failing."""

    delay = 0.3

    def answer(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        time.sleep(self.delay)
        return super().answer(path, body)


def test_an_inline_flush_gives_up_at_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no sender thread (interpreter shutdown) ``flush`` sends on the caller's thread; a
    slow server must not hold it for one slow request per batch."""
    from datacat.config import resolve
    from datacat.transport import HttpTransport

    monkeypatch.setattr(_internal, "_shutting_down", True)  # no thread may start
    config = resolve(env={}, spool_dir="", batch_size=1, timeout=2.0)
    with SlowPeer("ok") as peer:
        worker = Worker(HttpTransport(peer.url, timeout=2.0), config)
        for i in range(30):
            worker.put(("event", "s", {"name": str(i)}))
        started = time.monotonic()
        assert worker.flush(timeout=0.5) is False
        assert time.monotonic() - started < 5  # 30 requests of 0.3 s each without the bound
        assert worker.thread is None and 0 < sum(map(len, worker._outbox)) < 30  # kept
        worker.close(time.monotonic() + 0.2)


def test_backoff_jitter_leaves_the_applications_random_sequence_alone() -> None:
    import random

    from datacat.config import resolve

    worker = Worker(ExplodingTransport(), resolve(env={}, spool_dir=""))
    random.seed(7)
    expected = [random.random() for _ in range(3)]
    random.seed(7)
    for _ in range(3):
        worker._failed(None)
    assert [random.random() for _ in range(3)] == expected
    worker.close(time.monotonic() + 0.2)


def test_an_idle_sender_retires_and_a_new_one_starts_on_the_next_put(
    make: Make, server_url: str
) -> None:
    first = make(server_url)
    worker = first._worker
    assert worker is not None
    worker.idle_retire = 0.2
    assert first.end(10)
    thread = worker.thread
    assert thread is not None
    assert wait_for(lambda: worker.thread is None, timeout=10)  # no session, nothing to send
    thread.join(5)
    assert not thread.is_alive()
    second = make(server_url)  # same options: the same worker, a new thread
    assert second._worker is worker
    second.log_event("after-retirement")
    assert second.flush(10)
    assert "after-retirement" in [e["name"] for e in details(server_url, second.id)["events"]]


STALE_STATE_SCRIPT = """
import os, sys, datacat
s = datacat.create_session(sys.argv[1], spool_dir=sys.argv[2], state={"a": 1}, flush_interval=0.05)
assert s.flush(10)
ready, go = os.pipe()
pid = os.fork()
if pid == 0:
    os.read(ready, 1)  # the parent has set a=2 on the server meanwhile
    s.update_state({"a": 1})  # what this child last saw: not a no-op on the server
    os._exit(0 if s.flush(10) else 3)
s.update_state({"a": 2})
assert s.flush(10)
os.write(go, b"x")
print(s.id, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_a_forked_childs_state_updates_are_not_filtered_by_the_parents_view(
    server_url: str, tmp_path: Path
) -> None:
    sid, code = run_script(STALE_STATE_SCRIPT, server_url, str(tmp_path)).split()
    assert code == "0"
    assert details(server_url, sid)["state"]["a"] == 1


def test_drops_of_an_attached_session_are_reported(make: Make, server_url: str) -> None:
    creator = make(server_url)
    assert creator.flush(10)
    attached = datacat.attach_session(
        creator.id, server_url, spool_dir=str(creator.config.spool_dir), queue_size=5,
        batch_size=1000, flush_interval=5.0,
    )  # fmt: skip
    worker = attached._worker
    assert worker is not None and worker is not creator._worker
    with worker._flushed:  # hold the sender off while the queue overflows
        for i in range(20):
            attached.log_event(f"e{i}")
    assert attached.dropped >= 14 and attached.undelivered >= attached.dropped
    assert attached.flush(10) and attached.undelivered == attached.dropped
    (dropped,) = [
        m for m in details(server_url, creator.id)["metrics"] if m["name"] == DROPPED_METRIC
    ]
    assert dropped["value"] == attached.dropped
    attached.end()
    worker.close(time.monotonic() + 1)


def test_a_flush_waiting_on_the_sender_when_a_failed_close_stops_it_gets_its_answer(
    make: Make,
) -> None:
    """The sender thread is in a request that stalls; another thread's flush waits on it; the
    exit's ``close`` gives up and stops the thread: that flush is answered (not delivered)
    instead of waiting forever for a thread that sends no more."""
    with Peer("stall") as peer:
        session = make(peer.url, timeout=0.5)
        session.log_event("stuck")
        worker = session._worker
        assert worker is not None
        wait_for(lambda: peer.bodies, 10)  # the thread's request is in flight
        answers: list[bool] = []
        flush = lambda: answers.append(worker.flush(None))  # noqa: E731
        waiting = threading.Thread(target=flush, daemon=True)  # before the fix: forever
        waiting.start()
        wait_for(lambda: worker._requested > worker._done, 10)  # it took a ticket
        assert not worker.close(time.monotonic() + 0.2)
        waiting.join(5)
        assert answers == [False]
