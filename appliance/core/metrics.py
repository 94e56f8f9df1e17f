"""Prometheus metrics at ``/metrics``.

HTTP request counts and latency histograms by route template and status come from Litestar's
Prometheus middleware. Capabilities add their own gauges and counters (queue depth, job outcomes,
connections, emails, storage bytes) as :data:`MetricsSource` callbacks on ``ctx.metrics``; they are
sampled when Prometheus scrapes, so nothing is computed between scrapes. Samples never carry tenant
ids as labels: tenants are a matter for the admin UI, not for a shared monitoring system.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Literal

import msgspec
from litestar.middleware import DefineMiddleware
from litestar.plugins.prometheus import PrometheusConfig
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from appliance.core.db import Database

__all__ = [
    "MetricFamily",
    "MetricsSource",
    "authorized",
    "gauges_from_query",
    "http_metrics_middleware",
    "render",
]


class MetricFamily(msgspec.Struct):
    """One metric with its samples: ``samples`` maps a label set (tuple of pairs) to a value."""

    name: str
    help: str
    type: Literal["gauge", "counter"]
    samples: list[tuple[dict[str, str], float]]


MetricsSource = Callable[[], Awaitable[list[MetricFamily]]]


def gauges_from_query(
    db: Database, sql: str, name: str, help: str, label: str | None = None
) -> MetricsSource:
    """A source of one gauge family from a query: rows of ``(label value, number)``, or one ``(number,)``."""

    async def sample() -> list[MetricFamily]:
        rows = await db.fetchall(sql)
        if label is None:
            return [MetricFamily(name, help, "gauge", [({}, float(rows[0][0] or 0) if rows else 0.0)])]
        return [MetricFamily(name, help, "gauge", [({label: str(r[0])}, float(r[1] or 0)) for r in rows])]

    return sample


def http_metrics_middleware() -> DefineMiddleware:
    """Litestar's Prometheus middleware, grouped by route template (object keys never become labels)."""
    config = PrometheusConfig(
        app_name="appliance",
        prefix="appliance_http",
        group_path=True,
        exclude=["^/metrics$", "^/healthz$"],
        buckets=[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    )
    return config.middleware


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(families: list[MetricFamily]) -> bytes:
    """The process's registry (HTTP metrics) followed by the capabilities' families, in text format."""
    lines = [generate_latest(REGISTRY).decode()]
    for family in families:
        lines.append(f"# HELP {family.name} {family.help}\n# TYPE {family.name} {family.type}\n")
        for labels, value in family.samples:
            shown = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            lines.append(f"{family.name}{{{shown}}} {value}\n" if shown else f"{family.name} {value}\n")
    return "".join(lines).encode()


CONTENT_TYPE = CONTENT_TYPE_LATEST


def authorized(bearer: str | None, token: str, is_root: Callable[[str], bool]) -> bool:
    """``/metrics`` is for the operator: the metrics token when one is set, or the root key."""
    if not bearer:
        return False
    if token and hmac.compare_digest(bearer, token):
        return True
    return is_root(bearer)
