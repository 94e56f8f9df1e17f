"""Search routes: API.md "Search", plus index listing and task status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Controller, Response, delete, get, post, put
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIType
from litestar.params import JSONBody, Parameter, RawBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT

from appliance.core.auth import requires
from appliance.core.deps import AppContext, Caller
from appliance.core.pagination import DEFAULT_LIMIT, Cursor, Limit, Page
from appliance.search import INDEX_NAME_PATTERN, IndexDefinition, IndexInfo, SearchRequest, SearchResult, Task
from appliance.search.service import SearchService

__all__ = ["IndexController"]

IndexPath = Annotated[str, Parameter(pattern=INDEX_NAME_PATTERN, description="the index name")]
Wait = Annotated[bool, Parameter(description="return once the task has finished (documents searchable)")]


def _search(ctx: Any) -> SearchService:
    return ctx.service("search", SearchService)  # type: ignore[no-any-return]


@dataclass
class _DocumentsOperation(Operation):
    """The documents route reads its body raw (validated, then queued as sent): document it anyway."""

    def __post_init__(self) -> None:
        document = Schema(
            type=OpenAPIType.OBJECT, description="a document: a JSON object with the primary key"
        )
        self.request_body = RequestBody(
            content={
                "application/json": OpenAPIMediaType(schema=Schema(type=OpenAPIType.ARRAY, items=document))
            },
            description="the documents to add or replace, whole, by primary key (the last one wins)",
            required=True,
        )


def _task_response(task: Task) -> Response[Task]:
    return Response(task, status_code=HTTP_200_OK if task.finished else HTTP_202_ACCEPTED)


class IndexController(Controller):
    path = "/v1/indexes"
    tags = ["search"]
    guards = [requires("search")]

    @get("/", summary="List the tenant's indexes")
    async def list_indexes(
        self, ctx: AppContext, principal: Caller, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
    ) -> Page[IndexInfo]:
        return await _search(ctx).list_indexes(principal.tenant, limit, cursor)

    @put("/{index:str}", summary="Create an index or change its settings (200 updated, 201 created)")
    async def put_index(
        self, ctx: AppContext, principal: Caller, index: IndexPath, data: JSONBody[IndexDefinition]
    ) -> Response[IndexInfo]:
        info, created = await _search(ctx).put_index(principal.tenant, index, data)
        return Response(info, status_code=HTTP_201_CREATED if created else HTTP_200_OK)

    @get("/{index:str}", summary="An index's settings and document count")
    async def get_index(self, ctx: AppContext, principal: Caller, index: IndexPath) -> IndexInfo:
        return await _search(ctx).get_index(principal.tenant, index)

    @delete("/{index:str}", status_code=HTTP_204_NO_CONTENT, summary="Delete an index and its documents")
    async def delete_index(self, ctx: AppContext, principal: Caller, index: IndexPath) -> None:
        await _search(ctx).delete_index(principal.tenant, index)

    @post(
        "/{index:str}/documents",
        summary="Add or replace documents: 202 with a task, or 200 once searchable with ?wait=true",
        operation_class=_DocumentsOperation,
    )
    async def add_documents(
        self, ctx: AppContext, principal: Caller, index: IndexPath, body: RawBody, wait: Wait = False
    ) -> Response[Task]:
        # Raw on purpose: the body is checked by decoding only the primary keys, and queued as sent.
        return _task_response(await _search(ctx).add_json(principal.tenant, index, body, wait))

    @delete(
        "/{index:str}/documents/{doc_id:str}",
        status_code=HTTP_202_ACCEPTED,
        summary="Delete a document: 202 with a task, or 200 once done with ?wait=true",
    )
    async def delete_document(
        self,
        ctx: AppContext,
        principal: Caller,
        index: IndexPath,
        doc_id: Annotated[str, Parameter(max_length=511)],
        wait: Wait = False,
    ) -> Response[Task]:
        return _task_response(await _search(ctx).delete_document(principal.tenant, index, doc_id, wait))

    @get("/{index:str}/tasks/{task_id:str}", summary="An indexing task's status")
    async def get_task(
        self,
        ctx: AppContext,
        principal: Caller,
        index: IndexPath,
        task_id: Annotated[str, Parameter(max_length=64)],
    ) -> Task:
        return await _search(ctx).task(principal.tenant, index, task_id)

    @post(
        "/{index:str}/search", status_code=HTTP_200_OK, summary="Full-text search with filters, facets, sort"
    )
    async def search(
        self, ctx: AppContext, principal: Caller, index: IndexPath, data: JSONBody[SearchRequest]
    ) -> SearchResult:
        return await _search(ctx).search(principal.tenant, index, data)
