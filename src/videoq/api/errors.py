"""HTTP errors: one JSON shape everywhere, ``{"error": {"code", "message", "details"}}``, and
the one table from the error tree (:mod:`videoq.errors`) to statuses. The lookup walks each
class's hierarchy (as Starlette's own exception handlers do), so a subclass keeps its
parent's status; anything not in the tree is a 500 that names only the request id.

A database error that is an outage (:func:`videoq.store.outage` decides) is a
:class:`~videoq.errors.DatabaseUnavailable`: 503 with ``Retry-After``, on every route. On a
WebSocket an error closes the socket instead: 1013 (try again later) for a 503, else
4000 + the status.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import structlog
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from videoq import store
from videoq.api.middleware import request_id_of
from videoq.errors import (
    Conflict,
    DatabaseUnavailable,
    Forbidden,
    Gone,
    IdempotencyKeyReused,
    InvalidParameter,
    NotFound,
    NotMigrated,
    OverBudget,
    RateLimited,
    Unauthorized,
    UnsafeUrl,
    VideoNotFinished,
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
    OverBudget: 402,
    UnsafeUrl: 422,
    VideoNotFinished: 422,
    InvalidParameter: 422,
    IdempotencyKeyReused: 422,
    RateLimited: 429,
    NotMigrated: 503,
    DatabaseUnavailable: 503,
}
#: Codes of Starlette's own HTTP errors (routing, body limits).
HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
#: The WebSocket close code of a 503: "Try Again Later" (RFC 6455's registry).
CLOSE_TRY_AGAIN_LATER = 1013


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


def not_an_object() -> JSONResponse:
    """422 for a JSON body that is not an object."""
    return error_response(
        422, "validation_error", "the body must be a JSON object",
        [{"field": "body", "message": "must be a JSON object", "type": "object_type"}],
    )  # fmt: skip


def invalid(exc: ValidationError, message: str | None = None) -> JSONResponse:
    """422 naming every invalid field of a request body."""
    errors = field_errors(exc)
    names = ", ".join(e["field"] for e in errors)
    return error_response(422, "validation_error", message or f"invalid fields: {names}", errors)


def close_code(status: int) -> int:
    """The WebSocket close code of an HTTP status: 1013 for a 503, else 4000 + the status
    (4401, 4404, ...)."""
    return CLOSE_TRY_AGAIN_LATER if status == 503 else 4000 + status


async def videoq_error(conn: HTTPConnection, exc: Exception) -> Response | None:
    """The error's response; on a WebSocket, the socket closed with :func:`close_code`."""
    assert isinstance(exc, VideoqError)
    status = status_of(exc)
    if isinstance(conn, WebSocket):
        reason = f"{exc.code}: {exc.message}".encode()[:123].decode(errors="ignore")
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the client may be gone
            await conn.close(close_code(status), reason)
        return None
    headers = getattr(exc, "headers", None)  # e.g. Retry-After of a 429 or a 503
    details = None
    if isinstance(exc, InvalidParameter):
        details = [{"field": exc.field, "message": exc.problem}]
    return error_response(status, exc.code, exc.message, details, headers)


async def database_error(conn: HTTPConnection, exc: Exception) -> Response | None:
    """An error of one of :data:`videoq.store.OUTAGE_SOURCES`: when it is an outage, answered
    as :class:`~videoq.errors.DatabaseUnavailable` (logged as a warning, no traceback: an
    outage fails every request alike); otherwise re-raised, to end as any unexpected error."""
    unavailable = store.outage(exc)
    if unavailable is None:
        raise exc
    log.warning("database_unavailable", path=conn.url.path, error=type(exc).__name__)
    return await videoq_error(conn, unavailable)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(
        exc.status_code, HTTP_CODES.get(exc.status_code, "http_error"), str(exc.detail), None,
        dict(exc.headers or {}),
    )  # fmt: skip


async def client_gone(request: Request, exc: Exception) -> Response:
    """The client went away before its body arrived: logged as that (no traceback, nothing
    failed here); the answer is for the record, nobody reads it."""
    log.info("client_disconnected", path=request.url.path, request_id=request_id_of(request.scope))
    return error_response(400, "client_disconnected", "the request body did not arrive")


async def internal_error(request: Request, exc: Exception) -> Response:
    request_id = request_id_of(request.scope) or uuid.uuid4().hex[:12]
    log.error("request_failed", request_id=request_id, path=request.url.path, exc_info=exc)
    return error_response(500, "internal_error", f"internal error (request id {request_id})")
