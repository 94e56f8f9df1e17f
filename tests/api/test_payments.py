"""API.md "Payments" against a real stripe-mock: ledger, idempotency, refunds, webhooks, faults.

stripe-mock is stateless: it answers every create with a canned PaymentIntent in
``requires_payment_method``. Payments reach ``succeeded`` here the way they do in production, through a
signed ``payment_intent.succeeded`` webhook. Faults (a timeout after Stripe accepted the call, a
declined card) come from :class:`FaultyStripe`, a real loopback HTTP proxy in front of stripe-mock.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from appliance.app import create_app
from appliance.config import Settings
from appliance.core.shards import acting_for, on_shard
from appliance.payments.stripe_provider import sign_webhook
from tests.api.test_core import assert_problem
from tests.conftest import ROOT, MakeTenant, make_settings
from tests.peers import StripePeer, free_port

Client = AsyncTestClient[Litestar]
SECRET = "whsec_test_secret"
WEBHOOK = "/v1/webhooks/stripe"


@pytest.fixture
def settings(tmp_path: Path, stripe_peer: StripePeer) -> Settings:
    return make_settings(
        tmp_path / "data",
        stripe_key=stripe_peer.api_key,
        stripe_webhook_secret=SECRET,
        stripe_api_base=stripe_peer.url,
    )


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[Client, Litestar]]:
    app = create_app(settings)
    async with AsyncTestClient(app, base_url="http://appliance.test") as client:
        yield client, app


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


async def pay(client: Client, headers: dict[str, str], amount: int = 1000, **extra: Any) -> dict[str, Any]:
    body = {"amount": amount, "currency": "eur", "payment_method": "pm_card_visa", **extra}
    response = await client.post("/v1/payments", json=body, headers={**headers, **key()})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def intent_event(
    payment: dict[str, Any],
    kind: str = "payment_intent.succeeded",
    status: str = "succeeded",
    metadata: dict[str, str] | None = None,
    provider_id: str | None = None,
) -> dict[str, Any]:
    intent = {
        "id": provider_id or payment["provider_id"],
        "object": "payment_intent",
        "status": status,
        "amount": payment["amount"],
        "currency": payment["currency"],
        "amount_received": payment["amount"] if status == "succeeded" else 0,
        "metadata": metadata or {},
    }
    if kind == "payment_intent.payment_failed":
        intent["last_payment_error"] = {"message": "Your card has insufficient funds."}
    return {"id": f"evt_{uuid.uuid4().hex}", "object": "event", "type": kind, "data": {"object": intent}}


async def deliver(
    client: Client, event: dict[str, Any], secret: str = SECRET, timestamp: int | None = None
) -> httpx.Response:
    raw = msgspec.json.encode(event)
    headers = {"Stripe-Signature": sign_webhook(raw, secret, timestamp), "Content-Type": "application/json"}
    return await client.post(WEBHOOK, content=raw, headers=headers)


async def succeed(client: Client, payment: dict[str, Any]) -> None:
    response = await deliver(client, intent_event(payment))
    assert response.status_code == 200, response.text


async def events(app: Litestar, tenant: str) -> list[tuple[str, dict[str, Any]]]:
    with acting_for(tenant):  # the tenant's shard, with APPLIANCE_DATABASE_SHARDS
        rows = await app.state.ctx.db.fetchall(
            "SELECT type, payload FROM events WHERE tenant_id = ? AND source = 'payments' ORDER BY created_at, id",
            (tenant,),
        )
    return [(r["type"], msgspec.json.decode(r["payload"])) for r in rows]


async def ledger_rows(app: Litestar, table: str = "payments") -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for shard in app.state.ctx.db.shard_names():  # every tenant's rows, wherever they live
        with on_shard(shard):
            found += [dict(r) for r in await app.state.ctx.db.fetchall(f"SELECT * FROM {table}")]
    return found


# ------------------------------------------------------------------ disabled ---

PAYMENT_ENDPOINTS = [
    ("POST", "/v1/payments", {"amount": 100, "currency": "eur"}),
    ("GET", "/v1/payments", None),
    ("GET", "/v1/payments/pay_x", None),
    ("POST", "/v1/payments/pay_x/refunds", {}),
    ("POST", WEBHOOK, {"id": "evt_1"}),
]


@pytest.mark.parametrize(("method", "path", "body"), PAYMENT_ENDPOINTS)
async def test_without_a_key_every_endpoint_says_what_to_set(
    tmp_path: Path, method: str, path: str, body: Any
) -> None:
    async with running(make_settings(tmp_path / "data")) as (client, _):
        response = await client.request(method, path, json=body, headers={**ROOT, **key()})
        problem = assert_problem(response, 503)
        assert "APPLIANCE_STRIPE_KEY" in problem["detail"]
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        payments = next(b for b in ready.json()["backends"] if b["name"] == "payments")
        assert payments["ok"] and "disabled" in payments["detail"]


# --------------------------------------------------------------- create/read ---


async def test_create_records_the_payment_and_emits_created(
    client: Client, app: Litestar, make_tenant: MakeTenant
) -> None:
    acme = await make_tenant("acme", ("payments",))
    body = {
        "amount": 1234,
        "currency": "EUR",
        "customer": "cus_123",
        "payment_method": "pm_card_visa",
        "metadata": {"order": "42"},
    }
    response = await client.post("/v1/payments", json=body, headers={**acme, **key()})
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["id"].startswith("pay_") and created["provider_id"].startswith("pi_")
    assert created["status"] == "requires_payment_method"  # stripe-mock's canned answer
    assert created["amount"] == 1234 and created["currency"] == "eur" and created["client_secret"]
    fetched = (await client.get(f"/v1/payments/{created['id']}", headers=acme)).json()
    assert fetched["provider_id"] == created["provider_id"] and fetched["refunds"] == []
    assert fetched["metadata"] == {"order": "42"} and "client_secret" not in fetched
    assert [t for t, _ in await events(app, "acme")] == ["payment.created"]
    assert (await readiness(client))["payments"]["ok"]


async def readiness(client: Client) -> dict[str, dict[str, Any]]:
    ready = (await client.get("/readyz")).json()
    return {b["name"]: b for b in ready.get("backends", [])}


async def test_idempotent_repeat_replays_and_conflicting_reuse_is_422(
    client: Client, app: Litestar, make_tenant: MakeTenant
) -> None:
    acme = await make_tenant("acme", ("payments",))
    headers = {**acme, "Idempotency-Key": "order-42"}
    body = {"amount": 500, "currency": "usd", "payment_method": "pm_card_visa"}
    first = await client.post("/v1/payments", json=body, headers=headers)
    again = await client.post("/v1/payments", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    conflicting = await client.post("/v1/payments", json={**body, "amount": 501}, headers=headers)
    assert "different request body" in assert_problem(conflicting, 422)["detail"]
    assert len(await ledger_rows(app)) == 1
    assert [t for t, _ in await events(app, "acme")] == ["payment.created"]
    # Keys are per tenant: another tenant may use the same key for its own payment.
    other = await make_tenant("globex", ("payments",))
    theirs = await client.post("/v1/payments", json=body, headers={**other, "Idempotency-Key": "order-42"})
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]


@pytest.mark.parametrize(
    ("body", "headers", "status", "says"),
    [
        ({"amount": 100, "currency": "eur"}, {}, 400, "Idempotency-Key"),
        ({"amount": 0, "currency": "eur"}, key(), 422, "amount"),
        ({"amount": 100, "currency": "euro"}, key(), 422, "currency"),
        ({"amount": 100}, key(), 422, "currency"),
        ({"amount": 100, "currency": "eur", "surprise": 1}, key(), 422, "surprise"),
        ({"amount": 100, "currency": "eur", "metadata": {"appliance_tenant": "x"}}, key(), 422, "metadata"),
        ({"amount": 100, "currency": "eur", "customer": "bad id!"}, key(), 422, "customer"),
        ({"amount": 100, "currency": "eur"}, {"Idempotency-Key": "x" * 256}, 422, "Idempotency-Key"),
    ],
)
async def test_bad_payment_requests_are_problems(
    client: Client,
    make_tenant: MakeTenant,
    body: dict[str, Any],
    headers: dict[str, str],
    status: int,
    says: str,
) -> None:
    acme = await make_tenant("acme", ("payments",))
    problem = assert_problem(
        await client.post("/v1/payments", json=body, headers={**acme, **headers}), status
    )
    assert says.lower() in problem["detail"].lower()


async def test_listing_is_paginated_newest_first_and_filters_by_status(
    client: Client, make_tenant: MakeTenant
) -> None:
    acme = await make_tenant("acme", ("payments",))
    made = [await pay(client, acme, amount=100 + i) for i in range(5)]
    await succeed(client, made[1])
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/payments", params=params, headers=acme)).json()
        seen += [p["id"] for p in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [p["id"] for p in reversed(made)]
    done = (await client.get("/v1/payments", params={"status": "succeeded"}, headers=acme)).json()
    assert [p["id"] for p in done["items"]] == [made[1]["id"]]
    assert_problem(await client.get("/v1/payments", params={"cursor": "%%"}, headers=acme), 400)
    assert_problem(await client.get("/v1/payments/pay_nope", headers=acme), 404)


# ------------------------------------------------------------------ webhooks ---


async def test_verified_webhooks_update_the_ledger_once(
    client: Client, app: Litestar, make_tenant: MakeTenant
) -> None:
    acme = await make_tenant("acme", ("payments",))
    payment = await pay(client, acme)
    event = intent_event(payment)
    first = await deliver(client, event)
    assert first.status_code == 200 and first.json()["duplicate"] is False
    assert first.json()["payment_id"] == payment["id"]
    replayed = await deliver(client, event)
    assert replayed.status_code == 200 and replayed.json()["duplicate"] is True
    fetched = (await client.get(f"/v1/payments/{payment['id']}", headers=acme)).json()
    assert fetched["status"] == "succeeded" and fetched["amount_captured"] == payment["amount"]
    kinds = [t for t, _ in await events(app, "acme")]
    assert kinds == ["payment.created", "payment.succeeded"]
    # A late "processing" event cannot move a succeeded payment back.
    late = await deliver(client, intent_event(payment, "payment_intent.processing", "processing"))
    assert late.status_code == 200
    assert (await client.get(f"/v1/payments/{payment['id']}", headers=acme)).json()["status"] == "succeeded"
    assert len(await events(app, "acme")) == 2


async def test_failed_payment_webhook_records_the_reason(
    client: Client, app: Litestar, make_tenant: MakeTenant
) -> None:
    acme = await make_tenant("acme", ("payments",))
    payment = await pay(client, acme)
    failed = intent_event(payment, "payment_intent.payment_failed", "requires_payment_method")
    assert (await deliver(client, failed)).status_code == 200
    fetched = (await client.get(f"/v1/payments/{payment['id']}", headers=acme)).json()
    assert fetched["status"] == "failed" and "insufficient funds" in fetched["failure"]
    assert [t for t, _ in await events(app, "acme")] == ["payment.created", "payment.failed"]


@pytest.mark.parametrize(
    ("secret", "age_s", "raw_override", "says"),
    [
        ("whsec_wrong", 0, None, "does not match"),
        (SECRET, 301, None, "tolerance"),
        (SECRET, -400, None, "tolerance"),
        (SECRET, 0, b"not json at all", "not a Stripe event"),
    ],
)
async def test_bad_or_stale_webhooks_are_400_and_change_nothing(
    client: Client,
    app: Litestar,
    make_tenant: MakeTenant,
    secret: str,
    age_s: int,
    raw_override: bytes | None,
    says: str,
) -> None:
    acme = await make_tenant("acme", ("payments",))
    payment = await pay(client, acme)
    raw = raw_override or msgspec.json.encode(intent_event(payment))
    signature = sign_webhook(raw, secret, int(time.time()) - age_s)
    response = await client.post(WEBHOOK, content=raw, headers={"Stripe-Signature": signature})
    assert says in assert_problem(response, 400)["detail"]
    assert (await client.get(f"/v1/payments/{payment['id']}", headers=acme)).json()["status"] != "succeeded"
    assert await ledger_rows(app, "payment_webhook_events") == []
    assert [t for t, _ in await events(app, "acme")] == ["payment.created"]


@pytest.mark.parametrize(
    "signature",
    [None, "", "garbage", "t=abc,v1=00", "t=1700000000", "v1=deadbeef", "t=1,v1=\u00e9\u00e9"],
)
async def test_malformed_signature_headers_are_400(client: Client, signature: str | None) -> None:
    headers = {} if signature is None else {"Stripe-Signature": signature.encode("latin-1")}
    response = await client.post(WEBHOOK, content=b'{"id": "evt_1"}', headers=headers)
    assert_problem(response, 400)


async def test_unknown_objects_are_acknowledged_and_ignored(client: Client, app: Litestar) -> None:
    stranger = {"provider_id": "pi_someone_else", "amount": 5, "currency": "eur"}
    response = await deliver(client, intent_event(stranger))
    assert response.status_code == 200 and response.json()["payment_id"] is None
    other_type = {"id": "evt_customer", "type": "customer.created", "data": {"object": {"id": "cus_1"}}}
    assert (await deliver(client, other_type)).status_code == 200
    assert await ledger_rows(app) == []


# ------------------------------------------------------------------- refunds ---


async def refund(
    client: Client, headers: dict[str, str], payment_id: str, idem: str | None = None, **body: Any
) -> httpx.Response:
    idem_headers = {"Idempotency-Key": idem} if idem else key()
    return await client.post(
        f"/v1/payments/{payment_id}/refunds", json=body, headers={**headers, **idem_headers}
    )


async def test_partial_then_full_refund_and_no_over_refund(
    client: Client, app: Litestar, make_tenant: MakeTenant
) -> None:
    acme = await make_tenant("acme", ("payments",))
    payment = await pay(client, acme, amount=1000)
    assert (
        "only succeeded" in assert_problem(await refund(client, acme, payment["id"], amount=1), 409)["detail"]
    )
    await succeed(client, payment)
    partial = await refund(client, acme, payment["id"], idem="r1", amount=300, reason="requested_by_customer")
    assert partial.status_code == 201, partial.text
    assert partial.json()["amount"] == 300 and partial.json()["provider_id"].startswith("re_")
    replay = await refund(client, acme, payment["id"], idem="r1", amount=300, reason="requested_by_customer")
    assert replay.status_code == 201 and replay.json() == partial.json()
    assert_problem(await refund(client, acme, payment["id"], idem="r1", amount=301), 422)
    over = await refund(client, acme, payment["id"], amount=701)
    assert "700 still refundable" in assert_problem(over, 422)["detail"]
    rest = await refund(client, acme, payment["id"])  # no amount: everything still refundable
    assert rest.status_code == 201 and rest.json()["amount"] == 700
    assert (
        "fully refunded" in assert_problem(await refund(client, acme, payment["id"], amount=1), 422)["detail"]
    )
    detail = (await client.get(f"/v1/payments/{payment['id']}", headers=acme)).json()
    assert [r["amount"] for r in detail["refunds"]] == [300, 700]
    assert detail["amount_refunded"] == 1000
    refunded = [p for t, p in await events(app, "acme") if t == "payment.refunded"]
    assert [p["amount"] for p in refunded] == [300, 700] and refunded[-1]["amount_refunded"] == 1000


async def test_concurrent_refunds_never_exceed_the_captured_amount(
    client: Client, app: Litestar, make_tenant: MakeTenant
) -> None:
    acme = await make_tenant("acme", ("payments",))
    payment = await pay(client, acme, amount=1000)
    await succeed(client, payment)
    answers = await asyncio.gather(*(refund(client, acme, payment["id"], amount=300) for _ in range(6)))
    assert sorted(a.status_code for a in answers) == [201, 201, 201, 422, 422, 422]
    rows = await ledger_rows(app, "payment_refunds")
    assert sum(r["amount"] for r in rows if r["status"] == "succeeded") == 900 and len(rows) == 3


@pytest.mark.parametrize(
    ("body", "status"),
    [({"amount": 0}, 422), ({"amount": -5}, 422), ({"reason": "because"}, 422), ({"extra": 1}, 422)],
)
async def test_bad_refund_requests(
    client: Client, make_tenant: MakeTenant, body: dict[str, Any], status: int
) -> None:
    acme = await make_tenant("acme", ("payments",))
    payment = await pay(client, acme)
    assert_problem(await refund(client, acme, payment["id"], **body), status)
    missing_key = await client.post(f"/v1/payments/{payment['id']}/refunds", json={}, headers=acme)
    assert "Idempotency-Key" in assert_problem(missing_key, 400)["detail"]


async def test_refund_webhooks_settle_and_record_outside_refunds(
    client: Client, app: Litestar, make_tenant: MakeTenant
) -> None:
    acme = await make_tenant("acme", ("payments",))
    payment = await pay(client, acme, amount=1000)
    await succeed(client, payment)
    # A refund made in the Stripe dashboard reaches the ledger through charge.refunded.
    charge = {
        "id": "ch_1",
        "object": "charge",
        "payment_intent": payment["provider_id"],
        "refunds": {
            "data": [{"id": "re_dashboard", "object": "refund", "amount": 250, "status": "succeeded"}]
        },
    }
    event = {"id": f"evt_{uuid.uuid4().hex}", "type": "charge.refunded", "data": {"object": charge}}
    assert (await deliver(client, event)).status_code == 200
    assert (await deliver(client, {**event, "id": f"evt_{uuid.uuid4().hex}"})).status_code == 200
    detail = (await client.get(f"/v1/payments/{payment['id']}", headers=acme)).json()
    assert [(r["provider_id"], r["amount"]) for r in detail["refunds"]] == [("re_dashboard", 250)]
    over = await refund(client, acme, payment["id"], amount=751)
    assert "750 still refundable" in assert_problem(over, 422)["detail"]
    assert [t for t, _ in await events(app, "acme")].count("payment.refunded") == 1


async def test_a_refund_failing_later_releases_its_amount(
    client: Client, app: Litestar, make_tenant: MakeTenant
) -> None:
    acme = await make_tenant("acme", ("payments",))
    payment = await pay(client, acme, amount=1000)
    await succeed(client, payment)
    made = (await refund(client, acme, payment["id"], amount=1000)).json()
    meta = {
        "appliance_tenant": "acme",
        "appliance_payment_id": payment["id"],
        "appliance_refund_id": made["id"],
    }
    failed = {
        "id": made["provider_id"],
        "object": "refund",
        "amount": 1000,
        "status": "failed",
        "payment_intent": payment["provider_id"],
        "metadata": meta,
    }
    event = {"id": f"evt_{uuid.uuid4().hex}", "type": "refund.failed", "data": {"object": failed}}
    assert (await deliver(client, event)).status_code == 200
    detail = (await client.get(f"/v1/payments/{payment['id']}", headers=acme)).json()
    assert [r["status"] for r in detail["refunds"]] == ["failed"] and detail["amount_refunded"] == 0
    assert (await refund(client, acme, payment["id"], amount=1000)).status_code == 201


# --------------------------------------------------------- tenant isolation ---


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/v1/payments/{id}", None, 404),
        ("POST", "/v1/payments/{id}/refunds", {"amount": 1}, 404),
        ("GET", "/v1/payments", None, 200),
    ],
)
async def test_tenant_isolation(
    client: Client, make_tenant: MakeTenant, method: str, path: str, body: Any, status: int
) -> None:
    acme = await make_tenant("acme", ("payments",))
    payment = await pay(client, acme, amount=777)
    await succeed(client, payment)
    other = await make_tenant("globex", ("payments",))
    url = path.format(id=payment["id"])
    response = await client.request(method, url, json=body, headers={**other, **key()})
    assert response.status_code == status, response.text
    # The 404 may echo the id the caller sent, but never the payment itself.
    assert payment["provider_id"] not in response.text and "777" not in response.text
    if method == "GET" and status == 200:
        assert payment["id"] not in response.text
    # A key of the right tenant without the payments scope gets nowhere either.
    no_scope = await make_tenant("acme", ("storage",), name="storage-only")
    assert_problem(await client.request(method, url, json=body, headers={**no_scope, **key()}), 403)
    assert_problem(
        await client.post(
            "/v1/payments", json={"amount": 1, "currency": "eur"}, headers={**no_scope, **key()}
        ),
        403,
    )


async def test_root_acts_in_a_tenant_only_through_x_tenant_id(
    client: Client, make_tenant: MakeTenant
) -> None:
    acme = await make_tenant("acme", ("payments",))
    payment = await pay(client, acme)
    assert (await client.get(f"/v1/payments/{payment['id']}", headers=ROOT)).status_code == 404
    as_acme = await client.get(f"/v1/payments/{payment['id']}", headers={**ROOT, "X-Tenant-ID": "acme"})
    assert as_acme.status_code == 200


# -------------------------------------------------------------------- faults ---


class FaultyStripe:
    """A loopback HTTP proxy in front of stripe-mock that records calls and injects faults.

    ``swallow`` = N: the next N requests reach stripe-mock (Stripe accepted them) but their answers
    are never delivered, so the client times out. ``canned`` answers every request itself.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.calls: list[tuple[str, str, str | None]] = []
        self.swallow = 0
        self.canned: tuple[int, bytes] | None = None
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @contextlib.contextmanager
    def serving(self) -> Iterator[FaultyStripe]:
        """Serve from a thread of its own: the test client runs the app on another event loop."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        stop = asyncio.Event()

        async def main() -> None:
            async with httpx.AsyncClient(base_url=self.upstream, trust_env=False) as self._http:
                server = await asyncio.start_server(self._track, "127.0.0.1", 0)
                self.port = server.sockets[0].getsockname()[1]
                ready.set()
                async with server:
                    await stop.wait()
                for task in self._tasks:
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
        thread.start()
        assert ready.wait(10), "the fault proxy did not start"
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(10)
            loop.close()

    async def _track(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._tasks.discard(task)

    def posts(self, path: str) -> list[str | None]:
        return [idem for method, p, idem in self.calls if method == "POST" and p == path]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, path, _ = head[0].split(" ", 2)
            headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in head[1:] if line)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.calls.append((method, path, headers.get("idempotency-key")))
            if self.canned is not None:
                status, payload = self.canned
            else:
                forwarded = {
                    k: v for k, v in headers.items() if k not in ("host", "content-length", "connection")
                }
                upstream = await self._http.request(method, path, content=body, headers=forwarded)
                if self.swallow > 0:
                    self.swallow -= 1
                    await reader.read()  # hold the answer until the client gives up and hangs up
                    return
                status, payload = upstream.status_code, upstream.content
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
def faulty(stripe_peer: StripePeer) -> Iterator[FaultyStripe]:
    with FaultyStripe(stripe_peer.url).serving() as proxy:
        yield proxy


def fault_settings(tmp_path: Path, api_base: str) -> Settings:
    return make_settings(
        tmp_path / "data",
        stripe_key="sk_test_123",
        stripe_webhook_secret=SECRET,
        stripe_api_base=api_base,
        stripe_timeout_s=0.3,
    )


async def test_timeout_after_stripe_accepted_never_charges_twice(
    tmp_path: Path, faulty: FaultyStripe
) -> None:
    async with running(fault_settings(tmp_path, faulty.url)) as (client, app):
        tenant = {**ROOT, "Idempotency-Key": "checkout-7"}
        body = {"amount": 4200, "currency": "eur", "payment_method": "pm_card_visa"}
        # Every attempt of the first request reaches Stripe, but no answer comes back in time.
        faulty.swallow = 3
        first = await client.post("/v1/payments", json=body, headers=tenant)
        assert "Stripe" in assert_problem(first, 503)["detail"]
        rows = await ledger_rows(app)
        assert [(r["status"], r["provider_id"]) for r in rows] == [("pending", None)]
        # The client retries with the same key; this time Stripe's answer gets through.
        retried = await client.post("/v1/payments", json=body, headers=tenant)
        assert retried.status_code == 201, retried.text
        again = await client.post("/v1/payments", json=body, headers=tenant)
        assert again.json() == retried.json()
        rows = await ledger_rows(app)
        assert len(rows) == 1 and rows[0]["provider_id"] == retried.json()["provider_id"]
        # Every provider call carried one and the same idempotency key, so Stripe charges once.
        keys = faulty.posts("/v1/payment_intents")
        assert len(keys) == 4 and set(keys) == {rows[0]["id"]}
        assert [t for t, _ in await events(app, "default")] == ["payment.created"]


async def test_expired_stored_responses_replay_from_the_ledger_without_calling_stripe(
    client: Client, app: Litestar, make_tenant: MakeTenant
) -> None:
    acme = await make_tenant("acme", ("payments",))
    body = {"amount": 1000, "currency": "eur", "payment_method": "pm_card_visa"}
    first = await client.post("/v1/payments", json=body, headers={**acme, "Idempotency-Key": "p"})
    await succeed(client, first.json())
    made = await refund(client, acme, first.json()["id"], idem="r", amount=100)
    # On the app's own loop: its workers hold the same write locks (one per shard with shards).
    assert client.blocking_portal.call(app.state.ctx.idempotency.expire, -1) == 2
    again = await client.post("/v1/payments", json=body, headers={**acme, "Idempotency-Key": "p"})
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
    assert (
        again.json()["status"] == "succeeded" and again.json()["provider_id"] == first.json()["provider_id"]
    )
    assert (await refund(client, acme, first.json()["id"], idem="r", amount=100)).json() == made.json()
    assert len(await ledger_rows(app)) == 1 and len(await ledger_rows(app, "payment_refunds")) == 1


async def test_a_refund_lost_in_flight_keeps_its_reservation_until_retried(
    tmp_path: Path, faulty: FaultyStripe
) -> None:
    async with running(fault_settings(tmp_path, faulty.url)) as (client, app):
        payment = await pay(client, ROOT, amount=1000)
        await succeed(client, payment)
        faulty.swallow = 3
        lost = await refund(client, ROOT, payment["id"], idem="refund-1", amount=600)
        assert "Stripe" in assert_problem(lost, 503)["detail"]
        # The pending refund still counts: nobody can refund those 600 twice meanwhile.
        assert (
            "400 still refundable"
            in assert_problem(await refund(client, ROOT, payment["id"], amount=401), 422)["detail"]
        )
        retried = await refund(client, ROOT, payment["id"], idem="refund-1", amount=600)
        assert retried.status_code == 201 and retried.json()["status"] == "succeeded"
        rows = await ledger_rows(app, "payment_refunds")
        assert len(rows) == 1 and set(faulty.posts("/v1/refunds")) == {rows[0]["id"]}
        assert [t for t, _ in await events(app, "default")].count("payment.refunded") == 1


async def test_a_slow_answer_is_retried_inside_one_request(tmp_path: Path, faulty: FaultyStripe) -> None:
    async with running(fault_settings(tmp_path, faulty.url)) as (client, app):
        faulty.swallow = 1
        response = await client.post(
            "/v1/payments", json={"amount": 100, "currency": "eur"}, headers={**ROOT, **key()}
        )
        assert response.status_code == 201, response.text
        keys = faulty.posts("/v1/payment_intents")
        assert len(keys) == 2 and set(keys) == {response.json()["id"]}
        assert len(await ledger_rows(app)) == 1


async def test_a_declined_card_is_402_and_recorded_as_failed(tmp_path: Path, faulty: FaultyStripe) -> None:
    declined = {
        "error": {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": "insufficient_funds",
            "message": "Your card has insufficient funds.",
            "payment_intent": {
                "id": "pi_declined",
                "object": "payment_intent",
                "status": "requires_payment_method",
                "amount": 900,
                "currency": "eur",
                "amount_received": 0,
                "metadata": {},
            },
        }
    }
    faulty.canned = (402, msgspec.json.encode(declined))
    async with running(fault_settings(tmp_path, faulty.url)) as (client, app):
        headers = {**ROOT, **key()}
        body = {"amount": 900, "currency": "eur", "payment_method": "pm_card_chargeDeclined"}
        response = await client.post("/v1/payments", json=body, headers=headers)
        assert "insufficient funds" in assert_problem(response, 402)["detail"]
        replay = await client.post("/v1/payments", json=body, headers=headers)
        assert_problem(replay, 402)
        assert len(faulty.posts("/v1/payment_intents")) == 1
        rows = await ledger_rows(app)
        assert [(r["status"], r["provider_id"]) for r in rows] == [("failed", "pi_declined")]
        assert [t for t, _ in await events(app, "default")] == ["payment.created", "payment.failed"]
        # Declines are the card's fault, not Stripe's: they never trip the breaker or readiness.
        assert (await readiness(client))["payments"]["ok"]


async def test_a_concurrent_request_with_the_same_key_is_409_and_leaves_the_entry_pending(
    tmp_path: Path, faulty: FaultyStripe
) -> None:
    busy = {
        "error": {
            "type": "idempotency_error",
            "message": "Keys for idempotent requests can only be used"
            " with the same parameters they were first used with.",
        }
    }
    faulty.canned = (409, msgspec.json.encode(busy))
    async with running(fault_settings(tmp_path, faulty.url)) as (client, app):
        headers = {**ROOT, **key()}
        response = await client.post("/v1/payments", json={"amount": 100, "currency": "eur"}, headers=headers)
        assert "idempotency key" in assert_problem(response, 409)["detail"]
        assert [r["status"] for r in await ledger_rows(app)] == ["pending"]
        faulty.canned = None  # Stripe is done with the first request: the retry completes the same entry
        retried = await client.post("/v1/payments", json={"amount": 100, "currency": "eur"}, headers=headers)
        assert retried.status_code == 201 and [r["id"] for r in await ledger_rows(app)] == [
            retried.json()["id"]
        ]


async def test_stripe_down_is_503_naming_it_then_the_breaker_opens(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    async with running(fault_settings(tmp_path, closed)) as (client, _):
        ready = await client.get("/readyz")
        assert "payments" in assert_problem(ready, 503)["detail"]
        details = []
        for _ in range(5):
            response = await client.post(
                "/v1/payments", json={"amount": 100, "currency": "eur"}, headers={**ROOT, **key()}
            )
            details.append(assert_problem(response, 503)["detail"])
        assert all("Stripe" in d for d in details)
        assert "could not be reached" in details[0] and "circuit breaker open" in details[-1]
        # Reads of the ledger do not need Stripe.
        listing = await client.get("/v1/payments", headers=ROOT)
        assert listing.status_code == 200 and {p["status"] for p in listing.json()["items"]} == {"pending"}


async def test_a_webhook_overtaking_a_lost_answer_completes_the_pending_row(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    async with running(fault_settings(tmp_path, closed)) as (client, app):
        response = await client.post(
            "/v1/payments", json={"amount": 300, "currency": "eur"}, headers={**ROOT, **key()}
        )
        assert_problem(response, 503)
        (row,) = await ledger_rows(app)
        meta = {"appliance_tenant": "default", "appliance_payment_id": row["id"]}
        pending = {"provider_id": None, "amount": 300, "currency": "eur"}
        event = intent_event(pending, metadata=meta, provider_id="pi_from_webhook")
        assert (await deliver(client, event)).json()["payment_id"] == row["id"]
        fetched = (await client.get(f"/v1/payments/{row['id']}", headers=ROOT)).json()
        assert fetched["provider_id"] == "pi_from_webhook" and fetched["status"] == "succeeded"
        assert [t for t, _ in await events(app, "default")] == ["payment.created", "payment.succeeded"]


async def test_deleting_a_tenant_deletes_its_ledger(
    client: Client, app: Litestar, make_tenant: MakeTenant
) -> None:
    acme = await make_tenant("acme", ("payments",))
    payment = await pay(client, acme)
    await succeed(client, payment)
    assert (await refund(client, acme, payment["id"], amount=10)).status_code == 201
    assert (await client.delete("/v1/tenants/acme", headers=ROOT)).status_code == 204
    for table in ("payments", "payment_refunds", "payment_webhook_events"):
        assert await ledger_rows(app, table) == []
