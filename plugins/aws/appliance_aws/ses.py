"""``aws-ses``: the mail port on Amazon SES (``SendRawEmail``).

The message is composed exactly as the SMTP adapter sends it (``multipart/alternative``, the appliance's
``Message-ID`` and ``X-Appliance-Email-Id`` headers) and handed to SES raw. SES may replace the
``Message-ID`` header with its own on the way out; ``X-Appliance-Email-Id`` stays. The sender
(``APPLIANCE_MAIL_FROM``) must be a verified SES identity. ``APPLIANCE_AWS_SES_CONFIGURATION_SET``
optionally names a configuration set (event publishing, dedicated IPs).
"""

from __future__ import annotations

from typing import Any, Literal

from appliance.core.context import BackendStatus
from appliance.notify import MailerUnavailable, MailRejected, OutgoingEmail
from appliance.notify.messages import compose
from appliance_aws._aws import AWS_ERRORS, AwsClients, error_code, reason
from appliance_aws.health import aws_status

__all__ = ["SesMailer"]

# SES refuses these for good: retrying the same message cannot help.
_REJECTED = {
    "MessageRejected",
    "MailFromDomainNotVerified",
    "MailFromDomainNotVerifiedException",
    "InvalidParameterValue",
    "ConfigurationSetDoesNotExist",
    "AccountSendingPausedException",
}


class SesMailer:
    """Sends composed email through SES; see the module docstring."""

    name = "aws-ses"
    mode: Literal["embedded", "server"] = "server"
    delivered_status: Literal["sent", "captured"] = "sent"

    def __init__(self, clients: AwsClients, configuration_set: str = "") -> None:
        self.clients = clients
        self.configuration_set = configuration_set

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self.clients.close()

    async def send(self, message: OutgoingEmail) -> str:
        composed = compose(message)
        request: dict[str, Any] = {
            "Source": message.sender,
            "Destinations": list(message.to),
            "RawMessage": {"Data": composed.data},
        }
        if self.configuration_set:
            request["ConfigurationSetName"] = self.configuration_set
        try:
            ses = await self.clients.client("ses")
            await ses.send_raw_email(**request)
        except AWS_ERRORS as exc:
            if error_code(exc) in _REJECTED:
                raise MailRejected(f"SES refused the message: {reason(exc)}") from exc
            raise MailerUnavailable(f"SES ({self.clients.region}) is unavailable: {reason(exc)}") from exc
        return composed.message_id

    async def health(self) -> BackendStatus:
        async def probe() -> str:
            ses = await self.clients.client("ses")
            quota = await ses.get_send_quota()
            sent, limit = quota.get("SentLast24Hours", 0), quota.get("Max24HourSend", 0)
            return f"SES at {ses.meta.endpoint_url}: {sent:g} of {limit:g} sent in the last 24 h"

        return await aws_status(
            "mail", self.name, self.clients, probe, "check the AWS credentials and region"
        )
