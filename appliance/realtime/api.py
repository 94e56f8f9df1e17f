"""Routes of API.md "Realtime": tokens, the WebSocket (and its SSE fallback), broadcast, the connection list."""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec
from litestar import Controller, get, post, websocket
from litestar.connection import WebSocket
from litestar.exceptions import WebSocketException
from litestar.params import JSONBody, Parameter
from litestar.response import ServerSentEvent
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED
from litestar.types import ControllerRouterHandler

from appliance.core.auth import requires
from appliance.core.deps import AppContext, Caller
from appliance.core.errors import Unauthorized, Unprocessable
from appliance.core.pagination import DEFAULT_LIMIT, Cursor, Limit, Page
from appliance.core.tenants import Principal
from appliance.realtime import BroadcastFilter, Connection, Tags, UserId
from appliance.realtime.service import EVENT_PATTERN, CloseCode, Hub
from appliance.realtime.tokens import TOKEN_KEY_PREFIX, TokenClaims

__all__ = ["routes"]

ChannelPath = Annotated[str, Parameter(max_length=128, description="a channel name of the tenant")]


class NewToken(msgspec.Struct, forbid_unknown_fields=True):
    user_id: UserId
    tags: Tags = msgspec.field(default_factory=list)
    ttl_s: Annotated[int, msgspec.Meta(ge=1, le=86400)] = 300


class IssuedToken(msgspec.Struct):
    token: str
    expires_at: float


class BroadcastRequest(msgspec.Struct, forbid_unknown_fields=True):
    data: Any
    event: Annotated[str, msgspec.Meta(pattern=EVENT_PATTERN)] = "message"
    filter: BroadcastFilter | None = None


class Broadcasted(msgspec.Struct):
    id: str
    delivered: int


def _hub(ctx: AppContext) -> Hub:
    return ctx.service("realtime", Hub)


class RealtimeController(Controller):
    tags = ["realtime"]
    guards = [requires("realtime")]

    @post(
        "/v1/realtime/tokens",
        status_code=HTTP_201_CREATED,
        summary="A short-lived token for ?token= on /v1/ws (for browsers)",
    )
    async def create_token(self, ctx: AppContext, principal: Caller, data: JSONBody[NewToken]) -> IssuedToken:
        expires_at = round(time.time() + data.ttl_s, 3)
        claims = TokenClaims(
            tenant=principal.tenant,
            key_id=principal.key_id,
            user_id=data.user_id,
            tags=list(data.tags),
            expires_at=expires_at,
        )
        return IssuedToken(token=_hub(ctx).tokens.mint(claims), expires_at=expires_at)

    @post(
        "/v1/channels/{channel:str}/broadcast",
        status_code=HTTP_202_ACCEPTED,
        summary="Send to the channel's subscribers on every node, optionally filtered by user ids and tags",
    )
    async def broadcast(
        self, ctx: AppContext, principal: Caller, channel: ChannelPath, data: JSONBody[BroadcastRequest]
    ) -> Broadcasted:
        message_id, delivered = await _hub(ctx).publish(
            principal.tenant, channel, data.data, event=data.event, filter=data.filter
        )
        return Broadcasted(id=message_id, delivered=delivered)

    @get("/v1/connections", summary="The tenant's live WebSocket connections on every node")
    async def list_connections(
        self, ctx: AppContext, principal: Caller, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
    ) -> Page[Connection]:
        return await _hub(ctx).registry.list(principal.tenant, limit, cursor)


@get(
    "/v1/sse",
    opt={"token_auth": True},
    guards=[requires("realtime")],
    tags=["realtime"],
    summary="Server-sent events fallback: the WebSocket's server frames for ?channel=a&channel=b",
)
async def realtime_stream(
    ctx: AppContext,
    principal: Caller,
    channel: Annotated[list[str], Parameter(description="channels to subscribe to (repeat the parameter)")],
    token: Annotated[str | None, Parameter(description="a token from POST /v1/realtime/tokens")] = None,
    user_id: Annotated[
        str | None, Parameter(description="with an API key: the user this stream is for")
    ] = None,
    tags: Annotated[str | None, Parameter(description="with an API key: comma-separated tags")] = None,
) -> ServerSentEvent:
    """The same frames as ``/v1/ws`` as SSE ``data:`` lines, for clients that cannot open a WebSocket."""
    hub = _hub(ctx)
    who, labels = _identity(hub, principal, token, user_id, tags)
    conn = await hub.open_stream(principal.tenant, who, labels, channel)
    return ServerSentEvent(hub.stream(conn), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@websocket("/v1/ws", name="realtime-ws")
async def realtime_socket(socket: WebSocket[Any, Any, Any], ctx: AppContext, principal: Caller) -> None:
    """The realtime WebSocket: key in ``Authorization`` or ``?token=``; frames as in docs/realtime.md."""
    if not principal.allows("realtime"):
        raise WebSocketException(detail="this key lacks the 'realtime' scope", code=CloseCode.FORBIDDEN)
    hub = _hub(ctx)
    query = socket.query_params
    try:
        user_id, tags = _identity(hub, principal, query.get("token"), query.get("user_id"), query.get("tags"))
    except Unauthorized as exc:
        raise WebSocketException(detail=exc.detail, code=CloseCode.UNAUTHORIZED) from None
    except Unprocessable as exc:
        raise WebSocketException(detail=exc.detail[:120], code=CloseCode.INVALID) from None
    await socket.accept()
    await hub.serve(socket, principal.tenant, user_id, tags)


class _Identity(msgspec.Struct):
    user_id: UserId | None
    tags: Tags


def _identity(
    hub: Hub, principal: Principal, token: str | None, user_id: str | None, tags: str | None
) -> tuple[str | None, list[str]]:
    """Who is connecting: from the token's claims, or (API key) from ``?user_id=&tags=a,b``."""
    if principal.key_id.startswith(TOKEN_KEY_PREFIX):
        claims = hub.tokens.decode(token or "")
        if claims is None:  # expired between the middleware's check and now
            raise Unauthorized("the token expired")
        return claims.user_id, list(claims.tags)
    try:
        parsed = msgspec.convert(
            {"user_id": user_id, "tags": [t for t in (tags or "").split(",") if t]}, _Identity
        )
    except msgspec.ValidationError as exc:
        raise Unprocessable(f"user_id or tags: {exc}") from None
    return parsed.user_id, parsed.tags


def routes() -> list[ControllerRouterHandler]:
    return [RealtimeController, realtime_socket, realtime_stream]
