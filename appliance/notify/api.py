"""Routes of API.md "Notifications": templates, email, Web Push. Thin: parse, call the service, shape."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.params import JSONBody, Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT
from litestar.types import ControllerRouterHandler

from appliance.core.auth import requires
from appliance.core.deps import AppContext, Caller
from appliance.core.idempotency import IdempotencyKey, idempotent_response
from appliance.core.pagination import DEFAULT_LIMIT, Cursor, Limit, Page
from appliance.notify import (
    BulkAccepted,
    EmailAccepted,
    EmailRecord,
    EmailRequest,
    PushAccepted,
    PushRecord,
    PushRequest,
    Subscription,
    SubscriptionIn,
    Template,
    TemplateIn,
)
from appliance.notify.capture import CapturedEmail
from appliance.notify.service import NotifyService

__all__ = ["ROUTES"]

Id = Annotated[str, Parameter(max_length=64)]
TemplateName = Annotated[str, Parameter(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")]
BulkBody = Annotated[list[EmailRequest], msgspec.Meta(min_length=1, max_length=1000)]


class PublicKey(msgspec.Struct):
    key: str


def _notify(ctx: AppContext) -> NotifyService:
    return ctx.service("notify", NotifyService)


class TemplateController(Controller):
    path = "/v1/templates"
    tags = ["notify"]
    guards = [requires("notify")]

    @put("/{name:str}", status_code=HTTP_200_OK, summary="Create (201) or replace (200) an email template")
    async def put_template(
        self, ctx: AppContext, principal: Caller, name: TemplateName, data: JSONBody[TemplateIn]
    ) -> Response[Template]:
        template, created = await _notify(ctx).put_template(principal.tenant, name, data)
        return Response(template, status_code=HTTP_201_CREATED if created else HTTP_200_OK)

    @get("/", summary="List the tenant's templates")
    async def list_templates(
        self, ctx: AppContext, principal: Caller, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
    ) -> Page[Template]:
        return await _notify(ctx).list_templates(principal.tenant, limit, cursor)

    @get("/{name:str}", summary="One template")
    async def get_template(self, ctx: AppContext, principal: Caller, name: TemplateName) -> Template:
        return await _notify(ctx).get_template(principal.tenant, name)

    @delete("/{name:str}", status_code=HTTP_204_NO_CONTENT, summary="Delete a template")
    async def delete_template(self, ctx: AppContext, principal: Caller, name: TemplateName) -> None:
        await _notify(ctx).delete_template(principal.tenant, name)


class EmailController(Controller):
    path = "/v1/email"
    tags = ["notify"]
    guards = [requires("notify")]

    @post("/", status_code=HTTP_202_ACCEPTED, summary="Queue one email (templated or literal) -> 202 {id}")
    async def send(
        self,
        ctx: AppContext,
        principal: Caller,
        request: Request[Any, Any, Any],
        data: JSONBody[EmailRequest],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[bytes]:
        service = _notify(ctx)

        async def create(tx: Any) -> tuple[int, EmailAccepted]:
            return HTTP_202_ACCEPTED, await service.send_email(principal.tenant, data, tx=tx)

        return await idempotent_response(
            ctx.idempotency, principal.tenant, "email", idempotency_key, request, create
        )

    @get("/", summary="Capture mode: the captured messages, newest first, optionally only those to ?to=")
    async def list_captured(
        self,
        ctx: AppContext,
        principal: Caller,
        to: Annotated[str | None, Parameter(max_length=320)] = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> Page[CapturedEmail]:
        return await _notify(ctx).list_captured(principal.tenant, to, limit, cursor)

    @get("/{email_id:str}", summary="An email's status: queued|sending|sent|captured|failed|dead")
    async def status(self, ctx: AppContext, principal: Caller, email_id: Id) -> EmailRecord:
        return await _notify(ctx).get_email(principal.tenant, email_id)


@post(
    "/v1/email:bulk",
    status_code=HTTP_202_ACCEPTED,
    guards=[requires("notify")],
    tags=["notify"],
    summary="Queue up to 1000 emails, delivered at APPLIANCE_MAIL_BULK_RATE",
)
async def send_bulk(
    ctx: AppContext,
    principal: Caller,
    request: Request[Any, Any, Any],
    data: JSONBody[BulkBody],
    idempotency_key: IdempotencyKey = None,
) -> Response[bytes]:
    service = _notify(ctx)

    async def create(tx: Any) -> tuple[int, BulkAccepted]:
        return HTTP_202_ACCEPTED, await service.send_bulk(principal.tenant, list(data), tx)

    return await idempotent_response(
        ctx.idempotency, principal.tenant, "email:bulk", idempotency_key, request, create
    )


class PushController(Controller):
    path = "/v1/push"
    tags = ["notify"]
    guards = [requires("notify")]

    @get("/vapid-public-key", summary="The VAPID application server key browsers subscribe with")
    async def vapid_public_key(self, ctx: AppContext) -> PublicKey:
        return PublicKey(key=_notify(ctx).pusher.public_key())

    @post("/subscriptions", status_code=HTTP_201_CREATED, summary="Store a user's browser push subscription")
    async def subscribe(
        self, ctx: AppContext, principal: Caller, data: JSONBody[SubscriptionIn]
    ) -> Response[Subscription]:
        sub, created = await _notify(ctx).subscribe(principal.tenant, data)
        return Response(sub, status_code=HTTP_201_CREATED if created else HTTP_200_OK)

    @get("/subscriptions", summary="The tenant's push subscriptions, optionally one user's")
    async def list_subscriptions(
        self,
        ctx: AppContext,
        principal: Caller,
        user_id: Annotated[str | None, Parameter(max_length=200)] = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> Page[Subscription]:
        return await _notify(ctx).list_subscriptions(principal.tenant, user_id, limit, cursor)

    @delete("/subscriptions/{sub_id:str}", status_code=HTTP_204_NO_CONTENT, summary="Remove a subscription")
    async def unsubscribe(self, ctx: AppContext, principal: Caller, sub_id: Id) -> None:
        await _notify(ctx).unsubscribe(principal.tenant, sub_id)

    @post("/", status_code=HTTP_202_ACCEPTED, summary="Push to a user's or a topic's subscriptions -> 202")
    async def push(
        self,
        ctx: AppContext,
        principal: Caller,
        request: Request[Any, Any, Any],
        data: JSONBody[PushRequest],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[bytes]:
        service = _notify(ctx)

        async def create(tx: Any) -> tuple[int, PushAccepted]:
            return HTTP_202_ACCEPTED, await service.push(principal.tenant, data, tx)

        return await idempotent_response(
            ctx.idempotency, principal.tenant, "push", idempotency_key, request, create
        )

    @get("/{push_id:str}", summary="A push's delivery counts and status")
    async def status(self, ctx: AppContext, principal: Caller, push_id: Id) -> PushRecord:
        return await _notify(ctx).get_push(principal.tenant, push_id)


ROUTES: list[ControllerRouterHandler] = [TemplateController, EmailController, send_bulk, PushController]
