"""The ``PaymentProvider`` contract, run against every adapter (today: Stripe, on a real stripe-mock).

A new adapter is done when it passes this suite unchanged.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest

from appliance.payments import (
    ChargeRequest,
    InvalidSignature,
    PaymentProvider,
    ProviderRejected,
    ProviderUnavailable,
    RefundRequest,
)
from appliance.payments.stripe_provider import StripeProvider, sign_webhook
from tests.peers import StripePeer, free_port

SECRET = "whsec_contract"
Factory = Callable[..., PaymentProvider]
Signer = Callable[[bytes, int], str]


def _stripe(peer: StripePeer, **overrides: Any) -> PaymentProvider:
    options: dict[str, Any] = {"api_key": peer.api_key, "webhook_secret": SECRET, "api_base": peer.url}
    return StripeProvider(**{**options, "timeout_s": 2.0, **overrides})


# Each adapter: how to build it, and how its provider signs a webhook body.
ADAPTERS: dict[str, tuple[Callable[..., PaymentProvider], Signer]] = {
    "stripe": (_stripe, lambda raw, stamp: sign_webhook(raw, SECRET, stamp)),
}


@pytest.fixture(params=sorted(ADAPTERS))
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def provider(adapter: str, stripe_peer: StripePeer) -> AsyncIterator[PaymentProvider]:
    built = ADAPTERS[adapter][0](stripe_peer)
    yield built
    await built.close()


@pytest.fixture
def sign(adapter: str) -> Signer:
    return ADAPTERS[adapter][1]


def intent(kind: str, status: str, **extra: Any) -> bytes:
    obj = {
        "id": "pi_1",
        "object": "payment_intent",
        "status": status,
        "amount": 500,
        "currency": "eur",
        "amount_received": 500 if status == "succeeded" else 0,
        "metadata": {"appliance_tenant": "acme"},
        **extra,
    }
    return msgspec.json.encode({"id": "evt_1", "type": kind, "data": {"object": obj}})


async def test_create_payment_answers_with_a_provider_id_and_the_amount(provider: PaymentProvider) -> None:
    charge = ChargeRequest(amount=1999, currency="eur", payment_method="pm_card_visa", metadata={"k": "v"})
    payment = await provider.create_payment(charge, idempotency_key="contract-create-1")
    assert payment.provider_id and payment.status
    assert (payment.amount, payment.currency) == (1999, "eur")


async def test_refund_answers_for_the_payment(provider: PaymentProvider) -> None:
    payment = await provider.create_payment(ChargeRequest(amount=800, currency="eur"), "contract-refund-pay")
    request = RefundRequest(payment_provider_id=payment.provider_id, amount=300, reason="duplicate")
    refund = await provider.refund(request, idempotency_key="contract-refund-1")
    assert refund.provider_id and refund.status
    assert refund.payment_provider_id == payment.provider_id and refund.amount > 0


async def test_ping(provider: PaymentProvider) -> None:
    assert await provider.ping()


@pytest.mark.parametrize(
    ("kind", "status", "expected"),
    [
        ("payment_intent.succeeded", "succeeded", "succeeded"),
        ("payment_intent.processing", "processing", "processing"),
        ("payment_intent.payment_failed", "requires_payment_method", "failed"),
        ("payment_intent.canceled", "canceled", "canceled"),
    ],
)
def test_verified_payment_events_translate_to_snapshots(
    provider: PaymentProvider, sign: Signer, kind: str, status: str, expected: str
) -> None:
    failed = expected == "failed"
    raw = intent(kind, status, **({"last_payment_error": {"message": "declined"}} if failed else {}))
    event = provider.parse_webhook(raw, sign(raw, int(time.time())))
    assert event.id == "evt_1" and event.type == kind and event.payment is not None
    assert event.payment.status == expected and event.payment.metadata == {"appliance_tenant": "acme"}
    assert event.payment.failure == ("declined" if failed else None)


def test_refund_events_translate_to_refund_snapshots(provider: PaymentProvider, sign: Signer) -> None:
    refund = {
        "id": "re_1",
        "object": "refund",
        "amount": 200,
        "status": "succeeded",
        "payment_intent": "pi_1",
    }
    charge = {
        "id": "ch_1",
        "object": "charge",
        "payment_intent": "pi_1",
        "refunds": {"data": [{"id": "re_2", "object": "refund", "amount": 100, "status": "pending"}]},
    }
    for kind, obj, expected in [
        ("refund.updated", refund, [("re_1", 200, "succeeded")]),
        ("charge.refunded", charge, [("re_2", 100, "pending")]),
        ("customer.created", {"id": "cus_1", "object": "customer"}, []),
    ]:
        raw = msgspec.json.encode({"id": f"evt_{kind}", "type": kind, "data": {"object": obj}})
        event = provider.parse_webhook(raw, sign(raw, int(time.time())))
        assert event.payment is None
        assert [(r.provider_id, r.amount, r.status) for r in event.refunds] == expected
        assert all(r.payment_provider_id == "pi_1" for r in event.refunds)


@pytest.mark.parametrize(
    ("mangle", "raises"),
    [
        (lambda raw, sig: (raw + b" ", sig), InvalidSignature),  # body changed after signing
        (lambda raw, sig: (raw, None), InvalidSignature),
        (lambda raw, sig: (raw, sig.replace("v1=", "v0=")), InvalidSignature),
        (lambda raw, sig: (b"[]", None), InvalidSignature),
    ],
)
def test_tampered_webhooks_are_refused(
    provider: PaymentProvider, sign: Signer, mangle: Callable[..., tuple[bytes, str | None]], raises: type
) -> None:
    raw = intent("payment_intent.succeeded", "succeeded")
    body, signature = mangle(raw, sign(raw, int(time.time())))
    with pytest.raises(raises):
        provider.parse_webhook(body, signature)


def test_stale_and_future_webhooks_are_refused(provider: PaymentProvider, sign: Signer) -> None:
    raw = intent("payment_intent.succeeded", "succeeded")
    for offset in (-301, 301):
        with pytest.raises(InvalidSignature, match="tolerance"):
            provider.parse_webhook(raw, sign(raw, int(time.time()) + offset))
    assert provider.parse_webhook(raw, sign(raw, int(time.time()) - 290)).payment is not None


def test_a_signed_body_that_is_not_an_event_is_rejected(provider: PaymentProvider, sign: Signer) -> None:
    for raw in (b"{}", b"\xff\xfe", b'{"id": 1, "type": "x", "data": {"object": {}}}'):
        with pytest.raises(ProviderRejected):
            provider.parse_webhook(raw, sign(raw, int(time.time())))


async def test_without_a_webhook_secret_webhooks_are_unavailable(
    adapter: str, stripe_peer: StripePeer
) -> None:
    provider = ADAPTERS[adapter][0](stripe_peer, webhook_secret="")
    try:
        with pytest.raises(ProviderUnavailable, match="APPLIANCE_STRIPE_WEBHOOK_SECRET"):
            provider.parse_webhook(b"{}", "t=1,v1=00")
    finally:
        await provider.close()


async def test_unreachable_provider_is_unavailable_then_the_breaker_opens(
    adapter: str, stripe_peer: StripePeer
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    provider = ADAPTERS[adapter][0](stripe_peer, api_base=closed, breaker_threshold=2, attempts=2)
    try:
        for _ in range(2):
            with pytest.raises(ProviderUnavailable, match="could not be reached"):
                await provider.create_payment(ChargeRequest(amount=1, currency="eur"), "contract-down")
        with pytest.raises(ProviderUnavailable, match="circuit breaker open"):
            await provider.ping()
    finally:
        await provider.close()
