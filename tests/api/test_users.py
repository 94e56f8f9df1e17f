"""API.md "Users": sign-up and verification, with the events each write emits in the same transaction."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar
from litestar.testing import AsyncTestClient

from appliance.core.shards import acting_for
from tests.api.test_core import assert_problem
from tests.conftest import ROOT, MakeTenant

Client = AsyncTestClient[Litestar]


async def events(app: Litestar, tenant: str = "default") -> list[tuple[str, dict[str, Any]]]:
    with acting_for(tenant):  # the tenant's shard, with APPLIANCE_DATABASE_SHARDS
        rows = await app.state.ctx.db.fetchall(
            "SELECT type, payload FROM events WHERE tenant_id = ? ORDER BY id", (tenant,)
        )
    return [(r["type"], msgspec.json.decode(r["payload"])) for r in rows]


async def test_signup_and_verification(client: Client, app: Litestar, make_tenant: MakeTenant) -> None:
    headers = await make_tenant("acme", ("users",))
    created = await client.post(
        "/v1/users", json={"email": "ada@example.com", "name": "Ada"}, headers=headers
    )
    assert created.status_code == 201, created.text
    user = created.json()
    token = user["verification_token"]
    assert user["verified"] is False and len(token) >= 32
    [(kind, payload)] = await events(app, "acme")
    assert kind == "user.created"
    assert payload == {
        "user_id": user["id"],
        "email": "ada@example.com",
        "name": "Ada",
        "verification_token": token,
        "verification_expires_at": user["verification_expires_at"],
    }
    got = (await client.get(f"/v1/users/{user['id']}", headers=headers)).json()
    assert got["verified"] is False and "verification_token" not in got
    wrong = await client.post(f"/v1/users/{user['id']}/verify", json={"token": "nope"}, headers=headers)
    assert "not this user's" in assert_problem(wrong, 422)["detail"]
    verified = await client.post(f"/v1/users/{user['id']}/verify", json={"token": token}, headers=headers)
    assert verified.status_code == 200 and verified.json()["verified"] is True
    again = await client.post(f"/v1/users/{user['id']}/verify", json={"token": token}, headers=headers)
    assert again.status_code == 200 and again.json()["verified_at"] == verified.json()["verified_at"]
    kinds = [kind for kind, _ in await events(app, "acme")]
    assert kinds == ["user.created", "user.verified"]  # verifying twice emits once
    listed = (await client.get("/v1/users", headers=headers)).json()
    assert [u["id"] for u in listed["items"]] == [user["id"]] and listed["items"][0]["verified"]


async def test_duplicate_email_conflicts_and_emits_nothing(client: Client, app: Litestar) -> None:
    assert (
        await client.post("/v1/users", json={"email": "ada@example.com", "name": "A"}, headers=ROOT)
    ).status_code == 201
    duplicate = await client.post("/v1/users", json={"email": "ADA@example.com", "name": "B"}, headers=ROOT)
    assert_problem(duplicate, 409)
    assert [kind for kind, _ in await events(app)] == ["user.created"]


async def test_idempotency_key_creates_one_user(client: Client, app: Litestar) -> None:
    headers = {**ROOT, "Idempotency-Key": "signup-1"}
    body = {"email": "ada@example.com", "name": "Ada"}
    first = await client.post("/v1/users", json=body, headers=headers)
    second = await client.post("/v1/users", json=body, headers=headers)
    assert first.status_code == second.status_code == 201 and first.json() == second.json()
    assert len(await events(app)) == 1


BAD_REQUESTS = [  # (method, path, body, status)
    ("POST", "/v1/users", {"email": "not-an-email", "name": "x"}, 422),
    ("POST", "/v1/users", {"email": "a@example.com\r\nBcc: x@y.z", "name": "x"}, 422),
    ("POST", "/v1/users", {"email": "a@example.com"}, 422),
    ("POST", "/v1/users", {"email": "a@example.com", "name": ""}, 422),
    ("POST", "/v1/users", {"email": "a@example.com", "name": "x", "admin": True}, 422),
    ("GET", "/v1/users/usr_nope", None, 404),
    ("POST", "/v1/users/usr_nope/verify", {"token": "x"}, 404),
    ("POST", "/v1/users/usr_nope/verify", {}, 422),
]


async def test_bad_user_requests(client: Client, app: Litestar) -> None:
    for method, path, body, status in BAD_REQUESTS:
        assert_problem(await client.request(method, path, json=body, headers=ROOT), status)
    assert await events(app) == []


async def test_users_need_the_users_scope(client: Client, make_tenant: MakeTenant) -> None:
    headers = await make_tenant("acme", ("notify",))
    assert_problem(
        await client.post("/v1/users", json={"email": "a@example.com", "name": "A"}, headers=headers), 403
    )
    assert_problem(await client.get("/v1/users", headers=headers), 403)
