"""The dashboard in a real Chromium against a real server process.

Every page must load with no console error and no request leaving 127.0.0.1; data that users
control (product, hostname, event and metric names, state) must show as text and run nothing;
filters, sorting and paging work; the session page shows state, events and metrics and refreshes
itself; with an API key configured the dashboard refuses without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from serverproc import Api

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
TIMEOUT_MS = 15_000
XSS = '<img src=x onerror="window.__xss=1;alert(1)">'
SCRIPT = "<script>window.__xss=2;alert(2)</script>"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing in CI: browser tests must not be skipped")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


class Watch:
    """What a page did that it must not: console errors, page errors, dialogs, foreign requests."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.expected: list[str] = []  # texts of console errors a test causes on purpose

    def attach(self, page: Any) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("dialog", self._dialog)
        page.on("request", self._request)
        page.on("requestfailed", self._failed)

    def _console(self, message: Any) -> None:
        if message.type == "error" and not any(e in message.text for e in self.expected):
            self.problems.append(f"console error: {message.text}")

    def _dialog(self, dialog: Any) -> None:
        self.problems.append(f"dialog opened: {dialog.message}")
        dialog.dismiss()

    def _failed(self, request: Any) -> None:
        self.problems.append(f"request failed: {request.url} ({request.failure})")

    def _request(self, request: Any) -> None:
        host = urlsplit(request.url).hostname
        if request.url.startswith(("http:", "https:", "ws:", "wss:")) and host != "127.0.0.1":
            self.problems.append(f"request left 127.0.0.1: {request.url}")


@pytest.fixture
def watch() -> Watch:
    return Watch()


@pytest.fixture
def page(browser: Any, watch: Watch, server_factory: Any) -> Iterator[Any]:
    """A fresh tab. It depends on ``server_factory`` so that it closes (and its refresh timers
    stop) before the servers a test started stop: their requests would fail otherwise."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    watch.attach(tab)
    yield tab
    context.close()
    assert watch.problems == []


def open_page(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-loaded=true]")


class Seeder:
    """Writes sessions through the REST API, as a client would."""

    def __init__(self, url: str, api_key: str | None = None) -> None:
        self.url = url
        self.headers = {"X-API-Key": api_key} if api_key else {}

    def post(self, path: str, body: Any = None) -> Any:
        response = requests.post(self.url + path, json=body, headers=self.headers, timeout=10)
        assert response.status_code < 300, response.text
        return response.json()

    def session(self, product: str, version: str = "1.0", **fields: Any) -> str:
        sid: str = self.post("/api/sessions", {"product": product, "version": version, **fields})[
            "id"
        ]
        return sid

    def event(self, sid: str, **event: Any) -> None:
        self.post(f"/api/sessions/{sid}/events", event)

    def metric(self, sid: str, **metric: Any) -> None:
        self.post(f"/api/sessions/{sid}/metrics", metric)

    def state(self, sid: str, state: dict[str, Any]) -> None:
        self.post(f"/api/sessions/{sid}/state", state)


@pytest.fixture
def seed(server_url: str) -> Seeder:
    return Seeder(server_url)


@pytest.fixture
def product() -> str:
    """A product name no other test uses: the shared server holds everyone's sessions."""
    return f"app-{uuid.uuid4().hex[:8]}"


def rich_session(seed: Seeder, product: str) -> str:
    sid = seed.session(product, "2.1", hostname="build-7", machine_id="m-1", state={"mode": "fast"})
    seed.state(sid, {"player": {"level": 3, "name": "ana"}})
    seed.event(sid, name="startup", message="ready to go", data={"config": "prod"})
    seed.event(sid, name="slow_disk", level="warning", message="write took 2 s")
    seed.event(
        sid,
        name="exception",
        exception_type="KeyError",
        exception_msg="'missing-key'",
        source_file="app/main.py",
        source_line=12,
        source_function="run",
        stacktrace=['File "app/main.py", line 12, in run', "    table['missing-key']"],
    )
    for value in (100.0, 150.0, 125.0):
        seed.metric(sid, name="memory_mb", value=value, unit="MB")
    seed.metric(sid, name="items", type="counter", value=5)
    seed.metric(sid, name="items", type="counter", value=7)
    seed.metric(
        sid,
        name="latency",
        type="histogram",
        value=1.2,
        count=6,
        buckets=[0.1, 0.5, 1],
        bucket_counts=[1, 2, 3, 0],
    )
    return sid


