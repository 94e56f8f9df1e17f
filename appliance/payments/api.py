"""Payment routes: API.md "Payments". Thin: parse, call :class:`PaymentService`, shape the response."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Response, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import HeaderParameter, JSONBody, Parameter, RawBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED
from litestar.types import ControllerRouterHandler

from appliance.core.auth import requires
from appliance.core.deps import AppContext, Caller
from appliance.core.errors import PROBLEM_JSON, BadRequest
from appliance.core.pagination import DEFAULT_LIMIT, Cursor, Limit, Page
from appliance.payments.ledger import Payment, PaymentDetail, Refund
from appliance.payments.service import (
    CreatedPayment,
    NewPayment,
    NewRefund,
    PaymentService,
    WebhookReceipt,
)

__all__ = ["ROUTES"]

IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        description="Required. A repeat with the same key and body replays the first response.",
    ),
]
PaymentId = Annotated[str, Parameter(max_length=64, description="the ledger id (pay_...)")]
Status = Annotated[str | None, Parameter(max_length=32, description="only payments in this status")]


def _service(ctx: AppContext) -> PaymentService:
    return ctx.service("payments", PaymentService)


def _required(key: str | None) -> str:
    if key is None:
        raise BadRequest(
            "the Idempotency-Key header is required: send a unique value (e.g. a UUID) per payment or refund,"
            " and the same value when you retry it",
            slug="idempotency-key-required",
        )
    return key


def _reply(status: int, body: bytes) -> Response[Any]:
    media = PROBLEM_JSON if status >= 400 else "application/json"
    return Response(content=body, status_code=status, media_type=media)


class PaymentController(Controller):
    path = "/v1/payments"
    tags = ["payments"]
    guards = [requires("payments")]

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Create a payment (Idempotency-Key required)",
        responses={201: ResponseSpec(CreatedPayment, description="the payment, first or replayed")},
    )
    async def create(
        self,
        ctx: AppContext,
        principal: Caller,
        data: JSONBody[NewPayment],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[Any]:
        key = _required(idempotency_key)
        return _reply(*await _service(ctx).create(principal.tenant, key, data))

    @get("/", summary="The tenant's payments ledger, newest first")
    async def list_payments(
        self,
        ctx: AppContext,
        principal: Caller,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
        status: Status = None,
    ) -> Page[Payment]:
        return await _service(ctx).list(principal.tenant, limit, cursor, status)

    @get("/{payment_id:str}", summary="One payment with its refunds")
    async def get_payment(self, ctx: AppContext, principal: Caller, payment_id: PaymentId) -> PaymentDetail:
        return await _service(ctx).get(principal.tenant, payment_id)

    @post(
        "/{payment_id:str}/refunds",
        status_code=HTTP_201_CREATED,
        summary="Refund part or all of a payment (Idempotency-Key required)",
        responses={201: ResponseSpec(Refund, description="the refund, first or replayed")},
    )
    async def refund(
        self,
        ctx: AppContext,
        principal: Caller,
        payment_id: PaymentId,
        data: JSONBody[NewRefund],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[Any]:
        key = _required(idempotency_key)
        return _reply(*await _service(ctx).refund(principal.tenant, payment_id, key, data))


@post(
    "/v1/webhooks/stripe",
    exclude_from_auth=True,
    status_code=HTTP_200_OK,
    tags=["payments"],
    summary="Stripe webhooks, verified by Stripe-Signature (no API key)",
)
async def stripe_webhook(
    ctx: AppContext,
    body: RawBody,
    stripe_signature: Annotated[str | None, HeaderParameter(name="Stripe-Signature", max_length=4096)] = None,
) -> WebhookReceipt:
    return await _service(ctx).handle_webhook(body, stripe_signature)


ROUTES: list[ControllerRouterHandler] = [PaymentController, stripe_webhook]
