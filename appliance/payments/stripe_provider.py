"""The Stripe adapter: stripe-python's async ``StripeClient`` over httpx, with retries and a breaker.

Every call runs inside a purgatory circuit breaker (its state in Redis, shared by every node, when
``APPLIANCE_REDIS_URL`` is set; in this process otherwise) and is retried by stamina on network errors, timeouts, 429 and 5xx.
Retries are safe because each call carries an idempotency key, which Stripe dedupes for 24 hours.
Webhook signatures are checked here, on the raw bytes, per Stripe's documented ``v1`` scheme.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import msgspec
import stamina
import stripe
from purgatory.domain.model import OpenedState
from redis.exceptions import RedisError

from appliance.core.breakers import close_breakers, make_breakers
from appliance.payments import (
    ChargeRequest,
    InvalidSignature,
    PaymentDeclined,
    ProviderBusy,
    ProviderEvent,
    ProviderPayment,
    ProviderRefund,
    ProviderRejected,
    ProviderUnavailable,
    RefundRequest,
)

if TYPE_CHECKING:
    from stripe.params import PaymentIntentCreateParams, RefundCreateParams

__all__ = ["StripeProvider", "sign_webhook"]

T = TypeVar("T")

WEBHOOK_TOLERANCE_S = 300
DEFAULT_BASE = "https://api.stripe.com"
_CIRCUIT = "stripe"


class _Intent(msgspec.Struct):
    id: str
    status: str
    amount: int
    currency: str
    amount_received: int = 0
    metadata: dict[str, str] = {}
    last_payment_error: dict[str, Any] | None = None
    client_secret: str | None = None


class _Refund(msgspec.Struct):
    id: str
    status: str
    amount: int
    payment_intent: str | None = None
    reason: str | None = None
    metadata: dict[str, str] = {}


class _Data(msgspec.Struct):
    object: dict[str, Any]


class _Envelope(msgspec.Struct):
    id: str
    type: str
    data: _Data


def _is_outage(exc: Exception) -> bool:
    """Worth a retry and counted by the breaker: the request may not have reached Stripe, or it failed there."""
    if isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError):
        return True
    return isinstance(exc, stripe.StripeError) and (exc.http_status or 0) >= 500


def _is_retryable(exc: Exception) -> bool:
    """Outages, and 409: Stripe is still busy with an earlier request carrying the same idempotency key."""
    return _is_outage(exc) or (isinstance(exc, stripe.StripeError) and exc.http_status == 409)


def sign_webhook(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header for ``payload`` (what Stripe sends; used by tests and benchmarks)."""
    stamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def verify_signature(payload: bytes, header: str | None, secret: str, tolerance_s: int, now: float) -> None:
    """Check ``header`` against the raw ``payload``; raises :class:`InvalidSignature` saying what is wrong."""
    if not header:
        raise InvalidSignature("the Stripe-Signature header is missing")
    pairs = [part.strip().partition("=") for part in header.split(",")]
    stamps = [value for key, _, value in pairs if key == "t"]
    signatures = [value for key, _, value in pairs if key == "v1"]
    try:
        stamp = int(stamps[0])
    except (IndexError, ValueError):
        raise InvalidSignature("the Stripe-Signature header has no valid timestamp (t=...)") from None
    expected = sign_webhook(payload, secret, stamp).rpartition("v1=")[2].encode()
    if not any(hmac.compare_digest(expected, s.encode("latin-1", "replace")) for s in signatures):
        raise InvalidSignature(
            "the Stripe-Signature does not match the body: check APPLIANCE_STRIPE_WEBHOOK_SECRET"
        )
    if abs(now - stamp) > tolerance_s:
        raise InvalidSignature(
            f"the Stripe-Signature timestamp is {int(now - stamp)}s from now, outside the"
            f" {tolerance_s}s tolerance (a delayed or replayed delivery)"
        )


