"""API.md "Storage", as scenario tables, on the local adapter and (where marked) on MinIO too."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from appliance.config import Settings
from appliance.core.shards import acting_for
from appliance.plugin import BackendSpec, hookimpl
from appliance.storage import BlobInfo, open_blob_store
from appliance.storage.local import LocalBlobStore
from appliance.storage.service import StorageService
from tests.api.test_core import assert_problem
from tests.conftest import ROOT, MakeTenant, make_settings
from tests.peers import MinioPeer, free_port

Client = AsyncTestClient[Litestar]
OBJ = "/v1/buckets/photos/objects"
BOTH = pytest.mark.parametrize("settings", ["local", "s3"], indirect=True)


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    backend = getattr(request, "param", "local")
    if backend == "s3":
        peer: MinioPeer = request.getfixturevalue("minio_peer")
        return make_settings(
            tmp_path / "data",
            s3_endpoint=peer.endpoint,
            s3_access_key=peer.access_key,
            s3_secret_key=peer.secret_key,
            s3_bucket_prefix=f"api-{secrets.token_hex(6)}",
        )
    return make_settings(tmp_path / "data", storage_max_object_bytes=16 * 1024 * 1024)


async def events(app: Litestar, tenant: str = "default") -> list[tuple[str, dict[str, Any]]]:
    with acting_for(tenant):  # the tenant's shard, with APPLIANCE_DATABASE_SHARDS
        rows = await app.state.ctx.db.fetchall(
            "SELECT type, payload FROM events WHERE tenant_id = ? AND source = 'storage' ORDER BY id",
            (tenant,),
        )
    return [(r["type"], msgspec.json.decode(r["payload"])) for r in rows]


def blob_files(settings: Settings) -> list[Path]:
    root = settings.data_path / "blobs"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def stored_blobs(settings: Settings, tenant: str) -> list[str]:
    """The tenant's blobs as the backend has them (a store of our own: the app's lives on its own loop)."""
    store = open_blob_store(settings)
    await store.start()
    try:
        return (await store.list(tenant)).names
    finally:
        await store.close()


def etags(data: bytes) -> set[str]:
    """The ETags API.md allows for ``data``: its hex MD5 or its hex SHA-256 (the built-in adapters use SHA-256)."""
    return {hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest()}


def signed_path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def put(client: Client, key: str, data: bytes, headers: dict[str, str] | None = None) -> Any:
    return await client.put(f"{OBJ}/{key}", content=data, headers={**ROOT, **(headers or {})})


# ------------------------------------------------------------------ bad input ---


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("PUT", "/v1/buckets/ab/objects/k", {}, 400),  # bucket too short
        ("PUT", "/v1/buckets/Photos/objects/k", {}, 400),
        ("PUT", "/v1/buckets/a..b/objects/k", {}, 400),
        ("PUT", "/v1/buckets/-abc/objects/k", {}, 400),
        ("PUT", "/v1/buckets/abc-/objects/k", {}, 400),
        ("PUT", "/v1/buckets/192.168.1.1/objects/k", {}, 400),
        ("PUT", "/v1/buckets/xn--bucket/objects/k", {}, 400),
        ("PUT", "/v1/buckets/my-s3alias/objects/k", {}, 400),
        ("PUT", "/v1/buckets/a.-b/objects/k", {}, 400),
        ("PUT", "/v1/buckets/a_b/objects/k", {}, 400),
        ("PUT", "/v1/buckets/" + "a" * 64 + "/objects/k", {}, 400),
        ("PUT", f"{OBJ}/%2e%2e/etc/passwd", {}, 400),
        ("PUT", f"{OBJ}/a/%2E%2E/b", {}, 400),
        ("PUT", f"{OBJ}/a/%2E/b", {}, 400),
        ("PUT", f"{OBJ}//abs", {}, 400),
        ("PUT", f"{OBJ}/%2Fabs", {}, 400),
        ("PUT", f"{OBJ}/a%00b", {}, 400),
        ("PUT", f"{OBJ}/a%0Ab", {}, 400),
        ("PUT", f"{OBJ}/a%7Fb", {}, 400),
        ("PUT", f"{OBJ}/%FF%FE", {}, 400),
        ("PUT", f"{OBJ}/" + "k" * 1025, {}, 400),
        ("PUT", f"{OBJ}/" + "é" * 513, {}, 400),  # 1026 bytes of UTF-8
        ("PUT", f"{OBJ}/k", {"x-meta-bad name!": "v"}, 400),
        ("PUT", f"{OBJ}/k", {"x-meta-big": "v" * 3000}, 400),
        ("GET", f"{OBJ}/missing", {}, 404),
        ("HEAD", f"{OBJ}/missing", {}, 404),
        ("DELETE", f"{OBJ}/missing", {}, 404),
        ("GET", f"{OBJ}/%2e%2e/x", {}, 400),
        ("DELETE", f"{OBJ}/%2e%2e/x", {}, 400),
        ("GET", "/v1/buckets/BAD/objects", {}, 400),
        ("GET", f"{OBJ}?limit=0", {}, 422),
        ("GET", f"{OBJ}?limit=1001", {}, 422),
        ("GET", f"{OBJ}?cursor=%%%", {}, 400),
    ],
)
async def test_bad_requests_are_problem_json(
    client: Client, method: str, path: str, headers: dict[str, str], status: int
) -> None:
    content = b"x" if method == "PUT" else None
    response = await client.request(method, path, content=content, headers={**ROOT, **headers})
    if method == "HEAD":
        assert response.status_code == status
    else:
        assert_problem(response, status)
    assert blob_files(client.app.state.ctx.settings) == []


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        (f"{OBJ}/k/url", {"expires_in": 0}, 422),
        (f"{OBJ}/k/url", {"expires_in": 8 * 24 * 3600}, 422),
        (f"{OBJ}/k/url", {"expires_in": "soon"}, 422),
        (f"{OBJ}/k/url", {"expires_in": 60, "extra": 1}, 422),
        (f"{OBJ}/k/sign", {"expires_in": 60}, 404),
        (f"{OBJ}/missing/url", {"expires_in": 60}, 404),
    ],
)
async def test_bad_signed_url_requests(client: Client, path: str, body: Any, status: int) -> None:
    assert (await put(client, "k", b"x")).status_code == 201
    assert_problem(await client.post(path, json=body, headers=ROOT), status)


async def test_auth_and_scope(client: Client, make_tenant: MakeTenant) -> None:
    assert_problem(await client.get(f"{OBJ}/k"), 401)
    assert_problem(await client.put(f"{OBJ}/k", content=b"x"), 401)
    search_only = await make_tenant("acme", ("search",))
    assert_problem(await client.put(f"{OBJ}/k", content=b"x", headers=search_only), 403)
    assert_problem(await client.get(OBJ, headers=search_only), 403)
    storage = await make_tenant("acme", ("storage",), name="s")
    assert (await client.put(f"{OBJ}/k", content=b"x", headers=storage)).status_code == 201


# ------------------------------------------------------------- the lifecycle ---


@BOTH
async def test_put_get_head_delete_and_events(client: Client, app: Litestar) -> None:
    data = b"hello, world\n" * 1000
    created = await put(
        client,
        "albums/2024/beach photo.txt",
        data,
        {
            "Content-Type": "text/plain",
            "x-meta-owner": "Bob",
            "X-Meta-Album": "beach",
            "Cache-Control": "max-age=60",
        },
    )
    assert created.status_code == 201, created.text
    body = created.json()
    etag = body["etag"]
    assert etag in etags(data)
    assert body == {
        **body,
        "bucket": "photos",
        "key": "albums/2024/beach photo.txt",
        "size": len(data),
        "content_type": "text/plain",
        "metadata": {"owner": "Bob", "album": "beach"},
    }
    assert urlsplit(body["url"]).path == f"{OBJ}/albums/2024/beach%20photo.txt"

    got = await client.get(f"{OBJ}/albums/2024/beach%20photo.txt", headers=ROOT)
    assert got.status_code == 200 and got.content == data
    assert got.headers["etag"] == f'"{etag}"'
    assert got.headers["content-length"] == str(len(data))
    assert got.headers["content-type"] == "text/plain"
    assert got.headers["cache-control"] == "max-age=60"
    assert got.headers["x-meta-owner"] == "Bob"

    headed = await client.head(f"{OBJ}/albums/2024/beach%20photo.txt", headers=ROOT)
    assert headed.status_code == 200 and headed.content == b""
    assert headed.headers["content-length"] == str(len(data)) and headed.headers["etag"] == f'"{etag}"'

    gone = await client.delete(f"{OBJ}/albums/2024/beach%20photo.txt", headers=ROOT)
    assert gone.status_code == 204
    assert_problem(await client.get(f"{OBJ}/albums/2024/beach%20photo.txt", headers=ROOT), 404)
    assert [(t, p["key"]) for t, p in await events(app)] == [
        ("storage.object.created", "albums/2024/beach photo.txt"),
        ("storage.object.deleted", "albums/2024/beach photo.txt"),
    ]
    assert (await client.get(OBJ, headers=ROOT)).json()["items"] == []
    if not app.state.ctx.settings.s3_endpoint:
        assert blob_files(app.state.ctx.settings) == []


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("a//b", "a//b"),
        ("dir/", "dir/"),
        ("with?query", "with%3Fquery"),
        ("100%", "100%25"),
        ("ünï cødé/ключ", "%C3%BCn%C3%AF%20c%C3%B8d%C3%A9/%D0%BA%D0%BB%D1%8E%D1%87"),
        ("...", "..."),
        ("a/..b/c..", "a/..b/c.."),
        ("k" * 1024, "k" * 1024),
    ],
)
async def test_keys_are_kept_exactly_as_sent(client: Client, key: str, path: str) -> None:
    created = await client.put(f"{OBJ}/{path}", content=key.encode(), headers=ROOT)
    assert created.status_code == 201, created.text
    assert created.json()["key"] == key
    assert (await client.get(f"{OBJ}/{path}", headers=ROOT)).content == key.encode()
    listed = (await client.get(OBJ, headers=ROOT)).json()["items"]
    assert [o["key"] for o in listed] == [key]


@BOTH
async def test_overwrite_replaces_atomically(client: Client, app: Litestar) -> None:
    first = (await put(client, "k", b"first")).json()
    second = (await put(client, "k", b"second!", {"Content-Type": "text/plain"})).json()
    assert second["created_at"] == first["created_at"] and second["updated_at"] >= first["updated_at"]
    got = await client.get(f"{OBJ}/k", headers=ROOT)
    assert got.content == b"second!" and got.headers["content-type"] == "text/plain"
    assert [p["replaced"] for _, p in await events(app)] == [False, True]
    if not app.state.ctx.settings.s3_endpoint:
        assert len(blob_files(app.state.ctx.settings)) == 1


async def test_default_content_type_and_empty_object(client: Client) -> None:
    created = (await put(client, "empty", b"")).json()
    assert created["size"] == 0 and created["content_type"] == "application/octet-stream"
    got = await client.get(f"{OBJ}/empty", headers=ROOT)
    assert got.status_code == 200 and got.content == b"" and got.headers["content-length"] == "0"
    assert_problem(await client.get(f"{OBJ}/empty", headers={**ROOT, "Range": "bytes=0-"}), 416)


@BOTH
async def test_bodies_beyond_the_json_body_limit_are_accepted(client: Client) -> None:
    data = os.urandom(12 * 1024 * 1024)  # the app-wide limit is 10 MiB; objects have their own
    created = await put(client, "big", data)
    assert created.status_code == 201, created.text
    assert created.json()["etag"] in etags(data)
    assert (await client.get(f"{OBJ}/big", headers=ROOT)).content == data
    part = await client.get(f"{OBJ}/big", headers={**ROOT, "Range": "bytes=1000-3000999"})
    assert part.status_code == 206 and part.content == data[1000:3001000]


# ----------------------------------------------------------------- 413 limit ---


@BOTH
async def test_too_large_is_413_and_leaves_nothing(client: Client, app: Litestar) -> None:
    # The test client always declares Content-Length; the limit enforced mid-stream on a chunked
    # upload is covered by test_storage_process.py against a real server.
    service = app.state.ctx.service("storage", StorageService)
    service.max_bytes = 10_000
    data = os.urandom(10_001)
    body = assert_problem(await client.put(f"{OBJ}/too-big", content=data, headers=ROOT), 413)
    assert "10000-byte limit" in body["detail"]
    assert_problem(await client.get(f"{OBJ}/too-big", headers=ROOT), 404)
    assert (await client.get(OBJ, headers=ROOT)).json()["items"] == []
    assert await events(app) == []
    assert await stored_blobs(app.state.ctx.settings, "default") == []
    exact = await client.put(f"{OBJ}/fits", content=data[:10_000], headers=ROOT)
    assert exact.status_code == 201 and exact.json()["size"] == 10_000


# ------------------------------------------------------ ranges, conditionals ---


@BOTH
@pytest.mark.parametrize(
    ("range_header", "status", "body", "content_range"),
    [
        ("bytes=0-0", 206, b"0", "bytes 0-0/10"),
        ("bytes=2-4", 206, b"234", "bytes 2-4/10"),
        ("bytes=7-", 206, b"789", "bytes 7-9/10"),
        ("bytes=-3", 206, b"789", "bytes 7-9/10"),
        ("bytes=-30", 206, b"0123456789", "bytes 0-9/10"),
        ("bytes=5-100", 206, b"56789", "bytes 5-9/10"),
        ("bytes=10-", 416, None, "bytes */10"),
        ("bytes=10-20", 416, None, "bytes */10"),
        ("bytes=-0", 416, None, "bytes */10"),
        ("bytes=4-2", 200, b"0123456789", None),  # invalid: ignored
        ("bytes=0-1,4-5", 200, b"0123456789", None),  # several ranges: ignored
        ("items=0-1", 200, b"0123456789", None),
        ("bytes=-", 200, b"0123456789", None),
    ],
)
async def test_ranges(
    client: Client, range_header: str, status: int, body: bytes | None, content_range: str | None
) -> None:
    await put(client, "digits", b"0123456789")
    response = await client.get(f"{OBJ}/digits", headers={**ROOT, "Range": range_header})
    assert response.status_code == status
    assert response.headers.get("content-range") == content_range
    if body is None:
        assert_problem(response, 416)
    else:
        assert response.content == body and response.headers["content-length"] == str(len(body))


@pytest.mark.parametrize(
    ("if_none_match", "status"),
    [
        ("{etag}", 304),
        ('"{etag}"', 304),
        ('W/"{etag}"', 304),
        ('"other", "{etag}"', 304),
        ("*", 304),
        ('"other"', 200),
    ],
)
async def test_if_none_match(client: Client, if_none_match: str, status: int) -> None:
    etag = (await put(client, "k", b"content")).json()["etag"]
    header = if_none_match.format(etag=etag)
    for method in ("GET", "HEAD"):
        response = await client.request(method, f"{OBJ}/k", headers={**ROOT, "If-None-Match": header})
        assert response.status_code == status
        assert response.headers["etag"] == f'"{etag}"'
        if status == 304:
            assert response.content == b""


# ------------------------------------------------------------------- listing ---


@BOTH
async def test_listing_by_prefix_with_pagination(client: Client) -> None:
    keys = [f"2024/{m:02d}/p.jpg" for m in range(1, 8)] + ["2023/x", "2024-notes", "other"]
    for key in keys:
        assert (await put(client, key, key.encode())).status_code == 201
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"prefix": "2024/", "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(OBJ, params=params, headers=ROOT)).json()
        assert len(page["items"]) <= 3
        seen += [o["key"] for o in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(k for k in keys if k.startswith("2024/"))
    everything = (await client.get(OBJ, headers=ROOT)).json()
    assert [o["key"] for o in everything["items"]] == sorted(keys) and everything["next_cursor"] is None
    other_bucket = (await client.get("/v1/buckets/empty-bucket/objects", headers=ROOT)).json()
    assert other_bucket == {"items": [], "next_cursor": None}


# --------------------------------------------------------------- signed URLs ---


@BOTH
async def test_signed_url_downloads_without_a_key(client: Client) -> None:
    await put(client, "shared/report.pdf", b"%PDF-1.7 report", {"Content-Type": "application/pdf"})
    signed = await client.post(f"{OBJ}/shared/report.pdf/url", json={"expires_in": 300}, headers=ROOT)
    assert signed.status_code == 200, signed.text
    body = signed.json()
    assert body["url"].startswith("http://127.0.0.1:8000/v1/signed/default/photos/shared/report.pdf?")
    path = signed_path(body["url"])
    got = await client.get(path)
    assert got.status_code == 200 and got.content == b"%PDF-1.7 report"
    assert got.headers["content-type"] == "application/pdf"
    part = await client.get(path, headers={"Range": "bytes=5-"})
    assert part.status_code == 206 and part.content == b"1.7 report"
    assert (await client.head(path)).headers["content-length"] == "15"
    await client.delete(f"{OBJ}/shared/report.pdf", headers=ROOT)
    assert_problem(await client.get(path), 404)


@pytest.mark.parametrize(
    ("mutate", "detail"),
    [
        (lambda p: p.replace("signature=", "signature=0"), "does not match"),
        (lambda p: p[:-1] + ("1" if p.endswith("0") else "0"), "does not match"),
        (lambda p: p.replace("/photos/", "/photos2/"), "does not match"),
        (lambda p: p.replace("/a.txt", "/b.txt"), "does not match"),
        (lambda p: p.replace("/default/", "/acme/"), "does not match"),
        (lambda p: p.replace("expires=", "expires=1"), "does not match"),
        (lambda p: p.replace("expires=", "expires=x"), "malformed"),
        (lambda p: p.split("&")[0], "does not match"),
        (lambda p: p.split("?")[0], "malformed"),
    ],
)
async def test_tampered_signed_urls_are_403(client: Client, mutate: Any, detail: str) -> None:
    await put(client, "a.txt", b"a")
    await put(client, "b.txt", b"b")
    signed = (await client.post(f"{OBJ}/a.txt/url", json={"expires_in": 60}, headers=ROOT)).json()
    path = mutate(signed_path(signed["url"]))
    body = assert_problem(await client.get(path), 403)
    assert detail in body["detail"]
    assert (await client.head(path)).status_code == 403


async def test_expired_signed_url_is_403(client: Client, app: Litestar) -> None:
    await put(client, "a.txt", b"a")
    service = app.state.ctx.service("storage", StorageService)
    # A correctly signed URL whose expiry has passed (no waiting on the clock).
    expired = 1_000_000_000
    signature = service._signature("default", "photos", "a.txt", expired)
    path = f"/v1/signed/default/photos/a.txt?expires={expired}&signature={signature}"
    body = assert_problem(await client.get(path), 403)
    assert "expired" in body["detail"]


async def test_signing_secret_survives_restarts(settings: Settings) -> None:
    from appliance.app import create_app

    urls = []
    for _ in range(2):
        async with AsyncTestClient(create_app(settings)) as client:
            if not urls:
                await put(client, "k", b"v")
            signed = await client.post(f"{OBJ}/k/url", json={"expires_in": 60}, headers=ROOT)
            urls.append(signed_path(signed.json()["url"]))
            assert (await client.get(urls[0])).status_code == 200


# ------------------------------------------------------------ tenant isolation ---

ACME_OBJECT = f"{OBJ}/private/plan.txt"


@BOTH
@pytest.mark.parametrize(
    ("method", "path", "json", "statuses"),
    [
        ("GET", ACME_OBJECT, None, {404}),
        ("HEAD", ACME_OBJECT, None, {404}),
        ("DELETE", ACME_OBJECT, None, {404}),
        ("POST", f"{ACME_OBJECT}/url", {"expires_in": 60}, {404}),
        ("GET", OBJ, None, {200}),
        ("GET", f"{OBJ}?prefix=private/", None, {200}),
    ],
)
async def test_tenant_isolation(
    client: Client, make_tenant: MakeTenant, method: str, path: str, json: Any, statuses: set[int]
) -> None:
    acme = await make_tenant("acme", ("storage",))
    globex = await make_tenant("globex", ("storage",))
    await client.put(ACME_OBJECT, content=b"acme's secret plan", headers=acme)
    for headers in (globex, {**ROOT, "X-Tenant-ID": "globex"}):
        response = await client.request(method, path, json=json, headers=headers)
        assert response.status_code in statuses
        assert b"secret plan" not in response.content
        if response.status_code == 200:
            assert response.json()["items"] == []
    still = await client.get(ACME_OBJECT, headers=acme)
    assert still.status_code == 200 and still.content == b"acme's secret plan"


@BOTH
async def test_tenants_with_the_same_bucket_and_key_stay_apart(
    client: Client, make_tenant: MakeTenant, app: Litestar
) -> None:
    acme = await make_tenant("acme", ("storage",))
    globex = await make_tenant("globex", ("storage",))
    await client.put(ACME_OBJECT, content=b"acme", headers=acme)
    await client.put(ACME_OBJECT, content=b"globex", headers=globex)
    assert (await client.get(ACME_OBJECT, headers=acme)).content == b"acme"
    assert (await client.get(ACME_OBJECT, headers=globex)).content == b"globex"
    await client.delete(ACME_OBJECT, headers=globex)
    assert (await client.get(ACME_OBJECT, headers=acme)).content == b"acme"
    # A signed URL of acme's cannot be turned into one of globex's.
    signed = (await client.post(f"{ACME_OBJECT}/url", json={"expires_in": 60}, headers=acme)).json()
    path = signed_path(signed["url"])
    assert (await client.get(path)).content == b"acme"
    assert_problem(await client.get(path.replace("/acme/", "/globex/")), 403)
    assert [t for t, _ in await events(app, "globex")] == ["storage.object.created", "storage.object.deleted"]
    assert [t for t, _ in await events(app, "acme")] == ["storage.object.created"]


@BOTH
async def test_deleting_a_tenant_deletes_its_blobs(
    client: Client, make_tenant: MakeTenant, app: Litestar
) -> None:
    doomed = await make_tenant("doomed", ("storage",))
    keeper = await make_tenant("keeper", ("storage",))
    for index in range(3):
        await client.put(f"{OBJ}/f{index}", content=b"x" * index, headers=doomed)
    await client.put(f"{OBJ}/kept", content=b"kept", headers=keeper)
    settings = app.state.ctx.settings
    assert len(await stored_blobs(settings, "doomed")) == 3
    assert (await client.delete("/v1/tenants/doomed", headers=ROOT)).status_code == 204
    assert await stored_blobs(settings, "doomed") == []
    assert len(await stored_blobs(settings, "keeper")) == 1
    rows = await app.state.ctx.db.fetchall("SELECT * FROM storage_objects WHERE tenant_id = 'doomed'")
    assert rows == []
    assert (await client.get(f"{OBJ}/kept", headers=keeper)).content == b"kept"


# --------------------------------------------------------------- backend down ---


async def test_s3_down_is_503_naming_it(tmp_path: Path) -> None:
    from appliance.app import create_app

    settings = make_settings(
        tmp_path / "data",
        s3_endpoint=f"127.0.0.1:{free_port()}",
        s3_access_key="k",
        s3_secret_key="secretkey",
    )
    async with AsyncTestClient(create_app(settings)) as client:
        body = assert_problem(await client.put(f"{OBJ}/k", content=b"x", headers=ROOT), 503)
        assert "s3 at 127.0.0.1" in body["detail"]
        ready = assert_problem(await client.get("/readyz"), 503)
        assert "storage" in ready["detail"]
        assert (await client.get(OBJ, headers=ROOT)).status_code == 200  # metadata still answers


def test_an_invalid_physical_bucket_name_fails_at_start(tmp_path: Path) -> None:
    from appliance.app import create_app
    from appliance.config import ConfigError

    settings = make_settings(tmp_path / "data", s3_endpoint="127.0.0.1:9", s3_bucket_prefix="Not_A_Bucket")
    with pytest.raises(ConfigError, match="APPLIANCE_S3_BUCKET_PREFIX"):
        create_app(settings)


async def test_garbage_collection_removes_only_old_unreferenced_blobs(client: Client, app: Litestar) -> None:
    from appliance.core.ids import new_id

    await put(client, "kept", b"kept")
    service = app.state.ctx.service("storage", StorageService)
    store = service.store
    old_orphan = "photos/aa/0000000000" + "a" * 16  # named in 1970, never committed
    young_orphan = f"photos/bb/{new_id()}"  # could be an upload committing right now
    foreign = "photos/cc/not-one-of-ours"

    async def one(data: bytes) -> AsyncIterator[bytes]:
        yield data

    for name in (old_orphan, young_orphan, foreign):
        await store.put("default", name, one(b"orphan"))
    assert await service.collect_garbage() == 1
    names = (await store.list("default")).names
    assert old_orphan not in names and {young_orphan, foreign} <= set(names) and len(names) == 3
    assert (await client.get(f"{OBJ}/kept", headers=ROOT)).content == b"kept"
    assert await service.collect_garbage(min_age=0) == 1  # names that are not ours are never touched
    assert foreign in (await store.list("default")).names
    assert (await client.get(f"{OBJ}/kept", headers=ROOT)).content == b"kept"


async def test_openapi_documents_the_storage_routes(client: Client) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    objects = paths["/v1/buckets/{bucket}/objects/{key}"]
    assert {"get", "put", "head", "delete", "post"} <= objects.keys()
    assert objects["put"]["requestBody"]["content"]["*/*"]["schema"]["format"] == "binary"
    assert "get" in paths["/v1/buckets/{bucket}/objects"]
    assert {"get", "head"} <= paths["/v1/signed/{tenant}/{bucket}/{key}"].keys()


@pytest.mark.parametrize("bucket", ["abc", "my.bucket-1", "a" * 63, "123", "logs-2024.archive"])
async def test_valid_bucket_names(client: Client, bucket: str) -> None:
    created = await client.put(f"/v1/buckets/{bucket}/objects/k", content=b"x", headers=ROOT)
    assert created.status_code == 201, created.text
    assert created.json()["bucket"] == bucket
    listed = (await client.get(f"/v1/buckets/{bucket}/objects", headers=ROOT)).json()["items"]
    assert [o["key"] for o in listed] == ["k"]


class _RecordingStore(LocalBlobStore):
    """A plugin's blob store: the local one, under its own name, noting what it was asked to store."""

    backend = "recording"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.written: list[str] = []

    async def put(self, tenant: str, name: str, chunks: AsyncIterable[bytes]) -> BlobInfo:
        self.written.append(f"{tenant}/{name}")
        return await super().put(tenant, name, chunks)


class _StoragePlugin:
    def __init__(self, root: Path) -> None:
        self.store = _RecordingStore(root)

    @hookimpl
    def appliance_backends(self) -> list[BackendSpec]:
        return [BackendSpec(port="storage", name="recording", factory=lambda ctx: self.store)]


async def test_a_plugin_blob_store_is_used_when_configured(tmp_path: Path) -> None:
    from appliance.app import create_app

    plugin = _StoragePlugin(tmp_path / "plugin-blobs")
    settings = make_settings(tmp_path / "data", backends="storage=recording")
    async with AsyncTestClient(create_app(settings, extra_plugins=[plugin])) as client:
        assert (await put(client, "k", b"via plugin")).status_code == 201
        assert (await client.get(f"{OBJ}/k", headers=ROOT)).content == b"via plugin"
        ready = (await client.get("/readyz")).json()
        assert {"name": "storage", "backend": "recording"}.items() <= next(
            b for b in ready["backends"] if b["name"] == "storage"
        ).items()
    assert len(plugin.store.written) == 1 and plugin.store.written[0].startswith("default/photos/")
    assert blob_files(settings) == []  # nothing went to the built-in store
