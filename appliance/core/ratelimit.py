"""Rate limits per API key and per client address, on Litestar's rate-limit middleware.

Counters live in the app's ``rate_limit`` store: memory on one process, Redis when
``APPLIANCE_REDIS_URL`` is set, so the limit holds across nodes. Over the limit -> 429
problem+json with ``Retry-After``.
"""

from __future__ import annotations

import hashlib
from typing import Any, cast

from litestar import Request
from litestar.exceptions import TooManyRequestsException
from litestar.middleware.rate_limit import DurationUnit, RateLimitConfig, RateLimitMiddleware
from litestar.types import Receive, Scope, Send

from appliance.config import Settings

__all__ = ["rate_limit_middlewares"]

_EXCLUDE = ["^/healthz$", "^/readyz$", "^/admin", "^/schema"]


def _bearer_identity(request: Request[Any, Any, Any]) -> str:
    # The raw key is never a store key: a digest identifies it without revealing it.
    header = request.headers.get("authorization", "")
    return hashlib.sha256(header.encode()).hexdigest()[:32]


async def _has_bearer(request: Request[Any, Any, Any]) -> bool:
    return request.headers.get("authorization", "").lower().startswith("bearer ")


class PerKeyRateLimit(RateLimitMiddleware):
    """Limits each API key (distinct class name -> distinct counters from the per-address limit)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except TooManyRequestsException as exc:
            raise _with_retry_after(exc) from None


class PerAddressRateLimit(RateLimitMiddleware):
    """Limits each client address."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except TooManyRequestsException as exc:
            raise _with_retry_after(exc) from None


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
