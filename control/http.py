"""HTTP helpers every handler shares: JSON responses, error responses, body parsing, the route
type, and the error middleware that maps domain errors to statuses (in one place).

A leaf: it imports nothing from control but `control.errors`, so every handler module, the live
page and the app assembly can use it without importing each other.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from control import textsafe
from control.errors import Conflict, DomainError, Forbidden, Invalid, NotFound, TooLarge, TooMany

log = logging.getLogger("loa.control")

API = "/api/v1"
READ_METHODS = ("GET", "HEAD", "OPTIONS")

#: the one map from domain errors to HTTP statuses
STATUS: dict[type[DomainError], int] = {
    NotFound: 404, Conflict: 409, Invalid: 422, Forbidden: 403, TooLarge: 413, TooMany: 429,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpError(Exception):
    """An error of the HTTP conversation itself (a malformed body, a bad query string, missing
    credentials): handlers and the auth layer raise it; domain code never does."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def status_of(e: DomainError) -> int:
    for cls in type(e).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 400


def as_http(e: DomainError | HttpError) -> HttpError:
    if isinstance(e, HttpError):
        return e
    return HttpError(status_of(e), e.code, e.message, **e.extra)


def json_dumps(o: Any) -> str:
    return json.dumps(o, ensure_ascii=False, default=str)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=json_dumps)


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    body = {"error": {"code": code, "message": message, **extra}}
    headers = None
    if status in (429, 503):
        # a client (or a proxy) that reads only the header learns when to come back too
        wait = extra.get("retry_after_s")
        if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait >= 0:
            headers = {"Retry-After": str(max(1, math.ceil(wait)))}
        elif status == 429:
            headers = {"Retry-After": "1"}
    return web.json_response(body, status=status, headers=headers,
                             dumps=lambda o: json.dumps(o, ensure_ascii=False))


def from_aiohttp(request: web.Request, e: web.HTTPException) -> HttpError:
    """aiohttp's own 4xx (no route, wrong method, body too large) in the API's error shape."""
    if isinstance(e, web.HTTPRequestEntityTooLarge):
        return HttpError(413, "body_too_large", e.text or "request body too large")
    code = {404: "not_found", 405: "method_not_allowed"}.get(e.status, "http_error")
    msg = {404: f"no such resource: {request.path}",
           405: f"{request.method} is not allowed on {request.path}"}.get(e.status, e.reason)
    return HttpError(e.status, code, msg)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Renders every error as `{"error": {"code", "message", ...}}` with its status; anything
    unexpected is logged and answered 500 without a stack trace."""
    try:
        return await handler(request)
    except (HttpError, DomainError) as e:
        err = as_http(e)
        return error_response(err.status, err.code, err.message, **err.extra)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        err = from_aiohttp(request, e)
        return error_response(err.status, err.code, err.message)
    except (asyncio.CancelledError, ConnectionResetError):  # the client went (or was cut off)
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal", "internal server error (logged on the server)")


async def read_json(request: web.Request) -> Any:
    if request.content_type not in ("application/json", "", "application/octet-stream", "text/plain"):
        raise HttpError(415, "unsupported_media_type",
                        "send a JSON body (Content-Type: application/json)")
    raw = await request.read()
    if not raw:
        raise HttpError(400, "empty_body", "the request body is empty; a JSON object is expected")
    try:
        return textsafe.loads(raw)
    except ValueError as e:  # textsafe.BadInput, and anything the decoder raises
        raise HttpError(400, "malformed_json", f"the body is not valid JSON: {e}") from None


def validation_error(e: ValidationError) -> HttpError:
    problems = []
    for err in e.errors(include_url=False, include_input=False, include_context=False):
        loc = ".".join(str(x) for x in err.get("loc", ()))
        problems.append({"field": loc, "problem": err.get("msg", "")})
    summary = "; ".join(f"{p['field']}: {p['problem']}" if p["field"] else p["problem"]
                        for p in problems[:5])
    return HttpError(422, "invalid_request", summary or "invalid request", problems=problems)


async def parse_body(request: web.Request, model: type[BaseModel]) -> Any:
    data = await read_json(request)
    if not isinstance(data, dict):
        raise HttpError(422, "invalid_request", "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e) from None
    except ValueError as e:  # a validator's own error outside pydantic's wrapper (ZoneError...)
        raise HttpError(422, "invalid_request", str(e)) from None


@dataclass
class Route:
    """One endpoint: the table of these is the router, the policy's action names and the
    OpenAPI document at once. `path` is under /api/v1 unless `root` is set."""
    method: str
    path: str
    handler: Handler
    action: str
    summary: str
    body: type[BaseModel] | None = None
    body_kind: str = "json"  # json | multipart | csv | none
    query: list[dict] = field(default_factory=list)
    ok: int = 200
    errors: tuple[int, ...] = ()
    produces: str = "application/json"
    root: bool = False  # a page or /metrics: outside /api/v1, not in the OpenAPI paths

    @property
    def url(self) -> str:
        return self.path if self.root else API + self.path


def q(name: str, type_: str = "string", **extra: Any) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": {"type": type_, **extra}}


def since_limit(request: web.Request, default_limit: int) -> tuple[int, int]:
    """`?since=SEQ&limit=N` of the log endpoints (as-run, audit)."""
    try:
        since = int(request.query.get("since", "0"))
        limit = min(max(int(request.query.get("limit", str(default_limit))), 1), 10_000)
    except ValueError:
        raise HttpError(400, "invalid_query", "since and limit must be integers") from None
    if since < 0 or since > 2 ** 62:
        raise HttpError(400, "invalid_query", "since must be a non-negative sequence number")
    return since, limit
