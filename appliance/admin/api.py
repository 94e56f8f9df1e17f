"""Admin endpoints: sign in and out of the web UI, and what the UI needs to know about the box."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_204_NO_CONTENT

from appliance.admin.sessions import COOKIE, SessionStore, csrf_token
from appliance.core.auth import requires
from appliance.core.deps import AppContext, Caller
from appliance.core.errors import Forbidden, Problem, Unauthorized
from appliance.core.tenants import Principal

__all__ = ["CAPABILITY_PATHS", "session_handlers"]

# What each capability's panel needs, and the route prefix that shows it is installed.
CAPABILITY_PATHS = {
    "storage": "/v1/buckets",
    "search": "/v1/indexes",
    "jobs": "/v1/queues",
    "events": "/v1/events",
    "realtime": "/v1/connections",
    "notify": "/v1/email",
    "payments": "/v1/payments",
    "users": "/v1/users",
}


class UnsupportedMediaType(Problem):
    status, slug = 415, "unsupported-media-type"


class SignIn(msgspec.Struct, forbid_unknown_fields=True):
    key: Annotated[str, msgspec.Meta(min_length=1, max_length=300)]


class SessionInfo(msgspec.Struct):
    tenant: str
    key_id: str
    scopes: list[str]
    is_root: bool
    csrf_token: str
    expires_at: float


class PluginView(msgspec.Struct):
    name: str
    version: str
    enabled: bool
    hooks: list[str]


class PanelView(msgspec.Struct):
    id: str
    title: str
    module_url: str


class PluginsView(msgspec.Struct):
    plugins: list[PluginView]
    panels: list[PanelView]


class CapabilityView(msgspec.Struct):
    name: str
    installed: bool
    path: str


class CapabilitiesView(msgspec.Struct):
    capabilities: list[CapabilityView]


def _refuse_cross_site(request: Request[Any, Any, Any]) -> None:
    # Login CSRF: another site must not sign a visitor's browser in to the attacker's session.
    # Browsers send Origin on cross-origin POSTs; a plain form cannot send application/json.
    origin = request.headers.get("origin")
    public = urlsplit(request.app.state.ctx.settings.public_url).netloc
    # Behind a proxy that rewrites Host, APPLIANCE_PUBLIC_URL names the origin browsers see.
    allowed = {request.headers.get("host", ""), request.headers.get("x-forwarded-host", ""), public} - {""}
    if origin and urlsplit(origin).netloc not in allowed:
        raise Forbidden(f"sign-in from another origin ({origin}) is refused")
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise UnsupportedMediaType("send the key as JSON: Content-Type: application/json")


def _info(principal: Principal, session_id: str, expires_at: float) -> SessionInfo:
    return SessionInfo(
        tenant=principal.tenant,
        key_id=principal.key_id,
        scopes=sorted(principal.scopes),
        is_root=principal.is_root,
        csrf_token=csrf_token(session_id),
        expires_at=expires_at,
    )


def session_handlers(store: SessionStore, max_age: int) -> list[Any]:
    """The session and introspection endpoints, bound to ``store``."""

    @post(
        "/admin/api/session",
        exclude_from_auth=True,
        status_code=HTTP_200_OK,
        tags=["admin"],
        summary="Sign in to the admin UI with the root key or an admin-scoped key",
    )
    async def sign_in(
        ctx: AppContext, request: Request[Any, Any, Any], data: JSONBody[SignIn]
    ) -> Response[Any]:
        _refuse_cross_site(request)
        principal = await ctx.keys.authenticate(data.key.strip())
        if principal is None:
            raise Unauthorized("this key is unknown, malformed or revoked")
        if not (principal.is_root or "admin" in principal.scopes):
            raise Forbidden("the admin UI needs the root key or a key with the 'admin' scope")
        session_id = await store.create(principal)
        record = await store.resolve(session_id)
        assert record is not None  # just created
        response = Response(_info(principal, session_id, record.expires_at))
        response.set_cookie(
            COOKIE,
            session_id,
            max_age=max_age,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @get("/admin/api/session", tags=["admin"], summary="The signed-in session and its CSRF token")
    async def current(request: Request[Any, Any, Any]) -> SessionInfo:
        session_id = request.cookies.get(COOKIE, "")
        record = await store.resolve(session_id) if session_id else None
        if record is None:
            raise Unauthorized("no admin session: sign in with POST /admin/api/session")
        return _info(record.principal, session_id, record.expires_at)

    @delete("/admin/api/session", status_code=HTTP_204_NO_CONTENT, tags=["admin"], summary="Sign out")
    async def sign_out(request: Request[Any, Any, Any]) -> Response[None]:
        session_id = request.cookies.get(COOKIE, "")
        if session_id:
            await store.delete(session_id)
        response: Response[None] = Response(None, status_code=HTTP_204_NO_CONTENT)
        response.delete_cookie(COOKIE, path="/")
        return response

    @get("/admin/api/plugins", guards=[requires("admin")], tags=["admin"], summary="Plugins and their panels")
    async def plugins(ctx: AppContext) -> PluginsView:
        panels = [p for group in ctx.plugins.hook.appliance_admin_panels() for p in group]
        return PluginsView(
            plugins=[PluginView(i.name, i.version, i.enabled, list(i.hooks)) for i in ctx.plugin_infos],
            panels=[PanelView(p.id, p.title, p.module_url) for p in panels],
        )

    @get(
        "/admin/api/capabilities",
        guards=[requires("admin")],
        tags=["admin"],
        summary="Which capabilities this appliance has installed",
    )
    async def capabilities(request: Request[Any, Any, Any], principal: Caller) -> CapabilitiesView:
        paths = [route.path for route in request.app.routes]
        return CapabilitiesView(
            capabilities=[
                CapabilityView(name, any(p.startswith(prefix) for p in paths), prefix)
                for name, prefix in CAPABILITY_PATHS.items()
            ]
        )

    return [sign_in, current, sign_out, plugins, capabilities]
