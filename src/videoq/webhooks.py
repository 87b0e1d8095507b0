"""Webhooks, both ways, signed and verified the Standard Webhooks way (what Replicate uses).

Outbound: a job with a ``webhook_url`` that reaches ``succeeded``, ``failed`` or ``cancelled``
gets one delivery: a row in ``webhook_deliveries``, then POSTs of
``{"type": "job.<status>", "timestamp", "data": <the job>}`` with ``webhook-id`` (the same on
every attempt), ``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"<id>.<timestamp>.<body>">``, keyed by the tenant's secret (``GET /v1/webhooks/secret``). Each
attempt is a row in ``webhook_attempts``; failures retry after ``webhook_retry_delays_s``. Every
hop, redirects included, goes through the SSRF guard (:mod:`videoq.security`) and connects to
the very address that was checked.

Inbound: ``POST /v1/webhooks/github`` creates a job from a release or a push to the default
branch when ``X-Hub-Signature-256`` verifies; the same signed body never makes two jobs.
``POST /v1/webhooks/replicate`` verifies Replicate's signature and timestamp, refuses replays
(webhook ids are remembered in Redis and PostgreSQL), records the receipt and publishes the
prediction id on ``videoq:replicate:<prediction id>`` for the stage waiting on it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import re
import time
import unicodedata
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import structlog
from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from videoq import jobs, queue, ratelimit
from videoq.db import TERMINAL, InboundWebhook, Job, WebhookAttempt, WebhookDelivery, WebhookSecret
from videoq.errors import Conflict, NotFound, Unauthorized
from videoq.schemas import JobCreate, field_errors
from videoq.security import Resolver, UnsafeUrl, parse_networks, resolve_checked, system_resolver
from videoq.settings import Settings

log = structlog.get_logger(__name__)

SECRET_PREFIX = "whsec_"
MAX_REDIRECTS = 3
REDIRECTS = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "videoq-webhooks/1"
_WEBHOOK_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
_PREDICTION_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


def replicate_channel(prediction_id: str) -> str:
    """Pub/sub channel on which a verified Replicate webhook announces its prediction id."""
    return f"videoq:replicate:{prediction_id}"


# --- Signatures -----------------------------------------------------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(uuid.uuid4().bytes + uuid.uuid4().bytes[:8]).decode()


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is `whsec_` followed by base64") from None


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256(id.timestamp.body)>``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: float,
    now: float | None = None,
) -> str:
    """Check a Standard Webhooks signature; returns the webhook id. Raises :class:`Unauthorized`
    (code ``invalid_signature``) when a header is missing, the timestamp is further than
    ``tolerance_s`` from ``now``, or no ``v1`` signature matches (constant-time compare)."""

    def refuse(why: str) -> Unauthorized:
        return Unauthorized(f"webhook refused: {why}", code="invalid_signature")

    msg_id = headers.get("webhook-id") or ""
    stamp = headers.get("webhook-timestamp") or ""
    signatures = headers.get("webhook-signature") or ""
    if not (msg_id and stamp and signatures):
        raise refuse("webhook-id, webhook-timestamp and webhook-signature are required")
    if not _WEBHOOK_ID.match(msg_id):
        raise refuse("malformed webhook-id")
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        raise refuse("malformed webhook-timestamp")
    timestamp = int(stamp)
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        raise refuse("timestamp outside the tolerance")
    expected = sign(secret, msg_id, timestamp, body).encode()
    for candidate in signatures.split(" "):
        if candidate.startswith("v1,") and hmac.compare_digest(
            candidate.encode("utf-8", "replace"), expected
        ):
            return msg_id
    raise refuse("no matching signature")


async def tenant_secret(session: AsyncSession, tenant: str) -> str:
    """The tenant's signing secret, created on first use."""
    stmt = insert(WebhookSecret).values(tenant=tenant, secret=new_secret())
    await session.execute(stmt.on_conflict_do_nothing(index_elements=["tenant"]))
    await session.commit()
    row = await session.get(WebhookSecret, tenant)
    assert row is not None
    return row.secret


# --- Outbound delivery ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one attempt achieved. ``permanent``: retrying cannot help (the URL is refused)."""

    status_code: int | None = None
    error: str | None = None
    permanent: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def payload(job: Job) -> dict[str, Any]:
    return {
        "type": f"job.{job.status}",
        "timestamp": datetime.now(UTC).isoformat(),
        "data": jobs.job_view(job),
    }


