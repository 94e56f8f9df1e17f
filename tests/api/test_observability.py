"""Metrics, request ids and structured logs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from appliance.app import create_app
from appliance.core.http_log import JsonFormatter, RequestIdFilter
from tests.conftest import ROOT, make_settings

Client = AsyncTestClient[Litestar]


async def test_metrics_need_the_root_key_or_the_metrics_token(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, metrics_token="scrape-token-123"))
    async with AsyncTestClient(app) as client:
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
        assert (
            await client.get("/metrics", headers={"Authorization": "Bearer scrape-token-123"})
        ).status_code == 200
        assert (await client.get("/metrics", headers=ROOT)).status_code == 200


async def test_metrics_report_http_traffic_by_route_template_and_capability_gauges(client: Client) -> None:
    await client.get("/v1/whoami", headers=ROOT)
    await client.get("/v1/tenants/nope-1", headers=ROOT)
    await client.get("/v1/tenants/nope-2", headers=ROOT)
    text = (await client.get("/metrics", headers=ROOT)).text
    assert "appliance_http_requests_total" in text
    assert "appliance_http_request_duration_seconds_bucket" in text
    assert 'path="/v1/tenants/{tenant_id}"' in text and "nope-1" not in text
    assert "appliance_tenants 1" in text
    assert "appliance_outbox_depth" in text
    for family in ("appliance_storage_bytes", "appliance_storage_objects", "appliance_realtime_connections"):
        assert f"# TYPE {family} gauge" in text and f"\n{family} " in text


async def test_metrics_count_jobs_emails_and_objects_as_they_happen(client: Client) -> None:
    assert (
        await client.put("/v1/buckets/bkt/objects/a.txt", content=b"12345", headers=ROOT)
    ).status_code == 201
    await client.post(
        "/v1/queues/q/jobs", json={"type": "hello.echo", "payload": {}, "delay_s": 3600}, headers=ROOT
    )
    await client.post("/v1/email", json={"to": ["a@example.com"], "subject": "s", "text": "t"}, headers=ROOT)
    text = (await client.get("/metrics", headers=ROOT)).text
    assert "appliance_storage_bytes 5.0" in text and "appliance_storage_objects 1.0" in text
    assert 'appliance_jobs{status="queued"}' in text
    assert "appliance_emails{status=" in text


async def test_every_response_carries_a_request_id(client: Client) -> None:
    ok = await client.get("/healthz")
    assert ok.headers["x-request-id"].startswith("req_")
    failed = await client.get("/v1/whoami")  # 401 raised in the auth middleware
    assert failed.status_code == 401 and failed.headers["x-request-id"].startswith("req_")
    echoed = await client.get("/healthz", headers={"X-Request-ID": "trace-abc.123"})
    assert echoed.headers["x-request-id"] == "trace-abc.123"
    hostile = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert hostile.headers["x-request-id"].startswith("req_")


async def test_request_log_lines_carry_the_request_id(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="appliance.http")
    response = await client.get("/healthz", headers={"X-Request-ID": "trace-xyz"})
    assert response.status_code == 200
    record = next(r for r in caplog.records if r.name == "appliance.http")
    RequestIdFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"].startswith("GET /healthz 200")
    assert line["status"] == 200 and "duration_ms" in line and line["level"] == "INFO"
