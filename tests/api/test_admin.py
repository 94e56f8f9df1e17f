"""The admin UI's server side: sessions, CSRF, expiry, cookie flags, plugins, capabilities, static files."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar, get
from litestar.testing import AsyncTestClient

from appliance.admin import web_dir
from appliance.admin.sessions import COOKIE
from appliance.app import create_app
from appliance.config import Settings
from appliance.plugin import AdminPanel, hookimpl
from tests.api.test_core import assert_problem
from tests.conftest import ROOT, ROOT_KEY, MakeTenant

Client = AsyncTestClient[Litestar]
SESSION = "/admin/api/session"


def _secret(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


async def sign_in(client: Client, key: str = ROOT_KEY) -> str:
    """Sign in (the client keeps the cookie); returns the CSRF token."""
    response = await client.post(SESSION, json={"key": key})
    assert response.status_code == 200, response.text
    token: str = response.json()["csrf_token"]
    return token


async def age_session(client: Client, column: str, seconds: float) -> None:
    ctx = client.app.state.ctx
    await ctx.db.execute(f"UPDATE admin_sessions SET {column} = {column} - ?", (seconds,))


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"key": "nope"}, 401),
        ({"key": "apl_x_y"}, 401),
        ({"key": ""}, 422),
        ({}, 422),
        ({"key": ROOT_KEY, "extra": 1}, 422),
        ({"key": ROOT_KEY}, 200),
    ],
)
async def test_sign_in_statuses(client: Client, body: dict[str, Any], status: int) -> None:
    response = await client.post(SESSION, json=body)
    if status != 200:
        assert_problem(response, status)
        assert COOKIE not in response.cookies
    else:
        assert response.json()["is_root"] is True


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "http://appliance.test.evil.example"}, 403),
        ({"Origin": "http://appliance.test"}, 200),
        ({"Content-Type": "text/plain"}, 415),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ],
)
async def test_sign_in_from_another_site_is_refused(
    client: Client, headers: dict[str, str], status: int
) -> None:
    body = f'{{"key": "{ROOT_KEY}"}}'
    response = await client.post(
        SESSION, content=body, headers={"Content-Type": "application/json", **headers}
    )
    assert response.status_code == status, response.text
    if status != 200:
        assert_problem(response, status)
        assert COOKIE not in response.cookies


@pytest.mark.parametrize(
    ("scopes", "status"), [(("storage",), 403), (("storage", "search"), 403), (("admin",), 200)]
)
async def test_only_admin_keys_sign_in(
    client: Client, make_tenant: MakeTenant, scopes: tuple[str, ...], status: int
) -> None:
    headers = await make_tenant("acme", scopes)
    response = await client.post(SESSION, json={"key": _secret(headers)})
    assert response.status_code == status, response.text
    if status == 403:
        assert "admin" in assert_problem(response, 403)["detail"]
    else:
        assert response.json()["tenant"] == "acme"


async def test_cookie_flags_over_http(client: Client) -> None:
    response = await client.post(SESSION, json={"key": ROOT_KEY})
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert "secure" not in cookie
    assert ROOT_KEY not in response.text


async def test_cookie_is_secure_over_https(settings: Settings) -> None:
    async with AsyncTestClient(create_app(settings), base_url="https://appliance.test") as client:
        response = await client.post(SESSION, json={"key": ROOT_KEY})
        assert response.status_code == 200
        assert "; secure" in response.headers["set-cookie"].lower()


async def test_session_id_is_stored_hashed(client: Client) -> None:
    await sign_in(client)
    raw = client.cookies[COOKIE]
    rows = await client.app.state.ctx.db.fetchall("SELECT * FROM admin_sessions")
    assert len(rows) == 1
    assert all(raw not in str(value) for value in tuple(rows[0]))


async def test_cookie_authenticates_the_public_api_and_csrf_guards_writes(client: Client) -> None:
    token = await sign_in(client)
    assert (await client.get("/v1/whoami")).json()["key_id"] == "root"
    body = {"id": "acme", "name": "Acme"}
    assert_problem(await client.post("/v1/tenants", json=body), 403)
    assert_problem(await client.post("/v1/tenants", json=body, headers={"X-CSRF-Token": "0" * 64}), 403)
    assert (await client.post("/v1/tenants", json=body, headers={"X-CSRF-Token": token})).status_code == 201
    assert_problem(await client.delete(SESSION), 403)  # signing out is a write too
    assert (await client.get(SESSION)).json()["csrf_token"] == token  # a reload recovers the token


async def test_root_session_switches_tenant(client: Client, make_tenant: MakeTenant) -> None:
    await make_tenant("acme")
    await sign_in(client)
    response = await client.get("/v1/whoami", headers={"X-Tenant-ID": "acme"})
    assert response.json()["tenant"] == "acme"


async def test_sign_out_ends_the_session(client: Client) -> None:
    token = await sign_in(client)
    raw = client.cookies[COOKIE]
    response = await client.delete(SESSION, headers={"X-CSRF-Token": token})
    assert response.status_code == 204
    assert (
        f"{COOKIE}=" in response.headers["set-cookie"]
        and "max-age=0" in response.headers["set-cookie"].lower()
    )
    client.cookies.set(COOKIE, raw)  # replaying the old cookie gets nowhere
    assert_problem(await client.get("/v1/whoami"), 401)
    assert_problem(await client.get(SESSION), 401)


@pytest.mark.parametrize(("column", "seconds"), [("last_seen_at", 1801), ("expires_at", 12 * 3600 + 1)])
async def test_expired_sessions_are_refused(client: Client, column: str, seconds: float) -> None:
    await sign_in(client)
    assert (await client.get("/v1/whoami")).status_code == 200
    await age_session(client, column, seconds)
    assert_problem(await client.get("/v1/whoami"), 401)
    assert await client.app.state.ctx.db.fetchall("SELECT * FROM admin_sessions") == []


async def test_activity_extends_the_idle_window(client: Client) -> None:
    await sign_in(client)
    await age_session(client, "last_seen_at", 1000)
    assert (await client.get("/v1/whoami")).status_code == 200  # touched: idle clock restarts
    await age_session(client, "last_seen_at", 1000)
    assert (await client.get("/v1/whoami")).status_code == 200


async def test_revoking_the_key_ends_its_sessions(client: Client, make_tenant: MakeTenant) -> None:
    headers = await make_tenant("acme", ("admin",))
    await sign_in(client, _secret(headers))
    key_id = _secret(headers).split("_")[1]
    revoke = await client.delete(f"/v1/keys/{key_id}", headers={**ROOT, "X-Tenant-ID": "acme"})
    assert revoke.status_code == 204
    assert_problem(await client.get("/v1/whoami"), 401)


# Tenant isolation: a tenant's admin session never reaches another tenant.
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/whoami", 403),
        ("GET", "/v1/keys", 403),
        ("POST", "/v1/keys", 403),
        ("GET", "/v1/tenants", 403),
        ("GET", "/admin/api/plugins", 403),
        ("GET", "/admin/api/capabilities", 403),
    ],
)
async def test_admin_session_is_confined_to_its_tenant(
    client: Client, make_tenant: MakeTenant, method: str, path: str, status: int
) -> None:
    await make_tenant("globex", ("admin",))
    headers = await make_tenant("acme", ("admin",))
    token = await sign_in(client, _secret(headers))
    body = {"name": "x", "scopes": ["storage"]} if method == "POST" else None
    response = await client.request(
        method, path, json=body, headers={"X-Tenant-ID": "globex", "X-CSRF-Token": token}
    )
    problem = assert_problem(response, status)
    assert "globex" not in str({k: v for k, v in problem.items() if k != "detail"})


async def test_admin_endpoints_need_the_admin_scope(client: Client, make_tenant: MakeTenant) -> None:
    headers = await make_tenant("acme", ("storage",))
    for path in ("/admin/api/plugins", "/admin/api/capabilities"):
        assert_problem(await client.get(path, headers=headers), 403)
        assert_problem(await client.get(path), 401)


class PanelPlugin:
    """A plugin adding an admin panel and the route that serves it."""

    __name__ = "panel-plugin"

    @hookimpl
    def appliance_admin_panels(self) -> list[AdminPanel]:
        return [AdminPanel(id="test-panel", title="Test", module_url="/v1/test-panel/panel.js")]

    @hookimpl
    def appliance_route_handlers(self, ctx: Any) -> list[Any]:
        @get("/v1/test-panel/panel.js", sync_to_thread=False)
        def panel() -> str:
            return "export function render(element) {}"

        return [panel]


async def test_plugins_and_capabilities(settings: Settings) -> None:
    app = create_app(settings, extra_plugins=[PanelPlugin()])
    async with AsyncTestClient(app, base_url="http://appliance.test") as client:
        plugins = (await client.get("/admin/api/plugins", headers=ROOT)).json()
        assert sorted(plugins["panels"], key=lambda p: p["id"]) == [
            {"id": "hello", "title": "Hello", "module_url": "/plugins/hello/static/panel.js"},
            {"id": "test-panel", "title": "Test", "module_url": "/v1/test-panel/panel.js"},
        ]
        plugin = next(p for p in plugins["plugins"] if p["name"] == "panel-plugin")
        assert plugin["enabled"] is True
        assert set(plugin["hooks"]) == {"appliance_admin_panels", "appliance_route_handlers"}
        caps = {
            c["name"]: c["installed"]
            for c in (await client.get("/admin/api/capabilities", headers=ROOT)).json()["capabilities"]
        }
        assert caps == {
            "storage": True,
            "search": True,
            "jobs": True,
            "events": True,
            "realtime": True,
            "notify": True,
            "payments": True,
            "users": True,
        }


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/admin", "text/html"),
        ("/admin/", "text/html"),
        ("/admin/app.js", "javascript"),
        ("/admin/admin.css", "text/css"),
        ("/admin/panels/overview.js", "javascript"),
    ],
)
async def test_ui_files_are_served_without_a_key_and_locked_down(
    client: Client, path: str, content_type: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert content_type in response.headers["content-type"]
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_missing_ui_file_is_404_problem(client: Client) -> None:
    assert_problem(await client.get("/admin/no-such-file.js"), 404)


def test_ui_ships_as_package_data() -> None:
    root = Path(__file__).resolve().parents[2]
    assert web_dir() == root / "web"
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    assert pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]["web"] == "appliance/_web"
    for path in (root / "web").rglob("*"):
        if path.suffix in {".html", ".js", ".css"}:
            text = path.read_text()
            assert "http://" not in text.replace("http://www.w3.org/2000/svg", "").replace(
                "http://127.0.0.1", ""
            )
            assert "https://" not in text, f"{path} refers to the internet"
