"""Request ids and one log line per request; text or JSON logs.

Every request gets an id (the client's ``X-Request-ID`` when it is sane, else a new one), echoed in
the response's ``X-Request-ID`` and attached to every log record made while serving it. The request
line has method, path (never the query string: it may hold signed-URL signatures or realtime
tokens), status and duration. It replaces the server's access log.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
from typing import Any

from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from appliance.core.ids import new_id

__all__ = [
    "JsonFormatter",
    "RequestIdFilter",
    "RequestLogMiddleware",
    "configure_logging",
    "current_request_id",
    "stamp_request_id",
]

log = logging.getLogger("appliance.http")

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def current_request_id() -> str:
    """The id of the request being served ("-" outside one)."""
    return _request_id.get()


class RequestIdFilter(logging.Filter):
    """Stamps every record with the current request id."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, and any ``extra`` fields."""

    _STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in self._STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, fmt: str) -> None:
    """Root logging for the CLI: text (human) or JSON (machines), always with request ids."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiosqlite's debug lines echo SQL parameters; keep them out of even a DEBUG log.
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in (ScopeType.HTTP, ScopeType.WEBSOCKET):
            await self.app(scope, receive, send)
            return
        incoming = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = incoming if _SANE_ID.match(incoming) else new_id("req")
        token = _request_id.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status = 500

        async def stamped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, stamped)
        except Exception as exc:
            # Raised errors are turned into responses further out; log the status they will get.
            status = getattr(exc, "status_code", getattr(exc, "status", 500))
            raise
        finally:
            if scope["type"] == ScopeType.HTTP:
                elapsed = (time.perf_counter() - start) * 1000
                log.info(
                    "%s %s %s %.1fms",
                    scope.get("method", "-"),
                    scope["path"],
                    status,
                    elapsed,
                    extra={"status": status, "duration_ms": round(elapsed, 2)},
                )
            _request_id.reset(token)


async def stamp_request_id(message: Message, scope: Scope) -> None:
    """``before_send`` hook: adds ``X-Request-ID`` to every response, error responses included
    (those are sent from outside the middleware stack, hence a hook rather than the middleware)."""
    if message["type"] == "http.response.start":
        request_id = scope.get("state", {}).get("request_id")
        if request_id:
            MutableScopeHeaders.from_message(message)["X-Request-ID"] = request_id
