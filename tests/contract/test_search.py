"""The search port's contract, run against every adapter.

``sqlite_fts`` always runs. ``meili`` joins the parameter list only when ``APPLIANCE_MEILI_URL``
points at a Meilisearch server (none can be installed on the CI machines; its requests and response
parsing are tested against a fake in test_search_meili.py). The suite goes through the service, so
validation is part of the contract too.
"""

from __future__ import annotations

import os
import random
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.core.db import Tx
from appliance.core.errors import Unprocessable
from appliance.search import IndexDefinition, SearchEngine, SearchRequest, SearchResult
from appliance.search.meili import MeiliEngine
from appliance.search.service import SearchService
from appliance.search.sqlite_fts import LAYOUT, SqliteFtsEngine

ADAPTERS = ["sqlite_fts", *(["meili"] if os.environ.get("APPLIANCE_MEILI_URL") else [])]
TENANTS = ("acme", "globex")

MOVIES: list[dict[str, Any]] = [
    {"id": "m1", "title": "Dune", "overview": "A noble family fights over a desert planet and its spice.",
     "genres": ["scifi", "adventure"], "year": 1984, "rating": 6.3, "director": "Lynch", "color": True},
    {"id": "m2", "title": "Dune: Part Two", "overview": "Paul unites with the Fremen of the desert.",
     "genres": ["scifi"], "year": 2024, "rating": 8.5, "director": "Villeneuve", "color": True},
    {"id": "m3", "title": "Lawrence of Arabia", "overview": "An officer crosses the desert; dune after dune of sand.",
     "genres": ["drama", "history"], "year": 1962, "rating": 8.3, "director": "Lean", "color": False},
    {"id": "m4", "title": "Café Society", "overview": "A young man moves to Hollywood in the thirties.",
     "genres": ["comedy", "drama"], "year": 2016, "rating": 6.6, "director": "Allen", "color": True},
    {"id": "m5", "title": "The Spice Girls Movie", "overview": "A pop group tours London.",
     "genres": ["comedy", "music"], "year": 1997, "rating": 3.4, "director": "Spiers", "color": True},
    {"id": "m6", "title": "Blade Runner", "overview": "A blade runner hunts replicants in a rainy city.",
     "genres": ["scifi"], "year": 1982, "rating": 8.1, "director": "Scott", "color": True},
    {"id": "m7", "title": "Arrival", "overview": "A linguist talks to visitors.",
     "genres": ["scifi", "drama"], "year": 2016, "rating": 7.9, "color": True},
    {"id": "m8", "title": "Untitled", "overview": "Nothing yet about cafe culture.",
     "genres": [], "year": None, "rating": None, "director": ""},
]  # fmt: skip

DEFINITION = IndexDefinition(
    searchable=["title", "overview", "director"],
    filterable=["genres", "year", "rating", "director", "color"],
    sortable=["year", "rating", "title"],
)


def _engine(kind: str, tmp_path: Path) -> SearchEngine:
    if kind == "sqlite_fts":
        return SqliteFtsEngine(tmp_path / "search.db")
    prefix = f"contract-{uuid.uuid4().hex[:8]}"
    return MeiliEngine(os.environ["APPLIANCE_MEILI_URL"], os.environ.get("APPLIANCE_MEILI_KEY", ""), prefix)


@pytest.fixture(params=ADAPTERS)
async def search(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SearchService]:
    engine = _engine(request.param, tmp_path)
    await engine.start()
    try:
        yield SearchService(engine)
    finally:
        for tenant in TENANTS:
            await engine.purge_tenant(tenant)
        await engine.close()


@pytest.fixture
async def movies(search: SearchService) -> SearchService:
    await search.put_index("acme", "movies", DEFINITION)
    task = await search.add_documents("acme", "movies", [dict(m) for m in MOVIES], wait=True)
    assert task.status == "succeeded", task
    return search


async def find(search: SearchService, **request: Any) -> SearchResult:
    return await search.search("acme", "movies", SearchRequest(**{"limit": 100, **request}))


def ids(result: SearchResult) -> list[str]:
    return [hit["id"] for hit in result.hits]


# --- indexes and tasks --------------------------------------------------------------------------


