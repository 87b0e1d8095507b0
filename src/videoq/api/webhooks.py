"""Inbound webhooks, verified before anything is read from them, and the tenant's signing
secret for the outbound ones (:mod:`videoq.outbox`).

``POST /v1/webhooks/github`` creates a job from a release or a push to the default branch when
``X-Hub-Signature-256`` verifies; the same signed body never makes two jobs.
``POST /v1/webhooks/replicate`` verifies Replicate's signature and timestamp (Standard
Webhooks, :mod:`videoq.signing`), refuses replays (webhook ids are remembered in Redis and
PostgreSQL), records the receipt and announces the prediction to the workers.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from typing import Any

import structlog
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from videoq import lifecycle
from videoq.api.deps import base_url, json_object, principal, state_of
from videoq.api.errors import error_response, invalid
from videoq.broker import BROKER_ERRORS, inbound
from videoq.errors import Conflict, NotFound, Unauthorized
from videoq.schemas import JobCreate, job_context
from videoq.signing import verify
from videoq.store import webhooks as webhook_rows
from videoq.views import job_view

log = structlog.get_logger(__name__)

_PREDICTION_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


def _text(value: Any, limit: int) -> str:
    """Text from a provider's payload, made acceptable as brief data: no control or surrogate
    characters, trimmed to ``limit``."""
    if not isinstance(value, str):
        return ""
    kept = "".join(c for c in value if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cs"))
    return kept.strip()[:limit].strip()


def _object(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _github_brief(event: str, data: dict[str, Any]) -> dict[str, Any] | None:
    """The brief for a GitHub event, or None for events that make no video."""
    repo = _object(data, "repository")
    full_name = _text(repo.get("full_name"), 150)
    brief: dict[str, Any] = {"product_name": _text(repo.get("name"), 200) or full_name or "repo"}
    if full_name:
        brief["cta_text"] = _text(f"github.com/{full_name}", 80)
    if event == "release" and data.get("action") == "published":
        release = _object(data, "release")
        title = _text(release.get("name"), 200) or _text(release.get("tag_name"), 100)
        notes = _text(release.get("body"), 1800)
        brief["prompt"] = _text(f"Release {title}\n{notes}", 2000)
    elif event == "push" and not data.get("deleted"):
        branch = _text(repo.get("default_branch"), 200)
        if not branch or data.get("ref") != f"refs/heads/{branch}":
            return None
        head = _object(data, "head_commit")
        brief["prompt"] = _text(head.get("message"), 2000)
    else:
        return None
    return {k: v for k, v in brief.items() if v}


async def github(request: Request) -> Response:
    """``POST /v1/webhooks/github``: a job from a release (published) or a push to the default
    branch; authenticated by ``X-Hub-Signature-256`` only."""
    st = state_of(request)
    secret = st.settings.github_webhook_secret
    if secret is None:
        raise NotFound("GitHub webhooks are not configured (VIDEOQ_GITHUB_WEBHOOK_SECRET)")
    body = await request.body()
    given = request.headers.get("x-hub-signature-256", "").encode("latin-1")
    digest = hmac.new(secret.get_secret_value().encode(), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(given, f"sha256={digest}".encode()):
        raise Unauthorized("invalid X-Hub-Signature-256", code="invalid_signature")
    event = request.headers.get("x-github-event", "")
    data = json_object(body)
    if event == "ping":
        return JSONResponse({"ok": True})
    fields = _github_brief(event, data)
    if fields is None:
        return JSONResponse({"ignored": event[:100]})
    try:
        brief = JobCreate.model_validate(fields, context=job_context(st.settings))
    except ValidationError as exc:
        return invalid(exc, "the event makes no valid brief")
    tenant = st.settings.github_webhook_tenant
    # GitHub's delivery header is not signed: the body is. One signed body, one job, however
    # often it is sent (GitHub's own redeliveries included).
    key = "github:" + hashlib.sha256(body).hexdigest()[:48]
    job, created = await lifecycle.submit(st, tenant, brief, idempotency_key=key)
    async with st.sessions() as session:
        await webhook_rows.record_receipt(
            session, "github", _text(request.headers.get("x-github-delivery"), 200) or key,
            job_id=job.id,
            subject=_text(_object(data, "repository").get("full_name"), 200) or None,
        )  # fmt: skip
    if created:
        log.info("job_created_from_github", job_id=str(job.id), github_event=event)
    return JSONResponse(job_view(job, base_url(request)), 202 if created else 200)


async def replicate(request: Request) -> Response:
    """``POST /v1/webhooks/replicate``: a prediction changed state. Verified, deduplicated,
    recorded, then announced to the workers (the one waiting on the prediction reads it)."""
    st = state_of(request)
    secret = st.settings.replicate_webhook_secret
    if secret is None:
        raise NotFound("Replicate webhooks are not configured (VIDEOQ_REPLICATE_WEBHOOK_SECRET)")
    body = await request.body()
    tolerance = st.settings.webhook_tolerance_s
    webhook_id = verify(secret.get_secret_value(), request.headers, body, tolerance_s=tolerance)
    data = json_object(body)
    prediction_id = data.get("id")
    if not isinstance(prediction_id, str) or not _PREDICTION_ID.match(prediction_id):
        return error_response(
            422, "validation_error", "the body is not a prediction",
            [{"field": "id", "message": "a prediction id is required", "type": "missing"}],
        )  # fmt: skip
    try:
        first = await inbound.first_receipt(
            st.redis, "replicate", webhook_id, ttl_s=int(tolerance * 2) + 60
        )
    except BROKER_ERRORS:
        first = True  # PostgreSQL below still refuses a replay
    if not first:
        raise Conflict(f"webhook {webhook_id} was already received")
    async with st.sessions() as session:
        recorded = await webhook_rows.record_receipt(
            session, "replicate", webhook_id, subject=prediction_id
        )
    if not recorded:
        raise Conflict(f"webhook {webhook_id} was already received")
    try:
        await inbound.announce_prediction(st.redis, prediction_id)
    except BROKER_ERRORS as exc:  # a missed announcement costs a wait: the stage still polls
        log.warning("replicate_webhook_publish_failed", prediction_id=prediction_id, error=str(exc))
    log.info("replicate_webhook_received", prediction_id=prediction_id, status=data.get("status"))
    return JSONResponse({"received": True, "prediction_id": prediction_id})


async def secret_route(request: Request) -> Response:
    """``GET /v1/webhooks/secret``: the caller's tenant's signing secret, to verify our
    webhooks with any Standard Webhooks library."""
    who = await principal(request)
    async with state_of(request).sessions() as session:
        secret = await webhook_rows.tenant_secret(session, who.tenant)
    return JSONResponse({"secret": secret})


ROUTES = [
    Route("/v1/webhooks/secret", secret_route),
    Route("/v1/webhooks/github", github, methods=["POST"]),
    Route("/v1/webhooks/replicate", replicate, methods=["POST"]),
]
