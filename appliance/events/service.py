"""The events service: publish, the log, rules, and the dispatcher that turns the outbox into jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import TYPE_CHECKING, Any

import msgspec

from appliance.core.db import IntegrityError, Migration, Row, Tx
from appliance.core.errors import Conflict, NotFound, Unprocessable
from appliance.core.ids import new_id
from appliance.core.outbox import Event, emit
from appliance.core.pagination import DEFAULT_LIMIT, Page, decode_cursor, encode_cursor
from appliance.core.shards import current_shard, on_shard
from appliance.events import DELIVERY_QUEUE, FORWARD_PATTERN, EventForwarder, NewRule, Rule
from appliance.events.patterns import Pattern, PatternError, compile_pattern
from appliance.events.targets import (
    CHANNEL_JOB,
    ChannelTarget,
    JobTarget,
    TargetRegistry,
    WebhookTarget,
    event_document,
)
from appliance.jobs import Job, JobService, NewJob, PermanentJobError
from appliance.plugin import EventHandlerSpec

if TYPE_CHECKING:
    from appliance.core.context import Context

__all__ = ["HANDLER_JOB", "MIGRATIONS", "EventService", "install_service"]

log = logging.getLogger("appliance.events")

HANDLER_JOB = "appliance.event"
BATCH = 200
POLL_S = 1.0
SWEEP_EVERY_S = 600.0

MIGRATIONS = [
    Migration(
        "events",
        1,
        "event rules",
        """
        CREATE TABLE event_rules (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            pattern TEXT NOT NULL,
            targets TEXT NOT NULL,
            created_at REAL NOT NULL,
            UNIQUE (tenant_id, name)
        );
        CREATE INDEX events_by_time ON events (created_at);
        """,
    )
]


def _rule(row: Row) -> Rule:
    return Rule(
        id=row["id"],
        tenant=row["tenant_id"],
        name=row["name"],
        pattern=msgspec.json.decode(row["pattern"]),
        targets=msgspec.json.decode(row["targets"]),
        created_at=row["created_at"],
    )


def _event(row: Row) -> Event:
    return Event(
        id=row["id"],
        tenant=row["tenant_id"],
        source=row["source"],
        type=row["type"],
        payload=msgspec.json.decode(row["payload"]),
        created_at=row["created_at"],
    )


def _handler_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:-]", "-", name)[:60]


class EventService:
    """What the API and other capabilities use (``ctx.services["events"]``)."""

    def __init__(self, ctx: Context, jobs: JobService) -> None:
        self.ctx = ctx
        self.jobs = jobs
        self.targets = TargetRegistry()
        self.targets.register(WebhookTarget())
        self.targets.register(JobTarget(lambda: set(jobs.handlers())))
        self.targets.register(ChannelTarget())
        self._compiled: dict[str, tuple[str, Pattern]] = {}  # rule id -> (pattern JSON, compiled)
        self._handlers: list[tuple[EventHandlerSpec, Pattern]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._last_sweeps: dict[str, float] = {}  # per shard
        # With shards, a tenant being moved keeps its outbox until it lands on its new shard.
        self._not_fenced = (
            " WHERE o.tenant_id NOT IN (SELECT tenant_id FROM tenant_fence)" if ctx.sharded else ""
        )

    # -------------------------------------------------------------- publish ---

    async def publish(
        self, tenant: str, source: str, type: str, payload: dict[str, Any], *, tx: Tx | None = None
    ) -> Event:
        """Record an event (in ``tx`` if given, so it commits with the caller's writes) for delivery."""
        if tx is not None:
            return await emit(tx, tenant, source, type, payload, self.ctx.outbox)
        async with self.ctx.db.transaction() as own:
            return await emit(own, tenant, source, type, payload, self.ctx.outbox)

    async def log(
        self,
        tenant: str,
        type: str | None = None,
        since: float | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> Page[Event]:
        """The tenant's event log, oldest first, optionally of one ``type`` and from ``since`` (unix seconds)."""
        after = decode_cursor(cursor, str) if cursor else ""
        clauses: list[str] = ["tenant_id = ?", "id > ?"]
        params: list[Any] = [tenant, after]
        if type:
            clauses.append("type = ?")
            params.append(type)
        if since is not None:
            clauses.append("created_at >= ?")
            params.append(since)
        rows = await self.ctx.db.fetchall(
            "SELECT id, tenant_id, source, type, payload, created_at FROM events"
            f" WHERE {' AND '.join(clauses)} ORDER BY id LIMIT ?",
            (*params, limit + 1),
        )
        items = [_event(r) for r in rows[:limit]]
        return Page(items=items, next_cursor=encode_cursor(items[-1].id) if len(rows) > limit else None)

    # ---------------------------------------------------------------- rules ---

    async def create_rule(self, tenant: str, data: NewRule, tx: Tx | None = None) -> Rule:
        """Validate and store a rule; 422 says what is wrong with the pattern or a target."""
        try:
            compile_pattern(data.pattern)
        except PatternError as exc:
            raise Unprocessable(str(exc)) from None
        targets = self.targets.validate(data.targets)
        rule = Rule(
            id=new_id("rule"),
            tenant=tenant,
            name=data.name,
            pattern=data.pattern,
            targets=targets,
            created_at=time.time(),
        )
        params = (
            rule.id,
            tenant,
            rule.name,
            msgspec.json.encode(rule.pattern).decode(),
            msgspec.json.encode(targets).decode(),
            rule.created_at,
        )
        sql = "INSERT INTO event_rules (id, tenant_id, name, pattern, targets, created_at) VALUES (?, ?, ?, ?, ?, ?)"
        try:
            if tx is not None:
                await tx.execute(sql, params)
            else:
                await self.ctx.db.execute(sql, params)
        except IntegrityError:
            raise Conflict(
                f"a rule named {data.name!r} already exists; delete it or pick another name"
            ) from None
        return rule

    async def list_rules(
        self, tenant: str, limit: int = DEFAULT_LIMIT, cursor: str | None = None
    ) -> Page[Rule]:
        after = decode_cursor(cursor, str) if cursor else ""
        rows = await self.ctx.db.fetchall(
            "SELECT * FROM event_rules WHERE tenant_id = ? AND id > ? ORDER BY id LIMIT ?",
            (tenant, after, limit + 1),
        )
        items = [_rule(r) for r in rows[:limit]]
        return Page(items=items, next_cursor=encode_cursor(items[-1].id) if len(rows) > limit else None)

    async def get_rule(self, tenant: str, rule_id: str) -> Rule:
        row = await self.ctx.db.fetchone(
            "SELECT * FROM event_rules WHERE tenant_id = ? AND id = ?", (tenant, rule_id)
        )
        if row is None:
            raise NotFound(f"no rule {rule_id!r}")
        return _rule(row)

    async def delete_rule(self, tenant: str, rule_id: str) -> None:
        changed = await self.ctx.db.execute(
            "DELETE FROM event_rules WHERE tenant_id = ? AND id = ?", (tenant, rule_id)
        )
        if not changed:
            raise NotFound(f"no rule {rule_id!r}")

    # ----------------------------------------------------------- dispatcher ---

    def handler_specs(self) -> list[tuple[EventHandlerSpec, Pattern]]:
        """The in-process handlers with their compiled patterns (a bad pattern is logged and skipped)."""
        if self._handlers is None:
            self._handlers = []
            for spec in self.ctx.event_handlers():
                try:
                    self._handlers.append((spec, compile_pattern(spec.pattern)))
                except PatternError as exc:
                    log.error("event handler %r has an invalid pattern and will not run: %s", spec.name, exc)
        return self._handlers

    def _pattern(self, rule_id: str, pattern_json: str) -> Pattern | None:
        cached = self._compiled.get(rule_id)
        if cached is None or cached[0] != pattern_json:
            try:
                cached = (pattern_json, compile_pattern(msgspec.json.decode(pattern_json)))
            except PatternError:
                return None
            self._compiled[rule_id] = cached
        return cached[1]

    async def _rules_for(self, tenants: set[str]) -> dict[str, list[tuple[Row, Pattern]]]:
        marks = ",".join("?" * len(tenants))
        rows = await self.ctx.db.fetchall(
            f"SELECT id, tenant_id, pattern, targets FROM event_rules WHERE tenant_id IN ({marks})",
            tuple(tenants),
        )
        rules: dict[str, list[tuple[Row, Pattern]]] = {t: [] for t in tenants}
        for row in rows:
            pattern = self._pattern(row["id"], row["pattern"])
            if pattern is not None:
                rules[row["tenant_id"]].append((row, pattern))
        return rules

    def _deliveries(self, event: Event, rules: list[tuple[Row, Pattern]]) -> dict[str, list[NewJob]]:
        document = {"source": event.source, "type": event.type, "payload": event.payload}
        jobs: dict[str, list[NewJob]] = {}
        for row, pattern in rules:
            if not pattern.matches(document):
                continue
            for index, target in enumerate(msgspec.json.decode(row["targets"])):
                queue, job = self.targets.delivery(target, event)
                job.job_id = f"{event.id}.{row['id']}.{index}"
                jobs.setdefault(queue, []).append(job)
        for spec, pattern in self.handler_specs():
            if pattern.matches(document):
                payload = {"handler": spec.name, "event": event_document(event)}
                job = NewJob(
                    type=HANDLER_JOB, payload=payload, job_id=f"{event.id}.h.{_handler_key(spec.name)}"
                )
                jobs.setdefault(DELIVERY_QUEUE, []).append(job)
        return jobs

    async def dispatch_once(self) -> int:
        """Deliver one batch of the outbox (as jobs); returns how many events were taken."""
        rows = await self.ctx.db.fetchall(
            "SELECT e.id, e.tenant_id, e.source, e.type, e.payload, e.created_at FROM outbox o"
            f" JOIN events e ON e.id = o.event_id{self._not_fenced} ORDER BY o.created_at LIMIT ?",
            (BATCH,),
        )
        if not rows:
            return 0
        events = [_event(r) for r in rows]
        rules = await self._rules_for({e.tenant for e in events})
        taken = 0
        async with self.ctx.db.transaction() as tx:
            for event in events:
                # Another dispatcher (another process) may have taken it since the read above.
                if not await tx.execute("DELETE FROM outbox WHERE event_id = ?", (event.id,)):
                    continue
                taken += 1
                for queue, jobs in self._deliveries(event, rules[event.tenant]).items():
                    await self.jobs.enqueue_bulk(event.tenant, queue, jobs, tx=tx)
        return taken

    async def _sweep(self) -> None:
        now = time.time()
        if now - self._last_sweeps.get(current_shard(), 0.0) < SWEEP_EVERY_S:
            return
        self._last_sweeps[current_shard()] = now
        cutoff = now - self.ctx.settings.event_retention_days * 86400
        await self.ctx.db.execute(
            "DELETE FROM events WHERE created_at < ? AND id NOT IN (SELECT event_id FROM outbox)", (cutoff,)
        )

    async def run(self) -> None:
        """The dispatcher loop (one per shard): woken by commits that emitted events, polling as a backstop."""
        while not self._stopping:
            try:
                if await self.dispatch_once():
                    continue
                await self._sweep()
            except Exception:
                log.exception("event dispatch failed; retrying in %ss", POLL_S)
            await self.ctx.outbox.wait(POLL_S)

    async def drain(self) -> int:
        """Dispatch the outbox and run the resulting jobs until both are empty (tests, burst runs)."""
        total = 0
        while True:
            dispatched = 0
            for shard in self.ctx.db.shard_names():
                with on_shard(shard):
                    while n := await self.dispatch_once():
                        dispatched += n
            ran = await self.jobs.drain()
            total += dispatched
            if not dispatched and not ran:
                return total

    async def start(self) -> None:
        self._stopping = False
        if self.ctx.runs_workers:
            for shard in self.ctx.db.shard_names():
                with on_shard(shard):
                    name = f"appliance-event-dispatcher{'-' + shard if shard else ''}"
                    self._tasks.append(asyncio.create_task(self.run(), name=name))

    async def stop(self) -> None:
        self._stopping = True
        self.ctx.outbox.notify()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # --------------------------------------------------- internal job types ---

    async def run_handler(self, job: Job) -> None:
        """The ``appliance.event`` job: run one in-process handler for one event."""
        name = job.payload.get("handler")
        spec = next((s for s, _ in self.handler_specs() if s.name == name), None)
        if spec is None:
            raise PermanentJobError(f"no in-process event handler named {name!r} is installed")
        document = job.payload["event"]
        event = Event(tenant=job.tenant, **document)
        await spec.handler(self.ctx, event)

    async def broadcast(self, job: Job) -> int:
        """The ``appliance.channel`` job: broadcast the event on the tenant's realtime channel."""
        realtime: Any = self.ctx.services.get("realtime")
        if realtime is None:
            raise RuntimeError("the realtime service is not available; the broadcast will be retried")
        document = job.payload["event"]
        delivered = await realtime.broadcast(
            job.tenant, job.payload["channel"], document, event=document["type"]
        )
        return int(delivered)


def install_service(ctx: Context) -> EventService:
    ctx.migrations.extend(MIGRATIONS)
    service = EventService(ctx, ctx.service("jobs", JobService))
    ctx.provide("events", service)
    ctx.register_job_handler(HANDLER_JOB, service.run_handler)
    ctx.register_job_handler(CHANNEL_JOB, service.broadcast)
    ctx.on_startup(service.start)
    ctx.on_shutdown(service.stop)
    forwarder: EventForwarder | None = ctx.plugin_backend("events")
    if forwarder is not None:
        _install_forwarder(ctx, forwarder)
    return service


def _install_forwarder(ctx: Context, forwarder: EventForwarder) -> None:
    """Forward every event to the plugin's bus, as an in-process handler (at least once, with retries)."""

    async def forward(_ctx: Context, event: Event) -> None:
        await forwarder.forward(event)

    ctx.register_event_handler(EventHandlerSpec(f"forward:{forwarder.name}", FORWARD_PATTERN, forward))
    ctx.health.append(forwarder.health)
    ctx.on_startup(forwarder.start)
    ctx.on_shutdown(forwarder.close)