async def test_index_lifecycle(search: SearchService) -> None:
    info, created = await search.put_index("acme", "books", IndexDefinition(searchable=["title"]))
    assert created and info.name == "books" and info.primary_key == "id" and info.searchable == ["title"]
    _, again = await search.put_index("acme", "books", IndexDefinition(searchable=["title"]))
    assert not again
    await search.put_index("acme", "authors", IndexDefinition(searchable=["name"], primary_key="slug"))
    first = await search.list_indexes("acme", 1, None)
    assert [i.name for i in first.items] == ["authors"] and first.next_cursor
    second = await search.list_indexes("acme", 1, first.next_cursor)
    assert [i.name for i in second.items] == ["books"] and second.next_cursor is None
    got = await search.get_index("acme", "authors")
    assert got.primary_key == "slug" and got.documents == 0
    await search.delete_index("acme", "books")
    assert [i.name for i in (await search.list_indexes("acme", 10, None)).items] == ["authors"]
    with pytest.raises(Exception, match="does not exist"):
        await search.get_index("acme", "books")


async def test_documents_are_replaced_and_deleted(movies: SearchService) -> None:
    assert (await movies.get_index("acme", "movies")).documents == len(MOVIES)
    replaced = {**MOVIES[0], "title": "Sandworms"}
    task = await movies.add_documents("acme", "movies", [replaced], wait=True)
    assert task.status == "succeeded" and task.documents == 1
    assert ids(await find(movies, q="sandworms")) == ["m1"]
    assert "m1" not in ids(await find(movies, q="dune"))
    deleted = await movies.delete_document("acme", "movies", "m2", wait=True)
    assert deleted.status == "succeeded" and deleted.kind == "documents.delete"
    assert "m2" not in ids(await find(movies, q="dune"))
    missing = await movies.delete_document("acme", "movies", "no-such-doc", wait=True)
    assert missing.status == "succeeded"
    assert (await movies.get_index("acme", "movies")).documents == len(MOVIES) - 1


async def test_tasks_are_queued_then_finished(search: SearchService) -> None:
    await search.put_index("acme", "notes", IndexDefinition(searchable=["text"]))
    task = await search.add_documents("acme", "notes", [{"id": 1, "text": "hello"}])
    assert task.status in ("enqueued", "processing", "succeeded") and task.documents == 1
    done = await search.engine.wait("acme", "notes", task.task_id, 10)
    assert done is not None and done.status == "succeeded" and done.finished_at is not None
    assert (await search.task("acme", "notes", task.task_id)).status == "succeeded"
    assert await search.engine.task("acme", "notes", "12345678") is None
    assert await search.engine.task("globex", "notes", task.task_id) is None
    numeric = await search.search("acme", "notes", SearchRequest(q="hello"))
    assert [h["id"] for h in numeric.hits] == [1]  # the stored document, id type kept


@pytest.mark.parametrize(
    "docs",
    [
        [{"title": "no id"}],
        [{"id": None, "title": "null id"}],
        [{"id": "has space"}],
        [{"id": "ok"}, "not an object"],
        [{"id": True}],
        [{"id": 1.5}],
    ],
)
async def test_bad_documents_are_rejected_before_queueing(search: SearchService, docs: list[Any]) -> None:
    await search.put_index("acme", "notes", IndexDefinition(searchable=["title"]))
    with pytest.raises(Unprocessable):
        await search.add_documents("acme", "notes", docs)


async def test_huge_numbers_are_indexed(search: SearchService) -> None:
    definition = IndexDefinition(searchable=["title"], filterable=["big"], sortable=["big"])
    await search.put_index("acme", "numbers", definition)
    docs = [{"id": "n1", "title": "huge", "big": 10**20}, {"id": "n2", "title": "small", "big": 1}]
    assert (await search.add_documents("acme", "numbers", docs, wait=True)).status == "succeeded"
    found = await search.search(
        "acme", "numbers", SearchRequest(filter={"range": {"big": {"gt": 1e19}}}, sort=["big:desc"])
    )
    assert [hit["id"] for hit in found.hits] == ["n1"] and found.hits[0]["big"] == 10**20


async def test_replaced_and_deleted_documents_leave_no_words_behind(movies: SearchService) -> None:
    """Totals count the current texts only (on FTS5 a count without a filter reads only the FTS index)."""
    await movies.add_documents("acme", "movies", [{**MOVIES[0], "title": "Sandworms", "overview": "x"}])
    await movies.delete_document("acme", "movies", "m2")
    await movies.add_documents("acme", "movies", [{**MOVIES[2], "overview": "Sand."}], wait=True)
    for q, expected in (
        ("dune", []),
        ("desert", []),
        ("spice", ["m5"]),
        ("sand", ["m1", "m3"]),  # "Sandworms" too: the last word is a prefix
        ("sandworms", ["m1"]),
    ):
        result = await find(movies, q=q)
        assert (sorted(ids(result)), result.total) == (expected, len(expected)), q


