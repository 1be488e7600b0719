"""Overhead of the pytest plugin: a generated suite of 2,000 trivial tests, with and without it.

Starts a throwaway ``datacat server`` (SQLite in a temporary folder, free loopback port), then
runs the same suite alternately without the plugin (``-p no:datacat``) and with it
(``--datacat-url``), several rounds, and prints the best wall time and CPU time (user + system
of the pytest process, which the machine's load disturbs less) of each and their ratios, and the
median of the per-round ratios (each round runs both, in alternating order: robust to the slow
swings of a shared machine's speed) with its 95 % confidence interval (how far one run's median
may be from a longer run's: several points either way on a shared 2-core machine).
It also prints the machine's context switches per run on each side: the wake-ups of the
plugin's threads, its sender's child and the server, which on a 2-core machine slow the run more
than their CPU time does, and which depend little on the load.
Target: the plugin costs at most 5 % (ratio <= 1.05). It also checks that every test's event
arrived, so the figure is for a run that really recorded everything.

``--instructions`` also counts the instructions of one run's pytest process on each side, with
valgrind's callgrind (the sender's child and the server are not counted): a figure the
machine's load does not move, so a change of the plugin's own cost shows in it (by about
±0.5 %: what else is loaded moves CPython's type cache hits). Under valgrind Python runs ~50
times slower, so the plugin's rounds and the sender's intervals are stretched as much
(``SCALE_PLUGIN``): a round takes the same share of the tests as without it.

    .venv/bin/python benchmarks/pytest_overhead.py [--tests 2000] [--rounds 3] [--instructions]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import requests

TESTS_PER_FILE = 100
#: How much slower Python runs under callgrind (``--instructions``), by which the plugin's
#: intervals are stretched there.
VALGRIND_SLOWDOWN = 50
#: The plugin (``-p datacat_bench_scale``, with plugin only) that stretches those intervals.
SCALE_PLUGIN = """
import pytest

FACTOR = {factor}


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    from pytest_datacat.plugin import plain_imports

    with plain_imports():  # as the recorder imports them itself
        from datacat import offload
        from pytest_datacat import recorder
    for module, names in (
        (recorder, ("DRAIN_INTERVAL", "PROGRESS_INTERVAL", "WATCH_INTERVAL")),
        (offload, ("HAND_OVER_INTERVAL", "BURST_WINDOW")),
    ):
        for name in names:
            setattr(module, name, getattr(module, name) * FACTOR)
    recorder.SENDER["flush_interval"] *= FACTOR
"""
#: Off on both sides: the cache (no state between rounds), and pytest-rerunfailures (installed
#: for the tests), whose cost per test is not the plugin's and would only dilute the ratio.
PLUGINS_OFF = ("-p", "no:cacheprovider", "-p", "no:rerunfailures")


def start_server(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``datacat server`` on a free port; returns once ``/health`` answers."""
    with socket.socket() as probe:  # a port nobody listens on right now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "datacat.cli",
        "server",
        "--port",
        str(port),
        "--db",
        f"sqlite:///{directory}/bench.db",
    ]
    log = open(directory / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(url + "/health", timeout=1).ok:
                return proc, url
        except requests.RequestException:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"server did not start: {(directory / 'server.log').read_text()}")


def write_suite(directory: Path, count: int) -> Path:
    """``count`` trivial passing tests, ``TESTS_PER_FILE`` per module."""
    suite = directory / "suite"
    suite.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\n")
    for start in range(0, count, TESTS_PER_FILE):
        body = "".join(
            f"def test_{n}():\n    assert {n} == {n}\n\n"
            for n in range(start, min(start + TESTS_PER_FILE, count))
        )
        (suite / f"test_gen_{start // TESTS_PER_FILE:03d}.py").write_text(body)
    return suite


def suite_environ(directory: Path) -> dict[str, str]:
    """The runs' environment: bytecode cached (in a private folder), like an installed package's.
    Without it (``PYTHONDONTWRITEBYTECODE=1`` with stale ``.pyc`` files, as in a checkout being
    edited) every run compiles DataCat's modules again, ~50 ms a user does not pay."""
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**environ, "PYTHONPYCACHEPREFIX": str(directory / "pycache")}


class Run(NamedTuple):
    wall: float
    cpu: float
    switches: int  # context switches of the whole machine meanwhile (-1: unknown)


