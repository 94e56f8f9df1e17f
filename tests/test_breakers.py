"""Circuit breakers shared by every node through Redis (issue 12: no state a second node needs in one process)."""

from __future__ import annotations

from typing import Any

import pytest
from purgatory.domain.model import OpenedState
from redis import asyncio as aioredis

from appliance.core.breakers import BREAKER_PREFIX, close_breakers, make_breakers
from appliance.jobs import Job
from appliance.jobs.http import HttpJobs
from appliance.payments import ChargeRequest, ProviderUnavailable
from appliance.payments.stripe_provider import StripeProvider
from tests.peers import RedisPeer, StripePeer, free_port


class _FixedSecret:
    """The part of the job service an ``http`` job reads when its payload names no secret."""

    async def webhook_secret(self, tenant: str) -> str:
        return "whsec_test"


def _job(url: str) -> Job:
    return Job(
        id="j1",
        tenant="acme",
        queue="q",
        type="http",
        payload={"url": url, "body": {}},
        attempt=1,
        max_attempts=1,
    )


async def _flush(redis_peer: RedisPeer) -> None:
    client = aioredis.Redis.from_url(redis_peer.url)
    try:
        keys = [key async for key in client.scan_iter(f"{BREAKER_PREFIX}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def test_a_breaker_opened_on_one_node_is_open_on_another(redis_peer: RedisPeer) -> None:
    await _flush(redis_peer)
    node_a = make_breakers(redis_peer.url, threshold=2, ttl_s=30)
    node_b = make_breakers(redis_peer.url, threshold=2, ttl_s=30)
    try:
        for _ in range(2):
            with pytest.raises(ConnectionError):
                async with await node_a.get_breaker("hooks.example"):
                    raise ConnectionError("down")
        with pytest.raises(OpenedState):
            async with await node_b.get_breaker("hooks.example"):
                pytest.fail("node B called a host whose circuit node A opened")
        async with await node_b.get_breaker("other.example"):
            pass  # circuits are per name
    finally:
        await close_breakers(node_a)
        await close_breakers(node_b)


async def test_without_redis_each_process_keeps_its_own_breakers() -> None:
    node_a = make_breakers("", threshold=1, ttl_s=30)
    node_b = make_breakers("", threshold=1, ttl_s=30)
    with pytest.raises(ConnectionError):
        async with await node_a.get_breaker("hooks.example"):
            raise ConnectionError("down")
    with pytest.raises(OpenedState):
        async with await node_a.get_breaker("hooks.example"):
            pass
    async with await node_b.get_breaker("hooks.example"):
        pass
    await close_breakers(node_a)


async def test_webhook_failures_on_one_node_pause_the_host_on_all(redis_peer: RedisPeer) -> None:
    await _flush(redis_peer)
    service: Any = _FixedSecret()
    node_a = HttpJobs(service, threshold=2, redis_url=redis_peer.url)
    node_b = HttpJobs(service, threshold=2, redis_url=redis_peer.url)
    await node_a.start()
    await node_b.start()
    url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    try:
        for _ in range(2):
            with pytest.raises(ConnectionError, match="failed"):
                await node_a.run(_job(url))
        with pytest.raises(ConnectionError, match="circuit is open"):
            await node_b.run(_job(url))
    finally:
        await node_a.close()
        await node_b.close()


async def test_a_stripe_outage_seen_by_one_node_opens_the_circuit_for_all(
    redis_peer: RedisPeer, stripe_peer: StripePeer
) -> None:
    await _flush(redis_peer)
    closed = f"http://127.0.0.1:{free_port()}"
    options: dict[str, Any] = {
        "api_key": stripe_peer.api_key,
        "webhook_secret": "whsec_x",
        "api_base": closed,
    }
    node_a = StripeProvider(
        **options, timeout_s=2.0, attempts=1, breaker_threshold=2, redis_url=redis_peer.url
    )
    node_b = StripeProvider(
        **options, timeout_s=2.0, attempts=1, breaker_threshold=2, redis_url=redis_peer.url
    )
    try:
        for _ in range(2):
            with pytest.raises(ProviderUnavailable, match="could not be reached"):
                await node_a.create_payment(ChargeRequest(amount=1, currency="eur"), "breaker-shared")
        with pytest.raises(ProviderUnavailable, match="circuit breaker open"):
            await node_b.ping()
    finally:
        await node_a.close()
        await node_b.close()


async def test_redis_down_makes_stripe_unavailable_not_an_error(stripe_peer: StripePeer) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"
    provider = StripeProvider(
        api_key=stripe_peer.api_key, webhook_secret="whsec_x", api_base=stripe_peer.url, redis_url=down
    )
    try:
        with pytest.raises(ProviderUnavailable, match="APPLIANCE_REDIS_URL"):
            await provider.ping()
    finally:
        await provider.close()
