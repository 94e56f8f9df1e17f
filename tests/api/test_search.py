"""API.md "Search" over HTTP: scenario tables, the indexing flow, and tenant isolation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from appliance.app import create_app
from tests.api.test_core import assert_problem
from tests.conftest import ROOT, Headers, MakeTenant, make_settings

Client = AsyncTestClient[Litestar]

DEFINITION = {
    "primary_key": "id",
    "searchable": ["title", "body"],
    "filterable": ["tags", "year"],
    "sortable": ["year"],
}
DOCS = [
    {"id": "a1", "title": "Acme rocket skates", "body": "Fast skates for desert roads.", "tags": ["gear"], "year": 1950},
    {"id": "a2", "title": "Acme anvil", "body": "Heavy. Drops fast.", "tags": ["gear", "heavy"], "year": 1949},
    {"id": "a3", "title": "Bird seed", "body": "Free bird seed, a secret trap.", "tags": ["bait"], "year": 1952},
]  # fmt: skip


@pytest.fixture
async def acme(client: Client, make_tenant: MakeTenant) -> Headers:
    """A tenant with the ``movies`` index holding DOCS, searchable."""
    headers = await make_tenant("acme", ("search",))
    assert (await client.put("/v1/indexes/catalog", json=DEFINITION, headers=headers)).status_code == 201
    added = await client.post("/v1/indexes/catalog/documents?wait=true", json=DOCS, headers=headers)
    assert added.status_code == 200 and added.json()["status"] == "succeeded", added.text
    return headers


async def search(client: Client, headers: Headers, body: dict[str, Any], index: str = "catalog") -> Any:
    return await client.post(f"/v1/indexes/{index}/search", json=body, headers=headers)


async def test_index_settings_create_then_update(client: Client, make_tenant: MakeTenant) -> None:
    headers = await make_tenant("acme", ("search",))
    created = await client.put("/v1/indexes/catalog", json=DEFINITION, headers=headers)
    assert created.status_code == 201
    assert created.json() | DEFINITION == created.json() and created.json()["name"] == "catalog"
    again = await client.put("/v1/indexes/catalog", json=DEFINITION, headers=headers)
    assert again.status_code == 200
    changed = await client.put("/v1/indexes/catalog", json={**DEFINITION, "sortable": []}, headers=headers)
    assert changed.status_code == 200 and changed.json()["sortable"] == []


async def test_indexing_is_asynchronous_with_a_task(client: Client, acme: Headers) -> None:
    queued = await client.post(
        "/v1/indexes/catalog/documents", json=[{"id": "a4", "title": "Giant magnet"}], headers=acme
    )
    assert queued.status_code == 202
    task = queued.json()
    assert task["status"] in ("enqueued", "processing", "succeeded") and task["documents"] == 1
    # Tasks of an index run in order: once a later one is done, so is this one.
    later = await client.post(
        "/v1/indexes/catalog/documents?wait=true", json=[{"id": "a5", "title": "x"}], headers=acme
    )
    assert later.status_code == 200
    status = await client.get(f"/v1/indexes/catalog/tasks/{task['task_id']}", headers=acme)
    assert status.status_code == 200 and status.json()["status"] == "succeeded"
    found = (await search(client, acme, {"q": "magnet"})).json()
    assert [h["id"] for h in found["hits"]] == ["a4"]


async def test_search_response_shape(client: Client, acme: Headers) -> None:
    response = await search(
        client,
        acme,
        {"q": "acme", "filter": {"term": {"tags": "gear"}}, "facets": ["tags"], "sort": ["year:asc"],
         "limit": 10, "offset": 0, "highlight": True},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"hits", "total", "facets", "took_ms"}
    assert body["total"] == 2 and [h["id"] for h in body["hits"]] == ["a2", "a1"]
    hit = body["hits"][0]
    assert (
        hit["title"] == "Acme anvil" and hit["tags"] == ["gear", "heavy"] and isinstance(hit["_score"], float)
    )
    assert hit["_highlight"]["title"] == "<mark>Acme</mark> anvil"
    assert body["facets"] == {"tags": {"gear": 2, "heavy": 1}}


async def test_documents_delete_and_index_endpoints(client: Client, acme: Headers) -> None:
    deleted = await client.delete("/v1/indexes/catalog/documents/a3", headers=acme)
    assert deleted.status_code == 202 and deleted.json()["kind"] == "documents.delete"
    waited = await client.delete("/v1/indexes/catalog/documents/a2?wait=true", headers=acme)
    assert waited.status_code == 200 and waited.json()["status"] == "succeeded"
    assert [h["id"] for h in (await search(client, acme, {})).json()["hits"]] == ["a1"]
    info = (await client.get("/v1/indexes/catalog", headers=acme)).json()
    assert info["documents"] == 1 and info["searchable"] == ["title", "body"]
    await client.put("/v1/indexes/other", json={"searchable": ["x"]}, headers=acme)
    listing = (await client.get("/v1/indexes?limit=1", headers=acme)).json()
    assert [i["name"] for i in listing["items"]] == ["catalog"] and listing["next_cursor"]
    rest = (await client.get(f"/v1/indexes?cursor={listing['next_cursor']}", headers=acme)).json()
    assert [i["name"] for i in rest["items"]] == ["other"] and rest["next_cursor"] is None
    assert (await client.delete("/v1/indexes/catalog", headers=acme)).status_code == 204
    assert_problem(await client.get("/v1/indexes/catalog", headers=acme), 404)


BAD_REQUESTS: list[tuple[str, str, Any, int, str]] = [
    ("PUT", "/v1/indexes/catalog", {"searchable": []}, 422, "searchable"),
    ("PUT", "/v1/indexes/catalog", {"searchable": ["bad-field"]}, 422, "searchable"),
    ("PUT", "/v1/indexes/catalog", {"searchable": ["title"], "ranking": 1}, 422, "ranking"),
    ("PUT", "/v1/indexes/bad!name", {"searchable": ["title"]}, 422, "index"),
    ("PUT", "/v1/indexes/catalog", {"searchable": ["title"], "primary_key": "slug"}, 409, "primary key"),
    ("POST", "/v1/indexes/nope/documents", [{"id": "x"}], 404, "nope"),
    ("POST", "/v1/indexes/catalog/documents", {"id": "x"}, 422, "array"),
    ("POST", "/v1/indexes/catalog/documents", [{"title": "no id"}], 422, "primary key"),
    ("POST", "/v1/indexes/catalog/documents", [{"id": "a b"}], 422, "primary key"),
    ("DELETE", "/v1/indexes/catalog/documents/a%20b", None, 422, "document id"),
    ("GET", "/v1/indexes/catalog/tasks/task_nope", None, 404, "task"),
    ("GET", "/v1/indexes/nope", None, 404, "nope"),
    ("DELETE", "/v1/indexes/nope", None, 404, "nope"),
    ("POST", "/v1/indexes/nope/search", {}, 404, "nope"),
    ("POST", "/v1/indexes/catalog/search", {"filter": {"term": {"title": "x"}}}, 422, "'title'"),
    ("POST", "/v1/indexes/catalog/search", {"facets": ["body"]}, 422, "'body'"),
    ("POST", "/v1/indexes/catalog/search", {"sort": ["tags:asc"]}, 422, "'tags'"),
    ("POST", "/v1/indexes/catalog/search", {"sort": ["year:up"]}, 422, "sort"),
    ("POST", "/v1/indexes/catalog/search", {"filter": {"match": {"title": "x"}}}, 422, "match"),
    ("POST", "/v1/indexes/catalog/search", {"filter": {"range": {"year": {"gte": "x"}}}}, 422, "year"),
    ("POST", "/v1/indexes/catalog/search", {"filter": {"term": {"year": 10**20}}}, 422, "64 bits"),
    ("POST", "/v1/indexes/catalog/search", {"limit": 1001}, 422, "limit"),
    ("POST", "/v1/indexes/catalog/search", {"offset": -1}, 422, "offset"),
    ("POST", "/v1/indexes/catalog/search", {"q": "x", "unknown": 1}, 422, "unknown"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "status", "mentions"), BAD_REQUESTS)
async def test_bad_requests_are_problems(
    client: Client, acme: Headers, method: str, path: str, body: Any, status: int, mentions: str
) -> None:
    response = await client.request(method, path, json=body, headers=acme)
    problem = assert_problem(response, status)
    assert mentions in problem["detail"]


async def test_malformed_json_is_400(client: Client, acme: Headers) -> None:
    response = await client.post(
        "/v1/indexes/catalog/search", content=b'{"q": ', headers={**acme, "Content-Type": "application/json"}
    )
    assert_problem(response, 400)


async def test_documents_body_is_checked_before_it_is_queued(client: Client, acme: Headers) -> None:
    url = "/v1/indexes/catalog/documents?wait=true"
    json_headers = {**acme, "Content-Type": "application/json"}
    assert_problem(await client.post(url, content=b'[{"id": ', headers=json_headers), 400)
    for body, mentions in [
        ([{"id": True}], "primary key"),
        ([{"id": None}], "primary key"),
        ([{"id": 1.5}], "primary key"),
        ([{"id": -1}], "negative"),
        ([{"id": "ok"}, "not an object"], "document 1"),
        ([{"id": "ok"}, {"id": "no/slash"}], "document 1"),
    ]:
        problem = assert_problem(await client.post(url, json=body, headers=acme), 422)
        assert mentions in problem["detail"], (body, problem)
    # Stored as sent (spacing included), and returned as the same object.
    sent = b'[ {"id": 12345678901234567890123, "title": "Big  key",\n "tags": ["x"], "year": 2001} ]'
    added = await client.post(url, content=sent, headers=json_headers)
    assert added.status_code == 200 and added.json()["status"] == "succeeded", added.text
    hits = (await search(client, acme, {"q": "big key"})).json()["hits"]
    assert [{k: v for k, v in hit.items() if k != "_score"} for hit in hits] == [
        {"id": 12345678901234567890123, "title": "Big  key", "tags": ["x"], "year": 2001}
    ]


async def test_openapi_documents_the_documents_body(client: Client) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    body = paths["/v1/indexes/{index}/documents"]["post"]["requestBody"]
    assert body["required"] and body["content"]["application/json"]["schema"]["type"] == "array"


async def test_search_scope_is_required(client: Client, make_tenant: MakeTenant, acme: Headers) -> None:
    storage_only = await make_tenant("acme", ("storage",), name="no-search")
    assert_problem(await search(client, storage_only, {}), 403)
    assert_problem(await client.get("/v1/indexes"), 401)


async def test_deleting_a_tenant_purges_its_indexes(client: Client, make_tenant: MakeTenant) -> None:
    headers = await make_tenant("doomed", ("search",))
    await client.put("/v1/indexes/catalog", json=DEFINITION, headers=headers)
    await client.post("/v1/indexes/catalog/documents?wait=true", json=DOCS, headers=headers)
    assert (await client.delete("/v1/tenants/doomed", headers=ROOT)).status_code == 204
    reborn = await make_tenant("doomed", ("search",))
    assert_problem(await client.get("/v1/indexes/catalog", headers=reborn), 404)
    assert (await client.get("/v1/indexes", headers=reborn)).json()["items"] == []


async def test_readiness_and_openapi_show_search(client: Client) -> None:
    ready = (await client.get("/readyz")).json()
    assert {"name": "search", "backend": "sqlite-fts5", "ok": True}.items() <= next(
        b for b in ready["backends"] if b["name"] == "search"
    ).items()
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    assert {"/v1/indexes/{index}/search", "/v1/indexes/{index}/tasks/{task_id}"} <= set(paths)


# --- tenant isolation: every endpoint, with another tenant's credentials ---------------------------

ISOLATION: list[tuple[str, str, Any]] = [
    ("GET", "/v1/indexes/catalog", None),
    ("DELETE", "/v1/indexes/catalog", None),
    ("POST", "/v1/indexes/catalog/documents", [{"id": "evil", "title": "planted"}]),
    ("POST", "/v1/indexes/catalog/documents?wait=true", [{"id": "evil", "title": "planted"}]),
    ("DELETE", "/v1/indexes/catalog/documents/a1", None),
    ("GET", "/v1/indexes/catalog/tasks/{task_id}", None),
    ("POST", "/v1/indexes/catalog/search", {"q": "acme"}),
    ("POST", "/v1/indexes/catalog/search", {"q": ""}),
]


@pytest.mark.parametrize("who", ["other-tenant-key", "root-acting-as-other", "key-claiming-other"])
@pytest.mark.parametrize(("method", "path", "body"), ISOLATION)
async def test_other_tenants_get_nothing(
    client: Client, make_tenant: MakeTenant, acme: Headers, who: str, method: str, path: str, body: Any
) -> None:
    task = await client.post("/v1/indexes/catalog/documents?wait=true", json=[DOCS[0]], headers=acme)
    path = path.format(task_id=task.json()["task_id"])
    globex = await make_tenant("globex", ("search",))
    headers = {
        "other-tenant-key": globex,
        "root-acting-as-other": {**ROOT, "X-Tenant-ID": "globex"},
        "key-claiming-other": {**acme, "X-Tenant-ID": "globex"},
    }[who]
    response = await client.request(method, path, json=body, headers=headers)
    assert response.status_code in (403, 404), response.text
    # (the random task id, echoed in a 404, may happen to contain "a1")
    shown = response.text.replace("/a1", "").replace(task.json()["task_id"], "")
    assert "Acme" not in response.text and "a1" not in shown
    # acme's index is untouched
    after = (await search(client, acme, {"q": "acme"})).json()
    assert sorted(h["id"] for h in after["hits"]) == ["a1", "a2"]
    assert (await client.get("/v1/indexes", headers=globex)).json()["items"] == []


async def test_same_index_name_in_two_tenants(client: Client, make_tenant: MakeTenant, acme: Headers) -> None:
    globex = await make_tenant("globex", ("search",))
    assert (await client.put("/v1/indexes/catalog", json=DEFINITION, headers=globex)).status_code == 201
    await client.post(
        "/v1/indexes/catalog/documents?wait=true", json=[{"id": "g1", "title": "Acme rival"}], headers=globex
    )
    assert [h["id"] for h in (await search(client, globex, {"q": "acme"})).json()["hits"]] == ["g1"]
    assert "g1" not in [h["id"] for h in (await search(client, acme, {"q": "acme"})).json()["hits"]]


async def test_meilisearch_down_is_503_naming_it(tmp_path: Path, make_tenant: MakeTenant) -> None:
    settings = make_settings(tmp_path / "meili", meili_url="http://127.0.0.1:9")
    async with AsyncTestClient(create_app(settings), base_url="http://appliance.test") as down:
        ready = await down.get("/readyz")
        problem = assert_problem(ready, 503)
        assert "search" in problem["detail"]
        response = await down.put("/v1/indexes/catalog", json=DEFINITION, headers=ROOT)
        assert "meilisearch" in assert_problem(response, 503)["detail"]
        response = await search(down, ROOT, {"q": "x"})
        assert "meilisearch" in assert_problem(response, 503)["detail"]
