"""One real round-trip per peer: proves tests/peers.py starts servers that actually work."""

from __future__ import annotations

import io
from email.message import EmailMessage

import aiosmtplib
import httpx
import redis.asyncio as aioredis
from minio import Minio
from playwright.async_api import Browser as AsyncBrowser
from playwright.sync_api import Browser

from tests.peers import MinioPeer, RedisPeer, SmtpPeer, StripePeer


async def test_redis_ping_set_get(redis_peer: RedisPeer) -> None:
    client = aioredis.Redis.from_url(redis_peer.url)
    try:
        assert await client.ping()
        await client.set("peer-test", "works")
        assert await client.get("peer-test") == b"works"
    finally:
        await client.aclose()


def test_minio_bucket_put_get(minio_peer: MinioPeer) -> None:
    client = Minio(
        minio_peer.endpoint, access_key=minio_peer.access_key, secret_key=minio_peer.secret_key, secure=False
    )
    client.make_bucket("peer-test")
    body = b"hello from the appliance tests"
    client.put_object("peer-test", "greeting.txt", io.BytesIO(body), length=len(body))
    resp = client.get_object("peer-test", "greeting.txt")
    try:
        assert resp.read() == body
    finally:
        resp.close()
        resp.release_conn()


def test_stripe_mock_lists_customers(stripe_peer: StripePeer) -> None:
    # trust_env=False: a developer's HTTP(S)_PROXY must not intercept loopback calls.
    with httpx.Client(base_url=stripe_peer.url, trust_env=False) as client:
        resp = client.get("/v1/customers", headers={"Authorization": f"Bearer {stripe_peer.api_key}"})
    assert resp.status_code == 200
    assert resp.json()["object"] == "list"


async def test_smtp_receives_mail(smtp_peer: SmtpPeer) -> None:
    smtp_peer.clear()
    msg = EmailMessage()
    msg["From"] = "sender@example.test"
    msg["To"] = "rcpt@example.test"
    msg["Subject"] = "peer test"
    msg.set_content("hello")
    await aiosmtplib.send(msg, hostname=smtp_peer.host, port=smtp_peer.port)
    [mail] = smtp_peer.wait_for(1)
    assert mail.mail_from == "sender@example.test"
    assert mail.rcpt_tos == ["rcpt@example.test"]
    assert b"Subject: peer test" in mail.data


def test_browser_reads_h1(browser: Browser) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto("data:text/html,<h1>hi</h1>")
        assert page.locator("h1").inner_text() == "hi"
    finally:
        context.close()


async def test_async_browser_reads_h1(async_browser: AsyncBrowser) -> None:
    context = await async_browser.new_context()
    try:
        page = await context.new_page()
        await page.goto("data:text/html,<h1>hi</h1>")
        assert await page.locator("h1").inner_text() == "hi"
    finally:
        await context.close()
