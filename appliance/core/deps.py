"""Dependencies every route handler may ask for, by name and type.

``ctx: AppContext`` gives the app's :class:`Context`; ``principal: Caller`` the calling key's
tenant-scoped :class:`Principal`. Both work for HTTP and WebSocket handlers.
"""

from __future__ import annotations

from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.types import Scope

from appliance.core.context import Context
from appliance.core.tenants import Principal

__all__ = ["DEPENDENCIES", "AppContext", "Caller"]

AppContext = NamedDependency[Context]
Caller = NamedDependency[Principal]


def _ctx(state: State) -> Context:
    ctx: Context = state.ctx
    return ctx


def _principal(scope: Scope, ctx: AppContext) -> Principal:
    # ``ctx`` only orders the two: Litestar resolves dependencies of the same depth in an anyio task
    # group (two tasks per request); one after the other, each is a plain await.
    principal: Principal = scope["auth"]
    return principal


DEPENDENCIES = {
    "ctx": Provide(_ctx, sync_to_thread=False),
    "principal": Provide(_principal, sync_to_thread=False),
}
