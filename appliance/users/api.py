"""Routes of API.md "Users"."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.params import JSONBody, Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED
from litestar.types import ControllerRouterHandler

from appliance.core.auth import requires
from appliance.core.deps import AppContext, Caller
from appliance.core.idempotency import IdempotencyKey, idempotent_response
from appliance.core.pagination import DEFAULT_LIMIT, Cursor, Limit, Page
from appliance.users import CreatedUser, NewUser, User, Verification
from appliance.users.service import UserService

__all__ = ["ROUTES"]

UserId = Annotated[str, Parameter(max_length=64)]


def _users(ctx: AppContext) -> UserService:
    return ctx.service("users", UserService)


class UserController(Controller):
    path = "/v1/users"
    tags = ["users"]
    guards = [requires("users")]

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Create a user (emits user.created with a verification token)",
        response_description="The user, with its verification token shown this once",
    )
    async def create(
        self,
        ctx: AppContext,
        principal: Caller,
        request: Request[Any, Any, Any],
        data: JSONBody[NewUser],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[bytes]:
        users = _users(ctx)

        async def create(tx: Any) -> tuple[int, CreatedUser]:
            return HTTP_201_CREATED, await users.create(principal.tenant, data, tx)

        return await idempotent_response(
            ctx.idempotency, principal.tenant, "users", idempotency_key, request, create
        )

    @get("/", summary="List the tenant's users")
    async def list_users(
        self, ctx: AppContext, principal: Caller, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
    ) -> Page[User]:
        return await _users(ctx).list(principal.tenant, limit, cursor)

    @get("/{user_id:str}", summary="One user")
    async def get_user(self, ctx: AppContext, principal: Caller, user_id: UserId) -> User:
        return await _users(ctx).get(principal.tenant, user_id)

    @post("/{user_id:str}/verify", status_code=HTTP_200_OK, summary="Verify the email (emits user.verified)")
    async def verify(
        self, ctx: AppContext, principal: Caller, user_id: UserId, data: JSONBody[Verification]
    ) -> User:
        return await _users(ctx).verify(principal.tenant, user_id, data.token)


ROUTES: list[ControllerRouterHandler] = [UserController]
