"""The web admin UI in a real Chromium, against the appliance running as a real process.

Every test's browser context intercepts every request and fails if one leaves the appliance's own
origin (the box may be offline; the UI must not load fonts, scripts or images from anywhere else).
Screenshots of each panel go to the module's output folder; the overview's also to /tmp.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from litestar import get
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect, sync_playwright
from websockets.sync.client import connect

from appliance.app import create_app
from appliance.payments.stripe_provider import sign_webhook
from appliance.plugin import AdminPanel, hookimpl
from tests.conftest import ROOT_KEY, make_settings
from tests.peers import CHROMIUM_ARGS, START_TIMEOUT, StripePeer, find_tool, free_port, poll_until
from tests.process import ApplianceProcess, run_appliance

pytestmark = pytest.mark.peer("chromium")

ROOT_HEADERS = {"Authorization": f"Bearer {ROOT_KEY}"}
STRIPE_WEBHOOK_SECRET = "whsec_admin_ui_test"
CAPABILITY_PANELS = ["storage", "search", "jobs", "events", "realtime", "email", "payments", "users"]
OVERVIEW_SHOT = Path("/tmp/appliance-admin-overview.png")
# Generous waits: the suite shares 2 cores with everything else; a wait returns as soon as it holds.
WAIT_MS = 15_000


@pytest.fixture(scope="module", autouse=True)
def patient_expect() -> Iterator[None]:
    expect.set_options(timeout=WAIT_MS)
    yield
    expect.set_options(timeout=5_000)  # Playwright's default, for the modules that follow


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium for this module only (shadows the session fixture of tests/peers.py).

    The sync Playwright API keeps an event loop marked as running in the main thread for as long
    as it lives; a session-wide browser would break every async test collected after this module.
    """
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=find_tool("chromium"),
            headless=True,
            args=CHROMIUM_ARGS,
            timeout=START_TIMEOUT * 1000,
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("admin-ui") / "data"


@pytest.fixture(scope="module")
def appliance(data_dir: Path, stripe_peer: StripePeer) -> Iterator[ApplianceProcess]:
    """One appliance for the module: capture-mode email, payments on stripe-mock."""
    env = {
        "APPLIANCE_ROOT_KEY": ROOT_KEY,
        "APPLIANCE_RATE_LIMIT_PER_IP": "",
        "APPLIANCE_STRIPE_KEY": stripe_peer.api_key,
        "APPLIANCE_STRIPE_API_BASE": stripe_peer.url,
        "APPLIANCE_STRIPE_WEBHOOK_SECRET": STRIPE_WEBHOOK_SECRET,
    }
    with run_appliance(data_dir, env) as proc:
        yield proc


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("admin-screenshots")


class Session:
    def __init__(self, context: BrowserContext, page: Page, base: str) -> None:
        self.context, self.page, self.base = context, page, base
        self.outside: list[str] = []

    def sign_in(self, key: str = ROOT_KEY) -> None:
        self.page.goto(f"{self.base}/admin/")
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_role("button", name="Sign in").click()

    def open(self, panel: str) -> None:
        self.page.get_by_role("navigation", name="Panels").get_by_role("link", name=re.compile(panel)).click()


def _session(browser: Browser, base: str, **context_args: object) -> Iterator[Session]:
    context = browser.new_context(**context_args)  # type: ignore[arg-type]
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    session = Session(context, page, base)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def guard(route: Route) -> None:
        url = route.request.url
        if url.startswith(f"{base}/") or url.startswith(("data:", "blob:", "about:")):
            route.continue_()
        else:
            session.outside.append(url)
            route.abort()

    context.route("**/*", guard)
    try:
        yield session
    finally:
        context.close()
    assert session.outside == [], f"requests left the appliance: {session.outside}"
    assert errors == [], f"JavaScript errors: {errors}"


@pytest.fixture
def ui(browser: Browser, appliance: ApplianceProcess) -> Iterator[Session]:
    yield from _session(browser, appliance.url, viewport={"width": 1280, "height": 860})


@pytest.fixture
def phone(browser: Browser, appliance: ApplianceProcess) -> Iterator[Session]:
    yield from _session(browser, appliance.url, viewport={"width": 390, "height": 844}, is_mobile=True)


