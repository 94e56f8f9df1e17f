"""API.md "Events": publish, the event log, rules."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.params import JSONBody, Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT
from litestar.types import ControllerRouterHandler

from appliance.core.auth import requires
from appliance.core.deps import AppContext, Caller
from appliance.core.errors import Unprocessable
from appliance.core.idempotency import IdempotencyKey, idempotent_response
from appliance.core.outbox import Event
from appliance.core.pagination import DEFAULT_LIMIT, Cursor, Limit, Page
from appliance.events import EventService, NewEvent, NewRule, Rule
from appliance.events.patterns import PatternError, compile_pattern

__all__ = ["routes"]

RuleIdPath = Annotated[str, Parameter(max_length=100)]
TypeFilter = Annotated[str | None, Parameter(max_length=128, description="only events of this type")]
Since = Annotated[float | None, Parameter(ge=0, description="only events created at or after (unix seconds)")]


class Accepted(msgspec.Struct):
    id: str


class PatternTest(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /v1/rules:test``: a pattern and a sample ``{source, type, payload}``."""

    pattern: dict[str, Any]
    event: dict[str, Any]


class PatternVerdict(msgspec.Struct):
    matches: bool


def _public(rule: Rule) -> Rule:
    """A rule as clients see it: webhook secrets are never echoed back."""
    rule.targets = [{**t, "secret": "***"} if t.get("secret") else t for t in rule.targets]
    return rule


class EventController(Controller):
    path = "/v1/events"
    tags = ["events"]
    guards = [requires("events")]

    @post("/", status_code=HTTP_202_ACCEPTED, summary="Publish an event; rules deliver it at least once")
    async def publish(
        self,
        ctx: AppContext,
        principal: Caller,
        request: Request[Any, Any, Any],
        data: JSONBody[NewEvent],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[bytes]:
        service = ctx.service("events", EventService)

        async def create(tx: Any) -> tuple[int, Any]:
            event = await service.publish(principal.tenant, data.source, data.type, data.payload, tx=tx)
            return HTTP_202_ACCEPTED, Accepted(id=event.id)

        return await idempotent_response(
            ctx.idempotency, principal.tenant, "events", idempotency_key, request, create
        )

    @get("/", summary="The event log, oldest first (filter by type, since)")
    async def list_events(
        self,
        ctx: AppContext,
        principal: Caller,
        type: TypeFilter = None,
        since: Since = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> Page[Event]:
        return await ctx.service("events", EventService).log(principal.tenant, type, since, limit, cursor)


class RuleController(Controller):
    path = "/v1/rules"
    tags = ["events"]
    guards = [requires("events")]

    @post("/", status_code=HTTP_201_CREATED, summary="Create a rule: an event pattern and its targets")
    async def create(
        self,
        ctx: AppContext,
        principal: Caller,
        request: Request[Any, Any, Any],
        data: JSONBody[NewRule],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[bytes]:
        service = ctx.service("events", EventService)

        async def create(tx: Any) -> tuple[int, Any]:
            return HTTP_201_CREATED, _public(await service.create_rule(principal.tenant, data, tx=tx))

        return await idempotent_response(
            ctx.idempotency, principal.tenant, "rules", idempotency_key, request, create
        )

    @get("/", summary="The tenant's rules")
    async def list_rules(
        self, ctx: AppContext, principal: Caller, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
    ) -> Page[Rule]:
        page = await ctx.service("events", EventService).list_rules(principal.tenant, limit, cursor)
        page.items = [_public(r) for r in page.items]
        return page

    @get("/{rule_id:str}", summary="One rule")
    async def get_rule(self, ctx: AppContext, principal: Caller, rule_id: RuleIdPath) -> Rule:
        return _public(await ctx.service("events", EventService).get_rule(principal.tenant, rule_id))

    @delete("/{rule_id:str}", status_code=HTTP_204_NO_CONTENT, summary="Delete a rule")
    async def delete_rule(self, ctx: AppContext, principal: Caller, rule_id: RuleIdPath) -> None:
        await ctx.service("events", EventService).delete_rule(principal.tenant, rule_id)


@post(
    "/v1/rules:test",
    status_code=HTTP_200_OK,
    guards=[requires("events")],
    tags=["events"],
    summary="Whether a sample event matches a pattern, by the matcher rules use (422 if malformed)",
)
async def try_pattern(data: JSONBody[PatternTest]) -> PatternVerdict:
    try:
        pattern = compile_pattern(data.pattern)
    except PatternError as exc:
        raise Unprocessable(str(exc)) from None
    document = {key: data.event[key] for key in ("source", "type", "payload") if key in data.event}
    return PatternVerdict(matches=pattern.matches(document))


def routes() -> list[ControllerRouterHandler]:
    return [EventController, RuleController, try_pattern]