def _host(url: str) -> str:
    """Only the host of a URL reaches logs and attempt rows: paths and queries often carry
    the receiver's own tokens."""
    return urlsplit(url).hostname or "?"


async def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    allowed: Any = (),
    timeout_s: float = 10.0,
    resolver: Resolver = system_resolver,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Outcome:
    """POST ``body`` to ``url``, following up to :data:`MAX_REDIRECTS` redirects, each hop
    checked by the SSRF guard and pinned to the address that passed it."""
    current = url
    async with httpx.AsyncClient(
        transport=transport, timeout=timeout_s, follow_redirects=False, trust_env=False
    ) as client:
        for hop in range(MAX_REDIRECTS + 1):
            try:
                target = await resolve_checked(current, allowed, resolver)
            except UnsafeUrl as exc:
                where = "" if hop == 0 else f"redirect to {_host(current)}: "
                return Outcome(error=f"{where}{exc}", permanent=True)
            except LookupError as exc:
                return Outcome(error=str(exc))
            pinned = httpx.URL(current).copy_with(host=target.address)
            netloc = urlsplit(current).netloc.rpartition("@")[2]
            extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
            try:
                async with client.stream(
                    "POST", pinned, content=body, headers={**headers, "Host": netloc},
                    extensions=extensions,
                ) as response:  # fmt: skip
                    status = response.status_code
                    location = response.headers.get("location")
            except httpx.HTTPError as exc:
                return Outcome(error=f"{type(exc).__name__} from {target.host}")
            if status in REDIRECTS and location:
                current = urljoin(current, location)
                continue
            return Outcome(
                status_code=status, error=None if 200 <= status < 300 else f"HTTP {status}"
            )
    return Outcome(error="too many redirects", permanent=True)


Sleep = Callable[[float], Awaitable[None]]


async def _claim(
    sessions: async_sessionmaker[Any], delivery_id: uuid.UUID, lease_s: float
) -> WebhookDelivery | None:
    """Take a due pending delivery for one attempt (other processes skip it meanwhile)."""
    now = datetime.now(UTC)
    async with sessions() as session:
        row: WebhookDelivery | None = (
            await session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery_id,
                    WebhookDelivery.status == "pending",
                    WebhookDelivery.next_attempt_at <= now + timedelta(milliseconds=50),
                )
                .values(next_attempt_at=now + timedelta(seconds=lease_s))
                .returning(WebhookDelivery)
                .execution_options(synchronize_session=False)
            )
        ).scalar_one_or_none()
        await session.commit()
        return row


async def _record(
    sessions: async_sessionmaker[Any],
    row: WebhookDelivery,
    outcome: Outcome,
    started: datetime,
    duration_ms: float,
    delays: tuple[float, ...],
) -> float | None:
    """Store the attempt and the delivery's new state; returns the wait before the next attempt,
    or None when the delivery is settled."""
    attempt = row.attempts + 1
    now = datetime.now(UTC)
    values: dict[str, Any] = {"attempts": attempt, "last_error": outcome.error}
    wait: float | None = None
    if outcome.ok:
        values |= {"status": "delivered", "delivered_at": now, "next_attempt_at": None}
    elif outcome.permanent or attempt > len(delays):
        values |= {"status": "failed", "next_attempt_at": None}
    else:
        wait = delays[attempt - 1]
        values["next_attempt_at"] = now + timedelta(seconds=wait)
    async with sessions() as session:
        session.add(
            WebhookAttempt(
                delivery_id=row.id, attempt=attempt, started_at=started, duration_ms=duration_ms,
                status_code=outcome.status_code, error=outcome.error,
            )
        )  # fmt: skip
        await session.execute(
            update(WebhookDelivery).where(WebhookDelivery.id == row.id).values(**values)
        )
        await session.commit()
    return wait


