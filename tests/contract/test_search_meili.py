"""The Meilisearch adapter without a Meilisearch server: the requests it sends, the responses it parses.

No Meilisearch server can be installed on the CI machines, so a small fake speaking Meilisearch's
documented HTTP API (https://www.meilisearch.com/docs/reference/api) runs on loopback: it records
every request and answers with the documented JSON shapes (summarized tasks, task objects, index
objects, settings, stats, multi-search results, error objects). Against a real server, the shared
contract suite (test_search.py) runs the same adapter whenever ``APPLIANCE_MEILI_URL`` is set.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
import uvicorn
from litestar.testing import AsyncTestClient

from appliance.app import create_app
from appliance.core.errors import NotFound, ServiceUnavailable, Unprocessable
from appliance.search import IndexDefinition, SearchQuery, SearchRequest, SortKey
from appliance.search.filters import parse_filter, to_meili
from appliance.search.meili import MeiliEngine, literal_query
from appliance.search.service import SearchService
from tests.conftest import ROOT, make_settings

STAMP = "2026-01-02T03:04:05.123456Z"
DEFINITION = IndexDefinition(
    searchable=["title", "overview"], filterable=["genres", "year"], sortable=["year", "title"]
)


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class FakeMeili:
    """Meilisearch's HTTP API, as documented, over in-memory state."""

    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    indexes: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: dict[int, dict[str, Any]] = field(default_factory=dict)
    polls_before_done: int = 0
    fail_next_task: dict[str, Any] | None = None
    search_results: list[dict[str, Any]] | None = None

    def reset(self) -> None:
        for name, value in FakeMeili(url=self.url).__dict__.items():
            setattr(self, name, value)

    def sent(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path == path]

    def add_index(self, uid: str, primary_key: str | None = "id") -> None:
        self.indexes[uid] = {"uid": uid, "primaryKey": primary_key, "createdAt": STAMP, "updatedAt": STAMP}
        self.settings[uid] = {
            "searchableAttributes": ["*"], "filterableAttributes": [], "sortableAttributes": [],
            "displayedAttributes": ["*"], "rankingRules": ["words", "typo", "proximity", "attribute", "sort", "exactness"],
        }  # fmt: skip
        self.documents[uid] = {}

    def task(self, uid: str | None, kind: str, details: dict[str, Any] | None = None) -> tuple[int, Any]:
        number = len(self.tasks)
        error, self.fail_next_task = self.fail_next_task, None
        self.tasks[number] = {
            "uid": number, "batchUid": number, "indexUid": uid, "type": kind, "canceledBy": None,
            "details": details or {}, "error": error, "duration": "PT0.001S", "enqueuedAt": STAMP,
            "startedAt": STAMP, "finishedAt": STAMP, "status": "failed" if error else "succeeded",
            "polls": 0,
        }  # fmt: skip
        summary = {
            "taskUid": number,
            "indexUid": uid,
            "status": "enqueued",
            "type": kind,
            "enqueuedAt": STAMP,
        }
        return 202, summary

    def get_task(self, number: int) -> tuple[int, Any]:
        if number not in self.tasks:
            return _error(404, "task_not_found", f"Task `{number}` not found.")
        task = dict(self.tasks[number])
        self.tasks[number]["polls"] += 1
        if task.pop("polls") < self.polls_before_done:
            task.update(status="processing", finishedAt=None, duration=None)
        return 200, task

    def route(self, method: str, parts: list[str], query: dict[str, str], body: Any) -> tuple[int, Any]:
        match method, parts:
            case "GET", ["health"]:
                return 200, {"status": "available"}
            case "GET", ["version"]:
                return 200, {
                    "commitSha": "b46889b5f0f2f8b91438a08a358ba8f05fc09fc1",
                    "commitDate": STAMP,
                    "pkgVersion": "1.12.3",
                }
            case "GET", ["tasks", number]:
                return self.get_task(int(number))
            case "GET", ["indexes"]:
                offset, limit = int(query.get("offset", 0)), int(query.get("limit", 20))
                uids = sorted(self.indexes)
                page = [self.indexes[u] for u in uids[offset : offset + limit]]
                return 200, {"results": page, "offset": offset, "limit": limit, "total": len(uids)}
            case "POST", ["indexes"]:
                self.add_index(body["uid"], body.get("primaryKey"))
                return self.task(body["uid"], "indexCreation", {"primaryKey": body.get("primaryKey")})
            case "POST", ["multi-search"]:
                missing = [q["indexUid"] for q in body["queries"] if q["indexUid"] not in self.indexes]
                if missing:
                    return _error(
                        404, "index_not_found", f"Inside `.queries[0]`: Index `{missing[0]}` not found."
                    )
                return 200, {"results": self.search_results or [_empty(q) for q in body["queries"]]}
            case _, ["indexes", uid, *_] if uid not in self.indexes:
                return _error(404, "index_not_found", f"Index `{uid}` not found.")
            case "GET", ["indexes", uid]:
                return 200, self.indexes[uid]
            case "PATCH", ["indexes", uid]:
                self.indexes[uid]["primaryKey"] = body["primaryKey"]
                return self.task(uid, "indexUpdate", {"primaryKey": body["primaryKey"]})
            case "DELETE", ["indexes", uid]:
                del self.indexes[uid]
                return self.task(uid, "indexDeletion", {"deletedDocuments": 0})
            case "GET", ["indexes", uid, "settings"]:
                return 200, self.settings[uid]
            case "PATCH", ["indexes", uid, "settings"]:
                self.settings[uid].update(body)
                return self.task(uid, "settingsUpdate", body)
            case "GET", ["indexes", uid, "stats"]:
                count = len(self.documents[uid])
                return 200, {"numberOfDocuments": count, "isIndexing": False, "fieldDistribution": {}}
            case "POST", ["indexes", uid, "documents"]:
                key = query.get("primaryKey") or self.indexes[uid]["primaryKey"]
                self.documents[uid].update({str(d[key]): d for d in body})
                return self.task(
                    uid,
                    "documentAdditionOrUpdate",
                    {"receivedDocuments": len(body), "indexedDocuments": None},
                )
            case "DELETE", ["indexes", uid, "documents", doc_id]:
                self.documents[uid].pop(doc_id, None)
                return self.task(uid, "documentDeletion", {"providedIds": 1, "deletedDocuments": None})
        return _error(404, "not_found", "no such route in the fake")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        query = dict(parse_qsl(scope["query_string"].decode()))
        body = json.loads(raw) if raw else None
        path = scope["path"]
        self.requests.append(Recorded(scope["method"], path, query, body))
        status, payload = self.route(scope["method"], [p for p in path.split("/") if p], query, body)
        encoded = json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(encoded)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": encoded})


