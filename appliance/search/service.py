"""Search logic on top of the port: validation that is the same whichever adapter answers.

The service checks names, documents and queries, and turns an undeclared field into a 422 that names
it, before any adapter sees the request. Adapters receive only validated :class:`SearchQuery` objects.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import msgspec

from appliance.core.errors import BadRequest, Conflict, NotFound, Unprocessable
from appliance.core.pagination import Page, decode_cursor, encode_cursor
from appliance.search import (
    DOC_ID_PATTERN,
    IndexDefinition,
    IndexInfo,
    JsonUpsert,
    SearchEngine,
    SearchQuery,
    SearchRequest,
    SearchResult,
    SortKey,
    Task,
)
from appliance.search.filters import Bool, FilterError, fields_of, parse_filter

__all__ = ["MAX_DOCUMENTS", "WAIT_TIMEOUT_S", "Indexer", "SearchService", "check_json_documents"]

MAX_DOCUMENTS = 100_000
WAIT_TIMEOUT_S = 30.0
_DOC_ID = re.compile(DOC_ID_PATTERN)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # never meaningful in a query; NUL ends C strings


class SearchService:
    """Index management, indexing and search for one tenant at a time."""

    def __init__(self, engine: SearchEngine, wait_timeout: float = WAIT_TIMEOUT_S) -> None:
        self.engine = engine
        self.wait_timeout = wait_timeout

    async def put_index(self, tenant: str, name: str, definition: IndexDefinition) -> tuple[IndexInfo, bool]:
        """Create or update an index; ``True`` when it was created."""
        definition = definition.normalised()
        existing = await self.engine.get_index(tenant, name)
        if existing is not None and existing.primary_key != definition.primary_key and existing.documents:
            raise Conflict(
                f"index {name!r} holds documents keyed by {existing.primary_key!r}: delete it (or its"
                " documents) before changing the primary key"
            )
        return await self.engine.put_index(tenant, name, definition)

    async def get_index(self, tenant: str, name: str, *, count: bool = True) -> IndexInfo:
        index = await self.engine.get_index(tenant, name, count=count)
        if index is None:
            raise NotFound(f"index {name!r} does not exist: create it with PUT /v1/indexes/{name}")
        return index

    async def list_indexes(self, tenant: str, limit: int, cursor: str | None) -> Page[IndexInfo]:
        after = decode_cursor(cursor, str) if cursor else ""
        items = await self.engine.list_indexes(tenant, after, limit + 1)
        more = len(items) > limit
        items = items[:limit]
        return Page(items=items, next_cursor=encode_cursor(items[-1].name) if more else None)

    async def delete_index(self, tenant: str, name: str) -> None:
        if not await self.engine.delete_index(tenant, name):
            raise NotFound(f"index {name!r} does not exist")

    async def add_documents(self, tenant: str, name: str, documents: list[Any], wait: bool = False) -> Task:
        """Queue documents for indexing; with ``wait``, return once they are searchable (or failed)."""
        index = await self.get_index(tenant, name, count=False)
        _check_documents(documents, index.primary_key)
        task = await self.engine.upsert(tenant, index, documents)
        return await self._settle(tenant, name, task, wait)

    async def add_json(self, tenant: str, name: str, body: bytes, wait: bool = False) -> Task:
        """:meth:`add_documents` for a request body (a JSON array of objects), passed on undecoded
        to an engine that takes it as is (:class:`JsonUpsert`)."""
        index = await self.get_index(tenant, name, count=False)
        count = check_json_documents(body, index.primary_key)
        if isinstance(self.engine, JsonUpsert):
            task = await self.engine.upsert_json(tenant, index, body, count)
        else:
            task = await self.engine.upsert(tenant, index, msgspec.json.decode(body))
        return await self._settle(tenant, name, task, wait)

    async def delete_document(self, tenant: str, name: str, doc_id: str, wait: bool = False) -> Task:
        index = await self.get_index(tenant, name, count=False)
        if not _DOC_ID.match(doc_id):
            raise Unprocessable("a document id is 1-511 letters, digits, '_' or '-'")
        task = await self.engine.delete_document(tenant, index, doc_id)
        return await self._settle(tenant, name, task, wait)

    async def task(self, tenant: str, name: str, task_id: str) -> Task:
        task = await self.engine.task(tenant, name, task_id)
        if task is None:
            raise NotFound(f"index {name!r} has no task {task_id!r}")
        return task

    async def search(self, tenant: str, name: str, request: SearchRequest) -> SearchResult:
        index = await self.get_index(tenant, name, count=False)
        return await self.engine.search(tenant, index, compile_query(request, index))

    def indexer(self, index: str, definition: IndexDefinition) -> Indexer:
        """An :class:`Indexer` that keeps ``index`` (created on first use in each tenant) current."""
        return Indexer(self, index, definition)

    async def _settle(self, tenant: str, name: str, task: Task, wait: bool) -> Task:
        if not wait:
            return task
        return await self.engine.wait(tenant, name, task.task_id, self.wait_timeout) or task


class Indexer:
    """How another capability or a plugin indexes its own records, e.g. storage's object metadata::

        objects = ctx.service("search", SearchService).indexer(
            "objects", IndexDefinition(searchable=["key", "title"], filterable=["bucket", "content_type"])
        )
        await objects.upsert(tenant, [{"id": object_id, "key": key, "bucket": bucket, ...}])
        await objects.delete(tenant, object_id)

    The index is created (or its settings brought in line) the first time this process writes to it
    for a tenant; the records then show up in ``POST /v1/indexes/objects/search`` like any others.
    """

    def __init__(self, service: SearchService, index: str, definition: IndexDefinition) -> None:
        self.service = service
        self.index = index
        self.definition = definition
        self._ready: set[str] = set()

    async def _ensure(self, tenant: str) -> None:
        if tenant not in self._ready:
            await self.service.put_index(tenant, self.index, self.definition)
            self._ready.add(tenant)

    async def upsert(self, tenant: str, documents: list[Any], wait: bool = False) -> Task:
        """Add or replace records (validated like the HTTP API's documents)."""
        await self._ensure(tenant)
        return await self.service.add_documents(tenant, self.index, documents, wait)

    async def delete(self, tenant: str, doc_id: str, wait: bool = False) -> Task:
        await self._ensure(tenant)
        return await self.service.delete_document(tenant, self.index, doc_id, wait)


def compile_query(request: SearchRequest, index: IndexInfo) -> SearchQuery:
    """Parse the filter and check every field against the index's declarations (422 naming it)."""
    clause = None
    if request.filter is not None:
        try:
            clause = parse_filter(request.filter)
        except FilterError as exc:
            raise Unprocessable(str(exc)) from None
        _require(fields_of(clause), index.filterable, "filter on", "filterable", index.name)
        if isinstance(clause, Bool) and clause.is_empty:
            clause = None
    _require(request.facets, index.filterable, "facet on", "filterable", index.name)
    sort = tuple(SortKey(spec.split(":")[0], spec.endswith(":desc")) for spec in request.sort)
    _require((key.field for key in sort), index.sortable, "sort by", "sortable", index.name)
    return SearchQuery(
        q=_CONTROL.sub(" ", request.q),
        filter=clause,
        facets=tuple(dict.fromkeys(request.facets)),
        sort=sort,
        limit=request.limit,
        offset=request.offset,
        highlight=request.highlight,
    )


def _require(fields: Any, declared: list[str], verb: str, kind: str, index: str) -> None:
    for field in fields:
        if field not in declared:
            raise Unprocessable(
                f"cannot {verb} field {field!r}: it is not {kind} in index {index!r}"
                f" (declared: {declared}); add it with PUT /v1/indexes/{index}",
                field=field,
            )


@functools.lru_cache(maxsize=64)
def _keys_decoder(primary_key: str) -> msgspec.json.Decoder[list[Any]]:
    """Decodes a JSON array of objects into their primary keys only (every other field is skipped)."""
    keyed = msgspec.defstruct("Keyed", [("key", int | str)], rename={"key": primary_key})
    return msgspec.json.Decoder(list[keyed])  # type: ignore[valid-type]


def check_json_documents(body: bytes, primary_key: str) -> int:
    """Validate a request body of documents as :func:`_check_documents` does; return how many.

    The common case, a valid array, is checked by decoding the primary keys alone. Anything msgspec
    refuses there is decoded in full and checked document by document, for the precise message.
    """
    try:
        keys = [item.key for item in _keys_decoder(primary_key).decode(body)]
    except msgspec.DecodeError:
        try:
            documents = msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from None
        if not isinstance(documents, list):
            raise Unprocessable("the body must be a JSON array of documents (objects)") from None
        _check_documents(documents, primary_key)
        return len(documents)
    if len(keys) > MAX_DOCUMENTS:
        raise Unprocessable(f"send at most {MAX_DOCUMENTS} documents per request")
    match = _DOC_ID.match
    for position, key in enumerate(keys):
        if type(key) is str:
            if not match(key):
                raise Unprocessable(
                    f"document {position}: primary key {key[:64]!r} must be 1-511 letters, digits, '_' or '-'"
                )
        elif key < 0:
            raise Unprocessable(f"document {position}: a numeric primary key must not be negative")
    return len(keys)


def _check_documents(documents: list[Any], primary_key: str) -> None:
    if len(documents) > MAX_DOCUMENTS:
        raise Unprocessable(f"send at most {MAX_DOCUMENTS} documents per request")
    for position, document in enumerate(documents):
        if not isinstance(document, dict):
            raise Unprocessable(f"document {position} is not a JSON object")
        doc_id = document.get(primary_key)
        if isinstance(doc_id, bool) or not isinstance(doc_id, int | str):
            raise Unprocessable(
                f"document {position}: the primary key {primary_key!r} is missing or not a string or integer"
            )
        if isinstance(doc_id, str) and not _DOC_ID.match(doc_id):
            raise Unprocessable(
                f"document {position}: primary key {doc_id[:64]!r} must be 1-511 letters, digits, '_' or '-'"
            )
        if isinstance(doc_id, int) and doc_id < 0:
            raise Unprocessable(f"document {position}: a numeric primary key must not be negative")
