"""What every route shares: the process's :class:`State` (opened by the lifespan), the caller
(:func:`principal`, from the API key, or from the console's session cookie), and the request's
JSON body within its size limit.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request

from videoq.errors import Forbidden, InvalidParameter, Unauthorized
from videoq.store.apikeys import Principal, authenticate
from videoq.store.interactions import Intake
from videoq.store.sessions import SignedIn, find_session

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from videoq.artifacts import ArtifactStore
    from videoq.broker import ArqRedis
    from videoq.broker.fanout import Broadcaster
    from videoq.settings import Settings


@dataclass
class State:
    """What the lifespan opens and every request shares (a :class:`videoq.lifecycle.Services`)."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[Any]
    redis: ArqRedis
    broadcaster: Broadcaster
    artifacts: ArtifactStore
    #: Webhook deliveries this process started (cancelled jobs); stopped with the app.
    background: list[asyncio.Task[None]] = field(default_factory=list)
    #: End users' interactions, written in batches (:mod:`videoq.store.interactions`).
    intake: Intake = field(init=False)

    def __post_init__(self) -> None:
        self.intake = Intake(self.settings.database_url or "")


def state_of(conn: HTTPConnection) -> State:
    st: State = conn.app.state.videoq
    return st


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def principal(
    conn: HTTPConnection, *, token_in_query: bool = False, session: AsyncSession | None = None
) -> Principal:
    """The caller, from its API key; :class:`~videoq.errors.Unauthorized` without a valid one,
    or with more than one ``Authorization`` header (which one counts is not the caller's to
    leave to us, nor to a proxy that may pick another). Looked up in ``session`` when given
    (a route that goes on to use it saves a connection's round trips), else in its own."""
    sent = conn.headers.getlist("authorization")
    if len(sent) > 1:
        raise Unauthorized("send one Authorization header, not several")
    key = bearer(sent[0] if sent else None)
    # Browsers cannot set headers on a WebSocket, nor on a page they navigate to.
    if key is None and (token_in_query or conn.scope["type"] == "websocket"):
        key = conn.query_params.get("token")
    if key is None and SESSION_COOKIE in conn.cookies:
        return (await signed_in(conn, session=session)).principal
    if session is not None:
        return await authenticate(session, key)
    async with state_of(conn).sessions() as own:
        return await authenticate(own, key)


#: The console's session cookie (:mod:`videoq.api.session`): HttpOnly, SameSite=Strict.
SESSION_COOKIE = "videoq_session"
#: The header that must repeat the session's CSRF token on every state-changing request.
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def same_origin(conn: HTTPConnection) -> bool:
    """Whether the request's ``Origin`` names this server (the host it was sent to); True
    when a browser sent none (same-origin GETs, non-browser clients)."""
    origin = conn.headers.get("origin")
    if origin is None:
        return True
    scheme, _, host = origin.partition("://")
    return scheme in ("http", "https") and host == conn.headers.get("host")


async def signed_in(conn: HTTPConnection, *, session: AsyncSession | None = None) -> SignedIn:
    """The console session of the request's cookie, checked as cookies must be: a WebSocket
    or a state-changing request must come from this server's own pages (its ``Origin``), and
    a state-changing request must carry the session's CSRF token in ``X-CSRF-Token``
    (:class:`~videoq.errors.Forbidden` otherwise); :class:`~videoq.errors.Unauthorized` when
    there is no live session."""
    token = conn.cookies.get(SESSION_COOKIE, "")
    if session is not None:
        found = await find_session(session, token)
    else:
        async with state_of(conn).sessions() as own:
            found = await find_session(own, token)
    websocket = conn.scope["type"] == "websocket"
    changes = not websocket and conn.scope["method"] not in SAFE_METHODS
    foreign = not same_origin(conn) or (websocket and "origin" not in conn.headers)
    if (websocket or changes) and foreign:
        raise Forbidden("cookie sign-in is accepted only from this server's own pages")
    if changes:
        sent = conn.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), found.csrf_token.encode()):
            raise Forbidden("missing or wrong X-CSRF-Token: reload the console")
    return found


async def admin(request: Request) -> Principal:
    """The caller, who must hold an admin key (:class:`~videoq.errors.Forbidden` otherwise)."""
    who = await principal(request)
    if not who.is_admin:
        raise Forbidden("this route needs an admin key (videoq keys create --admin)")
    return who


def page_limit(request: Request, default: int = 50) -> int:
    """``?limit=`` of a listing, 1-100 (``default`` when absent); :class:`InvalidParameter`
    otherwise."""
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 100):
        raise InvalidParameter("limit", "must be an integer from 1 to 100")
    return int(raw)


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def read_body(request: Request) -> bytes:
    """The body, refused (413) past ``max_body_bytes`` while it is still arriving."""
    limit = state_of(request).settings.max_body_bytes
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"request body over {limit} bytes")
    return body


def parse_json(body: bytes) -> Any:
    """A body already read, as JSON (400 when it is not)."""
    try:
        return json.loads(body or b"null")
    except (ValueError, RecursionError):
        raise HTTPException(400, "request body is not valid JSON") from None


async def read_json(request: Request) -> Any:
    """The body as JSON (:func:`read_body`, :func:`parse_json`)."""
    return parse_json(await read_body(request))


def json_object(body: bytes) -> dict[str, Any]:
    """A body already read, as a JSON object (400 otherwise)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise HTTPException(400, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return data