def _error(status: int, code: str, message: str) -> tuple[int, Any]:
    kind = "invalid_request" if status < 500 else "internal"
    return status, {
        "message": message,
        "code": code,
        "type": kind,
        "link": f"https://docs.meilisearch.com/errors#{code}",
    }


def _empty(query: dict[str, Any]) -> dict[str, Any]:
    return {"indexUid": query["indexUid"], "hits": [], "query": query.get("q") or "", "processingTimeMs": 0,
            "limit": query.get("limit", 20), "offset": query.get("offset", 0), "estimatedTotalHits": 0}  # fmt: skip


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeMeili]:
    """The fake, served by uvicorn on a loopback port from its own thread (and event loop), so an app
    under test that runs in another thread or loop can reach it too."""
    server_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server_socket.bind(("127.0.0.1", 0))
    server_socket.listen(64)
    meili = FakeMeili(url=f"http://127.0.0.1:{server_socket.getsockname()[1]}")
    config = uvicorn.Config(
        meili, http="h11", ws="none", lifespan="off", log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [server_socket]}, daemon=True)
    thread.start()
    try:
        yield meili
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        server_socket.close()


@pytest.fixture
def fake(fake_server: FakeMeili) -> FakeMeili:
    fake_server.reset()
    return fake_server


@pytest.fixture
async def engine(fake: FakeMeili) -> AsyncIterator[MeiliEngine]:
    meili = MeiliEngine(fake.url, "master-key", prefix="pfx")
    await meili.start()
    try:
        yield meili
    finally:
        await meili.close()


async def test_put_index_creates_the_tenant_index_and_maps_settings(
    fake: FakeMeili, engine: MeiliEngine
) -> None:
    info, created = await engine.put_index("acme", "movies", DEFINITION)
    assert created and info.name == "movies" and info.documents == 0
    assert fake.sent("POST", "/indexes")[0].body == {"uid": "pfx_acme_movies", "primaryKey": "id"}
    assert fake.sent("PATCH", "/indexes/pfx_acme_movies/settings")[0].body == {
        "searchableAttributes": ["title", "overview"],
        "filterableAttributes": ["genres", "year"],
        "sortableAttributes": ["year", "title"],
        "displayedAttributes": ["*"],
        "rankingRules": ["sort", "words", "typo", "proximity", "attribute", "exactness"],
        "typoTolerance": {"enabled": False},
        "pagination": {"maxTotalHits": 1_000_000},
        "faceting": {"maxValuesPerFacet": 100},
    }
    assert info.searchable == ["title", "overview"] and info.filterable == ["genres", "year"]
    assert info.created_at == pytest.approx(1767323045.123456)
    _, again = await engine.put_index(
        "acme", "movies", IndexDefinition(searchable=["title"], primary_key="slug")
    )
    assert not again
    assert fake.sent("PATCH", "/indexes/pfx_acme_movies")[0].body == {"primaryKey": "slug"}


