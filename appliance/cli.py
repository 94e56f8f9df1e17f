"""The ``appliance`` command line: run | worker | migrate | keys | tenants | doctor | plugins."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from appliance import __version__
from appliance.config import ConfigError, Settings, load_settings
from appliance.core.context import Context, Role
from appliance.core.http_log import configure_logging

__all__ = ["cli", "main"]

T = TypeVar("T")

config_option = click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), help="TOML settings file (APPLIANCE_CONFIG)."
)
data_dir_option = click.option("--data-dir", type=click.Path(file_okay=False), help="Data directory.")


def _settings(config_file: str | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config_file=config_file, **overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _logging(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_format)


def _with_context(settings: Settings, role: Role, body: Callable[[Context], Awaitable[T]], start: bool) -> T:
    """Build the context, open it (``start``: also run startup steps), run ``body``."""
    from appliance.app import assemble

    ctx, _ = assemble(settings, role=role)

    async def go() -> T:
        if start:
            async with ctx.running():
                return await body(ctx)
        async with ctx.prepared():
            return await body(ctx)

    return asyncio.run(go())


@click.group()
@click.version_option(__version__, prog_name="appliance")
def cli() -> None:
    """The appliance: a self-hosted backend in one box."""


@cli.command()
@click.option("--host", help="Bind address (APPLIANCE_HOST, default 127.0.0.1).")
@click.option("--port", type=int, help="Port (APPLIANCE_PORT, default 8000).")
@data_dir_option
@config_option
def run(host: str | None, port: int | None, data_dir: str | None, config_file: str | None) -> None:
    """Serve the HTTP API, the admin UI and the in-process workers."""
    import uvicorn

    from appliance.app import create_app
    from appliance.realtime.transport import DirectWebSocketsProtocol

    settings = _settings(config_file, host=host, port=port, data_dir=data_dir)
    _logging(settings)
    app = create_app(settings)
    click.echo(
        f"appliance {__version__} on http://{settings.host}:{settings.port} (admin UI at /admin)", err=True
    )
    # uvicorn handles SIGTERM/SIGINT: stops accepting, drains requests, then runs the lifespan shutdown.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=15,
        ws_ping_interval=20,  # and uvicorn's default ping timeout: 20 s
        ws=DirectWebSocketsProtocol,  # writes a broadcast's frame, encoded once, to every socket
        ws_per_message_deflate=False,  # see docs/realtime.md "Scale"
    )


@cli.command()
@data_dir_option
@config_option
def worker(data_dir: str | None, config_file: str | None) -> None:
    """Run only the background workers (jobs, event delivery), e.g. on another box."""
    settings = _settings(config_file, data_dir=data_dir)
    _logging(settings)

    from appliance.app import assemble

    ctx, _ = assemble(settings, role="worker")

    async def until_signalled() -> None:
        # Handlers go in before the workers start: a SIGTERM during startup must still stop cleanly.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with ctx.running():
            click.echo("appliance worker running; SIGTERM or Ctrl-C stops it", err=True)
            await stop.wait()

    asyncio.run(until_signalled())


@cli.command()
@data_dir_option
@config_option
def migrate(data_dir: str | None, config_file: str | None) -> None:
    """Apply pending database migrations."""
    settings = _settings(config_file, data_dir=data_dir)

    from appliance.app import assemble

    ctx, _ = assemble(settings, role="cli")

    async def go() -> None:
        async with ctx.prepared() as applied:
            for m in applied:
                click.echo(f"applied {m.component}#{m.version}: {m.name}")
            click.echo(f"{len(applied)} migration(s) applied; database at {ctx.db.location}")

    asyncio.run(go())


@cli.group()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@click.option("--tenant", default="default", show_default=True)
@click.option("--scopes", required=True, help="Comma-separated, e.g. storage,search (or admin).")
@click.option("--name", default="cli", show_default=True)
@data_dir_option
@config_option
def keys_create(tenant: str, scopes: str, name: str, data_dir: str | None, config_file: str | None) -> None:
    """Create a key and print its secret (shown this once)."""
    settings = _settings(config_file, data_dir=data_dir)

    async def create(ctx: Context) -> str:
        key = await ctx.keys.create(tenant, name, [s.strip() for s in scopes.split(",") if s.strip()])
        return key.secret

    click.echo(_run_or_explain(lambda: _with_context(settings, "cli", create, start=False)))


@keys.command("list")
@click.option("--tenant", default="default", show_default=True)
@data_dir_option
@config_option
def keys_list(tenant: str, data_dir: str | None, config_file: str | None) -> None:
    """List a tenant's live keys (never their secrets)."""
    settings = _settings(config_file, data_dir=data_dir)

    async def listing(ctx: Context) -> list[str]:
        page = await ctx.keys.list(tenant, 1000, None)
        return [f"{k.id}  {k.name}  {','.join(k.scopes)}" for k in page.items]

    for line in _run_or_explain(lambda: _with_context(settings, "cli", listing, start=False)):
        click.echo(line)