def _payment(data: dict[str, Any], failed: bool = False) -> ProviderPayment:
    intent = msgspec.convert(data, _Intent, strict=False)
    failure = (intent.last_payment_error or {}).get("message")
    return ProviderPayment(
        provider_id=intent.id,
        status="failed" if failed else intent.status,
        amount=intent.amount,
        currency=intent.currency,
        amount_captured=intent.amount_received,
        metadata=intent.metadata,
        failure=str(failure) if failure else None,
        client_secret=intent.client_secret,
    )


def _refund(data: dict[str, Any], payment_provider_id: str | None = None) -> ProviderRefund | None:
    refund = msgspec.convert(data, _Refund, strict=False)
    intent = refund.payment_intent or payment_provider_id
    if intent is None:
        return None  # a refund of a bare charge, not of a payment this ledger could know
    return ProviderRefund(
        provider_id=refund.id,
        payment_provider_id=intent,
        status=refund.status,
        amount=refund.amount,
        reason=refund.reason,
        metadata=refund.metadata,
    )


def translate_event(envelope: _Envelope) -> ProviderEvent:
    """The payment and refund snapshots a Stripe event carries (none for types the ledger ignores)."""
    obj, kind = envelope.data.object, envelope.type
    if kind.startswith("payment_intent."):
        payment = _payment(obj, failed=kind == "payment_intent.payment_failed")
        return ProviderEvent(id=envelope.id, type=kind, payment=payment)
    refunds: list[ProviderRefund | None] = []
    if obj.get("object") == "refund":
        refunds.append(_refund(obj))
    elif kind == "charge.refunded":
        listed = (obj.get("refunds") or {}).get("data") or []
        refunds.extend(_refund(item, obj.get("payment_intent")) for item in listed)
    return ProviderEvent(id=envelope.id, type=kind, refunds=[r for r in refunds if r is not None])


class _HTTPXClient(stripe.HTTPXClient):
    """stripe-python's httpx client, sending the form body as ``content=``.

    stripe passes it as ``data=<str>``, which httpx deprecates (a DeprecationWarning on every call).
    """

    def _get_request_args_kwargs(
        self, method: str, url: str, headers: Any, post_data: Any
    ) -> tuple[list[Any], dict[str, Any]]:
        args, kwargs = super()._get_request_args_kwargs(method, url, headers, post_data)
        data = kwargs.pop("data", None)
        if data:
            kwargs["content"] = data
        return args, kwargs


