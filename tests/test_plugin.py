"""The plugin's entry point: options and their precedence, and doing nothing unless enabled."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
import requests

from pytest_datacat.plugin import Settings, resolve

INI = """
[pytest]
datacat_url = http://ini.invalid:1
datacat_product = p-ini
datacat_version = v-ini
datacat_api_key = k-ini
datacat_flush_timeout = 7
"""


@pytest.fixture(autouse=True)
def _no_datacat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner runs see only the options a test gives (not a DATACAT_URL of the outer run)."""
    for name in [n for n in os.environ if n.startswith("DATACAT_")]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("args", "environ", "expected"),
    [
        ((), {}, Settings("http://ini.invalid:1", "p-ini", "v-ini", "k-ini", 7.0)),
        (
            (),
            {
                "DATACAT_URL": "http://env:2",
                "DATACAT_PRODUCT": "p-env",
                "DATACAT_EXIT_TIMEOUT": "1",
            },
            Settings("http://env:2", "p-env", "v-ini", "k-ini", 1.0),
        ),
        (
            ("--datacat-url=http://cli:3", "--datacat-product=p-cli", "--datacat-api-key=k-cli"),
            {"DATACAT_URL": "http://env:2", "DATACAT_PRODUCT": "p-env", "DATACAT_VERSION": "v-env"},
            Settings("http://cli:3", "p-cli", "v-env", "k-cli", 7.0),
        ),
        (
            ("--no-datacat",),
            {},
            Settings("http://ini.invalid:1", "p-ini", "v-ini", "k-ini", 7.0, True),
        ),
        (
            (),
            {"DATACAT_DISABLED": "true"},
            Settings("http://ini.invalid:1", "p-ini", "v-ini", "k-ini", 7.0, True),
        ),
    ],
)
def test_precedence_is_ini_then_environment_then_command_line(
    pytester: pytest.Pytester, args: tuple[str, ...], environ: dict[str, str], expected: Settings
) -> None:
    pytester.makeini(INI)
    config = pytester.parseconfig(*args)
    assert resolve(config, environ) == expected
    assert resolve(config, environ).enabled is not expected.disabled


