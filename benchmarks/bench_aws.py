"""The AWS plugin's adapters vs. raw aiobotocore calls, side by side against one moto server.

    .venv/bin/python benchmarks/bench_aws.py [--size-mib 32] [--emails 200] [--jobs 200]

S3: one object of ``--size-mib`` MiB uploaded (as an unknown-length stream of 1 MiB chunks) and
downloaded through ``aws-s3``, vs. one ``put_object`` of the same bytes and a ``get_object`` read.
SES: ``--emails`` messages composed and sent through ``aws-ses``, vs. ``send_raw_email`` of one
pre-composed message. SQS: ``--jobs`` no-op jobs enqueued (bulk, 100 a call) and drained through the
``aws-sqs`` job queue (records in SQLite, one message per job), vs. the same number of messages sent
(``send_message_batch``), received and deleted (``receive_message`` / ``delete_message_batch``, 10 at a
time) with bare aiobotocore. moto (a Python server) bounds both sides; the ratio shows the adapter's overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance_aws._aws import AwsClients
from appliance_aws.s3 import S3BlobStore
from appliance_aws.ses import SesMailer

from appliance.notify import OutgoingEmail
from appliance.notify.messages import compose
from benchmarks.bench_jobs import appliance_rate
from tests.peers import HOST, free_port, http_ok, running

MIB = 1024 * 1024


async def stream(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), MIB):
        yield data[start : start + MIB]


def email(index: int) -> OutgoingEmail:
    return OutgoingEmail(
        id=f"eml_{index}",
        tenant="bench",
        sender="bench@appliance.test",
        to=["ada@example.com"],
        subject=f"Hello {index}",
        html="<p>Hello <b>Ada</b></p>",
        text="",
    )


async def sqs_adapter_rate(data_dir: Path, url: str, count: int) -> float:
    """Jobs per second through ``APPLIANCE_JOBS_BACKEND=aws-sqs`` (bench_jobs' enqueue-then-drain run)."""
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    os.environ.update({**env, "APPLIANCE_AWS_SQS_QUEUE_PREFIX": "bench-"})
    return await appliance_rate(data_dir, count=count, jobs_backend="aws-sqs")


async def sqs_bare_rate(raw: AwsClients, count: int) -> float:
    """Messages per second sent, received and deleted with bare aiobotocore calls, 10 at a time."""
    sqs = await raw.client("sqs")
    queue = (await sqs.create_queue(QueueName="bench-bare"))["QueueUrl"]
    body = '{"tenant": "default", "queue": "jobs", "id": "job_0123456789abcdef"}'
    start = time.perf_counter()
    for first in range(0, count, 10):
        entries = [{"Id": str(i), "MessageBody": body} for i in range(min(10, count - first))]
        await sqs.send_message_batch(QueueUrl=queue, Entries=entries)
    received = 0
    while received < count:
        answer = await sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, VisibilityTimeout=30)
        messages = answer.get("Messages", [])
        received += len(messages)
        if messages:
            entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
            await sqs.delete_message_batch(QueueUrl=queue, Entries=entries)
    return count / (time.perf_counter() - start)


async def bench(url: str, size: int, emails: int, count: int) -> None:
    kwargs = {"endpoint_url": url, "aws_access_key_id": "k", "aws_secret_access_key": "s"}
    data = bytes(range(256)) * (size // 256)
    raw = AwsClients(**kwargs)
    s3 = await raw.client("s3")
    await s3.create_bucket(Bucket="raw")
    start = time.perf_counter()
    await s3.put_object(Bucket="raw", Key="blob", Body=data)
    body = (await s3.get_object(Bucket="raw", Key="blob"))["Body"]
    assert len(await body.read()) == size
    direct_s3 = time.perf_counter() - start

    store = S3BlobStore(AwsClients(**kwargs), "adapter")
    await store.start()
    start = time.perf_counter()
    await store.put("bench", "blob", stream(data))
    got = sum([len(c) async for c in await store.get("bench", "blob")])
    assert got == size
    adapter_s3 = time.perf_counter() - start
    await store.close()

    ses = await raw.client("ses")
    await ses.verify_email_identity(EmailAddress="bench@appliance.test")
    composed = compose(email(0)).data
    start = time.perf_counter()
    for _ in range(emails):
        await ses.send_raw_email(
            Source="bench@appliance.test", Destinations=["ada@example.com"], RawMessage={"Data": composed}
        )
    direct_ses = time.perf_counter() - start
    mailer = SesMailer(AwsClients(**kwargs))
    start = time.perf_counter()
    for index in range(emails):
        await mailer.send(email(index))
    adapter_ses = time.perf_counter() - start
    await mailer.close()

    bare_sqs = await sqs_bare_rate(raw, count)
    with tempfile.TemporaryDirectory() as data_dir:
        adapter_sqs = await sqs_adapter_rate(Path(data_dir), url, count)
    await raw.close()

    mb = size / MIB
    print(
        f"S3  {mb:.0f} MiB put+get: adapter {2 * mb / adapter_s3:7.1f} MB/s, raw aiobotocore {2 * mb / direct_s3:7.1f} MB/s,"
        f" ratio {direct_s3 / adapter_s3:.2f}"
    )
    print(
        f"SES {emails} sends:      adapter {emails / adapter_ses:7.1f} /s,   raw aiobotocore {emails / direct_ses:7.1f} /s,"
        f"   ratio {direct_ses / adapter_ses:.2f}"
    )
    print(
        f"SQS {count} jobs:       adapter {adapter_sqs:7.1f} /s,   raw aiobotocore {bare_sqs:7.1f} /s,"
        f"   ratio {adapter_sqs / bare_sqs:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=32)
    parser.add_argument("--emails", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    port = free_port()
    url = f"http://{HOST}:{port}"
    argv = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
    with (
        tempfile.TemporaryDirectory() as workdir,
        running("moto", argv, Path(workdir), lambda: http_ok(f"{url}/moto-api/data.json")),
    ):
        asyncio.run(bench(url, args.size_mib * MIB, args.emails, args.jobs))


if __name__ == "__main__":
    main()
