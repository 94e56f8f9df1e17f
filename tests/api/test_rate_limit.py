"""Rate limits per key and per client address: 429 problem+json with Retry-After."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar, get
from litestar.testing import AsyncTestClient

from appliance.app import create_app
from appliance.core.ratelimit import RateLimitMiddleware, RedisCounter, Rule
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


async def test_an_unreachable_counter_store_lets_requests_through(caplog: pytest.LogCaptureFixture) -> None:
    @get("/v1/ping", sync_to_thread=False)
    def ping() -> str:
        return "pong"

    closed = RedisCounter("redis://127.0.0.1:1/0")  # nothing listens there: the store is down
    per_key, per_ip = Rule("key", 1, 60), Rule("address", 1, 60)
    limiter = [lambda app: RateLimitMiddleware(app, closed, per_key, per_ip)]
    app = Litestar([ping], middleware=limiter, logging_config=None)  # keep pytest's log capture
    async with AsyncTestClient(app) as client:
        statuses = [(await client.get("/v1/ping", headers=ROOT)).status_code for _ in range(3)]
    await closed.close()
    assert statuses == [200, 200, 200]
    assert "requests are not being limited" in caplog.text


async def test_limits_hold_across_app_instances_sharing_redis(tmp_path: Path, redis_peer: Any) -> None:
    # Two nodes: one Redis counter each, as two appliance processes would have.
    per_key = Rule("key", 3, 60)
    counters = [RedisCounter(redis_peer.url), RedisCounter(redis_peer.url)]
    key = f"node-test-{time.time()}"
    counts = [await counters[i % 2].hit(key, per_key.window_s) for i in range(4)]
    for counter in counters:
        await counter.close()
    assert counts == [1, 2, 3, 4]  # exact across nodes: INCR, not read-then-write