class StripeProvider:
    """:class:`~appliance.payments.PaymentProvider` on Stripe (or stripe-mock via ``api_base``)."""

    name = "stripe"

    def __init__(
        self,
        api_key: str,
        webhook_secret: str,
        api_base: str = "",
        timeout_s: float = 10.0,
        attempts: int = 3,
        breaker_threshold: int = 5,
        breaker_ttl_s: float = 30.0,
        redis_url: str = "",
    ) -> None:
        self.where = api_base or DEFAULT_BASE
        self._webhook_secret = webhook_secret
        self._attempts = attempts
        self._breaker_threshold = breaker_threshold
        self._breaker_ttl_s = breaker_ttl_s
        self._http = _HTTPXClient(timeout=timeout_s)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else {},
            http_client=self._http,
            max_network_retries=0,  # stamina retries, so the breaker sees one outcome per call
        )
        # Only outages trip the breaker: a declined card says nothing about Stripe's health.
        self._breakers = make_breakers(
            redis_url,
            threshold=breaker_threshold,
            ttl_s=breaker_ttl_s,
            exclude=[(stripe.StripeError, lambda exc: not _is_outage(exc))],
        )

    async def create_payment(self, request: ChargeRequest, idempotency_key: str) -> ProviderPayment:
        params: dict[str, Any] = {
            "amount": request.amount,
            "currency": request.currency,
            "metadata": dict(request.metadata),
        }
        if request.customer:
            params["customer"] = request.customer
        if request.payment_method:
            # Confirm server-side, without redirect-based methods: there is no browser to send back.
            params |= {"payment_method": request.payment_method, "confirm": True}
            params["automatic_payment_methods"] = {"enabled": True, "allow_redirects": "never"}
        intent = await self._call(
            lambda: self._client.v1.payment_intents.create_async(
                cast("PaymentIntentCreateParams", params), {"idempotency_key": idempotency_key}
            )
        )
        return _payment(intent.to_dict())

    async def refund(self, request: RefundRequest, idempotency_key: str) -> ProviderRefund:
        params: dict[str, Any] = {
            "payment_intent": request.payment_provider_id,
            "amount": request.amount,
            "metadata": dict(request.metadata),
        }
        if request.reason:
            params["reason"] = request.reason
        refund = await self._call(
            lambda: self._client.v1.refunds.create_async(
                cast("RefundCreateParams", params), {"idempotency_key": idempotency_key}
            )
        )
        translated = _refund(refund.to_dict(), request.payment_provider_id)
        assert translated is not None  # we passed the payment intent
        return translated

    async def ping(self) -> str:
        await self._call(lambda: self._client.v1.balance.retrieve_async())
        return self.where

    def parse_webhook(self, payload: bytes, signature: str | None) -> ProviderEvent:
        if not self._webhook_secret:
            raise ProviderUnavailable(
                "Stripe webhooks are not configured: set APPLIANCE_STRIPE_WEBHOOK_SECRET to the endpoint's"
                " signing secret (whsec_...)"
            )
        verify_signature(payload, signature, self._webhook_secret, WEBHOOK_TOLERANCE_S, time.time())
        try:
            envelope = msgspec.json.decode(payload, type=_Envelope)
            return translate_event(envelope)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ProviderRejected(f"the webhook body is not a Stripe event: {exc}") from None

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]
        await close_breakers(self._breakers)

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            async with await self._breakers.get_breaker(_CIRCUIT):
                return await self._retried(call)
        except OpenedState:
            raise ProviderUnavailable(
                f"Stripe is unavailable: {self._breaker_threshold} calls in a row failed, so calls are"
                f" paused for up to {self._breaker_ttl_s:g}s (circuit breaker open)"
            ) from None
        except stripe.StripeError as exc:
            raise self._translate(exc) from exc
        except RedisError as exc:
            # Retrying is safe: the call carries an idempotency key, whether or not it reached Stripe.
            raise ProviderUnavailable(
                f"the circuit breaker's state in Redis (APPLIANCE_REDIS_URL) is unreachable: {exc}"
            ) from None

    async def _retried(self, call: Callable[[], Awaitable[T]]) -> T:
        async for attempt in stamina.retry_context(
            on=_is_retryable, attempts=self._attempts, wait_initial=0.05, wait_max=1.0, wait_jitter=0.05
        ):
            with attempt:
                return await call()
        raise AssertionError("stamina either returns or raises")  # pragma: no cover

    def _translate(self, exc: stripe.StripeError) -> Exception:
        message = exc.user_message or str(exc)
        if isinstance(exc, stripe.CardError):
            body = exc.json_body.get("error") if isinstance(exc.json_body, dict) else None
            body = body if isinstance(body, dict) else {}
            intent = body.get("payment_intent")
            payment = _payment(intent) if isinstance(intent, dict) else None
            return PaymentDeclined(message, payment, body.get("decline_code") or exc.code)
        if isinstance(exc, stripe.IdempotencyError) or exc.http_status == 409:
            return ProviderBusy(
                f"Stripe refused the idempotency key ({message}); retry shortly with the same key"
            )
        if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
            return ProviderUnavailable(f"Stripe refused the API key: check APPLIANCE_STRIPE_KEY ({message})")
        if isinstance(exc, stripe.APIConnectionError):
            return ProviderUnavailable(
                f"Stripe could not be reached at {self.where} after {self._attempts} attempts"
                " (network error or timeout); retry with the same Idempotency-Key"
            )
        if _is_outage(exc):
            return ProviderUnavailable(f"Stripe answered {exc.http_status}: {message}")
        return ProviderRejected(f"Stripe rejected the request: {message}")