def test_session_page_shows_state_events_and_metrics(
    page: Any, server_url: str, seed: Seeder, product: str
) -> None:
    sid = rich_session(seed, product)
    open_page(page, f"{server_url}/sessions/{sid}")
    assert page.text_content("#title") == f"{product} 2.1"
    assert page.text_content("#badges .badge") == "active"
    assert "build-7" in page.text_content("#facts")
    assert page.get_attribute("[data-fact=Machine] a", "href") == "/sessions?machine_id=m-1"
    state = page.text_content("#state")
    assert "level" in state and '"ana"' in state and '"fast"' in state
    assert "player.level" in page.text_content("#changes")
    assert page.locator("#events > li").count() == 3
    exception = page.text_content("#events li[data-event=exception]")
    assert (
        "KeyError" in exception and "'missing-key'" in exception and "app/main.py:12" in exception
    )
    page.click("#events li[data-event=exception] summary")
    assert "table['missing-key']" in page.text_content("#events li[data-event=exception] pre")
    assert page.text_content("#metrics [data-metric=items] [data-stat=total]") == "12"
    assert page.locator("#metrics [data-metric=memory_mb] svg path.line").count() == 1
    assert page.locator("#metrics [data-metric=latency] svg rect.bar").count() == 4
    assert page.locator("#timeline circle.mark").count() == 3 + 2  # events + state updates
    page.locator("#timeline circle.k-exception").click()
    assert "KeyError" in page.text_content("#timeline-detail")
    width = timeline_width(page)
    page.click("#zoom-in")
    assert timeline_width(page) == pytest.approx(width / 2)
    page.click("#zoom-reset")
    assert page.locator("#timeline circle.mark").count() == 5


def timeline_width(page: Any) -> float:
    """Milliseconds the timeline shows."""
    box = page.locator("#timeline")
    return float(box.get_attribute("data-end")) - float(box.get_attribute("data-start"))


def test_event_search_and_filters(page: Any, server_url: str, seed: Seeder, product: str) -> None:
    sid = rich_session(seed, product)
    open_page(page, f"{server_url}/sessions/{sid}")
    page.fill("#event-search", "write took")
    assert page.locator("#events > li").count() == 1
    page.fill("#event-search", "")
    page.select_option("#event-level", "error")
    assert page.locator("#events li[data-event=exception]").count() == 1
    assert page.locator("#events > li").count() == 1
    page.select_option("#event-level", "")
    page.select_option("#event-name", "startup")
    assert page.text_content("#events").count("startup") == 1


def test_user_data_is_rendered_as_text_and_runs_nothing(
    page: Any, server_url: str, seed: Seeder
) -> None:
    sid = seed.session(XSS, SCRIPT, hostname=XSS, machine_id=SCRIPT, state={XSS: SCRIPT})
    seed.state(sid, {"nested": {SCRIPT: XSS}})
    seed.event(sid, name=XSS, message=SCRIPT, category=XSS, labels=[SCRIPT], data={XSS: SCRIPT})
    seed.event(sid, name=SCRIPT, exception_type=XSS, exception_msg=SCRIPT, stacktrace=[XSS])
    seed.metric(sid, name=XSS, value=1, unit=SCRIPT, tags={XSS: SCRIPT})
    seed.metric(sid, name=SCRIPT, type="histogram", value=0.1)
    seed.metric(sid, name=SCRIPT + "c", type="counter", value=1)
    open_page(page, f"{server_url}/sessions/{sid}")
    page.click("#events li:first-child summary")
    body = page.text_content("body")
    for text in (XSS, SCRIPT):
        assert body.count(text) >= 4
    assert page.text_content("#title") == f"{XSS} {SCRIPT}"
    query = requests.Request("GET", server_url + "/sessions", params={"product": XSS}).prepare()
    open_page(page, str(query.url))
    assert page.text_content("#session-table tbody td:nth-child(2)") == XSS
    open_page(page, server_url + "/")
    assert XSS in page.text_content("#grid")
    assert page.evaluate("window.__xss") is None
    assert page.locator("img[src=x]").count() == 0


def test_overview_totals_grid_and_metric_stats(
    page: Any, server_url: str, seed: Seeder, product: str
) -> None:
    for version, value in (("1.0", 10.0), ("1.0", 20.0), ("2.0", 60.0)):
        sid = seed.session(product, version)
        seed.metric(sid, name="fps", value=value)
        seed.event(sid, name="tick")
    seed.post(f"/api/sessions/{sid}/end")
    open_page(page, f"{server_url}/?product={product}")
    totals = {
        key: page.text_content(f"[data-total={key}] .figure") for key in ("sessions", "events")
    }
    assert totals == {"sessions": "3", "events": "3"}
    row = page.locator(f"#grid tbody tr[data-product={product}][data-version='2.0']")
    assert row.locator("[data-status=ended]").text_content() == "1"
    stats = page.locator("#metric-stats [data-metric=fps]")
    figures = {
        n: stats.locator(f"[data-stat={n}]").text_content() for n in ("avg", "median", "max")
    }
    assert figures == {"avg": "30", "median": "20", "max": "60"}
    row.locator("[data-status=ended] a").click()
    page.wait_for_selector("body[data-loaded=true]")
    assert page.locator("#session-table tbody tr").count() == 1


