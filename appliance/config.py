"""Settings: one msgspec Struct read from ``APPLIANCE_*`` environment variables and an optional TOML file.

Precedence, lowest first: defaults, the TOML file (``--config`` or ``APPLIANCE_CONFIG``), the environment.
Every field ``foo_bar`` is set by ``APPLIANCE_FOO_BAR`` or by ``foo_bar = ...`` in the TOML file.
An invalid value fails at start-up with a :class:`ConfigError` naming the variable.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

__all__ = ["ENV_PREFIX", "ConfigError", "Settings", "describe_settings", "load_settings"]

ENV_PREFIX = "APPLIANCE_"
_RATE = re.compile(r"^(\d+)/(second|minute|hour|day)$")

Rate = Annotated[
    str, msgspec.Meta(pattern=_RATE.pattern, description="N/unit, unit in second|minute|hour|day")
]


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the variable and what it expects."""


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Every knob of the appliance. Field docs feed the README's configuration table."""

    data_dir: str = "./data"
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    public_url: str = ""
    root_key: Annotated[str, msgspec.Meta(pattern=r"^(|\S{16,256})$")] = ""
    log_level: Annotated[str, msgspec.Meta(pattern="^(DEBUG|INFO|WARNING|ERROR)$")] = "INFO"
    log_format: Annotated[str, msgspec.Meta(pattern="^(text|json)$")] = "text"
    plugins: str = "all"
    backends: str = ""
    storage_backend: str = ""
    search_backend: str = ""
    jobs_backend: str = ""
    mail_backend: str = ""
    push_backend: str = ""
    events_backend: str = ""
    database_url: Annotated[str, msgspec.Meta(pattern=r"^(|postgres(ql)?://\S+)$")] = ""
    database_pool_size: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 10
    database_replica_urls: Annotated[str, msgspec.Meta(pattern=r"^(|postgres(ql)?://\S+)$")] = ""
    database_shards: str = ""
    shard_write_wait_s: Annotated[float, msgspec.Meta(ge=0, le=300)] = 5.0
    redis_url: str = ""
    vapid_private_key: str = ""
    s3_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_region: str = "us-east-1"
    s3_secure: bool = False
    s3_bucket_prefix: str = "appliance"
    meili_url: str = ""
    meili_key: str = ""
    meili_index_prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9-]{1,40}$")] = "appliance"
    smtp_url: str = ""
    mail_from: str = "appliance@localhost"
    mail_max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 8
    mail_retry_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 5.0
    mail_bulk_rate: Rate | None = "20/second"
    stripe_key: str = ""
    stripe_webhook_secret: str = ""
    stripe_api_base: str = ""
    stripe_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=120)] = 10.0
    storage_max_object_bytes: Annotated[int, msgspec.Meta(ge=1)] = 5 * 1024**3
    rate_limit_per_key: Rate | None = "1000/second"
    rate_limit_per_ip: Rate | None = "2000/second"
    max_request_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 10 * 1024**2
    worker: bool = True
    metrics_token: str = ""
    backup_interval_hours: Annotated[float, msgspec.Meta(ge=0)] = 0
    backup_dir: str = ""
    backup_keep: Annotated[int, msgspec.Meta(ge=1)] = 7
    job_concurrency: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 32
    job_retention_days: Annotated[float, msgspec.Meta(gt=0)] = 7.0
    event_retention_days: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    realtime_heartbeat_s: Annotated[float, msgspec.Meta(gt=0)] = 25.0
    realtime_idle_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    realtime_send_queue: Annotated[int, msgspec.Meta(ge=1)] = 256
    admin_session_idle_s: Annotated[int, msgspec.Meta(ge=60, le=86400)] = 1800
    admin_session_max_s: Annotated[int, msgspec.Meta(ge=300, le=30 * 86400)] = 12 * 3600

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def db_path(self) -> Path:
        return self.data_path / "appliance.db"

    def rate(self, field: str) -> tuple[str, int] | None:
        """Parse a ``N/unit`` rate setting into Litestar's ``(unit, N)``; ``None`` or ``0/...`` means off."""
        value = getattr(self, field)
        if not value:
            return None
        match = _RATE.match(value)
        assert match is not None  # validated at load time
        count = int(match.group(1))
        return (match.group(2), count) if count > 0 else None