def test_sign_in_shows_the_overview(ui: Session, shots: Path) -> None:
    page = ui.page
    page.goto(f"{ui.base}/admin")
    expect(page.get_by_role("heading", name="Sign in to the admin console")).to_be_visible()
    ui.sign_in()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    metadata = page.get_by_role("article", name="metadata backend")
    expect(metadata).to_contain_text("healthy")
    expect(metadata).to_contain_text("embedded")
    expect(metadata).to_contain_text("sqlite")
    expect(page.get_by_role("img", name=re.compile("latency per backend"))).to_be_visible()
    installed = page.locator(".stat").filter(has_text="Capabilities installed")
    expect(installed).to_contain_text("8 / 8")  # every capability is installed
    page.screenshot(path=str(OVERVIEW_SHOT), full_page=True)
    page.screenshot(path=str(shots / "overview.png"), full_page=True)

    (cookie,) = [c for c in ui.context.cookies() if c["name"] == "appliance_admin"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["secure"] is False
    stored = page.evaluate("JSON.stringify(localStorage) + JSON.stringify(sessionStorage)")
    assert ROOT_KEY not in stored and ROOT_KEY not in page.content()


def test_wrong_and_non_admin_keys_are_refused_in_words(ui: Session, appliance: ApplianceProcess) -> None:
    ui.sign_in("not-a-key")
    expect(ui.page.get_by_role("alert")).to_contain_text("unknown, malformed or revoked")
    key = httpx.post(
        f"{appliance.url}/v1/keys", json={"name": "reader", "scopes": ["storage"]}, headers=ROOT_HEADERS
    ).json()["secret"]
    ui.page.get_by_label("API key").fill(key)
    ui.page.get_by_role("button", name="Sign in").click()
    expect(ui.page.get_by_role("alert")).to_contain_text("'admin' scope")
    assert not [c for c in ui.context.cookies() if c["name"] == "appliance_admin"]


def test_tenant_and_key_lifecycle(ui: Session, appliance: ApplianceProcess, shots: Path) -> None:
    page = ui.page
    ui.sign_in()
    ui.open("Tenants")
    page.get_by_label("Tenant id").fill("acme")
    page.get_by_label("Name", exact=True).fill("Acme Inc.")
    page.get_by_role("button", name="Create tenant").click()
    expect(page.get_by_role("status").filter(has_text="Tenant acme created")).to_be_visible()
    expect(page.get_by_role("cell", name="Acme Inc.")).to_be_visible()

    page.get_by_label("Tenant", exact=True).select_option("acme")
    expect(page.get_by_role("heading", name="API keys in acme")).to_be_visible()

    page.get_by_label("Key name").fill("ci deploys")
    page.get_by_role("checkbox", name="storage").check()
    page.get_by_role("checkbox", name="admin").check()
    page.get_by_role("button", name="Create key").click()
    dialog = page.get_by_role("dialog", name="API key created")
    expect(dialog).to_contain_text("shown this once")
    secret = dialog.get_by_test_id("new-secret").locator("code").inner_text()
    assert secret.startswith("apl_")
    page.screenshot(path=str(shots / "key-created.png"))
    whoami = httpx.get(f"{appliance.url}/v1/whoami", headers={"Authorization": f"Bearer {secret}"})
    assert whoami.json()["tenant"] == "acme" and whoami.json()["scopes"] == ["admin", "storage"]
    dialog.get_by_role("button", name="Close").click()
    expect(page.get_by_test_id("new-secret")).to_have_count(0)
    assert secret not in page.content()  # shown once: gone from the page once the dialog closes
    row = page.get_by_role("row", name=re.compile("ci deploys"))
    expect(row).to_contain_text("storage")
    page.screenshot(path=str(shots / "tenants.png"), full_page=True)

    row.get_by_role("button", name="Revoke key ci deploys").click()
    page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("row", name=re.compile("ci deploys"))).to_have_count(0)
    assert (
        httpx.get(f"{appliance.url}/v1/whoami", headers={"Authorization": f"Bearer {secret}"}).status_code
        == 401
    )

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in to the admin console")).to_be_visible()
    assert not [c for c in ui.context.cookies() if c["name"] == "appliance_admin"]
    assert page.evaluate("fetch('/v1/whoami').then(r => r.status)") == 401


