"""Preference-driven generation (docs/feed.md): what the workers make of end users'
interactions, never on the request path.

Each ``feed_poll_s`` one worker (a Redis lock elects it, as for the reconciler) runs
:func:`tick`:

1. **embeddings**: the finished videos that have none yet are embedded (their brief and
   script, :func:`video_text`), a batch at a time, by the process's
   :class:`~videoq.providers.embeddings.Embedder`;
2. **ends**: generated feed items whose jobs ended are announced on their tenant's event
   stream (``{"type": "feed", "change": "ready" | "failed", ...}``);
3. **refills**: users with ``preference_update_threshold`` new interactions are claimed (in
   PostgreSQL, so two workers never refill one user at once), their preference vector is
   recomputed (:func:`preference`) and their feed refilled (:func:`refill`).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import structlog
from pydantic import ValidationError

from videoq import lifecycle
from videoq.broker import BROKER_ERRORS
from videoq.broker.events import publish_tenant
from videoq.errors import OverBudget, PermanentError, RateLimited
from videoq.providers.briefs import FIELDS, BriefWriter, Taste
from videoq.providers.embeddings import Embedder
from videoq.schemas import JobCreate, job_context
from videoq.settings import Settings
from videoq.store import feed as rows
from videoq.store.feed import Touch
from videoq.store.tables import FeedBrief, FeedUser
from videoq.types import JobStatus

log = structlog.get_logger(__name__)

#: Users refilled per period, at most (the rest wait for the next).
REFILLS_PER_TICK = 20
#: A refill claim older than this is a dead worker's: another worker takes the user.
CLAIM_LEASE_S = 300.0
#: The longest text embedded (characters), well inside text-embedding-3's 8,192 tokens.
MAX_TEXT_CHARS = 8000


async def tick(svc: lifecycle.Services, embedder: Embedder, writer: BriefWriter) -> None:
    """One period's work: embed, announce, refill (module docstring). A step that fails is
    logged and the next one still runs: an embeddings API that is down must not hold up the
    feeds of users whose videos are embedded already."""
    steps = (
        ("embed", embed_finished(svc, embedder)),
        ("announce", announce_ended(svc)),
        ("refill", refill_due(svc, embedder, writer)),
    )
    for step, work in steps:
        try:
            await work
        except Exception as exc:  # the next step, and the next period, go on
            log.warning("feed_step_failed", step=step, error=f"{type(exc).__name__}: {exc}")


def video_text(brief: dict[str, Any], script: dict[str, Any] | None) -> str:
    """What a finished video is embedded as: its brief's words, then its script's."""
    parts = [brief.get(k) for k in ("product_name", "style", "prompt", "cta_text")]
    if script:
        parts.append(script.get("title"))
        for scene in script.get("scenes") or ():
            parts += [scene.get("narration"), scene.get("visual_prompt")]
    return "\n".join(str(p) for p in parts if p)[:MAX_TEXT_CHARS]


async def embed_finished(svc: lifecycle.Services, embedder: Embedder) -> int:
    """Embed one batch of finished videos that have no embedding; returns how many. A text the
    API refuses for good is given up on (logged), so it does not hold up the others; a
    retryable failure leaves the batch for the next period."""
    async with svc.sessions() as session:
        batch = await rows.unembedded(session, svc.settings.embeddings_batch)
    if not batch:
        return 0
    texts = [video_text(f.brief, f.script) for f in batch]
    given_up: list[uuid.UUID] = []
    try:
        done = list(zip(batch, await embedder.embed(texts), strict=True))
    except PermanentError:
        done = []
        for finished, one in zip(batch, texts, strict=True):
            try:
                done.append((finished, (await embedder.embed([one]))[0]))
            except PermanentError as exc:
                log.warning("video_not_embedded", job_id=str(finished.job_id), error=exc.code)
                given_up.append(finished.job_id)
    async with svc.sessions() as session:
        await rows.save_embeddings(session, embedder.model, done, given_up, now=datetime.now(UTC))
    log.info("videos_embedded", videos=len(done), model=embedder.model)
    return len(done)


async def _publish(svc: lifecycle.Services, tenant: str, event: dict[str, Any]) -> None:
    """Best effort: the feed in PostgreSQL is the record, the event a notice."""
    try:
        await publish_tenant(svc.redis, tenant, {**event, "ts": datetime.now(UTC).isoformat()})
    except BROKER_ERRORS as exc:
        log.warning("feed_event_not_published", tenant=tenant, error=str(exc))


async def announce_ended(svc: lifecycle.Services) -> int:
    """Announce the generated items whose jobs ended since the last look; returns how many."""
    async with svc.sessions() as session:
        ended = await rows.ended(session, now=datetime.now(UTC))
    for tenant, user_id, job_id, status in ended:
        change = "ready" if status == JobStatus.SUCCEEDED else "failed"
        event = {"type": "feed", "change": change, "user_id": user_id, "job_id": str(job_id)}
        await _publish(svc, tenant, event)
    return len(ended)


async def refill_due(svc: lifecycle.Services, embedder: Embedder, writer: BriefWriter) -> int:
    """Refill the feeds of the users due (at most :data:`REFILLS_PER_TICK`); returns how many
    were claimed. A refill that fails is logged; its claim lapses after
    :data:`CLAIM_LEASE_S` and the user is refilled then."""
    settings = svc.settings
    async with svc.sessions() as session:
        due = await rows.claim_due(
            session, settings.preference_update_threshold, CLAIM_LEASE_S, REFILLS_PER_TICK,
            now=datetime.now(UTC),
        )  # fmt: skip
    for user in due:
        try:
            await refill(svc, embedder, writer, user)
        except Exception as exc:  # one user's failure must not stop the others' refills
            log.warning("feed_refill_failed", tenant=user.tenant, user_id=user.user_id,
                        error=f"{type(exc).__name__}: {exc}")  # fmt: skip
    return len(due)


def weight(touch: Touch, settings: Settings) -> float:
    """How much an interaction pulls towards its video (negative: away), before its age."""
    short = touch.watched_s is not None and touch.watched_s < settings.short_view_s
    if touch.type == "view" and short:
        return settings.short_view_weight
    return next((w for k, w in settings.interaction_weights.items() if k == touch.type), 0.0)


def preference(touches: Sequence[Touch], settings: Settings, now: datetime) -> list[float] | None:
    """The unit vector a user's interactions point to: the mean of their videos' embeddings,
    each weighted by :func:`weight` and halved every ``preference_half_life_days`` of age.
    None when no video of theirs has an embedding, or the weights cancel out."""
    total = np.zeros(0)
    for touch in touches:
        if touch.embedding is None:
            continue
        age_days = max(0.0, (now - touch.created_at).total_seconds() / 86400)
        decay = 0.5 ** (age_days / settings.preference_half_life_days)
        vector = np.asarray(touch.embedding, dtype=np.float64) * weight(touch, settings) * decay
        total = vector if not total.size else total + vector
    norm = float(np.linalg.norm(total)) if total.size else 0.0
    if norm < 1e-9:
        return None
    return [float(x) for x in total / norm]


async def refill(
    svc: lifecycle.Services, embedder: Embedder, writer: BriefWriter, user: FeedUser
) -> None:
    """Recompute a claimed user's preference and refill their feed: the tenant's nearest
    finished videos they have not seen, within ``similarity_threshold``, become its
    ``existing_video`` items; when fewer than ``similar_videos_needed`` are, new briefs are
    made for them (:func:`generate`). The refill is announced on the tenant's stream."""
    settings, now = svc.settings, datetime.now(UTC)
    tenant, user_id = user.tenant, user.user_id
    async with svc.sessions() as session:
        touches = await rows.history(
            session, tenant, user_id, embedder.model, settings.preference_history
        )
    vector = preference(touches, settings, now)
    if vector is None:
        awaited = any(t.embedding is None and t.awaited for t in touches)
        async with svc.sessions() as session:
            # Videos about to be embedded: looked at again next period; else nothing to do.
            await rows.release(session, user, 0 if awaited else user.pending, refilled_at=None)
        log.info("feed_refill_skipped", tenant=tenant, user_id=user_id,
                 reason="embeddings_awaited" if awaited else "no_preference")  # fmt: skip
        return
    async with svc.sessions() as session:
        nearest = await rows.nearest(
            session, tenant, user_id, vector, embedder.model, settings.feed_size
        )
        similar = [(j, s) for j, s in nearest if s >= settings.similarity_threshold]
        enough = len(similar) >= settings.similar_videos_needed
        await rows.save_refill(
            session, user, vector, embedder.model, similar,
            consumed=user.pending if enough else None, now=now,
        )  # fmt: skip
    made: list[uuid.UUID] = []
    if not enough:
        made = await generate(svc, embedder, writer, user, vector, touches)
        async with svc.sessions() as session:
            await rows.release(session, user, user.pending, refilled_at=now)
    log.info("feed_refilled", tenant=tenant, user_id=user_id, existing=len(similar),
             generated=len(made))  # fmt: skip
    event = {
        "type": "feed", "change": "refilled", "user_id": user_id,
        "existing": [str(j) for j, _ in similar], "generated": [str(j) for j in made],
    }  # fmt: skip
    await _publish(svc, tenant, event)