async def deliver(
    sessions: async_sessionmaker[Any],
    settings: Settings,
    delivery_id: uuid.UUID,
    *,
    resolver: Resolver = system_resolver,
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: Sleep = asyncio.sleep,
) -> str | None:
    """Attempt the delivery until it is delivered or has failed for good; returns its final
    status (None when another process holds it)."""
    allowed = parse_networks(settings.webhook_allowed_networks)
    lease_s = settings.webhook_timeout_s * (MAX_REDIRECTS + 1) + 30
    msg_id = f"msg_{delivery_id.hex}"
    while True:
        row = await _claim(sessions, delivery_id, lease_s)
        if row is None:
            return None
        async with sessions() as session:
            secret = await tenant_secret(session, row.tenant)
        body = json.dumps(row.payload, separators=(",", ":")).encode()
        stamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": msg_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign(secret, msg_id, stamp, body),
        }
        started = datetime.now(UTC)
        clock = time.monotonic()
        outcome = await post(
            row.url, body, headers, allowed=allowed, timeout_s=settings.webhook_timeout_s,
            resolver=resolver, transport=transport,
        )  # fmt: skip
        elapsed_ms = (time.monotonic() - clock) * 1000
        wait = await _record(
            sessions, row, outcome, started, elapsed_ms, settings.webhook_retry_delays_s
        )
        context = {"delivery_id": str(row.id), "job_id": str(row.job_id), "host": _host(row.url)}
        if outcome.ok:
            log.info("webhook_delivered", attempt=row.attempts + 1, **context)
            return "delivered"
        if wait is None:
            log.warning("webhook_failed", attempt=row.attempts + 1, error=outcome.error, **context)
            return "failed"
        log.info("webhook_retry_scheduled", delay_s=wait, error=outcome.error, **context)
        await sleep(wait)


def _spawn(tasks: list[asyncio.Task[None]], coro: Coroutine[Any, Any, Any]) -> None:
    async def run() -> None:
        try:
            await coro
        except (SQLAlchemyError, OSError, RedisError) as exc:
            # The row stays pending; the next sweep (resume_pending) takes it up again.
            log.warning("webhook_delivery_interrupted", error=str(exc))

    task = asyncio.create_task(run())
    tasks.append(task)
    task.add_done_callback(lambda done: done in tasks and tasks.remove(done))  # type: ignore[func-returns-value]


async def resume_pending(
    sessions: async_sessionmaker[Any], settings: Settings, tasks: list[asyncio.Task[None]]
) -> int:
    """Take up deliveries that are due but have nobody attempting them (their process stopped
    between attempts); returns how many."""
    async with sessions() as session:
        ids = list(
            (
                await session.execute(
                    select(WebhookDelivery.id)
                    .where(
                        WebhookDelivery.status == "pending",
                        WebhookDelivery.next_attempt_at <= datetime.now(UTC),
                    )
                    .limit(20)
                )
            ).scalars()
        )
    for delivery_id in ids:
        _spawn(tasks, deliver(sessions, settings, delivery_id))
    return len(ids)


async def job_finished(
    sessions: async_sessionmaker[Any], settings: Settings, job: Job, tasks: list[asyncio.Task[None]]
) -> None:
    """Record and start the webhook of a job that just reached a terminal state (no-op for
    other states or jobs without ``webhook_url``). Never raises: the job's outcome is already
    recorded and must not be disturbed."""
    if job.status not in TERMINAL or not job.webhook_url:
        return
    try:
        async with sessions() as session:
            delivery = WebhookDelivery(
                id=uuid.uuid4(), job_id=job.id, tenant=job.tenant, event=f"job.{job.status}",
                url=job.webhook_url, payload=payload(job), status="pending", attempts=0,
                next_attempt_at=datetime.now(UTC),
            )  # fmt: skip
            session.add(delivery)
            await session.commit()
    except (SQLAlchemyError, OSError) as exc:
        log.warning("webhook_not_recorded", job_id=str(job.id), error=str(exc))
        return
    _spawn(tasks, deliver(sessions, settings, delivery.id))


