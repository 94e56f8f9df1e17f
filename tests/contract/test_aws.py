"""The AWS plugin (plugins/aws) against moto in server mode: what the shared contract suites do not cover.

The ``aws-s3`` store runs the BlobStore contract (test_storage.py) and ``aws-ses`` the Mailer contract
(test_mailer.py) unchanged. The Pusher contract is Web Push specific (a loopback push service that
decrypts like a browser), so ``aws-sns`` has its equivalent here: delivered, gone, rejected, unavailable,
health. Then the EventBridge forwarder, selection by configuration alone in a whole app, ``appliance
doctor`` naming the identity, the lazy import and the configuration errors. Verified against moto, not
live AWS.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.config import AioConfig
from appliance_aws._aws import AwsClients
from appliance_aws.eventbridge import EventBridgeForwarder, EventBridgeUnavailable
from appliance_aws.s3 import S3BlobStore
from appliance_aws.sns import SnsPusher, token_of
from click.testing import CliRunner
from litestar.testing import AsyncTestClient

from appliance.app import create_app
from appliance.cli import cli
from appliance.config import ConfigError
from appliance.core.context import Context
from appliance.core.outbox import Event
from appliance.events import EventService
from appliance.notify import PushTarget, PushUnavailable
from appliance.storage import StorageUnavailable
from tests.aws_peers import MotoPeer
from tests.conftest import ROOT, make_settings
from tests.peers import HOST, free_port

P256DH = "B" + "A" * 86
AUTH = "A" * 22


def target(token: str) -> PushTarget:
    return PushTarget(endpoint=f"https://fcm.googleapis.com/fcm/send/{token}", p256dh=P256DH, auth=AUTH)


def unreachable() -> AwsClients:
    return AwsClients(
        config=AioConfig(connect_timeout=2, retries={"max_attempts": 1}),  # no retries: fail fast
        endpoint_url=f"http://{HOST}:{free_port()}",
        aws_access_key_id="k",
        aws_secret_access_key="s",
    )


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.fixture
def moto_env(moto_peer: MotoPeer, monkeypatch: pytest.MonkeyPatch) -> MotoPeer:
    """The standard AWS variables pointing the whole credential/endpoint chain at moto."""
    for name, value in moto_peer.env().items():
        monkeypatch.setenv(name, value)
    return moto_peer


@pytest.fixture
async def platform_app(moto_peer: MotoPeer) -> str:
    moto_peer.reset()  # the SNS tests read moto's data.json: see MotoPeer.reset
    clients = AwsClients(**moto_peer.client_kwargs())
    sns = await clients.client("sns")
    answer = await sns.create_platform_application(
        Name=f"web-{secrets.token_hex(4)}", Platform="GCM", Attributes={"PlatformCredential": "server-key"}
    )
    await clients.close()
    return str(answer["PlatformApplicationArn"])


@pytest.fixture
async def pusher(moto_peer: MotoPeer, platform_app: str) -> AsyncIterator[SnsPusher]:
    sns = SnsPusher(AwsClients(**moto_peer.client_kwargs()), platform_app, public_key="BKey")
    await sns.start()
    yield sns
    await sns.close()


def sns_endpoints(moto: MotoPeer, token: str) -> list[dict[str, Any]]:
    return [e for e in moto.data()["sns"]["PlatformEndpoint"] if e["token"] == token]


# ------------------------------------------------------------------ SNS push ---


async def test_sns_delivers_the_payload_with_its_ttl(pusher: SnsPusher, moto_peer: MotoPeer) -> None:
    token = f"tok-{secrets.token_hex(6)}"
    assert await pusher.send(target(token), b'{"title":"Hi","body":"there"}', ttl=60) == "delivered"
    assert await pusher.send(target(token), b'{"title":"Again"}', ttl=0) == "delivered"
    [endpoint] = sns_endpoints(moto_peer, token)  # one platform endpoint per subscription, reused
    sent = [json.loads(m) for m in endpoint["messages"].values()]
    assert [json.loads(m["default"]) for m in sent] == [{"title": "Hi", "body": "there"}, {"title": "Again"}]
    gcm = json.loads(sent[0]["GCM"])
    assert gcm == {"data": {"title": "Hi", "body": "there"}, "time_to_live": 60}
    assert pusher.public_key() == "BKey"


async def test_sns_disabled_endpoints_are_gone(pusher: SnsPusher, moto_peer: MotoPeer) -> None:
    token = f"tok-{secrets.token_hex(6)}"
    assert await pusher.send(target(token), b"{}", ttl=0) == "delivered"
    [endpoint] = sns_endpoints(moto_peer, token)
    sns = await pusher.clients.client("sns")
    await sns.set_endpoint_attributes(EndpointArn=endpoint["arn"], Attributes={"Enabled": "false"})
    assert await pusher.send(target(token), b"{}", ttl=0) == "gone"


async def test_sns_refused_messages_are_rejected(pusher: SnsPusher) -> None:
    too_long = json.dumps({"body": "x" * 300_000}).encode()  # SNS takes at most 256 KiB
    assert await pusher.send(target(f"tok-{secrets.token_hex(6)}"), too_long, ttl=0) == "rejected"


async def test_sns_down_is_unavailable_and_health_says_so(platform_app: str) -> None:
    down = SnsPusher(unreachable(), platform_app)
    with pytest.raises(PushUnavailable, match="SNS"):
        await down.send(target("tok"), b"{}", ttl=0)
    status = await down.health()
    assert not status.ok and status.backend == "aws-sns" and "APPLIANCE_AWS_SNS" in status.detail
    await down.close()


async def test_sns_health_names_the_application_and_identity(pusher: SnsPusher, platform_app: str) -> None:
    status = await pusher.health()
    assert status.ok and status.name == "push" and status.backend == "aws-sns"
    assert platform_app in status.detail and "arn:aws:sts::" in status.detail


def test_token_is_the_last_path_segment() -> None:
    assert token_of("https://fcm.googleapis.com/fcm/send/abc:DEF-1") == "abc:DEF-1"
    assert token_of("https://updates.push.services.mozilla.com/wpush/v2/gAAA/") == "gAAA"


# ------------------------------------------------------------------ S3 extras ---


async def test_s3_down_is_storage_unavailable() -> None:
    store = S3BlobStore(unreachable(), "nowhere")
    await store.start()
    try:
        with pytest.raises(StorageUnavailable, match="aws-s3"):
            await store.put("acme", "b/k", chunks(b"x"))
        with pytest.raises(StorageUnavailable):
            await store.get("acme", "b/k")
        assert not (await store.health()).ok
    finally:
        await store.close()


async def test_s3_encrypts_every_object_with_kms(moto_peer: MotoPeer) -> None:
    store = S3BlobStore(
        AwsClients(**moto_peer.client_kwargs()), f"sse-{secrets.token_hex(4)}", "aws:kms", "alias/appliance"
    )
    await store.start()
    try:
        await store.put("acme", "a/small", chunks(b"secret"))
        s3 = await store.clients.client("s3")
        head = await s3.head_object(Bucket=store.bucket, Key="acme/a/small")
        assert head["ServerSideEncryption"] == "aws:kms"
        status = await store.health()
        assert status.ok and "SSE aws:kms" in status.detail and "identity arn:aws:sts::" in status.detail
    finally:
        await store.close()


# ---------------------------------------------------------------- EventBridge ---


async def bus_to_queue(moto: MotoPeer, bus: str) -> tuple[AwsClients, str]:
    """A bus whose only rule sends everything from ``shop`` to a fresh SQS queue; returns the queue URL."""
    clients = AwsClients(**moto.client_kwargs())
    events, sqs = await clients.client("events"), await clients.client("sqs")
    await events.create_event_bus(Name=bus)
    url = (await sqs.create_queue(QueueName=f"q-{secrets.token_hex(4)}"))["QueueUrl"]
    arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))["Attributes"][
        "QueueArn"
    ]
    await events.put_rule(Name="all", EventBusName=bus, EventPattern=json.dumps({"source": ["shop"]}))
    await events.put_targets(Rule="all", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
    return clients, url


async def received(clients: AwsClients, url: str) -> list[dict[str, Any]]:
    sqs = await clients.client("sqs")
    answer = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    return [json.loads(m["Body"]) for m in answer.get("Messages", [])]


async def test_eventbridge_forwards_source_type_and_detail(moto_peer: MotoPeer) -> None:
    bus = f"bus-{secrets.token_hex(4)}"
    clients, url = await bus_to_queue(moto_peer, bus)
    forwarder = EventBridgeForwarder(AwsClients(**moto_peer.client_kwargs()), bus)
    event = Event(
        id="evt_1", tenant="acme", source="shop", type="order.paid", payload={"n": 1}, created_at=1.0
    )
    await forwarder.forward(event)
    [message] = await received(clients, url)
    assert (message["source"], message["detail-type"]) == ("shop", "order.paid")
    assert message["detail"] == {"id": "evt_1", "tenant": "acme", "payload": {"n": 1}}
    status = await forwarder.health()
    assert status.ok and status.name == "events" and bus in status.detail
    await forwarder.close()
    await clients.close()


async def test_eventbridge_down_raises_so_the_delivery_retries() -> None:
    forwarder = EventBridgeForwarder(unreachable(), "default")
    event = Event(id="e", tenant="acme", source="shop", type="t", payload={}, created_at=1.0)
    with pytest.raises(EventBridgeUnavailable, match="EventBridge"):
        await forwarder.forward(event)
    assert not (await forwarder.health()).ok
    await forwarder.close()


# ------------------------------------------------- selection by configuration ---


@pytest.fixture
def aws_app_env(moto_env: MotoPeer, platform_app: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    bus = f"bus-{secrets.token_hex(4)}"
    monkeypatch.setenv("APPLIANCE_AWS_S3_BUCKET", f"app-{secrets.token_hex(4)}")
    monkeypatch.setenv("APPLIANCE_AWS_SNS_PLATFORM_APPLICATION_ARN", platform_app)
    monkeypatch.setenv("APPLIANCE_AWS_EVENTBRIDGE_BUS", bus)
    yield bus


ALL_AWS = {
    "storage_backend": "aws-s3",
    "mail_backend": "aws-ses",
    "push_backend": "aws-sns",
    "events_backend": "aws-eventbridge",
}


async def test_every_port_switches_to_aws_by_configuration(
    tmp_path: Path, aws_app_env: str, moto_env: MotoPeer
) -> None:
    clients, url = await bus_to_queue(moto_env, aws_app_env)
    app = create_app(make_settings(tmp_path / "data", worker=False, **ALL_AWS))
    async with AsyncTestClient(app, base_url="http://appliance.test") as client:
        put = await client.put("/v1/buckets/photos/objects/a/b.txt", content=b"on s3", headers=ROOT)
        assert put.status_code == 201, put.text
        got = await client.get("/v1/buckets/photos/objects/a/b.txt", headers=ROOT)
        assert got.status_code == 200 and got.content == b"on s3"
        ready = (await client.get("/readyz")).json()
        backends = {b["name"]: b for b in ready["backends"]}
        for name, backend in [
            ("storage", "aws-s3"),
            ("mail", "aws-ses"),
            ("push", "aws-sns"),
            ("events", "aws-eventbridge"),
        ]:
            assert backends[name]["backend"] == backend and backends[name]["ok"], backends[name]
            assert "identity arn:aws:sts::" in backends[name]["detail"]
        event = {"source": "shop", "type": "order.paid", "payload": {"n": 2}}
        assert (await client.post("/v1/events", json=event, headers=ROOT)).status_code in (201, 202)
        ctx: Context = app.state.ctx
        await ctx.service("events", EventService).drain()  # on this test's loop, not the app's
        forwarder = next(
            c.__self__
            for c in ctx.health
            if getattr(c, "__self__", None).__class__.__name__ == "EventBridgeForwarder"
        )
        await forwarder.clients.close()  # the clients the drain made on this loop
    [message] = await received(clients, url)
    assert message["detail-type"] == "order.paid" and message["detail"]["payload"] == {"n": 2}
    await clients.close()


def test_doctor_reports_each_aws_backend_and_the_identity(
    tmp_path: Path, aws_app_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPLIANCE_STORAGE_BACKEND", "aws-s3")
    monkeypatch.setenv("APPLIANCE_MAIL_BACKEND", "aws-ses")
    monkeypatch.setenv("APPLIANCE_ROOT_KEY", ROOT["Authorization"].split()[1])
    result = CliRunner().invoke(cli, ["doctor", "--data-dir", str(tmp_path / "data")])
    lines = result.output.splitlines()
    storage = next(line for line in lines if " storage " in line)
    mail = next(line for line in lines if " mail " in line)
    assert storage.startswith("ok") and "aws-s3" in storage and "arn:aws:sts::123456789012" in storage
    assert mail.startswith("ok") and "aws-ses" in mail and "arn:aws:sts::123456789012" in mail


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"APPLIANCE_PUSH_BACKEND": "aws-sns"}, "APPLIANCE_AWS_SNS_PLATFORM_APPLICATION_ARN"),
        ({"APPLIANCE_STORAGE_BACKEND": "aws-s3", "APPLIANCE_AWS_S3_SSE": "des"}, "APPLIANCE_AWS_S3_SSE"),
        ({"APPLIANCE_STORAGE_BACKEND": "aws-s3", "APPLIANCE_AWS_S3_ADDRESSING": "x"}, "ADDRESSING"),
    ],
)
def test_configuration_errors_name_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("APPLIANCE_AWS_SNS_PLATFORM_APPLICATION_ARN", raising=False)
    overrides = {k.removeprefix("APPLIANCE_").lower(): v for k, v in env.items() if k.endswith("_BACKEND")}
    with pytest.raises(ConfigError, match=message):
        create_app(make_settings(tmp_path / "data", **overrides))


def test_an_unselected_plugin_does_not_import_aiobotocore() -> None:
    code = (
        "import sys; from appliance.plugin import load_plugins; manager, _ = load_plugins('all');"
        " manager.hook.appliance_backends();"
        " print('aiobotocore' in sys.modules, 'botocore' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


async def test_s3_creates_its_bucket_in_the_configured_region(moto_peer: MotoPeer) -> None:
    kwargs = {**moto_peer.client_kwargs(), "region": "eu-west-1"}
    store = S3BlobStore(AwsClients(**kwargs), f"eu-{secrets.token_hex(4)}")
    await store.start()
    try:
        await store.put("acme", "a/b", chunks(b"x"))
        s3 = await store.clients.client("s3")
        location = await s3.get_bucket_location(Bucket=store.bucket)
        assert location["LocationConstraint"] == "eu-west-1"
    finally:
        await store.close()


def test_s3_addressing_is_virtual_on_aws_and_path_on_a_custom_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    on_aws = AwsClients()
    assert (on_aws.s3_addressing, on_aws.region) == ("virtual", "eu-central-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    assert AwsClients().s3_addressing == "path"
    assert AwsClients(s3_addressing="virtual").s3_addressing == "virtual"