def run_suite(suite: Path, *args: str, extra: dict[str, str] | None = None) -> Run:
    """Wall time and CPU time (user + system) of one ``pytest -q`` run of the suite, in a fresh
    interpreter like a user's, and the machine's context switches meanwhile. CPU time is what the
    run itself spent, whatever the machine's load; the plugin's sender thread counts, the server's
    process does not. Context switches count the child's and the server's wake-ups too, which
    on a 2-core machine slow the run more than their CPU time does."""
    command = [sys.executable, "-m", "pytest", "-q", *PLUGINS_OFF, *args]
    environ = {**suite_environ(suite.parent), **(extra or {})}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    switched = context_switches()
    started = time.perf_counter()
    done = subprocess.run(command, cwd=suite, capture_output=True, text=True, env=environ)
    elapsed = time.perf_counter() - started
    switches = context_switches() - switched if switched >= 0 else -1
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"suite failed ({done.returncode}):\n{done.stdout[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(elapsed, cpu, switches)


def context_switches() -> int:
    """The machine's context switches since boot (``/proc/stat``), or -1 off Linux."""
    try:
        with open("/proc/stat") as stat:
            for line in stat:
                if line.startswith("ctxt "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return -1


def events_of(url: str, product: str) -> int:
    """How many events the server holds for the product's (only) session."""
    sessions = requests.get(f"{url}/api/data/sessions", params={"product": product}, timeout=10)
    [session] = sessions.json()
    total, cursor = 0, None
    while True:
        params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        page = requests.get(f"{url}/api/sessions/{session['id']}/events", params=params, timeout=10)
        total += len(page.json())
        cursor = page.headers.get("X-Next-Cursor")
        if not cursor:
            return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--instructions", action="store_true", help="also count instructions (valgrind)"
    )
    opts = parser.parse_args()
    if opts.instructions and shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="datacat-bench-") as tmp:
        directory = Path(tmp)
        os.environ["DATACAT_SPOOL_DIR"] = str(directory / "spool")
        proc, url = start_server(directory)
        try:
            suite = write_suite(directory, opts.tests)
            measure(suite, url, opts.tests, opts.rounds)
            if opts.instructions:
                count_instructions(suite, url, opts.tests)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def cpu_times() -> list[int]:
    """The machine's CPU time counters (``/proc/stat``: user ... steal), or ``[]`` off Linux."""
    try:
        with open("/proc/stat") as stat:
            return [int(field) for field in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return []


def steal_share(before: list[int], after: list[int]) -> str:
    """The share of CPU time the hypervisor gave to other machines meanwhile (steal): with a
    large one, the sender's child and the server take their CPU from the tests."""
    if not before or not after:
        return "unknown"
    spent = [b - a for a, b in zip(before, after, strict=True)]
    return f"{100 * spent[7] / max(1, sum(spent)):.0f} %"


def measure(suite: Path, url: str, tests: int, rounds: int) -> None:
    without: list[Run] = []
    with_plugin: list[Run] = []
    product = ""
    run_suite(suite, "-p", "no:datacat")  # warm-up, not counted: fills the bytecode cache
    run_suite(suite, f"--datacat-url={url}", "--datacat-product=bench-warm-up")
    counters = cpu_times()
    for index in range(rounds):  # alternate, so a change of load hits both sides alike
        product = f"bench-{uuid.uuid4()}"
        plain = ("-p", "no:datacat")
        recorded = (f"--datacat-url={url}", f"--datacat-product={product}")
        first, second = (plain, recorded) if index % 2 == 0 else (recorded, plain)
        results = {first: run_suite(suite, *first), second: run_suite(suite, *second)}
        without.append(results[plain])
        with_plugin.append(results[recorded])
        time.sleep(0.5)  # the server has stored the last run before the next one starts
    steal = steal_share(counters, cpu_times())
    arrived = events_of(url, product)
    print(f"pytest, {tests} trivial tests, {rounds} paired rounds; events delivered: {arrived}")
    print(f"CPU time stolen by the hypervisor meanwhile (/proc/stat steal): {steal}")
    print("                                   wall time (best, median)   CPU time (best)")
    for label, runs in (("without plugin (-p no:datacat)", without), ("with plugin", with_plugin)):
        walls = [r[0] for r in runs]
        print(
            f"  {label:31} {min(walls):8.3f} s {statistics.median(walls):8.3f} s"
            f"   {min(r[1] for r in runs):8.3f} s"
        )
    best = min(r[0] for r in with_plugin) / min(r[0] for r in without)
    ratios = [w[0] / o[0] for w, o in zip(with_plugin, without, strict=True)]
    paired = statistics.median(ratios)
    cpu = min(r[1] for r in with_plugin) / min(r[1] for r in without)
    print(f"  wall ratio, best of each:            {best:.3f}  ({100 * (best - 1):+.1f} %)")
    print(f"  wall ratio, median of paired rounds: {paired:.3f}  ({100 * (paired - 1):+.1f} %)")
    interval = median_interval(ratios)
    if interval is not None:
        low, high = (100 * (x - 1) for x in interval)
        print(f"    95 % confidence interval of that median: {low:+.1f} % to {high:+.1f} %")
    print(f"  CPU ratio, best of each:             {cpu:.3f}  ({100 * (cpu - 1):+.1f} %)")
    if all(r.switches >= 0 for r in without + with_plugin):
        plain_switches = statistics.median(r.switches for r in without)
        recorded_switches = statistics.median(r.switches for r in with_plugin)
        print(
            f"  context switches of the machine per run (median): {plain_switches:.0f} without,"
            f" {recorded_switches:.0f} with the plugin"
        )
    print("  target: wall overhead <= 5 %. The CPU column counts what pytest reaped too: the")
    print("  sender's child process when it ended before pytest did.")


def count_instructions(suite: Path, url: str, tests: int) -> None:
    """Instructions of one run's pytest process on each side (callgrind), and their ratio."""
    plugins = suite.parent / "plugins"
    plugins.mkdir(exist_ok=True)
    (plugins / "datacat_bench_scale.py").write_text(SCALE_PLUGIN.format(factor=VALGRIND_SLOWDOWN))
    # the same path on both sides; the heartbeats and the end's deadline stretched as well
    path = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")]))
    }
    scaled = {
        **path,
        "DATACAT_HEARTBEAT_INTERVAL": str(10.0 * VALGRIND_SLOWDOWN),
        "DATACAT_EXIT_TIMEOUT": str(2.0 * VALGRIND_SLOWDOWN),
    }
    recording = ("-p", "datacat_bench_scale", f"--datacat-url={url}")
    run_suite(suite, *recording, "--datacat-product=bench-warm-up", extra=scaled)  # compiles it
    product = f"bench-{uuid.uuid4()}"
    plain = callgrind(suite, path, "-p", "no:datacat")
    recorded = callgrind(suite, scaled, *recording, f"--datacat-product={product}")
    ratio = recorded / plain
    arrived = events_of(url, product)
    if arrived != tests:
        raise SystemExit(f"the run under callgrind delivered {arrived} of {tests} events")
    print(f"instructions of the pytest process (callgrind; {arrived} events delivered):")
    print(f"  without plugin {plain / 1e6:12,.1f} M")
    print(
        f"  with plugin    {recorded / 1e6:12,.1f} M   ({(recorded - plain) / 1e6:+,.1f} M,"
        f" {100 * (ratio - 1):+.2f} %)"
    )


