"""API.md "Notifications": templates, email (capture and SMTP), Web Push, as scenario tables.

Delivery goes through the job queue; the app runs without a background worker and the tests drain
the queue themselves (``deliver``), so nothing races them and nothing waits on a clock.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from appliance.app import create_app
from appliance.events import EventService
from appliance.jobs import JobService
from tests.api.test_core import assert_problem
from tests.conftest import ROOT, MakeTenant, make_settings
from tests.notify_peers import PushService, parse_mail, push_service, smtp_server
from tests.peers import SmtpPeer

Client = AsyncTestClient[Litestar]

WELCOME = {
    "subject": "Welcome, {{ name }}!",
    "html": "<h1>Hello {{ name }}</h1><p>Your code: <b>{{ code }}</b></p>",
    "text": "Hello {{ name }}\nYour code: {{ code }}\n",
}


@pytest.fixture
def settings(tmp_path: Path) -> Any:
    # No background worker: tests drain the queue, so a delivery happens exactly when a test says.
    return make_settings(tmp_path / "data", worker=False, mail_retry_s=0.1, mail_max_attempts=3)


async def deliver(app: Litestar) -> int:
    jobs: JobService = app.state.ctx.services["jobs"]
    return await jobs.drain()


async def wait_status(
    client: Client, app: Litestar, headers: dict[str, str], email_id: str, *wanted: str
) -> Any:
    """Drain the queue until the email reaches one of ``wanted`` (retries may be scheduled a moment ahead)."""
    deadline = time.monotonic() + 15
    while True:
        await deliver(app)
        record = (await client.get(f"/v1/email/{email_id}", headers=headers)).json()
        if record["status"] in wanted:
            return record
        assert time.monotonic() < deadline, record
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------ templates ---


async def test_template_lifecycle(client: Client, make_tenant: MakeTenant) -> None:
    headers = await make_tenant("acme", ("notify",))
    created = await client.put("/v1/templates/welcome", json=WELCOME, headers=headers)
    assert created.status_code == 201 and created.json()["subject"] == WELCOME["subject"]
    replaced = await client.put("/v1/templates/welcome", json={**WELCOME, "text": "v2"}, headers=headers)
    assert replaced.status_code == 200 and replaced.json()["created_at"] == created.json()["created_at"]
    assert (await client.get("/v1/templates/welcome", headers=headers)).json()["text"] == "v2"
    listed = (await client.get("/v1/templates", headers=headers)).json()
    assert [t["name"] for t in listed["items"]] == ["welcome"] and listed["next_cursor"] is None
    assert (await client.delete("/v1/templates/welcome", headers=headers)).status_code == 204
    assert_problem(await client.get("/v1/templates/welcome", headers=headers), 404)
    assert_problem(await client.delete("/v1/templates/welcome", headers=headers), 404)


BAD_TEMPLATES = [  # (name, body, status, text in the detail)
    ("broken", {"subject": "Hi {{ name", "text": "x"}, 422, "subject does not parse"),
    ("broken", {"subject": "Hi", "html": "{% for x in y %}", "text": "x"}, 422, "html does not parse"),
    ("broken", {"subject": "Hi", "text": "{{ a b }}"}, 422, "text does not parse (line 1)"),
    ("empty", {"subject": "Hi", "html": " ", "text": ""}, 422, "html or a text part"),
    ("nosubject", {"html": "<p>x</p>"}, 422, "subject"),
    ("extra", {"subject": "Hi", "text": "x", "css": "y"}, 422, "css"),
    ("bad name!", {"subject": "Hi", "text": "x"}, 422, "name"),
    ("big", {"subject": "Hi", "text": "x" * (256 * 1024 + 1)}, 422, "longer than"),
]


async def test_bad_templates_are_refused_at_save_time(client: Client) -> None:
    for name, body, status, detail in BAD_TEMPLATES:
        response = await client.put(f"/v1/templates/{name}", json=body, headers=ROOT)
        problem = assert_problem(response, status)
        assert detail in problem["detail"], (name, body, problem)
    assert (await client.get("/v1/templates", headers=ROOT)).json()["items"] == []


# ---------------------------------------------------------------- email input ---


BAD_EMAILS = [  # (body, text in the 422's detail)
    ({"to": "ada@example.com\r\nBcc: eve@example.com", "subject": "x", "text": "t"}, "line break"),
    ({"to": "ada@example.com", "subject": "Hi\r\nBcc: eve@example.com", "text": "t"}, "line break"),
    ({"to": "ada@example.com", "subject": "Hi\nX-Evil: 1", "text": "t"}, "line break"),
    ({"to": "ada@example.com", "subject": "bell\x07", "text": "t"}, "control character"),
    ({"to": "not-an-address", "subject": "x", "text": "t"}, "not a valid email address"),
    ({"to": "Ada <ada@example.com>", "subject": "x", "text": "t"}, "not a valid email address"),
    ({"to": ["ok@example.com", "bad@@example.com"], "subject": "x", "text": "t"}, "bad@@example.com"),
    ({"to": "ada@example.com", "subject": "x"}, "subject with an html and/or a text body"),
    ({"to": "ada@example.com", "text": "t"}, "subject with an html"),
    ({"to": "ada@example.com", "template": "welcome", "subject": "x"}, "not both"),
    ({"to": "ada@example.com", "template": "missing"}, "does not exist"),
    ({"to": "ada@example.com", "template": "welcome", "data": {"name": "Ada"}}, "'code' is undefined"),
    ({"to": [], "subject": "x", "text": "t"}, "to"),
    ({"to": "ada@example.com", "subject": "x", "text": "t", "bcc": "eve@example.com"}, "bcc"),
]


async def test_bad_email_requests_are_422_and_nothing_is_queued(client: Client, app: Litestar) -> None:
    await client.put("/v1/templates/welcome", json=WELCOME, headers=ROOT)
    for body, detail in BAD_EMAILS:
        problem = assert_problem(await client.post("/v1/email", json=body, headers=ROOT), 422)
        assert detail in problem["detail"], (body, problem)
    assert await deliver(app) == 0


ESCAPES = [  # templates that parse, and that the sandbox must stop when they run
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ self._TemplateReference__context }}",
    "{{ name.__class__.__base__.__subclasses__() }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ 'x' * 10000000000 }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ name|center(99999999999) }}",
    "{{ lipsum(100000) }}",
]


async def test_sandbox_escapes_and_bombs_render_nothing(client: Client, app: Litestar) -> None:
    for source in ESCAPES:
        saved = await client.put("/v1/templates/evil", json={"subject": "x", "html": source}, headers=ROOT)
        assert saved.status_code in (200, 201), source
        body = {"to": "ada@example.com", "template": "evil", "data": {"name": "n"}}
        problem = assert_problem(await client.post("/v1/email", json=body, headers=ROOT), 422)
        assert "uid=" not in problem["detail"] and "<class" not in problem["detail"], source
    assert await deliver(app) == 0


# ------------------------------------------------------------- capture mode ---


async def test_capture_mode_end_to_end(client: Client, app: Litestar, make_tenant: MakeTenant) -> None:
    headers = await make_tenant("acme", ("notify",))
    await client.put("/v1/templates/welcome", json=WELCOME, headers=headers)
    data = {"name": "<script>alert(1)</script>", "code": "A&B"}
    accepted = await client.post(
        "/v1/email", json={"to": "ada@example.com", "template": "welcome", "data": data}, headers=headers
    )
    assert accepted.status_code == 202 and accepted.json()["status"] == "queued"
    email_id = accepted.json()["id"]
    queued = (await client.get(f"/v1/email/{email_id}", headers=headers)).json()
    assert queued["status"] == "queued" and queued["attempts"] == 0
    assert await deliver(app) == 1
    record = (await client.get(f"/v1/email/{email_id}", headers=headers)).json()
    assert record["status"] == "captured" and record["attempts"] == 1 and record["sent_at"] is not None
    assert record["subject"] == "Welcome, <script>alert(1)</script>!"  # a subject is not HTML
    listed = (await client.get("/v1/email", params={"to": "ADA@example.com"}, headers=headers)).json()
    (mail,) = listed["items"]
    assert mail["id"] == email_id and mail["to"] == ["ada@example.com"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in mail["html"] and "<script>" not in mail["html"]
    assert "A&amp;B" in mail["html"]
    assert mail["text"] == "Hello <script>alert(1)</script>\nYour code: A&B\n"
    assert parse_mail(mail["mime"].encode()).get_content_type() == "multipart/alternative"
    assert (await client.get("/v1/email", params={"to": "bob@example.com"}, headers=headers)).json()[
        "items"
    ] == []


async def test_literal_email_and_idempotency_key(client: Client, app: Litestar) -> None:
    body = {"to": ["a@example.com", "b@example.com"], "subject": "Plain", "html": "<p>hi</p>"}
    key = {**ROOT, "Idempotency-Key": "send-1"}
    first = await client.post("/v1/email", json=body, headers=key)
    again = await client.post("/v1/email", json=body, headers=key)
    assert first.status_code == again.status_code == 202 and first.json() == again.json()
    assert_problem(await client.post("/v1/email", json={**body, "subject": "Other"}, headers=key), 422)
    assert await deliver(app) == 1
    (mail,) = (await client.get("/v1/email", headers=ROOT)).json()["items"]
    assert mail["text"] == "hi\n" and mail["to"] == ["a@example.com", "b@example.com"]


async def test_capture_listing_paginates_newest_first(client: Client, app: Litestar) -> None:
    for index in range(5):  # one at a time: concurrent deliveries may capture in any order
        body = {"to": "ada@example.com", "subject": f"n{index}", "text": "t"}
        assert (await client.post("/v1/email", json=body, headers=ROOT)).status_code == 202
        await deliver(app)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/email", params=params, headers=ROOT)).json()
        seen += [m["subject"] for m in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    assert seen == ["n4", "n3", "n2", "n1", "n0"]


async def test_bulk_is_paced_and_all_delivered(client: Client, app: Litestar, tmp_path: Path) -> None:
    messages = [{"to": f"user{i}@example.com", "subject": f"bulk {i}", "text": "t"} for i in range(6)]
    keyed = {**ROOT, "Idempotency-Key": "bulk-1"}
    accepted = await client.post("/v1/email:bulk", json=messages, headers=keyed)
    assert accepted.status_code == 202, accepted.text
    assert (await client.post("/v1/email:bulk", json=messages, headers=keyed)).json() == accepted.json()
    ids, rate = accepted.json()["ids"], accepted.json()["rate_per_s"]
    assert len(ids) == 6 and rate == 20.0  # the default APPLIANCE_MAIL_BULK_RATE
    for email_id in ids:
        await wait_status(client, app, ROOT, email_id, "captured")
    captured = (await client.get("/v1/email", headers=ROOT)).json()["items"]
    assert len(captured) == 6  # the keyed repeat queued nothing
    times = sorted(m["captured_at"] for m in captured)
    # Six messages at 20/s span at least 5/20 s: the later ones waited their turn. (The slack covers a
    # late pickup of the first one on a busy machine; unpaced, the span would be near 0.)
    assert times[-1] - times[0] >= 5 / 20 - 0.05


async def test_bulk_with_one_bad_message_queues_nothing(client: Client, app: Litestar) -> None:
    messages = [
        {"to": "ok@example.com", "subject": "x", "text": "t"},
        {"to": "bad", "subject": "x", "text": "t"},
    ]
    problem = assert_problem(await client.post("/v1/email:bulk", json=messages, headers=ROOT), 422)
    assert problem["detail"].startswith("message 1:")
    assert_problem(await client.post("/v1/email:bulk", json=[], headers=ROOT), 422)
    assert await deliver(app) == 0


# ---------------------------------------------------------------------- SMTP ---


@pytest.fixture
async def smtp_app(tmp_path: Path, smtp_peer: SmtpPeer) -> AsyncIterator[tuple[Client, Litestar]]:
    smtp_peer.clear()
    settings = make_settings(
        tmp_path / "smtp", worker=False, smtp_url=smtp_peer.url, mail_from="noreply@acme.test"
    )
    app = create_app(settings)
    async with AsyncTestClient(app, base_url="http://appliance.test") as client:
        yield client, app


async def test_smtp_delivers_rendered_multipart_mime(
    smtp_app: tuple[Client, Litestar], smtp_peer: SmtpPeer
) -> None:
    client, app = smtp_app
    await client.put("/v1/templates/welcome", json=WELCOME, headers=ROOT)
    data = {"name": 'Ada "<b>"', "code": "<i>42</i>"}
    body = {"to": ["ada@example.com", "bob@example.com"], "template": "welcome", "data": data}
    email_id = (await client.post("/v1/email", json=body, headers=ROOT)).json()["id"]
    record = await wait_status(client, app, ROOT, email_id, "sent")
    assert record["attempts"] == 1 and record["message_id"]
    (mail,) = await asyncio.to_thread(smtp_peer.wait_for, 1)
    assert mail.mail_from == "noreply@acme.test"
    assert sorted(mail.rcpt_tos) == ["ada@example.com", "bob@example.com"]
    mime = parse_mail(mail.data)
    assert mime["Subject"] == 'Welcome, Ada "<b>"!' and mime["Message-ID"] == record["message_id"]
    assert mime.get_content_type() == "multipart/alternative"
    html = mime.get_body(preferencelist=("html",))
    text = mime.get_body(preferencelist=("plain",))
    assert html is not None and text is not None
    assert (
        "Hello Ada &#34;&lt;b&gt;&#34;" in html.get_content()
        and "&lt;i&gt;42&lt;/i&gt;" in html.get_content()
    )
    assert "Your code: <i>42</i>" in text.get_content()
    assert_problem(
        await client.get("/v1/email", headers=ROOT), 503
    )  # no capture listing when sending for real


async def test_smtp_down_then_up_is_delivered_once(tmp_path: Path) -> None:
    with smtp_server(start=False) as server:
        settings = make_settings(
            tmp_path / "d",
            worker=False,
            smtp_url=f"smtp://127.0.0.1:{server.port}?timeout=3",
            mail_retry_s=0.2,
        )
        app = create_app(settings)
        async with AsyncTestClient(app, base_url="http://appliance.test") as client:
            body = {"to": "ada@example.com", "subject": "Patience", "text": "t"}
            email_id = (await client.post("/v1/email", json=body, headers=ROOT)).json()["id"]
            await deliver(app)  # SMTP is down: attempt 1 fails, a retry is scheduled
            record = (await client.get(f"/v1/email/{email_id}", headers=ROOT)).json()
            assert record["status"] == "queued" and record["attempts"] == 1
            assert "unreachable" in record["error"]
            ready = (await client.get("/readyz")).json()
            assert ready["status"] == 503 and "mail" in ready["detail"]
            server.start()
            record = await wait_status(client, app, ROOT, email_id, "sent")
            assert record["attempts"] == 2 and record["error"] is None
            assert len(server.inbox.wait_for(1)) == 1
            await deliver(app)
            assert len(server.inbox.messages) == 1  # delivered once


async def test_smtp_down_past_the_limit_is_dead(tmp_path: Path) -> None:
    with smtp_server(start=False) as server:
        settings = make_settings(
            tmp_path / "d",
            worker=False,
            smtp_url=f"smtp://127.0.0.1:{server.port}",
            mail_max_attempts=3,
            mail_retry_s=0,
        )
        app = create_app(settings)
        async with AsyncTestClient(app, base_url="http://appliance.test") as client:
            body = {"to": "ada@example.com", "subject": "Never", "text": "t"}
            email_id = (await client.post("/v1/email", json=body, headers=ROOT)).json()["id"]
            record = await wait_status(client, app, ROOT, email_id, "dead")
            assert record["attempts"] == 3 and "unreachable" in record["error"]
            dead = (await client.get("/v1/queues/email/dead", headers=ROOT)).json()["items"]
            assert [job["id"] for job in dead] == [email_id]
            # Retried from the dead-letter list once the server is back: delivered.
            server.start()
            retried = await client.post(f"/v1/queues/email/dead/{email_id}/retry", headers=ROOT)
            assert retried.status_code in (200, 201, 202), retried.text
            record = await wait_status(client, app, ROOT, email_id, "sent")
            assert record["attempts"] == 4 and record["error"] is None
            assert len(server.inbox.wait_for(1)) == 1


async def test_smtp_refusal_fails_without_retrying(tmp_path: Path) -> None:
    with smtp_server(refuse=("nobody@example.com",)) as server:
        settings = make_settings(tmp_path / "d", worker=False, smtp_url=f"smtp://127.0.0.1:{server.port}")
        app = create_app(settings)
        async with AsyncTestClient(app, base_url="http://appliance.test") as client:
            body = {"to": "nobody@example.com", "subject": "Bounce", "text": "t"}
            email_id = (await client.post("/v1/email", json=body, headers=ROOT)).json()["id"]
            record = await wait_status(client, app, ROOT, email_id, "failed")
            assert record["attempts"] == 1 and "550" in record["error"]


# ------------------------------------------------------------------ Web Push ---


@pytest.fixture
def pushes() -> Iterator[PushService]:
    with push_service() as service:
        yield service


async def test_web_push_end_to_end(client: Client, app: Litestar, pushes: PushService) -> None:
    key = (await client.get("/v1/push/vapid-public-key", headers=ROOT)).json()["key"]
    assert len(key) == 87
    alice = pushes.subscribe("alice")
    gone = pushes.subscribe("gone")
    for sub in (alice, gone):
        created = await client.post(
            "/v1/push/subscriptions", json={"user_id": "u1", "subscription": sub}, headers=ROOT
        )
        assert created.status_code == 201, created.text
    again = await client.post(
        "/v1/push/subscriptions", json={"user_id": "u1", "subscription": alice}, headers=ROOT
    )
    assert again.status_code == 200  # the same endpoint is one subscription
    body = {"user_id": "u1", "title": "Hello", "body": "World", "data": {"url": "/inbox"}}
    keyed = {**ROOT, "Idempotency-Key": "push-1"}
    accepted = await client.post("/v1/push", json=body, headers=keyed)
    assert accepted.status_code == 202 and accepted.json()["subscriptions"] == 2
    assert (await client.post("/v1/push", json=body, headers=keyed)).json() == accepted.json()
    assert await deliver(app) == 1
    record = (await client.get(f"/v1/push/{accepted.json()['id']}", headers=ROOT)).json()
    assert (record["status"], record["delivered"], record["removed"], record["attempts"]) == ("sent", 1, 1, 1)
    by_path = {r.path: r for r in pushes.wait_for(2)}
    delivered = by_path["/push/alice"]
    assert json.loads(pushes.decrypt(delivered)) == {
        "title": "Hello",
        "body": "World",
        "data": {"url": "/inbox"},
    }
    assert f"k={key}" in delivered.headers["authorization"]
    # The 410 endpoint was dropped after one try: the next push does not go there.
    subs = (await client.get("/v1/push/subscriptions", params={"user_id": "u1"}, headers=ROOT)).json()[
        "items"
    ]
    assert [s["endpoint"] for s in subs] == [alice["endpoint"]]
    second = (await client.post("/v1/push", json=body, headers=ROOT)).json()
    assert second["subscriptions"] == 1
    await deliver(app)
    assert [r.path for r in pushes.received].count("/push/gone") == 1


async def test_push_to_a_topic_and_retry_of_the_failed_subscription_only(
    client: Client, app: Litestar, pushes: PushService
) -> None:
    for name, topics in (("a", ["news"]), ("b", ["news", "sport"]), ("c", ["sport"])):
        sub = {"user_id": name, "subscription": pushes.subscribe(name), "topics": topics}
        assert (await client.post("/v1/push/subscriptions", json=sub, headers=ROOT)).status_code == 201
    pushes.status_for["/push/b"] = 503
    push_id = (await client.post("/v1/push", json={"topic": "news", "title": "t"}, headers=ROOT)).json()["id"]
    await deliver(app)
    record = (await client.get(f"/v1/push/{push_id}", headers=ROOT)).json()
    assert record["delivered"] == 1 and "503" in record["error"]
    pushes.status_for["/push/b"] = 201
    deadline = time.monotonic() + 10
    while record["status"] != "sent":
        assert time.monotonic() < deadline, record
        await deliver(app)
        record = (await client.get(f"/v1/push/{push_id}", headers=ROOT)).json()
    assert record["delivered"] == 2
    assert sorted(r.path for r in pushes.received) == ["/push/a", "/push/b", "/push/b"]


BAD_PUSHES = [  # (body, status)
    ({"title": "t"}, 422),
    ({"user_id": "u", "topic": "x", "title": "t"}, 422),
    ({"user_id": "u", "title": ""}, 422),
    ({"user_id": "u", "title": "t", "data": {"blob": "x" * 4000}}, 413),
]


async def test_bad_push_requests(client: Client) -> None:
    for body, status in BAD_PUSHES:
        assert_problem(await client.post("/v1/push", json=body, headers=ROOT), status)


BAD_SUBSCRIPTIONS = [  # (endpoint, keys or None for good ones, status)
    ("http://push.example.com/x", None, 422),
    ("ftp://push.example.com/x", None, 422),
    ("https://push.example.com/x", {"p256dh": "short", "auth": "AAAAAAAAAAAAAAAAAAAAAA"}, 422),
    ("https://push.example.com/x", {"p256dh": "A" * 87}, 422),
]


async def test_bad_subscriptions(client: Client, pushes: PushService) -> None:
    for endpoint, keys, status in BAD_SUBSCRIPTIONS:
        sub = pushes.subscribe("x")
        sub["endpoint"] = endpoint
        if keys is not None:
            sub["keys"] = keys
        body = {"user_id": "u", "subscription": sub}
        assert_problem(await client.post("/v1/push/subscriptions", json=body, headers=ROOT), status)
    assert (await client.get("/v1/push/subscriptions", headers=ROOT)).json()["items"] == []


# ---------------------------------------------------------- email rule target ---


async def events_drain(app: Litestar) -> int:
    events: EventService = app.state.ctx.services["events"]
    return await events.drain()


async def test_email_rule_target_sends_from_the_event(client: Client, app: Litestar) -> None:
    template = {
        "subject": "Order {{ payload.order }} shipped",
        "text": "Hi {{ payload.customer.name }} ({{ type }})",
    }
    await client.put("/v1/templates/shipped", json=template, headers=ROOT)
    rule = {
        "name": "shipping mail",
        "pattern": {"type": ["order.shipped"]},
        "targets": [{"kind": "email", "template": "shipped", "to": "$.payload.customer.email"}],
    }
    assert (await client.post("/v1/rules", json=rule, headers=ROOT)).status_code == 201
    event = {
        "source": "shop",
        "type": "order.shipped",
        "payload": {"order": 42, "customer": {"name": "<Ada>", "email": "ada@example.com"}},
    }
    assert (await client.post("/v1/events", json=event, headers=ROOT)).status_code == 202
    await events_drain(app)
    (mail,) = (await client.get("/v1/email", params={"to": "ada@example.com"}, headers=ROOT)).json()["items"]
    assert mail["subject"] == "Order 42 shipped" and mail["text"] == "Hi <Ada> (order.shipped)"
    # An event without the address: the rule's delivery fails for good, nothing is sent.
    await client.post("/v1/events", json={**event, "payload": {"order": 43}}, headers=ROOT)
    await events_drain(app)
    assert len((await client.get("/v1/email", headers=ROOT)).json()["items"]) == 1


BAD_TARGETS = [  # (target, text in the 422's detail)
    ({"kind": "email", "template": "t", "to": "$.payload..email"}, "JSON path"),
    ({"kind": "email", "template": "t", "to": "not an address"}, "not a valid email address"),
    ({"kind": "email", "template": "bad name", "to": "a@example.com"}, "email target"),
    ({"kind": "email", "to": "a@example.com"}, "template"),
    ({"kind": "email", "template": "t", "to": "a@example.com", "cc": "b@example.com"}, "cc"),
]


async def test_bad_email_targets_are_refused(client: Client) -> None:
    for target, detail in BAD_TARGETS:
        rule = {"name": "r", "pattern": {"type": ["x"]}, "targets": [target]}
        problem = assert_problem(await client.post("/v1/rules", json=rule, headers=ROOT), 422)
        assert detail in problem["detail"], (target, problem)


async def test_the_background_worker_delivers_without_help(tmp_path: Path, smtp_peer: SmtpPeer) -> None:
    smtp_peer.clear()
    # The worker is on, as in `appliance run`: nobody drains the queue.
    app = create_app(make_settings(tmp_path / "bg", smtp_url=smtp_peer.url))
    async with AsyncTestClient(app, base_url="http://appliance.test") as client:
        body = {"to": "bg@example.com", "subject": "By itself", "text": "t"}
        email_id = (await client.post("/v1/email", json=body, headers=ROOT)).json()["id"]
        deadline = time.monotonic() + 15
        while True:
            record = (await client.get(f"/v1/email/{email_id}", headers=ROOT)).json()
            if record["status"] == "sent":
                break
            assert time.monotonic() < deadline, record
            await asyncio.sleep(0.02)
        (mail,) = await asyncio.to_thread(smtp_peer.wait_for, 1)
        assert mail.rcpt_tos == ["bg@example.com"]
