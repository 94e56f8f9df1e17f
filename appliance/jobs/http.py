"""The built-in ``http`` job type: POST ``payload.body`` as JSON to ``payload.url``, signed.

``Appliance-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``, with the
secret from ``payload.secret`` or the tenant's webhook secret. 5xx, 408, 429, timeouts and connection
errors are retried with the job's backoff; any other 4xx fails the job for good. A circuit breaker per
target host stops hammering a host that keeps failing (its jobs retry later instead); with Redis
configured, every node shares the breakers (:mod:`appliance.core.breakers`).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

import httpx
import msgspec
from purgatory.domain.model import OpenedState

from appliance import __version__
from appliance.core.breakers import close_breakers, make_breakers
from appliance.jobs import Job, PermanentJobError

if TYPE_CHECKING:
    from appliance.jobs.service import JobService

__all__ = ["HttpJobs", "HttpPayload", "sign", "verify"]

SIGNATURE_HEADER = "Appliance-Signature"
RETRYABLE_4XX = {408, 429}


class HttpPayload(msgspec.Struct, forbid_unknown_fields=True):
    url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s/]+", max_length=2048)]
    body: Any = None
    secret: Annotated[str, msgspec.Meta(min_length=1, max_length=512)] | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``Appliance-Signature`` header value for ``body``."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify(secret: str, body: bytes, header: str, tolerance_s: float = 300) -> bool:
    """Check a signature header the way a receiver should (constant time, bounded clock skew)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - t) > tolerance_s:
        return False
    expected = sign(secret, body, t).split(",v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def parse_payload(payload: dict[str, Any]) -> HttpPayload:
    """Validate an ``http`` job's payload; the error says what is wrong."""
    try:
        return msgspec.convert(payload, HttpPayload)
    except msgspec.ValidationError as exc:
        raise PermanentJobError(f"invalid http job payload: {exc}") from None


class HttpJobs:
    """The ``http`` handler with its HTTP client and circuit breakers (one per target host)."""

    def __init__(
        self, service: JobService, threshold: int = 5, ttl_s: float = 30, redis_url: str = ""
    ) -> None:
        self.service = service
        self.client: httpx.AsyncClient | None = None
        # Shared through Redis when configured: one node's failures to a host open its circuit on all.
        self.breakers = make_breakers(
            redis_url, threshold=threshold, ttl_s=ttl_s, exclude=[PermanentJobError]
        )

    async def start(self) -> None:
        self.client = httpx.AsyncClient(
            follow_redirects=False, headers={"User-Agent": f"appliance-webhooks/{__version__}"}
        )

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        await close_breakers(self.breakers)

    async def run(self, job: Job) -> dict[str, Any]:
        payload = parse_payload(job.payload)
        secret = payload.secret or await self.service.webhook_secret(job.tenant)
        raw = msgspec.json.encode(payload.body)
        headers = {
            **payload.headers,
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(secret, raw),
            "Appliance-Job-Id": job.id,
            "Appliance-Attempt": str(job.attempt),
        }
        host = urlsplit(payload.url).netloc
        try:
            async with await self.breakers.get_breaker(host):
                response = await self._client().post(
                    payload.url, content=raw, headers=headers, timeout=min(payload.timeout_s, job.timeout_s)
                )
                _check(payload.url, response)
        except OpenedState:
            raise ConnectionError(f"{host} failed repeatedly; its circuit is open, retrying later") from None
        except httpx.TimeoutException:
            raise TimeoutError(f"POST {payload.url} timed out") from None
        except httpx.TransportError as exc:
            raise ConnectionError(f"POST {payload.url} failed: {type(exc).__name__}: {exc}") from None
        return {"status": response.status_code}

    def _client(self) -> httpx.AsyncClient:
        if self.client is None:
            self.client = httpx.AsyncClient(follow_redirects=False)
        return self.client


def _check(url: str, response: httpx.Response) -> None:
    status = response.status_code
    if status < 400:
        return
    summary = f"POST {url} answered {status}: {response.text[:200]}"
    if status >= 500 or status in RETRYABLE_4XX:
        raise RuntimeError(summary)
    raise PermanentJobError(summary)
