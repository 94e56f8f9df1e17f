"""The ``webpush`` pusher: standard Web Push (RFC 8030) with VAPID (RFC 8292), through pywebpush.

The VAPID key pair is generated on first run and kept in the data dir (``vapid_private.pem``, mode
0600), so browser subscriptions made against its public key stay valid across restarts. Payloads are
encrypted for each subscription with ``aes128gcm`` (RFC 8291). A push service answering 404 or 410
means the subscription is gone for good: the caller removes it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Literal

import aiohttp
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from py_vapid import Vapid02, b64urlencode
from pywebpush import WebPushException, webpush_async

from appliance.config import ConfigError
from appliance.core.context import BackendStatus
from appliance.notify.messages import PushTarget, PushUnavailable

__all__ = ["VAPID_FILE", "WebPusher", "load_vapid"]

VAPID_FILE = "vapid_private.pem"
PushOutcome = Literal["delivered", "gone", "rejected"]


def load_vapid(data_dir: Path, configured: str = "") -> Vapid02:
    """The VAPID key: ``APPLIANCE_VAPID_PRIVATE_KEY`` when set (several nodes must share one), else read
    from ``data_dir``, or generated and saved there on first run."""
    if configured:
        text = configured.strip()
        try:
            if text.startswith("-----BEGIN"):
                return Vapid02.from_pem(text.encode())
            return Vapid02.from_string(text)
        except Exception as exc:
            raise ConfigError(
                "APPLIANCE_VAPID_PRIVATE_KEY must be a PEM EC private key or its base64url raw/DER form"
                f" ({type(exc).__name__})"
            ) from None
    path = data_dir / VAPID_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fresh = Vapid02()
        fresh.generate_keys()
        fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".vapid-")
        try:
            os.close(fd)
            os.chmod(tmp, 0o600)
            fresh.save_key(tmp)
            # link() fails if another process won the race: then its key is the one everybody uses.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    return Vapid02.from_file(private_key_file=str(path))


def public_key(vapid: Vapid02) -> str:
    """The application server key browsers pass to ``pushManager.subscribe`` (base64url, uncompressed point)."""
    raw = vapid.public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return str(b64urlencode(raw))


class WebPusher:
    """Encrypts and POSTs push messages to browser push services."""

    name = "webpush"

    def __init__(self, data_dir: Path, contact: str, timeout: float = 10.0, private_key: str = "") -> None:
        self._data_dir = data_dir
        self._private_key = private_key
        self._contact = contact if contact.startswith(("mailto:", "https:")) else f"mailto:{contact}"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._vapid: Vapid02 | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._vapid = load_vapid(self._data_dir, self._private_key)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def vapid(self) -> Vapid02:
        if self._vapid is None:
            self._vapid = load_vapid(self._data_dir, self._private_key)
        return self._vapid

    def public_key(self) -> str:
        return public_key(self.vapid)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def send(self, target: PushTarget, payload: bytes, ttl: int) -> PushOutcome:
        """Deliver ``payload`` to one subscription; :class:`PushUnavailable` if worth retrying later."""
        info = {"endpoint": target.endpoint, "keys": {"p256dh": target.p256dh, "auth": target.auth}}
        try:
            await webpush_async(
                subscription_info=info,
                data=payload.decode(),
                vapid_private_key=self.vapid,
                vapid_claims={"sub": self._contact},  # a fresh dict: pywebpush adds aud and exp to it
                content_encoding="aes128gcm",
                ttl=ttl,
                aiohttp_session=self._http(),
                timeout=self._timeout,
            )
        except WebPushException as exc:
            status = exc.status_code
            if status in (404, 410):
                return "gone"
            if status is not None and (status == 429 or status >= 500):
                raise PushUnavailable(f"push service answered {status}") from None
            return "rejected"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PushUnavailable(f"push service unreachable: {type(exc).__name__}: {exc}") from None
        return "delivered"

    async def health(self) -> BackendStatus:
        return BackendStatus(
            name="push",
            backend="webpush",
            mode="embedded",
            ok=self._vapid is not None,
            detail="VAPID key in the data dir" if self._vapid else "VAPID key not loaded yet",
        )