def test_requests_without_the_csrf_token_are_refused(ui: Session) -> None:
    ui.sign_in()
    expect(ui.page.get_by_role("heading", name="Overview")).to_be_visible()
    result = ui.page.evaluate(
        """async () => {
            const r = await fetch('/v1/tenants', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                                   body: JSON.stringify({id: 'csrf-probe', name: 'x'})});
            return [r.status, (await r.json()).detail];
        }"""
    )
    assert result[0] == 403 and "X-CSRF-Token" in result[1]
    assert ui.page.evaluate("fetch('/v1/tenants/csrf-probe').then(r => r.status)") == 404


def test_an_expired_session_returns_to_sign_in(ui: Session, data_dir: Path) -> None:
    ui.sign_in()
    expect(ui.page.get_by_role("heading", name="Overview")).to_be_visible()
    with sqlite3.connect(data_dir / "appliance.db") as db:  # 31 idle minutes later
        db.execute("UPDATE admin_sessions SET last_seen_at = last_seen_at - 1860")
    ui.page.evaluate("location.hash = '#/tenants'")  # the next request the UI makes finds it over
    expect(ui.page.get_by_role("heading", name="Sign in to the admin console")).to_be_visible()
    expect(ui.page.get_by_role("status").filter(has_text="session has ended")).to_be_visible()
    assert ui.page.evaluate("fetch('/v1/whoami').then(r => r.status)") == 401


PATTERN_CASES = [
    ({"type": ["user.created"]}, {"type": "user.created"}, True),
    ({"type": ["user.created"]}, {"type": "user.deleted"}, False),
    ({"type": [{"prefix": "user."}]}, {"type": "user.deleted"}, True),
    ({"payload": {"plan": [{"anything-but": "free"}]}}, {"payload": {"plan": "pro"}}, True),
    ({"payload": {"plan": [{"anything-but": ["free", "pro"]}]}}, {"payload": {"plan": "pro"}}, False),
    ({"payload": {"n": [{"numeric": [">", 0, "<=", 5]}]}}, {"payload": {"n": 5}}, True),
    ({"payload": {"n": [{"numeric": [">", 0, "<=", 5]}]}}, {"payload": {"n": 6}}, False),
    ({"payload": {"n": [{"numeric": [">", 0]}]}}, {"payload": {"n": "7"}}, False),
    ({"payload": {"email": [{"exists": True}]}}, {"payload": {"email": "a@b.c"}}, True),
    ({"payload": {"email": [{"exists": False}]}}, {"payload": {"email": "a@b.c"}}, False),
    ({"payload": {"email": [{"exists": False}]}}, {"payload": {}}, True),
    ({"payload": {"tags": ["vip"]}}, {"payload": {"tags": ["new", "vip"]}}, True),
    ({"source": ["users"], "type": ["user.created"]}, {"source": "billing", "type": "user.created"}, False),
    ({"payload": {"user": {"country": ["FR", "DE"]}}}, {"payload": {"user": {"country": "DE"}}}, True),
    ({"payload": {"user": {"country": ["FR"]}}}, {"payload": {"user": "DE"}}, False),
]


def test_the_rule_pattern_tester_matches_like_eventbridge(ui: Session, appliance: ApplianceProcess) -> None:
    """The bundled matcher (instant verdicts) and the server's (POST /v1/rules:test) agree on every case."""
    server = [
        httpx.post(
            f"{appliance.url}/v1/rules:test", json={"pattern": p, "event": e}, headers=ROOT_HEADERS
        ).json()["matches"]
        for p, e, _ in PATTERN_CASES
    ]
    assert server == [want for _, _, want in PATTERN_CASES]
    ui.page.goto(f"{ui.base}/admin/")
    verdicts = ui.page.evaluate(
        """async (cases) => {
            const { matches } = await import('/admin/patterns.js');
            return cases.map(([pattern, event]) => matches(pattern, event));
        }""",
        [[pattern, event] for pattern, event, _ in PATTERN_CASES],
    )
    expected = [want for _, _, want in PATTERN_CASES]
    wrong = [
        json.dumps(case[:2]) for case, got, want in zip(PATTERN_CASES, verdicts, expected) if got != want
    ]
    assert not wrong, f"pattern tester disagrees on: {wrong}"


NOT_INSTALLED: set[str] = set()  # every capability is merged


