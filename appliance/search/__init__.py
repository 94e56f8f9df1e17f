"""Full-text search: the ``SearchEngine`` port, its records, and ``install``.

Two adapters implement the port: ``sqlite_fts`` (SQLite FTS5 in ``data_dir/search.db``, the embedded
default) and ``meili`` (Meilisearch, when ``APPLIANCE_MEILI_URL`` is set). A plugin may contribute
another through ``APPLIANCE_BACKENDS=search=<name>``. Both built-in adapters pass the same contract
suite (tests/contract/test_search.py); the service on top (:mod:`appliance.search.service`) validates
every request the same way whichever adapter answers it.

Other capabilities and plugins index their own records through the ``search`` service: ``ctx.service(
"search", SearchService).indexer(name, definition)`` returns an ``Indexer`` that creates the index in
each tenant on first use and upserts or deletes records (see :class:`appliance.search.service.Indexer`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import msgspec
from litestar.types import ControllerRouterHandler

from appliance.core.context import BackendStatus, Context
from appliance.search.filters import FIELD_PATTERN, Clause

__all__ = [
    "DocId",
    "FieldName",
    "IndexDefinition",
    "IndexInfo",
    "IndexName",
    "JsonUpsert",
    "SearchEngine",
    "SearchQuery",
    "SearchRequest",
    "SearchResult",
    "SortKey",
    "Task",
    "build_engine",
    "install",
]

INDEX_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
DOC_ID_PATTERN = r"^[A-Za-z0-9_-]{1,511}$"  # Meilisearch's rule, applied on every backend

FieldName = Annotated[
    str, msgspec.Meta(pattern=FIELD_PATTERN, description="letters, digits and _; 1 to 64 characters")
]
IndexName = Annotated[
    str,
    msgspec.Meta(pattern=INDEX_NAME_PATTERN, description="letters, digits, _ and -; 1 to 64 characters"),
]
DocId = Annotated[str, msgspec.Meta(pattern=DOC_ID_PATTERN)]
SortSpec = Annotated[
    str,
    msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}:(asc|desc)$", description="field:asc or field:desc"),
]
TaskStatus = Literal["enqueued", "processing", "succeeded", "failed"]
TaskKind = Literal["documents.upsert", "documents.delete"]


class IndexDefinition(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The body of ``PUT /v1/indexes/{index}``.

    ``searchable`` is in order of importance: earlier fields weigh more in ranking (on every backend).
    Only ``filterable`` fields may be filtered or faceted on, only ``sortable`` ones sorted by.
    """

    primary_key: FieldName = "id"
    searchable: Annotated[list[FieldName], msgspec.Meta(min_length=1, max_length=32)]
    filterable: Annotated[list[FieldName], msgspec.Meta(max_length=64)] = []
    sortable: Annotated[list[FieldName], msgspec.Meta(max_length=16)] = []

    def normalised(self) -> IndexDefinition:
        """Duplicates dropped, order kept (order is the searchable fields' weight)."""
        return IndexDefinition(
            primary_key=self.primary_key,
            searchable=list(dict.fromkeys(self.searchable)),
            filterable=list(dict.fromkeys(self.filterable)),
            sortable=list(dict.fromkeys(self.sortable)),
        )


class IndexInfo(msgspec.Struct, kw_only=True):
    """An index as the API shows it. ``documents`` is filled in by ``get`` (``None`` in listings)."""

    name: str
    primary_key: str
    searchable: list[str]
    filterable: list[str]
    sortable: list[str]
    created_at: float
    updated_at: float
    documents: int | None = None

    @property
    def definition(self) -> IndexDefinition:
        return IndexDefinition(
            primary_key=self.primary_key,
            searchable=list(self.searchable),
            filterable=list(self.filterable),
            sortable=list(self.sortable),
        )


class Task(msgspec.Struct, kw_only=True):
    """An indexing task: documents become searchable once ``status`` is ``succeeded``."""

    task_id: str
    index: str
    kind: TaskKind
    status: TaskStatus
    documents: int
    error: str | None = None
    enqueued_at: float
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed")


class SearchRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The body of ``POST /v1/indexes/{index}/search``."""

    q: Annotated[str, msgspec.Meta(max_length=1000)] = ""
    filter: dict[str, Any] | None = None
    facets: Annotated[list[FieldName], msgspec.Meta(max_length=32)] = []
    sort: Annotated[list[SortSpec], msgspec.Meta(max_length=8)] = []
    limit: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 20
    offset: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 0
    highlight: bool = False


class SortKey(msgspec.Struct, frozen=True):
    field: str
    descending: bool


class SearchQuery(msgspec.Struct, frozen=True, kw_only=True):
    """A validated search, as the adapters receive it: every field named is declared for its use."""

    q: str
    filter: Clause | None
    facets: tuple[str, ...]
    sort: tuple[SortKey, ...]
    limit: int
    offset: int
    highlight: bool


class SearchResult(msgspec.Struct, kw_only=True):
    """``hits`` are the stored documents plus ``_score`` (higher is better; the scale is the
    backend's) and ``_highlight`` when asked. ``total`` is exact. ``facets`` is {field: {value: count}}."""

    hits: list[dict[str, Any]]
    total: int
    facets: dict[str, dict[str, int]]
    took_ms: float


class SearchEngine(Protocol):
    """The search port. Every method is scoped to ``tenant``: nothing of another tenant is visible.

    Index names are validated by the caller; documents are JSON objects whose primary key value
    matches ``DOC_ID_PATTERN`` (the service checks that before calling :meth:`upsert`).
    """

    backend: str
    mode: Literal["embedded", "server"]

    async def start(self) -> None:
        """Connect, create what is missing, resume queued tasks."""

    async def close(self) -> None:
        """Stop background work and release connections; queued tasks survive a restart."""

    async def health(self) -> BackendStatus:
        """Whether the backend answers; ``detail`` says how to fix it when it does not."""

    async def put_index(self, tenant: str, name: str, definition: IndexDefinition) -> tuple[IndexInfo, bool]:
        """Create the index, or change its settings (re-indexing what it holds); ``True`` if created.

        Raises:
            Conflict: the primary key changes while the index holds documents.
        """

    async def get_index(self, tenant: str, name: str, *, count: bool = True) -> IndexInfo | None:
        """The index, with its document count unless ``count`` is false (the hot paths), or ``None``.

        Without ``count`` an adapter may answer from a short-lived cache of the settings."""

    async def list_indexes(self, tenant: str, after: str, limit: int) -> list[IndexInfo]:
        """Up to ``limit`` indexes with names greater than ``after``, by name."""

    async def delete_index(self, tenant: str, name: str) -> bool:
        """Delete the index and its documents; ``False`` if there was none."""

    async def upsert(self, tenant: str, index: IndexInfo, documents: list[dict[str, Any]]) -> Task:
        """Queue documents to add or replace (whole documents, by primary key; the last one wins)."""

    async def delete_document(self, tenant: str, index: IndexInfo, doc_id: str) -> Task:
        """Queue the deletion of one document; deleting a missing one succeeds."""

    async def task(self, tenant: str, index: str, task_id: str) -> Task | None:
        """The task, or ``None`` if this tenant's index has no such task."""

    async def wait(self, tenant: str, index: str, task_id: str, timeout: float) -> Task | None:
        """The task once finished, or as it stands after ``timeout`` seconds."""

    async def search(self, tenant: str, index: IndexInfo, query: SearchQuery) -> SearchResult:
        """Run a validated query: documents matching every word of ``q`` (the last one as a prefix)
        and the filter, ranked BM25-like with earlier searchable fields weighing more, or by ``sort``."""

    async def purge_tenant(self, tenant: str) -> None:
        """Delete every index (and task) of ``tenant``."""


@runtime_checkable
class JsonUpsert(Protocol):
    """An optional fast path of the port: documents still as the JSON array the client sent."""

    async def upsert_json(self, tenant: str, index: IndexInfo, payload: bytes, count: int) -> Task:
        """Like :meth:`SearchEngine.upsert`, for ``count`` documents already validated by the
        service (objects, each with a valid primary key), without decoding them here."""


def build_engine(ctx: Context) -> SearchEngine:
    """The adapter the configuration picks: a plugin's, else Meilisearch when its URL is set, else FTS5."""
    chosen = ctx.plugin_backend("search")
    if chosen is not None:
        engine: SearchEngine = chosen
        return engine
    if ctx.settings.meili_url:
        from appliance.search.meili import MeiliEngine

        return MeiliEngine(ctx.settings.meili_url, ctx.settings.meili_key, ctx.settings.meili_index_prefix)
    from appliance.search.sqlite_fts import SqliteFtsEngine

    return SqliteFtsEngine(ctx.settings.data_path / "search.db")


def install(ctx: Context) -> list[ControllerRouterHandler]:
    """Build the engine, start it with the app, purge a deleted tenant's indexes, serve the routes."""
    from appliance.search.api import IndexController
    from appliance.search.service import SearchService

    engine = build_engine(ctx)
    service = SearchService(engine)
    ctx.provide("search", service)
    ctx.on_startup(engine.start)
    ctx.on_shutdown(engine.close)
    ctx.health.append(engine.health)
    ctx.tenants.purgers.append(engine.purge_tenant)
    return [IndexController]
