"""End users of a tenant's application: sign-up and email verification (API.md "Users").

Minimal on purpose: an email, a name and whether the address was verified. Creating a user emits
``user.created`` (with a one-time verification token) and verifying emits ``user.verified``, each in
the same transaction as the write, through the event outbox; the ``welcome_email`` plugin turns them
into email. :class:`~appliance.users.service.UserService` is ``ctx.service("users", UserService)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import msgspec
from litestar.types import ControllerRouterHandler

if TYPE_CHECKING:
    from appliance.core.context import Context

__all__ = ["CreatedUser", "NewUser", "User", "Verification", "install"]


class NewUser(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /v1/users``."""

    email: Annotated[str, msgspec.Meta(min_length=3, max_length=254)]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class Verification(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /v1/users/{id}/verify``."""

    token: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class User(msgspec.Struct, kw_only=True):
    id: str
    email: str
    name: str
    verified: bool
    created_at: float
    verified_at: float | None = None


class CreatedUser(User, kw_only=True):
    """A user just created; ``verification_token`` is shown this once (and sent in ``user.created``)."""

    verification_token: str
    verification_expires_at: float


def install(ctx: Context) -> list[ControllerRouterHandler]:
    """Register the users table and the ``users`` service; return the routes."""
    from appliance.users.api import ROUTES
    from appliance.users.service import install_service

    install_service(ctx)
    return list(ROUTES)
