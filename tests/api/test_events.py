"""API.md "Events": publish, the log, rules, and delivery to every target kind, as scenario tables."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from appliance.app import create_app
from appliance.config import Settings
from appliance.core.context import Context
from appliance.core.outbox import Event, emit
from appliance.core.shards import acting_for
from appliance.events import EventService
from appliance.jobs import Job
from appliance.jobs.http import verify
from appliance.plugin import EventHandlerSpec, hookimpl
from tests.api.test_core import assert_problem
from tests.conftest import MakeTenant, make_settings
from tests.receiver import Receiver, serve_receiver

Client = AsyncTestClient[Litestar]
FAST = {"initial_s": 0, "factor": 1, "max_s": 0}


class RecordingPlugin:
    """A plugin with a job handler and an in-process event handler (that fails its first call)."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.handled: list[tuple[str, str]] = []
        self.calls = 0

    @hookimpl
    def appliance_job_handlers(self) -> dict[str, Any]:
        return {"test.record": self.record}

    @hookimpl
    def appliance_event_handlers(self) -> list[EventHandlerSpec]:
        return [
            EventHandlerSpec(name="audit log", pattern={"type": [{"prefix": "order."}]}, handler=self.audit)
        ]

    async def record(self, job: Job) -> str:
        self.jobs.append(job)
        return "recorded"

    async def audit(self, ctx: Context, event: Event) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("first call fails, to prove handlers retry")
        self.handled.append((event.tenant, event.type))