async def test_settings_change_reindexes_stored_documents(movies: SearchService) -> None:
    with pytest.raises(Unprocessable, match="overview"):
        await find(movies, facets=["overview"])
    await movies.put_index(
        "acme", "movies", IndexDefinition(searchable=["overview"], filterable=["director"], sortable=["year"])
    )
    assert (await movies.get_index("acme", "movies")).documents == len(MOVIES)
    assert ids(await find(movies, q="lawrence")) == []  # title is no longer searchable
    assert ids(await find(movies, q="linguist")) == ["m7"]
    assert ids(await find(movies, filter={"term": {"director": "Lean"}})) == ["m3"]


# --- relevance ------------------------------------------------------------------------------------


async def test_exact_title_match_ranks_first(movies: SearchService) -> None:
    order = ids(await find(movies, q="dune"))
    assert order[0] == "m1" and set(order[:2]) == {"m1", "m2"} and order[-1] == "m3"
    scores = [hit["_score"] for hit in (await find(movies, q="dune")).hits]
    assert scores == sorted(scores, reverse=True)


async def test_earlier_fields_weigh_more(movies: SearchService) -> None:
    assert ids(await find(movies, q="spice")) == ["m5", "m1"]  # title beats overview


async def test_prefix_match_on_the_last_word_only(movies: SearchService) -> None:
    assert sorted(ids(await find(movies, q="spi"))) == ["m1", "m5"]
    assert ids(await find(movies, q="arriv")) == ["m7"]
    assert ids(await find(movies, q="spice gir")) == ["m5"]
    assert ids(await find(movies, q="spi girls")) == []


async def test_every_word_must_match(movies: SearchService) -> None:
    assert ids(await find(movies, q="desert planet")) == ["m1"]
    assert ids(await find(movies, q="desert london")) == []


async def test_diacritics_are_folded(movies: SearchService) -> None:
    assert sorted(ids(await find(movies, q="cafe"))) == ["m4", "m8"]
    assert sorted(ids(await find(movies, q="café"))) == ["m4", "m8"]
    assert sorted(ids(await find(movies, q="CAFÉ"))) == ["m4", "m8"]


async def test_highlight_wraps_matches_in_mark(movies: SearchService) -> None:
    result = await find(movies, q="dune", highlight=True)
    by_id = {hit["id"]: hit for hit in result.hits}
    assert by_id["m1"]["_highlight"]["title"] == "<mark>Dune</mark>"
    assert by_id["m2"]["_highlight"]["title"] == "<mark>Dune</mark>: Part Two"
    assert "<mark>dune</mark> after <mark>dune</mark>" in by_id["m3"]["_highlight"]["overview"]
    assert by_id["m1"]["title"] == "Dune"  # the stored document is untouched
    assert "_highlight" not in (await find(movies, q="dune")).hits[0]


# --- sort, facets, pagination -------------------------------------------------------------------


async def test_sort_orders_with_missing_values_last(movies: SearchService) -> None:
    years = [hit["year"] for hit in (await find(movies, sort=["year:desc"])).hits]
    assert years == [2024, 2016, 2016, 1997, 1984, 1982, 1962, None]
    years = [hit["year"] for hit in (await find(movies, sort=["year:asc"])).hits]
    assert years == [1962, 1982, 1984, 1997, 2016, 2016, 2024, None]
    titles = [hit["title"] for hit in (await find(movies, q="dune", sort=["title:desc"])).hits]
    assert titles == ["Lawrence of Arabia", "Dune: Part Two", "Dune"]
    both = ids(await find(movies, sort=["year:desc", "rating:asc"]))
    assert both[:3] == ["m2", "m4", "m7"]


async def test_facets_count_the_filtered_result(movies: SearchService) -> None:
    result = await find(movies, filter={"term": {"genres": "scifi"}}, facets=["genres", "color"])
    assert result.total == 4
    assert result.facets["genres"] == {"scifi": 4, "adventure": 1, "drama": 1}
    assert result.facets["color"] == {"true": 4}
    everything = await find(movies, facets=["genres"], limit=0)
    assert everything.hits == [] and everything.total == len(MOVIES)
    assert everything.facets["genres"] == {
        "scifi": 4, "drama": 3, "comedy": 2, "adventure": 1, "history": 1, "music": 1
    }  # fmt: skip
    with_text = await find(movies, q="desert", facets=["year"])
    assert with_text.facets["year"] == {"1984": 1, "2024": 1, "1962": 1}


async def test_limit_offset_and_exact_total(movies: SearchService) -> None:
    pages = []
    for offset in (0, 3, 6):
        page = await find(movies, sort=["rating:desc"], limit=3, offset=offset)
        assert page.total == len(MOVIES)
        pages += ids(page)
    assert pages == ["m2", "m3", "m6", "m7", "m4", "m1", "m5", "m8"]
    assert (await find(movies, q="dune", limit=1)).total == 3
    beyond = await find(movies, offset=50)
    assert beyond.hits == [] and beyond.total == len(MOVIES)
    assert (await find(movies, q="dune")).took_ms >= 0