def fingerprint(brief: dict[str, Any]) -> str:
    """What makes two briefs the same one: their fields, case and spacing aside."""
    canonical = {k: " ".join(str(brief.get(k) or "").lower().split()) for k in FIELDS}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def taste(touches: Sequence[Touch], made: Sequence[FeedBrief], settings: Settings) -> Taste:
    """What new briefs should fit: the briefs of the videos the user liked, the strongest
    first, and of those they disliked; and the briefs already made for them."""
    pull: dict[uuid.UUID, float] = {}
    briefs: dict[uuid.UUID, dict[str, Any]] = {}
    for touch in touches:
        pull[touch.video_id] = pull.get(touch.video_id, 0.0) + weight(touch, settings)
        briefs[touch.video_id] = touch.brief
    ranked = sorted(pull, key=lambda video: -abs(pull[video]))
    return Taste(
        liked=[briefs[v] for v in ranked if pull[v] > 0],
        disliked=[briefs[v] for v in ranked if pull[v] < 0],
        made=[b.brief for b in made],
    )


#: What a new brief takes from the user's favourite video: the format they watch.
FORMAT = ("duration_s", "aspect_ratio")


def _job_body(
    idea: dict[str, Any], favourite: dict[str, Any], settings: Settings
) -> JobCreate | None:
    """A written brief as a job's body in the format of the user's ``favourite`` video,
    validated as the API validates one (None if it is not valid)."""
    fields = {k: favourite[k] for k in FORMAT if favourite.get(k) is not None}
    fields |= {k: v for k, v in idea.items() if k in FIELDS and v is not None}
    try:
        body = JobCreate.model_validate(
            {**fields, "priority": settings.preference_priority}, context=job_context(settings)
        )
    except ValidationError as exc:
        log.warning("feed_brief_refused", errors=exc.error_count())
        return None
    return body


