"""Jobs: a durable, tenant-scoped queue with retries, dead letters and a built-in signed ``http`` type.

The port is :class:`JobQueue`; adapters are ``sqlite`` (the embedded default, in the metadata DB) and
``arq`` (when ``APPLIANCE_REDIS_URL`` is set). :class:`JobService` (provided as ``ctx.services["jobs"]``)
adds validation, handler lookup and the workers on top of whichever adapter :func:`make_queue` picks.

Other capabilities enqueue with ``await ctx.service("jobs", JobService).enqueue(tenant, queue, NewJob(...),
tx=tx)``: with ``tx`` the job commits (or not) with the caller's own writes. Handlers are
``async def handler(job: Job) -> Any``: the JSON-able return value is stored as the result; raising
retries with backoff; raising :class:`PermanentJobError` fails the job at once.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

import msgspec
from litestar.types import ControllerRouterHandler

from appliance.core.db import Tx
from appliance.core.pagination import Page

if TYPE_CHECKING:
    from appliance.core.context import BackendStatus, Context

__all__ = [
    "QUEUE_PATTERN",
    "Backoff",
    "Job",
    "JobHandler",
    "JobQueue",
    "JobRecord",
    "JobService",
    "JobStatus",
    "NewJob",
    "PermanentJobError",
    "QueueName",
    "install",
]

JobStatus = Literal["queued", "running", "succeeded", "failed", "dead"]
QUEUE_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
QueueName = Annotated[str, msgspec.Meta(pattern=QUEUE_PATTERN)]
JobType = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
JobId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")]


class PermanentJobError(Exception):
    """Raise from a handler to fail the job now, without further attempts (status ``failed``)."""


class Backoff(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Exponential backoff between attempts: ``initial_s * factor**(attempt-1)``, capped, with full jitter."""

    initial_s: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 1.0
    factor: Annotated[float, msgspec.Meta(ge=1, le=10)] = 2.0
    max_s: Annotated[float, msgspec.Meta(ge=0, le=7 * 86400)] = 300.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed ``attempt`` (1-based): a random point in the upper half of the step."""
        step = min(self.max_s, self.initial_s * self.factor ** max(0, attempt - 1))
        return step / 2 + random.random() * step / 2


class NewJob(msgspec.Struct, forbid_unknown_fields=True):
    """A job to enqueue (the body of ``POST /v1/queues/{queue}/jobs``)."""

    type: JobType
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    delay_s: Annotated[float, msgspec.Meta(ge=0, le=30 * 86400)] = 0.0
    priority: Annotated[int, msgspec.Meta(ge=-100, le=100)] = 0
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5
    backoff: Backoff = msgspec.field(default_factory=Backoff)
    job_id: JobId | None = None
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0


class Job(msgspec.Struct, kw_only=True):
    """What a handler receives: one attempt at one job."""

    id: str
    tenant: str
    queue: str
    type: str
    payload: dict[str, Any]
    attempt: int
    max_attempts: int
    priority: int = 0
    timeout_s: float = 60.0
    created_at: float = 0.0


class Attempt(msgspec.Struct, kw_only=True):
    attempt: int
    started_at: float
    finished_at: float | None = None
    error: str | None = None


class JobRecord(msgspec.Struct, kw_only=True):
    """A job's status (``GET /v1/queues/{queue}/jobs/{id}``). Higher ``priority`` runs first."""

    id: str
    tenant: str
    queue: str
    type: str
    status: JobStatus
    payload: dict[str, Any]
    priority: int
    attempts: int
    max_attempts: int
    result: Any = None
    error: str | None = None
    created_at: float
    run_at: float
    started_at: float | None = None
    finished_at: float | None = None
    history: list[Attempt] = msgspec.field(default_factory=list)


JobHandler = Callable[[Job], Awaitable[Any]]


class JobQueue(Protocol):
    """A durable job queue. Every method is scoped by ``tenant`` (and ``queue``)."""

    name: str

    async def start(self) -> None:
        """Connect (called once at startup, before anything else)."""

    async def close(self) -> None:
        """Stop the workers and disconnect."""

    async def enqueue(self, tenant: str, queue: str, jobs: list[NewJob], tx: Tx | None) -> list[JobRecord]:
        """Record ``jobs`` durably; a ``job_id`` already present returns the existing job, unchanged.

        With ``tx`` the jobs are part of the caller's transaction: they exist only if it commits, and no
        worker sees them before. Without, they are committed before this returns.
        """

    async def get(self, tenant: str, queue: str, job_id: str) -> JobRecord | None:
        """One job, or ``None``."""

    async def dead(self, tenant: str, queue: str, limit: int, cursor: str | None) -> Page[JobRecord]:
        """The dead-letter list: jobs that ``failed`` permanently or are ``dead`` (attempts exhausted)."""

    async def retry_dead(self, tenant: str, queue: str, job_id: str) -> JobRecord | None:
        """Queue a dead or failed job again with a fresh set of attempts; ``None`` if it is not there."""

    async def run(self, handlers: Callable[[], dict[str, JobHandler]], concurrency: int) -> None:
        """Run workers until :meth:`close` (a background task)."""

    async def drain(self, handlers: dict[str, JobHandler], concurrency: int) -> int:
        """Run every job due now (and the retries that fall due meanwhile) until none is left; return how many."""

    async def health(self) -> BackendStatus:
        """Whether the backend answers, with a detail for ``/readyz``."""

    async def purge(self, tenant: str) -> None:
        """Delete what the tenant owns outside tables that cascade from ``tenants``."""


def install(ctx: Context) -> list[ControllerRouterHandler]:
    from appliance.core.metrics import gauges_from_query
    from appliance.jobs.api import routes
    from appliance.jobs.service import install_service

    install_service(ctx)
    ctx.metrics.append(
        gauges_from_query(
            ctx.db,
            "SELECT status, count(*) FROM jobs GROUP BY status",
            "appliance_jobs",
            "Jobs by status (succeeded ones are kept for APPLIANCE_JOB_RETENTION_DAYS).",
            "status",
        )
    )
    return routes()


from appliance.jobs.service import JobService  # noqa: E402  (service.py imports the records above)
