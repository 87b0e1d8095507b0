"""The operator console: ``GET /dashboard`` (the page), ``GET /static/{name}`` (its script and
style, and the browser client ``videoq.js``), ``GET /v1/schemas/events.json`` (the WebSocket
messages as JSON Schema), and the queue and worker figures the tenant feed sends the console
(:func:`figures`).

The page holds no data and no key: it signs in with ``POST /v1/session`` (the key in the body,
a session cookie back) and then reads the same routes any client does, authenticated by that
cookie; its live view is ``WS /v1/events?stats=1`` through ``videoq.js``. Everything it shows
is written as text, never as markup. The files are plain ES modules and CSS shipped in the
package (``videoq/api/static``): no build step.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from videoq.api.deps import State
from videoq.broker import queue, registry
from videoq.store import activity, jobs
from videoq.store.apikeys import Principal

STATIC = Path(__file__).parent / "static"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/schema+json",
    ".ts": "text/plain; charset=utf-8",  # a .d.ts is read by people and editors, not run
}
#: The files served, by name: only these (no path from the request reaches the file system).
FILES = {p.name: p for p in STATIC.iterdir() if p.suffix in _TYPES and p.name != "console.html"}
#: Revalidated each time (an upgraded API serves new files), never stored by shared caches.
_CACHE = {"cache-control": "no-cache, private"}


async def page(request: Request) -> Response:
    """``GET /dashboard``: the console's page (no key needed: it signs in by itself)."""
    return FileResponse(STATIC / "console.html", media_type=_TYPES[".html"], headers=_CACHE)


async def static_file(request: Request) -> Response:
    path = FILES.get(request.path_params["name"])
    if path is None:
        raise HTTPException(404, "no such file")
    return FileResponse(path, media_type=_TYPES[path.suffix], headers=_CACHE)


async def events_schema(request: Request) -> Response:
    """``GET /v1/schemas/events.json`` (no key needed: it holds nothing secret)."""
    return FileResponse(STATIC / "events.schema.json", media_type=_TYPES[".json"], headers=_CACHE)


async def figures(st: State, who: Principal) -> dict[str, Any]:
    """A ``stats`` message of the tenant feed: the caller's tenant's jobs by status, the oldest
    queued one's age and the last hour minute by minute
    (:func:`videoq.store.activity.last_hour`), scoped as the feed's events and ``GET /v1/jobs``
    are, admin keys included; for admin keys also the queue's length and the workers
    (every tenant's jobs, counted, are ``GET /v1/queue/stats``)."""
    async with st.sessions() as session:
        body: dict[str, Any] = await jobs.stats(session, who.tenant)
        body["last_hour"] = await activity.last_hour(session, who.tenant)
    body.pop("finished", None)  # last_hour says it per minute
    if who.is_admin:
        body["queue_length"] = await queue.length(st.redis, st.settings.queue_name)
        body["workers"] = await registry.list_workers(st.redis, st.settings.worker_stale_s)
    return {"type": "stats", "ts": datetime.now(UTC).isoformat(), **body}


ROUTES = [
    Route("/dashboard", page),
    Route("/static/{name}", static_file),
    Route("/v1/schemas/events.json", events_schema),
]
