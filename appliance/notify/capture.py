"""The ``capture`` mailer: the embedded default, a built-in mail catcher.

Nothing leaves the box: each message is composed exactly as the SMTP adapter would send it and kept,
MIME and all, in the metadata DB, where ``GET /v1/email?to=`` and the admin UI show it.
"""

from __future__ import annotations

import time
from email.message import EmailMessage
from typing import Literal

import msgspec

from appliance.core.context import BackendStatus
from appliance.core.db import Database, Row
from appliance.core.pagination import Page, decode_cursor, encode_cursor
from appliance.notify.messages import OutgoingEmail, compose, parse

__all__ = ["CaptureMailer", "CapturedEmail"]


class CapturedEmail(msgspec.Struct, kw_only=True):
    """A captured message as listed: the envelope, both parts, and the raw MIME."""

    id: str
    sender: str
    to: list[str]
    subject: str
    text: str
    html: str
    mime: str
    captured_at: float


class CaptureMailer:
    """Keeps messages in the ``email_captures`` table instead of sending them."""

    name = "capture"
    mode: Literal["embedded", "server"] = "embedded"
    delivered_status: Literal["sent", "captured"] = "captured"

    def __init__(self, db: Database) -> None:
        self.db = db

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def send(self, message: OutgoingEmail) -> str:
        composed = compose(message)
        # A retry of the same email replaces its capture: delivery is at least once, the catcher shows it once.
        # Delete then insert (not an upsert): the new row gets a new, larger rowid.
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM email_captures WHERE email_id = ?", (message.id,))
            await tx.execute(
                "INSERT INTO email_captures (email_id, tenant_id, sender, recipients, subject, mime,"
                " captured_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    message.id,
                    message.tenant,
                    message.sender,
                    msgspec.json.encode(message.to).decode(),
                    message.subject,
                    composed.data,
                    time.time(),
                ),
            )
        return composed.message_id

    async def health(self) -> BackendStatus:
        return BackendStatus(
            name="mail",
            backend="capture",
            mode="embedded",
            ok=True,
            detail="capture mode: messages are kept, not sent; set APPLIANCE_SMTP_URL to send them",
        )

    async def list(self, tenant: str, to: str | None, limit: int, cursor: str | None) -> Page[CapturedEmail]:
        """The tenant's captured messages, newest first, optionally only those to ``to``."""
        # rowid order is capture order (a retried email's capture is replaced and moves to the front).
        before = decode_cursor(cursor, int) if cursor else 2**63 - 1
        sql = "SELECT rowid, * FROM email_captures WHERE tenant_id = ? AND rowid < ?"
        params: list[object] = [tenant, before]
        if to:
            sql += " AND EXISTS (SELECT 1 FROM json_each(recipients) WHERE lower(value) = lower(?))"
            params.append(to)
        rows = await self.db.fetchall(sql + " ORDER BY rowid DESC LIMIT ?", (*params, limit + 1))
        items = [_captured(row) for row in rows[:limit]]
        return Page(
            items=items, next_cursor=encode_cursor(rows[limit - 1]["rowid"]) if len(rows) > limit else None
        )


def _captured(row: Row) -> CapturedEmail:
    raw = bytes(row["mime"])
    parsed = parse(raw)
    return CapturedEmail(
        id=row["email_id"],
        sender=row["sender"],
        to=msgspec.json.decode(row["recipients"], type=list[str]),
        subject=row["subject"],
        text=_part(parsed, "plain"),
        html=_part(parsed, "html"),
        mime=raw.decode("ascii", errors="replace"),
        captured_at=row["captured_at"],
    )


def _part(message: EmailMessage, subtype: str) -> str:
    body = message.get_body(preferencelist=(subtype,))
    return (
        str(body.get_content()).replace("\r\n", "\n")
        if body is not None and body.get_content_subtype() == subtype
        else ""
    )
