"""Errors as RFC 9457 problem+json, for every 4xx and 5xx the appliance answers.

Services raise :class:`Problem` (or a subclass); the exception handlers installed by the app turn it,
Litestar's own HTTP and validation exceptions, and anything unexpected into a problem+json body
with ``type``, ``title``, ``status`` and ``detail``.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

__all__ = [
    "BadRequest",
    "Conflict",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "Problem",
    "ServiceUnavailable",
    "Unauthorized",
    "Unprocessable",
    "exception_handlers",
    "problem_response",
]

log = logging.getLogger("appliance.errors")

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://appliance.dev/problems/"


class Problem(Exception):
    """An error with an HTTP status and a message meant for the client."""

    status: int = 400
    slug: str = "bad-request"

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        slug: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        if slug is not None:
            self.slug = slug
        self.headers = headers or {}
        self.extra = extra


class BadRequest(Problem):
    status, slug = 400, "bad-request"


class Unauthorized(Problem):
    status, slug = 401, "unauthorized"


class Forbidden(Problem):
    status, slug = 403, "forbidden"


class NotFound(Problem):
    status, slug = 404, "not-found"


class Conflict(Problem):
    status, slug = 409, "conflict"


class PayloadTooLarge(Problem):
    status, slug = 413, "payload-too-large"


class Unprocessable(Problem):
    status, slug = 422, "unprocessable"


class ServiceUnavailable(Problem):
    """A backend the request needs is down or not configured; ``detail`` names it."""

    status, slug = 503, "backend-unavailable"


def problem_response(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response[dict[str, Any]]:
    """Build an ``application/problem+json`` response."""
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    body: dict[str, Any] = {
        "type": TYPE_BASE + (slug or phrase.lower().replace(" ", "-").replace("'", "")),
        "title": title or phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    return Response(content=body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _on_problem(_: Request[Any, Any, Any], exc: Problem) -> Response[dict[str, Any]]:
    return problem_response(exc.status, exc.detail, slug=exc.slug, headers=exc.headers, **exc.extra)


def _on_validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, Any]]:
    errors = exc.extra if isinstance(exc.extra, list) else []
    detail = exc.detail or "the request is invalid"
    if errors:
        detail = "; ".join(_describe(e) for e in errors[:5])
    status = 400 if "decode" in (exc.detail or "").lower() or "json" in (exc.detail or "").lower() else 422
    if any(isinstance(e, dict) and e.get("source") == "body" for e in errors):
        status = 422
    return problem_response(status, detail, slug="invalid-request", errors=errors)


def _describe(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    where = error.get("key") or error.get("source") or "request"
    return f"{where}: {error.get('message', 'invalid')}"


def _on_http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    headers = dict(exc.headers or {})
    if exc.status_code == 429 and "Retry-After" not in headers:
        headers["Retry-After"] = headers.get("RateLimit-Reset", "1")
    detail = (
        exc.detail
        if exc.detail and exc.detail != HTTPStatus(exc.status_code).phrase
        else _default_detail(exc)
    )
    return problem_response(exc.status_code, detail, headers=headers)


def _default_detail(exc: HTTPException) -> str:
    return {
        401: "send a valid API key as 'Authorization: Bearer <key>'",
        404: "no such resource or route",
        405: "this method is not allowed on this path",
        429: "too many requests: slow down and retry after the Retry-After seconds",
    }.get(exc.status_code, HTTPStatus(exc.status_code).phrase)


def _on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "an unexpected error occurred; the server log has the details")


exception_handlers: ExceptionHandlersMap = {
    Problem: _on_problem,
    ValidationException: _on_validation,
    HTTPException: _on_http,
    Exception: _on_unexpected,
}
