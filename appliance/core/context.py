"""The application context: every service a capability needs, built once per app.

Capabilities receive the :class:`Context` in their ``install(ctx)`` function, register what they own
on it (migrations, startup and shutdown steps, health checks, tenant purgers, services) and return
their route handlers. Nothing here is global, so tests can build as many apps as they like.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import msgspec
import pluggy

from appliance.config import ConfigError, Settings
from appliance.core.auth import CredentialResolver, TokenVerifier
from appliance.core.db import Database, Migration, open_database
from appliance.core.idempotency import IdempotencyStore
from appliance.core.metrics import MetricsSource
from appliance.core.migrations import MIGRATIONS
from appliance.core.outbox import OutboxSignal
from appliance.core.shards import ShardedDatabase, open_sharded
from appliance.core.tenants import KeyService, TenantService
from appliance.plugin import BackendSpec, EventHandlerSpec, JobHandler, PluginInfo, load_plugins

__all__ = ["BackendStatus", "Context", "HealthCheck", "Role", "build_context"]

log = logging.getLogger("appliance")

T = TypeVar("T")
Role = Literal["all", "api", "worker", "cli"]
Step = Callable[[], Awaitable[None]]


class BackendStatus(msgspec.Struct):
    """What ``/readyz``, ``appliance doctor`` and the admin overview say about one backend."""

    name: str
    backend: str
    mode: Literal["embedded", "server"]
    ok: bool
    detail: str = ""
    version: str = ""
    latency_ms: float = 0.0


HealthCheck = Callable[[], Awaitable[BackendStatus]]


@dataclass
class Context:
    settings: Settings
    db: Database
    plugins: pluggy.PluginManager
    plugin_infos: list[PluginInfo]
    role: Role = "all"
    tenants: TenantService = field(init=False)
    keys: KeyService = field(init=False)
    idempotency: IdempotencyStore = field(init=False)
    outbox: OutboxSignal = field(default_factory=OutboxSignal)
    migrations: list[Migration] = field(default_factory=lambda: list(MIGRATIONS))
    health: list[HealthCheck] = field(default_factory=list)
    token_verifiers: list[TokenVerifier] = field(default_factory=list)
    credential_resolvers: list[CredentialResolver] = field(default_factory=list)
    metrics: list[MetricsSource] = field(default_factory=list)
    services: dict[str, Any] = field(default_factory=dict)
    generated_root_key: str | None = None
    _job_handlers: dict[str, JobHandler] = field(default_factory=dict)
    _event_handlers: list[EventHandlerSpec] = field(default_factory=list)
    _startup: list[Step] = field(default_factory=list)
    _shutdown: list[Step] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Tenants and keys live in the directory; idempotency records with the tenant's data.
        self.tenants = TenantService(
            self.db.directory, self.db if isinstance(self.db, ShardedDatabase) else None
        )
        self.keys = KeyService(self.db.directory)
        self.idempotency = IdempotencyStore(self.db)

    @property
    def sharded(self) -> ShardedDatabase | None:
        """The shard router when ``APPLIANCE_DATABASE_SHARDS`` is set, else ``None``."""
        return self.db if isinstance(self.db, ShardedDatabase) else None

    @property
    def runs_workers(self) -> bool:
        """Whether background workers (jobs, event dispatch) run in this process."""
        return self.role == "worker" or (self.role == "all" and self.settings.worker)

    def on_startup(self, step: Step) -> None:
        """Run ``step`` at start, after migrations, in registration order."""
        self._startup.append(step)

    def on_shutdown(self, step: Step) -> None:
        """Run ``step`` at stop, in reverse registration order."""
        self._shutdown.append(step)

    def provide(self, name: str, service: Any) -> None:
        """Make a capability's service available to the others (e.g. ``jobs`` to ``notify``)."""
        self.services[name] = service

    def service(self, name: str, kind: type[T]) -> T:
        """A service another capability provided; raises if it is missing or of another type."""
        service = self.services.get(name)
        if not isinstance(service, kind):
            raise RuntimeError(f"service {name!r} is not available (is its capability installed?)")
        return service

    # Plugin contributions, flattened.
    def backends(self, port: str) -> dict[str, BackendSpec]:
        return {
            b.name: b for group in self.plugins.hook.appliance_backends() for b in group if b.port == port
        }

    def chosen_backend(self, port: str) -> str | None:
        """The plugin backend picked for ``port``: ``APPLIANCE_<PORT>_BACKEND``, else ``APPLIANCE_BACKENDS``."""
        specific: str = getattr(self.settings, f"{port}_backend", "")
        if specific:
            return specific
        for pair in filter(None, (p.strip() for p in self.settings.backends.split(","))):
            name, _, value = pair.partition("=")
            if name.strip() == port and value.strip():
                return value.strip()
        return None

    def plugin_backend(self, port: str) -> Any | None:
        """Build the plugin backend configured for ``port``, or ``None`` to use the built-in choice."""
        chosen = self.chosen_backend(port)
        if chosen is None:
            return None
        available = self.backends(port)
        if chosen not in available:
            raise ConfigError(
                f"APPLIANCE_{port.upper()}_BACKEND={chosen!r}, but no enabled plugin provides that {port} backend"
                f" (available: {sorted(available) or 'none'})"
            )
        return available[chosen].factory(self)

    def register_job_handler(self, job_type: str, handler: JobHandler) -> None:
        """A capability's own job handler (plugins use the ``appliance_job_handlers`` hook)."""
        self._job_handlers[job_type] = handler

    def register_event_handler(self, spec: EventHandlerSpec) -> None:
        """A capability's own in-process event handler (plugins use ``appliance_event_handlers``)."""
        self._event_handlers.append(spec)

    def job_handlers(self) -> dict[str, JobHandler]:
        """Every job handler by type: the capabilities' own, then the plugins' (which may not override them)."""
        handlers: dict[str, JobHandler] = {}
        for group in self.plugins.hook.appliance_job_handlers():
            handlers.update(group)
        handlers.update(self._job_handlers)
        return handlers

    def event_handlers(self) -> list[EventHandlerSpec]:
        """Every in-process event handler: the capabilities' own and the plugins'."""
        plugin_specs = [spec for group in self.plugins.hook.appliance_event_handlers() for spec in group]
        return [*self._event_handlers, *plugin_specs]

    async def check_health(self, timeout: float = 3.0) -> list[BackendStatus]:
        """Run every health check concurrently, each bounded by ``timeout``."""
        return list(await asyncio.gather(*(_timed(check, timeout) for check in self.health)))

    @asynccontextmanager
    async def prepared(self) -> AsyncIterator[list[Migration]]:
        """Open the database, apply pending migrations (yielded), adopt the root key; close on exit."""
        await self.db.open()
        try:
            plugin_migrations = [m for group in self.plugins.hook.appliance_migrations() for m in group]
            applied = await self.db.migrate([*self.migrations, *plugin_migrations])
            self.generated_root_key = await self.keys.init_root(self.settings.root_key)
            if self.generated_root_key:
                _announce_root_key(self.generated_root_key)
            yield applied
        finally:
            await self.db.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Context]:
        """:meth:`prepared`, then the startup steps and plugin startup hooks; undone in reverse on exit."""
        async with self.prepared():
            try:
                for step in self._startup:
                    await step()
                await _call_hook(self.plugins.hook.appliance_startup(ctx=self))
                yield self
            finally:
                await _call_hook(self.plugins.hook.appliance_shutdown(ctx=self))
                for step in reversed(self._shutdown):
                    try:
                        await step()
                    except Exception:
                        log.exception("shutdown step %s failed", getattr(step, "__qualname__", step))


