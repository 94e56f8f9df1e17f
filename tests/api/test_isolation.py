"""The tenant-isolation matrix: every endpoint, called with another tenant's key, on tenant A's things.

Each row is a scenario: how to create something in tenant A (``setup``), the request tenant B makes
(``path`` may use ids from setup), the statuses B may get (403 or 404, or 2xx for listings that must
simply not contain A's things), and text that must never appear in B's response. Capabilities add
their rows to ``SCENARIOS``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.conftest import MakeTenant

Client = AsyncTestClient[Litestar]
Setup = Callable[[Client, dict[str, str]], Awaitable[dict[str, str]]]


async def _no_setup(client: Client, headers: dict[str, str]) -> dict[str, str]:
    return {}


async def _a_key(client: Client, headers: dict[str, str]) -> dict[str, str]:
    created = (
        await client.post("/v1/keys", json={"name": "a-secret-key", "scopes": ["storage"]}, headers=headers)
    ).json()
    return {"key_id": created["id"], "marker": created["id"]}


async def _hello(client: Client, headers: dict[str, str]) -> dict[str, str]:
    await client.get("/v1/hello", headers=headers)
    return {"marker": "tenant-a"}


@dataclass
class Scenario:
    name: str
    method: str
    path: str
    setup: Setup = _no_setup
    body: Any = None
    allowed: tuple[int, ...] = (403, 404)
    forbidden_text: tuple[str, ...] = ("{marker}",)
    scopes: tuple[str, ...] = ("admin",)
    checks_after: list[tuple[str, str, int]] = field(default_factory=list)


SCENARIOS: list[Scenario] = [
    Scenario("list keys", "GET", "/v1/keys", _a_key, allowed=(200,)),
    Scenario(
        "revoke A's key",
        "DELETE",
        "/v1/keys/{key_id}",
        _a_key,
        forbidden_text=(),  # the 404 may echo the id B itself sent
        checks_after=[("GET", "/v1/keys", 200)],
    ),
    Scenario("whoami", "GET", "/v1/whoami", _hello, allowed=(200,)),
    Scenario("list tenants", "GET", "/v1/tenants", allowed=(403,)),
    Scenario("read tenant A", "GET", "/v1/tenants/tenant-a", allowed=(403,)),
    Scenario("delete tenant A", "DELETE", "/v1/tenants/tenant-a", allowed=(403,)),
    Scenario("act as tenant A", "GET", "/v1/whoami", allowed=(403,), body={"X-Tenant-ID": "tenant-a"}),
    Scenario("plugin route", "GET", "/v1/hello", _hello, allowed=(200,), forbidden_text=("tenant-a",)),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_another_tenant_never_sees_or_touches_tenant_a(
    client: Client, make_tenant: MakeTenant, scenario: Scenario
) -> None:
    a = await make_tenant("tenant-a", scenario.scopes)
    b = await make_tenant("tenant-b", scenario.scopes)
    ids = await scenario.setup(client, a)
    headers = dict(b)
    body = scenario.body
    if isinstance(body, dict) and "X-Tenant-ID" in body:  # a header scenario, not a body
        headers.update(body)
        body = None
    response = await client.request(scenario.method, scenario.path.format(**ids), json=body, headers=headers)
    assert response.status_code in scenario.allowed, response.text
    for text in scenario.forbidden_text:
        needle = text.format(**ids) if ids or "{" not in text else None
        if needle:
            assert needle not in response.text, f"{scenario.name}: tenant B saw {needle!r}"
    for method, path, status in scenario.checks_after:
        # Tenant A's thing is untouched.
        after = await client.request(method, path, headers=a)
        assert after.status_code == status
        if "key_id" in ids:
            assert ids["key_id"] in after.text
