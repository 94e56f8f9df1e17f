"""Two stateless appliance nodes: separate data dirs, shared PostgreSQL, Redis and MinIO.

Node A serves the API only (``APPLIANCE_WORKER=false``); node B also runs the workers. What one
node writes the other reads, a job enqueued on A runs on B's worker (arq on Redis), and a broadcast
published on B reaches a WebSocket client connected to A.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from websockets.asyncio.client import connect

from tests.conftest import ROOT, ROOT_KEY
from tests.peers import MinioPeer, PostgresPeer, RedisPeer
from tests.process import ApplianceProcess, run_appliance
from tests.receiver import Receiver, serve_receiver

WAIT = 15.0


@pytest.fixture
def cluster(
    tmp_path: Path, postgres_peer: PostgresPeer, redis_peer: RedisPeer, minio_peer: MinioPeer
) -> Iterator[tuple[ApplianceProcess, ApplianceProcess]]:
    name = f"n_{uuid.uuid4().hex[:12]}"
    database_url = postgres_peer.create_database(name)
    redis_url = f"redis://{redis_peer.host}:{redis_peer.port}/7"
    with redis.Redis.from_url(redis_url) as sync_client:
        sync_client.flushdb()
    shared = {
        "APPLIANCE_ROOT_KEY": ROOT_KEY,
        "APPLIANCE_RATE_LIMIT_PER_KEY": "",
        "APPLIANCE_RATE_LIMIT_PER_IP": "",
        "APPLIANCE_DATABASE_URL": database_url,
        "APPLIANCE_DATABASE_POOL_SIZE": "4",
        "APPLIANCE_REDIS_URL": redis_url,
        "APPLIANCE_S3_ENDPOINT": minio_peer.endpoint,
        "APPLIANCE_S3_ACCESS_KEY": minio_peer.access_key,
        "APPLIANCE_S3_SECRET_KEY": minio_peer.secret_key,
        "APPLIANCE_S3_BUCKET_PREFIX": f"nodes-{secrets.token_hex(6)}",
    }
    for node in ("a", "b"):
        (tmp_path / node).mkdir()
    try:
        # A first, alone: it applies the migrations; B starts on a migrated database (either could).
        with (
            run_appliance(tmp_path / "a" / "data", {**shared, "APPLIANCE_WORKER": "false"}) as node_a,
            run_appliance(tmp_path / "b" / "data", {**shared, "APPLIANCE_WORKER": "true"}) as node_b,
        ):
            yield node_a, node_b
    finally:
        postgres_peer.drop_database(name)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as server:
        yield server


async def test_two_nodes_share_writes_jobs_and_broadcasts(
    cluster: tuple[ApplianceProcess, ApplianceProcess], receiver: Receiver
) -> None:
    node_a, node_b = cluster
    async with httpx.AsyncClient(timeout=WAIT) as http:
        created = await http.post(
            f"{node_a.url}/v1/tenants", json={"id": "acme", "name": "Acme"}, headers=ROOT
        )
        assert created.status_code == 201, created.text
        key = await http.post(
            f"{node_a.url}/v1/keys",
            json={"name": "app", "scopes": ["storage", "jobs", "realtime"]},
            headers={**ROOT, "X-Tenant-ID": "acme"},
        )
        acme = {"Authorization": f"Bearer {key.json()['secret']}"}

        # A write on A is read on B: the key (metadata in PostgreSQL) and the object (in MinIO).
        put = await http.put(f"{node_a.url}/v1/buckets/docs/objects/hello.txt", content=b"hi", headers=acme)
        assert put.status_code in (200, 201), put.text
        got = await http.get(f"{node_b.url}/v1/buckets/docs/objects/hello.txt", headers=acme)
        assert got.status_code == 200 and got.content == b"hi"
        # A signed URL minted on A downloads from B: the signing secret is shared through the database.
        signed = await http.post(f"{node_a.url}/v1/buckets/docs/objects/hello.txt/url", json={}, headers=acme)
        assert signed.status_code in (200, 201), signed.text
        path = signed.json()["url"].split("://", 1)[1].split("/", 1)[1]
        assert (await http.get(f"{node_b.url}/{path}")).content == b"hi"

        # A job enqueued on A (which runs no worker) runs on B's worker.
        job = await http.post(
            f"{node_a.url}/v1/queues/hooks/jobs",
            json={
                "type": "http",
                "payload": {"url": receiver.url + "/hook", "body": {"n": 1}, "secret": "s"},
            },
            headers=acme,
        )
        assert job.status_code == 201, job.text
        job_id = job.json()["id"]
        deadline = time.monotonic() + WAIT
        while not receiver.deliveries:
            assert time.monotonic() < deadline, "the job never ran"
            await asyncio.sleep(0.05)
        assert json.loads(receiver.deliveries[0].body) == {"n": 1}
        while (
            status := (await http.get(f"{node_a.url}/v1/queues/hooks/jobs/{job_id}", headers=acme)).json()
        )["status"] != "succeeded":
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.05)

        # A broadcast published on B reaches a client connected to A.
        ws_url = node_a.url.replace("http://", "ws://") + "/v1/ws?user_id=alice"
        async with connect(ws_url, additional_headers=acme, open_timeout=WAIT) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), WAIT))["event"] == "welcome"
            await ws.send(json.dumps({"op": "subscribe", "channel": "news"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), WAIT))["event"] == "subscribed"
            sent = await http.post(
                f"{node_b.url}/v1/channels/news/broadcast", json={"data": {"from": "b"}}, headers=acme
            )
            assert sent.status_code == 202 and sent.json()["delivered"] == 1, sent.text
            frame = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
            assert (frame["channel"], frame["data"]) == ("news", {"from": "b"})
