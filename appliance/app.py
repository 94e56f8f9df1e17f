"""``create_app(settings) -> Litestar``: the one place where everything is wired.

Each capability exposes ``install(ctx) -> route handlers``; it registers its migrations, startup
and shutdown steps, health checks and services on the :class:`~appliance.core.context.Context`.
Plugins add theirs through the hooks in :mod:`appliance.plugin`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.types import ControllerRouterHandler

from appliance import __version__, ops
from appliance.admin import install as install_admin
from appliance.config import Settings, load_settings
from appliance.core import api as core_api
from appliance.core.auth import ApiKeyMiddleware
from appliance.core.context import Context, Role, build_context
from appliance.core.deps import DEPENDENCIES
from appliance.core.errors import exception_handlers
from appliance.core.http_log import RequestLogMiddleware, stamp_request_id
from appliance.core.metrics import http_metrics_middleware
from appliance.core.ratelimit import rate_limit_middleware
from appliance.events import install as install_events
from appliance.jobs import install as install_jobs
from appliance.notify import install as install_notify
from appliance.payments import install as install_payments
from appliance.realtime import install as install_realtime
from appliance.search import install as install_search
from appliance.storage import install as install_storage
from appliance.users import install as install_users

__all__ = ["assemble", "create_app"]

Installer = Callable[[Context], list[ControllerRouterHandler]]

# Capabilities in dependency order: later ones may use services the earlier ones provide.
CAPABILITIES: list[Installer] = [
    core_api.install,
    install_jobs,
    install_realtime,
    install_events,
    install_storage,
    install_search,
    install_payments,
    install_notify,
    install_users,
    ops.install,
    install_admin,  # last: it lists the capabilities installed before it
]

_AUTH_EXCLUDE = ["^/schema"]


def assemble(
    settings: Settings, role: Role = "all", extra_plugins: Iterable[object] = ()
) -> tuple[Context, list[ControllerRouterHandler]]:
    """Build the context and install every capability and plugin; returns the route handlers."""
    ctx = build_context(settings, role=role, extra_plugins=extra_plugins)
    handlers: list[ControllerRouterHandler] = []
    for install in CAPABILITIES:
        handlers.extend(install(ctx))
    for group in ctx.plugins.hook.appliance_route_handlers(ctx=ctx):
        handlers.extend(group)
    return ctx, handlers


def create_app(settings: Settings | None = None, extra_plugins: Iterable[object] = ()) -> Litestar:
    """The appliance as an ASGI app. ``extra_plugins`` registers plugin objects directly (tests)."""
    settings = settings or load_settings()
    ctx, handlers = assemble(settings, extra_plugins=extra_plugins)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        async with ctx.running():
            yield

    return Litestar(
        route_handlers=handlers,
        dependencies=DEPENDENCIES,
        middleware=[
            RequestLogMiddleware,
            http_metrics_middleware(),
            *rate_limit_middleware(ctx),
            DefineMiddleware(ApiKeyMiddleware, exclude=_AUTH_EXCLUDE),
        ],
        exception_handlers=exception_handlers,
        before_send=[stamp_request_id],
        openapi_config=_openapi(),
        state=State({"ctx": ctx}),
        lifespan=[lifespan],
        request_max_body_size=settings.max_request_body_bytes,
        logging_config=None,
    )


def _openapi() -> OpenAPIConfig:
    # Only the JSON document: the HTML renderers load scripts from CDNs, and the box may be offline.
    return OpenAPIConfig(
        title="The appliance",
        version=__version__,
        description="Object storage, search, jobs, events, realtime, email, push and payments in one box.",
        path="/schema",
        render_plugins=[JsonRenderPlugin(path="/openapi.json")],
    )