# --- filters --------------------------------------------------------------------------------------

FILTERS: list[tuple[str, dict[str, Any], set[str]]] = [
    ("term on a list", {"term": {"genres": "drama"}}, {"m3", "m4", "m7"}),
    ("term on a string", {"term": {"director": "Lynch"}}, {"m1"}),
    ("term long form", {"term": {"director": {"value": "Lynch"}}}, {"m1"}),
    ("term on an integer", {"term": {"year": 1984}}, {"m1"}),
    ("term on a float", {"term": {"rating": 8.5}}, {"m2"}),
    ("term on a boolean", {"term": {"color": False}}, {"m3"}),
    ("terms", {"terms": {"genres": ["music", "history"]}}, {"m3", "m5"}),
    ("range gte", {"range": {"year": {"gte": 2000}}}, {"m2", "m4", "m7"}),
    ("range gt and lte", {"range": {"rating": {"gt": 8, "lte": 8.5}}}, {"m2", "m3", "m6"}),
    ("range lt", {"range": {"year": {"lt": 1983}}}, {"m3", "m6"}),
    ("exists", {"exists": {"field": "director"}}, {"m1", "m2", "m3", "m4", "m5", "m6"}),
    ("must_not exists", {"bool": {"must_not": [{"exists": {"field": "year"}}]}}, {"m8"}),
    ("must and must_not",
     {"bool": {"must": [{"term": {"genres": "scifi"}}], "must_not": [{"range": {"year": {"lt": 2000}}}]}},
     {"m2", "m7"}),
    ("filter equals must",
     {"bool": {"filter": [{"term": {"genres": "scifi"}}, {"term": {"genres": "drama"}}]}}, {"m7"}),
    ("should alone needs one",
     {"bool": {"should": [{"term": {"director": "Lynch"}}, {"term": {"director": "Scott"}}]}}, {"m1", "m6"}),
    ("should beside filter is optional",
     {"bool": {"filter": [{"term": {"genres": "scifi"}}], "should": [{"term": {"director": "Lynch"}}]}},
     {"m1", "m2", "m6", "m7"}),
    ("minimum_should_match 1 beside filter",
     {"bool": {"filter": [{"term": {"genres": "scifi"}}], "should": [{"term": {"director": "Lynch"}}],
               "minimum_should_match": 1}}, {"m1"}),
    ("minimum_should_match 2",
     {"bool": {"should": [{"term": {"genres": "scifi"}}, {"term": {"genres": "drama"}},
                          {"range": {"year": {"gte": 2010}}}], "minimum_should_match": 2}},
     {"m2", "m4", "m7"}),
    ("nested bool",
     {"bool": {"should": [
         {"bool": {"must": [{"term": {"genres": "comedy"}}, {"range": {"year": {"lt": 2000}}}]}},
         {"term": {"director": "Villeneuve"}}]}}, {"m2", "m5"}),
    ("must_not of a bool",
     {"bool": {"must_not": [{"bool": {"should": [{"term": {"genres": "scifi"}}, {"term": {"genres": "comedy"}}]}}]}},
     {"m3", "m8"}),
    ("empty top-level bool matches everything", {"bool": {}}, {f"m{i}" for i in range(1, 9)}),
    ("quote injection", {"term": {"director": "x' OR '1'='1"}}, set()),
    ("double-quote injection", {"term": {"director": 'Lynch" OR director = "Scott'}}, set()),
    ("backslash", {"term": {"director": "Lynch\\"}}, set()),
    ("range on text never matches", {"range": {"director": {"gte": 0}}}, set()),
]  # fmt: skip


@pytest.mark.parametrize(("name", "filter_", "expected"), FILTERS, ids=[f[0] for f in FILTERS])
async def test_filter_semantics(
    movies: SearchService, name: str, filter_: dict[str, Any], expected: set[str]
) -> None:
    result = await find(movies, filter=filter_)
    assert set(ids(result)) == expected
    assert result.total == len(expected)


async def test_filter_and_text_combine(movies: SearchService) -> None:
    assert sorted(ids(await find(movies, q="desert", filter={"term": {"genres": "scifi"}}))) == ["m1", "m2"]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({"filter": {"term": {"overview": "x"}}}, "overview"),
        ({"filter": {"bool": {"must_not": [{"exists": {"field": "secret"}}]}}}, "secret"),
        ({"facets": ["title"]}, "title"),
        ({"sort": ["director:asc"]}, "director"),
    ],
)
async def test_undeclared_fields_are_422_naming_them(
    movies: SearchService, request_: dict[str, Any], field: str
) -> None:
    with pytest.raises(Unprocessable, match=repr(field)):
        await find(movies, **request_)