async def generate(
    svc: lifecycle.Services,
    embedder: Embedder,
    writer: BriefWriter,
    user: FeedUser,
    vector: Sequence[float],
    touches: Sequence[Touch],
) -> list[uuid.UUID]:
    """Make new videos for the user: briefs written to fit their taste (at most
    ``briefs_per_refill``, and ``max_generated_per_user_per_day`` a UTC day; one they already
    had is dropped), each submitted as a job at ``preference_priority`` and queued in their
    feed as a ``generated_video`` with its brief's similarity to the preference. Briefs of an
    earlier refill whose jobs could not be submitted then (rate limit, budget) go first.
    Returns the jobs submitted."""
    settings, now = svc.settings, datetime.now(UTC)
    tenant, user_id = user.tenant, user.user_id
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    async with svc.sessions() as session:
        earlier = await rows.briefs_of(session, tenant, user_id)
        today = await rows.made_since(session, tenant, user_id, day)
    room = min(settings.briefs_per_refill, settings.max_generated_per_user_per_day - today)
    new: list[FeedBrief] = []
    if room <= 0:
        log.info("feed_generation_capped", tenant=tenant, user_id=user_id, today=today)
    else:
        fits = taste(touches, earlier, settings)
        try:
            ideas = await writer.write_briefs(fits, room) if fits.liked else []
        except PermanentError as exc:
            log.warning("feed_briefs_not_written", tenant=tenant, error=exc.code)
            ideas = []
        favourite = fits.liked[0] if fits.liked else {}
        written = (_job_body(idea, favourite, settings) for idea in ideas[:room])
        bodies = [body for body in written if body is not None]
        texts = [video_text(body.brief(), None) for body in bodies]
        vectors = await embedder.embed(texts) if texts else []
        recorded = [
            (fingerprint(body.brief()), body.brief(), float(np.dot(v, vector)))
            for body, v in zip(bodies, vectors, strict=True)
        ]
        async with svc.sessions() as session:
            new = await rows.add_briefs(session, tenant, user_id, recorded, now=now)
    jobs = []
    for brief in [*(b for b in earlier if b.job_id is None), *new]:
        job_id = await _submit(svc, brief)
        if job_id is not None:
            jobs.append(job_id)
    return jobs


async def _submit(svc: lifecycle.Services, brief: FeedBrief) -> uuid.UUID | None:
    """Submit the brief's job (its idempotency key is the brief's, so a refill that crashed
    after submitting finds the same job) and queue it in the user's feed; None when the
    tenant's limits refuse it for now."""
    settings = svc.settings
    body = JobCreate.model_validate(
        {**brief.brief, "priority": settings.preference_priority}, context=job_context(settings)
    )
    try:
        job, _ = await lifecycle.submit(
            svc, brief.tenant, body, idempotency_key=f"feed-brief:{brief.id}"
        )
    except (RateLimited, OverBudget) as exc:
        log.info("feed_job_deferred", tenant=brief.tenant, brief_id=str(brief.id),
                 reason=exc.code)  # fmt: skip
        return None
    async with svc.sessions() as session:
        await rows.attach_job(session, brief, job.id)
    return job.id
