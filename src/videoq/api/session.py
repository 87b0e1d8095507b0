"""The console's sign-in: ``POST /v1/session`` exchanges an API key (in the body, never in a
URL) for a session cookie; ``GET`` says who is signed in and repeats the CSRF token (for a page
reloaded); ``DELETE`` signs out.

The cookie is HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it),
Secure over HTTPS, and holds an opaque token whose hash is stored server-side
(:mod:`videoq.store.sessions`). Requests it authenticates are scoped exactly like the key it
came from (:func:`videoq.api.deps.principal`); state-changing ones must also carry the
session's CSRF token and come from this server's own pages (:func:`videoq.api.deps.signed_in`).
Bearer keys work as before and need none of this.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from videoq.api.deps import SESSION_COOKIE, json_object, read_body, same_origin, signed_in, state_of
from videoq.api.errors import error_response
from videoq.errors import Forbidden, Unauthorized
from videoq.store.sessions import SESSION_TTL, SignedIn, close_session, open_session


def _described(found: SignedIn) -> dict[str, object]:
    return {
        "tenant": found.principal.tenant,
        "admin": found.principal.is_admin,
        "csrf_token": found.csrf_token,
        "expires_at": found.expires_at.isoformat(),
    }


async def sign_in(request: Request) -> Response:
    """``POST /v1/session`` with ``{"api_key": "vq_…"}`` → ``201``, the cookie set."""
    if not same_origin(request):  # a foreign page must not sign a browser in (login CSRF)
        raise Forbidden("sign in from this server's own console page")
    key = json_object(await read_body(request)).get("api_key")
    if not isinstance(key, str) or not key.strip():
        return error_response(
            422, "validation_error", "api_key: an API key (vq_…) is required",
            [{"field": "api_key", "message": "an API key is required", "type": "missing"}],
        )  # fmt: skip
    async with state_of(request).sessions() as session:
        opened = await open_session(session, key.strip())
    response = JSONResponse(_described(opened), status_code=201)
    assert opened.token is not None
    response.set_cookie(
        SESSION_COOKIE,
        opened.token,
        max_age=int(SESSION_TTL.total_seconds()),
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


async def current(request: Request) -> Response:
    """``GET /v1/session``: the signed-in tenant, scope and CSRF token; 401 when none."""
    if SESSION_COOKIE not in request.cookies:
        raise Unauthorized("not signed in")
    return JSONResponse(_described(await signed_in(request)))


async def sign_out(request: Request) -> Response:
    """``DELETE /v1/session`` (CSRF-checked) → ``204``, the session ended and the cookie
    cleared."""
    if SESSION_COOKIE in request.cookies:
        try:
            await signed_in(request)
        except Unauthorized:
            pass  # already over: just clear the cookie
        else:
            async with state_of(request).sessions() as session:
                await close_session(session, request.cookies[SESSION_COOKIE])
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


ROUTES = [
    Route("/v1/session", sign_in, methods=["POST"]),
    Route("/v1/session", current, methods=["GET"]),
    Route("/v1/session", sign_out, methods=["DELETE"]),
]
