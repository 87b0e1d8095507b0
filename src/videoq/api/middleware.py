"""HTTP hardening of the API. Middleware, outermost first (:func:`install`):

SecurityMiddleware    request id; security headers on every response, a strict
                      Content-Security-Policy (with a per-request nonce on HTML pages);
                      any unhandled error becomes a generic 500 naming only the request id
CORSMiddleware        only when ``settings.cors_origins`` lists origins; off by default
BodyLimitMiddleware   413 for a body over the limit: at once from ``Content-Length``, or
                      as soon as a streamed body passes it
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Callable
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from videoq import tracing
from videoq.settings import Settings

log = structlog.get_logger(__name__)

#: Every response. ``no-store``: job views and keys must not linger in shared caches.
HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=()",
    "cache-control": "no-store",
}
#: Responses that are not HTML (JSON, video): nothing may run or be framed.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
#: HTML pages: same-origin resources only, scripts and styles also by the request's nonce
#: (``request.state.csp_nonce``); no inline handlers, no eval, no framing, no foreign forms.
HTML_CSP = (
    "default-src 'none'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'nonce-{nonce}'; "
    "img-src 'self' data:; media-src 'self'; connect-src 'self'; font-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_DEFAULTS = [(name.encode(), value.encode()) for name, value in HEADERS.items()]
_OURS = frozenset((b"content-security-policy", b"x-request-id"))
_API_CSP = API_CSP.encode()
_HSTS = (b"strict-transport-security", b"max-age=63072000")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


def _error(status: int, code: str, message: str) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": None}}
    return JSONResponse(body, status_code=status)


class Nonce:
    """A request's CSP nonce, drawn when first shown: by an HTML page that uses it, or in an
    HTML answer's header (JSON answers, the API's hot path, never draw one)."""

    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value: str | None = None

    def __str__(self) -> str:
        if self._value is None:
            self._value = secrets.token_urlsafe(16)
        return self._value

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _secured(start: Message, nonce: Nonce, request_id: str, https: bool) -> list[Any]:
    """A response's headers with ours: those it set itself kept, save the CSP and request id
    (always ours). Raw (lower-case bytes, as ASGI has them), on every request's path."""
    kept = []
    names = set()
    html = False
    for name, value in start.get("headers", ()):
        if name not in _OURS:
            kept.append((name, value))
            names.add(name)
            html = html or (name == b"content-type" and value.startswith(b"text/html"))
    kept.extend(header for header in _DEFAULTS if header[0] not in names)
    if https and b"strict-transport-security" not in names:
        kept.append(_HSTS)
    csp = HTML_CSP.format(nonce=nonce).encode() if html else _API_CSP
    kept += [(b"content-security-policy", csp), (b"x-request-id", request_id.encode())]
    return kept


class SecurityMiddleware:
    """Request ids, security headers and CSP, and the generic 500 (pure ASGI, so streaming and
    WebSockets pass through untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Unique, not secret: a random prefix per process and a counter (no system call a
        # request on the API's hot path).
        prefix = secrets.token_hex(6)
        self._ids = (f"{prefix}{n:08x}" for n in itertools.count())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        incoming = headers.get("x-request-id", "")
        # A caller's id is kept when it is harmless (it ties their logs to ours); else a new one.
        request_id = incoming if _REQUEST_ID.match(incoming) else next(self._ids)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["csp_nonce"] = nonce = Nonce()
        if scope["type"] == "websocket":
            with structlog.contextvars.bound_contextvars(request_id=request_id):
                await self.app(scope, receive, send)
            return
        https = scope.get("scheme") == "https"
        started = False

        async def send_secured(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": _secured(message, nonce, request_id, https)}
            await send(message)

        bound = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_secured)
        except Exception as exc:
            # Logged here (secrets redacted by the structlog processor) and never re-raised:
            # the server would print the traceback unredacted, and the client learns only
            # the request id.
            log.error("request_failed", path=scope.get("path"), exc_info=exc)
            if started:
                return
            response = _error(500, "internal_error", f"internal error (request id {request_id})")
            await response(scope, receive, send_secured)
        finally:
            structlog.contextvars.reset_contextvars(**bound)


class TracingMiddleware:
    """A server span per HTTP request (installed only while tracing is on), a child of the
    caller's ``traceparent`` when it sends one; WebSockets live too long to be one span."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        parent = Headers(scope=scope).get("traceparent")
        attributes = {"http.request.method": method, "url.path": scope["path"]}
        with tracing.span(method, attributes, kind="server", parent=parent) as span:

            async def send_traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                await send(message)

            try:
                await self.app(scope, receive, send_traced)
            finally:
                # Known once routed: the route's template names the span (never the ids in
                # the path), and the request id ties it to the logs.
                route = getattr(scope.get("route"), "path", None)
                if route is not None:
                    span.set_attribute("http.route", route)
                    span.update_name(f"{method} {route}")
                span.set_attribute("videoq.request_id", request_id_of(scope) or "")


class BodyLimitMiddleware:
    """413 for request bodies over ``limit(path)`` bytes, before they are read into memory."""

    def __init__(self, app: ASGIApp, limit: Callable[[str], int]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope["path"])
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            try:
                too_large = int(declared) > limit
            except ValueError:
                await _error(400, "bad_request", "invalid Content-Length")(scope, receive, send)
                return
            if too_large:
                await _error(413, "too_large", f"request body over {limit} bytes")(
                    scope, receive, send
                )
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # a chunked body with no (or a false) Content-Length
                    raise HTTPException(413, f"request body over {limit} bytes")
            return message

        await self.app(scope, counted, send)


def body_limit(settings: Settings) -> Callable[[str], int]:
    """Per path: inbound provider webhooks (GitHub pushes can be large) get their own limit."""

    def limit(path: str) -> int:
        if path.startswith("/v1/webhooks/"):
            return settings.webhook_max_body_bytes
        return settings.max_body_bytes

    return limit


def install(app: Starlette, settings: Settings) -> None:
    """Add the middleware above to ``app`` (before it starts)."""
    app.add_middleware(BodyLimitMiddleware, limit=body_limit(settings))
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=["Retry-After", "X-Request-ID"],
            allow_credentials=False,  # bearer keys, never cookies
            max_age=600,
        )
    app.add_middleware(SecurityMiddleware)  # added last: outermost
    if tracing.enabled():  # around it: the span sees the status of its generic 500 too
        app.add_middleware(TracingMiddleware)


def request_id_of(scope: Any) -> str | None:
    """The id :class:`SecurityMiddleware` gave this request."""
    state = scope.get("state") or {}
    value = state.get("request_id")
    return value if isinstance(value, str) else None