def test_capability_panels_render_or_say_they_are_not_installed(ui: Session, shots: Path) -> None:
    ui.sign_in()
    expect(ui.page.get_by_role("heading", name="Overview")).to_be_visible()
    for panel in CAPABILITY_PANELS:
        ui.page.goto(f"{ui.base}/admin/#/{panel}")
        missing = ui.page.get_by_role("status").filter(has_text="is not installed")
        if panel in NOT_INSTALLED:
            expect(missing).to_contain_text("returned 404")
        else:
            expect(ui.page.locator("main h2").first).to_be_visible()
            expect(missing).to_have_count(0)
        ui.page.screenshot(path=str(shots / f"{panel}.png"))
    ui.open("Plugins")
    expect(ui.page.get_by_text("hello").first).to_be_visible()
    ui.page.screenshot(path=str(shots / "plugins.png"))
    # The first-party hello plugin's own panel (plugins/hello) loads and renders.
    ui.page.get_by_role("navigation", name="Panels").get_by_role("link", name="Hello").click()
    expect(ui.page.get_by_role("heading", name="hello, default")).to_be_visible()


def test_keyboard_navigation_moves_focus_to_the_panel(ui: Session) -> None:
    ui.sign_in()
    expect(ui.page.get_by_role("heading", name="Overview")).to_be_visible()
    ui.page.get_by_role("link", name="Tenants & keys").focus()
    ui.page.keyboard.press("Enter")
    expect(ui.page.get_by_role("heading", name="Tenants & keys")).to_be_focused()
    expect(ui.page.get_by_role("link", name="Tenants & keys")).to_have_attribute("aria-current", "page")


def test_works_on_a_phone(phone: Session, shots: Path) -> None:
    page = phone.page
    phone.sign_in()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    nav = page.get_by_role("navigation", name="Panels")
    expect(nav).to_be_hidden()
    page.get_by_role("button", name="Menu").click()
    nav.get_by_role("link", name="Tenants & keys").click()
    expect(page.get_by_role("heading", name="Tenants & keys")).to_be_visible()
    expect(nav).to_be_hidden()
    expect(page.get_by_role("cell", name="default", exact=True)).to_be_visible()  # the lists have loaded
    expect(page.get_by_role("button", name="Create key")).to_be_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways ({width}px)"
    page.screenshot(path=str(shots / "phone-tenants.png"), full_page=True)
    wide = {}
    for panel in CAPABILITY_PANELS:  # wide tables scroll inside their card, never the page
        page.goto(f"{phone.base}/admin/#/{panel}")
        expect(page.get_by_role("heading", name=panel.capitalize(), exact=True, level=1)).to_be_focused()
        if (width := page.evaluate("document.documentElement.scrollWidth")) > 390:
            wide[panel] = width
    page.screenshot(path=str(shots / "phone-users.png"), full_page=True)
    assert not wide, f"panels that scroll sideways at 390 px: {wide}"


# ------------------------------------------------------------ each panel's main job, for real ---


def _shot(page: Page, path: Path) -> None:
    """A full-page screenshot from the top (scrolled, the sticky header would be captured mid-page)."""
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(path), full_page=True)


def _toast(page: Page, text: str) -> Any:
    return page.get_by_role("status").filter(has_text=text)


def test_storage_panel_uploads_lists_downloads_signs_and_deletes(
    ui: Session, appliance: ApplianceProcess, shots: Path, tmp_path: Path
) -> None:
    page = ui.page
    content = b"quarterly numbers\n" * 60_000  # about 1 MB: the upload reports progress on the way
    upload = tmp_path / "report.txt"
    upload.write_bytes(content)
    ui.sign_in()
    ui.open("Storage")
    page.get_by_label("Bucket", exact=True).fill("reports")
    page.get_by_role("button", name="Open", exact=True).click()
    expect(page.get_by_text("No objects under this prefix.")).to_be_visible()

    page.get_by_label("Files", exact=True).set_input_files(str(upload))
    page.get_by_label("Key prefix").fill("2026")
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.get_by_role("progressbar", name="Uploading 2026/report.txt")).to_have_attribute(
        "value", "100"
    )
    expect(page.get_by_text("2026/report.txt · 1.0 MB · uploaded")).to_be_visible()
    page.get_by_role("button", name="2026/").click()  # prefixes are folders
    row = page.get_by_role("row", name=re.compile("report.txt"))
    expect(row).to_contain_text("text/plain")

    with page.expect_download() as download:
        row.get_by_role("button", name="Download 2026/report.txt").click()
    assert Path(download.value.path()).read_bytes() == content
    assert download.value.suggested_filename == "report.txt"

    row.get_by_role("button", name="Copy a signed URL for 2026/report.txt").click()
    signed = page.get_by_label("Signed URL for 2026/report.txt", exact=True)
    expect(signed).to_have_value(re.compile(r"^http://127\.0\.0\.1:\d+/"))
    fetched = httpx.get(signed.input_value())  # no key: the signature is the authorisation
    assert fetched.status_code == 200 and fetched.content == content
    _shot(page, shots / "storage-object.png")

    row.get_by_role("button", name="Delete 2026/report.txt").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(_toast(page, "2026/report.txt deleted")).to_be_visible()
    expect(page.get_by_role("row", name=re.compile("report.txt"))).to_have_count(0)
    gone = httpx.get(f"{appliance.url}/v1/buckets/reports/objects/2026/report.txt", headers=ROOT_HEADERS)
    assert gone.status_code == 404