async def stop(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel deliveries in flight (their rows stay pending and are resumed later)."""
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# --- Inbound routes -------------------------------------------------------------------------------


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


def _json_object(body: bytes) -> dict[str, Any]:
    from starlette.exceptions import HTTPException

    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise HTTPException(400, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return data


async def github(request: Request) -> Response:
    """``POST /v1/webhooks/github``: a job from a release (published) or a push to the default
    branch; authenticated by ``X-Hub-Signature-256`` only."""
    from videoq.api import error_response, state_of

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
    data = _json_object(body)
    if event == "ping":
        return JSONResponse({"ok": True})
    fields = _github_brief(event, data)
    if fields is None:
        return JSONResponse({"ignored": event[:100]})
    context = {"webhook_allowed_networks": st.settings.webhook_allowed_networks}
    try:
        brief = JobCreate.model_validate(fields, context=context)
    except ValidationError as exc:
        errors = field_errors(exc)
        return error_response(422, "validation_error", "the event makes no valid brief", errors)
    tenant = st.settings.github_webhook_tenant
    # GitHub's delivery header is not signed: the body is. One signed body, one job, however
    # often it is sent (GitHub's own redeliveries included).
    key = "github:" + hashlib.sha256(body).hexdigest()[:48]
    async with st.sessions() as session:
        await ratelimit.admit(st.redis, session, st.settings, tenant)
        job, created = await jobs.create_job(
            session, tenant, brief, default_max_retries=st.settings.max_retries,
            idempotency_key=key, queue=st.settings.queue_name,
        )  # fmt: skip
        receipt = {
            "source": "github",
            "delivery_id": _text(request.headers.get("x-github-delivery"), 200) or key,
            "job_id": job.id,
            "subject": _text(_object(data, "repository").get("full_name"), 200) or None,
        }
        await session.execute(insert(InboundWebhook).values(**receipt).on_conflict_do_nothing())
        await session.commit()
    if created:
        await queue.announce_created(st.redis, st.settings, job)
        log.info("job_created_from_github", job_id=str(job.id), github_event=event)
    return JSONResponse(
        jobs.job_view(job, str(request.base_url).rstrip("/")), 202 if created else 200
    )


async def replicate(request: Request) -> Response:
    """``POST /v1/webhooks/replicate``: a prediction changed state. Verified, deduplicated,
    recorded, then announced on :func:`replicate_channel`."""
    from videoq.api import state_of

    st = state_of(request)
    secret = st.settings.replicate_webhook_secret
    if secret is None:
        raise NotFound("Replicate webhooks are not configured (VIDEOQ_REPLICATE_WEBHOOK_SECRET)")
    body = await request.body()
    tolerance = st.settings.webhook_tolerance_s
    webhook_id = verify(secret.get_secret_value(), request.headers, body, tolerance_s=tolerance)
    data = _json_object(body)
    prediction_id = data.get("id")
    if not isinstance(prediction_id, str) or not _PREDICTION_ID.match(prediction_id):
        from videoq.api import error_response

        return error_response(
            422, "validation_error", "the body is not a prediction",
            [{"field": "id", "message": "a prediction id is required", "type": "missing"}],
        )  # fmt: skip
    seen_key = f"videoq:webhook-seen:replicate:{webhook_id}"
    try:
        first = await st.redis.set(seen_key, "1", nx=True, ex=int(tolerance * 2) + 60)
    except (RedisError, OSError):
        first = True  # PostgreSQL below still refuses a replay
    if not first:
        raise Conflict(f"webhook {webhook_id} was already received")
    async with st.sessions() as session:
        inserted = (
            await session.execute(
                insert(InboundWebhook)
                .values(source="replicate", delivery_id=webhook_id, subject=prediction_id)
                .on_conflict_do_nothing()
                .returning(InboundWebhook.delivery_id)
            )
        ).scalar_one_or_none()
        await session.commit()
    if inserted is None:
        raise Conflict(f"webhook {webhook_id} was already received")
    try:
        await st.redis.publish(replicate_channel(prediction_id), prediction_id)
    except (RedisError, OSError) as exc:  # the stage also polls: a missed wake-up only delays it
        log.warning("replicate_webhook_publish_failed", prediction_id=prediction_id, error=str(exc))
    log.info("replicate_webhook_received", prediction_id=prediction_id, status=data.get("status"))
    return JSONResponse({"received": True, "prediction_id": prediction_id})


async def secret_route(request: Request) -> Response:
    """``GET /v1/webhooks/secret``: the caller's tenant's signing secret, to verify our
    webhooks with any Standard Webhooks library."""
    from videoq.api import principal, state_of

    who = await principal(request)
    async with state_of(request).sessions() as session:
        secret = await tenant_secret(session, who.tenant)
    return JSONResponse({"secret": secret})


ROUTES = [
    Route("/v1/webhooks/secret", secret_route),
    Route("/v1/webhooks/github", github, methods=["POST"]),
    Route("/v1/webhooks/replicate", replicate, methods=["POST"]),
]