async def test_a_failed_settings_task_is_422_with_meilisearch_reason(
    fake: FakeMeili, engine: MeiliEngine
) -> None:
    fake.add_index("pfx_acme_movies")
    fake.fail_next_task = {"message": "Attribute `x` is reserved.", "code": "invalid_settings_filterable_attributes",
                           "type": "invalid_request", "link": "https://docs.meilisearch.com/errors"}  # fmt: skip
    with pytest.raises(
        Unprocessable, match="invalid_settings_filterable_attributes: Attribute `x` is reserved"
    ):
        await engine.put_index("acme", "movies", DEFINITION)


async def test_documents_and_tasks(fake: FakeMeili, engine: MeiliEngine) -> None:
    info, _ = await engine.put_index("acme", "movies", DEFINITION)
    docs: list[dict[str, Any]] = [{"id": "m1", "title": "Dune"}, {"id": 2, "title": "Arrival"}]
    task = await engine.upsert("acme", info, docs)
    sent = fake.sent("POST", "/indexes/pfx_acme_movies/documents")[0]
    assert sent.body == docs and sent.query == {"primaryKey": "id"}
    assert task.status == "enqueued" and task.documents == 2 and task.task_id.isdigit()
    fake.polls_before_done = 2
    done = await engine.wait("acme", "movies", task.task_id, timeout=5)
    assert done is not None and done.status == "succeeded" and done.documents == 2
    assert done.finished_at is not None and done.kind == "documents.upsert"
    deleted = await engine.delete_document("acme", info, "m1")
    assert fake.sent("DELETE", "/indexes/pfx_acme_movies/documents/m1")
    assert (await engine.task("acme", "movies", deleted.task_id)).kind == "documents.delete"  # type: ignore[union-attr]
    assert await engine.task("acme", "movies", "999") is None
    assert await engine.task("acme", "movies", "task_abc") is None
    assert await engine.task("globex", "movies", task.task_id) is None  # another tenant's uid
    assert await engine.task("acme", "books", task.task_id) is None  # another index
    assert (await engine.get_index("acme", "movies")).documents == 1  # type: ignore[union-attr]


async def test_a_wait_that_runs_out_returns_the_running_task(fake: FakeMeili, engine: MeiliEngine) -> None:
    info, _ = await engine.put_index("acme", "movies", DEFINITION)
    fake.polls_before_done = 10**6
    task = await engine.upsert("acme", info, [{"id": "m1"}])
    still = await engine.wait("acme", "movies", task.task_id, timeout=0.2)
    assert still is not None and still.status == "processing" and still.finished_at is None


async def test_a_failed_task_carries_meilisearch_error(fake: FakeMeili, engine: MeiliEngine) -> None:
    info, _ = await engine.put_index("acme", "movies", DEFINITION)
    fake.fail_next_task = {"message": "Document identifier `\"a b\"` is invalid.", "code": "invalid_document_id",
                           "type": "invalid_request", "link": "https://docs.meilisearch.com/errors#invalid_document_id"}  # fmt: skip
    task = await engine.upsert("acme", info, [{"id": "ok"}])
    done = await engine.wait("acme", "movies", task.task_id, timeout=5)
    assert done is not None and done.status == "failed"
    assert done.error == 'invalid_document_id: Document identifier `"a b"` is invalid.'


