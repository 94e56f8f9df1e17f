"""Shared fixtures: settings on a temp data dir, the app with its lifespan, tenants and keys.

Real peers (redis-server, MinIO, stripe-mock, SMTP, Chromium) come from tests/peers.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from appliance.app import create_app
from appliance.config import Settings, load_settings

pytest_plugins = ["tests.peers", "tests.aws_peers"]

ROOT_KEY = "test-root-key-0123456789abcdef"
ROOT = {"Authorization": f"Bearer {ROOT_KEY}"}

Headers = dict[str, str]
MakeTenant = Callable[..., Awaitable[Headers]]


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for tests: a temp data dir, a known root key, rate limits off unless asked for."""
    base: dict[str, Any] = {
        "data_dir": str(data_dir),
        "root_key": ROOT_KEY,
        "rate_limit_per_key": "",
        "rate_limit_per_ip": "",
    }
    base.update(overrides)
    return load_settings(env={}, **base)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
def app(settings: Settings) -> Litestar:
    return create_app(settings)


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app, base_url="http://appliance.test") as test_client:
        yield test_client


@pytest.fixture
def make_tenant(client: AsyncTestClient[Litestar]) -> MakeTenant:
    """Create a tenant (unless it exists) and a key with the given scopes; returns its auth headers."""

    async def make(tenant: str, scopes: tuple[str, ...] = ("admin",), name: str = "test") -> Headers:
        created = await client.post("/v1/tenants", json={"id": tenant, "name": tenant}, headers=ROOT)
        assert created.status_code in (201, 409), created.text
        key = await client.post(
            "/v1/keys", json={"name": name, "scopes": list(scopes)}, headers={**ROOT, "X-Tenant-ID": tenant}
        )
        assert key.status_code == 201, key.text
        return {"Authorization": f"Bearer {key.json()['secret']}"}

    return make