MOVIES = [
    {
        "id": "1",
        "title": "Dune",
        "overview": "A desert planet and its spice.",
        "genre": "scifi",
        "year": 2021,
    },
    {
        "id": "2",
        "title": "Dune",
        "overview": "Lynch's version of the desert epic.",
        "genre": "scifi",
        "year": 1984,
    },
    {"id": "3", "title": "Dune Drifters", "overview": "Surfing on sand.", "genre": "comedy", "year": 1975},
    {
        "id": "4",
        "title": "Alien",
        "overview": "In space no one can hear you scream.",
        "genre": "horror",
        "year": 1979,
    },
]


def test_search_panel_creates_an_index_and_queries_with_filters_facets_and_highlights(
    ui: Session, appliance: ApplianceProcess, shots: Path
) -> None:
    page = ui.page
    ui.sign_in()
    ui.open("Search")
    page.get_by_label("Index", exact=True).fill("movies")
    page.get_by_label("Index", exact=True).press("Tab")
    expect(page.get_by_text("movies does not exist yet")).to_be_visible()
    page.get_by_label("Searchable").fill("title, overview")
    page.get_by_label("Filterable").fill("genre, year")
    page.get_by_label("Sortable").fill("year")
    page.get_by_role("button", name="Save settings").click()
    expect(_toast(page, "Index movies saved")).to_be_visible()
    expect(page.get_by_role("row", name=re.compile("^movies"))).to_contain_text("overview")

    page.get_by_label("Documents (JSON array)").fill(json.dumps(MOVIES))
    page.get_by_role("button", name="Add and wait until searchable").click()
    expect(_toast(page, "4 document(s) indexed")).to_be_visible()
    expect(page.get_by_text("4 document(s) in movies.")).to_be_visible()

    page.get_by_label("Query", exact=True).fill("dune")
    page.get_by_label("Filter (JSON clause)").fill('{"range": {"year": {"gte": 1980}}}')
    page.get_by_label("Facets").fill("genre")
    page.get_by_label("Sort", exact=True).fill("year:desc")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.get_by_text(re.compile(r"^2 hits in"))).to_be_visible()
    hits = page.locator("article.hit")
    expect(hits).to_have_count(2)
    expect(hits.first.locator("mark").first).to_have_text("Dune")
    expect(hits.first).to_contain_text("2021")  # sorted by year, newest first
    facet = page.locator("ul.facet li")
    expect(facet).to_have_count(1)
    expect(facet).to_contain_text("scifi")
    _shot(page, shots / "search-results.png")
    # The highlight is text, not markup: a <mark> is the only element it ever creates.
    assert page.evaluate("[...document.querySelectorAll('.hit dd span *')].every(e => e.tagName === 'MARK')")


