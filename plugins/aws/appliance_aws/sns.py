"""``aws-sns``: the push port on Amazon SNS mobile push (an FCM/``GCM`` platform application).

A browser subscription's endpoint ends with its push service's registration token (for Chrome,
``https://fcm.googleapis.com/fcm/send/<token>``). The adapter registers that token once as an SNS
platform endpoint of ``APPLIANCE_AWS_SNS_PLATFORM_APPLICATION_ARN`` (``CreatePlatformEndpoint`` is
idempotent) and publishes each push to it, with the push's TTL. A disabled or deleted endpoint is
``gone`` (the appliance deletes the subscription), an invalid message ``rejected``, throttling and
outages ``PushUnavailable`` (retried later). Clients subscribe with the key of the FCM project behind
the platform application: ``APPLIANCE_AWS_SNS_VAPID_PUBLIC_KEY``, served by ``GET /v1/push/vapid-public-key``.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from appliance.core.context import BackendStatus
from appliance.notify import PushOutcome, PushTarget, PushUnavailable
from appliance_aws._aws import AWS_ERRORS, AwsClients, error_code, reason
from appliance_aws.health import aws_status

__all__ = ["SnsPusher", "token_of"]

_GONE = {"EndpointDisabled", "NotFound", "EndpointDisabledException", "NotFoundException"}
_REJECTED = {"InvalidParameter", "InvalidParameterValue", "InvalidParameterException"}


def token_of(endpoint: str) -> str:
    """The registration token of a push endpoint: its last path segment."""
    path = urlsplit(endpoint).path.rstrip("/")
    return path.rsplit("/", 1)[-1] or endpoint


class SnsPusher:
    """Delivers pushes through SNS platform endpoints; see the module docstring."""

    name = "aws-sns"

    def __init__(self, clients: AwsClients, application_arn: str, public_key: str = "") -> None:
        self.clients = clients
        self.application_arn = application_arn
        self._public_key = public_key
        self._endpoints: dict[str, str] = {}  # token -> endpoint ARN

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self.clients.close()

    def public_key(self) -> str:
        return self._public_key

    async def _endpoint_arn(self, sns: Any, token: str) -> str:
        arn = self._endpoints.get(token)
        if arn is None:
            answer = await sns.create_platform_endpoint(
                PlatformApplicationArn=self.application_arn, Token=token
            )
            arn = str(answer["EndpointArn"])
            self._endpoints[token] = arn
        return arn

    async def send(self, target: PushTarget, payload: bytes, ttl: int) -> PushOutcome:
        token = token_of(target.endpoint)
        text = payload.decode("utf-8", errors="replace")
        try:
            data: Any = json.loads(text)
        except ValueError:
            data = {"message": text}
        message = {"default": text, "GCM": json.dumps({"data": data, "time_to_live": ttl})}
        try:
            sns = await self.clients.client("sns")
            arn = await self._endpoint_arn(sns, token)
            await sns.publish(
                TargetArn=arn,
                Message=json.dumps(message),
                MessageStructure="json",
                MessageAttributes={"AWS.SNS.MOBILE.GCM.TTL": {"DataType": "String", "StringValue": str(ttl)}},
            )
        except AWS_ERRORS as exc:
            code = error_code(exc)
            if code in _GONE:
                self._endpoints.pop(token, None)
                return "gone"
            if code in _REJECTED:
                return "rejected"
            raise PushUnavailable(f"SNS ({self.clients.region}) is unavailable: {reason(exc)}") from exc
        return "delivered"

    async def health(self) -> BackendStatus:
        async def probe() -> str:
            sns = await self.clients.client("sns")
            await sns.get_platform_application_attributes(PlatformApplicationArn=self.application_arn)
            return f"SNS platform application {self.application_arn}"

        return await aws_status(
            "push",
            self.name,
            self.clients,
            probe,
            "check the AWS credentials, region and APPLIANCE_AWS_SNS_PLATFORM_APPLICATION_ARN",
        )
