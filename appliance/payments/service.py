"""Payment logic on top of the provider port and the ledger.

A create or refund is three steps, because the provider call cannot sit inside a SQLite transaction:

1. reserve: in one transaction, claim the ``Idempotency-Key`` with a ``pending`` ledger row (for a
   refund, after checking the refundable amount, so the reservation and the check are atomic);
2. call the provider with an idempotency key derived from that row's id;
3. record: in one transaction, apply the provider's answer to the row, emit the events and store the
   response for the ``Idempotency-Key``.

A crash or timeout between 2 and 3 leaves the ``pending`` row. A retry with the same key finds it and
calls the provider again with the same provider key, which Stripe answers with the original object
instead of charging twice; a webhook that arrives meanwhile finds the row by the ids in the
provider metadata.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

import msgspec

from appliance.core.context import BackendStatus, Context
from appliance.core.db import Tx
from appliance.core.errors import (
    BadRequest,
    Conflict,
    NotFound,
    ServiceUnavailable,
    Unprocessable,
    problem_response,
)
from appliance.core.idempotency import StoredResponse, check_key, fingerprint
from appliance.core.ids import new_id
from appliance.core.pagination import Page, decode_cursor, encode_cursor
from appliance.core.shards import acting_for, on_shard
from appliance.payments import (
    PAYMENT_META,
    REFUND_META,
    TENANT_META,
    ChargeRequest,
    InvalidSignature,
    PaymentDeclined,
    PaymentProvider,
    ProviderBusy,
    ProviderError,
    ProviderEvent,
    ProviderPayment,
    ProviderRefund,
    ProviderRejected,
    ProviderUnavailable,
    RefundRequest,
    build_provider,
)
from appliance.payments.ledger import (
    PAYMENT_COLUMNS,
    Payment,
    PaymentDetail,
    apply_payment,
    apply_refund,
    fail_unsent,
    load_payment,
    payment_from_row,
    refund_from_row,
    reserved_amount,
)

__all__ = ["CreatedPayment", "NewPayment", "NewRefund", "PaymentService", "WebhookReceipt"]

PAYMENT_SCOPE = "payments"
REFUND_SCOPE = "payments.refunds"
HEALTH_TIMEOUT_S = 2.5  # under /readyz's own 3 s bound, so the report names Stripe
DISABLED = (
    "payments are disabled: set APPLIANCE_STRIPE_KEY to a Stripe secret key (sk_live_... or sk_test_...)"
    " and restart the appliance"
)

MetaKey = Annotated[str, msgspec.Meta(min_length=1, max_length=40, pattern="^(?!appliance_)")]
MetaValue = Annotated[str, msgspec.Meta(max_length=500)]
ProviderRef = Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_\-]+$")]


class NewPayment(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /v1/payments``: amounts in the currency's minor unit (cents)."""

    amount: Annotated[int, msgspec.Meta(ge=1, le=99_999_999)]
    currency: Annotated[str, msgspec.Meta(pattern="^[a-zA-Z]{3}$", description="ISO 4217, e.g. eur")]
    customer: ProviderRef | None = None
    payment_method: ProviderRef | None = None
    metadata: Annotated[dict[MetaKey, MetaValue], msgspec.Meta(max_length=40)] = {}


