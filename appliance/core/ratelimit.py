"""Rate limits per API key and per client address: fixed windows, one counter increment per request.

Counters live in process memory on one node, or in Redis when ``APPLIANCE_REDIS_URL`` is set, where
``INCR`` makes them exact across nodes (a read-then-write, as Litestar's stock middleware does, lets
concurrent requests on several nodes slip past the limit, and it re-encodes one timestamp per request
of the window on every request, which halved throughput here). Over the limit -> 429 problem+json
with ``Retry-After``; every limited response carries ``RateLimit-Limit/Remaining/Reset``. If the
counters' store is unreachable, requests are let through and the outage is logged once a minute:
limits are a guard, not a reason to take the API down.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.exceptions import TooManyRequestsException
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from redis.asyncio import Redis
from redis.exceptions import RedisError

from appliance.core.context import Context

__all__ = ["MemoryCounter", "RateLimitMiddleware", "RedisCounter", "Rule", "rate_limit_middleware"]

log = logging.getLogger("appliance.ratelimit")

_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_EXCLUDE = re.compile(r"^/(healthz|readyz|metrics)$|^/(admin|schema)(/|$)")


class Counter(Protocol):
    async def hit(self, key: str, window_s: int) -> int:
        """Count one request for ``key`` in the current window; return the window's count so far."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class MemoryCounter:
    """Counters of one process; expired windows are dropped as new ones start."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._window_end: dict[str, float] = {}

    async def hit(self, key: str, window_s: int) -> int:
        now = time.time()
        window = f"{key}:{int(now // window_s)}"
        if len(self._counts) > 100_000:  # bound memory: forget windows that are over
            self._forget_before(now)
        self._window_end.setdefault(window, (int(now // window_s) + 1) * window_s)
        self._counts[window] = count = self._counts.get(window, 0) + 1
        return count

    async def close(self) -> None:
        self._counts.clear()
        self._window_end.clear()

    def _forget_before(self, now: float) -> None:
        for window in [w for w, end in self._window_end.items() if end <= now]:
            del self._window_end[window], self._counts[window]


class RedisCounter:
    """Counters shared by every node: INCR on a key per window, expiring with the window."""

    def __init__(self, url: str) -> None:
        self._redis = Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)

    async def hit(self, key: str, window_s: int) -> int:
        window = f"appliance:ratelimit:{key}:{int(time.time() // window_s)}"
        async with self._redis.pipeline(transaction=True) as pipe:
            count, _ = await pipe.incr(window).expire(window, window_s + 1).execute()
        return int(count)

    async def close(self) -> None:
        await self._redis.aclose()


@dataclass(frozen=True)
class Rule:
    name: str
    limit: int
    window_s: int


_last_warning = 0.0


def _store_down(exc: BaseException) -> None:
    global _last_warning
    now = time.monotonic()
    if now - _last_warning > 60:
        _last_warning = now
        log.warning("rate-limit store unreachable (%s): requests are not being limited", exc)


def _identity(scope: Scope) -> tuple[str | None, str]:
    """(digest of the bearer key or None, client address). The raw key is never a counter name."""
    key = None
    for name, value in scope["headers"]:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            key = hashlib.sha256(value).hexdigest()[:32]
            break
    client = scope.get("client")
    return key, client[0] if client else "unknown"


class RateLimitMiddleware:
    """Checks the per-key rule (requests with a bearer key) and the per-address rule (all requests)."""

    def __init__(self, app: ASGIApp, counter: Counter, per_key: Rule | None, per_ip: Rule | None) -> None:
        self.app, self.counter, self.per_key, self.per_ip = app, counter, per_key, per_ip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or _EXCLUDE.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        key, address = _identity(scope)
        checks = [(self.per_key, key), (self.per_ip, address)]
        shown: tuple[Rule, int] | None = None
        for rule, who in checks:
            if rule is None or who is None:
                continue
            try:
                count = await self.counter.hit(f"{rule.name}:{who}", rule.window_s)
            except (RedisError, OSError) as exc:
                _store_down(exc)
                continue
            headers = _headers(rule, count)
            if count > rule.limit:
                raise TooManyRequestsException(
                    detail=f"rate limit of {rule.limit} requests per {rule.window_s}s per {rule.name} exceeded:"
                    " retry after the number of seconds in Retry-After",
                    headers={**headers, "Retry-After": headers["RateLimit-Reset"]},
                )
            shown = shown or (rule, count)
        if shown is None:
            await self.app(scope, receive, send)
            return
        extra = _headers(*shown)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                target = MutableScopeHeaders.from_message(message)
                for name, value in extra.items():
                    target[name] = value
            await send(message)

        await self.app(scope, receive, with_headers)


def _headers(rule: Rule, count: int) -> dict[str, str]:
    reset = rule.window_s - int(time.time()) % rule.window_s
    return {
        "RateLimit-Limit": str(rule.limit),
        "RateLimit-Remaining": str(max(0, rule.limit - count)),
        "RateLimit-Reset": str(max(1, reset)),
        "RateLimit-Policy": f"{rule.limit}; w={rule.window_s}",
    }


def _rule(name: str, rate: tuple[str, int] | None) -> Rule | None:
    return Rule(name=name, limit=rate[1], window_s=_SECONDS[rate[0]]) if rate else None


def rate_limit_middleware(ctx: Context) -> list[Callable[[ASGIApp], ASGIApp]]:
    """The configured limiter as a Litestar middleware factory (nothing when both limits are off)."""
    settings = ctx.settings
    per_key = _rule("key", settings.rate("rate_limit_per_key"))
    per_ip = _rule("address", settings.rate("rate_limit_per_ip"))
    if per_key is None and per_ip is None:
        return []
    counter: Counter = RedisCounter(settings.redis_url) if settings.redis_url else MemoryCounter()
    ctx.on_shutdown(counter.close)

    def factory(app: ASGIApp) -> ASGIApp:  # Litestar passes the next app as ``app=``
        return RateLimitMiddleware(app, counter, per_key, per_ip)

    return [factory]
