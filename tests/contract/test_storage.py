"""The BlobStore contract: every adapter (local files, S3 on a real MinIO, the AWS plugin's S3 on moto) passes it unchanged."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from appliance.storage import BlobNotFound, BlobStore, StorageUnavailable
from appliance.storage.local import LocalBlobStore
from appliance.storage.s3 import PART_SIZE, S3BlobStore
from tests.peers import MinioPeer, free_port

MIB = 1024 * 1024


@pytest.fixture(params=["local", "s3", "aws-s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    blob_store: BlobStore
    if request.param == "local":
        blob_store = LocalBlobStore(tmp_path / "blobs")
    elif request.param == "aws-s3":
        from appliance_aws._aws import AwsClients
        from appliance_aws.s3 import S3BlobStore as AwsS3BlobStore

        moto = request.getfixturevalue("moto_peer")
        bucket = f"contract-{secrets.token_hex(6)}"
        blob_store = AwsS3BlobStore(AwsClients(**moto.client_kwargs()), bucket, sse="AES256")
    else:
        peer: MinioPeer = request.getfixturevalue("minio_peer")
        bucket = f"contract-{secrets.token_hex(6)}"
        blob_store = S3BlobStore(peer.endpoint, peer.access_key, peer.secret_key, bucket)
    await blob_store.start()
    yield blob_store
    await blob_store.close()


async def chunks_of(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def failing_after(data: bytes) -> AsyncIterator[bytes]:
    async for chunk in chunks_of(data):
        yield chunk
    raise RuntimeError("the client went away")


async def read(store: BlobStore, tenant: str, name: str, offset: int = 0, length: int | None = None) -> bytes:
    return b"".join([c async for c in await store.get(tenant, name, offset, length)])


async def all_names(store: BlobStore, tenant: str, prefix: str = "") -> list[str]:
    return (await store.list(tenant, prefix)).names


def etags(data: bytes) -> set[str]:
    """The ETags API.md allows for ``data``: its hex MD5 or its hex SHA-256 (the built-in adapters use SHA-256)."""
    return {hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize("size", [0, 1, 100_000])
async def test_put_then_get_round_trips(store: BlobStore, size: int) -> None:
    data = os.urandom(size)
    info = await store.put("acme", "photos/aa/one", chunks_of(data))
    assert info.size == size and info.etag in etags(data)
    assert await read(store, "acme", "photos/aa/one") == data
    assert (await store.head("acme", "photos/aa/one")).size == size


async def test_unknown_length_stream_larger_than_a_part(store: BlobStore) -> None:
    data = os.urandom(PART_SIZE * 2 + 12345)
    info = await store.put("acme", "big/blob", chunks_of(data, 300_001))
    assert info.size == len(data) and info.etag in etags(data)
    assert await read(store, "acme", "big/blob") == data
    assert await read(store, "acme", "big/blob", PART_SIZE - 5, 10) == data[PART_SIZE - 5 : PART_SIZE + 5]


async def test_a_reader_that_stops_early(store: BlobStore) -> None:
    # A client that goes away mid-download: the stream closes cleanly and the blob reads fine after.
    data = os.urandom(2 * PART_SIZE + 777)
    await store.put("acme", "big/early", chunks_of(data, 1_000_003))
    stream = await store.get("acme", "big/early")
    assert data.startswith(await anext(stream))
    await stream.aclose()  # type: ignore[attr-defined]
    assert await read(store, "acme", "big/early", 5, PART_SIZE) == data[5 : PART_SIZE + 5]


@pytest.mark.parametrize(("offset", "length"), [(0, 1), (3, 4), (9, None), (0, 10), (5, 0)])
async def test_ranges(store: BlobStore, offset: int, length: int | None) -> None:
    data = b"0123456789"
    await store.put("acme", "r/x", chunks_of(data))
    end = None if length is None else offset + length
    assert await read(store, "acme", "r/x", offset, length) == data[offset:end]


@pytest.mark.parametrize(("offset", "length"), [(0, 3 * MIB + 7), (1, MIB), (MIB + 3, 2 * MIB + 4)])
async def test_large_ranges(store: BlobStore, offset: int, length: int) -> None:
    # Ranges of a large blob that cut across the chunks it was written in and the pieces it is read in.
    data = os.urandom(3 * MIB + 7)
    await store.put("acme", "r/big", chunks_of(data, MIB))
    assert await read(store, "acme", "r/big", offset, length) == data[offset : offset + length]


async def test_missing_blobs(store: BlobStore) -> None:
    with pytest.raises(BlobNotFound):
        await store.get("acme", "nope/x")
    with pytest.raises(BlobNotFound):
        await store.get("acme", "nope/x", 0, 2 * MIB)
    with pytest.raises(BlobNotFound):
        await store.head("acme", "nope/x")
    await store.delete("acme", "nope/x")  # idempotent


async def test_overwrite_replaces_whole_blob(store: BlobStore) -> None:
    await store.put("acme", "b/k", chunks_of(b"first version, long"))
    await store.put("acme", "b/k", chunks_of(b"second"))
    assert await read(store, "acme", "b/k") == b"second"


@pytest.mark.parametrize("size", [10_000, PART_SIZE + 10_000])
async def test_a_failed_upload_leaves_nothing(store: BlobStore, size: int, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="went away"):
        await store.put("acme", "b/failed", failing_after(os.urandom(size)))
    with pytest.raises(BlobNotFound):
        await store.head("acme", "b/failed")
    assert await all_names(store, "acme") == []
    if isinstance(store, LocalBlobStore):
        assert list((store.root / ".tmp").iterdir()) == []


async def test_a_failed_overwrite_keeps_the_old_blob(store: BlobStore) -> None:
    await store.put("acme", "b/k", chunks_of(b"old"))
    with pytest.raises(RuntimeError):
        await store.put("acme", "b/k", failing_after(b"new bytes"))
    assert await read(store, "acme", "b/k") == b"old"


async def test_delete(store: BlobStore) -> None:
    await store.put("acme", "b/k", chunks_of(b"x"))
    await store.delete("acme", "b/k")
    with pytest.raises(BlobNotFound):
        await store.head("acme", "b/k")
    await store.delete("acme", "b/k")


async def put_all(store: BlobStore, tenant: str, names: Iterable[str]) -> None:
    for name in names:
        await store.put(tenant, name, chunks_of(name.encode()))


async def test_list_by_prefix_with_cursor(store: BlobStore) -> None:
    names = [f"docs/{i:02d}/f" for i in range(7)] + ["other/x", "docsy/y"]
    await put_all(store, "acme", names)
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list("acme", "docs/", cursor, limit=3)
        assert len(page.names) <= 3
        seen += page.names
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == sorted(n for n in names if n.startswith("docs/"))
    assert await all_names(store, "acme") == sorted(names)


async def test_tenants_never_see_each_other(store: BlobStore) -> None:
    await put_all(store, "acme", ["b/secret"])
    await put_all(store, "globex", ["b/mine"])
    with pytest.raises(BlobNotFound):
        await store.get("globex", "b/secret")
    with pytest.raises(BlobNotFound):
        await store.head("globex", "b/secret")
    assert await all_names(store, "globex") == ["b/mine"]
    await store.delete("globex", "b/secret")
    assert await read(store, "acme", "b/secret") == b"b/secret"
    assert await store.delete_tenant("globex") == 1
    assert await all_names(store, "globex") == []
    assert await all_names(store, "acme") == ["b/secret"]


@pytest.mark.parametrize(
    ("tenant", "name"),
    [
        ("acme", "../etc/passwd"),
        ("acme", "a/../../b"),
        ("acme", "/abs"),
        ("acme", ""),
        ("ACME", "a"),
        ("a/b", "c"),
        ("..", "x"),
    ],
)
async def test_names_outside_the_tenant_are_refused(store: BlobStore, tenant: str, name: str) -> None:
    with pytest.raises(ValueError):
        await store.put(tenant, name, chunks_of(b"x"))
    with pytest.raises(ValueError):
        await store.get(tenant, name)


async def test_health(store: BlobStore) -> None:
    status = await store.health()
    assert status.ok and status.name == "storage" and status.backend == store.backend


async def test_s3_down_is_storage_unavailable() -> None:
    store = S3BlobStore(f"127.0.0.1:{free_port()}", "k", "secretkey", "nowhere", timeout=2)
    await store.start()
    try:
        with pytest.raises(StorageUnavailable, match=r"s3 at 127\.0\.0\.1"):
            await store.put("acme", "b/k", chunks_of(b"x"))
        with pytest.raises(StorageUnavailable):
            await store.get("acme", "b/k")
        with pytest.raises(StorageUnavailable, match=r"s3 at 127\.0\.0\.1"):
            await store.get("acme", "b/k", 0, 2 * MIB)
        assert not (await store.health()).ok
    finally:
        await store.close()


@pytest.mark.parametrize("size", [1000, 2 * PART_SIZE + 1000])
async def test_s3_rejects_bytes_that_do_not_match_their_checksum(
    minio_peer: MinioPeer, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    # Parts go with UNSIGNED-PAYLOAD and a signed CRC32C header: MinIO itself must verify the bytes,
    # or payload signing would have been dropped without a replacement. A wrong checksum fails the
    # upload, and nothing is left behind.
    import appliance.storage.s3 as s3_module

    store = S3BlobStore(
        minio_peer.endpoint, minio_peer.access_key, minio_peer.secret_key, f"crc-{secrets.token_hex(6)}"
    )
    await store.start()
    try:
        data = os.urandom(size)
        info = await store.put("acme", "b/good", chunks_of(data))
        assert info.etag == hashlib.sha256(data).hexdigest() and await read(store, "acme", "b/good") == data

        real = s3_module._crc32c_of
        monkeypatch.setattr(s3_module, "_crc32c_of", lambda chunks: real(chunks) ^ 1)
        with pytest.raises(StorageUnavailable, match=r"(?i)checksum|digest"):
            await store.put("acme", "b/bad", chunks_of(data))
        with pytest.raises(BlobNotFound):
            await store.head("acme", "b/bad")
        assert await all_names(store, "acme") == ["b/good"]
    finally:
        await store.close()