def test_list_filters_sorting_and_paging(
    page: Any, server_url: str, seed: Seeder, product: str
) -> None:
    ids = [seed.session(product, f"1.{i}") for i in range(5)]
    seed.state(ids[1], {"level": 3})
    seed.state(ids[1], {"level": 4})
    seed.state(ids[2], {"level": 3})
    seed.event(ids[3], name="checkout")
    seed.post(f"/api/sessions/{ids[4]}/end")
    open_page(page, f"{server_url}/sessions?product={product}&per_page=2")
    assert page.locator("#session-table tbody tr").count() == 2
    assert page.text_content("#pager .page-of") == "Page 1 of 3"
    page.click("#pager a[rel=next]")
    page.wait_for_selector("body[data-loaded=true]")
    assert page.text_content("#pager .page-of") == "Page 2 of 3"
    page.click("#session-table th[data-sort=version] a")  # newest version first
    page.wait_for_selector("body[data-loaded=true]")
    assert page.text_content("#session-table tbody tr:first-child td:nth-child(3)") == "1.4"
    assert visible_ids(page, f"{server_url}/sessions?product={product}&status=ended") == {ids[4]}
    assert visible_ids(page, f"{server_url}/sessions?product={product}&event=checkout") == {ids[3]}
    ever = f"{server_url}/sessions?product={product}&state_key=level&state_value=3"
    assert visible_ids(page, ever) == {ids[1], ids[2]}
    assert visible_ids(page, ever + "&state_mode=current") == {ids[2]}


def visible_ids(page: Any, url: str) -> set[str]:
    open_page(page, url)
    rows = page.locator("#session-table tbody tr[data-session-id]")
    return {rows.nth(i).get_attribute("data-session-id") for i in range(rows.count())}


def test_filter_form_applies_through_the_url(
    page: Any, server_url: str, seed: Seeder, product: str
) -> None:
    sid = seed.session(product, "9.9")
    seed.session(product, "1.0")
    open_page(page, f"{server_url}/sessions")
    page.fill("#filters [name=product]", product)
    page.fill("#filters [name=version]", "9.9")
    page.select_option("#filters [name=range]", "1h")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**/sessions?*version=9.9*")
    page.wait_for_selector("body[data-loaded=true]")
    assert page.get_attribute("#session-table tbody tr", "data-session-id") == sid


def test_session_page_refreshes_while_active(page: Any, server_factory: Callable[..., Any]) -> None:
    server = server_factory(env={"DATACAT_DASHBOARD_REFRESH": "0.3"})
    seed = Seeder(server.url)
    sid = seed.session("live-app")
    seed.event(sid, name="was_there")
    open_page(page, f"{server.url}/sessions/{sid}")
    assert page.locator("#live.on").count() == 1
    seed.event(sid, name="arrived_later")
    seed.state(sid, {"phase": "two"})
    page.wait_for_selector("#events li[data-event=arrived_later]")
    assert page.locator("#events li[data-event=was_there]").count() == 1
    assert "(2 of 2)" in page.text_content("#events-count")
    page.wait_for_selector("#state :text('two')")
    seed.post(f"/api/sessions/{sid}/end")
    page.wait_for_selector("#live:not(.on)")
    assert page.text_content("#badges .badge") == "ended"
    open_page(page, server.url + "/")
    assert page.text_content("[data-total=sessions] .figure") == "1"
    seed.session("live-app")  # lists reload every 6 refresh periods
    page.wait_for_selector("[data-total=sessions] .figure:text-is('2')")


def test_unknown_session_answers_404(page: Any, watch: Watch, server_url: str) -> None:
    watch.expected.append("status of 404")
    response = page.goto(f"{server_url}/sessions/{uuid.uuid4()}")
    assert response.status == 404
    assert "Session not found" in page.text_content("h1")
    answer = requests.get(f"{server_url}/sessions/{XSS}", timeout=10)
    assert answer.status_code == 404 and XSS not in answer.text and "&lt;img" in answer.text


