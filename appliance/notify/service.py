"""The notify service: templates, email records, push subscriptions, and delivery through the job queue.

Accepting a message and scheduling its delivery commit together: the email (or push) row and its job
are written in one transaction, so a 202 always means "it will be tried until it is delivered or
dead", and a crash between the two cannot lose it. The job handlers below do the delivery; they are
idempotent (a finished record is not sent again) because jobs run at least once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import msgspec

from appliance.config import Settings
from appliance.core.context import Context
from appliance.core.db import Database, Row, Tx
from appliance.core.errors import NotFound, PayloadTooLarge, ServiceUnavailable, Unprocessable
from appliance.core.ids import new_id
from appliance.core.pagination import Page, decode_cursor, encode_cursor
from appliance.jobs import Backoff, Job, JobService, NewJob, PermanentJobError
from appliance.notify import (
    BulkAccepted,
    EmailAccepted,
    EmailRecord,
    EmailRequest,
    Mailer,
    PushAccepted,
    Pusher,
    PushRecord,
    PushRequest,
    Subscription,
    SubscriptionIn,
    Template,
    TemplateIn,
)
from appliance.notify.capture import CapturedEmail, CaptureMailer
from appliance.notify.messages import (
    MailerUnavailable,
    MailRejected,
    OutgoingEmail,
    PushTarget,
    PushUnavailable,
    check_address,
    check_recipients,
    check_subject,
)
from appliance.notify.schema import MIGRATIONS
from appliance.notify.templates import Renderer

__all__ = ["EMAIL_JOB", "EMAIL_QUEUE", "PUSH_JOB", "PUSH_QUEUE", "NotifyService", "install_service"]

log = logging.getLogger("appliance.notify")

EMAIL_JOB = "email.send"
PUSH_JOB = "push.send"
EMAIL_QUEUE = "email"
PUSH_QUEUE = "push"
MAX_PUSH_PAYLOAD = 3800  # aes128gcm leaves ~3993 bytes of a push service's 4096; keep a margin
PUSH_CONCURRENCY = 16
MAX_RETRY_S = 600.0


class RetryLater(Exception):
    """A delivery attempt failed in a way worth retrying; the job queue retries it with backoff."""


class NotifyService:
    """Templates, emails and pushes of every tenant. Every method takes the tenant first."""

    def __init__(
        self, settings: Settings, db: Database, mailer: Mailer, pusher: Pusher, jobs: JobService
    ) -> None:
        self.settings = settings
        self.db = db
        self.mailer = mailer
        self.pusher = pusher
        self.jobs = jobs
        self.renderer = Renderer()

    # ------------------------------------------------------------ templates ---

    async def put_template(self, tenant: str, name: str, data: TemplateIn) -> tuple[Template, bool]:
        """Create or replace a template; 422 if a part does not parse. Returns it and whether it is new."""
        if not (data.html.strip() or data.text.strip()):
            raise Unprocessable("a template needs an html or a text part (or both)")
        self.renderer.check(data.subject, data.html, data.text)
        now = time.time()
        async with self.db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT created_at FROM email_templates WHERE tenant_id = ? AND name = ?", (tenant, name)
            )
            created_at = row["created_at"] if row else now
            await tx.execute(
                "INSERT INTO email_templates (tenant_id, name, subject, html, text, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id, name) DO UPDATE SET"
                " subject = excluded.subject, html = excluded.html, text = excluded.text,"
                " created_at = excluded.created_at, updated_at = excluded.updated_at",
                (tenant, name, data.subject, data.html, data.text, created_at, now),
            )
        template = Template(
            name=name,
            subject=data.subject,
            html=data.html,
            text=data.text,
            created_at=created_at,
            updated_at=now,
        )
        return template, row is None

    async def get_template(self, tenant: str, name: str, tx: Tx | None = None) -> Template:
        sql = "SELECT * FROM email_templates WHERE tenant_id = ? AND name = ?"
        row = await (tx.fetchone(sql, (tenant, name)) if tx else self.db.fetchone(sql, (tenant, name)))
        if row is None:
            raise NotFound(f"template {name!r} does not exist; create it with PUT /v1/templates/{name}")
        return _template(row)

    async def _template_or(
        self, tenant: str, name: str, tx: Tx | None, fallback: TemplateIn | None
    ) -> TemplateIn | Template:
        try:
            return await self.get_template(tenant, name, tx)
        except NotFound as exc:
            if fallback is None:  # the email request names it: unprocessable, not a missing route
                raise Unprocessable(exc.detail) from None
            return fallback

    async def list_templates(self, tenant: str, limit: int, cursor: str | None) -> Page[Template]:
        after = decode_cursor(cursor, str) if cursor else ""
        rows = await self.db.fetchall(
            "SELECT * FROM email_templates WHERE tenant_id = ? AND name > ? ORDER BY name LIMIT ?",
            (tenant, after, limit + 1),
        )
        items = [_template(r) for r in rows[:limit]]
        return Page(items=items, next_cursor=encode_cursor(items[-1].name) if len(rows) > limit else None)

    async def delete_template(self, tenant: str, name: str) -> None:
        deleted = await self.db.execute(
            "DELETE FROM email_templates WHERE tenant_id = ? AND name = ?", (tenant, name)
        )
        if not deleted:
            raise NotFound(f"template {name!r} does not exist")

    # ---------------------------------------------------------------- email ---

    async def render(
        self, tenant: str, request: EmailRequest, tx: Tx | None = None, fallback: TemplateIn | None = None
    ) -> OutgoingEmail:
        """Validate and render ``request`` into a message (not yet stored); 422 says what is wrong.

        ``fallback`` is used when the tenant has no template named ``request.template``.
        """
        to = check_recipients([request.to] if isinstance(request.to, str) else list(request.to))
        if request.template is not None:
            if request.subject is not None or request.html is not None or request.text is not None:
                raise Unprocessable("send either a template (with data) or subject/html/text, not both")
            template = await self._template_or(tenant, request.template, tx, fallback)
            subject, html, text = self.renderer.render(
                template.subject, template.html, template.text, request.data
            )
        else:
            if request.subject is None or not (request.html or request.text):
                raise Unprocessable("send a template, or a subject with an html and/or a text body")
            subject, html, text = request.subject, request.html or "", request.text or ""
        return OutgoingEmail(
            id=new_id("eml"),
            tenant=tenant,
            sender=check_address(self.settings.mail_from, "APPLIANCE_MAIL_FROM"),
            to=to,
            subject=check_subject(subject),
            html=html,
            text=text,
        )

    async def send_email(
        self,
        tenant: str,
        request: EmailRequest,
        *,
        tx: Tx | None = None,
        dedupe_key: str | None = None,
        fallback: TemplateIn | None = None,
    ) -> EmailAccepted:
        """Accept one email: record it and schedule its delivery, atomically (inside ``tx`` if given).

        ``dedupe_key`` makes the call idempotent: a second call with the same key returns the first
        email and sends nothing (event handlers, which run at least once, use it). ``fallback`` is the
        template to use when the tenant has not defined ``request.template`` (plugins ship defaults).
        """
        if tx is not None:
            return await self._accept(tx, tenant, request, dedupe_key, fallback)
        async with self.db.transaction() as own:
            return await self._accept(own, tenant, request, dedupe_key, fallback)

    async def send_template(
        self,
        tenant: str,
        *,
        to: str | list[str],
        template: str,
        data: dict[str, Any],
        dedupe_key: str | None = None,
        fallback: dict[str, str] | None = None,
    ) -> str:
        """:meth:`send_email` in plain data, for plugins: returns the email id.

        ``fallback`` is ``{"subject", "html", "text"}`` sources used when the tenant has no ``template``.
        """
        default = msgspec.convert(fallback, TemplateIn) if fallback is not None else None
        request = EmailRequest(to=to, template=template, data=data)
        accepted = await self.send_email(tenant, request, dedupe_key=dedupe_key, fallback=default)
        return accepted.id

    async def _accept(
        self, tx: Tx, tenant: str, request: EmailRequest, dedupe_key: str | None, fallback: TemplateIn | None
    ) -> EmailAccepted:
        if dedupe_key is not None:
            row = await tx.fetchone(
                "SELECT id, status FROM emails WHERE tenant_id = ? AND dedupe_key = ?", (tenant, dedupe_key)
            )
            if row is not None:
                return EmailAccepted(id=row["id"], status=row["status"])
        message = await self.render(tenant, request, tx, fallback)
        await self._insert_email(tx, message, request.template, dedupe_key)
        await self.jobs.enqueue(tenant, EMAIL_QUEUE, self._delivery(EMAIL_JOB, message.id), tx=tx)
        return EmailAccepted(id=message.id, status="queued")

    def _delivery(self, job_type: str, record_id: str, delay_s: float = 0.0) -> NewJob:
        """The job that delivers one email or push: its id is the record's, so it is enqueued once."""
        retry_s = self.settings.mail_retry_s
        key = "email_id" if job_type == EMAIL_JOB else "push_id"
        return NewJob(
            type=job_type,
            payload={key: record_id},
            job_id=record_id,
            delay_s=delay_s,
            max_attempts=self.settings.mail_max_attempts,
            backoff=Backoff(initial_s=retry_s, factor=2.0, max_s=max(retry_s, MAX_RETRY_S)),
        )

    async def _insert_email(
        self, tx: Tx, message: OutgoingEmail, template: str | None, dedupe_key: str | None
    ) -> None:
        now = time.time()
        await tx.execute(
            "INSERT INTO emails (id, tenant_id, sender, recipients, subject, html, text, template, status,"
            " attempts, max_attempts, dedupe_key, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?, ?)",
            (
                message.id,
                message.tenant,
                message.sender,
                msgspec.json.encode(message.to).decode(),
                message.subject,
                message.html,
                message.text,
                template,
                self.settings.mail_max_attempts,
                dedupe_key,
                now,
                now,
            ),
        )

    async def send_bulk(
        self, tenant: str, requests: list[EmailRequest], tx: Tx | None = None
    ) -> BulkAccepted:
        """Accept many emails at once, delivered no faster than ``APPLIANCE_MAIL_BULK_RATE`` per tenant.

        Every message is validated and rendered first: one bad message rejects the whole batch (422
        naming its index) and nothing is queued.
        """
        if tx is None:
            async with self.db.transaction() as own:
                return await self.send_bulk(tenant, requests, own)
        if not requests:
            raise Unprocessable("send at least one message")
        messages: list[tuple[OutgoingEmail, str | None]] = []
        for index, request in enumerate(requests):
            try:
                messages.append((await self.render(tenant, request, tx), request.template))
            except (Unprocessable, NotFound) as exc:
                raise Unprocessable(f"message {index}: {exc.detail}") from None
        per_s = self._bulk_rate()
        start = await self._reserve_pace(tx, tenant, len(messages), per_s)
        jobs: list[NewJob] = []
        for index, (message, template) in enumerate(messages):
            await self._insert_email(tx, message, template, None)
            jobs.append(self._delivery(EMAIL_JOB, message.id, start + index / per_s))
        await self.jobs.enqueue_bulk(tenant, EMAIL_QUEUE, jobs, tx=tx)
        return BulkAccepted(ids=[m.id for m, _ in messages], rate_per_s=per_s)

    def _bulk_rate(self) -> float:
        unit, count = self.settings.rate("mail_bulk_rate") or ("second", 1_000_000)
        return count / {"second": 1, "minute": 60, "hour": 3600, "day": 86400}[unit]

    async def _reserve_pace(self, tx: Tx, tenant: str, count: int, per_s: float) -> float:
        """Seconds from now until this batch may start, so batches of one tenant queue behind each other."""
        now, span = time.time(), count / per_s
        # One statement, so concurrent batches (even on several nodes) each reserve their own slot.
        row = await tx.fetchone(
            "INSERT INTO email_bulk_pace (tenant_id, next_at) VALUES (?, ?) ON CONFLICT (tenant_id) DO UPDATE"
            " SET next_at = CASE WHEN email_bulk_pace.next_at > ? THEN email_bulk_pace.next_at ELSE ? END + ?"
            " RETURNING next_at",
            (tenant, now + span, now, now, span),
        )
        assert row is not None
        return float(row["next_at"]) - span - now

    async def get_email(self, tenant: str, email_id: str) -> EmailRecord:
        row = await self.db.fetchone(
            "SELECT * FROM emails WHERE tenant_id = ? AND id = ?", (tenant, email_id)
        )
        if row is None:
            raise NotFound(f"email {email_id!r} does not exist")
        return _email(row)

    async def list_captured(
        self, tenant: str, to: str | None, limit: int, cursor: str | None
    ) -> Page[CapturedEmail]:
        if not isinstance(self.mailer, CaptureMailer):
            raise ServiceUnavailable(
                f"capture mode is off: mail goes to the {self.mailer.name!r} mailer"
                " (unset APPLIANCE_SMTP_URL to capture), so there is no captured mail to list",
                slug="capture-mode-off",
            )
        return await self.mailer.list(tenant, to, limit, cursor)

    async def deliver_email(self, job: Job) -> dict[str, Any]:
        """The ``email.send`` job handler: one attempt at one email."""
        email_id = str(job.payload.get("email_id", ""))
        row = await self._claim_email(job.tenant, email_id)
        if row is None:
            return {"email_id": email_id, "skipped": "already delivered or deleted"}
        message = OutgoingEmail(
            id=row["id"],
            tenant=job.tenant,
            sender=row["sender"],
            to=msgspec.json.decode(row["recipients"], type=list[str]),
            subject=row["subject"],
            html=row["html"],
            text=row["text"],
        )
        try:
            message_id = await self.mailer.send(message)
        except MailRejected as exc:
            await self._finish_email(job.tenant, email_id, "failed", error=str(exc))
            raise PermanentJobError(str(exc)) from None
        except (MailerUnavailable, OSError, TimeoutError) as exc:
            last = job.attempt >= job.max_attempts
            await self._finish_email(job.tenant, email_id, "dead" if last else "queued", error=str(exc))
            if last:
                log.warning(
                    "email %s (tenant %s) is dead after %d attempts: %s",
                    email_id,
                    job.tenant,
                    job.attempt,
                    exc,
                )
            raise RetryLater(str(exc)) from None
        status = self.mailer.delivered_status
        await self._finish_email(job.tenant, email_id, status, message_id=message_id)
        return {"email_id": email_id, "status": status, "message_id": message_id}

    async def _claim_email(self, tenant: str, email_id: str) -> Row | None:
        """Mark the email ``sending`` and count the attempt; ``None`` if it was delivered or is gone.

        A ``dead`` or ``failed`` email is claimed again: its job only runs again when someone retried it
        from the dead-letter list (``POST /v1/queues/email/dead/{id}/retry``).
        """
        async with self.db.transaction() as tx:
            return await tx.fetchone(
                "UPDATE emails SET status = 'sending', attempts = attempts + 1, updated_at = ?"
                " WHERE tenant_id = ? AND id = ? AND status NOT IN ('sent', 'captured')"
                " RETURNING *",
                (time.time(), tenant, email_id),
            )

    async def _finish_email(
        self,
        tenant: str,
        email_id: str,
        status: str,
        *,
        error: str | None = None,
        message_id: str | None = None,
    ) -> None:
        now = time.time()
        sent_at = now if status in ("sent", "captured") else None
        await self.db.execute(
            "UPDATE emails SET status = ?, error = ?, message_id = COALESCE(?, message_id),"
            " sent_at = COALESCE(?, sent_at), updated_at = ? WHERE tenant_id = ? AND id = ?",
            (status, error, message_id, sent_at, now, tenant, email_id),
        )

    # ----------------------------------------------------------------- push ---

    async def subscribe(self, tenant: str, data: SubscriptionIn) -> tuple[Subscription, bool]:
        """Store a browser subscription for a user (the same endpoint again replaces it)."""
        endpoint = check_push_endpoint(data.subscription.endpoint)
        keys = data.subscription.keys
        now = time.time()
        topics = sorted(set(data.topics))
        async with self.db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT id, created_at FROM push_subscriptions WHERE tenant_id = ? AND endpoint = ?",
                (tenant, endpoint),
            )
            sub_id, created_at = (row["id"], row["created_at"]) if row else (new_id("sub"), now)
            await tx.execute(
                "INSERT INTO push_subscriptions (id, tenant_id, user_id, endpoint, p256dh, auth,"
                " topics, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " user_id = excluded.user_id, p256dh = excluded.p256dh, auth = excluded.auth,"
                " topics = excluded.topics",
                (sub_id, tenant, data.user_id, endpoint, keys.p256dh, keys.auth, _json(topics), created_at),
            )
        sub = Subscription(
            id=sub_id, user_id=data.user_id, endpoint=endpoint, topics=topics, created_at=created_at
        )
        return sub, row is None

    async def list_subscriptions(
        self, tenant: str, user_id: str | None, limit: int, cursor: str | None
    ) -> Page[Subscription]:
        after = decode_cursor(cursor, str) if cursor else ""
        sql = "SELECT * FROM push_subscriptions WHERE tenant_id = ? AND id > ?"
        params: list[Any] = [tenant, after]
        if user_id is not None:
            sql += " AND user_id = ?"
            params.append(user_id)
        rows = await self.db.fetchall(sql + " ORDER BY id LIMIT ?", (*params, limit + 1))
        items = [_subscription(r) for r in rows[:limit]]
        return Page(items=items, next_cursor=encode_cursor(items[-1].id) if len(rows) > limit else None)

    async def unsubscribe(self, tenant: str, sub_id: str) -> None:
        deleted = await self.db.execute(
            "DELETE FROM push_subscriptions WHERE tenant_id = ? AND id = ?", (tenant, sub_id)
        )
        if not deleted:
            raise NotFound(f"push subscription {sub_id!r} does not exist")

    async def push(self, tenant: str, request: PushRequest, tx: Tx | None = None) -> PushAccepted:
        """Accept a push to a user's or a topic's subscriptions and schedule its delivery."""
        if (request.user_id is None) == (request.topic is None):
            raise Unprocessable("send exactly one of user_id or topic")
        payload = msgspec.json.encode({"title": request.title, "body": request.body, "data": request.data})
        if len(payload) > MAX_PUSH_PAYLOAD:
            raise PayloadTooLarge(
                f"the push payload is {len(payload)} bytes; push services take at most {MAX_PUSH_PAYLOAD}"
            )
        if tx is not None:
            return await self._accept_push(tx, tenant, request, payload)
        async with self.db.transaction() as own:
            return await self._accept_push(own, tenant, request, payload)

    async def _accept_push(self, tx: Tx, tenant: str, request: PushRequest, payload: bytes) -> PushAccepted:
        push_id = new_id("psh")
        count = len(await _targets(tx, tenant, request.user_id, request.topic, push_id))
        now = time.time()
        await tx.execute(
            "INSERT INTO pushes (id, tenant_id, user_id, topic, title, payload, ttl_s, status, subscriptions,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
            (
                push_id,
                tenant,
                request.user_id,
                request.topic,
                request.title,
                payload,
                request.ttl_s,
                count,
                now,
                now,
            ),
        )
        await self.jobs.enqueue(tenant, PUSH_QUEUE, self._delivery(PUSH_JOB, push_id), tx=tx)
        return PushAccepted(id=push_id, status="queued", subscriptions=count)

    async def get_push(self, tenant: str, push_id: str) -> PushRecord:
        row = await self.db.fetchone("SELECT * FROM pushes WHERE tenant_id = ? AND id = ?", (tenant, push_id))
        if row is None:
            raise NotFound(f"push {push_id!r} does not exist")
        return _push(row)

    async def deliver_push(self, job: Job) -> dict[str, Any]:
        """The ``push.send`` job handler: send to every target subscription not yet done for this push."""
        push_id = str(job.payload.get("push_id", ""))
        row = await self.db.fetchone(
            "SELECT * FROM pushes WHERE tenant_id = ? AND id = ?", (job.tenant, push_id)
        )
        if row is None or row["status"] == "sent":  # a dead push runs again only when retried by hand
            return {"push_id": push_id, "skipped": "already delivered or deleted"}
        targets = await _targets(self.db, job.tenant, row["user_id"], row["topic"], push_id)
        slots = asyncio.Semaphore(PUSH_CONCURRENCY)

        async def one(sub: Row) -> tuple[str, str]:
            target = PushTarget(endpoint=sub["endpoint"], p256dh=sub["p256dh"], auth=sub["auth"])
            async with slots:
                try:
                    return sub["id"], await self.pusher.send(target, bytes(row["payload"]), row["ttl_s"])
                except PushUnavailable as exc:
                    return sub["id"], f"error: {exc}"

        results = await asyncio.gather(*(one(sub) for sub in targets))
        errors = await self._record_push(job, row, results)
        if errors:
            raise RetryLater(f"{len(errors)} subscription(s) to retry: {errors[0]}")
        return {"push_id": push_id, "targets": len(results)}

    async def _record_push(self, job: Job, row: Row, results: list[tuple[str, str]]) -> list[str]:
        errors = [outcome for _, outcome in results if outcome.startswith("error: ")]
        done = [(sub_id, outcome) for sub_id, outcome in results if not outcome.startswith("error: ")]
        last = job.attempt >= job.max_attempts
        status = "sent" if not errors else ("dead" if last else "queued")
        async with self.db.transaction() as tx:
            for sub_id, outcome in done:
                await tx.execute(
                    "INSERT INTO push_deliveries (push_id, subscription_id, outcome) VALUES (?, ?, ?)"
                    " ON CONFLICT (push_id, subscription_id) DO NOTHING",
                    (row["id"], sub_id, outcome),
                )
                if outcome == "gone":  # 404/410: the browser dropped it; so do we
                    await tx.execute(
                        "DELETE FROM push_subscriptions WHERE tenant_id = ? AND id = ?", (job.tenant, sub_id)
                    )
            counts = {
                r["outcome"]: r["n"]
                for r in await tx.fetchall(
                    "SELECT outcome, count(*) AS n FROM push_deliveries WHERE push_id = ? GROUP BY outcome",
                    (row["id"],),
                )
            }
            await tx.execute(
                "UPDATE pushes SET status = ?, delivered = ?, removed = ?, rejected = ?, attempts = attempts + 1,"
                " error = ?, updated_at = ? WHERE id = ?",
                (
                    status,
                    counts.get("delivered", 0),
                    counts.get("gone", 0),
                    counts.get("rejected", 0),
                    errors[0][len("error: ") :] if errors else None,
                    time.time(),
                    row["id"],
                ),
            )
        return errors


