"""HTTP errors: one JSON shape everywhere, ``{"error": {"code", "message", "details"}}``, and
the one table from the error tree (:mod:`videoq.errors`) to statuses. The lookup walks each
class's hierarchy (as Starlette's own exception handlers do), so a subclass keeps its
parent's status; anything not in the tree is a 500 that names only the request id.
"""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from videoq.api.middleware import request_id_of
from videoq.errors import (
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    NotMigrated,
    RateLimited,
    Unauthorized,
    UnsafeUrl,
    VideoqError,
)
from videoq.schemas import field_errors

log = structlog.get_logger(__name__)

#: Error class → HTTP status. Found by walking the raised class's MRO.
STATUS: dict[type[VideoqError], int] = {
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    Gone: 410,
    UnsafeUrl: 422,
    RateLimited: 429,
    NotMigrated: 503,
}
#: Codes of Starlette's own HTTP errors (routing, body limits).
HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def status_of(exc: VideoqError) -> int:
    """The HTTP status of ``exc``: its nearest class in :data:`STATUS`, else 500."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status, headers=headers)


def invalid(exc: ValidationError, message: str | None = None) -> JSONResponse:
    """422 naming every invalid field of a request body."""
    errors = field_errors(exc)
    names = ", ".join(e["field"] for e in errors)
    return error_response(422, "validation_error", message or f"invalid fields: {names}", errors)


async def videoq_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, VideoqError)
    headers = getattr(exc, "headers", None)  # e.g. Retry-After of a 429
    return error_response(status_of(exc), exc.code, exc.message, None, headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(
        exc.status_code, HTTP_CODES.get(exc.status_code, "http_error"), str(exc.detail), None,
        dict(exc.headers or {}),
    )  # fmt: skip


async def internal_error(request: Request, exc: Exception) -> Response:
    request_id = request_id_of(request.scope) or uuid.uuid4().hex[:12]
    log.error("request_failed", request_id=request_id, path=request.url.path, exc_info=exc)
    return error_response(500, "internal_error", f"internal error (request id {request_id})")