def test_without_a_url_nothing_is_imported_started_or_registered(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import sys
        import threading

        import pytest

        def test_inert(pytestconfig):
            assert pytestconfig.pluginmanager.has_plugin("datacat")
            assert not pytestconfig.pluginmanager.has_plugin("datacat-recorder")
            loaded = [m for m in sys.modules if m == "datacat" or m.startswith("datacat.")]
            assert loaded == [] and "pytest_datacat.recorder" not in sys.modules
            assert threading.active_count() == 1

        def test_fixtures_still_work(datacat_session, record_datacat):
            record_datacat("k", "v")
            datacat_session.log_event("ignored")

        @pytest.mark.datacat("label")
        def test_marker_is_known():
            pass
        """
    )
    # (pytest-rerunfailures, installed for the tests, starts a thread of its own)
    args = ("--strict-markers", "-p", "no:cacheprovider", "-p", "no:rerunfailures")
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=3)
    assert "datacat:" not in result.stdout.str()


def _sessions(server_url: str, product: str) -> list[dict[str, object]]:
    response = requests.get(
        f"{server_url}/api/data/sessions", params={"product": product}, timeout=5
    )
    response.raise_for_status()
    sessions: list[dict[str, object]] = response.json()
    return sessions


def test_disabled_runs_record_nothing(
    pytester: pytest.Pytester, server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile("def test_one(): pass")
    product = f"disabled-{uuid.uuid4()}"
    monkeypatch.setenv("DATACAT_URL", server_url)
    monkeypatch.setenv("DATACAT_PRODUCT", product)
    blocked = pytester.runpytest_subprocess("-p", "no:datacat")
    switched_off = pytester.runpytest_subprocess("--no-datacat")
    for result in (blocked, switched_off):
        result.assert_outcomes(passed=1)
        assert "datacat:" not in result.stdout.str()
    assert _sessions(server_url, product) == []


def test_precedence_end_to_end(
    pytester: pytest.Pytester, server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ini names a dead server and product; the environment's URL wins, the command line's
    product wins over both, the ini's version stays."""
    pytester.makeini(INI.replace("http://ini.invalid:1", "http://127.0.0.1:9"))
    product = f"cli-{uuid.uuid4()}"
    pytester.makepyfile("def test_one(): pass")
    monkeypatch.setenv("DATACAT_URL", server_url)
    monkeypatch.setenv("DATACAT_PRODUCT", "p-env")
    result = pytester.runpytest_subprocess(f"--datacat-product={product}")
    result.assert_outcomes(passed=1)
    [session] = _sessions(server_url, product)
    assert session["state"]["version"] == "v-ini"  # type: ignore[index]
    assert f"{server_url}/sessions/{session['id']}" in result.stdout.str()


def test_our_modules_load_plainly_and_the_runs_tests_are_still_rewritten(
    pytester: pytest.Pytester, server_url: str
) -> None:
    """pytest marks every module of a plugin's distribution for assertion rewriting, and its
    loader reads a cached module about three times slower (a wheel install's run spent ~94 M
    more instructions on it); the recorder imports DataCat's modules with the ordinary loader,
    and only while it does: the run's own test modules are rewritten as ever."""
    pytester.makepyfile(
        """
        import sys

        def test_loaders():
            ours = [m for m in sys.modules if m.partition(".")[0] in ("datacat", "pytest_datacat")]
            # (pytest itself imported the entry point, before the recorder could)
            ours = [m for m in ours if m not in ("pytest_datacat", "pytest_datacat.plugin")]
            assert "pytest_datacat.recorder" in ours and "datacat.session" in ours
            assert {type(sys.modules[m].__loader__).__name__ for m in ours} == {"SourceFileLoader"}
            assert [type(f).__name__ for f in sys.meta_path].count("_PlainFinder") == 0

        def test_rewritten():
            value = 41
            assert value + 1 == 43

        def test_a_later_run_marking_them_for_rewriting_is_not_warned(pytestconfig):
            # as pytest does for a wheel install (every module of a plugin's distribution) at
            # the start of a second run in the same process (pytester's in-process runs)
            pytestconfig.pluginmanager.rewrite_hook.mark_rewrite("datacat", "pytest_datacat")
        """
    )
    result = pytester.runpytest_subprocess(f"--datacat-url={server_url}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*assert (41 + 1) == 43*"])
    result.stdout.no_fnmatch_line("*already imported*")


def test_a_recorded_run_imports_neither_requests_nor_wrapt() -> None:
    """What keeps the plugin's start cheap: ``datacat`` imports names on first use, batches go
    over a socket of its own (not ``requests``); the public names still resolve as before."""
    code = """
import sys
import pytest_datacat.recorder
import datacat.session  # the submodule must not replace the function
import datacat
print(sorted(m for m in ("requests", "wrapt") if m in sys.modules))
print(datacat.session.__module__, datacat.track.__module__, "Timer" in dir(datacat))
print(datacat.autoinstrument.__name__, datacat.attach_session.__name__)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[:3] == [
        "[]",
        "datacat.track datacat.track True",
        "datacat.autoinstrument attach_session",
    ]


EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pytest_example"


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["single", "xdist"])
def test_the_pytest_example_records_one_session(server_url: str, xdist: tuple[str, ...]) -> None:
    """``examples/pytest_example`` as its README runs it: what it says the session holds."""
    product = f"example-{uuid.uuid4()}"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(EXAMPLE), *xdist]
    command += [f"--datacat-url={server_url}", f"--datacat-product={product}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATACAT_")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout[-2000:]
    [listed] = _sessions(server_url, product)
    assert f"datacat: session {listed['id']} -> {server_url}/sessions/{listed['id']}" in done.stdout
    session = requests.get(f"{server_url}/api/sessions/{listed['id']}", timeout=10).json()
    progress = session["state"]["progress"]
    assert (progress["passed"], progress["skipped"], progress["xfailed"]) == (6, 1, 1)
    assert progress["subtests_passed"] == 2 and session["ended"]
    events = requests.get(f"{server_url}/api/sessions/{listed['id']}/events", timeout=10).json()
    names = Counter(e["name"] for e in events)
    assert names["subtest_passed"] == 2 and names["checkout_done"] == 1
    [marked] = [e for e in events if e["data"].get("nodeid", "").endswith("rejected")]
    assert marked["labels"] == ["pricing"]
    assert marked["data"]["recorded"] == {"owner": "shop-team", "item": "banana"}