def callgrind(suite: Path, extra: dict[str, str], *args: str) -> int:
    """The instructions callgrind counts in one ``pytest -q`` run (its own process only)."""
    out = suite.parent / "callgrind.out"
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        "pytest",
        "-q",
        *PLUGINS_OFF,
        *args,
    ]
    environ = {**suite_environ(suite.parent), **extra}
    done = subprocess.run(command, cwd=suite, capture_output=True, text=True, env=environ)
    found = re.search(r"^summary: (\d+)$", out.read_text(), re.MULTILINE) if out.exists() else None
    if done.returncode != 0 or found is None:
        raise SystemExit(f"callgrind run failed ({done.returncode}):\n{done.stderr[-2000:]}")
    out.unlink()
    return int(found.group(1))


def median_interval(values: list[float]) -> tuple[float, float] | None:
    """A distribution-free 95 % confidence interval of the median: the order statistics of
    ranks ``n/2 -+ 1.96 * sqrt(n)/2``, rounded outwards (normal approximation of the binomial;
    ``None`` below 6 values). The rounds' ratios spread by several percent on a shared machine:
    this says how far the median of one run may be from the one a longer run would find."""
    n = len(values)
    if n < 6:
        return None
    ordered = sorted(values)
    rank = max(1, math.floor(n / 2 - 1.96 * math.sqrt(n) / 2))  # from 1: x(rank), x(n-rank+1)
    return ordered[rank - 1], ordered[n - rank]


if __name__ == "__main__":
    main()
