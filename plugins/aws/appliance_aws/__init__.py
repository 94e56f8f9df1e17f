"""The appliance's AWS adapters, as a plugin: S3 storage, SQS jobs, SES mail, SNS push, EventBridge forwarding.

Installed, the plugin only offers the backends; configuration picks them, one port at a time::

    APPLIANCE_STORAGE_BACKEND=aws-s3
    APPLIANCE_JOBS_BACKEND=aws-sqs
    APPLIANCE_MAIL_BACKEND=aws-ses
    APPLIANCE_PUSH_BACKEND=aws-sns
    APPLIANCE_EVENTS_BACKEND=aws-eventbridge

Credentials, region and endpoint come from the standard AWS chain (``AWS_*`` variables, ``~/.aws``,
instance and container roles; ``AWS_ENDPOINT_URL`` points every client elsewhere, e.g. at moto).
What the adapters need beyond that is read from the environment when the backend is picked:

- ``APPLIANCE_AWS_S3_BUCKET`` (default: ``APPLIANCE_S3_BUCKET_PREFIX``), ``APPLIANCE_AWS_S3_SSE``
  (``AES256`` or ``aws:kms``), ``APPLIANCE_AWS_S3_KMS_KEY_ID``, ``APPLIANCE_AWS_S3_ADDRESSING``
  (``virtual``, the default on AWS, or ``path``);
- ``APPLIANCE_AWS_SQS_QUEUE_PREFIX`` (default ``appliance-``) and ``APPLIANCE_AWS_SQS_MAX_RECEIVES``
  (default 110, the redrive policy's ``maxReceiveCount``);
- ``APPLIANCE_AWS_SES_CONFIGURATION_SET`` (optional);
- ``APPLIANCE_AWS_SNS_PLATFORM_APPLICATION_ARN`` (required for ``aws-sns``) and
  ``APPLIANCE_AWS_SNS_VAPID_PUBLIC_KEY``;
- ``APPLIANCE_AWS_EVENTBRIDGE_BUS`` (default ``default``).

aiobotocore is imported only by the factories, so an installed but unused plugin costs nothing at start.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from appliance.config import ConfigError
from appliance.plugin import BackendSpec, hookimpl

if TYPE_CHECKING:
    from appliance_aws._aws import AwsClients

__all__ = ["appliance_backends"]

STORAGE, JOBS, MAIL, PUSH, EVENTS = "aws-s3", "aws-sqs", "aws-ses", "aws-sns", "aws-eventbridge"


def _env(name: str, default: str = "") -> str:
    return os.environ.get(f"APPLIANCE_AWS_{name}", default).strip()


def _clients(**kwargs: Any) -> AwsClients:
    from appliance_aws._aws import AwsClients

    return AwsClients(**kwargs)


def make_storage(ctx: Any) -> Any:
    from appliance_aws.s3 import S3BlobStore

    addressing = _env("S3_ADDRESSING") or None
    if addressing not in (None, "virtual", "path"):
        raise ConfigError(f"APPLIANCE_AWS_S3_ADDRESSING={addressing!r} must be virtual or path")
    bucket = _env("S3_BUCKET") or ctx.settings.s3_bucket_prefix
    try:
        return S3BlobStore(
            _clients(s3_addressing=addressing), bucket, sse=_env("S3_SSE"), kms_key_id=_env("S3_KMS_KEY_ID")
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def make_job_queue(ctx: Any) -> Any:
    from appliance_aws.sqs import MAX_RECEIVES, SqsQueue

    raw = _env("SQS_MAX_RECEIVES", str(MAX_RECEIVES))
    if not raw.isdigit():
        raise ConfigError(f"APPLIANCE_AWS_SQS_MAX_RECEIVES={raw!r} must be a number from 1 to 1000")
    prefix = _env("SQS_QUEUE_PREFIX", "appliance-")
    try:
        return SqsQueue(
            _clients(),
            ctx.db,
            prefix=prefix,
            retention_s=ctx.settings.job_retention_days * 86400,
            max_receives=int(raw),
        )
    except ValueError as exc:
        raise ConfigError(f"APPLIANCE_AWS_SQS_QUEUE_PREFIX={prefix!r} / MAX_RECEIVES={raw}: {exc}") from None


def make_mailer(ctx: Any) -> Any:
    from appliance_aws.ses import SesMailer

    return SesMailer(_clients(), configuration_set=_env("SES_CONFIGURATION_SET"))


def make_pusher(ctx: Any) -> Any:
    from appliance_aws.sns import SnsPusher

    arn = _env("SNS_PLATFORM_APPLICATION_ARN")
    if not arn:
        raise ConfigError(
            "APPLIANCE_PUSH_BACKEND=aws-sns needs APPLIANCE_AWS_SNS_PLATFORM_APPLICATION_ARN"
            " (the SNS platform application, FCM/GCM, that pushes go through)"
        )
    return SnsPusher(_clients(), arn, public_key=_env("SNS_VAPID_PUBLIC_KEY"))


def make_forwarder(ctx: Any) -> Any:
    from appliance_aws.eventbridge import EventBridgeForwarder

    return EventBridgeForwarder(_clients(), bus=_env("EVENTBRIDGE_BUS", "default") or "default")


@hookimpl
def appliance_backends() -> list[BackendSpec]:
    return [
        BackendSpec("storage", STORAGE, make_storage, "Amazon S3 (region, virtual-host addressing, SSE)"),
        BackendSpec("jobs", JOBS, make_job_queue, "Amazon SQS as the job transport (records stay in the DB)"),
        BackendSpec("mail", MAIL, make_mailer, "Amazon SES (SendRawEmail)"),
        BackendSpec("push", PUSH, make_pusher, "Amazon SNS mobile push (FCM platform application)"),
        BackendSpec("events", EVENTS, make_forwarder, "Forward every event to an Amazon EventBridge bus"),
    ]
