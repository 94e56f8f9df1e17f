"""The AWS plugin's ``aws-sqs`` job queue on moto: what the JobQueue contract (test_jobs.py) does not see.

Queue names within SQS's rules, the redrive policy, ``DelaySeconds`` and the sweep that sends jobs due
beyond 15 minutes, the visibility timeout extended while a job runs, SQS's dead-letter queue turning
into the appliance's dead list, an SQS outage (nothing accepted is lost), ``appliance doctor`` and the
configuration errors. Verified against moto, not live AWS.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from appliance_aws import sqs as sqs_module
from appliance_aws.sqs import SqsQueue, queue_name
from click.testing import CliRunner
from litestar.testing import AsyncTestClient

from appliance.app import assemble, create_app
from appliance.cli import cli
from appliance.config import ConfigError
from appliance.core.context import Context
from appliance.jobs import Backoff, Job, JobService, NewJob
from tests.api.test_jobs import http_job_runs_in_the_background
from tests.aws_peers import MotoPeer
from tests.conftest import ROOT, make_settings
from tests.peers import HOST, free_port, http_ok, running
from tests.receiver import serve_receiver

FAST = Backoff(initial_s=0, factor=1, max_s=0)
SQS_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")


@asynccontextmanager
async def sqs_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], **extra: str
) -> AsyncIterator[tuple[Context, JobService, SqsQueue, list[Job]]]:
    """An appliance on ``aws-sqs`` (configured through the environment only) with a recording handler."""
    for name, value in {
        **env,
        "APPLIANCE_AWS_SQS_QUEUE_PREFIX": f"s{secrets.token_hex(4)}-",
        **extra,
    }.items():
        monkeypatch.setenv(name, value)
    ctx, _ = assemble(make_settings(tmp_path / "data", jobs_backend="aws-sqs"), role="cli")
    calls: list[Job] = []

    async def work(job: Job) -> Any:
        calls.append(job)
        if len([c for c in calls if c.id == job.id]) <= job.payload.get("fail_times", 0):
            raise RuntimeError("not yet")
        await asyncio.sleep(job.payload.get("sleep", 0))
        return {"attempt": job.attempt}

    ctx.register_job_handler("test.work", work)
    async with ctx.running():
        service = ctx.service("jobs", JobService)
        assert isinstance(service.queue, SqsQueue)
        yield ctx, service, service.queue, calls


async def counts(queue: SqsQueue, target: tuple[str, int], dlq: bool = False) -> dict[str, int]:
    sqs = await queue.clients.client("sqs")
    urls = await queue._queue(target)  # created if nothing was sent to it yet
    url = urls.dlq_url if dlq else urls.url
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    names.append("ApproximateNumberOfMessagesDelayed")
    attributes = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names))["Attributes"]
    return {
        name.removeprefix("ApproximateNumberOfMessages") or "Visible": int(v)
        for name, v in attributes.items()
    }


async def until(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_queue_names_follow_the_sqs_rules_and_never_collide() -> None:
    queues = ["emails", "a.b", "a_b", "a-b", "a_ob", "x" * 63, "x" * 62 + "y", "q_dlq", "q.p1"]
    names = {
        queue_name("appliance-", q, p, dlq=d) for q in queues for p in (0, 5, -5, 100) for d in (False, True)
    }
    assert len(names) == len(queues) * 4 * 2
    assert all(SQS_NAME.match(name) for name in names)
    assert queue_name("appliance-", "emails", 0) == "appliance-emails"
    assert queue_name("appliance-", "a.b_c", -3, dlq=True) == "appliance-a_ob_uc_n3_dlq"
    main = {queue_name("p-", q, 0) for q in queues}
    assert not any(name.endswith("_dlq") for name in main)


async def test_queues_have_a_redrive_policy_and_delays_use_delay_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_peer: MotoPeer
) -> None:
    async with sqs_app(tmp_path, monkeypatch, moto_peer.env(), APPLIANCE_AWS_SQS_MAX_RECEIVES="7") as world:
        ctx, jobs, queue, calls = world
        soon = await jobs.enqueue("default", "mail.out", NewJob(type="test.work", delay_s=600, priority=2))
        assert await counts(queue, ("mail.out", 2)) == {"Visible": 0, "NotVisible": 0, "Delayed": 1}
        sqs = await queue.clients.client("sqs")
        url = (await sqs.get_queue_url(QueueName=queue_name(queue.prefix, "mail.out", 2)))["QueueUrl"]
        attributes = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]))["Attributes"]
        redrive = json.loads(attributes["RedrivePolicy"])
        assert int(redrive["maxReceiveCount"]) == 7
        assert redrive["deadLetterTargetArn"].endswith(
            ":" + queue_name(queue.prefix, "mail.out", 2, dlq=True)
        )

        # Beyond 15 minutes nothing is sent; the sweep sends the job once it comes within reach.
        later = await jobs.enqueue("default", "later", NewJob(type="test.work", delay_s=7200))
        assert await counts(queue, ("later", 0)) == {"Visible": 0, "NotVisible": 0, "Delayed": 0}
        async with ctx.db.transaction() as tx:  # 7190 s pass: the job is now due in 10 s
            await tx.execute(
                "UPDATE jobs SET created_at = created_at - 7190, due_at = due_at - 7190, run_at = run_at - 7190"
                " WHERE id = ?",
                (later.id,),
            )
        await queue._sweep(force=True)
        await queue._sweep(force=True)  # sent once, not at every sweep
        assert await counts(queue, ("later", 0)) == {"Visible": 0, "NotVisible": 0, "Delayed": 1}
        assert await jobs.drain() == 0 and calls == []
        assert (await jobs.get("default", "mail.out", soon.id)).status == "queued"


async def test_a_retry_beyond_15_minutes_leaves_sqs_until_it_is_due(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_peer: MotoPeer
) -> None:
    async with sqs_app(tmp_path, monkeypatch, moto_peer.env()) as (ctx, jobs, queue, calls):
        slow = Backoff(initial_s=3600, factor=1, max_s=3600)
        record = await jobs.enqueue(
            "default", "q", NewJob(type="test.work", payload={"fail_times": 1}, backoff=slow)
        )
        assert await jobs.drain() == 1
        retry = await jobs.get("default", "q", record.id)
        assert retry.status == "queued" and retry.attempts == 1
        assert await counts(queue, ("q", 0)) == {"Visible": 0, "NotVisible": 0, "Delayed": 0}  # deleted
        async with ctx.db.transaction() as tx:  # the backoff has nearly passed
            row = await tx.fetchone("SELECT due_at FROM jobs WHERE id = ?", (record.id,))
            assert row is not None and row["due_at"] > time.time() + 1800
            shift = row["due_at"] - time.time()
            await tx.execute(
                "UPDATE jobs SET due_at = due_at - ?,"
                " history = json_set(history, '$[#-1].finished_at', json_extract(history, '$[#-1].finished_at') - ?)"
                " WHERE id = ?",
                (shift, shift, record.id),
            )
        queue._horizon = 0.0  # as in a worker that starts now
        assert await jobs.drain() == 1
        done = await jobs.get("default", "q", record.id)
        assert done.status == "succeeded" and [c.attempt for c in calls] == [1, 2]


async def test_a_lost_message_is_sent_again_once_its_queue_is_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_peer: MotoPeer
) -> None:
    monkeypatch.setattr(sqs_module, "OVERDUE_S", 0.3)
    async with sqs_app(tmp_path, monkeypatch, moto_peer.env()) as (_, jobs, queue, calls):
        record = await jobs.enqueue("default", "q", NewJob(type="test.work"))
        sqs = await queue.clients.client("sqs")
        await sqs.purge_queue(QueueUrl=(await queue._queue(("q", 0))).url)  # the message is lost
        assert await counts(queue, ("q", 0)) == {"Visible": 0, "NotVisible": 0, "Delayed": 0}
        assert await jobs.drain() == 1
        assert (await jobs.get("default", "q", record.id)).status == "succeeded" and len(calls) == 1


async def test_a_running_job_keeps_its_message_invisible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_peer: MotoPeer
) -> None:
    monkeypatch.setattr(sqs_module, "VISIBILITY_S", 2)  # extended every 0.67 s
    async with sqs_app(tmp_path, monkeypatch, moto_peer.env()) as (_, jobs, queue, calls):
        record = await jobs.enqueue("default", "q", NewJob(type="test.work", payload={"sleep": 3.4}))
        drain = asyncio.create_task(jobs.drain())
        await until(lambda: bool(calls))
        started = time.monotonic()
        while time.monotonic() - started < 3:  # well past the 2 s visibility timeout of the receive
            assert await counts(queue, ("q", 0)) == {"Visible": 0, "NotVisible": 1, "Delayed": 0}
            await asyncio.sleep(0.2)
        assert await drain == 1
        done = await jobs.get("default", "q", record.id)
        assert done.status == "succeeded" and done.attempts == 1 and len(calls) == 1
        assert await counts(queue, ("q", 0)) == {"Visible": 0, "NotVisible": 0, "Delayed": 0}


async def test_the_sqs_dead_letter_queue_feeds_the_dead_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_peer: MotoPeer
) -> None:
    async with sqs_app(tmp_path, monkeypatch, moto_peer.env(), APPLIANCE_AWS_SQS_MAX_RECEIVES="1") as world:
        _, jobs, queue, calls = world
        job = NewJob(type="test.work", payload={"fail_times": 1}, backoff=FAST, max_attempts=5)
        record = await jobs.enqueue("default", "q", job)
        await jobs.drain()  # attempt 1 fails; SQS moves the message (received once) to the DLQ
        dead = await jobs.get("default", "q", record.id)
        assert dead.status == "dead" and dead.attempts == 1 and "dead-letter queue" in (dead.error or "")
        assert [r.id for r in (await jobs.dead("default", "q")).items] == [record.id]
        assert (await counts(queue, ("q", 0), dlq=True))["Visible"] == 0  # recorded, then deleted
        await jobs.retry_dead("default", "q", record.id)
        assert await jobs.drain() == 1
        done = await jobs.get("default", "q", record.id)
        assert done.status == "succeeded" and [c.attempt for c in calls] == [1, 1]


async def test_enqueues_survive_an_sqs_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_peer: MotoPeer
) -> None:
    """SQS is down: enqueues are accepted (recorded), health says so; once it is up, the sweep sends them."""
    port = free_port()
    url = f"http://{HOST}:{port}"
    async with sqs_app(tmp_path, monkeypatch, {**moto_peer.env(), "AWS_ENDPOINT_URL": url}) as world:
        ctx, jobs, _, calls = world
        records = await jobs.enqueue_bulk("default", "q", [NewJob(type="test.work") for _ in range(3)])
        assert {(await jobs.get("default", "q", r.id)).status for r in records} == {"queued"}
        [status] = [s for s in await ctx.check_health() if s.name == "jobs"]
        assert not status.ok and status.backend == "aws-sqs" and "unreachable" in status.detail
        argv = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
        workdir = tmp_path / "moto"
        workdir.mkdir()
        with running("moto-outage", argv, workdir, lambda: http_ok(f"{url}/moto-api/data.json")):
            assert await jobs.drain() == 3
            assert {(await jobs.get("default", "q", r.id)).status for r in records} == {"succeeded"}
            assert len(calls) == 3
            [status] = [s for s in await ctx.check_health() if s.name == "jobs"]
            assert status.ok and "identity arn:aws:sts::" in status.detail


async def test_the_api_runs_an_http_job_through_sqs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_peer: MotoPeer
) -> None:
    """Configuration alone picks aws-sqs for the whole app; its own background worker runs the job."""
    for name, value in {**moto_peer.env(), "APPLIANCE_AWS_SQS_QUEUE_PREFIX": "api-"}.items():
        monkeypatch.setenv(name, value)
    app = create_app(make_settings(tmp_path / "data", jobs_backend="aws-sqs"))
    with serve_receiver() as receiver:
        async with AsyncTestClient(app, base_url="http://appliance.test") as client:
            status = await http_job_runs_in_the_background(client, receiver, "aws-sqs", queue="hooks.out")
    assert "api-*" in status["detail"] and "identity arn:aws:sts::" in status["detail"]


def test_doctor_reports_the_sqs_backend_and_the_identity(
    tmp_path: Path, moto_peer: MotoPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in moto_peer.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("APPLIANCE_JOBS_BACKEND", "aws-sqs")
    monkeypatch.setenv("APPLIANCE_AWS_SQS_QUEUE_PREFIX", "doctor-")
    monkeypatch.setenv("APPLIANCE_ROOT_KEY", ROOT["Authorization"].split()[1])
    result = CliRunner().invoke(cli, ["doctor", "--data-dir", str(tmp_path / "data")])
    jobs = next(line for line in result.output.splitlines() if " jobs " in line)
    assert jobs.startswith("ok") and "aws-sqs" in jobs and "doctor-*" in jobs
    assert "arn:aws:sts::123456789012" in jobs


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"APPLIANCE_AWS_SQS_QUEUE_PREFIX": "bad.prefix"}, "APPLIANCE_AWS_SQS_QUEUE_PREFIX"),
        ({"APPLIANCE_AWS_SQS_MAX_RECEIVES": "0"}, "MAX_RECEIVES"),
        ({"APPLIANCE_AWS_SQS_MAX_RECEIVES": "many"}, "APPLIANCE_AWS_SQS_MAX_RECEIVES"),
    ],
)
def test_configuration_errors_name_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        assemble(make_settings(tmp_path / "data", jobs_backend="aws-sqs"), role="cli")
