"""Preference-driven generation's routes: ``POST /v1/interactions`` (an end user's interaction
with a finished video; idempotent with ``Idempotency-Key``), ``GET /v1/users/{user_id}/feed``
(their personalised queue, best first) and ``GET /v1/users/{user_id}/preferences``. Every one
is scoped by the key's tenant: a user id names the tenant's own user. What the interactions
lead to (preferences, refills, new jobs) is the workers' (:mod:`videoq.feed`)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from videoq.api.deps import base_url, bearer, page_limit, parse_json, principal, read_body, state_of
from videoq.api.errors import error_response, invalid, not_an_object
from videoq.errors import VideoNotFinished
from videoq.schemas import InteractionCreate
from videoq.store import feed as feed_rows
from videoq.store import interactions
from videoq.types import JobStatus

#: Briefs shown by ``GET /v1/users/{user_id}/preferences``, the newest.
MAX_BRIEFS_SHOWN = 100


def _refused(field: str, message: str) -> Response:
    return error_response(
        422, "validation_error", f"{field} {message}", [{"field": field, "message": message}]
    )


def _user_id(request: Request) -> str | None:
    user_id: str = request.path_params["user_id"]
    return user_id if 1 <= len(user_id) <= 200 and user_id.isprintable() else None


def _interaction_view(row: interactions.Recorded) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "user_id": row.user_id,
        "video_id": str(row.video_id),
        "type": row.type,
        "watched_s": row.watched_s,
        "created_at": row.created_at.isoformat(),
    }


def _interaction_of(
    request: Request, raw: bytes
) -> tuple[interactions.NewInteraction, str | None] | Response:
    """The interaction a request asks for and its ``Idempotency-Key``, or the answer that
    refuses it."""
    payload = parse_json(raw)
    if not isinstance(payload, dict):
        return not_an_object()
    try:
        body = InteractionCreate.model_validate(payload)
    except ValidationError as exc:
        return invalid(exc)
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 200:
        return _refused("Idempotency-Key", "must be 1-200 characters")
    return interactions.NewInteraction(body.user_id, body.video_id, body.type, body.watched_s), key


async def create_interaction(request: Request) -> Response:
    # The intake's hot path (docs/benchmarks.md, "Feed"): the body arrives before anything is
    # asked of the database (a slow client holds no connection), and a valid one sent with a
    # key goes with the others arriving meanwhile, in one batch that also looks the key up.
    # Anything else has its caller authenticated first, as on every route: a caller without a
    # valid key learns nothing of the body's faults.
    raw = await read_body(request)
    sent = request.headers.getlist("authorization")
    api_key = bearer(sent[0]) if len(sent) == 1 else None
    asked = _interaction_of(request, raw)
    tenant = None
    if isinstance(asked, Response) or api_key is None:
        tenant = (await principal(request)).tenant
        if isinstance(asked, Response):
            return asked
    new, key = asked
    try:
        row, created = await state_of(request).intake.record(
            new, idempotency_key=key, api_key=api_key, tenant=tenant
        )
    except VideoNotFinished:
        return _refused("video_id", "names no finished video of this tenant")
    return JSONResponse(_interaction_view(row), status_code=202 if created else 200)


async def get_feed(request: Request) -> Response:
    who = await principal(request)
    user_id = _user_id(request)
    if user_id is None:
        return _refused("user_id", "must be 1-200 printable characters")
    params = request.query_params
    limit = page_limit(request, 20)
    async with state_of(request).sessions() as session:
        try:
            items, cursor = await feed_rows.page(
                session, who.tenant, user_id, limit=limit, cursor=params.get("cursor")
            )
        except ValueError:
            return _refused("cursor", "is not a cursor of this feed")
    url = base_url(request)
    data = []
    for item in items:
        ready = item.status == JobStatus.SUCCEEDED
        data.append(
            {
                "type": item.kind,
                "job_id": str(item.job_id),
                "status": "ready" if ready else "pending",
                "similarity": round(item.similarity, 4),
                "video_url": f"{url}/v1/jobs/{item.job_id}/video" if ready else None,
            }
        )
    return JSONResponse({"user_id": user_id, "data": data, "next_cursor": cursor})


async def get_preferences(request: Request) -> Response:
    who = await principal(request)
    user_id = _user_id(request)
    if user_id is None:
        return _refused("user_id", "must be 1-200 printable characters")
    async with state_of(request).sessions() as session:
        user = await feed_rows.user(session, who.tenant, user_id)
        briefs = await feed_rows.briefs_of(session, who.tenant, user_id)
    updated = user.preference_updated_at if user else None
    refilled = user.refilled_at if user else None
    return JSONResponse(
        {
            "user_id": user_id,
            "interactions": user.interactions if user else 0,
            "pending_interactions": user.pending if user else 0,
            "preference_updated_at": updated.isoformat() if updated else None,
            "refilled_at": refilled.isoformat() if refilled else None,
            "briefs": [
                {
                    "brief": b.brief,
                    "job_id": str(b.job_id) if b.job_id else None,
                    "similarity": None if b.similarity is None else round(b.similarity, 4),
                    "created_at": b.created_at.isoformat(),
                }
                for b in briefs[-MAX_BRIEFS_SHOWN:][::-1]
            ],
        }
    )


ROUTES = [
    Route("/v1/interactions", create_interaction, methods=["POST"]),
    Route("/v1/users/{user_id}/feed", get_feed, methods=["GET"]),
    Route("/v1/users/{user_id}/preferences", get_preferences, methods=["GET"]),
]
