"""One aiobotocore session and its clients, shared by the adapters of one appliance.

Credentials come from the standard AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE`` and ``~/.aws``, container and instance roles); the region from ``AWS_REGION`` or
``AWS_DEFAULT_REGION``; the endpoint from botocore's own ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_<SERVICE>``), which is how the tests point everything at moto. Explicit keyword
arguments (``endpoint_url``, ``aws_access_key_id``...) override the chain, for tests and tools.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

__all__ = ["AwsClients", "error_code", "reason"]

DEFAULT_REGION = "us-east-1"
# Bounded timeouts and few retries: "AWS is unreachable" must become a prompt 503, not a long hang.
_CONFIG = AioConfig(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2, "mode": "standard"})

AWS_ERRORS = (BotoCoreError, ClientError, OSError, asyncio.TimeoutError)


def error_code(exc: BaseException) -> str:
    """The AWS error code of a ``ClientError`` (``NoSuchKey``, ``Throttling``...), else ``""``."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def reason(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip(": ")
    return str(exc) or type(exc).__name__


class AwsClients:
    """Lazily created aiobotocore clients, one per service, closed together."""

    def __init__(
        self,
        region: str | None = None,
        config: AioConfig | None = None,
        s3_addressing: str | None = None,
        **client_kwargs: Any,
    ) -> None:
        self.region = (
            region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
        )
        self._config = config or _CONFIG
        self._kwargs = client_kwargs
        # Virtual-host addressing on AWS (path style is deprecated there); path style when the endpoint
        # is overridden (moto, a local gateway), where bucket host names do not resolve.
        self.s3_addressing = s3_addressing or ("path" if self.endpoint_overridden("s3") else "virtual")
        self._session = get_session()
        # Clients are bound to the event loop they were made on: one set per loop (the app's, a CLI's).
        self._loops: dict[asyncio.AbstractEventLoop, _LoopClients] = {}

    async def client(self, service: str) -> Any:
        """The client for ``service`` (``s3``, ``ses``, ``sns``, ``events``, ``sts``), created on first use."""
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _LoopClients()
        existing = state.clients.get(service)
        if existing is not None:
            return existing
        async with state.lock:
            if service not in state.clients:
                config = self._config
                if service == "s3":
                    config = config.merge(AioConfig(s3={"addressing_style": self.s3_addressing}))
                creator = self._session.create_client(
                    service, region_name=self.region, config=config, **self._kwargs
                )
                state.clients[service] = await state.stack.enter_async_context(creator)
            return state.clients[service]

    def endpoint_overridden(self, service: str) -> bool:
        """Whether ``service`` is reached somewhere else than AWS (an argument or ``AWS_ENDPOINT_URL*``)."""
        return bool(
            self._kwargs.get("endpoint_url")
            or os.environ.get("AWS_ENDPOINT_URL")
            or os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}")
        )

    async def identity(self) -> str:
        """The caller identity in use (``sts:GetCallerIdentity``): its ARN and account."""
        sts = await self.client("sts")
        answer = await sts.get_caller_identity()
        return f"{answer.get('Arn', '?')} (account {answer.get('Account', '?')})"

    async def close(self) -> None:
        """Close the clients of the running loop; forget those of loops that are gone."""
        loop = asyncio.get_running_loop()
        state = self._loops.pop(loop, None)
        for other in [other for other in self._loops if other.is_closed()]:
            del self._loops[other]
        if state is not None:
            await state.stack.aclose()


class _LoopClients:
    def __init__(self) -> None:
        self.clients: dict[str, Any] = {}
        self.stack = contextlib.AsyncExitStack()
        self.lock = asyncio.Lock()