@pytest.mark.parametrize(
    "filter_",
    [
        {"match": {"title": "dune"}},
        {"term": {"genres": "a"}, "range": {"year": {"gt": 1}}},
        {"term": {"genres": ["a"]}},
        {"term": {"genres": None}},
        {"terms": {"genres": []}},
        {"range": {"year": {}}},
        {"range": {"year": {"gte": "2000"}}},
        {"range": {"year": {"from": 1}}},
        {"exists": {"name": "year"}},
        {"bool": {"must": {"term": {"genres": "a"}}}},
        {"bool": {"must": [{"bool": {}}]}},
        {"bool": {"should": [{"term": {"genres": "a"}}], "minimum_should_match": 2}},
        {"term": {"bad field": "a"}},
        {"term": {"year": 10**20}},
        {"term": {"a": "b", "c": "d"}},
        "genres = scifi",
        [],
    ],
)
async def test_malformed_filters_are_422(movies: SearchService, filter_: Any) -> None:
    with pytest.raises(Unprocessable):
        await movies.search("acme", "movies", SearchRequest(filter=filter_))


HOSTILE = [
    '"', '""', "'", "AND", "dune AND", "OR", "NOT dune", "(dune", "dune)", "dune*", "*", "**", "-dune",
    "NEAR(dune spice)", "title:dune", "{title}: dune", "^dune", "dune OR spice", "'; DROP TABLE x; --",
    "\\", '"dune', 'dune"', "dune + spice", "💥 dune", "d\u0000une", "a" * 1000, " ".join(["dune"] * 100),
]  # fmt: skip


@pytest.mark.parametrize("q", HOSTILE)
async def test_hostile_queries_are_searched_literally(movies: SearchService, q: str) -> None:
    result = await find(movies, q=q)
    assert result.total == len(result.hits)


async def test_random_hostile_text_never_fails(movies: SearchService) -> None:
    words = ["AND", "OR", "NOT", "NEAR", "dune", "é", "💥", "ß", "İ"]
    alphabet = [*"\"'()*:^-+{}[]~<>;,.!?/\\|&%$#@ \t\n\x00", *words]
    rng = random.Random(1234)
    for _ in range(200):
        q = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        result = await find(movies, q=q, highlight=True)
        assert result.total == len(result.hits), q


@pytest.mark.parametrize("q", ["(dune", "dune)", '"dune', 'dune"', "-dune", "dune*", "^dune", "dun*"])
async def test_operators_around_a_word_do_not_change_it(movies: SearchService, q: str) -> None:
    assert set(ids(await find(movies, q=q))) == {"m1", "m2", "m3"}


async def test_operator_words_are_plain_words(movies: SearchService) -> None:
    await movies.add_documents(
        "acme", "movies", [{"id": "m9", "title": "Salt AND pepper NEAR the sea OR not"}], wait=True
    )
    for q in ("pepper AND", "NEAR sea", "OR NOT", "salt AND pepper"):
        assert ids(await find(movies, q=q)) == ["m9"], q


async def test_an_indexer_creates_its_index_per_tenant(search: SearchService) -> None:
    objects = search.indexer("objects", IndexDefinition(searchable=["key"], filterable=["bucket"]))
    await objects.upsert("acme", [{"id": "o1", "key": "reports/q1.pdf", "bucket": "docs"}], wait=True)
    await objects.upsert("globex", [{"id": "o1", "key": "photos/cat.jpg", "bucket": "pics"}], wait=True)
    found = await search.search(
        "acme", "objects", SearchRequest(q="reports", filter={"term": {"bucket": "docs"}})
    )
    assert ids(found) == ["o1"]
    assert ids(await search.search("globex", "objects", SearchRequest(q="reports"))) == []
    await objects.delete("acme", "o1", wait=True)
    assert ids(await search.search("acme", "objects", SearchRequest(q="reports"))) == []


