"""The welcome_email plugin end to end: sign up -> welcome email with the code; verify -> confirmation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import appliance_welcome_email
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from appliance.app import create_app
from appliance.core.outbox import Event
from appliance.events import EventService
from appliance.plugin import load_plugins
from tests.conftest import ROOT, MakeTenant, make_settings

Client = AsyncTestClient[Litestar]
DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


@pytest.fixture
def settings(tmp_path: Any) -> Any:
    return make_settings(tmp_path / "data", worker=False, plugins="welcome_email")


async def drain(app: Litestar) -> None:
    events: EventService = app.state.ctx.services["events"]
    await events.drain()


async def mail_to(client: Client, headers: dict[str, str], address: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (
        await client.get("/v1/email", params={"to": address}, headers=headers)
    ).json()["items"]
    return items


async def test_signup_sends_welcome_then_confirmation(
    client: Client, app: Litestar, make_tenant: MakeTenant
) -> None:
    headers = await make_tenant("acme", ("users", "notify"))
    user = (
        await client.post("/v1/users", json={"email": "ada@example.com", "name": "Ada <3"}, headers=headers)
    ).json()
    await drain(app)
    (welcome,) = await mail_to(client, headers, "ada@example.com")
    assert welcome["subject"] == "Welcome, Ada <3!"
    assert user["verification_token"] in welcome["text"] and user["verification_token"] in welcome["html"]
    assert "Ada &lt;3" in welcome["html"]
    verified = await client.post(
        f"/v1/users/{user['id']}/verify", json={"token": user["verification_token"]}, headers=headers
    )
    assert verified.status_code == 200
    await drain(app)
    confirmation, _ = await mail_to(client, headers, "ada@example.com")
    assert confirmation["subject"] == "Your address is confirmed"
    assert "ada@example.com is now confirmed" in confirmation["text"]
    status = (await client.get(f"/v1/email/{confirmation['id']}", headers=headers)).json()
    assert status["status"] == "captured" and status["template"] == "account-verified"


async def test_the_tenants_own_template_wins(client: Client, app: Litestar) -> None:
    mine = {"subject": "Hej {{ name }}", "text": "Kod: {{ verification_token }}"}
    assert (await client.put("/v1/templates/welcome", json=mine, headers=ROOT)).status_code == 201
    user = (
        await client.post("/v1/users", json={"email": "bo@example.com", "name": "Bo"}, headers=ROOT)
    ).json()
    await drain(app)
    (mail,) = await mail_to(client, ROOT, "bo@example.com")
    assert mail["subject"] == "Hej Bo" and mail["text"] == f"Kod: {user['verification_token']}"


async def test_a_handler_run_twice_sends_one_email(client: Client, app: Litestar) -> None:
    ctx = app.state.ctx
    payload = {"user_id": "usr_x", "email": "cy@example.com", "name": "Cy", "verification_token": "t0k"}
    event = Event(
        id="evt_once",
        tenant="default",
        source="appliance.users",
        type="user.created",
        payload=payload,
        created_at=0.0,
    )
    await appliance_welcome_email.send_welcome(ctx, event)
    await appliance_welcome_email.send_welcome(ctx, event)  # at-least-once delivery: a repeat
    await drain(app)
    assert len(await mail_to(client, ROOT, "cy@example.com")) == 1


def test_plugin_is_installed_uses_one_hook_and_is_documented_verbatim() -> None:
    _, infos = load_plugins("welcome_email")
    info = next(i for i in infos if i.name == "welcome_email")
    assert info.enabled and info.hooks == ["appliance_event_handlers"]
    source = Path(appliance_welcome_email.__file__).read_text()
    assert source in DOCS.read_text(), "docs/plugins.md must include the welcome_email plugin verbatim"
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert all("appliance" not in line or "appliance.plugin" in line for line in imports), imports


async def test_disabled_plugin_sends_nothing(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path / "off", worker=False, plugins="none"))
    async with AsyncTestClient(app, base_url="http://appliance.test") as client:
        await client.post("/v1/users", json={"email": "dee@example.com", "name": "Dee"}, headers=ROOT)
        await drain(app)
        assert await mail_to(client, ROOT, "dee@example.com") == []
