"""API.md "Jobs": scenario tables, the signed ``http`` type against a real local server, isolation."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from appliance.config import Settings
from appliance.core.shards import acting_for
from appliance.jobs import JobService
from appliance.jobs.http import verify
from tests.api.test_core import assert_problem
from tests.conftest import ROOT, MakeTenant, make_settings
from tests.receiver import Receiver, serve_receiver

Client = AsyncTestClient[Litestar]
FAST = {"initial_s": 0, "factor": 1, "max_s": 0}


@pytest.fixture
def settings(tmp_path: Any) -> Settings:
    # No background worker: the tests drain the queue themselves, so nothing races them.
    return make_settings(tmp_path / "data", worker=False)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as server:
        yield server


def jobs_of(app: Litestar) -> JobService:
    service: JobService = app.state.ctx.services["jobs"]
    return service


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v1/queues/q/jobs", {"type": "nope"}, 422),
        ("POST", "/v1/queues/q/jobs", {"type": "appliance.event"}, 422),
        ("POST", "/v1/queues/q/jobs", {"type": "http", "max_attempts": 0}, 422),
        ("POST", "/v1/queues/q/jobs", {"type": "http", "priority": 1000}, 422),
        ("POST", "/v1/queues/q/jobs", {"type": "http", "delay_s": -1}, 422),
        ("POST", "/v1/queues/q/jobs", {"type": "http", "timeout_s": 0}, 422),
        ("POST", "/v1/queues/q/jobs", {"type": "http", "backoff": {"factor": 0.5}}, 422),
        ("POST", "/v1/queues/q/jobs", {"type": "http", "surprise": 1}, 422),
        ("POST", "/v1/queues/q/jobs", {"payload": {}}, 422),
        ("POST", "/v1/queues/Bad!Queue/jobs", {"type": "http"}, 422),
        ("POST", "/v1/queues/q/jobs:bulk", [], 422),
        ("POST", "/v1/queues/q/jobs:bulk", [{"type": "nope"}], 422),
        ("GET", "/v1/queues/q/jobs/job_missing", None, 404),
        ("POST", "/v1/queues/q/dead/job_missing/retry", None, 404),
        ("GET", "/v1/queues/q/dead?limit=0", None, 422),
        ("GET", "/v1/queues/q/dead?cursor=%%%", None, 400),
    ],
)
async def test_bad_requests_are_problems(
    client: Client, make_tenant: MakeTenant, method: str, path: str, body: Any, status: int
) -> None:
    headers = await make_tenant("acme", ("jobs",))
    response = await client.request(method, path, json=body, headers=headers)
    assert_problem(response, status)


async def test_jobs_need_the_jobs_scope(client: Client, make_tenant: MakeTenant) -> None:
    headers = await make_tenant("acme", ("storage",))
    response = await client.post("/v1/queues/q/jobs", json={"type": "http"}, headers=headers)
    assert_problem(response, 403)


async def test_http_job_is_signed_and_delivered(
    client: Client, app: Litestar, make_tenant: MakeTenant, receiver: Receiver
) -> None:
    headers = await make_tenant("acme", ("jobs",))
    body = {"order": 42, "items": ["a", "b"]}
    payload = {"url": receiver.url + "/hook", "body": body, "secret": "s3cret"}
    created = await client.post(
        "/v1/queues/hooks/jobs", json={"type": "http", "payload": payload}, headers=headers
    )
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["status"] == "queued" and job["payload"]["secret"] == "***"
    assert await jobs_of(app).drain() == 1
    [delivery] = receiver.deliveries
    assert delivery.path == "/hook" and msgspec.json.decode(delivery.body) == body
    signature = delivery.headers["Appliance-Signature"]
    t, v1 = (part.split("=", 1)[1] for part in signature.split(","))
    expected = hmac.new(b"s3cret", f"{t}.".encode() + delivery.body, hashlib.sha256).hexdigest()
    assert v1 == expected and verify("s3cret", delivery.body, signature)
    status = (await client.get(f"/v1/queues/hooks/jobs/{job['id']}", headers=headers)).json()
    assert status["status"] == "succeeded" and status["attempts"] == 1 and status["result"] == {"status": 200}


async def test_http_job_without_secret_uses_the_tenant_secret(
    client: Client, app: Litestar, make_tenant: MakeTenant, receiver: Receiver
) -> None:
    headers = await make_tenant("acme", ("jobs",))
    job = {"type": "http", "payload": {"url": receiver.url, "body": {"x": 1}}}
    assert (await client.post("/v1/queues/hooks/jobs", json=job, headers=headers)).status_code == 201
    await jobs_of(app).drain()
    with acting_for("acme"):
        secret = await jobs_of(app).webhook_secret("acme")
    with acting_for("default"):
        assert secret != await jobs_of(app).webhook_secret("default")
    [delivery] = receiver.deliveries
    assert verify(secret, delivery.body, delivery.headers["Appliance-Signature"])


async def test_http_job_retries_5xx_then_succeeds(
    client: Client, app: Litestar, make_tenant: MakeTenant, receiver: Receiver
) -> None:
    headers = await make_tenant("acme", ("jobs",))
    receiver.statuses = [500, 503, 429]
    job = {"type": "http", "payload": {"url": receiver.url, "body": {}, "secret": "k"}, "backoff": FAST}
    job_id = (await client.post("/v1/queues/hooks/jobs", json=job, headers=headers)).json()["id"]
    await jobs_of(app).drain()
    status = (await client.get(f"/v1/queues/hooks/jobs/{job_id}", headers=headers)).json()
    assert status["status"] == "succeeded" and status["attempts"] == 4
    assert [h["error"] is not None for h in status["history"]] == [True, True, True, False]
    assert len(receiver.deliveries) == 4


async def test_http_job_4xx_fails_permanently(
    client: Client, app: Litestar, make_tenant: MakeTenant, receiver: Receiver
) -> None:
    headers = await make_tenant("acme", ("jobs",))
    receiver.statuses = [404]
    job = {"type": "http", "payload": {"url": receiver.url, "body": {}, "secret": "k"}, "backoff": FAST}
    job_id = (await client.post("/v1/queues/hooks/jobs", json=job, headers=headers)).json()["id"]
    await jobs_of(app).drain()
    status = (await client.get(f"/v1/queues/hooks/jobs/{job_id}", headers=headers)).json()
    assert status["status"] == "failed" and status["attempts"] == 1 and "404" in status["error"]


async def test_http_job_dead_letter_and_retry(
    client: Client, app: Litestar, make_tenant: MakeTenant, receiver: Receiver
) -> None:
    headers = await make_tenant("acme", ("jobs",))
    receiver.statuses = [500, 500, 500]
    job = {
        "type": "http",
        "payload": {"url": receiver.url, "body": {"n": 1}, "secret": "k"},
        "backoff": FAST,
        "max_attempts": 3,
    }
    job_id = (await client.post("/v1/queues/hooks/jobs", json=job, headers=headers)).json()["id"]
    await jobs_of(app).drain()
    dead = (await client.get("/v1/queues/hooks/dead", headers=headers)).json()
    assert [j["id"] for j in dead["items"]] == [job_id] and dead["next_cursor"] is None
    assert dead["items"][0]["status"] == "dead" and dead["items"][0]["attempts"] == 3
    retried = await client.post(f"/v1/queues/hooks/dead/{job_id}/retry", headers=headers)
    assert retried.status_code == 200 and retried.json()["status"] == "queued"
    await jobs_of(app).drain()
    status = (await client.get(f"/v1/queues/hooks/jobs/{job_id}", headers=headers)).json()
    assert status["status"] == "succeeded" and len(receiver.deliveries) == 4
    assert (await client.get("/v1/queues/hooks/dead", headers=headers)).json()["items"] == []


async def test_unreachable_target_is_retried(client: Client, app: Litestar, make_tenant: MakeTenant) -> None:
    headers = await make_tenant("acme", ("jobs",))
    job = {
        "type": "http",
        "payload": {"url": "http://127.0.0.1:9/nothing", "body": {}, "secret": "k"},
        "backoff": FAST,
        "max_attempts": 2,
    }
    job_id = (await client.post("/v1/queues/hooks/jobs", json=job, headers=headers)).json()["id"]
    await jobs_of(app).drain()
    status = (await client.get(f"/v1/queues/hooks/jobs/{job_id}", headers=headers)).json()
    assert status["status"] == "dead" and status["attempts"] == 2 and "ConnectError" in status["error"]


async def test_job_id_dedupes_and_idempotency_key_replays(client: Client, make_tenant: MakeTenant) -> None:
    headers = await make_tenant("acme", ("jobs",))
    job = {"type": "http", "payload": {"url": "http://127.0.0.1:9/"}, "job_id": "once", "delay_s": 60}
    first = await client.post("/v1/queues/q/jobs", json=job, headers=headers)
    second = await client.post("/v1/queues/q/jobs", json=job, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"] == "once"
    keyed = {**headers, "Idempotency-Key": "k1"}
    plain = {"type": "http", "payload": {"url": "http://127.0.0.1:9/"}, "delay_s": 60}
    a = await client.post("/v1/queues/q/jobs", json=plain, headers=keyed)
    b = await client.post("/v1/queues/q/jobs", json=plain, headers=keyed)
    assert a.json()["id"] == b.json()["id"]
    other = await client.post("/v1/queues/q/jobs", json={**plain, "priority": 3}, headers=keyed)
    assert_problem(other, 422)


async def test_bulk_returns_ids_in_order(
    client: Client, app: Litestar, make_tenant: MakeTenant, receiver: Receiver
) -> None:
    headers = await make_tenant("acme", ("jobs",))
    jobs = [
        {"type": "http", "payload": {"url": receiver.url, "body": {"i": i}, "secret": "k"}, "backoff": FAST}
        for i in range(20)
    ]
    created = await client.post("/v1/queues/bulk/jobs:bulk", json=jobs, headers=headers)
    assert created.status_code == 201, created.text
    ids = created.json()
    assert len(ids) == 20 and all(isinstance(i, str) for i in ids)
    await jobs_of(app).drain()
    assert sorted(msgspec.json.decode(d.body)["i"] for d in receiver.deliveries) == list(range(20))


async def test_tenant_isolation(client: Client, app: Litestar, make_tenant: MakeTenant) -> None:
    owner = await make_tenant("acme", ("jobs",))
    intruder = await make_tenant("evil", ("jobs", "admin"))
    job = {"type": "http", "payload": {"url": "http://127.0.0.1:9/", "secret": "k"}, "max_attempts": 1}
    job_id = (await client.post("/v1/queues/q/jobs", json=job, headers=owner)).json()["id"]
    await jobs_of(app).drain()
    assert len((await client.get("/v1/queues/q/dead", headers=owner)).json()["items"]) == 1
    table = [
        ("GET", f"/v1/queues/q/jobs/{job_id}", 404),
        ("POST", f"/v1/queues/q/dead/{job_id}/retry", 404),
    ]
    for method, path, status in table:
        response = await client.request(method, path, headers=intruder)
        assert_problem(response, status)
        assert "127.0.0.1:9" not in response.text
    listing = (await client.get("/v1/queues/q/dead", headers=intruder)).json()
    assert listing["items"] == []
    # The root key acts in a tenant only when it names it.
    as_root = await client.get(f"/v1/queues/q/jobs/{job_id}", headers={**ROOT, "X-Tenant-ID": "acme"})
    assert as_root.status_code == 200


async def test_http_job_over_the_arq_backend(
    tmp_path: Any, request: pytest.FixtureRequest, receiver: Receiver
) -> None:
    """The same API with APPLIANCE_REDIS_URL set: the job is run by arq and signed the same way."""
    from appliance.app import create_app

    redis = request.getfixturevalue("redis_peer")
    # The app's own worker runs the job (the test client serves the app on a loop of its own, so the
    # test polls the API, with a deadline, instead of draining the queue from here).
    # arq is the job queue only without shards (with them, each shard's jobs table is its queue).
    app = create_app(make_settings(tmp_path / "arq-data", redis_url=redis.url, database_shards=""))
    async with AsyncTestClient(app, base_url="http://appliance.test") as client:
        await http_job_runs_in_the_background(client, receiver, "arq")


async def http_job_runs_in_the_background(
    client: AsyncTestClient[Litestar], receiver: Receiver, backend: str, queue: str = "hooks"
) -> dict[str, Any]:
    """POST an ``http`` job, wait (deadline) for the app's own worker to run it, check the signature and
    that ``/readyz`` names ``backend``; return that backend's ``/readyz`` entry."""
    job = {"type": "http", "payload": {"url": receiver.url, "body": {"via": backend}, "secret": "k"}}
    created = await client.post(f"/v1/queues/{queue}/jobs", json=job, headers=ROOT)
    assert created.status_code == 201, created.text
    path = f"/v1/queues/{queue}/jobs/{created.json()['id']}"
    deadline = time.monotonic() + 15
    while (await client.get(path, headers=ROOT)).json()["status"] != "succeeded":
        assert time.monotonic() < deadline, f"the {backend} worker did not run the job"
        await asyncio.sleep(0.02)
    [delivery] = receiver.deliveries
    assert verify("k", delivery.body, delivery.headers["Appliance-Signature"])
    ready = (await client.get("/readyz")).json()
    status: dict[str, Any] = next(b for b in ready["backends"] if b["name"] == "jobs")
    assert {"name": "jobs", "backend": backend, "ok": True}.items() <= status.items()
    return status
