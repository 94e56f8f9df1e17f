"""Cursor pagination: ``limit`` (default 50, max 1000) and an opaque ``cursor``; ``next_cursor`` is null at the end.

A cursor is the URL-safe base64 of the JSON of the last position seen; clients treat it as opaque.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Generic, TypeVar

import msgspec
from litestar.params import Parameter

from appliance.core.errors import BadRequest

__all__ = ["DEFAULT_LIMIT", "Cursor", "Limit", "Page", "decode_cursor", "encode_cursor"]

T = TypeVar("T")

# Use as ``limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None`` in a handler's signature.
DEFAULT_LIMIT = 50
Limit = Annotated[int, Parameter(ge=1, le=1000, description="page size, 1 to 1000 (default 50)")]
Cursor = Annotated[str | None, Parameter(max_length=512, description="next_cursor of the previous page")]


class Page(msgspec.Struct, Generic[T]):
    """One page of a listing."""

    items: list[T]
    next_cursor: str | None = None


def encode_cursor(position: Any) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(position)).rstrip(b"=").decode()


def decode_cursor(cursor: str, kind: type[T]) -> T:
    """Decode a cursor made by :func:`encode_cursor`; a malformed one is a 400, not a 500."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return msgspec.json.decode(raw, type=kind)
    except (binascii.Error, ValueError, msgspec.DecodeError, msgspec.ValidationError):
        raise BadRequest("cursor is malformed: pass next_cursor from the previous page unchanged") from None