async def test_a_field_holding_scalars_and_lists_filters_and_facets_as_one(search: SearchService) -> None:
    await search.put_index("acme", "mixed", IndexDefinition(searchable=["t"], filterable=["tag", "n"]))
    docs: list[dict[str, Any]] = [
        {"id": "d1", "t": "x", "tag": "red", "n": 1},
        {"id": "d2", "t": "x", "tag": ["red", "blue"], "n": [2, 3]},
        {"id": "d3", "t": "x", "tag": ["blue"], "n": 5},
        {"id": "d4", "t": "x", "tag": None, "n": []},
        {"id": "d5", "t": "x"},
    ]
    assert (await search.add_documents("acme", "mixed", docs, wait=True)).status == "succeeded"

    async def matching(filter_: dict[str, Any]) -> set[str]:
        for q in ("x", ""):  # filtering after full-text matching, and the filter alone
            found = set(ids(await search.search("acme", "mixed", SearchRequest(q=q, filter=filter_))))
        assert found == set(ids(await search.search("acme", "mixed", SearchRequest(q="x", filter=filter_))))
        return found

    assert await matching({"term": {"tag": "red"}}) == {"d1", "d2"}
    assert await matching({"terms": {"tag": ["blue", "green"]}}) == {"d2", "d3"}
    assert await matching({"range": {"n": {"gte": 3}}}) == {"d2", "d3"}
    assert await matching({"exists": {"field": "n"}}) == {"d1", "d2", "d3"}
    assert await matching({"bool": {"must_not": [{"term": {"tag": "red"}}]}}) == {"d3", "d4", "d5"}
    assert await matching({"bool": {"should": [{"term": {"tag": "blue"}}, {"term": {"n": 1}}],
                                     "minimum_should_match": 1}}) == {"d1", "d2", "d3"}  # fmt: skip
    for q in ("x", ""):
        facets = (await search.search("acme", "mixed", SearchRequest(q=q, facets=["tag", "n"]))).facets
        assert facets == {"tag": {"red": 2, "blue": 2}, "n": {"1": 1, "2": 1, "3": 1, "5": 1}}, q


# --- tenants -------------------------------------------------------------------------------------


async def test_tenants_never_see_each_other(movies: SearchService) -> None:
    assert await movies.engine.get_index("globex", "movies") is None
    await movies.put_index("globex", "movies", IndexDefinition(searchable=["title"]))
    task = await movies.add_documents(
        "globex", "movies", [{"id": "g1", "title": "Dune for globex"}], wait=True
    )
    assert ids(await movies.search("globex", "movies", SearchRequest(q="dune"))) == ["g1"]
    assert "g1" not in ids(await find(movies, q="dune"))
    assert await movies.engine.task("acme", "movies", task.task_id) is None
    assert [i.name for i in (await movies.list_indexes("globex", 10, None)).items] == ["movies"]
    await movies.engine.purge_tenant("globex")
    assert await movies.engine.get_index("globex", "movies") is None
    assert ids(await find(movies, q="dune", limit=1)) == ["m1"]


# --- the FTS5 adapter's queue, driven in burst mode ----------------------------------------------


@pytest.fixture
async def burst(tmp_path: Path) -> AsyncIterator[tuple[SqliteFtsEngine, SearchService]]:
    engine = SqliteFtsEngine(tmp_path / "search.db", worker=False)
    await engine.start()
    try:
        yield engine, SearchService(engine)
    finally:
        await engine.close()


async def test_sqlite_fts_batches_queued_tasks_in_order(burst: tuple[SqliteFtsEngine, SearchService]) -> None:
    engine, search = burst
    await search.put_index("acme", "notes", IndexDefinition(searchable=["text"]))
    first = await search.add_documents(
        "acme", "notes", [{"id": "n1", "text": "first draft"}, {"id": "n2", "text": "keep"}]
    )
    gone = await search.delete_document("acme", "notes", "n1")
    again = await search.add_documents("acme", "notes", [{"id": "n1", "text": "final version"}])
    assert (await search.task("acme", "notes", first.task_id)).status == "enqueued"
    assert await engine.drain() == 3  # one transaction
    assert await engine.drain() == 0
    for task in (first, gone, again):
        assert (await search.task("acme", "notes", task.task_id)).status == "succeeded"
    assert ids_of(await search.search("acme", "notes", SearchRequest(q="final"))) == ["n1"]
    assert ids_of(await search.search("acme", "notes", SearchRequest(q="draft"))) == []


async def test_sqlite_fts_a_bad_task_fails_alone(burst: tuple[SqliteFtsEngine, SearchService]) -> None:
    engine, search = burst
    await search.put_index("acme", "notes", IndexDefinition(searchable=["text"]))
    stale = await search.add_documents("acme", "notes", [{"id": "n1", "text": "keyed by id"}])
    await search.put_index("acme", "notes", IndexDefinition(searchable=["text"], primary_key="slug"))
    fresh = await search.add_documents("acme", "notes", [{"slug": "s1", "text": "keyed by slug"}])
    assert await engine.drain() == 1
    failed = await search.task("acme", "notes", stale.task_id)
    assert failed.status == "failed" and "'id'" not in (failed.error or "") and "slug" in (failed.error or "")
    assert await engine.drain() == 1
    assert (await search.task("acme", "notes", fresh.task_id)).status == "succeeded"
    hits = (await search.search("acme", "notes", SearchRequest(q="keyed"))).hits
    assert [hit["slug"] for hit in hits] == ["s1"]


