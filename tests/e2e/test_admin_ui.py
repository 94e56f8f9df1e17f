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

from appliance.app import create_app
from appliance.plugin import AdminPanel, hookimpl
from tests.conftest import ROOT_KEY, make_settings
from tests.peers import CHROMIUM_ARGS, START_TIMEOUT, find_tool, free_port, poll_until
from tests.process import ApplianceProcess, run_appliance

pytestmark = pytest.mark.peer("chromium")

ROOT_HEADERS = {"Authorization": f"Bearer {ROOT_KEY}"}
CAPABILITY_PANELS = ["storage", "search", "jobs", "events", "realtime", "email", "payments"]
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
def appliance(data_dir: Path) -> Iterator[ApplianceProcess]:
    with run_appliance(data_dir, {"APPLIANCE_ROOT_KEY": ROOT_KEY, "APPLIANCE_RATE_LIMIT_PER_IP": ""}) as proc:
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
    expect(page.get_by_text("7 / 7")).to_be_visible()  # every capability is installed
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


def test_the_rule_pattern_tester_matches_like_eventbridge(ui: Session) -> None:
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
