"""The Meilisearch adapter (``APPLIANCE_MEILI_URL``), through ``meilisearch-python-sdk``'s async client.

Each tenant's index is the Meilisearch index ``<prefix>_<tenant>_<name>``: tenant ids have no ``_``,
so the uid names its tenant unambiguously, and a tenant's purge deletes exactly its own indexes.

Settings are mapped so that a query means what it means on the FTS5 adapter:

* ``searchableAttributes`` in the declared order (earlier fields weigh more on both backends);
* ``rankingRules`` put ``sort`` first, so an explicit sort orders results and relevance breaks ties;
* typo tolerance off and ``matchingStrategy: all``: every query word must match, exactly or as the
  prefix of the last word, as in FTS5;
* ``pagination.maxTotalHits`` high, so ``total`` is exact (Meilisearch's estimate is not).

A search is one ``/multi-search`` round trip carrying two queries: the page of hits, and a
``hitsPerPage: 0`` query that returns the exact ``totalHits`` and the facet counts.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import msgspec
from meilisearch_python_sdk import AsyncClient
from meilisearch_python_sdk.errors import MeilisearchApiError, MeilisearchError, MeilisearchTimeoutError
from meilisearch_python_sdk.models.index import IndexInfo as MeiliIndexInfo
from meilisearch_python_sdk.models.search import SearchParams
from meilisearch_python_sdk.models.settings import (
    Faceting,
    MeilisearchSettings,
    Pagination,
    TypoTolerance,
)
from meilisearch_python_sdk.models.task import TaskInfo, TaskResult

from appliance.core.context import BackendStatus
from appliance.core.errors import NotFound, ServiceUnavailable, Unprocessable
from appliance.search import IndexDefinition, IndexInfo, SearchQuery, SearchResult, Task, TaskStatus
from appliance.search.filters import to_meili

__all__ = ["MAX_TOTAL_HITS", "RANKING_RULES", "MeiliEngine", "index_settings", "literal_query"]

T = TypeVar("T")

MAX_TOTAL_HITS = 1_000_000
MAX_FACET_VALUES = 100
RANKING_RULES = ["sort", "words", "typo", "proximity", "attribute", "exactness"]
_STATUS: dict[str, TaskStatus] = {
    "enqueued": "enqueued",
    "processing": "processing",
    "succeeded": "succeeded",
    "failed": "failed",
    "canceled": "failed",
}
_CALL_TIMEOUT_S = 10
_LIST_PAGE = 1000
_SETTINGS_TTL_S = 5.0
_NEGATION = re.compile(r"(?:^|(?<=\s))-+")


def index_settings(definition: IndexDefinition) -> MeilisearchSettings:
    """The Meilisearch settings an index definition maps to (see the module docstring)."""
    return MeilisearchSettings(
        searchable_attributes=list(definition.searchable),
        filterable_attributes=list(definition.filterable),
        sortable_attributes=list(definition.sortable),
        displayed_attributes=["*"],
        ranking_rules=list(RANKING_RULES),
        typo_tolerance=TypoTolerance(enabled=False),
        pagination=Pagination(max_total_hits=MAX_TOTAL_HITS),
        faceting=Faceting(max_values_per_facet=MAX_FACET_VALUES),
    )


class MeiliEngine:
    """The ``SearchEngine`` port on a Meilisearch server."""

    backend = "meilisearch"
    mode: Literal["embedded", "server"] = "server"

    def __init__(self, url: str, api_key: str = "", prefix: str = "appliance") -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key or None
        self.prefix = prefix
        self._client: AsyncClient | None = None
        self._definitions: dict[str, tuple[float, IndexInfo]] = {}

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            raise ServiceUnavailable("the meilisearch client is not started")
        return self._client

    def uid(self, tenant: str, name: str) -> str:
        """The physical index uid: the tenant is part of it."""
        return f"{self.prefix}_{tenant}_{name}"

    async def start(self) -> None:
        self._client = AsyncClient(self.url, self.api_key, timeout=_CALL_TIMEOUT_S)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def health(self) -> BackendStatus:
        status = BackendStatus(name="search", backend=self.backend, mode=self.mode, ok=False)
        try:
            health = await self.client.health()
            version = await self.client.get_version()
        except (MeilisearchError, OSError) as exc:
            status.detail = (
                f"meilisearch at {self.url} does not answer ({exc}); start it or fix APPLIANCE_MEILI_URL"
            )
            return status
        status.ok = health.status == "available"
        status.version = version.pkg_version
        status.detail = f"meilisearch at {self.url}: {health.status}"
        return status

    @asynccontextmanager
    async def _calling(self) -> AsyncIterator[None]:
        """Map transport failures (the SDK wraps them in ``MeilisearchError``) to a 503 naming Meilisearch."""
        try:
            yield
        except (MeilisearchApiError, _StillRunning):
            raise
        except MeilisearchTimeoutError as exc:
            raise ServiceUnavailable(f"meilisearch at {self.url} did not finish in time: {exc}") from None
        except (MeilisearchError, OSError) as exc:
            raise ServiceUnavailable(f"meilisearch at {self.url} is unavailable: {exc}") from None

    async def _call(self, call: Awaitable[T]) -> T:
        async with self._calling():
            return await call

    async def _settled(self, info: TaskInfo) -> TaskResult:
        result = await self._call(
            self.client.wait_for_task(info.task_uid, timeout_in_ms=_CALL_TIMEOUT_S * 1000)
        )
        if result.status != "succeeded":
            raise Unprocessable(f"meilisearch refused the change: {_error(result)}")
        return result

    # --- indexes --------------------------------------------------------------------------------

    async def put_index(self, tenant: str, name: str, definition: IndexDefinition) -> tuple[IndexInfo, bool]:
        uid = self.uid(tenant, name)
        existing = await self._raw_index(uid)
        created = existing is None
        if existing is None:
            await self._call(
                self.client.create_index(uid, definition.primary_key, timeout_in_ms=_CALL_TIMEOUT_S * 1000)
            )
        elif existing.primary_key != definition.primary_key:
            await self._call(self.client.index(uid).update(primary_key=definition.primary_key))
        await self._settled(
            await self._call(self.client.index(uid).update_settings(index_settings(definition)))
        )
        self._definitions.pop(uid, None)
        info = await self.get_index(tenant, name)
        if info is None:
            raise ServiceUnavailable(f"meilisearch lost index {uid!r} right after creating it")
        return info, created

    async def _raw_index(self, uid: str) -> MeiliIndexInfo | None:
        try:
            index = await self._call(self.client.get_index(uid))
        except MeilisearchApiError as exc:
            if exc.status_code == 404:
                return None
            raise ServiceUnavailable(
                f"meilisearch at {self.url} refused to show index {uid}: {exc.message}"
            ) from None
        never = datetime.fromtimestamp(0, UTC)
        return MeiliIndexInfo(
            uid=uid,
            primary_key=index.primary_key,
            created_at=index.created_at or never,
            updated_at=index.updated_at or never,
        )

    async def get_index(self, tenant: str, name: str, *, count: bool = True) -> IndexInfo | None:
        uid = self.uid(tenant, name)
        cached = self._definitions.get(uid)
        if not count and cached is not None and cached[0] > time.monotonic():
            return msgspec.structs.replace(cached[1])
        raw = await self._raw_index(uid)
        if raw is None:
            self._definitions.pop(uid, None)
            return None
        index = self.client.index(uid)
        info = _info(name, raw, await self._call(index.get_settings()))
        # Another node may change the settings: the cache only spares the hot paths a few round trips.
        self._definitions[uid] = (time.monotonic() + _SETTINGS_TTL_S, info)
        if count:
            info = msgspec.structs.replace(
                info, documents=(await self._call(index.get_stats())).number_of_documents
            )
        return info

    async def list_indexes(self, tenant: str, after: str, limit: int) -> list[IndexInfo]:
        names = sorted(n for n in await self._names(tenant) if n > after)[:limit]
        infos = []
        for name in names:
            info = await self.get_index(tenant, name)
            if info is not None:
                info.documents = None
                infos.append(info)
        return infos

    async def _names(self, tenant: str) -> list[str]:
        """The tenant's index names: every uid with its prefix, paged through."""
        mine = self.uid(tenant, "")
        names: list[str] = []
        offset = 0
        while True:
            page = await self._call(self.client.get_raw_indexes(offset=offset, limit=_LIST_PAGE)) or []
            names += [i.uid[len(mine) :] for i in page if i.uid.startswith(mine)]
            offset += len(page)
            if len(page) < _LIST_PAGE:
                return names

    async def delete_index(self, tenant: str, name: str) -> bool:
        uid = self.uid(tenant, name)
        self._definitions.pop(uid, None)
        if await self._raw_index(uid) is None:
            return False
        await self._settled(await self._call(self.client.index(uid).delete()))
        return True

    async def purge_tenant(self, tenant: str) -> None:
        for name in await self._names(tenant):
            await self.delete_index(tenant, name)

    # --- tasks ----------------------------------------------------------------------------------

    async def upsert(self, tenant: str, index: IndexInfo, documents: list[dict[str, Any]]) -> Task:
        info = await self._call(
            self.client.index(self.uid(tenant, index.name)).add_documents(documents, index.primary_key)
        )
        return _task_info(index.name, info, len(documents))

    async def delete_document(self, tenant: str, index: IndexInfo, doc_id: str) -> Task:
        info = await self._call(self.client.index(self.uid(tenant, index.name)).delete_document(doc_id))
        return _task_info(index.name, info, 1)

    async def task(self, tenant: str, index: str, task_id: str) -> Task | None:
        if not task_id.isdigit():
            return None
        try:
            result = await self._call(self.client.get_task(int(task_id)))
        except MeilisearchApiError as exc:
            if exc.status_code == 404:
                return None
            raise
        # Another tenant's task (or another index's) is not visible: same answer as a missing one.
        if result.index_uid != self.uid(tenant, index):
            return None
        return _task_result(index, result)

    async def wait(self, tenant: str, index: str, task_id: str, timeout: float) -> Task | None:
        task = await self.task(tenant, index, task_id)
        if task is None or task.finished:
            return task
        try:
            result = await self._call(self._wait_quietly(int(task_id), timeout))
        except _StillRunning:
            return await self.task(tenant, index, task_id)
        return _task_result(index, result)

    async def _wait_quietly(self, task_uid: int, timeout: float) -> TaskResult:
        """``wait_for_task``, where running out of time is an answer (still running), not an outage."""
        try:
            return await self.client.wait_for_task(
                task_uid, timeout_in_ms=int(timeout * 1000), interval_in_ms=20
            )
        except MeilisearchTimeoutError:
            raise _StillRunning from None

    # --- search ---------------------------------------------------------------------------------

    def search_params(self, tenant: str, index: IndexInfo, query: SearchQuery) -> list[SearchParams]:
        """The two queries of one search: the page of hits, then the exact total and facets."""
        uid = self.uid(tenant, index.name)
        filter_ = to_meili(query.filter) if query.filter is not None else None
        common: dict[str, Any] = {
            "index_uid": uid,
            "query": literal_query(query.q),
            "filter": filter_ or None,
            "matching_strategy": "all",
        }
        hits = SearchParams(
            **common,
            offset=query.offset,
            limit=query.limit,
            sort=[f"{k.field}:{'desc' if k.descending else 'asc'}" for k in query.sort] or None,
            show_ranking_score=True,
            attributes_to_highlight=list(index.searchable) if query.highlight else None,
            highlight_pre_tag="<mark>",
            highlight_post_tag="</mark>",
        )
        counts = SearchParams(**common, page=1, hits_per_page=0, facets=list(query.facets) or None)
        return [hits, counts]

    async def search(self, tenant: str, index: IndexInfo, query: SearchQuery) -> SearchResult:
        started = time.perf_counter()
        try:
            results = await self._call(self.client.multi_search(self.search_params(tenant, index, query)))
        except MeilisearchApiError as exc:
            if exc.status_code == 404:
                raise NotFound(f"index {index.name!r} does not exist") from None
            raise Unprocessable(f"meilisearch rejected the search: {exc.message}") from None
        assert isinstance(results, list)
        page, counts = results
        return SearchResult(
            hits=[_hit(h, index, query.highlight) for h in page.hits],
            total=int(counts.total_hits or 0),
            facets={f: dict((counts.facet_distribution or {}).get(f, {})) for f in query.facets},
            took_ms=round((time.perf_counter() - started) * 1000, 3),
        )


