"""API.md "Conventions" and "Health and admin", as scenario tables."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.conftest import ROOT, MakeTenant

Client = AsyncTestClient[Litestar]
PROBLEM = "application/problem+json"


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == status
    return body


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status"),
    [
        ("GET", "/v1/whoami", None, {}, 401),
        ("GET", "/v1/whoami", None, {"Authorization": "Bearer nope"}, 401),
        ("GET", "/v1/whoami", None, {"Authorization": "Basic abc"}, 401),
        ("GET", "/v1/whoami", None, {"Authorization": "Bearer apl_x_y"}, 401),
        ("GET", "/v1/tenants", None, {}, 401),
        ("POST", "/v1/keys", {"name": "x", "scopes": ["storage"]}, {}, 401),
        ("GET", "/v1/nothing-here", None, ROOT, 404),
        ("POST", "/v1/tenants", {"id": "Bad_Id", "name": "x"}, ROOT, 422),
        ("POST", "/v1/tenants", {"id": "-lead", "name": "x"}, ROOT, 422),
        ("POST", "/v1/tenants", {"id": "a" * 64, "name": "x"}, ROOT, 422),
        ("POST", "/v1/tenants", {"id": "ok", "name": ""}, ROOT, 422),
        ("POST", "/v1/tenants", {"id": "ok"}, ROOT, 422),
        ("POST", "/v1/keys", {"name": "x", "scopes": ["bogus"]}, ROOT, 422),
        ("POST", "/v1/keys", {"name": "x", "scopes": []}, ROOT, 422),
        ("GET", "/v1/whoami", None, {**ROOT, "X-Tenant-ID": "no-such-tenant"}, 404),
        ("GET", "/v1/whoami", None, {**ROOT, "X-Tenant-ID": "BAD!"}, 422),
        ("DELETE", "/v1/tenants/default", None, ROOT, 409),
        ("DELETE", "/v1/keys/nope", None, ROOT, 404),
        ("GET", "/v1/tenants?limit=0", None, ROOT, 422),
        ("GET", "/v1/tenants?limit=1001", None, ROOT, 422),
        ("GET", "/v1/tenants?cursor=%%%", None, ROOT, 400),
    ],
)
async def test_errors_are_problem_json(
    client: Client, method: str, path: str, body: Any, headers: dict[str, str], status: int
) -> None:
    response = await client.request(method, path, json=body, headers=headers)
    assert_problem(response, status)


async def test_malformed_json_is_400_problem(client: Client) -> None:
    response = await client.post(
        "/v1/tenants", content=b'{"id": "x", ', headers={**ROOT, "Content-Type": "application/json"}
    )
    assert_problem(response, 400)


async def test_health_and_readiness_need_no_key(client: Client) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = (await client.get("/readyz")).json()
    assert ready["status"] == "ready"
    assert {b["name"] for b in ready["backends"]} >= {"metadata"}


async def test_openapi_is_served_without_cdn_assets(client: Client) -> None:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    text = response.text
    assert "/v1/tenants" in text
    assert "cdn" not in text.lower() and "unpkg" not in text.lower()
    assert (await client.get("/schema/swagger")).status_code == 404


async def test_whoami_for_root_and_tenant_keys(client: Client, make_tenant: MakeTenant) -> None:
    root = (await client.get("/v1/whoami", headers=ROOT)).json()
    assert root == {**root, "tenant": "default", "key_id": "root", "is_root": True}
    acting = (await client.get("/v1/whoami", headers={**ROOT, "X-Tenant-ID": "default"})).json()
    assert acting["tenant"] == "default"
    headers = await make_tenant("acme", ("storage", "search"))
    me = (await client.get("/v1/whoami", headers=headers)).json()
    assert me["tenant"] == "acme" and me["scopes"] == ["search", "storage"] and not me["is_root"]


async def test_tenant_lifecycle_and_pagination(client: Client) -> None:
    for index in range(5):
        created = await client.post(
            "/v1/tenants", json={"id": f"t{index}", "name": f"T {index}"}, headers=ROOT
        )
        assert created.status_code == 201
    assert (
        await client.post("/v1/tenants", json={"id": "t0", "name": "again"}, headers=ROOT)
    ).status_code == 409
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/tenants", params=params, headers=ROOT)).json()
        assert len(page["items"]) <= 2
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(["default", "t0", "t1", "t2", "t3", "t4"])
    assert (await client.delete("/v1/tenants/t3", headers=ROOT)).status_code == 204
    assert (await client.get("/v1/tenants/t3", headers=ROOT)).status_code == 404


async def test_only_root_manages_tenants(client: Client, make_tenant: MakeTenant) -> None:
    admin = await make_tenant("acme", ("admin",))
    assert_problem(await client.get("/v1/tenants", headers=admin), 403)
    assert_problem(await client.post("/v1/tenants", json={"id": "x", "name": "x"}, headers=admin), 403)
    assert_problem(await client.delete("/v1/tenants/acme", headers=admin), 403)


async def test_key_secret_shown_once_hashed_at_rest_and_never_listed(
    client: Client, make_tenant: MakeTenant, app: Litestar
) -> None:
    admin = await make_tenant("acme", ("admin",))
    created = (await client.post("/v1/keys", json={"name": "ci", "scopes": ["jobs"]}, headers=admin)).json()
    secret = created["secret"]
    assert secret.startswith(f"apl_{created['id']}_")
    listing = await client.get("/v1/keys", headers=admin)
    assert secret not in listing.text and "secret" not in listing.text
    assert created["id"] in listing.text
    rows = await app.state.ctx.db.fetchall("SELECT * FROM api_keys")
    dumped = msgspec.json.encode([dict(r) for r in rows]).decode()
    assert secret not in dumped and secret.split("_", 2)[2] not in dumped


async def test_revocation_is_effective_on_the_next_request(client: Client, make_tenant: MakeTenant) -> None:
    admin = await make_tenant("acme", ("admin",))
    created = (await client.post("/v1/keys", json={"name": "x", "scopes": ["storage"]}, headers=admin)).json()
    key = {"Authorization": f"Bearer {created['secret']}"}
    assert (await client.get("/v1/whoami", headers=key)).status_code == 200
    assert (await client.delete(f"/v1/keys/{created['id']}", headers=admin)).status_code == 204
    assert_problem(await client.get("/v1/whoami", headers=key), 401)
    assert_problem(await client.delete(f"/v1/keys/{created['id']}", headers=admin), 404)


async def test_deleting_a_tenant_kills_its_keys(client: Client, make_tenant: MakeTenant) -> None:
    key = await make_tenant("doomed", ("storage",))
    assert (await client.delete("/v1/tenants/doomed", headers=ROOT)).status_code == 204
    assert_problem(await client.get("/v1/whoami", headers=key), 401)


async def test_secrets_are_never_logged(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    created = (await client.post("/v1/keys", json={"name": "x", "scopes": ["storage"]}, headers=ROOT)).json()
    await client.get("/v1/whoami", headers={"Authorization": f"Bearer {created['secret']}"})
    await client.get("/v1/whoami?token=sekrit-query-token", headers={"Authorization": "Bearer wrong"})
    # httpx is the test client's own logger (it prints the URL it was asked for); skip it.
    logged = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("httpx"))
    assert created["secret"] not in logged and "sekrit-query-token" not in logged
    assert ROOT["Authorization"].split()[1] not in logged