# Never echoed back in an error message: they are credentials or may embed them.
_SECRETS = {
    "root_key",
    "s3_secret_key",
    "meili_key",
    "smtp_url",
    "stripe_key",
    "stripe_webhook_secret",
    "redis_url",
    "database_url",
    "database_replica_urls",
    "database_shards",
    "vapid_private_key",
}

_DOCS: dict[str, str] = {
    "data_dir": "Where the metadata DB, blobs and generated secrets live.",
    "host": "Address `appliance run` binds to.",
    "port": "Port `appliance run` listens on.",
    "public_url": "Base URL clients reach the appliance at (used in signed URLs); default http://HOST:PORT.",
    "root_key": "The root API key. Generated and printed once on first run when unset.",
    "log_level": "DEBUG, INFO, WARNING or ERROR.",
    "log_format": "`text` for people, `json` (one object per line, with request ids) for log pipelines.",
    "plugins": "Comma-separated installed plugins to enable, `all` (default) or `none`.",
    "backends": "Plugin adapters for any port as `port=name,...` (the `*_BACKEND` settings win for theirs).",
    "storage_backend": "A plugin's storage adapter to use instead of the built-in choice (e.g. `aws-s3`).",
    "search_backend": "A plugin's search adapter to use instead of the built-in choice.",
    "jobs_backend": "A plugin's job-queue adapter to use instead of the built-in choice (e.g. `aws-sqs`).",
    "mail_backend": "A plugin's mailer to use instead of SMTP/capture (e.g. `aws-ses`).",
    "push_backend": "A plugin's push adapter to use instead of Web Push (e.g. `aws-sns`).",
    "events_backend": "A plugin's event forwarder, added to local dispatch (e.g. `aws-eventbridge`).",
    "database_url": "PostgreSQL for the metadata (`postgresql://user:pass@host:5432/db`), shared by several nodes; empty: SQLite in the data dir.",
    "database_replica_urls": "Comma-separated PostgreSQL read replicas: lag-tolerant reads go there, except in a request that wrote.",
    "database_shards": "Tenant shards: `name=postgresql://...` or `name=path.db` pairs, comma-separated (`main` is the directory database itself). New tenants are placed by a stable hash over the listed shards; `appliance tenants move` moves one. Empty: one database.",
    "shard_write_wait_s": "How long a write to a tenant that is being moved between shards waits for the move to finish before it gets 503 with Retry-After.",
    "database_pool_size": "Connections each node keeps open to PostgreSQL (`APPLIANCE_DATABASE_URL`).",
    "vapid_private_key": "Web Push VAPID private key (PEM or base64url); set the same on every node. Empty: generated into the data dir.",
    "redis_url": "Redis for jobs (arq), event delivery, realtime fan-out and rate limits across nodes.",
    "s3_endpoint": "MinIO/S3 endpoint `host:port`; object storage moves there when set.",
    "s3_access_key": "S3 access key.",
    "s3_secret_key": "S3 secret key.",
    "s3_region": "S3 region.",
    "s3_secure": "Use TLS to reach the S3 endpoint.",
    "s3_bucket_prefix": "The physical bucket the appliance keeps objects in (created if missing), one `<tenant>/` prefix per tenant.",
    "meili_url": "Meilisearch URL; full-text search moves there when set.",
    "meili_key": "Meilisearch API key.",
    "meili_index_prefix": "Prefix of the Meilisearch index uids (`<prefix>_<tenant>_<index>`), e.g. one per environment.",
    "smtp_url": "`smtp://user:pass@host:port[?starttls=true]` or `smtps://...`; capture mode when unset.",
    "mail_from": "Default sender address.",
    "mail_max_attempts": "Delivery attempts per email or push before it is dead-lettered.",
    "mail_retry_s": "First retry delay in seconds after a failed delivery; doubles each attempt (capped at 10 min).",
    "mail_bulk_rate": "How fast `POST /v1/email:bulk` delivers per tenant, `N/unit` (second, minute, hour, day); empty or 0: no limit.",
    "stripe_key": "Stripe secret key; payments answer 503 until set.",
    "stripe_webhook_secret": "Secret that verifies `Stripe-Signature` on webhooks.",
    "stripe_api_base": "Stripe API base URL (stripe-mock in tests).",
    "stripe_timeout_s": "Seconds to wait for one Stripe call before retrying it (same idempotency key).",
    "storage_max_object_bytes": "Largest object accepted (413 past it), enforced while streaming.",
    "rate_limit_per_key": "Requests allowed per API key, `N/second|minute|hour|day`; empty or 0 disables.",
    "rate_limit_per_ip": "Requests allowed per client address, same format.",
    "max_request_body_bytes": "Largest JSON request body accepted (413 past it).",
    "metrics_token": "Bearer token Prometheus sends to scrape `/metrics` (the root key works too).",
    "backup_interval_hours": "Take a backup every N hours in the worker (0: off).",
    "backup_dir": "Where scheduled backups go (default: DATA_DIR/backups).",
    "backup_keep": "How many scheduled backups to keep.",
    "worker": "Run the job worker and event dispatcher inside `appliance run`.",
    "job_concurrency": "Jobs one worker process runs at the same time.",
    "job_retention_days": "Days a succeeded job's record is kept (failed and dead ones stay until retried).",
    "event_retention_days": "Days events stay in the event log (`GET /v1/events`).",
    "realtime_heartbeat_s": "Seconds between realtime heartbeats: quiet WebSockets get a `ping` frame, registry entries are refreshed.",
    "realtime_idle_timeout_s": "A WebSocket that sends nothing for this long is closed (code 4408).",
    "realtime_send_queue": "Frames queued per WebSocket; a client that falls this far behind is dropped (code 4008).",
    "admin_session_idle_s": "Admin UI sessions end after this many seconds without a request.",
    "admin_session_max_s": "Admin UI sessions end this many seconds after sign-in, however active.",
}