async def test_search_sends_two_queries_and_parses_the_results(fake: FakeMeili, engine: MeiliEngine) -> None:
    info, _ = await engine.put_index("acme", "movies", DEFINITION)
    fake.search_results = [
        {"indexUid": "pfx_acme_movies", "query": "dune", "processingTimeMs": 1, "limit": 2, "offset": 4,
         "estimatedTotalHits": 7,
         "hits": [{"id": "m1", "title": "Dune", "overview": None, "genres": ["scifi"], "_rankingScore": 0.97,
                   "_formatted": {"id": "m1", "title": "<mark>Dune</mark>", "overview": None, "genres": ["scifi"]}},
                  {"id": "m2", "title": "Dune: Part Two", "overview": ["desert", "dune sea"], "_rankingScore": 0.5,
                   "_formatted": {"id": "m2", "title": "<mark>Dune</mark>: Part Two",
                                  "overview": ["desert", "<mark>dune</mark> sea"]}}]},
        {"indexUid": "pfx_acme_movies", "query": "dune", "processingTimeMs": 1, "hitsPerPage": 0, "page": 1,
         "totalPages": 0, "totalHits": 1234, "hits": [],
         "facetDistribution": {"genres": {"scifi": 2, "drama": 1}}, "facetStats": {}},
    ]  # fmt: skip
    query = SearchQuery(
        q='-dune "sea',
        filter=parse_filter({"bool": {"must": [{"term": {"genres": 'sci"fi'}}], "must_not": [{"range": {"year": {"lt": 1990}}}]}}),
        facets=("genres",),
        sort=(SortKey("year", True), SortKey("title", False)),
        limit=2,
        offset=4,
        highlight=True,
    )  # fmt: skip
    result = await engine.search("acme", info, query)
    hits_query, count_query = fake.sent("POST", "/multi-search")[0].body["queries"]
    expected_filter = '(genres = "sci\\"fi" AND NOT ((year < 1990.0)))'
    assert hits_query["indexUid"] == count_query["indexUid"] == "pfx_acme_movies"
    assert hits_query["q"] == count_query["q"] == literal_query('-dune "sea')
    assert hits_query["filter"] == count_query["filter"] == expected_filter
    assert hits_query["matchingStrategy"] == count_query["matchingStrategy"] == "all"
    assert (hits_query["offset"], hits_query["limit"]) == (4, 2)
    assert hits_query["sort"] == ["year:desc", "title:asc"]
    assert hits_query["showRankingScore"] is True
    assert hits_query["attributesToHighlight"] == ["title", "overview"]
    assert (hits_query["highlightPreTag"], hits_query["highlightPostTag"]) == ("<mark>", "</mark>")
    assert (count_query["page"], count_query["hitsPerPage"], count_query["facets"]) == (1, 0, ["genres"])
    assert result.total == 1234 and result.facets == {"genres": {"scifi": 2, "drama": 1}}
    first, second = result.hits
    assert first == {"id": "m1", "title": "Dune", "overview": None, "genres": ["scifi"], "_score": 0.97,
                     "_highlight": {"title": "<mark>Dune</mark>"}}  # fmt: skip
    assert second["_highlight"] == {
        "title": "<mark>Dune</mark>: Part Two",
        "overview": "desert <mark>dune</mark> sea",
    }
    assert "_formatted" not in second and "_rankingScore" not in second


async def test_search_without_extras_sends_no_filter_sort_or_highlight(
    fake: FakeMeili, engine: MeiliEngine
) -> None:
    info, _ = await engine.put_index("acme", "movies", DEFINITION)
    query = SearchQuery(q="", filter=None, facets=(), sort=(), limit=20, offset=0, highlight=False)
    result = await engine.search("acme", info, query)
    hits_query, count_query = fake.sent("POST", "/multi-search")[0].body["queries"]
    assert hits_query.get("filter") is None and hits_query.get("sort") is None
    assert hits_query.get("attributesToHighlight") is None and count_query.get("facets") is None
    assert result.hits == [] and result.total == 0 and result.facets == {}


async def test_service_rejects_undeclared_fields_before_calling_meilisearch(
    fake: FakeMeili, engine: MeiliEngine
) -> None:
    service = SearchService(engine)
    await service.put_index("acme", "movies", DEFINITION)
    with pytest.raises(Unprocessable, match="'overview'"):
        await service.search("acme", "movies", SearchRequest(filter={"term": {"overview": "x"}}))
    assert not fake.sent("POST", "/multi-search")


async def test_search_on_a_vanished_index_is_404(fake: FakeMeili, engine: MeiliEngine) -> None:
    info, _ = await engine.put_index("acme", "movies", DEFINITION)
    del fake.indexes["pfx_acme_movies"]
    with pytest.raises(NotFound):
        await engine.search(
            "acme",
            info,
            SearchQuery(q="x", filter=None, facets=(), sort=(), limit=1, offset=0, highlight=False),
        )


