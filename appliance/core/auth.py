"""Authentication middleware and scope guards.

Every request but the few marked ``exclude_from_auth`` must carry ``Authorization: Bearer <key>``.
The middleware resolves the key to a :class:`Principal` whose ``tenant`` scopes everything the
request touches: a non-root key's own tenant, or for the root key the tenant named by ``X-Tenant-ID``
(``default`` when absent).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.exceptions import NotAuthorizedException, WebSocketException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.types import Guard

from appliance.core.errors import Forbidden, NotFound, Unprocessable
from appliance.core.shards import bind_tenant
from appliance.core.tenants import Principal, valid_tenant_id

__all__ = ["ApiKeyMiddleware", "CredentialResolver", "TokenVerifier", "requires", "root_only"]

TENANT_HEADER = "x-tenant-id"
# A capability may accept its own short-lived tokens in ``?token=`` on WebSockets and on routes with
# ``opt={"token_auth": True}`` (realtime does, for browsers, which cannot set headers there).
TokenVerifier = Callable[[str], Awaitable[Principal | None]]
# Other credentials for HTTP requests without a bearer key (the admin UI's session cookie): a resolver
# returns the principal, ``None`` if the request carries none of its credential, or raises a Problem.
CredentialResolver = Callable[[ASGIConnection[Any, Any, Any, Any]], Awaitable[Principal | None]]


def _bearer(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def _accepts_tokens(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    # WebSockets, and HTTP routes that opt in (the realtime SSE stream: EventSource sets no headers).
    return connection.scope["type"] == ScopeType.WEBSOCKET or bool(
        connection.route_handler.opt.get("token_auth")
    )


class ApiKeyMiddleware(AbstractAuthenticationMiddleware):
    """Resolves the bearer key (or a capability token) to a tenant-scoped principal."""

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        ctx = connection.app.state.ctx
        principal: Principal | None = None
        secret = _bearer(connection)
        if secret is not None:
            principal = await ctx.keys.authenticate(secret)
        elif connection.query_params.get("token") and _accepts_tokens(connection):
            for verify in ctx.token_verifiers:
                principal = await verify(connection.query_params["token"])
                if principal is not None:
                    break
        elif connection.scope["type"] == ScopeType.HTTP:
            for resolve in ctx.credential_resolvers:
                principal = await resolve(connection)
                if principal is not None:
                    break
        if principal is None and connection.scope["type"] == ScopeType.WEBSOCKET:
            # Close the handshake with 4401 (a plain HTTP error would surface as a generic 4500).
            raise WebSocketException(detail="missing, invalid or expired key or token", code=4401)
        if principal is None:
            raise NotAuthorizedException(
                "missing, invalid or revoked API key: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": 'Bearer realm="appliance"'},
            )
        principal = await _with_tenant(ctx, principal, connection.headers.get(TENANT_HEADER))
        # Everything this request does from here on reads and writes the tenant's shard.
        bind_tenant(principal.tenant)
        return AuthenticationResult(user=principal, auth=principal)


async def _with_tenant(ctx: Any, principal: Principal, requested: str | None) -> Principal:
    if requested is None or requested == principal.tenant:
        return principal
    if not principal.is_root:
        raise Forbidden("X-Tenant-ID is honoured only for the root key; this key belongs to another tenant")
    if not valid_tenant_id(requested):
        raise Unprocessable("X-Tenant-ID must be 1-63 lowercase letters, digits or dashes")
    if not await ctx.tenants.exists(requested):
        raise NotFound(f"tenant {requested!r} (from X-Tenant-ID) does not exist")
    return Principal(tenant=requested, key_id=principal.key_id, scopes=principal.scopes, is_root=True)


def requires(scope: str) -> Guard:
    """A guard that lets the request through only if its key carries ``scope`` (or ``admin``, or is root)."""

    # Async on purpose: Litestar runs a sync guard in a worker thread, a hand-off on every request.
    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        principal: Principal = connection.auth
        if not principal.allows(scope):
            raise Forbidden(f"this key lacks the {scope!r} scope")

    guard.__name__ = f"requires_{scope}"
    return guard


async def root_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """A guard for operations on tenants themselves: only the root key may."""
    if not connection.auth.is_root:
        raise Forbidden("only the root key may manage tenants")