def test_jobs_panel_dead_letters_a_failing_http_job_and_retries_it(
    ui: Session, appliance: ApplianceProcess, shots: Path
) -> None:
    page = ui.page
    dead_port = free_port()  # nothing listens there: every attempt fails to connect
    ui.sign_in()
    ui.open("Jobs")
    page.get_by_label("Queue", exact=True).fill("hooks")
    page.get_by_role("button", name="Open", exact=True).click()
    expect(page.get_by_text("No dead letters in this queue.")).to_be_visible()
    page.get_by_label("Type", exact=True).fill("http")
    page.get_by_label("Max attempts").fill("1")
    page.get_by_label("Payload (JSON)").fill(
        json.dumps({"url": f"http://127.0.0.1:{dead_port}/hook", "body": {}})
    )
    page.get_by_role("button", name="Enqueue").click()
    expect(page.get_by_label("Job id")).not_to_have_value("")
    job_id = page.get_by_label("Job id").input_value()
    expect(page.locator("dl.kv").first).to_contain_text(job_id)

    retry = page.get_by_role("button", name=f"Retry job {job_id}")
    expect(retry).to_be_visible()  # the dead letters refresh themselves
    row = page.get_by_role("row", name=re.compile(job_id))
    expect(row).to_contain_text("1 of 1")
    expect(row).to_contain_text(str(dead_port))  # the error says where it could not connect
    _shot(page, shots / "jobs-dead.png")
    retry.click()
    expect(_toast(page, f"Job {job_id} queued again")).to_be_visible()

    def retried() -> bool:
        job = httpx.get(f"{appliance.url}/v1/queues/hooks/jobs/{job_id}", headers=ROOT_HEADERS).json()
        return len(job["history"]) == 2 and job["status"] == "dead"

    poll_until(retried, timeout=WAIT_MS / 1000, what="the retried job to run and die again")
    page.get_by_role("button", name="Show").click()
    expect(page.get_by_role("list", name="Attempts").get_by_role("listitem")).to_have_count(2)


def test_events_panel_tails_the_log_and_edits_rules_with_the_server_matcher(
    ui: Session, appliance: ApplianceProcess, shots: Path
) -> None:
    page = ui.page
    ui.sign_in()
    ui.open("Events")
    page.get_by_label("Source").fill("shop")
    page.get_by_label("Type", exact=True).fill("order.paid")
    page.get_by_label("Payload (JSON)").fill('{"amount": 42}')
    page.get_by_role("button", name="Publish").click()
    expect(page.get_by_role("log", name="Event log")).to_contain_text("order.paid")
    # Published elsewhere: the tail picks it up by itself.
    httpx.post(
        f"{appliance.url}/v1/events",
        json={"source": "shop", "type": "order.refunded", "payload": {}},
        headers=ROOT_HEADERS,
    ).raise_for_status()
    expect(page.get_by_role("log", name="Event log")).to_contain_text("order.refunded")

    verdict = page.get_by_test_id("pattern-verdict")
    page.get_by_label("Rule name").fill("big-orders")
    page.get_by_label("Pattern (EventBridge-style JSON)").fill(
        '{"type": ["order.paid"], "payload": {"amount": [{"numeric": [">", 10]}]}}'
    )
    sample = page.get_by_label("Sample event to test")
    sample.fill('{"source": "shop", "type": "order.paid", "payload": {"amount": 42}}')
    expect(verdict).to_contain_text("matches this pattern (server's matcher)")
    sample.fill('{"source": "shop", "type": "order.paid", "payload": {"amount": 5}}')
    expect(verdict).to_contain_text("does not match this pattern (server's matcher)")
    page.get_by_label("Pattern (EventBridge-style JSON)").fill('{"type": [{"numeric": [">="]}]}')
    expect(verdict.get_by_role("alert")).to_contain_text("type[0].numeric")  # the server's words
    page.get_by_label("Pattern (EventBridge-style JSON)").fill('{"type": ["order.paid"]}')
    expect(verdict).to_contain_text("✓")
    page.get_by_label("Targets (JSON)").fill('[{"kind": "channel", "name": "orders"}]')
    page.get_by_role("button", name="Create rule").click()
    expect(_toast(page, "Rule big-orders created")).to_be_visible()
    rule = page.get_by_role("row", name=re.compile("big-orders"))
    expect(rule).to_contain_text("channel")
    _shot(page, shots / "events-rules.png")
    rules = httpx.get(f"{appliance.url}/v1/rules", headers=ROOT_HEADERS).json()["items"]
    (target,) = [t for r in rules if r["name"] == "big-orders" for t in r["targets"]]
    assert (target["kind"], target["name"]) == ("channel", "orders")