class NewRefund(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /v1/payments/{id}/refunds``: ``amount`` defaults to everything still refundable."""

    amount: Annotated[int, msgspec.Meta(ge=1)] | None = None
    reason: Literal["duplicate", "fraudulent", "requested_by_customer"] | None = None


class CreatedPayment(Payment):
    """The create response: the payment, plus the provider's client secret for a browser to confirm it."""

    client_secret: str | None = None


class WebhookReceipt(msgspec.Struct):
    id: str
    type: str
    duplicate: bool
    payment_id: str | None = None


Reply = tuple[int, bytes]


def _problem(status: int, detail: str, slug: str) -> bytes:
    return msgspec.json.encode(problem_response(status, detail, slug=slug).content)


class PaymentService:
    """Creates payments and refunds through the provider and keeps the ledger in step with it."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._provider: PaymentProvider | None = None

    async def start(self) -> None:
        self._provider = self.ctx.plugin_backend("payments") or build_provider(self.ctx.settings)

    async def stop(self) -> None:
        if self._provider is not None:
            await self._provider.close()
            self._provider = None

    @property
    def provider(self) -> PaymentProvider:
        if self._provider is None:
            raise ServiceUnavailable(DISABLED, slug="payments-disabled")
        return self._provider

    def _require_enabled(self) -> None:
        # Reads of the ledger need no provider call, but a disabled capability answers alike everywhere.
        _ = self.provider

    async def health(self) -> BackendStatus:
        if self._provider is None:
            # Not configured is a choice, not an outage: /readyz stays green.
            return BackendStatus(name="payments", backend="stripe", mode="server", ok=True, detail=DISABLED)
        name, ok = self._provider.name, True
        try:
            detail = await asyncio.wait_for(self._provider.ping(), HEALTH_TIMEOUT_S)
        except TimeoutError:
            ok, detail = False, f"Stripe did not answer within {HEALTH_TIMEOUT_S:g}s"
        except ProviderUnavailable as exc:
            ok, detail = False, str(exc)
        except ProviderError as exc:  # it answered, if not to our liking: reachable
            detail = f"reachable; it answered: {exc}"
        return BackendStatus(name="payments", backend=name, mode="server", ok=ok, detail=detail)

    # ------------------------------------------------------------------ payments ---

    async def create(self, tenant: str, key: str, request: NewPayment) -> Reply:
        """Charge once per ``Idempotency-Key``; returns the (status, JSON body) to send, first or replayed."""
        provider = self.provider
        print_ = fingerprint(msgspec.json.encode(request))
        stored = await self.ctx.idempotency.lookup(tenant, PAYMENT_SCOPE, check_key(key), print_)
        if stored is not None:
            return stored.status, stored.body
        payment_id, replay = await self._reserve_payment(tenant, key, print_, request, provider.name)
        if replay is not None:
            return replay
        charge = ChargeRequest(
            amount=request.amount,
            currency=request.currency.lower(),
            customer=request.customer,
            payment_method=request.payment_method,
            metadata={**request.metadata, TENANT_META: tenant, PAYMENT_META: payment_id},
        )
        try:
            snapshot = await provider.create_payment(charge, idempotency_key=payment_id)
        except (PaymentDeclined, ProviderRejected) as exc:
            return await self._record_failure(tenant, key, print_, payment_id, exc)
        except ProviderBusy as exc:
            raise Conflict(str(exc)) from None
        except ProviderUnavailable as exc:
            raise ServiceUnavailable(str(exc)) from None
        return await self._record(
            tenant, PAYMENT_SCOPE, key, print_, lambda tx: self._created(tx, tenant, payment_id, snapshot)
        )

    async def _reserve_payment(
        self, tenant: str, key: str, print_: str, request: NewPayment, provider: str
    ) -> tuple[str, Reply | None]:
        async with self.ctx.db.transaction() as tx:
            stored = await self.ctx.idempotency.lookup_in(tx, tenant, PAYMENT_SCOPE, key, print_)
            if stored is not None:
                return "", (stored.status, stored.body)
            row = await tx.fetchone(
                "SELECT id, fingerprint, status FROM payments WHERE tenant_id = ? AND idempotency_key = ?",
                (tenant, key),
            )
            if row is not None:
                if row["fingerprint"] != print_:
                    raise Unprocessable("this Idempotency-Key was already used with a different request body")
                if row["status"] != "pending":  # settled, and its stored response has expired
                    return row["id"], await _settled_payment(tx, tenant, row["id"])
                return row["id"], None  # an earlier attempt died after reserving: resume it
            payment_id, now = new_id("pay"), time.time()
            await tx.execute(
                "INSERT INTO payments (id, tenant_id, idempotency_key, fingerprint, provider, status, amount,"
                " currency, customer, payment_method, metadata, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?)",
                (
                    payment_id,
                    tenant,
                    key,
                    print_,
                    provider,
                    request.amount,
                    request.currency.lower(),
                    request.customer,
                    request.payment_method,
                    msgspec.json.encode(request.metadata).decode(),
                    now,
                    now,
                ),
            )
        return payment_id, None

    async def _created(self, tx: Tx, tenant: str, payment_id: str, snapshot: ProviderPayment) -> Reply:
        payment = await apply_payment(tx, tenant, payment_id, snapshot, self.ctx.outbox)
        body = CreatedPayment(**msgspec.structs.asdict(payment), client_secret=snapshot.client_secret)
        return 201, msgspec.json.encode(body)

    async def _record_failure(
        self, tenant: str, key: str, print_: str, payment_id: str, exc: ProviderError
    ) -> Reply:
        async def fail(tx: Tx) -> Reply:
            snapshot = exc.payment if isinstance(exc, PaymentDeclined) else None
            if snapshot is not None:  # the provider created the payment, then the card was declined
                failed = msgspec.structs.replace(snapshot, status="failed", failure=str(exc))
                await apply_payment(tx, tenant, payment_id, failed, self.ctx.outbox)
            else:
                await fail_unsent(tx, tenant, payment_id, str(exc), self.ctx.outbox)
            if isinstance(exc, PaymentDeclined):
                return 402, _problem(402, f"the payment was declined: {exc}", "payment-declined")
            return 422, _problem(422, str(exc), "payment-rejected")

        return await self._record(tenant, PAYMENT_SCOPE, key, print_, fail)

    async def _record(
        self, tenant: str, scope: str, key: str, print_: str, write: Callable[[Tx], Awaitable[Reply]]
    ) -> Reply:
        """Apply the provider's answer and store the response, unless a concurrent repeat already did."""
        async with self.ctx.db.transaction() as tx:
            stored = await self.ctx.idempotency.lookup_in(tx, tenant, scope, key, print_)
            if stored is not None:
                return stored.status, stored.body
            status, body = await write(tx)
            await self.ctx.idempotency.store(tx, tenant, scope, key, print_, StoredResponse(status, body))
        return status, body

    async def get(self, tenant: str, payment_id: str) -> PaymentDetail:
        self._require_enabled()
        payment = await load_payment(self.ctx.db, tenant, payment_id)
        if payment is None:
            raise NotFound(f"no payment {payment_id!r} in this tenant")
        rows = await self.ctx.db.fetchall(
            "SELECT * FROM payment_refunds WHERE tenant_id = ? AND payment_id = ? ORDER BY id",
            (tenant, payment_id),
        )
        return PaymentDetail(**msgspec.structs.asdict(payment), refunds=[refund_from_row(r) for r in rows])

    async def list(self, tenant: str, limit: int, cursor: str | None, status: str | None) -> Page[Payment]:
        """The tenant's payments, newest first."""
        self._require_enabled()
        sql = f"SELECT {PAYMENT_COLUMNS} FROM payments p WHERE p.tenant_id = ?"
        params: list[object] = [tenant]
        if cursor is not None:
            sql += " AND p.id < ?"
            params.append(decode_cursor(cursor, str))
        if status is not None:
            sql += " AND p.status = ?"
            params.append(status)
        rows = await self.ctx.db.fetchall(sql + " ORDER BY p.id DESC LIMIT ?", [*params, limit + 1])
        items = [payment_from_row(r) for r in rows[:limit]]
        return Page(items=items, next_cursor=encode_cursor(items[-1].id) if len(rows) > limit else None)

    # ------------------------------------------------------------------- refunds ---

    async def refund(self, tenant: str, payment_id: str, key: str, request: NewRefund) -> Reply:
        """Refund once per ``Idempotency-Key``; never more in total than the payment captured."""
        provider = self.provider
        print_ = fingerprint(payment_id.encode() + b"\0" + msgspec.json.encode(request))
        stored = await self.ctx.idempotency.lookup(tenant, REFUND_SCOPE, check_key(key), print_)
        if stored is not None:
            return stored.status, stored.body
        reserved = await self._reserve_refund(tenant, payment_id, key, print_, request)
        if isinstance(reserved, tuple):
            return reserved
        try:
            snapshot = await provider.refund(reserved, idempotency_key=reserved.metadata[REFUND_META])
        except ProviderBusy as exc:
            raise Conflict(str(exc)) from None
        except (PaymentDeclined, ProviderRejected) as exc:
            error: ProviderError = exc
            return await self._record(
                tenant, REFUND_SCOPE, key, print_, lambda tx: self._refund_failed(tx, reserved, error)
            )
        except ProviderUnavailable as exc:
            raise ServiceUnavailable(str(exc)) from None
        return await self._record(
            tenant,
            REFUND_SCOPE,
            key,
            print_,
            lambda tx: self._refunded(tx, tenant, payment_id, reserved, snapshot),
        )

    async def _reserve_refund(
        self, tenant: str, payment_id: str, key: str, print_: str, request: NewRefund
    ) -> RefundRequest | Reply:
        async with self.ctx.db.transaction() as tx:
            stored = await self.ctx.idempotency.lookup_in(tx, tenant, REFUND_SCOPE, key, print_)
            if stored is not None:
                return stored.status, stored.body
            payment = await load_payment(tx, tenant, payment_id)
            if payment is None:
                raise NotFound(f"no payment {payment_id!r} in this tenant")
            row = await tx.fetchone(
                "SELECT * FROM payment_refunds WHERE tenant_id = ? AND idempotency_key = ?", (tenant, key)
            )
            if row is not None:
                if row["fingerprint"] != print_:
                    raise Unprocessable("this Idempotency-Key was already used with a different request body")
                if row["status"] != "pending":  # settled, and its stored response has expired
                    return 201, msgspec.json.encode(refund_from_row(row))
                refund_id, amount = row["id"], row["amount"]  # an earlier attempt died after reserving
            else:
                refund_id, amount = await self._claim_refund(tx, tenant, payment, key, print_, request)
        assert payment.provider_id is not None
        return RefundRequest(
            payment_provider_id=payment.provider_id,
            amount=amount,
            reason=request.reason,
            metadata={TENANT_META: tenant, PAYMENT_META: payment_id, REFUND_META: refund_id},
        )

    async def _claim_refund(
        self, tx: Tx, tenant: str, payment: Payment, key: str, print_: str, request: NewRefund
    ) -> tuple[str, int]:
        """Check what is still refundable and record the pending refund, in the caller's transaction."""
        if payment.status != "succeeded" or payment.provider_id is None:
            raise Conflict(
                f"payment {payment.id} is {payment.status}: only succeeded payments can be refunded"
            )
        claimed = await reserved_amount(tx, payment.id)
        remaining = payment.amount_captured - claimed
        if remaining <= 0:
            raise Unprocessable(f"payment {payment.id} is already fully refunded (or has refunds pending)")
        amount = request.amount if request.amount is not None else remaining
        if amount > remaining:
            raise Unprocessable(
                f"a refund of {amount} exceeds the {remaining} still refundable: {payment.amount_captured}"
                f" captured, {claimed} already refunded or pending"
            )
        refund_id, now = new_id("re"), time.time()
        await tx.execute(
            "INSERT INTO payment_refunds (id, tenant_id, payment_id, idempotency_key, fingerprint, status,"
            " amount, reason, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
            (refund_id, tenant, payment.id, key, print_, amount, request.reason, now, now),
        )
        return refund_id, amount

    async def _refunded(
        self, tx: Tx, tenant: str, payment_id: str, request: RefundRequest, snapshot: ProviderRefund
    ) -> Reply:
        refund = await apply_refund(
            tx, tenant, payment_id, request.metadata[REFUND_META], snapshot, self.ctx.outbox
        )
        return 201, msgspec.json.encode(refund)

    async def _refund_failed(self, tx: Tx, request: RefundRequest, exc: ProviderError) -> Reply:
        # The provider refused it, so the reservation is released for another attempt.
        await tx.execute(
            "UPDATE payment_refunds SET status = 'failed', updated_at = ? WHERE id = ? AND status = 'pending'",
            (time.time(), request.metadata[REFUND_META]),
        )
        return 422, _problem(422, str(exc), "refund-rejected")

    # ------------------------------------------------------------------ webhooks ---

    async def handle_webhook(self, payload: bytes, signature: str | None) -> WebhookReceipt:
        """Verify, dedupe by event id and apply a provider webhook; nothing changes unless it verifies."""
        provider = self.provider
        try:
            event = provider.parse_webhook(payload, signature)
        except InvalidSignature as exc:
            raise BadRequest(str(exc), slug="invalid-signature") from None
        except ProviderRejected as exc:
            raise BadRequest(str(exc), slug="invalid-webhook") from None
        except ProviderUnavailable as exc:
            raise ServiceUnavailable(str(exc)) from None
        # No key, so no tenant from authentication: the metadata we gave the provider names it (shards).
        with acting_for(await self._webhook_tenant(event)):
            return await self._record_webhook(event)

    async def _webhook_tenant(self, event: ProviderEvent) -> str | None:
        """The tenant a webhook is about: from our metadata, else (shards) the shard that knows its ids."""
        tenant = _event_tenant(event)
        if tenant is not None or self.ctx.sharded is None:
            return tenant
        ids = [event.payment.provider_id] if event.payment is not None else []
        ids += [refund.payment_provider_id for refund in event.refunds]
        for shard in self.ctx.sharded.shard_names():
            with on_shard(shard):
                for provider_id in ids:
                    row = await self.ctx.db.fetchone(
                        "SELECT tenant_id FROM payments WHERE provider_id = ?", (provider_id,)
                    )
                    if row is not None:
                        return str(row["tenant_id"])
        return None

    async def _record_webhook(self, event: ProviderEvent) -> WebhookReceipt:
        async with self.ctx.db.transaction() as tx:
            fresh = await tx.execute(
                "INSERT INTO payment_webhook_events (event_id, type, received_at) VALUES (?, ?, ?)"
                " ON CONFLICT (event_id) DO NOTHING",
                (event.id, event.type, time.time()),
            )
            if not fresh:
                return WebhookReceipt(id=event.id, type=event.type, duplicate=True)
            target = await self._apply_event(tx, event)
            if target is not None:
                await tx.execute(
                    "UPDATE payment_webhook_events SET tenant_id = ?, payment_id = ? WHERE event_id = ?",
                    (*target, event.id),
                )
        return WebhookReceipt(
            id=event.id, type=event.type, duplicate=False, payment_id=target[1] if target else None
        )

    async def _apply_event(self, tx: Tx, event: ProviderEvent) -> tuple[str, str] | None:
        """Apply the event's snapshots to the ledger rows they belong to; returns (tenant, payment id)."""
        target = None
        if event.payment is not None:
            target = await _locate(tx, event.payment.provider_id, event.payment.metadata)
            if target is not None:
                await apply_payment(tx, *target, event.payment, self.ctx.outbox)
        for refund in event.refunds:
            target = await _locate(tx, refund.payment_provider_id, refund.metadata)
            if target is not None:
                ours = refund.metadata.get(REFUND_META)
                await apply_refund(tx, *target, ours, refund, self.ctx.outbox)
        return target


async def _settled_payment(tx: Tx, tenant: str, payment_id: str) -> Reply:
    """The answer for a key whose payment is no longer pending: from the ledger, never a second charge.

    Only reached once the stored first response has expired (Stripe's own keys last 24 hours, so
    calling it again could charge anew).
    """
    payment = await load_payment(tx, tenant, payment_id)
    assert payment is not None
    if payment.status != "failed":
        return 201, msgspec.json.encode(CreatedPayment(**msgspec.structs.asdict(payment)))
    if payment.provider_id is not None:
        return 402, _problem(402, f"the payment was declined: {payment.failure}", "payment-declined")
    return 422, _problem(422, payment.failure or "the provider refused the payment", "payment-rejected")


def _event_tenant(event: ProviderEvent) -> str | None:
    snapshots = [event.payment.metadata] if event.payment is not None else []
    snapshots += [refund.metadata for refund in event.refunds]
    return next((m[TENANT_META] for m in snapshots if m.get(TENANT_META)), None)


async def _locate(tx: Tx, provider_id: str, metadata: dict[str, str]) -> tuple[str, str] | None:
    """The (tenant, payment id) a provider object belongs to: by provider id, else by our metadata.

    The metadata route covers a webhook that overtakes the create call's own answer, while the
    ledger row is still ``pending`` without a provider id. Objects the ledger never saw are ignored.
    """
    row = await tx.fetchone("SELECT tenant_id, id FROM payments WHERE provider_id = ?", (provider_id,))
    if row is None and TENANT_META in metadata and PAYMENT_META in metadata:
        row = await tx.fetchone(
            "SELECT tenant_id, id FROM payments WHERE tenant_id = ? AND id = ? AND provider_id IS NULL",
            (metadata[TENANT_META], metadata[PAYMENT_META]),
        )
    return (row["tenant_id"], row["id"]) if row else None
