"""Storage routes: API.md "Storage". Handlers parse, call the service, shape the response."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.utils import formatdate
from typing import Annotated, Any
from urllib.parse import unquote

import msgspec
from litestar import Request, Response, delete, get, head, post, put
from litestar.exceptions import InternalServerException
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import FromPath, FromQuery, JSONBody, Parameter
from litestar.response import Stream
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from appliance.core.auth import requires
from appliance.core.deps import AppContext, Caller
from appliance.core.errors import BadRequest, NotFound, Problem
from appliance.core.pagination import DEFAULT_LIMIT, Cursor, Limit, Page
from appliance.core.shards import bind_tenant
from appliance.storage.service import (
    MAX_EXPIRES_IN,
    SIGNED_PREFIX,
    ObjectInfo,
    SignedUrl,
    StorageService,
    user_metadata,
)

__all__ = ["ROUTES"]

OBJECT = "/v1/buckets/{bucket:str}/objects/{key:path}"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_GUARDS = [requires("storage")]
Prefix = Annotated[str, Parameter(max_length=1024, description="only keys starting with this")]


class UrlRequest(msgspec.Struct, forbid_unknown_fields=True):
    expires_in: Annotated[int, msgspec.Meta(ge=1, le=MAX_EXPIRES_IN)] = 3600


class RangeNotSatisfiable(Problem):
    status, slug = 416, "range-not-satisfiable"


@dataclass
class _UploadOperation(Operation):
    """The upload's OpenAPI operation: the body is the object's raw bytes (read as a stream)."""

    def __post_init__(self) -> None:
        binary = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
        self.request_body = RequestBody(content={"*/*": OpenAPIMediaType(schema=binary)}, required=True)


def _service(ctx: Any) -> StorageService:
    return ctx.service("storage", StorageService)  # type: ignore[no-any-return]


def _key(request: Request[Any, Any, Any], param: str, skip: int = 5) -> str:
    """The object key exactly as sent: the URL path after its first ``skip`` segments, percent-decoded.

    Litestar's ``path`` parameter drops empty segments (``a//b`` -> ``a/b``, a leading ``/`` vanishes),
    so the key is taken from the raw path instead, and keys are stored as the client spelt them.
    """
    raw = request.scope.get("raw_path")
    if not raw:
        return param.removeprefix("/")
    path = raw.decode("latin-1").partition("?")[0]  # test clients may leave the query on it
    try:
        return unquote(path.split("/", skip)[-1], errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("the object key is not valid UTF-8 once percent-decoded") from None


async def _body(request: Request[Any, Any, Any]) -> AsyncIterator[bytes]:
    """The request body as it arrives; a client that goes away mid-upload is a 400, not a 500."""
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except InternalServerException as exc:
        if "disconnect" not in str(exc.detail):
            raise
        raise BadRequest(
            "the upload was interrupted: the client disconnected before the end of the body"
        ) from None


@put(
    OBJECT,
    guards=_GUARDS,
    status_code=HTTP_201_CREATED,
    request_max_body_size=None,  # the storage limit applies instead, while streaming
    operation_class=_UploadOperation,
    tags=["storage"],
    summary="Upload an object (the body is streamed; x-meta-* headers become user metadata)",
)
async def put_object(
    ctx: AppContext,
    principal: Caller,
    request: Request[Any, Any, Any],
    bucket: FromPath[str],
    key: FromPath[str],
) -> ObjectInfo:
    headers = request.headers
    declared = headers.get("content-length")
    return await _service(ctx).put(
        principal.tenant,
        bucket,
        _key(request, key),
        _body(request),
        content_type=headers.get("content-type", "")[:255],
        cache_control=headers.get("cache-control", "")[:255],
        metadata=user_metadata(headers),
        declared_length=int(declared) if declared and declared.isdigit() else None,
    )


@get(OBJECT, guards=_GUARDS, tags=["storage"], summary="Download an object (Range, If-None-Match)")
async def get_object(
    ctx: AppContext,
    principal: Caller,
    request: Request[Any, Any, Any],
    bucket: FromPath[str],
    key: FromPath[str],
) -> Response[Any]:
    return await _serve(_service(ctx), principal.tenant, bucket, _key(request, key), request)


@head(OBJECT, guards=_GUARDS, tags=["storage"], summary="An object's headers, without its bytes")
async def head_object(
    ctx: AppContext,
    principal: Caller,
    request: Request[Any, Any, Any],
    bucket: FromPath[str],
    key: FromPath[str],
) -> Response[None]:
    return await _serve_head(_service(ctx), principal.tenant, bucket, _key(request, key), request)


@delete(OBJECT, guards=_GUARDS, status_code=HTTP_204_NO_CONTENT, tags=["storage"], summary="Delete an object")
async def delete_object(
    ctx: AppContext,
    principal: Caller,
    request: Request[Any, Any, Any],
    bucket: FromPath[str],
    key: FromPath[str],
) -> None:
    await _service(ctx).delete(principal.tenant, bucket, _key(request, key))


@post(
    OBJECT,
    guards=_GUARDS,
    status_code=HTTP_200_OK,
    tags=["storage"],
    summary="POST .../{key}/url: a signed URL that downloads the object without a key until it expires",
)
async def sign_url(
    ctx: AppContext,
    principal: Caller,
    request: Request[Any, Any, Any],
    bucket: FromPath[str],
    key: FromPath[str],
    data: JSONBody[UrlRequest],
) -> SignedUrl:
    # Litestar's ``path`` parameter must end the route, so ``/url`` arrives as the key's last segment.
    object_key, _, action = _key(request, key).rpartition("/")
    if action != "url" or not object_key:
        raise NotFound("POST is only for '.../objects/{key}/url' (a signed URL)")
    return await _service(ctx).sign(principal.tenant, bucket, object_key, data.expires_in)


@get(
    "/v1/buckets/{bucket:str}/objects",
    guards=_GUARDS,
    tags=["storage"],
    summary="List a bucket's objects, by key",
)
async def list_objects(
    ctx: AppContext,
    principal: Caller,
    bucket: FromPath[str],
    prefix: Prefix = "",
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> Page[ObjectInfo]:
    return await _service(ctx).list(principal.tenant, bucket, prefix, limit, cursor)


SIGNED = SIGNED_PREFIX + "/{tenant:str}/{bucket:str}/{key:path}"


@get(SIGNED, exclude_from_auth=True, tags=["storage"], summary="Download through a signed URL (no key)")
async def get_signed(
    ctx: AppContext,
    request: Request[Any, Any, Any],
    tenant: FromPath[str],
    bucket: FromPath[str],
    key: FromPath[str],
    expires: FromQuery[str] = "",
    signature: FromQuery[str] = "",
) -> Response[Any]:
    service = _service(ctx)
    service.verify(tenant, bucket, _key(request, key), expires, signature)
    bind_tenant(tenant)  # no key, so authentication did not: the signature names the tenant
    return await _serve(service, tenant, bucket, _key(request, key), request)


@head(SIGNED, exclude_from_auth=True, tags=["storage"], summary="Headers through a signed URL (no key)")
async def head_signed(
    ctx: AppContext,
    request: Request[Any, Any, Any],
    tenant: FromPath[str],
    bucket: FromPath[str],
    key: FromPath[str],
    expires: FromQuery[str] = "",
    signature: FromQuery[str] = "",
) -> Response[None]:
    service = _service(ctx)
    service.verify(tenant, bucket, _key(request, key), expires, signature)
    bind_tenant(tenant)  # no key, so authentication did not: the signature names the tenant
    return await _serve_head(service, tenant, bucket, _key(request, key), request)


# ------------------------------------------------------------ serving bytes ---


def _headers(info: ObjectInfo) -> dict[str, str]:
    headers = {
        "ETag": f'"{info.etag}"',
        "Cache-Control": info.cache_control,
        "Last-Modified": formatdate(info.updated_at, usegmt=True),
        "Accept-Ranges": "bytes",
    }
    headers.update({f"x-meta-{name}": value for name, value in info.metadata.items()})
    return headers


def _not_modified(request: Request[Any, Any, Any], etag: str) -> bool:
    header = request.headers.get("if-none-match")
    if not header:
        return False
    tags = {t.strip().removeprefix("W/").strip('"') for t in header.split(",")}
    return "*" in tags or etag in tags


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The (first, last) bytes a ``Range`` header asks for; ``None`` to send it all; 416 if unsatisfiable.

    One range only; a header we do not understand (or several ranges) is ignored, as RFC 9110 allows.
    """
    match = _RANGE.match(header.strip()) if header else None
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first and last and int(last) < int(first):
        return None  # syntactically invalid: ignored
    if first == "":  # the last N bytes
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size:
        raise RangeNotSatisfiable(
            f"the range {header!r} is outside the object's {size} bytes",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return start, end


async def _serve_head(
    service: StorageService,
    tenant: FromPath[str],
    bucket: FromPath[str],
    key: FromPath[str],
    request: Request[Any, Any, Any],
) -> Response[None]:
    info, _ = await service.head(tenant, bucket, key)
    headers = _headers(info)
    if _not_modified(request, info.etag):
        return Response(None, status_code=304, headers=headers)
    headers.update({"Content-Length": str(info.size), "Content-Type": info.content_type})
    return Response(None, status_code=200, headers=headers)


async def _serve(
    service: StorageService,
    tenant: FromPath[str],
    bucket: FromPath[str],
    key: FromPath[str],
    request: Request[Any, Any, Any],
) -> Response[Any]:
    info, blob = await service.head(tenant, bucket, key)
    headers = _headers(info)
    if _not_modified(request, info.etag):
        return Response(None, status_code=304, headers=headers)
    span = _byte_range(request.headers.get("range"), info.size)
    start, end = span if span else (0, info.size - 1)
    length = end - start + 1
    chunks = await service.open(tenant, blob, start, length if span else None)
    headers["Content-Length"] = str(length)
    headers["Content-Type"] = info.content_type  # as stored: no charset added
    if span:
        headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
    return Stream(chunks, status_code=206 if span else 200, media_type=info.content_type, headers=headers)


ROUTES = [put_object, get_object, head_object, delete_object, sign_url, list_objects, get_signed, head_signed]