def test_api_key_guards_every_page_and_view(
    server_factory: Callable[..., Any], page: Any, watch: Watch
) -> None:
    watch.expected.append("status of 401")  # the wrong key
    server = server_factory(api_key="s3cret-key")
    sid = Seeder(server.url, "s3cret-key").session("guarded-app")
    for path in ("/", "/sessions", f"/sessions/{sid}"):
        response = requests.get(server.url + path, allow_redirects=False, timeout=10)
        assert response.status_code == 302
        assert urlsplit(response.headers["Location"]).path == "/dashboard/login"
        assert "guarded-app" not in response.text
    for view in ("overview", "sessions", "metrics", f"sessions/{sid}"):
        response = requests.get(f"{server.url}/dashboard/api/{view}", timeout=10)
        assert response.status_code == 401
    headers = {"X-API-Key": "s3cret-key"}
    assert requests.get(server.url + "/dashboard/api/sessions", headers=headers, timeout=10).ok
    page.goto(f"{server.url}/sessions/{sid}")
    page.fill("[name=api_key]", "wrong")
    page.click("form button[type=submit]")
    assert "not right" in page.text_content("[role=alert]")
    page.fill("[name=api_key]", "s3cret-key")
    page.click("form button[type=submit]")
    page.wait_for_selector("body[data-loaded=true]")
    assert page.text_content("#title") == "guarded-app 1.0"
    cookies = page.context.cookies()
    assert cookies and all("s3cret-key" not in c["value"] and c["httpOnly"] for c in cookies)
    for target in ("//evil.example/x", "/\\evil.example", "https://evil.example/"):
        form = {"api_key": "s3cret-key", "next": target}
        url = server.url + "/dashboard/login"
        response = requests.post(url, data=form, allow_redirects=False, timeout=10)
        assert (
            response.status_code == 302 and response.headers["Location"] == "/"
        )  # no open redirect


def test_demo_example_fills_a_server_whose_pages_render_cleanly(
    server_factory: Callable[..., Any], page: Any
) -> None:
    server = server_factory()
    example = Path(__file__).parent.parent / "examples" / "dashboard_demo.py"
    command = [sys.executable, str(example), "--url", server.url, "--sessions", "8"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    assert " 0 failed" in done.stdout and f"dashboard: {server.url}/" in done.stdout
    open_page(page, server.url + "/")
    assert page.text_content("[data-total=sessions] .figure") == "8"
    # (not "suspended": liveness is the server's clock, so the demo's replayed old heartbeats
    # count as heard just now until the heartbeat timeout passes)
    for status in ("active", "ended", "crashed", "hung"):
        assert page.locator(f"#grid [data-status={status}] a").count() >= 1
    page.click("#session-table tbody tr:first-child a")
    page.wait_for_selector("body[data-loaded=true]")
    assert page.locator("#metrics figure").count() == 6  # http_requests: one per status


def test_pages_forbid_foreign_scripts(server_url: str) -> None:
    response = requests.get(server_url + "/", timeout=10)
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'self'" in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    url = server_url + "/dashboard/login?next=/sessions"
    login = requests.get(url, allow_redirects=False, timeout=10)
    assert login.headers["Location"] == "/sessions"  # no key configured: nothing to log in to


def test_sums_beyond_float_range_answer_strict_json(api_url: str) -> None:
    """Two valid counter deltas of 1e308 sum to inf: the API and the dashboard's views answered
    ``Infinity`` (not JSON) or 500; the total is now null. ``Api`` parses answers strictly."""
    api = Api(api_url)
    product = f"big-{uuid.uuid4().hex[:8]}"
    sid = api.create(product=product)["id"]
    for _ in range(2):
        assert api.post(sid, "metrics", {"name": "c", "value": 1e308, "type": "counter"}).ok
        assert api.post(sid, "metrics", {"name": "g", "value": 1e308}).ok
    assert api.get(sid)["counters"] == {"c": None}
    detail = api.request("GET", f"/dashboard/api/sessions/{sid}")
    assert detail.status_code == 200, detail.text
    summary = {m["name"]: m for m in detail.json()["metrics"]}
    assert summary["c"]["total"] is None and summary["g"]["max"] == 1e308
    for view in ("metrics", "sessions", "overview"):
        answer = api.request("GET", f"/dashboard/api/{view}", params={"product": product})
        assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("after", ["99999999999999999999", "-1", "x", "1.5"])
def test_events_after_must_be_a_row_id(server_url: str, after: str) -> None:
    api = Api(server_url)
    sid = api.create()["id"]
    answer = api.request("GET", f"/dashboard/api/sessions/{sid}", params={"events_after": after})
    assert answer.status_code == 400, answer.text
    assert api.request("GET", f"/dashboard/api/sessions/{sid}?events_after=0").ok