async def _call_hook(results: Iterable[Any]) -> None:
    for result in results:
        if inspect.isawaitable(result):
            await result


async def _timed(check: HealthCheck, timeout: float) -> BackendStatus:
    start = time.perf_counter()
    try:
        status = await asyncio.wait_for(check(), timeout)
    except Exception as exc:
        name = getattr(check, "__qualname__", "backend")
        reason = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        status = BackendStatus(name=name, backend="unknown", mode="server", ok=False, detail=reason)
    status.latency_ms = round((time.perf_counter() - start) * 1000, 2)
    return status


def _announce_root_key(secret: str) -> None:
    # Printed once, to the terminal of the operator who started the appliance; never logged.
    sys.stderr.write(
        "\n  A root API key was generated (it is stored hashed and will not be shown again):\n"
        f"\n      {secret}\n\n  Keep it safe, or set APPLIANCE_ROOT_KEY to choose your own.\n\n"
    )
    sys.stderr.flush()


def build_context(settings: Settings, role: Role = "all", extra_plugins: Iterable[object] = ()) -> Context:
    """Load plugins and build the context; nothing touches the disk until :meth:`Context.running`."""
    manager, infos = load_plugins(settings.plugins, extra_plugins)
    db = open_database(
        settings.database_url,
        settings.db_path,
        settings.database_pool_size,
        [u.strip() for u in settings.database_replica_urls.split(",") if u.strip()],
    )
    if settings.database_shards.strip():
        db = open_sharded(
            db,
            settings.database_shards,
            settings.data_path,
            settings.database_pool_size,
            settings.shard_write_wait_s,
        )
    return Context(
        settings=settings,
        db=db,
        plugins=manager,
        plugin_infos=infos,
        role=role,
    )