def test_realtime_panel_lists_a_live_connection_and_broadcasts_to_it(
    ui: Session, appliance: ApplianceProcess, shots: Path
) -> None:
    page = ui.page
    ws_url = appliance.url.replace("http://", "ws://") + "/v1/ws?user_id=ada&tags=beta"
    with connect(ws_url, additional_headers=ROOT_HEADERS, open_timeout=WAIT_MS / 1000) as ws:
        welcome = json.loads(ws.recv(timeout=WAIT_MS / 1000))
        assert welcome["event"] == "welcome"
        ws.send(json.dumps({"op": "subscribe", "channel": "announcements", "ref": 1}))
        answer = json.loads(ws.recv(timeout=WAIT_MS / 1000))
        while answer["event"] == "ping":
            answer = json.loads(ws.recv(timeout=WAIT_MS / 1000))
        assert answer["event"] == "subscribed"

        ui.sign_in()
        ui.open("Realtime")
        row = page.get_by_role("row", name=re.compile(welcome["data"]["connection_id"]))
        expect(row).to_contain_text("ada")
        expect(row).to_contain_text("announcements")
        page.get_by_label("Data (JSON)").fill('{"message": "maintenance at noon"}')
        page.get_by_label("Only users").fill("ada")
        page.get_by_role("button", name="Broadcast").click()
        expect(page.get_by_text("is on its way to 1 connection(s)")).to_be_visible()
        frame = json.loads(ws.recv(timeout=WAIT_MS / 1000))
        while frame["event"] == "ping":  # the node's heartbeat may come first on a busy machine
            frame = json.loads(ws.recv(timeout=WAIT_MS / 1000))
        assert frame["channel"] == "announcements" and frame["event"] == "message"
        assert frame["data"] == {"message": "maintenance at noon"}
        _shot(page, shots / "realtime-broadcast.png")


def test_email_panel_edits_a_template_and_shows_the_captured_message_sandboxed(
    ui: Session, appliance: ApplianceProcess, shots: Path
) -> None:
    page = ui.page
    ui.sign_in()
    ui.open("Email")
    page.get_by_label("Template name").fill("welcome")
    page.get_by_label("Sample data for the preview (JSON)").fill('{"name": "Ada"}')
    expect(page.frame_locator("iframe[title='Template preview']").locator("h1")).to_have_text("Welcome, Ada")
    page.get_by_role("button", name="Save template").click()
    expect(_toast(page, "Template welcome saved")).to_be_visible()
    expect(page.get_by_role("row", name=re.compile("^welcome"))).to_contain_text("Welcome, {{ name }}!")

    page.get_by_label("Send the test to").fill("ada@example.com")
    page.get_by_role("button", name="Send test").click()
    expect(
        page.get_by_role("definition").filter(has_text="captured")
    ).to_be_visible()  # delivered to the catcher
    page.get_by_role("button", name="Welcome, Ada!").click()
    message = page.frame_locator("iframe[title='Email: Welcome, Ada!']")
    expect(message.locator("h1")).to_have_text("Welcome, Ada")
    assert page.locator("iframe[title='Email: Welcome, Ada!']").get_attribute("sandbox") == ""
    _shot(page, shots / "email-captured.png")
    captured = httpx.get(f"{appliance.url}/v1/email", params={"to": "ada@example.com"}, headers=ROOT_HEADERS)
    assert [m["subject"] for m in captured.json()["items"]] == ["Welcome, Ada!"]


def test_payments_panel_creates_a_payment_and_refunds_part_of_it(
    ui: Session, appliance: ApplianceProcess, shots: Path
) -> None:
    page = ui.page
    ui.sign_in()
    ui.open("Payments")
    expect(page.get_by_text("No payments yet.")).to_be_visible()  # the panel has loaded its ledger
    page.get_by_label("Amount (minor units)", exact=True).fill("2500")
    page.get_by_label("Currency").fill("eur")
    expect(page.get_by_label("Currency")).to_have_value("eur")
    page.get_by_role("button", name="Create payment").click()
    # stripe-mock's canned answer: not paid yet, so not refundable
    expect(page.get_by_role("definition").filter(has_text="requires_payment_method")).to_be_visible()
    expect(page.get_by_text("Only succeeded payments can be refunded")).to_be_visible()
    payment_id = page.get_by_role("definition").locator("code").first.inner_text()
    expect(page.get_by_role("row", name=re.compile(payment_id))).to_contain_text("25.00 EUR")

    payment = httpx.get(f"{appliance.url}/v1/payments/{payment_id}", headers=ROOT_HEADERS).json()
    event = {
        "id": f"evt_{payment_id}",
        "object": "event",
        "type": "payment_intent.succeeded",
        "data": {
            "object": {
                "id": payment["provider_id"],
                "object": "payment_intent",
                "status": "succeeded",
                "amount": 2500,
                "currency": "eur",
                "amount_received": 2500,
                "metadata": payment["metadata"],
            }
        },
    }
    raw = json.dumps(event).encode()
    webhook = httpx.post(
        f"{appliance.url}/v1/webhooks/stripe",
        content=raw,
        headers={
            "Stripe-Signature": sign_webhook(raw, STRIPE_WEBHOOK_SECRET),
            "Content-Type": "application/json",
        },
    )
    assert webhook.status_code == 200, webhook.text

    page.get_by_role("button", name=payment_id).click()
    page.get_by_label("Refund amount (minor units)").fill("1000")
    page.get_by_role("button", name="Refund", exact=True).click()
    refunds = page.get_by_role("table", name="Refunds")
    expect(refunds).to_contain_text("10.00 EUR")
    expect(refunds).to_contain_text("succeeded")
    expect(page.get_by_role("row", name=re.compile(payment_id))).to_contain_text("10.00 EUR")
    _shot(page, shots / "payments-refund.png")
    fetched = httpx.get(f"{appliance.url}/v1/payments/{payment_id}", headers=ROOT_HEADERS).json()
    assert fetched["amount_refunded"] == 1000 and fetched["status"] == "succeeded"


