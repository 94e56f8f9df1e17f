"""The web admin UI at ``/admin``: static files, sessions for the browser, and a few admin endpoints.

The UI talks to the public REST API like any client; signing in trades an API key for an HttpOnly
session cookie that the auth middleware accepts through ``ctx.credential_resolvers``.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Response
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

from appliance.admin.api import session_handlers
from appliance.admin.sessions import MIGRATIONS, SessionStore
from appliance.core.context import Context

__all__ = ["CONTENT_SECURITY_POLICY", "install", "web_dir"]

# Nothing but the appliance's own origin: the box may be offline, and a captured email's remote
# images must not phone home. Inline styles are allowed for SVG charts and rendered emails.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:;"
    " connect-src 'self'; frame-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def web_dir() -> Path:
    """The UI's files: shipped inside the package when installed, ``web/`` in a source checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_web", package.parent / "web"):
        if (candidate / "index.html").is_file():
            return candidate
    raise RuntimeError(
        f"the admin UI files are missing (looked in {package / '_web'} and {package.parent / 'web'})"
    )


async def _secure_headers(response: Response) -> Response:  # type: ignore[type-arg]
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-cache"
    return response


def install(ctx: Context) -> list[ControllerRouterHandler]:
    """Serve ``/admin``, accept the session cookie as a credential, add the session endpoints."""
    ctx.migrations.extend(MIGRATIONS)
    store = SessionStore(
        ctx.db.directory, ctx.settings.admin_session_idle_s, ctx.settings.admin_session_max_s
    )
    ctx.provide("admin_sessions", store)
    ctx.credential_resolvers.append(store.resolve_request)
    static = create_static_files_router(
        path="/admin",
        directories=[web_dir()],
        html_mode=True,
        name="admin-ui",
        opt={"exclude_from_auth": True},
        after_request=_secure_headers,
        include_in_schema=False,
    )
    return [*session_handlers(store, ctx.settings.admin_session_max_s), static]
