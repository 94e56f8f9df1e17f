"""API.md "Jobs": enqueue (one or bulk), status, dead letters and their retry."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.params import JSONBody, Parameter
from litestar.status_codes import HTTP_201_CREATED
from litestar.types import ControllerRouterHandler

from appliance.core.auth import requires
from appliance.core.deps import AppContext, Caller
from appliance.core.errors import Unprocessable
from appliance.core.idempotency import IdempotencyKey, idempotent_response
from appliance.core.pagination import DEFAULT_LIMIT, Cursor, Limit, Page
from appliance.jobs import QUEUE_PATTERN, JobRecord, JobService, NewJob

__all__ = ["public", "routes"]

QueuePath = Annotated[str, Parameter(pattern=QUEUE_PATTERN, description="queue name (lowercase, . _ -)")]
JobIdPath = Annotated[str, Parameter(max_length=200)]
MAX_BULK = 1000
INTERNAL_PREFIX = "appliance."


def public(record: JobRecord) -> JobRecord:
    """The record as clients see it: an ``http`` job's signing secret is never echoed back."""
    if "secret" in record.payload:
        record.payload = {**record.payload, "secret": "***"}
    return record


def _check_types(service: JobService, jobs: list[NewJob]) -> None:
    known = service.handlers()
    for job in jobs:
        if job.type.startswith(INTERNAL_PREFIX):
            raise Unprocessable(f"job type {job.type!r}: types starting with 'appliance.' are internal")
        if job.type not in known:
            raise Unprocessable(
                f"no handler is registered for job type {job.type!r}; known types: {sorted(known)}"
            )


class JobController(Controller):
    path = "/v1/queues/{queue:str}"
    tags = ["jobs"]
    guards = [requires("jobs")]

    @post("/jobs", status_code=HTTP_201_CREATED, summary="Enqueue a job (job_id dedupes)")
    async def enqueue(
        self,
        ctx: AppContext,
        principal: Caller,
        request: Request[Any, Any, Any],
        queue: QueuePath,
        data: JSONBody[NewJob],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[bytes]:
        service = ctx.service("jobs", JobService)
        _check_types(service, [data])

        async def create(tx: Any) -> tuple[int, Any]:
            record = await service.enqueue(principal.tenant, queue, data, tx=tx)
            return HTTP_201_CREATED, public(record)

        scope = f"jobs:{queue}"
        return await idempotent_response(
            ctx.idempotency, principal.tenant, scope, idempotency_key, request, create
        )

    @post("/jobs:bulk", status_code=HTTP_201_CREATED, summary="Enqueue up to 1000 jobs at once; returns ids")
    async def enqueue_bulk(
        self,
        ctx: AppContext,
        principal: Caller,
        request: Request[Any, Any, Any],
        queue: QueuePath,
        data: JSONBody[list[NewJob]],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[bytes]:
        if not 1 <= len(data) <= MAX_BULK:
            raise Unprocessable(f"send between 1 and {MAX_BULK} jobs (got {len(data)})")
        service = ctx.service("jobs", JobService)
        _check_types(service, data)

        async def create(tx: Any) -> tuple[int, Any]:
            records = await service.enqueue_bulk(principal.tenant, queue, data, tx=tx)
            return HTTP_201_CREATED, [r.id for r in records]

        scope = f"jobs-bulk:{queue}"
        return await idempotent_response(
            ctx.idempotency, principal.tenant, scope, idempotency_key, request, create
        )

    @get("/jobs/{job_id:str}", summary="A job's status, attempts, result and error")
    async def get_job(
        self, ctx: AppContext, principal: Caller, queue: QueuePath, job_id: JobIdPath
    ) -> JobRecord:
        return public(await ctx.service("jobs", JobService).get(principal.tenant, queue, job_id))

    @get("/dead", summary="Dead-lettered jobs (dead after their last attempt, or failed permanently)")
    async def dead(
        self,
        ctx: AppContext,
        principal: Caller,
        queue: QueuePath,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> Page[JobRecord]:
        page = await ctx.service("jobs", JobService).dead(principal.tenant, queue, limit, cursor)
        page.items = [public(r) for r in page.items]
        return page

    @post("/dead/{job_id:str}/retry", status_code=200, summary="Queue a dead-lettered job again")
    async def retry(
        self, ctx: AppContext, principal: Caller, queue: QueuePath, job_id: JobIdPath
    ) -> JobRecord:
        return public(await ctx.service("jobs", JobService).retry_dead(principal.tenant, queue, job_id))


def routes() -> list[ControllerRouterHandler]:
    return [JobController]
