"""Rate limits per API key and per client address, on Litestar's rate-limit middleware.

Counters live in the app's ``rate_limit`` store: memory on one process, Redis when
``APPLIANCE_REDIS_URL`` is set, so the limit holds across nodes. Over the limit -> 429
problem+json with ``Retry-After``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, cast

import msgspec
from litestar import Request
from litestar.exceptions import TooManyRequestsException
from litestar.middleware.rate_limit import (
    DURATION_VALUES,
    CacheObject,
    DurationUnit,
    RateLimitConfig,
    RateLimitMiddleware,
)
from litestar.stores.base import Store
from litestar.types import Receive, Scope, Send
from redis.exceptions import RedisError

from appliance.config import Settings

__all__ = ["rate_limit_middlewares"]

log = logging.getLogger("appliance.ratelimit")

_EXCLUDE = ["^/healthz$", "^/readyz$", "^/admin", "^/schema"]


def _bearer_identity(request: Request[Any, Any, Any]) -> str:
    # The raw key is never a store key: a digest identifies it without revealing it.
    header = request.headers.get("authorization", "")
    return hashlib.sha256(header.encode()).hexdigest()[:32]


async def _has_bearer(request: Request[Any, Any, Any]) -> bool:
    return request.headers.get("authorization", "").lower().startswith("bearer ")


# The counters' store is Redis when configured. If it is unreachable, requests are let through
# (limits are a guard, not a reason to take the API down) and the outage is logged, at most once a minute.
_STORE_ERRORS = (OSError, ConnectionError, TimeoutError, RedisError)
_last_warning = 0.0


def _store_down(exc: BaseException) -> None:
    global _last_warning
    now = time.monotonic()
    if now - _last_warning > 60:
        _last_warning = now
        log.warning("rate-limit store unreachable (%s): requests are not being limited", exc)


class _CountingRateLimit(RateLimitMiddleware):
    """Litestar's middleware, storing a count per window instead of a timestamp per request.

    The stock middleware keeps a JSON list with one entry per request in the window and re-encodes
    it on every request: O(limit) work per request, which halved throughput at realistic limits.
    Only ``len()`` of that history is ever used, so a count (served as a ``range``) is equivalent.
    """

    async def retrieve_cached_history(self, key: str, store: Store) -> CacheObject:
        duration = DURATION_VALUES[self.unit]
        now = int(time.time())
        try:
            cached = await store.get(key)
        except _STORE_ERRORS as exc:
            _store_down(exc)
            return CacheObject(history=[], reset=now + duration)
        if cached:
            count, reset = msgspec.json.decode(cached, type=tuple[int, int])
            if reset > now:
                return CacheObject(history=range(count), reset=reset)  # type: ignore[arg-type]
        return CacheObject(history=[], reset=now + duration)

    async def set_cached_history(self, key: str, cache_object: CacheObject, store: Store) -> None:
        count = len(cache_object.history) + 1
        cache_object.history = range(count)  # type: ignore[assignment]
        expires_in = max(1, cache_object.reset - int(time.time()))
        try:
            await store.set(key, msgspec.json.encode((count, cache_object.reset)), expires_in=expires_in)
        except _STORE_ERRORS as exc:
            _store_down(exc)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except TooManyRequestsException as exc:
            raise _with_retry_after(exc) from None


class PerKeyRateLimit(_CountingRateLimit):
    """Limits each API key (its own class name gives it counters apart from the per-address limit)."""


class PerAddressRateLimit(_CountingRateLimit):
    """Limits each client address."""


def _with_retry_after(exc: TooManyRequestsException) -> TooManyRequestsException:
    headers = dict(exc.headers or {})
    headers["Retry-After"] = str(max(1, int(headers.get("RateLimit-Reset", "1") or 1)))
    return TooManyRequestsException(
        detail="rate limit exceeded: retry after the number of seconds in Retry-After", headers=headers
    )


def rate_limit_middlewares(settings: Settings) -> list[Any]:
    """The configured rate-limit middlewares (none when both limits are off)."""
    out: list[Any] = []
    per_key = settings.rate("rate_limit_per_key")
    if per_key:
        out.append(
            RateLimitConfig(
                rate_limit=(cast(DurationUnit, per_key[0]), per_key[1]),
                exclude=_EXCLUDE,
                identifier_for_request=_bearer_identity,
                check_throttle_handler=_has_bearer,
                middleware_class=PerKeyRateLimit,
            ).middleware
        )
    per_ip = settings.rate("rate_limit_per_ip")
    if per_ip:
        out.append(
            RateLimitConfig(
                rate_limit=(cast(DurationUnit, per_ip[0]), per_ip[1]),
                exclude=_EXCLUDE,
                middleware_class=PerAddressRateLimit,
            ).middleware
        )
    return out
