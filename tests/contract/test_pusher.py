"""The Pusher contract, on the ``webpush`` adapter, against a loopback push service that decrypts like a browser."""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from appliance.notify import PushTarget, PushUnavailable
from appliance.notify.webpush import VAPID_FILE, WebPusher
from tests.notify_peers import PushService, push_service
from tests.peers import HOST, free_port


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture
def service() -> Iterator[PushService]:
    with push_service() as running:
        yield running


@pytest.fixture
async def pusher(tmp_path: Path) -> AsyncIterator[WebPusher]:
    web = WebPusher(tmp_path, "ops@appliance.test", timeout=5)
    await web.start()
    yield web
    await web.close()


def target(subscription: dict[str, object]) -> PushTarget:
    keys = subscription["keys"]
    assert isinstance(keys, dict)
    return PushTarget(endpoint=str(subscription["endpoint"]), p256dh=keys["p256dh"], auth=keys["auth"])


def check_vapid(header: str, public_key: str, audience: str) -> dict[str, object]:
    """Verify the ``vapid t=<JWT>, k=<key>`` header as a push service does; return the JWT claims."""
    scheme, _, params = header.partition(" ")
    assert scheme == "vapid"
    fields = dict(p.strip().split("=", 1) for p in params.split(","))
    assert fields["k"] == public_key
    head, claims, signature = fields["t"].split(".")
    raw = _unb64(signature)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _unb64(public_key))
    key.verify(der, f"{head}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))  # raises if forged
    decoded: dict[str, object] = json.loads(_unb64(claims))
    assert decoded["aud"] == audience and decoded["sub"] == "mailto:ops@appliance.test"
    return decoded


async def test_delivers_an_aes128gcm_payload_the_browser_can_decrypt(
    pusher: WebPusher, service: PushService
) -> None:
    sub = service.subscribe("alice")
    outcome = await pusher.send(target(sub), b'{"title":"Hi","body":"there"}', ttl=60)
    assert outcome == "delivered"
    (received,) = service.wait_for(1)
    assert received.headers["content-encoding"] == "aes128gcm"
    assert received.headers["ttl"] == "60"
    assert service.decrypt(received) == b'{"title":"Hi","body":"there"}'
    check_vapid(received.headers["authorization"], pusher.public_key(), f"http://{HOST}:{service.port}")


async def test_gone_subscriptions_are_reported_gone(pusher: WebPusher, service: PushService) -> None:
    sub = service.subscribe("gone")
    assert await pusher.send(target(sub), b"{}", ttl=0) == "gone"
    service.status_for["/push/moved"] = 404
    assert await pusher.send(target(service.subscribe("moved")), b"{}", ttl=0) == "gone"


async def test_refusals_and_outages(pusher: WebPusher, service: PushService) -> None:
    service.status_for["/push/bad"] = 400
    assert await pusher.send(target(service.subscribe("bad")), b"{}", ttl=0) == "rejected"
    for status in (429, 503):
        service.status_for["/push/busy"] = status
        with pytest.raises(PushUnavailable, match=str(status)):
            await pusher.send(target(service.subscribe("busy")), b"{}", ttl=0)
    down = service.subscribe("x")
    down["endpoint"] = f"http://{HOST}:{free_port()}/push/x"
    with pytest.raises(PushUnavailable, match="unreachable"):
        await pusher.send(target(down), b"{}", ttl=0)


async def test_vapid_key_is_made_once_and_kept_private(tmp_path: Path, pusher: WebPusher) -> None:
    key_file = tmp_path / VAPID_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    again = WebPusher(tmp_path, "ops@appliance.test")
    await again.start()
    assert again.public_key() == pusher.public_key()
    assert len(_unb64(pusher.public_key())) == 65  # an uncompressed P-256 point
    await again.close()
    assert (await pusher.health()).ok