class _StillRunning(Exception):
    """A task did not finish within the wait."""


def literal_query(q: str) -> str:
    """The user's text with Meilisearch's query operators neutralised, so it is searched literally.

    Meilisearch reads ``"..."`` as a phrase and a leading ``-`` as "exclude this word"; the FTS5
    adapter treats both as plain separators, so they become spaces here too.
    """
    return _NEGATION.sub(" ", q.replace('"', " "))


def _hit(raw: dict[str, Any], index: IndexInfo, highlight: bool) -> dict[str, Any]:
    formatted = raw.pop("_formatted", None) or {}
    score = raw.pop("_rankingScore", 0.0)
    for key in [k for k in raw if k.startswith("_") and k not in index.searchable]:
        raw.pop(key)
    hit = {**raw, "_score": float(score)}
    if highlight:
        hit["_highlight"] = {
            f: _flat(formatted.get(f, raw[f])) for f in index.searchable if raw.get(f) is not None
        }
    return hit


def _flat(value: Any) -> str:
    """A highlighted value as text: lists joined by spaces, as the FTS5 adapter shows them."""
    if isinstance(value, list):
        return " ".join(t for t in (_flat(v) for v in value) if t)
    if isinstance(value, dict):
        return " ".join(t for t in (_flat(v) for v in value.values()) if t)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _info(name: str, raw: MeiliIndexInfo, settings: MeilisearchSettings) -> IndexInfo:
    searchable = [a for a in settings.searchable_attributes or [] if a != "*"]
    filterable = [a for a in settings.filterable_attributes or [] if isinstance(a, str)]
    return IndexInfo(
        name=name,
        primary_key=raw.primary_key or "id",
        searchable=searchable,
        filterable=sorted(filterable),
        sortable=sorted(settings.sortable_attributes or []),
        created_at=raw.created_at.timestamp(),
        updated_at=raw.updated_at.timestamp(),
    )


