"""Operations: scheduled backups (``APPLIANCE_BACKUP_INTERVAL_HOURS``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from litestar.types import ControllerRouterHandler

from appliance.config import ConfigError
from appliance.core.context import Context
from appliance.ops.backup import BackupError, backup, prune

__all__ = ["backup_dir", "install", "run_scheduled_backup"]

log = logging.getLogger("appliance.backup")


def backup_dir(ctx: Context) -> Path:
    return Path(ctx.settings.backup_dir) if ctx.settings.backup_dir else ctx.settings.data_path / "backups"


async def run_scheduled_backup(ctx: Context) -> Path:
    """One scheduled backup: write it, then keep only the newest ``backup_keep``."""
    target = backup_dir(ctx) / time.strftime("appliance-%Y%m%dT%H%M%SZ.tar.gz", time.gmtime())
    manifest = await asyncio.to_thread(backup, ctx.settings.data_path, target)
    removed = await asyncio.to_thread(prune, target.parent, ctx.settings.backup_keep)
    log.info(
        "backup written to %s (%d files, %d bytes); %d old backup(s) pruned",
        target,
        len(manifest.files),
        manifest.total_bytes,
        len(removed),
    )
    return target


def install(ctx: Context) -> list[ControllerRouterHandler]:
    interval = ctx.settings.backup_interval_hours * 3600
    if interval <= 0 or not ctx.runs_workers:
        return []
    if ctx.settings.database_url:
        raise ConfigError(
            "APPLIANCE_BACKUP_INTERVAL_HOURS backs up a SQLite data dir; with APPLIANCE_DATABASE_URL the metadata"
            " is in PostgreSQL: schedule pg_dump (or use PostgreSQL's continuous archiving) instead"
        )
    if ctx.settings.database_shards:
        raise ConfigError(
            "APPLIANCE_BACKUP_INTERVAL_HOURS backs up the data dir's appliance.db, not the tenant shards of"
            " APPLIANCE_DATABASE_SHARDS: back up each shard database with its own tools instead"
        )
    task: asyncio.Task[None] | None = None

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await run_scheduled_backup(ctx)
            except (BackupError, OSError) as exc:
                log.error("scheduled backup failed: %s", exc)

    async def start() -> None:
        nonlocal task
        task = asyncio.create_task(loop(), name="scheduled-backups")

    async def stop() -> None:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    ctx.on_startup(start)
    ctx.on_shutdown(stop)
    return []
