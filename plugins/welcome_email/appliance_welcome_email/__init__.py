"""The signup flow as a plugin: ``user.created`` -> a welcome email, ``user.verified`` -> a confirmation.

It uses one hook, ``appliance_event_handlers``, and the notify service that every handler reaches
through the context it is given (``ctx.services["notify"].send_template``). Each email uses the
tenant's own template when it has one (``welcome``, ``account-verified``: ``PUT /v1/templates/welcome``)
and the defaults below otherwise; the template data is the event's payload. Event handlers run at least once, so each email carries a dedupe key
made from the event id: a handler that runs twice still sends one email.
"""

from __future__ import annotations

from typing import Any

from appliance.plugin import EventHandlerSpec, hookimpl

__all__ = ["CONFIRMATION", "WELCOME", "send_confirmation", "send_welcome"]

WELCOME = {
    "subject": "Welcome, {{ name }}!",
    "html": (
        "<p>Hello {{ name }},</p><p>Welcome aboard. To confirm this address, use the code</p>"
        "<p><b>{{ verification_token }}</b></p><p>It is valid for 48 hours.</p>"
    ),
    "text": (
        "Hello {{ name }},\n\nWelcome aboard. To confirm this address, use the code\n\n"
        "    {{ verification_token }}\n\nIt is valid for 48 hours.\n"
    ),
}

CONFIRMATION = {
    "subject": "Your address is confirmed",
    "html": "<p>Hello {{ name }},</p><p>Thank you: {{ email }} is now confirmed.</p>",
    "text": "Hello {{ name }},\n\nThank you: {{ email }} is now confirmed.\n",
}


async def _send(ctx: Any, event: Any, template: str, fallback: dict[str, str]) -> None:
    await ctx.services["notify"].send_template(
        event.tenant,
        to=event.payload["email"],
        template=template,
        data=dict(event.payload),
        dedupe_key=f"{template}:{event.id}",  # at-least-once handlers, exactly one email
        fallback=fallback,
    )


async def send_welcome(ctx: Any, event: Any) -> None:
    """Queue the welcome email (with the verification code) for a new user."""
    await _send(ctx, event, "welcome", WELCOME)


async def send_confirmation(ctx: Any, event: Any) -> None:
    """Queue the confirmation email for a user who verified their address."""
    await _send(ctx, event, "account-verified", CONFIRMATION)


@hookimpl
def appliance_event_handlers() -> list[EventHandlerSpec]:
    users = ["appliance.users"]
    return [
        EventHandlerSpec(
            name="welcome_email.welcome",
            pattern={"source": users, "type": ["user.created"]},
            handler=send_welcome,
        ),
        EventHandlerSpec(
            name="welcome_email.confirmation",
            pattern={"source": users, "type": ["user.verified"]},
            handler=send_confirmation,
        ),
    ]
