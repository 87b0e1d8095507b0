"""Security headers and CSP on every response, CORS off unless configured, and internal errors
that tell the client nothing but a request id."""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from tests.conftest import new_key
from tests.security.conftest import auth
from videoq.api import create_app, middleware
from videoq.logs import configure_logging
from videoq.settings import Settings


def assert_secured(response: httpx.Response) -> None:
    for name, value in middleware.HEADERS.items():
        assert response.headers.get(name) == value, name
    assert response.headers["cache-control"] == "no-store"
    assert re.fullmatch(r"[A-Za-z0-9._-]{8,64}", response.headers["x-request-id"])
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize(
    ("method", "path", "keyed", "status"),
    [
        ("GET", "/health", False, 200),
        ("GET", "/openapi.json", False, 200),
        ("GET", "/v1/jobs", True, 200),
        ("GET", "/v1/jobs", False, 401),
        ("GET", "/v1/jobs/not-a-job", True, 404),
        ("POST", "/v1/jobs", True, 400),
        ("GET", "/nowhere", False, 404),
        ("DELETE", "/v1/jobs", True, 405),
    ],
)
async def test_every_response_carries_the_security_headers(
    asgi_client: httpx.AsyncClient, sessions: Any, method: str, path: str, keyed: bool, status: int
) -> None:
    headers = auth(await new_key(sessions)) if keyed else {}
    response = await asgi_client.request(method, path, headers=headers, content=b"{")
    assert response.status_code == status
    assert_secured(response)
    assert response.headers["content-security-policy"] == middleware.API_CSP


def page_app(settings: Settings) -> Starlette:
    """An HTML page, a JSON route and a crashing route behind the API's middleware."""

    async def page(request: Request) -> Response:
        nonce = request.state.csp_nonce
        return HTMLResponse(f"<script nonce='{nonce}'>1</script>")

    async def crash(request: Request) -> Response:
        raise RuntimeError("database password is hunter2; key vq_abcdefghijklmnop")

    async def echo_id(request: Request) -> Response:
        return JSONResponse({"request_id": request.state.request_id})

    app = Starlette(routes=[Route("/page", page), Route("/crash", crash), Route("/id", echo_id)])
    middleware.install(app, settings)
    return app


@contextlib.asynccontextmanager
async def client_of(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://videoq") as client:
        yield client


async def test_html_gets_a_strict_csp_with_a_fresh_nonce(settings: Settings) -> None:
    async with client_of(page_app(settings)) as client:
        first, second = await client.get("/page"), await client.get("/page")
    nonces = []
    for response in (first, second):
        assert_secured(response)
        csp = response.headers["content-security-policy"]
        nonce = re.search(r"'nonce-([^']+)'", csp)
        assert nonce and f"nonce='{nonce.group(1)}'" in response.text
        nonces.append(nonce.group(1))
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'none'"
        assert directives["frame-ancestors"] == "'none'"
        assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp and "*" not in csp
    assert nonces[0] != nonces[1]


async def test_an_internal_error_is_generic_with_a_request_id(settings: Settings) -> None:
    captured = io.StringIO()
    configure_logging(settings.model_copy(update={"log_format": "json"}), stream=captured)
    try:
        async with client_of(page_app(settings)) as client:
            response = await client.get("/crash")
    finally:
        configure_logging(settings)
        structlog.reset_defaults()
    assert response.status_code == 500
    assert_secured(response)
    error = response.json()["error"]
    request_id = response.headers["x-request-id"]
    assert error == {
        "code": "internal_error",
        "message": f"internal error (request id {request_id})",
        "details": None,
    }
    assert "hunter2" not in response.text and "RuntimeError" not in response.text
    # The log has the details, under the same request id, with the key redacted.
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    failed = [line for line in lines if line["event"] == "request_failed"]
    assert len(failed) == 1 and failed[0]["request_id"] == request_id
    assert "RuntimeError" in failed[0]["exception"]
    assert "vq_abcdefghijklmnop" not in captured.getvalue()


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("trace-0123456789", True),
        ("short", False),
        ("x" * 65, False),
        ("bad id with spaces", False),
        ("inject\u2028line", False),
    ],
)
async def test_a_callers_request_id_is_kept_only_when_harmless(
    settings: Settings, given: str, kept: bool
) -> None:
    async with client_of(page_app(settings)) as client:
        response = await client.get("/id", headers={b"X-Request-ID": given.encode()})
    returned = response.headers["x-request-id"]
    assert (returned == given) is kept
    assert response.json()["request_id"] == returned


async def test_cors_is_off_by_default(asgi_client: httpx.AsyncClient, sessions: Any) -> None:
    origin = {"Origin": "https://evil.example"}
    preflight = await asgi_client.options(
        "/v1/jobs",
        headers={**origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"},
    )  # fmt: skip
    assert "access-control-allow-origin" not in preflight.headers
    simple = await asgi_client.get("/v1/jobs", headers={**origin, **auth(await new_key(sessions))})
    assert simple.status_code == 200 and "access-control-allow-origin" not in simple.headers


async def test_cors_allows_exactly_the_configured_origins(
    settings: Settings, sessions: Any
) -> None:
    configured = settings.model_copy(update={"cors_origins": ["https://dash.example"]})
    app = create_app(configured)
    key = await new_key(sessions)
    async with app.router.lifespan_context(app), client_of(app) as client:
        for origin, allowed in (("https://dash.example", True), ("https://evil.example", False)):
            preflight = await client.options(
                "/v1/jobs",
                headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                         "Access-Control-Request-Headers": "authorization,content-type"},
            )  # fmt: skip
            got = preflight.headers.get("access-control-allow-origin")
            assert (got == origin) is allowed, preflight.headers
            simple = await client.get("/v1/jobs", headers={"Origin": origin, **auth(key)})
            assert (simple.headers.get("access-control-allow-origin") == origin) is allowed
            assert "access-control-allow-credentials" not in simple.headers