async def test_sqlite_fts_queued_tasks_survive_a_restart(tmp_path: Path) -> None:
    idle = SqliteFtsEngine(tmp_path / "search.db", worker=False)
    await idle.start()
    await SearchService(idle).put_index("acme", "notes", IndexDefinition(searchable=["text"]))
    task = await SearchService(idle).add_documents("acme", "notes", [{"id": "n1", "text": "persisted"}])
    await idle.close()
    engine = SqliteFtsEngine(tmp_path / "search.db")
    await engine.start()
    try:
        done = await engine.wait("acme", "notes", task.task_id, 10)
        assert done is not None and done.status == "succeeded"
        hits = await SearchService(engine).search("acme", "notes", SearchRequest(q="persisted"))
        assert ids_of(hits) == ["n1"]
    finally:
        await engine.close()


def ids_of(result: SearchResult) -> list[Any]:
    return [hit["id"] for hit in result.hits]


async def test_sqlite_fts_a_search_over_its_inline_budget_moves_to_the_readers(tmp_path: Path) -> None:
    engine = SqliteFtsEngine(tmp_path / "search.db", worker=False, inline_steps=1)
    await engine.start()
    try:
        search = SearchService(engine)
        await search.put_index("acme", "movies", DEFINITION)
        await search.add_documents("acme", "movies", [dict(m) for m in MOVIES])
        await engine.drain()
        request = SearchRequest(
            q="desert", filter={"range": {"year": {"gte": 1960}}}, facets=["genres"], limit=10
        )
        engine.inline_budget = 60.0  # (checking the clock at every step is slow: no deadline here)
        inline = await search.search("acme", "movies", request)
        assert engine.moved_to_readers == 0
        engine.inline_budget = 0.0  # every statement is interrupted at once: the reader threads answer
        moved = await search.search("acme", "movies", request)
        assert engine.moved_to_readers == 1
        assert ids(moved) == ids(inline) == ["m2", "m1", "m3"]
        assert (moved.total, moved.facets) == (inline.total, inline.facets)
        engine.inline_budget = 60.0
        assert ids(await search.search("acme", "movies", request)) == ["m2", "m1", "m3"]  # still usable
        assert engine.moved_to_readers == 1
    finally:
        await engine.close()


async def _movies_in_an_older_layout(path: Path, downgrade: Callable[[Tx, int], Awaitable[None]]) -> int:
    """Index MOVIES at ``path``, then let ``downgrade`` rewrite the index (generation n) as an older
    version left it on disk; returns n."""
    old = SqliteFtsEngine(path, worker=False)
    await old.start()
    search = SearchService(old)
    await search.put_index("acme", "movies", DEFINITION)
    await search.add_documents("acme", "movies", [dict(m) for m in MOVIES])
    await old.drain()
    async with old.db.transaction() as tx:
        row = await tx.fetchone("SELECT generation FROM indexes")
        assert row is not None
        n = int(row["generation"])
        await downgrade(tx, n)
    await old.close()
    return n


async def test_sqlite_fts_rebuilds_an_index_of_the_older_layout_at_start(tmp_path: Path) -> None:
    """Version 1 kept every filterable value as an attribute row; start() rebuilds such an index."""
    path = tmp_path / "search.db"

    async def version_1(tx: Tx, n: int) -> None:
        await tx.execute(f"DROP TABLE ix{n}_attrs")
        await tx.execute(f"CREATE TABLE ix{n}_attrs (field TEXT NOT NULL, value, doc INTEGER NOT NULL,"
                         " PRIMARY KEY (field, value, doc)) WITHOUT ROWID")  # fmt: skip
        await tx.execute(f"ALTER TABLE ix{n}_docs DROP COLUMN f0")
        await tx.execute("UPDATE indexes SET layout = 1")

    n = await _movies_in_an_older_layout(path, version_1)
    engine = SqliteFtsEngine(path, worker=False)
    await engine.start()
    try:
        row = await engine.db.fetchone("SELECT generation, layout FROM indexes")
        assert row is not None and row["layout"] == LAYOUT and row["generation"] != n
        found = await SearchService(engine).search(
            "acme", "movies", SearchRequest(q="dune", filter={"term": {"genres": "scifi"}}, facets=["color"])
        )
        assert ids(found) == ["m1", "m2"] and found.facets == {"color": {"true": 2}}
        assert (await engine.get_index("acme", "movies")).documents == len(MOVIES)  # type: ignore[union-attr]
    finally:
        await engine.close()


