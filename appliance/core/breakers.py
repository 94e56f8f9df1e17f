"""Circuit breakers for outbound calls, shared by every node through Redis when it is configured.

A breaker opens after ``threshold`` consecutive failures and lets no call through for ``ttl_s``
seconds. Kept in one process, each node of a cluster would have to learn about an outage on its own,
hammering the failing server N times as hard; with ``APPLIANCE_REDIS_URL`` set, the breakers' state
lives in Redis (purgatory's Redis unit of work), so one node's failures open the circuit for all.
"""

from __future__ import annotations

from typing import Any

from purgatory import AsyncCircuitBreakerFactory, AsyncRedisUnitOfWork
from purgatory.service._async.repository import AsyncRedisRepository

__all__ = ["BREAKER_PREFIX", "close_breakers", "make_breakers"]

BREAKER_PREFIX = "appliance:breaker:"
"""Prefix of the Redis keys that hold breaker state (one key per circuit, plus its failure count)."""


def make_breakers(
    redis_url: str, *, threshold: int, ttl_s: float, exclude: Any = None
) -> AsyncCircuitBreakerFactory:
    """A breaker factory: state in Redis when ``redis_url`` is set, in this process otherwise."""
    uow = None
    if redis_url:
        uow = AsyncRedisUnitOfWork(redis_url)
        repository: AsyncRedisRepository = uow.contexts  # type: ignore[assignment]  # typed as the base
        repository.prefix = BREAKER_PREFIX
    return AsyncCircuitBreakerFactory(
        default_threshold=threshold, default_ttl=ttl_s, exclude=exclude, uow=uow
    )


async def close_breakers(factory: AsyncCircuitBreakerFactory) -> None:
    """Release the Redis connections of a factory made by :func:`make_breakers` (no-op in process)."""
    repository = factory.uow.contexts if isinstance(factory.uow, AsyncRedisUnitOfWork) else None
    if isinstance(repository, AsyncRedisRepository):
        await repository.redis.aclose()
