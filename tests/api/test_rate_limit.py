"""Rate limits per key and per client address: 429 problem+json with Retry-After."""

from __future__ import annotations

from pathlib import Path

import pytest
from litestar.stores.memory import MemoryStore
from litestar.testing import AsyncTestClient

from appliance.app import create_app
from tests.conftest import ROOT, make_settings


async def test_per_key_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, rate_limit_per_key="3/minute", rate_limit_per_ip="100/minute"))
    async with AsyncTestClient(app) as client:
        statuses = [(await client.get("/v1/whoami", headers=ROOT)).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        limited = await client.get("/v1/whoami", headers=ROOT)
        assert limited.headers["content-type"].startswith("application/problem+json")
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["status"] == 429 and "Retry-After" in limited.json()["detail"]
        # Another key has its own budget; health checks are never limited.
        other = await client.get("/v1/whoami", headers={"Authorization": "Bearer another"})
        assert other.status_code == 401
        health = [(await client.get("/healthz")).status_code for _ in range(5)]
        assert health == [200] * 5


async def test_per_address_limit_covers_unauthenticated_requests(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, rate_limit_per_key="", rate_limit_per_ip="2/minute"))
    async with AsyncTestClient(app) as client:
        statuses = [(await client.get("/v1/whoami")).status_code for _ in range(3)]
        assert statuses == [401, 401, 429]


class UnreachableStore(MemoryStore):
    """A counters store whose server is down (as Redis is when it restarts)."""

    async def get(self, key: str, renew_for: int | None = None) -> bytes | None:
        raise ConnectionError("connection refused")

    async def set(self, key: str, value: str | bytes, expires_in: int | None = None) -> None:
        raise ConnectionError("connection refused")


async def test_an_unreachable_counter_store_lets_requests_through(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(make_settings(tmp_path, rate_limit_per_key="3/minute", rate_limit_per_ip="3/minute"))
    app.stores.register("rate_limit", UnreachableStore(), allow_override=True)
    async with AsyncTestClient(app) as client:
        statuses = [(await client.get("/v1/whoami", headers=ROOT)).status_code for _ in range(5)]
    assert statuses == [200] * 5
    assert "requests are not being limited" in caplog.text
