"""The public plugin API: hook specifications and the entry-point loader.

A plugin is any object (usually a module) with functions named after the hooks below and decorated
with :data:`hookimpl`. It is found through the ``appliance.plugins`` entry-point group of an
installed package, and enabled unless ``APPLIANCE_PLUGINS`` leaves it out. Every hook is documented,
with its exact signature, in ``docs/plugins.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import click
import pluggy
from litestar.types import ControllerRouterHandler

from appliance.core.db import Migration

if TYPE_CHECKING:
    from appliance.core.context import Context

__all__ = [
    "ENTRY_POINT_GROUP",
    "AdminPanel",
    "BackendSpec",
    "EventHandlerSpec",
    "JobHandler",
    "PluginInfo",
    "hookimpl",
    "hookspec",
    "load_plugins",
]

ENTRY_POINT_GROUP = "appliance.plugins"
PROJECT = "appliance"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

log = logging.getLogger(__name__)

JobHandler = Callable[..., Awaitable[Any]]
"""A job handler: ``async def handler(job) -> result``; ``job`` is an ``appliance.jobs.Job``."""


@dataclass(frozen=True)
class BackendSpec:
    """An adapter for a port. ``factory(ctx: Context)`` builds it; pick it with ``APPLIANCE_BACKENDS=port=name``."""

    port: str
    name: str
    # Typed loosely on purpose: these dataclasses are introspected at run time (msgspec, Litestar),
    # where the Context and Event names behind TYPE_CHECKING do not exist.
    factory: Callable[[Any], Any]
    description: str = ""


@dataclass(frozen=True)
class EventHandlerSpec:
    """An in-process handler run, at least once, for each event matching ``pattern``."""

    name: str
    pattern: dict[str, Any]
    handler: Callable[[Any, Any], Awaitable[None]]  # (ctx: Context, event: Event)


@dataclass(frozen=True)
class AdminPanel:
    """An admin UI panel: an ES module at ``module_url`` exporting ``render(element, api)``."""

    id: str
    title: str
    module_url: str


@dataclass
class PluginInfo:
    name: str
    version: str
    enabled: bool
    hooks: list[str] = field(default_factory=list)


class HookSpecs:
    """Every hook a plugin may implement. Each returns what it contributes; all are optional."""

    @hookspec
    def appliance_backends(self) -> list[BackendSpec]:
        """Contribute adapters for ports (storage, search, jobs, mailer...), selectable by configuration."""
        raise NotImplementedError

    @hookspec
    def appliance_route_handlers(self, ctx: Context) -> list[ControllerRouterHandler]:
        """Contribute Litestar route handlers, controllers or routers, mounted in the app."""
        raise NotImplementedError

    @hookspec
    def appliance_job_handlers(self) -> dict[str, JobHandler]:
        """Contribute job handlers by job type name."""
        raise NotImplementedError

    @hookspec
    def appliance_event_handlers(self) -> list[EventHandlerSpec]:
        """Contribute in-process event handlers run for events matching a pattern."""
        raise NotImplementedError

    @hookspec
    def appliance_migrations(self) -> list[Migration]:
        """Contribute database migrations, under the plugin's own component name."""
        raise NotImplementedError

    @hookspec
    def appliance_admin_panels(self) -> list[AdminPanel]:
        """Contribute panels to the web admin UI."""
        raise NotImplementedError

    @hookspec
    def appliance_cli_commands(self) -> list[click.Command]:
        """Contribute subcommands to the ``appliance`` command line."""
        raise NotImplementedError

    @hookspec
    def appliance_startup(self, ctx: Context) -> Awaitable[None] | None:
        """Run when the appliance starts, after migrations; may be a coroutine function."""
        raise NotImplementedError

    @hookspec
    def appliance_shutdown(self, ctx: Context) -> Awaitable[None] | None:
        """Run when the appliance stops, before the database closes; may be a coroutine function."""
        raise NotImplementedError


def _wanted(setting: str) -> set[str] | None:
    """The plugin names ``APPLIANCE_PLUGINS`` enables; ``None`` means all."""
    value = setting.strip().lower()
    if value in ("", "all"):
        return None
    if value == "none":
        return set()
    return {name.strip() for name in value.split(",") if name.strip()}


def _dist_version(entry: Any) -> str:
    dist = getattr(entry, "dist", None)
    return str(dist.version) if dist is not None else "unknown"


def load_plugins(
    setting: str = "all", extra: Iterable[object] = ()
) -> tuple[pluggy.PluginManager, list[PluginInfo]]:
    """Discover installed plugins, register the enabled ones (and ``extra`` objects, for tests)."""
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(HookSpecs)
    wanted = _wanted(setting)
    infos: list[PluginInfo] = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        enabled = wanted is None or entry.name in wanted
        info = PluginInfo(name=entry.name, version=_dist_version(entry), enabled=enabled)
        if enabled:
            manager.register(entry.load(), name=entry.name)
            info.hooks = [h.name for h in manager.get_hookcallers(manager.get_plugin(entry.name)) or []]
        infos.append(info)
    for index, plugin in enumerate(extra):
        name = getattr(plugin, "__name__", f"extra-{index}")
        manager.register(plugin, name=name)
        hooks = [h.name for h in manager.get_hookcallers(plugin) or []]
        infos.append(PluginInfo(name=name, version="local", enabled=True, hooks=hooks))
    if wanted:
        missing = wanted - {i.name for i in infos}
        if missing:
            log.warning(
                "APPLIANCE_PLUGINS names plugins that are not installed: %s", ", ".join(sorted(missing))
            )
    return manager, infos