async def test_sqlite_fts_rebuilds_an_index_that_stores_its_texts_in_fts5_at_start(tmp_path: Path) -> None:
    """Layout 2 kept a copy of the searchable texts in the FTS5 table; start() rebuilds such an index
    with a contentless one, its documents intact (searchable, highlighted, replaceable, deletable)."""
    path = tmp_path / "search.db"

    async def version_2(tx: Tx, n: int) -> None:
        await tx.execute(f"DROP TABLE ix{n}_fts")
        await tx.execute(f"CREATE VIRTUAL TABLE ix{n}_fts USING fts5(c0, c1, c2,"
                         " tokenize = 'unicode61 remove_diacritics 2')")  # fmt: skip
        for movie in MOVIES:
            texts = [str(movie.get(f) or "") for f in ("title", "overview", "director")]
            await tx.execute(
                f"INSERT INTO ix{n}_fts (rowid, c0, c1, c2)"
                f" SELECT rowid, ?, ?, ? FROM ix{n}_docs WHERE doc_id = ?",
                (*texts, movie["id"]),
            )
        await tx.execute("UPDATE indexes SET layout = 2")

    n = await _movies_in_an_older_layout(path, version_2)
    engine = SqliteFtsEngine(path, worker=False)
    await engine.start()
    try:
        row = await engine.db.fetchone("SELECT generation, layout FROM indexes")
        assert row is not None and row["layout"] == LAYOUT == 3 and row["generation"] != n
        new = row["generation"]
        ddl = await engine.db.fetchone("SELECT sql FROM sqlite_master WHERE name = ?", (f"ix{new}_fts",))
        assert ddl is not None and "content = ''" in ddl["sql"]
        assert (
            await engine.db.fetchone("SELECT name FROM sqlite_master WHERE name LIKE ?", (f"ix{n}_%",))
            is None
        )
        search = SearchService(engine)
        assert (await engine.get_index("acme", "movies")).documents == len(MOVIES)  # type: ignore[union-attr]
        found = await search.search("acme", "movies", SearchRequest(q="dune", highlight=True, limit=10))
        assert ids(found) == ["m1", "m2", "m3"] and found.total == 3
        assert found.hits[1]["_highlight"]["title"] == "<mark>Dune</mark>: Part Two"
        assert {k: v for k, v in found.hits[0].items() if not k.startswith("_")} == MOVIES[0]
        await search.add_documents("acme", "movies", [{**MOVIES[0], "title": "Sandworms"}])
        await search.delete_document("acme", "movies", "m2")
        await engine.drain()
        after = await search.search("acme", "movies", SearchRequest(q="dune"))
        assert (ids(after), after.total) == (["m3"], 1)
    finally:
        await engine.close()


async def test_sqlite_fts_moves_tasks_queued_by_the_older_version_to_the_queue_file(tmp_path: Path) -> None:
    """Version 1 kept the task queue in search.db; start() moves it to search-queue.db, still queued."""
    path = tmp_path / "search.db"
    first = SqliteFtsEngine(path, worker=False)
    await first.start()
    await SearchService(first).put_index("acme", "notes", IndexDefinition(searchable=["text"]))
    await first.close()
    with sqlite3.connect(path) as conn:  # what version 1 left: a queued task in search.db
        conn.execute(
            "CREATE TABLE tasks (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,"
            " tenant_id TEXT NOT NULL, index_name TEXT NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL,"
            " documents INTEGER NOT NULL, payload BLOB, error TEXT, enqueued_at REAL NOT NULL,"
            " started_at REAL, finished_at REAL)"
        )
        conn.execute(
            "INSERT INTO tasks (id, tenant_id, index_name, kind, status, documents, payload, enqueued_at)"
            " VALUES ('task_old', 'acme', 'notes', 'documents.upsert', 'enqueued', 1, ?, 1.0)",
            (b'[{"id": "n1", "text": "carried over"}]',),
        )
    engine = SqliteFtsEngine(path)
    await engine.start()
    try:
        done = await engine.wait("acme", "notes", "task_old", 10)
        assert done is not None and done.status == "succeeded"
        assert ids_of(await SearchService(engine).search("acme", "notes", SearchRequest(q="carried"))) == [
            "n1"
        ]
        assert await engine.db.fetchone("SELECT name FROM sqlite_master WHERE name = 'tasks'") is None
    finally:
        await engine.close()
