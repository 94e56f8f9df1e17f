"""Tenant isolation for notify and users: every endpoint, called with tenant B's key on tenant A's things.

Each row: the request B makes (``{ids}`` from A's setup), the statuses B may get (404, or 2xx where B
acts on its own namespace or lists its own empty things), and afterwards A's things are unchanged.
No response to B may contain A's markers: template text, addresses, endpoints, ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from appliance.jobs import JobService
from tests.conftest import MakeTenant, make_settings
from tests.notify_peers import PushService, push_service

Client = AsyncTestClient[Litestar]
A_TEMPLATE = {"subject": "A-secret-subject", "html": "<p>A-secret-html {{ x }}</p>", "text": "A-secret-text"}


@pytest.fixture
def settings(tmp_path: Any) -> Any:
    return make_settings(tmp_path / "data", worker=False)


@pytest.fixture
def pushes() -> Iterator[PushService]:
    with push_service() as service:
        yield service


async def setup_a(
    client: Client, app: Litestar, headers: dict[str, str], pushes: PushService
) -> dict[str, str]:
    await client.put("/v1/templates/a-tpl", json=A_TEMPLATE, headers=headers)
    email = {"to": "alice-a@example.com", "template": "a-tpl", "data": {"x": "A-secret-data"}}
    email_id = (await client.post("/v1/email", json=email, headers=headers)).json()["id"]
    jobs: JobService = app.state.ctx.services["jobs"]
    await jobs.drain()
    sub = {"user_id": "a-user", "subscription": pushes.subscribe("a-device"), "topics": ["a-topic"]}
    sub_id = (await client.post("/v1/push/subscriptions", json=sub, headers=headers)).json()["id"]
    push_id = (
        await client.post("/v1/push", json={"user_id": "a-user", "title": "A-push"}, headers=headers)
    ).json()["id"]
    user = (
        await client.post(
            "/v1/users", json={"email": "alice-a@example.com", "name": "A-name"}, headers=headers
        )
    ).json()
    return {
        "email_id": email_id,
        "sub_id": sub_id,
        "push_id": push_id,
        "user_id": user["id"],
        "token": user["verification_token"],
    }


@dataclass
class Row:
    name: str
    method: str
    path: str
    body: Any = None
    allowed: tuple[int, ...] = (404,)


ROWS = [
    Row("read template", "GET", "/v1/templates/a-tpl"),
    Row("delete template", "DELETE", "/v1/templates/a-tpl"),
    Row("list templates", "GET", "/v1/templates", allowed=(200,)),
    Row("send with A's template", "POST", "/v1/email", {"to": "b@example.com", "template": "a-tpl"}, (422,)),
    Row("email status", "GET", "/v1/email/{email_id}"),
    Row("captured mail", "GET", "/v1/email", allowed=(200,)),
    Row("captured mail to A's address", "GET", "/v1/email?to=alice-a@example.com", allowed=(200,)),
    Row(
        "bulk with A's template",
        "POST",
        "/v1/email:bulk",
        [{"to": "b@example.com", "template": "a-tpl"}],
        (422,),
    ),
    Row("list subscriptions", "GET", "/v1/push/subscriptions", allowed=(200,)),
    Row("A's user's subscriptions", "GET", "/v1/push/subscriptions?user_id=a-user", allowed=(200,)),
    Row("delete subscription", "DELETE", "/v1/push/subscriptions/{sub_id}"),
    Row("push to A's user", "POST", "/v1/push", {"user_id": "a-user", "title": "B"}, (202,)),
    Row("push to A's topic", "POST", "/v1/push", {"topic": "a-topic", "title": "B"}, (202,)),
    Row("push status", "GET", "/v1/push/{push_id}"),
    Row("read user", "GET", "/v1/users/{user_id}"),
    Row("verify A's user", "POST", "/v1/users/{user_id}/verify", {"token": "{token}"}),
    Row("list users", "GET", "/v1/users", allowed=(200,)),
    Row(
        "same email is B's own user",
        "POST",
        "/v1/users",
        {"email": "alice-a@example.com", "name": "B"},
        (201,),
    ),
    # Last, so the rows above meet no template of B's named a-tpl.
    Row("same-name template is B's own", "PUT", "/v1/templates/a-tpl", {"subject": "b", "text": "b"}, (201,)),
]
A_MARKERS = (
    "A-secret",
    "a-device",
    "A-push",
    "A-name",
    "{email_id}",
    "{sub_id}",
    "{push_id}",
    "{user_id}",
    "{token}",
)


def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    return value


async def test_tenant_b_never_sees_or_touches_tenant_a(
    client: Client, app: Litestar, make_tenant: MakeTenant, pushes: PushService
) -> None:
    a = await make_tenant("tenant-a", ("notify", "users"))
    b = await make_tenant("tenant-b", ("notify", "users"))
    ids = await setup_a(client, app, a, pushes)
    for row in ROWS:
        response = await client.request(
            row.method, _fill(row.path, ids), json=_fill(row.body, ids), headers=b
        )
        assert response.status_code in row.allowed, (row.name, response.text)
        for marker in A_MARKERS:
            needle = marker.format(**ids)
            if needle not in row.path.format(**ids):  # a 404 may name the id B itself sent
                assert needle not in response.text, f"{row.name}: tenant B saw {needle!r}"
        if row.name.startswith("push to A's"):
            assert response.json()["subscriptions"] == 0, row.name
        await _a_is_untouched(client, a, ids)
    jobs: JobService = app.state.ctx.services["jobs"]
    await jobs.drain()  # B's pushes reach no subscription of A
    assert [r.path for r in pushes.received] == ["/push/a-device"]


async def _a_is_untouched(client: Client, a: dict[str, str], ids: dict[str, str]) -> None:
    assert (await client.get("/v1/templates/a-tpl", headers=a)).json()["subject"] == "A-secret-subject"
    assert (await client.get(f"/v1/email/{ids['email_id']}", headers=a)).json()["status"] == "captured"
    subs = (await client.get("/v1/push/subscriptions", headers=a)).json()["items"]
    assert [s["id"] for s in subs] == [ids["sub_id"]]
    user = (await client.get(f"/v1/users/{ids['user_id']}", headers=a)).json()
    assert user["verified"] is False