@keys.command("revoke")
@click.argument("key_id")
@click.option("--tenant", default="default", show_default=True)
@data_dir_option
@config_option
def keys_revoke(key_id: str, tenant: str, data_dir: str | None, config_file: str | None) -> None:
    """Revoke a key; it stops working on its next request."""
    settings = _settings(config_file, data_dir=data_dir)

    async def revoke(ctx: Context) -> None:
        await ctx.keys.revoke(tenant, key_id)

    _run_or_explain(lambda: _with_context(settings, "cli", revoke, start=False))
    click.echo(f"revoked {key_id}")


@cli.group()
def tenants() -> None:
    """Create and list tenants."""


@tenants.command("create")
@click.argument("tenant_id")
@click.option("--name", default="")
@data_dir_option
@config_option
def tenants_create(tenant_id: str, name: str, data_dir: str | None, config_file: str | None) -> None:
    """Create a tenant."""
    settings = _settings(config_file, data_dir=data_dir)

    async def create(ctx: Context) -> None:
        await ctx.tenants.create(tenant_id, name or tenant_id)

    _run_or_explain(lambda: _with_context(settings, "cli", create, start=False))
    click.echo(f"created tenant {tenant_id}")


@tenants.command("move")
@click.argument("tenant_id")
@click.option(
    "--to", "target", required=True, help="The shard to move to (a name in APPLIANCE_DATABASE_SHARDS)."
)
@click.option(
    "--grace",
    default=5.0,
    show_default=True,
    help="Seconds between the switch and deleting the old shard's rows (longer than nodes cache placements).",
)
@data_dir_option
@config_option
def tenants_move(
    tenant_id: str, target: str, grace: float, data_dir: str | None, config_file: str | None
) -> None:
    """Move a tenant to another shard: freeze, copy, verify, switch, clean up (run again to resume)."""
    settings = _settings(config_file, data_dir=data_dir)
    _logging(settings)

    async def move(ctx: Context) -> str:
        from appliance.core.shard_move import move_tenant

        if ctx.sharded is None:
            raise click.ClickException(
                "APPLIANCE_DATABASE_SHARDS is not set: there is nowhere to move a tenant"
            )
        report = await move_tenant(ctx.sharded, tenant_id, target, grace_s=grace, progress=click.echo)
        rate = report.total_rows / report.seconds if report.seconds else 0.0
        return (
            f"{tenant_id}: {report.source} -> {report.target}, {report.total_rows} rows"
            f" in {report.seconds:.1f}s ({rate:,.0f} rows/s){' (resumed)' if report.resumed else ''}"
        )

    click.echo(_run_or_explain(lambda: _with_context(settings, "cli", move, start=False)))


@cli.command("shards")
@data_dir_option
@config_option
def shards_cmd(data_dir: str | None, config_file: str | None) -> None:
    """List the shards and which tenants each holds."""
    settings = _settings(config_file, data_dir=data_dir)

    async def listing(ctx: Context) -> list[str]:
        from appliance.core.shards import DIRECTORY, describe

        directory = ctx.db.directory
        rows = await directory.fetchall(
            "SELECT t.id, p.shard, p.epoch, p.moving_to, p.moved_from FROM tenants t"
            " LEFT JOIN tenant_placements p ON p.tenant_id = t.id ORDER BY t.id"
        )
        placed = ctx.sharded.placed if ctx.sharded is not None else [DIRECTORY]
        lines = []
        for name, location in describe(ctx.db):
            here = [r for r in rows if (r["shard"] or DIRECTORY) == name]
            new = "new tenants" if name in placed else "no new tenants"
            lines.append(f"{name}: {location} ({len(here)} tenant(s), {new})")
            for r in here:
                state = f" moving to {r['moving_to']}" if r["moving_to"] else ""
                state += f" (rows left on {r['moved_from']})" if r["moved_from"] else ""
                lines.append(f"  {r['id']} epoch {r['epoch'] or 0}{state}")
        return lines

    for line in _run_or_explain(lambda: _with_context(settings, "cli", listing, start=False)):
        click.echo(line)