async def test_indexes_list_and_purge_stay_inside_the_tenant(fake: FakeMeili, engine: MeiliEngine) -> None:
    for uid in (
        "pfx_acme_movies",
        "pfx_acme_books",
        "pfx_acme-2_movies",
        "pfx_globex_movies",
        "other_acme_x",
    ):
        fake.add_index(uid)
    assert [i.name for i in await engine.list_indexes("acme", "", 10)] == ["books", "movies"]
    assert [i.name for i in await engine.list_indexes("acme", "books", 10)] == ["movies"]
    await engine.purge_tenant("acme")
    assert sorted(fake.indexes) == ["other_acme_x", "pfx_acme-2_movies", "pfx_globex_movies"]
    assert await engine.delete_index("acme", "movies") is False


async def test_health_reports_version(engine: MeiliEngine) -> None:
    status = await engine.health()
    assert status.ok and status.version == "1.12.3" and status.mode == "server"


async def test_unreachable_meilisearch_is_503_naming_it() -> None:
    engine = MeiliEngine("http://127.0.0.1:9", prefix="pfx")
    await engine.start()
    try:
        with pytest.raises(ServiceUnavailable, match=r"meilisearch at http://127\.0\.0\.1:9"):
            await engine.put_index("acme", "movies", DEFINITION)
        status = await engine.health()
        assert not status.ok and "APPLIANCE_MEILI_URL" in status.detail
    finally:
        await engine.close()


FILTER_STRINGS: list[tuple[dict[str, Any], str]] = [
    ({"term": {"genre": "drama"}}, 'genre = "drama"'),
    ({"term": {"genre": 'a"b\\c'}}, 'genre = "a\\"b\\\\c"'),
    ({"term": {"genre": "x' OR 1=1 --"}}, "genre = \"x' OR 1=1 --\""),
    ({"term": {"year": 1984}}, "year = 1984"),
    ({"term": {"rating": 8.5}}, "rating = 8.5"),
    ({"term": {"color": True}}, 'color = "true"'),
    ({"terms": {"genre": ["a", "b c", 3]}}, 'genre IN ["a", "b c", 3]'),
    ({"range": {"year": {"gte": 1990, "lt": 2000}}}, "(year >= 1990.0 AND year < 2000.0)"),
    ({"exists": {"field": "year"}}, "(year EXISTS AND NOT year IS NULL AND NOT year IS EMPTY)"),
    ({"bool": {"must": [{"term": {"a": "x"}}], "filter": [{"term": {"b": "y"}}]}}, '(a = "x" AND b = "y")'),
    ({"bool": {"should": [{"term": {"a": "x"}}, {"term": {"b": "y"}}]}}, '((a = "x" OR b = "y"))'),
    ({"bool": {"filter": [{"term": {"a": "x"}}], "should": [{"term": {"b": "y"}}]}}, '(a = "x")'),
    ({"bool": {"must_not": [{"term": {"a": "x"}}]}}, '(NOT (a = "x"))'),
    ({"bool": {"should": [{"term": {"a": 1}}, {"term": {"b": 2}}, {"term": {"c": 3}}], "minimum_should_match": 2}},
     "(((a = 1 AND b = 2) OR (a = 1 AND c = 3) OR (b = 2 AND c = 3)))"),
    ({"bool": {}}, ""),
]  # fmt: skip


@pytest.mark.parametrize(("filter_", "expected"), FILTER_STRINGS)
def test_filter_strings(filter_: dict[str, Any], expected: str) -> None:
    assert to_meili(parse_filter(filter_)) == expected


@pytest.mark.parametrize(
    ("q", "sent"),
    [
        ("dune", "dune"),
        ('"exact phrase"', " exact phrase "),
        ("-not this", " not this"),
        ("e-mail", "e-mail"),
    ],
)
def test_query_operators_are_neutralised(q: str, sent: str) -> None:
    assert literal_query(q) == sent


async def test_the_app_uses_meilisearch_when_configured(fake: FakeMeili, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", meili_url=fake.url, meili_index_prefix="prod")
    async with AsyncTestClient(create_app(settings), base_url="http://appliance.test") as client:
        assert (
            await client.put("/v1/indexes/movies", json={"searchable": ["title"]}, headers=ROOT)
        ).status_code == 201
        added = await client.post(
            "/v1/indexes/movies/documents?wait=true", json=[{"id": "m1", "title": "Dune"}], headers=ROOT
        )
        assert added.status_code == 200 and added.json()["status"] == "succeeded", added.text
        assert fake.sent("POST", "/indexes/prod_default_movies/documents")
        found = await client.post("/v1/indexes/movies/search", json={"q": "dune"}, headers=ROOT)
        assert found.status_code == 200 and found.json()["total"] == 0
        ready = (await client.get("/readyz")).json()
        assert any(b["name"] == "search" and b["backend"] == "meilisearch" for b in ready["backends"])
