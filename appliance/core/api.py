"""Health, identity, tenants and keys: API.md "Health and admin"."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Response, delete, get, post
from litestar.datastructures import Headers
from litestar.params import JSONBody, Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT
from litestar.types import ControllerRouterHandler

from appliance.core.auth import requires, root_only
from appliance.core.context import BackendStatus, Context, HealthCheck
from appliance.core.db import Database
from appliance.core.deps import AppContext, Caller
from appliance.core.errors import Unauthorized, problem_response
from appliance.core.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from appliance.core.metrics import MetricFamily, authorized, render
from appliance.core.pagination import DEFAULT_LIMIT, Cursor, Limit, Page
from appliance.core.shards import DIRECTORY, ShardedDatabase
from appliance.core.tenants import SCOPES, ApiKey, CreatedKey, Tenant, TenantId

__all__ = ["install"]

Scope = Annotated[str, msgspec.Meta(pattern="^(" + "|".join(SCOPES) + ")$")]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    status: str
    backends: list[BackendStatus]


class WhoAmI(msgspec.Struct):
    tenant: str
    key_id: str
    scopes: list[str]
    is_root: bool


class NewTenant(msgspec.Struct, forbid_unknown_fields=True):
    id: TenantId
    name: Name


class NewKey(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    scopes: Annotated[list[Scope], msgspec.Meta(min_length=1, max_length=len(SCOPES))]


@get("/healthz", exclude_from_auth=True, tags=["health"], summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@get(
    "/readyz",
    exclude_from_auth=True,
    tags=["health"],
    summary="Every backend answers (503 naming those down)",
)
async def readyz(ctx: AppContext) -> Response[Any]:
    statuses = await ctx.check_health()
    down = [s.name for s in statuses if not s.ok]
    if down:
        return problem_response(
            503,
            f"backends down: {', '.join(down)}",
            slug="backend-unavailable",
            backends=msgspec.to_builtins(statuses),
        )
    return Response(Readiness(status="ready", backends=statuses), status_code=HTTP_200_OK)


@get(
    "/metrics",
    exclude_from_auth=True,
    tags=["health"],
    summary="Prometheus metrics (metrics token or root key)",
)
async def metrics(ctx: AppContext, headers: Headers) -> Response[bytes]:
    scheme, _, bearer = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not authorized(
        bearer.strip(), ctx.settings.metrics_token, ctx.keys.is_root
    ):
        raise Unauthorized(
            "send the metrics token (APPLIANCE_METRICS_TOKEN) or the root key as a bearer token",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    families = [family for source in ctx.metrics for family in await source()]
    return Response(render(families), media_type=METRICS_CONTENT_TYPE)


@get("/v1/whoami", tags=["identity"], summary="The calling key")
async def whoami(principal: Caller) -> WhoAmI:
    return WhoAmI(
        tenant=principal.tenant,
        key_id=principal.key_id,
        scopes=sorted(principal.scopes),
        is_root=principal.is_root,
    )


class TenantController(Controller):
    path = "/v1/tenants"
    tags = ["tenants"]
    guards = [root_only]

    @post("/", status_code=HTTP_201_CREATED, summary="Create a tenant (root key)")
    async def create(self, ctx: AppContext, data: JSONBody[NewTenant]) -> Tenant:
        return await ctx.tenants.create(data.id, data.name)

    @get("/", summary="List tenants (root key)")
    async def list_tenants(
        self, ctx: AppContext, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
    ) -> Page[Tenant]:
        return await ctx.tenants.list(limit, cursor)

    @get("/{tenant_id:str}", summary="One tenant (root key)")
    async def get_tenant(
        self, ctx: AppContext, tenant_id: Annotated[str, Parameter(max_length=63)]
    ) -> Tenant:
        return await ctx.tenants.get(tenant_id)

    @delete("/{tenant_id:str}", status_code=HTTP_204_NO_CONTENT, summary="Delete a tenant and all it owns")
    async def delete_tenant(
        self, ctx: AppContext, tenant_id: Annotated[str, Parameter(max_length=63)]
    ) -> None:
        await ctx.tenants.delete(tenant_id)


class KeyController(Controller):
    path = "/v1/keys"
    tags = ["keys"]
    guards = [requires("admin")]

    @post("/", status_code=HTTP_201_CREATED, summary="Create a key; its secret is shown this once")
    async def create(self, ctx: AppContext, principal: Caller, data: JSONBody[NewKey]) -> CreatedKey:
        return await ctx.keys.create(principal.tenant, data.name, list(data.scopes))

    @get("/", summary="List the tenant's live keys (never their secrets)")
    async def list_keys(
        self, ctx: AppContext, principal: Caller, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
    ) -> Page[ApiKey]:
        return await ctx.keys.list(principal.tenant, limit, cursor)

    @delete("/{key_id:str}", status_code=HTTP_204_NO_CONTENT, summary="Revoke a key, effective immediately")
    async def revoke(
        self, ctx: AppContext, principal: Caller, key_id: Annotated[str, Parameter(max_length=64)]
    ) -> None:
        await ctx.keys.revoke(principal.tenant, key_id)


async def redis_status(url: str) -> BackendStatus:
    """Whether the shared Redis answers (rate limits, and the capabilities that move there)."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    client = Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        info = await client.info("server")
        return BackendStatus(
            name="redis", backend="redis", mode="server", ok=True, version=str(info["redis_version"])
        )
    except (RedisError, OSError) as exc:
        hint = "is redis-server running and APPLIANCE_REDIS_URL right?"
        return BackendStatus(name="redis", backend="redis", mode="server", ok=False, detail=f"{exc}; {hint}")
    finally:
        await client.aclose()