def _run_or_explain(call: Callable[[], T]) -> T:
    from appliance.core.errors import Problem

    try:
        return call()
    except Problem as exc:
        raise click.ClickException(exc.detail) from None


_PG_BACKUP = (
    "the metadata lives in PostgreSQL (APPLIANCE_DATABASE_URL), which `appliance backup` does not copy:"
    ' back it up with PostgreSQL\'s own tools, e.g. `pg_dump --format=custom --file=appliance.dump "$URL"`'
    " (restore with pg_restore), and back up the object store (MinIO/S3) with its own replication or tools"
)


@cli.command("backup")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@data_dir_option
@config_option
def backup_cmd(out: Path, data_dir: str | None, config_file: str | None) -> None:
    """Back up the data dir to OUT (.tar.gz), safely while the appliance runs."""
    from appliance.ops.backup import BackupError, backup

    settings = _settings(config_file, data_dir=data_dir)
    if settings.database_url:
        raise click.ClickException(_PG_BACKUP)
    if settings.database_shards:
        raise click.ClickException(
            "APPLIANCE_DATABASE_SHARDS is set: `appliance backup` copies the data dir's appliance.db (the"
            " directory) only; back up each shard database with its own tools (sqlite3 .backup, pg_dump)"
        )
    with _progress("backing up") as report:
        try:
            manifest = backup(settings.data_path, out, report)
        except BackupError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"backup written to {out}: {len(manifest.files)} files, {manifest.total_bytes} bytes")


@cli.command("restore")
@click.argument("archive", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@data_dir_option
@config_option
def restore_cmd(archive: Path, data_dir: str | None, config_file: str | None) -> None:
    """Restore ARCHIVE into an empty data dir, verifying every checksum."""
    from appliance.ops.backup import BackupError, restore

    settings = _settings(config_file, data_dir=data_dir)
    with _progress("restoring") as report:
        try:
            manifest = restore(archive, settings.data_path, report)
        except BackupError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"restored {len(manifest.files)} files into {settings.data_path}; checksums verified")


@contextlib.contextmanager
def _progress(verb: str) -> Iterator[Callable[[str, int], None]]:
    """Per-file progress on stderr: count, bytes so far, current file."""
    done = {"files": 0, "bytes": 0}

    def report(name: str, size: int) -> None:
        done["files"] += 1
        done["bytes"] += size
        click.echo(
            f"\r{verb}: {done['files']} files, {done['bytes'] / 1e6:.1f} MB  {name[-50:]:<50}",
            err=True,
            nl=False,
        )

    yield report
    click.echo("", err=True)


@cli.command()
@data_dir_option
@config_option
def doctor(data_dir: str | None, config_file: str | None) -> None:
    """Check every configured backend; one line each; exits non-zero naming what is down."""
    settings = _settings(config_file, data_dir=data_dir)
    # The report is the output: clients' retry chatter and warnings would only interleave with it.
    configure_logging("ERROR", "text")

    async def check(ctx: Context) -> list[str]:
        down = []
        for status in await ctx.check_health():
            mark = "ok  " if status.ok else "DOWN"
            version = f" {status.version}" if status.version else ""
            detail = f": {status.detail}" if status.detail else ""
            click.echo(f"{mark} {status.name:<10} {status.backend} ({status.mode}){version}{detail}")
            if not status.ok:
                down.append(status.name)
        return down

    try:
        down = _with_context(settings, "cli", check, start=True)
    except Exception as exc:
        raise click.ClickException(f"could not start the checks: {exc}") from None
    if down:
        raise click.ClickException(f"down: {', '.join(down)}")


@cli.command("plugins")
@config_option
def plugins_cmd(config_file: str | None) -> None:
    """List installed plugins, whether each is enabled, and the hooks it implements."""
    from appliance.plugin import load_plugins

    settings = _settings(config_file)
    _, infos = load_plugins(settings.plugins)
    if not infos:
        click.echo("no plugins installed")
    for info in infos:
        state = "enabled " if info.enabled else "disabled"
        click.echo(f"{info.name:<20} {info.version:<10} {state} {', '.join(info.hooks)}")


def _add_plugin_commands() -> None:
    """Mount the commands enabled plugins contribute (``appliance_cli_commands``)."""
    from appliance.plugin import load_plugins

    try:
        settings = load_settings()
    except ConfigError:
        return  # the failing command will report the bad setting itself
    manager, _ = load_plugins(settings.plugins)
    for group in manager.hook.appliance_cli_commands():
        for command in group:
            if command.name and command.name not in cli.commands:
                cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    _add_plugin_commands()
    cli()