def check_push_endpoint(endpoint: str) -> str:
    """A push endpoint must be https (plain http only on loopback, for local push services and tests)."""
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    if parts.scheme == "https" and parts.hostname:
        return endpoint
    if parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1"):
        return endpoint
    raise Unprocessable("subscription.endpoint must be an https:// URL (http:// only on loopback)")


async def _targets(
    source: Tx | Database, tenant: str, user_id: str | None, topic: str | None, push_id: str
) -> list[Row]:
    where = (
        "user_id = ?" if user_id is not None else "EXISTS (SELECT 1 FROM json_each(topics) WHERE value = ?)"
    )
    sql = (
        "SELECT * FROM push_subscriptions WHERE tenant_id = ? AND "
        + where
        + " AND id NOT IN (SELECT subscription_id FROM push_deliveries WHERE push_id = ?) ORDER BY id"
    )
    return await source.fetchall(sql, (tenant, user_id if user_id is not None else topic, push_id))


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _template(row: Row) -> Template:
    return Template(
        name=row["name"],
        subject=row["subject"],
        html=row["html"],
        text=row["text"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _email(row: Row) -> EmailRecord:
    return EmailRecord(
        id=row["id"],
        status=row["status"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        error=row["error"],
        sender=row["sender"],
        to=msgspec.json.decode(row["recipients"], type=list[str]),
        subject=row["subject"],
        template=row["template"],
        message_id=row["message_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        sent_at=row["sent_at"],
    )


def _subscription(row: Row) -> Subscription:
    return Subscription(
        id=row["id"],
        user_id=row["user_id"],
        endpoint=row["endpoint"],
        topics=msgspec.json.decode(row["topics"], type=list[str]),
        created_at=row["created_at"],
    )


def _push(row: Row) -> PushRecord:
    return PushRecord(
        id=row["id"],
        status=row["status"],
        user_id=row["user_id"],
        topic=row["topic"],
        title=row["title"],
        subscriptions=row["subscriptions"],
        delivered=row["delivered"],
        removed=row["removed"],
        rejected=row["rejected"],
        attempts=row["attempts"],
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _register_rule_target(ctx: Context, service: NotifyService) -> None:
    """Let event rules send email (``{"kind": "email", "template", "to"}``) when events are installed."""
    from appliance.events import EventService
    from appliance.notify.rules import EMAIL_RULE_JOB, EmailTarget

    target = EmailTarget(service)
    ctx.service("events", EventService).targets.register(target)
    ctx.register_job_handler(EMAIL_RULE_JOB, target.handle)


def make_mailer(ctx: Context) -> Mailer:
    """The mailer the settings pick: a plugin's (``APPLIANCE_MAIL_BACKEND``), SMTP, or capture."""
    chosen = ctx.plugin_backend("mail")
    if chosen is not None:
        mailer: Mailer = chosen
        return mailer
    if ctx.settings.smtp_url:
        from appliance.notify.smtp import SmtpMailer

        return SmtpMailer(ctx.settings.smtp_url)
    return CaptureMailer(ctx.db)


def make_pusher(ctx: Context) -> Pusher:
    """The pusher the settings pick: a plugin's (``APPLIANCE_PUSH_BACKEND``) or Web Push."""
    chosen = ctx.plugin_backend("push")
    if chosen is not None:
        pusher: Pusher = chosen
        return pusher
    from appliance.notify.webpush import WebPusher

    return WebPusher(
        Path(ctx.settings.data_dir), ctx.settings.mail_from, private_key=ctx.settings.vapid_private_key
    )


def install_service(ctx: Context) -> NotifyService:
    """Build the service on the configured adapters and wire it into the context."""
    ctx.migrations.extend(MIGRATIONS)
    mailer, pusher = make_mailer(ctx), make_pusher(ctx)
    jobs = ctx.service("jobs", JobService)
    service = NotifyService(ctx.settings, ctx.db, mailer, pusher, jobs)
    ctx.provide("notify", service)
    ctx.register_job_handler(EMAIL_JOB, service.deliver_email)
    ctx.register_job_handler(PUSH_JOB, service.deliver_push)
    _register_rule_target(ctx, service)
    ctx.health.append(mailer.health)
    ctx.health.append(pusher.health)

    async def start() -> None:
        await mailer.start()
        await pusher.start()

    async def stop() -> None:
        await mailer.close()
        await pusher.close()

    ctx.on_startup(start)
    ctx.on_shutdown(stop)
    return service