class Realtime:
    """Stands in for the realtime capability's service (its interface, not a mock of a backend)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, Any, str]] = []

    async def broadcast(
        self, tenant: str, channel: str, data: Any, *, event: str = "message", filter: Any = None
    ) -> int:
        self.sent.append((tenant, channel, data, event))
        return 1


@pytest.fixture
def settings(tmp_path: Any) -> Settings:
    return make_settings(tmp_path / "data", worker=False)


@pytest.fixture
def plugin() -> RecordingPlugin:
    return RecordingPlugin()


@pytest.fixture
def app(settings: Settings, plugin: RecordingPlugin) -> Litestar:
    return create_app(settings, extra_plugins=[plugin])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as server:
        yield server


def ctx_of(app: Litestar) -> Context:
    ctx: Context = app.state.ctx
    return ctx


def events_of(app: Litestar) -> EventService:
    return ctx_of(app).service("events", EventService)


def webhook_rule(url: str, **pattern: Any) -> dict[str, Any]:
    target = {"kind": "webhook", "url": url, "secret": "rule-secret", "backoff": FAST, "max_attempts": 3}
    return {"name": "hook", "pattern": pattern or {"type": ["order.created"]}, "targets": [target]}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "detail"),
    [
        ("POST", "/v1/events", {"source": "shop"}, 422, ""),
        ("POST", "/v1/events", {"source": "", "type": "x"}, 422, ""),
        ("POST", "/v1/events", {"source": "shop", "type": "x", "payload": []}, 422, ""),
        ("POST", "/v1/events", {"source": "shop", "type": "x", "extra": 1}, 422, ""),
        ("GET", "/v1/events?since=-1", None, 422, ""),
        ("GET", "/v1/events?cursor=%%%", None, 400, ""),
        ("POST", "/v1/rules", {"name": "r", "pattern": {}, "targets": [{"kind": "job"}]}, 422, "non-empty"),
        (
            "POST",
            "/v1/rules",
            {"name": "r", "pattern": {"detail": ["x"]}, "targets": [{"kind": "channel", "name": "c"}]},
            422,
            "unknown field",
        ),
        (
            "POST",
            "/v1/rules",
            {
                "name": "r",
                "pattern": {"type": [{"numeric": [">"]}]},
                "targets": [{"kind": "channel", "name": "c"}],
            },
            422,
            "type[0].numeric",
        ),
        ("POST", "/v1/rules", {"name": "r", "pattern": {"type": ["x"]}, "targets": []}, 422, ""),
        (
            "POST",
            "/v1/rules",
            {"name": "r", "pattern": {"type": ["x"]}, "targets": [{"url": "http://x"}]},
            422,
            "needs a 'kind'",
        ),
        (
            "POST",
            "/v1/rules",
            {"name": "r", "pattern": {"type": ["x"]}, "targets": [{"kind": "sms"}]},
            422,
            "unknown kind 'sms'",
        ),
        (
            "POST",
            "/v1/rules",
            {
                "name": "r",
                "pattern": {"type": ["x"]},
                "targets": [{"kind": "email", "template": "t", "to": "$.payload..email"}],
            },
            422,
            "email target: 'to'",
        ),
        (
            "POST",
            "/v1/rules",
            {"name": "r", "pattern": {"type": ["x"]}, "targets": [{"kind": "webhook", "url": "ftp://x"}]},
            422,
            "targets[0]: webhook target",
        ),
        (
            "POST",
            "/v1/rules",
            {
                "name": "r",
                "pattern": {"type": ["x"]},
                "targets": [{"kind": "job", "queue": "q", "type": "nobody"}],
            },
            422,
            "no handler for job type 'nobody'",
        ),
        (
            "POST",
            "/v1/rules",
            {
                "name": "r",
                "pattern": {"type": ["x"]},
                "targets": [{"kind": "job", "queue": "q", "type": "appliance.event"}],
            },
            422,
            "internal",
        ),
        (
            "POST",
            "/v1/rules",
            {
                "name": "r",
                "pattern": {"type": ["x"]},
                "targets": [{"kind": "channel", "name": "c", "max_attempts": 0}],
            },
            422,
            "targets[0]",
        ),
        ("GET", "/v1/rules/rule_missing", None, 404, ""),
        ("DELETE", "/v1/rules/rule_missing", None, 404, ""),
    ],
)
async def test_bad_requests_are_problems(
    client: Client, make_tenant: MakeTenant, method: str, path: str, body: Any, status: int, detail: str
) -> None:
    headers = await make_tenant("acme", ("events",))
    response = await client.request(method, path, json=body, headers=headers)
    problem = assert_problem(response, status)
    assert detail in problem["detail"]


async def test_events_need_the_events_scope(client: Client, make_tenant: MakeTenant) -> None:
    headers = await make_tenant("acme", ("jobs",))
    for method, path in [
        ("POST", "/v1/events"),
        ("GET", "/v1/events"),
        ("GET", "/v1/rules"),
        ("POST", "/v1/rules"),
        ("POST", "/v1/rules:test"),
    ]:
        assert_problem(await client.request(method, path, json={}, headers=headers), 403)


@pytest.mark.parametrize(
    ("pattern", "event", "matches"),
    [
        ({"type": ["user.created"]}, {"type": "user.created"}, True),
        ({"type": [{"prefix": "user."}]}, {"source": "users", "type": "order.paid"}, False),
        ({"payload": {"n": [{"numeric": [">", 0, "<=", 5]}]}}, {"payload": {"n": 5}}, True),
        ({"payload": {"email": [{"exists": False}]}}, {"type": "x"}, True),
        ({"type": ["x"]}, {"id": "evt_1", "type": "x", "created_at": 1}, True),  # other fields are ignored
    ],
)
async def test_rules_test_uses_the_rule_matcher(
    client: Client, make_tenant: MakeTenant, pattern: Any, event: Any, matches: bool
) -> None:
    headers = await make_tenant("acme", ("events",))
    response = await client.post("/v1/rules:test", json={"pattern": pattern, "event": event}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"matches": matches}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"pattern": {"type": [{"numeric": [">="]}]}, "event": {}}, "type[0].numeric"),
        ({"pattern": {"colour": ["red"]}, "event": {}}, "unknown field"),
        ({"pattern": {}, "event": "not an object"}, "event"),
        ({"pattern": {}}, "event"),
    ],
)
async def test_rules_test_says_what_is_wrong(
    client: Client, make_tenant: MakeTenant, body: Any, detail: str
) -> None:
    headers = await make_tenant("acme", ("events",))
    problem = assert_problem(await client.post("/v1/rules:test", json=body, headers=headers), 422)
    assert detail in problem["detail"]


async def test_publish_and_read_the_log(client: Client, make_tenant: MakeTenant) -> None:
    headers = await make_tenant("acme", ("events",))
    before = time.time()
    ids = []
    for i, kind in enumerate(["a.one", "b.two", "a.one"]):
        created = await client.post(
            "/v1/events", json={"source": "app", "type": kind, "payload": {"i": i}}, headers=headers
        )
        assert created.status_code == 202 and created.json()["id"].startswith("evt_")
        ids.append(created.json()["id"])
    log = (await client.get("/v1/events", headers=headers)).json()
    assert [e["id"] for e in log["items"]] == ids and log["next_cursor"] is None
    assert log["items"][0] | {"created_at": 0} == {
        "id": ids[0],
        "tenant": "acme",
        "source": "app",
        "type": "a.one",
        "payload": {"i": 0},
        "created_at": 0,
    }
    only_a = (await client.get("/v1/events?type=a.one", headers=headers)).json()
    assert [e["payload"]["i"] for e in only_a["items"]] == [0, 2]
    page = (await client.get("/v1/events?limit=2", headers=headers)).json()
    rest = (await client.get(f"/v1/events?limit=2&cursor={page['next_cursor']}", headers=headers)).json()
    assert [e["id"] for e in page["items"] + rest["items"]] == ids
    assert (await client.get(f"/v1/events?since={before - 60}", headers=headers)).json()["items"]
    assert (await client.get(f"/v1/events?since={time.time() + 60}", headers=headers)).json()["items"] == []


async def test_publish_with_idempotency_key_happens_once(client: Client, make_tenant: MakeTenant) -> None:
    headers = {**await make_tenant("acme", ("events",)), "Idempotency-Key": "evt-1"}
    body = {"source": "app", "type": "x"}
    first = await client.post("/v1/events", json=body, headers=headers)
    second = await client.post("/v1/events", json=body, headers=headers)
    assert first.json() == second.json()
    assert len((await client.get("/v1/events", headers=headers)).json()["items"]) == 1


async def test_rules_crud_hides_secrets(client: Client, make_tenant: MakeTenant) -> None:
    headers = await make_tenant("acme", ("events",))
    created = await client.post("/v1/rules", json=webhook_rule("http://127.0.0.1:9/h"), headers=headers)
    assert created.status_code == 201, created.text
    rule = created.json()
    assert rule["targets"][0]["secret"] == "***" and rule["targets"][0]["max_attempts"] == 3
    duplicate = await client.post("/v1/rules", json=webhook_rule("http://127.0.0.1:9/h"), headers=headers)
    assert_problem(duplicate, 409)
    listed = (await client.get("/v1/rules", headers=headers)).json()
    assert [r["id"] for r in listed["items"]] == [rule["id"]] and "rule-secret" not in str(listed)
    assert (await client.get(f"/v1/rules/{rule['id']}", headers=headers)).json()["name"] == "hook"
    assert (await client.delete(f"/v1/rules/{rule['id']}", headers=headers)).status_code == 204
    assert (await client.get("/v1/rules", headers=headers)).json()["items"] == []


async def test_webhook_target_gets_signed_matching_events(
    client: Client, app: Litestar, make_tenant: MakeTenant, receiver: Receiver
) -> None:
    headers = await make_tenant("acme", ("events",))
    rule = webhook_rule(
        receiver.url + "/in", type=["order.created"], payload={"amount": [{"numeric": [">", 10]}]}
    )
    assert (await client.post("/v1/rules", json=rule, headers=headers)).status_code == 201
    receiver.statuses = [500]  # the first delivery fails and is retried
    events = [
        {"source": "shop", "type": "order.created", "payload": {"amount": 50}},
        {"source": "shop", "type": "order.created", "payload": {"amount": 5}},
        {"source": "shop", "type": "order.deleted", "payload": {"amount": 50}},
    ]
    ids = [(await client.post("/v1/events", json=e, headers=headers)).json()["id"] for e in events]
    await events_of(app).drain()
    assert len(receiver.deliveries) == 2
    for delivery in receiver.deliveries:
        assert delivery.path == "/in"
        assert verify("rule-secret", delivery.body, delivery.headers["Appliance-Signature"])
        body = msgspec.json.decode(delivery.body)
        assert body["id"] == ids[0] and body["type"] == "order.created" and body["payload"] == {"amount": 50}


async def test_webhook_target_dead_letters_and_retries(
    client: Client, app: Litestar, make_tenant: MakeTenant, receiver: Receiver
) -> None:
    headers = await make_tenant("acme", ("events", "jobs"))
    assert (
        await client.post("/v1/rules", json=webhook_rule(receiver.url), headers=headers)
    ).status_code == 201
    receiver.statuses = [500, 502, 503]
    await client.post("/v1/events", json={"source": "shop", "type": "order.created"}, headers=headers)
    await events_of(app).drain()
    dead = (await client.get("/v1/queues/events/dead", headers=headers)).json()["items"]
    assert len(dead) == 1 and dead[0]["status"] == "dead" and dead[0]["attempts"] == 3
    assert dead[0]["payload"]["secret"] == "***"
    retried = await client.post(f"/v1/queues/events/dead/{dead[0]['id']}/retry", headers=headers)
    assert retried.status_code == 200
    await events_of(app).drain()
    assert len(receiver.deliveries) == 4
    assert (await client.get("/v1/queues/events/dead", headers=headers)).json()["items"] == []


async def test_job_target_and_in_process_handlers(
    client: Client, app: Litestar, make_tenant: MakeTenant, plugin: RecordingPlugin
) -> None:
    headers = await make_tenant("acme", ("events",))
    rule = {
        "name": "to-job",
        "pattern": {"source": ["shop"]},
        "targets": [{"kind": "job", "queue": "work", "type": "test.record"}],
    }
    assert (await client.post("/v1/rules", json=rule, headers=headers)).status_code == 201
    event_id = (
        await client.post(
            "/v1/events", json={"source": "shop", "type": "order.paid", "payload": {"n": 1}}, headers=headers
        )
    ).json()["id"]
    await client.post("/v1/events", json={"source": "blog", "type": "post.created"}, headers=headers)
    # The in-process handler fails once: it needs a retry, and its job's default backoff is not instant.
    service = events_of(app)
    await service.drain()
    [job] = plugin.jobs
    assert job.tenant == "acme" and job.queue == "work" and job.payload["id"] == event_id
    assert job.payload["payload"] == {"n": 1}
    with acting_for("acme"):  # outside a request: say whose shard to read (APPLIANCE_DATABASE_SHARDS)
        [handler_job] = await ctx_of(app).db.fetchall("SELECT id FROM jobs WHERE type = 'appliance.event'")
        await ctx_of(app).db.execute("UPDATE jobs SET due_at = 0 WHERE id = ?", (handler_job["id"],))
    await service.drain()
    assert plugin.handled == [("acme", "order.paid")] and plugin.calls == 2


async def test_channel_target_uses_the_realtime_service(
    client: Client, app: Litestar, make_tenant: MakeTenant
) -> None:
    # The Realtime stand-in replaces the real hub so the test can read what was sent; the real
    # path (rule -> channel -> WebSocket) runs in tests/e2e/test_event_channel.py.
    headers = await make_tenant("acme", ("events", "jobs"))
    target = {"kind": "channel", "name": "orders", "backoff": FAST, "max_attempts": 2}
    rule = {"name": "live", "pattern": {"type": ["order.shipped"]}, "targets": [target]}
    assert (await client.post("/v1/rules", json=rule, headers=headers)).status_code == 201
    realtime = Realtime()
    ctx_of(app).provide("realtime", realtime)
    await client.post(
        "/v1/events", json={"source": "shop", "type": "order.shipped", "payload": {"n": 1}}, headers=headers
    )
    await events_of(app).drain()
    [(tenant, channel, data, event)] = realtime.sent
    assert (tenant, channel, event) == ("acme", "orders", "order.shipped") and data["payload"] == {"n": 1}


async def test_channel_target_without_a_realtime_service_is_retried_then_dead(
    client: Client, app: Litestar, make_tenant: MakeTenant
) -> None:
    headers = await make_tenant("acme", ("events", "jobs"))
    target = {"kind": "channel", "name": "orders", "backoff": FAST, "max_attempts": 2}
    rule = {"name": "live", "pattern": {"type": ["order.shipped"]}, "targets": [target]}
    assert (await client.post("/v1/rules", json=rule, headers=headers)).status_code == 201
    ctx_of(app).services.pop("realtime")
    await client.post(
        "/v1/events", json={"source": "shop", "type": "order.shipped", "payload": {}}, headers=headers
    )
    await events_of(app).drain()
    [dead] = (await client.get("/v1/queues/events/dead", headers=headers)).json()["items"]
    assert "realtime service is not available" in dead["error"]


async def test_events_emitted_in_a_transaction_are_delivered_with_it(
    client: Client, app: Litestar, make_tenant: MakeTenant, plugin: RecordingPlugin
) -> None:
    headers = await make_tenant("acme", ("events",))
    rule = {
        "name": "r",
        "pattern": {"source": ["storage"]},
        "targets": [{"kind": "job", "queue": "w", "type": "test.record"}],
    }
    await client.post("/v1/rules", json=rule, headers=headers)
    ctx = ctx_of(app)
    with acting_for("acme"), pytest.raises(RuntimeError):
        async with ctx.db.transaction() as tx:
            await emit(tx, "acme", "storage", "storage.object.created", {"key": "lost"}, ctx.outbox)
            raise RuntimeError("the state change failed, so the event never happened")
    with acting_for("acme"):
        async with ctx.db.transaction() as tx:
            await emit(tx, "acme", "storage", "storage.object.created", {"key": "kept"}, ctx.outbox)
    await events_of(app).drain()
    assert [j.payload["payload"]["key"] for j in plugin.jobs] == ["kept"]


async def test_tenant_isolation(
    client: Client, app: Litestar, make_tenant: MakeTenant, plugin: RecordingPlugin
) -> None:
    owner = await make_tenant("acme", ("events",))
    intruder = await make_tenant("evil", ("events", "admin"))
    rule = {
        "name": "mine",
        "pattern": {"source": ["shop"]},
        "targets": [{"kind": "job", "queue": "w", "type": "test.record"}],
    }
    rule_id = (await client.post("/v1/rules", json=rule, headers=owner)).json()["id"]
    await client.post(
        "/v1/events",
        json={"source": "shop", "type": "secret.thing", "payload": {"s": "acme-only"}},
        headers=owner,
    )
    await client.post("/v1/events", json={"source": "shop", "type": "evil.thing"}, headers=intruder)
    await events_of(app).drain()
    # The intruder's event does not reach the owner's rule; the owner's event reached it once.
    assert [(j.tenant, j.payload["type"]) for j in plugin.jobs] == [("acme", "secret.thing")]
    table = [
        ("GET", f"/v1/rules/{rule_id}", 404),
        ("DELETE", f"/v1/rules/{rule_id}", 404),
    ]
    for method, path, status in table:
        response = await client.request(method, path, headers=intruder)
        assert_problem(response, status)
    for path in ["/v1/rules", "/v1/events", "/v1/events?type=secret.thing"]:
        response = await client.get(path, headers=intruder)
        assert (
            response.status_code == 200 and "acme-only" not in response.text and rule_id not in response.text
        )
    assert (await client.get(f"/v1/rules/{rule_id}", headers=owner)).status_code == 200


def test_a_running_appliance_delivers_in_the_background(tmp_path: Any, receiver: Receiver) -> None:
    """`appliance run` with its in-process workers: publish over HTTP, the webhook arrives by itself."""
    import httpx

    from tests.conftest import ROOT_KEY
    from tests.peers import poll_until
    from tests.process import run_appliance

    env = {
        "APPLIANCE_ROOT_KEY": ROOT_KEY,
        "APPLIANCE_RATE_LIMIT_PER_KEY": "",
        "APPLIANCE_RATE_LIMIT_PER_IP": "",
    }
    with run_appliance(tmp_path / "data", env) as proc:
        headers = {"Authorization": f"Bearer {ROOT_KEY}"}
        rule = httpx.post(f"{proc.url}/v1/rules", json=webhook_rule(receiver.url), headers=headers)
        assert rule.status_code == 201, rule.text
        published = httpx.post(
            f"{proc.url}/v1/events", json={"source": "shop", "type": "order.created"}, headers=headers
        )
        assert published.status_code == 202
        poll_until(lambda: len(receiver.deliveries) == 1, 15, "the webhook delivery", proc.process)
        assert msgspec.json.decode(receiver.deliveries[0].body)["id"] == published.json()["id"]


def test_a_separate_worker_process_delivers(tmp_path: Any, receiver: Receiver) -> None:
    """`appliance run` without workers plus `appliance worker` on the same data dir (two boxes' roles)."""
    import os
    import subprocess
    import sys

    import httpx

    from tests.conftest import ROOT_KEY
    from tests.peers import poll_until
    from tests.process import run_appliance

    env = {
        "APPLIANCE_ROOT_KEY": ROOT_KEY,
        "APPLIANCE_RATE_LIMIT_PER_KEY": "",
        "APPLIANCE_RATE_LIMIT_PER_IP": "",
        "APPLIANCE_WORKER": "false",
    }
    data_dir = tmp_path / "data"
    with run_appliance(data_dir, env) as api:
        headers = {"Authorization": f"Bearer {ROOT_KEY}"}
        assert (
            httpx.post(f"{api.url}/v1/rules", json=webhook_rule(receiver.url), headers=headers).status_code
            == 201
        )
        published = httpx.post(
            f"{api.url}/v1/events", json={"source": "shop", "type": "order.created"}, headers=headers
        )
        assert published.status_code == 202
        worker_env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
        worker_env.update({**env, "APPLIANCE_DATA_DIR": str(data_dir)})
        log = (tmp_path / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "appliance", "worker"],
            env=worker_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            poll_until(lambda: len(receiver.deliveries) == 1, 15, "the worker's webhook delivery", worker)
        finally:
            worker.terminate()
            code = worker.wait(timeout=15)
            log.close()
        assert code == 0, (tmp_path / "worker.log").read_text()
        assert msgspec.json.decode(receiver.deliveries[0].body)["id"] == published.json()["id"]