def test_users_panel_signs_a_user_up_and_verifies_them(
    ui: Session, appliance: ApplianceProcess, shots: Path
) -> None:
    page = ui.page
    ui.sign_in()
    ui.open("Users")
    page.get_by_label("Email", exact=True).fill("grace@example.com")
    page.get_by_label("Name", exact=True).fill("Grace Hopper")
    page.get_by_role("button", name="Create user").click()
    shown = page.get_by_test_id("verification")
    expect(shown).to_contain_text("grace@example.com created")
    token = shown.locator("code").inner_text()
    assert token
    row = page.get_by_role("row", name=re.compile("grace@example.com"))
    expect(row).to_contain_text("not verified")
    page.get_by_role("button", name="Verify grace@example.com").click()
    expect(page.get_by_text("grace@example.com is verified")).to_be_visible()
    expect(row).to_contain_text(re.compile(r"^(?!.*not verified).*verified"))
    assert token not in page.content()  # shown once: gone once verified
    _shot(page, shots / "users.png")
    (user,) = [
        u
        for u in httpx.get(f"{appliance.url}/v1/users", headers=ROOT_HEADERS).json()["items"]
        if u["email"] == "grace@example.com"
    ]
    assert user["verified"] is True and user["name"] == "Grace Hopper"


# ---------------------------------------------------------------- plugin panels ---

PANEL_JS = """
export async function render(element, api) {
  const { h, panelHeader } = api.ui;
  const me = await api.get("/v1/whoami");
  element.append(panelHeader("Hello panel", "contributed by a plugin"), h("p", { id: "hello" }, `tenant ${me.tenant}`));
}
"""


class HelloPanelPlugin:
    """A plugin that serves an ES module and contributes it as an admin panel."""

    __name__ = "hello-panel"

    @hookimpl
    def appliance_admin_panels(self) -> list[AdminPanel]:
        return [AdminPanel(id="greeting", title="Greeting", module_url="/plugins/greeting/panel.js")]

    @hookimpl
    def appliance_route_handlers(self, ctx: Any) -> list[Any]:
        @get(
            "/plugins/greeting/panel.js",
            exclude_from_auth=True,
            media_type="text/javascript",
            sync_to_thread=False,
        )
        def panel() -> str:
            return PANEL_JS

        return [panel]


@pytest.fixture(scope="module")
def plugin_appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app with an extra plugin object, served by uvicorn in a thread (a process cannot take one); its URL."""
    settings = make_settings(tmp_path_factory.mktemp("admin-plugin") / "data")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, extra_plugins=[HelloPanelPlugin()]), port=port, log_config=None, ws="none"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    poll_until(lambda: server.started, timeout=20, what="uvicorn to start")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def test_plugin_panels_load_as_es_modules(browser: Browser, plugin_appliance: str, shots: Path) -> None:
    for session in _session(browser, plugin_appliance, viewport={"width": 1280, "height": 860}):
        session.sign_in()
        expect(session.page.get_by_role("heading", name="Overview")).to_be_visible()
        session.open("Plugins")
        expect(session.page.get_by_role("cell", name="hello-panel")).to_be_visible()
        session.page.get_by_role("navigation", name="Panels").get_by_role("link", name="Greeting").click()
        expect(session.page.get_by_role("heading", name="Hello panel")).to_be_visible()
        expect(session.page.locator("#hello")).to_have_text("tenant default")
        session.page.screenshot(path=str(shots / "plugin-panel.png"))