def _database_status(name: str, db: Database, ok: bool, detail: str, version: str = "") -> BackendStatus:
    """A metadata database's status: PostgreSQL is a server, SQLite is embedded."""
    postgres = db.dialect == "postgres"
    return BackendStatus(
        name=name,
        backend="postgresql" if postgres else "sqlite",
        mode="server" if postgres else "embedded",
        ok=ok,
        detail=detail,
        version=version,
    )


def shard_checks(sharded: ShardedDatabase) -> list[HealthCheck]:
    """One check per shard besides the directory (``metadata``): each must answer a query."""

    def check(name: str, db: Database) -> HealthCheck:
        async def shard() -> BackendStatus:
            try:
                await db.fetchone("SELECT 1")
            except Exception as exc:
                hint = "is it up, and listed right in APPLIANCE_DATABASE_SHARDS?"
                return _database_status(f"shard:{name}", db, ok=False, detail=f"{db.location}: {exc}; {hint}")
            return _database_status(f"shard:{name}", db, ok=True, detail=db.location)

        return shard

    return [check(name, db) for name, db in sharded.shards.items() if name != DIRECTORY]


def install(ctx: Context) -> list[ControllerRouterHandler]:
    """The core routes and the metadata DB's health check; the core's migrations are already on the context."""

    async def metadata() -> BackendStatus:
        postgres = ctx.db.dialect == "postgres"
        row = await ctx.db.fetchone("SHOW server_version" if postgres else "SELECT sqlite_version() AS v")
        return _database_status(
            "metadata",
            ctx.db,
            ok=True,
            detail=ctx.db.location if postgres else "",
            version=str(row[0]) if row else "",
        )

    ctx.health.append(metadata)
    if ctx.sharded is not None:
        ctx.health.extend(shard_checks(ctx.sharded))
    if ctx.settings.redis_url:
        ctx.health.append(lambda: redis_status(ctx.settings.redis_url))

    async def core_metrics() -> list[MetricFamily]:
        counts = await ctx.db.fetchone(
            "SELECT (SELECT count(*) FROM tenants) AS tenants,"
            " (SELECT count(*) FROM api_keys WHERE revoked_at IS NULL) AS api_keys,"
            " (SELECT count(*) FROM outbox) AS outbox"
        )
        assert counts is not None
        return [
            MetricFamily("appliance_tenants", "Tenants.", "gauge", [({}, counts["tenants"])]),
            MetricFamily(
                "appliance_api_keys", "Live (unrevoked) API keys.", "gauge", [({}, counts["api_keys"])]
            ),
            MetricFamily(
                "appliance_outbox_depth",
                "Events committed but not yet dispatched.",
                "gauge",
                [({}, counts["outbox"])],
            ),
        ]

    ctx.metrics.append(core_metrics)
    return [healthz, readyz, metrics, whoami, TenantController, KeyController]
