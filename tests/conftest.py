"""Shared fixtures: settings on a temp data dir, the app with its lifespan, tenants and keys.

Real peers (redis-server, MinIO, stripe-mock, SMTP, Chromium) come from tests/peers.py.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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

# APPLIANCE_TEST_DATABASE=postgres runs the tests on PostgreSQL metadata: every test gets a fresh
# database on the session's PostgreSQL peer (copied from a migrated template), and make_settings
# points at it. APPLIANCE_TEST_DATABASE=shards keeps the directory in the data dir and places every
# tenant but ``default`` on one of two SQLite shards beside it (APPLIANCE_DATABASE_SHARDS).
# The default, sqlite, keeps the metadata in each test's data dir.
TEST_DATABASE = os.environ.get("APPLIANCE_TEST_DATABASE", "sqlite")
TEST_SHARDS = "s1=shard-1.db,s2=shard-2.db"
_metadata = {"url": ""}


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for tests: a temp data dir, a known root key, rate limits off unless asked for."""
    base: dict[str, Any] = {
        "data_dir": str(data_dir),
        "root_key": ROOT_KEY,
        "rate_limit_per_key": "",
        "rate_limit_per_ip": "",
    }
    if _metadata["url"]:
        base["database_url"] = _metadata["url"]
    if TEST_DATABASE == "shards":
        base["database_shards"] = TEST_SHARDS
    base.update(overrides)
    return load_settings(env={}, **base)


@pytest.fixture(scope="session")
def postgres_template(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database on the PostgreSQL peer with every migration applied: the template of the test databases."""
    from appliance.app import assemble

    peer = request.getfixturevalue("postgres_peer")
    name = "appliance_template"
    url = peer.create_database(name)
    ctx, _ = assemble(make_settings(tmp_path_factory.mktemp("template"), database_url=url), role="cli")

    async def migrate() -> None:
        async with ctx.prepared():
            pass

    asyncio.run(migrate())
    return name


@pytest.fixture(autouse=True)
def metadata_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """The test's metadata database URL on PostgreSQL (``APPLIANCE_TEST_DATABASE=postgres``), else ``""``."""
    if TEST_DATABASE != "postgres":
        yield ""
        return
    peer = request.getfixturevalue("postgres_peer")
    template = request.getfixturevalue("postgres_template")
    name = f"t_{uuid.uuid4().hex[:16]}"
    _metadata["url"] = peer.create_database(name, template)
    try:
        yield _metadata["url"]
    finally:
        _metadata["url"] = ""
        peer.drop_database(name)


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