def describe_settings() -> list[tuple[str, str, str]]:
    """Rows of (variable, default, description) for every setting, in declaration order."""
    defaults = Settings()
    return [
        (ENV_PREFIX + name.upper(), repr(getattr(defaults, name)), _DOCS[name])
        for name in Settings.__struct_fields__
    ]


def _from_env(env: Mapping[str, str]) -> dict[str, str]:
    fields = set(Settings.__struct_fields__)
    picked: dict[str, str] = {}
    for key, value in env.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX) :].lower()
            if name in fields:
                picked[name] = value
    return picked


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def _explain(exc: msgspec.ValidationError, raw: Mapping[str, Any]) -> ConfigError:
    message = str(exc)
    match = re.search(r"at `\$\.(\w+)`", message)
    if match:
        name = match.group(1)
        shown = "<hidden>" if name in _SECRETS else raw.get(name, "")
        what = message.split(" - at ")[0]
        hint = f" ({_DOCS[name]})" if name in _DOCS else ""
        return ConfigError(f"{ENV_PREFIX}{name.upper()}={shown!r} is invalid: {what}{hint}")
    match = re.search(r"unknown field `(\w+)`", message)
    if match:
        return ConfigError(f"unknown setting {match.group(1)!r} in the config file")
    return ConfigError(f"invalid configuration: {message}")


def load_settings(
    env: Mapping[str, str] | None = None, config_file: str | Path | None = None, **overrides: Any
) -> Settings:
    """Build :class:`Settings` from defaults, a TOML file, the environment and explicit overrides.

    Raises:
        ConfigError: a value does not validate; the message names the ``APPLIANCE_*`` variable.
    """
    env = os.environ if env is None else env
    config_file = config_file or env.get(ENV_PREFIX + "CONFIG") or None
    raw: dict[str, Any] = {}
    if config_file:
        raw.update(_from_toml(Path(config_file)))
    raw.update(_from_env(env))
    raw.update({k: v for k, v in overrides.items() if v is not None})
    for name in ("rate_limit_per_key", "rate_limit_per_ip", "mail_bulk_rate"):
        if raw.get(name) == "":
            raw[name] = None
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise _explain(exc, raw) from None
