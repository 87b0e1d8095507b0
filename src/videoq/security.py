"""HTTP hardening of the API, and the guard on URLs videoq itself calls (outbound webhooks).

Middleware, outermost first (:func:`install`):

    SecurityMiddleware    request id; security headers on every response, a strict
                          Content-Security-Policy (with a per-request nonce on HTML pages);
                          any unhandled error becomes a generic 500 naming only the request id
    CORSMiddleware        only when ``settings.cors_origins`` lists origins; off by default
    BodyLimitMiddleware   413 for a body over the limit: at once from ``Content-Length``, or
                          as soon as a streamed body passes it

The URL guard (:func:`check_url`, :func:`resolve_checked`) refuses anything but http(s), and
hosts that are, or resolve to, loopback, private, link-local (cloud metadata), shared,
unspecified, multicast or otherwise non-global addresses, unless an allow-listed network
(``settings.webhook_allowed_networks``) contains them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import structlog
from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from videoq.settings import Settings

log = structlog.get_logger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Every response. ``no-store``: job views and keys must not linger in shared caches.
HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=()",
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
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


def _error(status: int, code: str, message: str) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": None}}
    return JSONResponse(body, status_code=status)


class SecurityMiddleware:
    """Request ids, security headers and CSP, and the generic 500 (pure ASGI, so streaming and
    WebSockets pass through untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        incoming = headers.get("x-request-id", "")
        # A caller's id is kept when it is harmless (it ties their logs to ours); else a new one.
        request_id = incoming if _REQUEST_ID.match(incoming) else secrets.token_hex(8)
        nonce = secrets.token_urlsafe(16)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["csp_nonce"] = nonce
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
                out = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    out.setdefault(name, value)
                html = out.get("content-type", "").startswith("text/html")
                out["content-security-policy"] = HTML_CSP.format(nonce=nonce) if html else API_CSP
                out.setdefault("cache-control", "no-store")
                out["x-request-id"] = request_id
                if https:
                    out.setdefault("strict-transport-security", "max-age=63072000")
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_secured)
            except Exception as exc:
                # Logged here (secrets redacted by the structlog processor) and never re-raised:
                # the server would print the traceback unredacted, and the client learns only
                # the request id.
                log.error("request_failed", path=scope.get("path"), exc_info=exc)
                if started:
                    return
                response = _error(
                    500, "internal_error", f"internal error (request id {request_id})"
                )
                await response(scope, receive, send_secured)


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


# --- The outbound URL guard (SSRF) ---------------------------------------------------------------


class UnsafeUrl(ValueError):
    """A URL videoq must not call (wrong scheme, or a host on a non-public address)."""


# Not global in practice, though some Python versions call parts of them global: IETF protocol
# assignments (Oracle Cloud's metadata service is 192.0.0.192) and NAT64 / 6to4 wrappers, whose
# embedded IPv4 address is checked on its own.
_ALSO_BLOCKED = [ipaddress.ip_network("192.0.0.0/24")]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def parse_networks(values: Iterable[str]) -> list[IPNetwork]:
    """``settings.webhook_allowed_networks`` as networks (``10.0.0.0/8``, ``127.0.0.1``)."""
    return [ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip()]


def _judged(ip: IPAddress) -> list[IPAddress]:
    """The addresses that decide about ``ip``: an IPv6 address wrapping an IPv4 one (mapped,
    6to4, Teredo, NAT64) is whatever it wraps."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner: list[IPAddress] = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
        inner += list(ip.teredo or ())
        if ip in _NAT64:
            inner.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if inner:
            return inner
    return [ip]


def address_refusal(ip: IPAddress, allowed: Sequence[IPNetwork]) -> str | None:
    """Why videoq must not connect to ``ip`` (e.g. "a loopback address"), or None when it may."""
    if any(ip in net for net in allowed if net.version == ip.version):
        return None
    for inner in _judged(ip):
        if any(inner in net for net in allowed if net.version == inner.version):
            continue
        if inner.is_loopback:
            return "a loopback address"
        if inner.is_unspecified:
            return "the unspecified address"
        if inner.is_link_local:
            return "a link-local address (where cloud metadata services live)"
        if inner.is_multicast:
            return "a multicast address"
        if inner.is_private or not inner.is_global or any(inner in n for n in _ALSO_BLOCKED):
            return "a private or reserved address"
    return None


@dataclass(frozen=True)
class Target:
    """A checked URL's parts: connect to ``address`` and present ``host`` (Host header, SNI)."""

    scheme: str
    host: str
    port: int
    address: str


def check_url(url: str, allowed: Sequence[IPNetwork] = ()) -> tuple[str, str, int]:
    """Static checks (no DNS): http(s), a host, no credentials, and an IP-literal host that is
    allowed. Returns ``(scheme, host, port)``; raises :class:`UnsafeUrl`."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeUrl("only http and https URLs are allowed")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise UnsafeUrl("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("credentials in the URL are not allowed; sign requests instead")
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if host == "localhost" or host.endswith(".localhost"):
        literals: list[IPAddress] = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    else:
        literals = [literal] if literal is not None else []
    for ip in literals:
        reason = address_refusal(ip, allowed)
        if reason:
            raise UnsafeUrl(f"refused: {ip} is {reason}")
    return scheme, host, port or (443 if scheme == "https" else 80)


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses, from the system resolver."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def resolve_checked(
    url: str, allowed: Sequence[IPNetwork] = (), resolver: Resolver = system_resolver
) -> Target:
    """Check ``url`` and resolve its host; every address must pass (a name with one private
    address among public ones is refused). The caller connects to the returned address, so a
    second resolution (DNS rebinding) cannot swap in another."""
    scheme, host, port = check_url(url, allowed)
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            found = await resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise LookupError(f"cannot resolve {host}: {exc}") from None
        addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]
    if not addresses:
        raise LookupError(f"{host} has no address")
    for ip in addresses:
        reason = address_refusal(ip, allowed)
        if reason:
            raise UnsafeUrl(f"refused: {host} resolves to {ip}, {reason}")
    return Target(scheme, host, port, str(addresses[0]))


def refusal(url: str, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """For validators: why ``url`` is refused by the static checks, or None."""
    try:
        check_url(url, allowed)
    except UnsafeUrl as exc:
        return str(exc)
    return None


def request_id_of(scope: Any) -> str | None:
    """The id :class:`SecurityMiddleware` gave this request."""
    state = scope.get("state") or {}
    value = state.get("request_id")
    return value if isinstance(value, str) else None
