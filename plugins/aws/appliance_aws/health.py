"""Health reports of the AWS adapters: reachability of each service and the identity in use."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal

from appliance.core.context import BackendStatus
from appliance_aws._aws import AWS_ERRORS, AwsClients, reason

__all__ = ["aws_status"]


async def aws_status(
    name: str, backend: str, clients: AwsClients, probe: Callable[[], Awaitable[str]], hint: str
) -> BackendStatus:
    """Run ``probe`` (a cheap call to the service, returning a detail) and ``sts:GetCallerIdentity``."""
    mode: Literal["server"] = "server"
    try:
        detail = await probe()
    except AWS_ERRORS as exc:
        return BackendStatus(
            name=name,
            backend=backend,
            mode=mode,
            ok=False,
            detail=f"{backend} is unreachable: {reason(exc)}; {hint}",
        )
    try:
        identity = await clients.identity()
    except AWS_ERRORS as exc:
        identity = f"unknown ({reason(exc)})"
    return BackendStatus(
        name=name,
        backend=backend,
        mode=mode,
        ok=True,
        detail=f"{detail}; region {clients.region}; identity {identity}",
    )
