"""Identifiers: time-ordered, random, URL-safe.

Ids sort by creation time (48-bit milliseconds first), so listings ordered by id are ordered by age
and cursors can be the last id seen.
"""

from __future__ import annotations

import base64
import os
import secrets
import time

__all__ = ["new_id", "new_secret"]

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def _b32(number: int, length: int) -> str:
    chars = []
    for _ in range(length):
        number, rem = divmod(number, 32)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def new_id(prefix: str = "") -> str:
    """A 26-character time-ordered id (ULID layout), with an optional ``prefix_``."""
    stamp = int(time.time() * 1000) & ((1 << 48) - 1)
    body = _b32(stamp, 10) + _b32(int.from_bytes(os.urandom(10), "big"), 16)
    return f"{prefix}_{body}" if prefix else body


def new_secret(nbytes: int = 32) -> str:
    """A URL-safe random secret of ``nbytes`` bytes of entropy."""
    return base64.urlsafe_b64encode(secrets.token_bytes(nbytes)).rstrip(b"=").decode()
