"""The example plugin: one of each hook, written only against ``appliance.plugin`` and Litestar.

It counts visits per tenant (a route and a migration), greets from the command line, echoes jobs,
counts ``hello.*`` events, and adds an admin panel. docs/plugins.md walks through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import msgspec
from litestar import get
from litestar.datastructures import State
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler, Scope

from appliance.core.db import Migration
from appliance.plugin import AdminPanel, BackendSpec, EventHandlerSpec, JobHandler, hookimpl

__all__ = ["Greeting"]

STARTED: list[str] = []


class Greeting(msgspec.Struct):
    message: str
    tenant: str
    visits: int


@get("/v1/hello", tags=["hello plugin"], summary="Greets the calling tenant and counts its visits")
async def hello(state: State, scope: Scope) -> Greeting:
    tenant = scope["auth"].tenant
    db = state.ctx.db
    async with db.transaction() as tx:
        await tx.execute(
            "INSERT INTO hello_visits (tenant_id, visits) VALUES (?, 1)"
            " ON CONFLICT (tenant_id) DO UPDATE SET visits = hello_visits.visits + 1",
            (tenant,),
        )
        row = await tx.fetchone("SELECT visits FROM hello_visits WHERE tenant_id = ?", (tenant,))
    return Greeting(message=f"hello, {tenant}", tenant=tenant, visits=row["visits"] if row else 0)


@hookimpl
def appliance_route_handlers(ctx: Any) -> list[ControllerRouterHandler]:
    panel = create_static_files_router(
        path="/plugins/hello/static",
        directories=[Path(__file__).parent / "static"],
        name="hello-static",
        opt={"exclude_from_auth": True},
    )
    return [hello, panel]


@hookimpl
def appliance_migrations() -> list[Migration]:
    return [
        Migration(
            "hello",
            1,
            "visit counter",
            "CREATE TABLE hello_visits (tenant_id TEXT PRIMARY KEY"
            " REFERENCES tenants(id) ON DELETE CASCADE, visits INTEGER NOT NULL)",
        )
    ]


@click.command("hello")
@click.argument("name", default="world")
def hello_command(name: str) -> None:
    """Say hello (from the hello plugin)."""
    click.echo(f"hello, {name}")


@hookimpl
def appliance_cli_commands() -> list[click.Command]:
    return [hello_command]


async def echo(job: Any) -> Any:
    """Returns the job's payload: the smallest useful job handler."""
    return job.payload


@hookimpl
def appliance_job_handlers() -> dict[str, JobHandler]:
    return {"hello.echo": echo}


async def count_event(ctx: Any, event: Any) -> None:
    async with ctx.db.transaction() as tx:
        await tx.execute(
            "INSERT INTO hello_visits (tenant_id, visits) VALUES (?, 1)"
            " ON CONFLICT (tenant_id) DO UPDATE SET visits = hello_visits.visits + 1",
            (event.tenant,),
        )


@hookimpl
def appliance_event_handlers() -> list[EventHandlerSpec]:
    return [
        EventHandlerSpec(name="hello.count", pattern={"type": [{"prefix": "hello."}]}, handler=count_event)
    ]


@hookimpl
def appliance_admin_panels() -> list[AdminPanel]:
    return [AdminPanel(id="hello", title="Hello", module_url="/plugins/hello/static/panel.js")]


class MemoryGreeter:
    """A toy backend for the ``greeter`` port, to show how a plugin contributes an adapter."""

    def greet(self, name: str) -> str:
        return f"hello, {name}"


@hookimpl
def appliance_backends() -> list[BackendSpec]:
    return [
        BackendSpec(
            port="greeter", name="memory", factory=lambda ctx: MemoryGreeter(), description="in memory"
        )
    ]


@hookimpl
def appliance_startup(ctx: Any) -> None:
    STARTED.append("started")


@hookimpl
async def appliance_shutdown(ctx: Any) -> None:
    STARTED.append("stopped")
