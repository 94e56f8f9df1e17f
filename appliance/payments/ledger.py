"""The payments ledger: SQL over the metadata DB, and the rule for which changes emit which event.

Every function that writes takes the caller's transaction, so a ledger change and its outbox event
always commit together. Amounts are integers in the currency's minor unit (cents).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from appliance.core.db import Database, Migration, Row, Tx
from appliance.core.ids import new_id
from appliance.core.outbox import OutboxSignal, emit
from appliance.payments import ProviderPayment, ProviderRefund

__all__ = ["MIGRATIONS", "Payment", "PaymentDetail", "Refund", "apply_payment", "apply_refund", "fail_unsent"]

SOURCE = "payments"
# Statuses a payment never leaves: a late or replayed webhook cannot move it back.
FINAL = frozenset({"succeeded", "canceled"})
# Refunds in these statuses no longer count against the refundable amount.
RELEASED = frozenset({"failed", "canceled"})

MIGRATIONS = [
    Migration(
        "payments",
        1,
        "payments ledger, refunds, webhook events seen",
        """
        CREATE TABLE payments (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            idempotency_key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            provider TEXT NOT NULL,
            provider_id TEXT UNIQUE,
            status TEXT NOT NULL,
            amount INTEGER NOT NULL CHECK (amount > 0),
            currency TEXT NOT NULL,
            amount_captured INTEGER NOT NULL DEFAULT 0 CHECK (amount_captured >= 0),
            customer TEXT,
            payment_method TEXT,
            metadata TEXT NOT NULL,
            failure TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            UNIQUE (tenant_id, idempotency_key)
        );
        CREATE INDEX payments_by_tenant ON payments (tenant_id, id);
        CREATE TABLE payment_refunds (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            payment_id TEXT NOT NULL REFERENCES payments(id) ON DELETE CASCADE,
            idempotency_key TEXT,
            fingerprint TEXT,
            provider_id TEXT UNIQUE,
            status TEXT NOT NULL,
            amount INTEGER NOT NULL CHECK (amount > 0),
            reason TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            UNIQUE (tenant_id, idempotency_key)
        );
        CREATE INDEX payment_refunds_by_payment ON payment_refunds (payment_id, id);
        CREATE TABLE payment_webhook_events (
            event_id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            tenant_id TEXT REFERENCES tenants(id) ON DELETE CASCADE,
            payment_id TEXT,
            received_at REAL NOT NULL
        );
        """,
    ),
]


class Refund(msgspec.Struct):
    """A refund as the API shows it."""

    id: str
    payment_id: str
    status: str
    amount: int
    reason: str | None
    provider_id: str | None
    created_at: float
    updated_at: float


class Payment(msgspec.Struct):
    """A payment as the API shows it; ``status`` is ``pending`` until the provider has answered."""

    id: str
    status: str
    provider: str
    provider_id: str | None
    amount: int
    currency: str
    amount_captured: int
    amount_refunded: int
    customer: str | None
    payment_method: str | None
    metadata: dict[str, str]
    failure: str | None
    created_at: float
    updated_at: float


class PaymentDetail(Payment):
    """One payment with its refunds, oldest first."""

    refunds: list[Refund] = []


# Refunded = money back for good; pending refunds still count against the refundable amount.
PAYMENT_COLUMNS = (
    "p.*, (SELECT COALESCE(SUM(r.amount), 0) FROM payment_refunds r"
    " WHERE r.payment_id = p.id AND r.status = 'succeeded') AS amount_refunded"
)


def payment_from_row(row: Row) -> Payment:
    return Payment(
        id=row["id"],
        status=row["status"],
        provider=row["provider"],
        provider_id=row["provider_id"],
        amount=row["amount"],
        currency=row["currency"],
        amount_captured=row["amount_captured"],
        amount_refunded=row["amount_refunded"],
        customer=row["customer"],
        payment_method=row["payment_method"],
        metadata=msgspec.json.decode(row["metadata"]),
        failure=row["failure"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def refund_from_row(row: Row) -> Refund:
    return Refund(
        id=row["id"],
        payment_id=row["payment_id"],
        status=row["status"],
        amount=row["amount"],
        reason=row["reason"],
        provider_id=row["provider_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def load_payment(tx: Tx | Database, tenant: str, payment_id: str) -> Payment | None:
    """One payment of ``tenant`` (inside a transaction, or from committed data), or ``None``."""
    row = await tx.fetchone(
        f"SELECT {PAYMENT_COLUMNS} FROM payments p WHERE p.tenant_id = ? AND p.id = ?", (tenant, payment_id)
    )
    return payment_from_row(row) if row else None


async def reserved_amount(tx: Tx, payment_id: str) -> int:
    """What the refunds of a payment claim: every refund not failed or canceled, pending ones included."""
    row = await tx.fetchone(
        "SELECT COALESCE(SUM(amount), 0) AS total FROM payment_refunds"
        " WHERE payment_id = ? AND status NOT IN ('failed', 'canceled')",
        (payment_id,),
    )
    return int(row["total"]) if row else 0


def _payment_payload(payment: Payment) -> dict[str, Any]:
    return {
        "payment_id": payment.id,
        "provider_id": payment.provider_id,
        "status": payment.status,
        "amount": payment.amount,
        "currency": payment.currency,
        "amount_captured": payment.amount_captured,
        "metadata": payment.metadata,
    }


def _advances(old: str, new: str) -> bool:
    return new != old and old not in FINAL and new != "pending"


async def apply_payment(
    tx: Tx, tenant: str, payment_id: str, snapshot: ProviderPayment, signal: OutboxSignal
) -> Payment:
    """Bring a ledger row up to the provider's snapshot, emitting an event for each change.

    ``payment.created`` when the row first gets its provider id; ``payment.succeeded`` or
    ``payment.failed`` (also for ``canceled``) when the status reaches one of those. Stale snapshots
    (a final status already recorded) change nothing, so replays and reordering are harmless.
    """
    before = await load_payment(tx, tenant, payment_id)
    assert before is not None
    now = time.time()
    if before.provider_id is None:
        await tx.execute(
            "UPDATE payments SET provider_id = ?, updated_at = ? WHERE id = ?",
            (snapshot.provider_id, now, payment_id),
        )
    if _advances(before.status, snapshot.status):
        await tx.execute(
            "UPDATE payments SET status = ?, failure = ?,"
            " amount_captured = CASE WHEN amount_captured > ? THEN amount_captured ELSE ? END,"
            " updated_at = ? WHERE id = ?",
            (
                snapshot.status,
                snapshot.failure,
                snapshot.amount_captured,
                snapshot.amount_captured,
                now,
                payment_id,
            ),
        )
    after = await load_payment(tx, tenant, payment_id)
    assert after is not None
    if before.provider_id is None:
        await emit(tx, tenant, SOURCE, "payment.created", _payment_payload(after), signal)
    if after.status != before.status and after.status in ("succeeded", "failed", "canceled"):
        kind = "payment.succeeded" if after.status == "succeeded" else "payment.failed"
        await emit(tx, tenant, SOURCE, kind, _payment_payload(after), signal)
    return after


async def fail_unsent(tx: Tx, tenant: str, payment_id: str, failure: str, signal: OutboxSignal) -> None:
    """Mark a ``pending`` payment the provider refused outright (it never existed there) as ``failed``."""
    changed = await tx.execute(
        "UPDATE payments SET status = 'failed', failure = ?, updated_at = ? WHERE id = ? AND status = 'pending'",
        (failure, time.time(), payment_id),
    )
    payment = await load_payment(tx, tenant, payment_id)
    if changed and payment is not None:
        await emit(
            tx, tenant, SOURCE, "payment.failed", {**_payment_payload(payment), "failure": failure}, signal
        )


async def apply_refund(
    tx: Tx,
    tenant: str,
    payment_id: str,
    refund_id: str | None,
    snapshot: ProviderRefund,
    signal: OutboxSignal,
) -> Refund:
    """Record the provider's view of a refund (ours by ``refund_id``, or one made outside the appliance).

    Emits ``payment.refunded`` when a refund is first recorded at the provider (unless it failed
    there) and again when a pending refund settles as ``succeeded``.
    """
    now = time.time()
    existing = await tx.fetchone(
        "SELECT * FROM payment_refunds WHERE tenant_id = ? AND (id = ? OR provider_id = ?)",
        (tenant, refund_id, snapshot.provider_id),
    )
    if existing is None:
        refund_id = refund_id or new_id("re")
        await tx.execute(
            "INSERT INTO payment_refunds (id, tenant_id, payment_id, provider_id, status, amount, reason,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                refund_id,
                tenant,
                payment_id,
                snapshot.provider_id,
                snapshot.status,
                snapshot.amount,
                snapshot.reason,
                now,
                now,
            ),
        )
        old_status, had_provider = None, False
    else:
        refund_id, old_status = existing["id"], existing["status"]
        had_provider = existing["provider_id"] is not None
        if old_status != snapshot.status or not had_provider:
            await tx.execute(
                "UPDATE payment_refunds SET provider_id = ?, status = ?, updated_at = ? WHERE id = ?",
                (snapshot.provider_id, snapshot.status, now, refund_id),
            )
    row = await tx.fetchone("SELECT * FROM payment_refunds WHERE id = ?", (refund_id,))
    assert row is not None
    refund = refund_from_row(row)
    newly_recorded = not had_provider and refund.status not in RELEASED
    settled = had_provider and old_status != "succeeded" and refund.status == "succeeded"
    if newly_recorded or settled:
        payment = await load_payment(tx, tenant, payment_id)
        assert payment is not None
        payload = {
            "payment_id": payment_id,
            "refund_id": refund.id,
            "provider_refund_id": refund.provider_id,
            "amount": refund.amount,
            "status": refund.status,
            "currency": payment.currency,
            "amount_refunded": payment.amount_refunded,
        }
        await emit(tx, tenant, SOURCE, "payment.refunded", payload, signal)
    return refund