def _task_info(index: str, info: TaskInfo, documents: int) -> Task:
    return Task(
        task_id=str(info.task_uid),
        index=index,
        kind="documents.delete" if "delet" in str(info.task_type).lower() else "documents.upsert",
        status=_STATUS.get(info.status, "enqueued"),
        documents=documents,
        enqueued_at=info.enqueued_at.timestamp(),
    )


def _task_result(index: str, result: TaskResult) -> Task:
    details = result.details or {}
    deleting = "delet" in str(result.task_type).lower()
    count = details.get("providedIds" if deleting else "receivedDocuments") or 0
    return Task(
        task_id=str(result.uid),
        index=index,
        kind="documents.delete" if deleting else "documents.upsert",
        status=_STATUS.get(result.status, "enqueued"),
        documents=int(count),
        error=_error(result) if result.status in ("failed", "canceled") else None,
        enqueued_at=result.enqueued_at.timestamp(),
        started_at=result.started_at.timestamp() if result.started_at else None,
        finished_at=result.finished_at.timestamp() if result.finished_at else None,
    )


def _error(result: TaskResult) -> str:
    if result.status == "canceled":
        return "the task was canceled"
    error = result.error or {}
    return f"{error.get('code', 'error')}: {error.get('message', 'meilisearch did not say why')}"
