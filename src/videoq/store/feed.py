"""The feed's tables: finished videos' embeddings (``video_embeddings``, pgvector with an HNSW
index), users' preferences and refill claims (``feed_users``), the briefs made for them
(``feed_briefs``) and their feeds (``feed_items``).

Nearest neighbours are found by the HNSW index (cosine distance) within the tenant, the model
and what the user has not seen. pgvector 0.6 (the embedded server's) filters the index's
candidates after the scan, so a scan that found fewer than asked for (a small tenant in a large
table, or a user who has seen most of it) is done again exactly, by the tenant's btree index.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pgvector.sqlalchemy import VECTOR
from sqlalchemy import REAL, and_, bindparam, cast, delete, func, or_, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncSession

from videoq.store.tables import (
    DIMENSIONS,
    FeedBrief,
    FeedItem,
    FeedUser,
    Interaction,
    Job,
    StageCheckpoint,
    VideoEmbedding,
)
from videoq.types import TERMINAL, JobStatus

EXISTING, GENERATED = "existing_video", "generated_video"
#: Vectors as PostgreSQL's ``real[]``, which pgvector casts to and from ``vector``.
FLOATS = ARRAY(REAL)
VECTOR_TYPE = VECTOR(DIMENSIONS)
#: Candidates the HNSW scan keeps (pgvector's ``hnsw.ef_search``, whose default is 40; at
#: most 1,000): also as many as a refill looks at, before the videos the user has seen.
EF_SEARCH = 200


@dataclass(frozen=True)
class Finished:
    """A succeeded job waiting for its embedding: its brief and its script (None if its
    checkpoint is gone)."""

    job_id: uuid.UUID
    tenant: str
    brief: dict[str, Any]
    script: dict[str, Any] | None


async def unembedded(session: AsyncSession, limit: int) -> list[Finished]:
    """Succeeded jobs with no embedding yet, oldest first."""
    query = (
        select(Job.id, Job.tenant, Job.brief, StageCheckpoint.output)
        .outerjoin(
            StageCheckpoint,
            and_(StageCheckpoint.job_id == Job.id, StageCheckpoint.stage == "script_gen"),
        )
        .where(Job.status == JobStatus.SUCCEEDED, Job.embedded_at.is_(None))
        .order_by(Job.finished_at)
        .limit(limit)
    )
    return [Finished(*row) for row in await session.execute(query)]


async def save_embeddings(
    session: AsyncSession,
    model: str,
    vectors: Sequence[tuple[Finished, Sequence[float]]],
    given_up: Sequence[uuid.UUID] = (),
    *,
    now: datetime,
) -> None:
    """Store the videos' embeddings and mark them (and ``given_up``) embedded, committed."""
    if vectors:
        rows = [
            {"job_id": f.job_id, "tenant": f.tenant, "model": model, "embedding": list(v)}
            for f, v in vectors
        ]
        await session.execute(insert(VideoEmbedding).values(rows).on_conflict_do_nothing())
    ids = [f.job_id for f, _ in vectors] + list(given_up)
    await session.execute(update(Job).where(Job.id.in_(ids)).values(embedded_at=now))
    await session.commit()


async def claim_due(
    session: AsyncSession, threshold: int, lease_s: float, limit: int, *, now: datetime
) -> list[FeedUser]:
    """Claim (committed) up to ``limit`` users with at least ``threshold`` interactions since
    their preference was computed, and no live claim of another worker (one older than
    ``lease_s`` is a dead worker's)."""
    due = (
        select(FeedUser.tenant, FeedUser.user_id)
        .where(
            FeedUser.pending >= threshold,
            or_(
                FeedUser.claimed_at.is_(None),
                FeedUser.claimed_at < now - timedelta(seconds=lease_s),
            ),
        )
        .order_by(FeedUser.pending.desc())
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    statement = (
        update(FeedUser)
        .where(tuple_(FeedUser.tenant, FeedUser.user_id).in_(due))
        .values(claimed_at=now)
        .returning(FeedUser)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    claimed = list((await session.execute(statement)).scalars())
    await session.commit()
    return claimed


async def release(
    session: AsyncSession, user: FeedUser, consumed: int, *, refilled_at: datetime | None
) -> None:
    """End the claim on ``user``, counting ``consumed`` interactions as taken into account
    (committed); ``refilled_at`` when the feed was refilled."""
    await _release(session, user, consumed, refilled_at=refilled_at)
    await session.commit()


async def _release(
    session: AsyncSession, user: FeedUser, consumed: int, *, refilled_at: datetime | None
) -> None:
    values: dict[str, Any] = {
        "pending": func.greatest(FeedUser.pending - consumed, 0),
        "claimed_at": None,
    }
    if refilled_at is not None:
        values["refilled_at"] = refilled_at
    await session.execute(
        update(FeedUser)
        .where(FeedUser.tenant == user.tenant, FeedUser.user_id == user.user_id)
        .values(**values)
    )


@dataclass(frozen=True)
class Touch:
    """One interaction of a user's history, with what the preference needs of its video."""

    type: str
    watched_s: float | None
    created_at: datetime
    video_id: uuid.UUID
    brief: dict[str, Any]
    #: The video's embedding of the current model; None while (or if never) embedded.
    embedding: Any | None
    #: Whether the video's embedding is still to come (it succeeded, the backlog has it).
    awaited: bool


async def history(
    session: AsyncSession, tenant: str, user_id: str, model: str, limit: int
) -> list[Touch]:
    """The user's latest ``limit`` interactions, newest first."""
    query = (
        select(
            Interaction.type,
            Interaction.watched_s,
            Interaction.created_at,
            Interaction.video_id,
            Job.brief,
            cast(VideoEmbedding.embedding, FLOATS),
            Job.embedded_at.is_(None),
        )
        .join(Job, Job.id == Interaction.video_id)
        .outerjoin(
            VideoEmbedding,
            and_(VideoEmbedding.job_id == Interaction.video_id, VideoEmbedding.model == model),
        )
        .where(Interaction.tenant == tenant, Interaction.user_id == user_id)
        .order_by(Interaction.id.desc())
        .limit(limit)
    )
    return [Touch(*row) for row in await session.execute(query)]


async def save_refill(
    session: AsyncSession,
    user: FeedUser,
    vector: Sequence[float],
    model: str,
    matches: Sequence[tuple[uuid.UUID, float]],
    *,
    consumed: int | None,
    now: datetime,
) -> None:
    """In one transaction (committed): the user's preference vector stored, their
    ``existing_video`` items replaced by ``matches``, and, with ``consumed``, the claim ended as
    :func:`release` ends it."""
    await session.execute(
        update(FeedUser)
        .where(FeedUser.tenant == user.tenant, FeedUser.user_id == user.user_id)
        .values(
            preference=cast(bindparam("preference", list(vector), type_=FLOATS), VECTOR_TYPE),
            model=model,
            preference_updated_at=now,
        )
    )
    await session.execute(
        delete(FeedItem).where(
            FeedItem.tenant == user.tenant,
            FeedItem.user_id == user.user_id,
            FeedItem.kind == EXISTING,
        )
    )
    if matches:
        items = [
            {"tenant": user.tenant, "user_id": user.user_id, "job_id": job_id, "kind": EXISTING,
             "similarity": similarity}
            for job_id, similarity in matches
        ]  # fmt: skip
        await session.execute(insert(FeedItem).values(items).on_conflict_do_nothing())
    if consumed is not None:
        await _release(session, user, consumed, refilled_at=now)
    await session.commit()


#: The tenant's finished videos of a model nearest a vector, by cosine distance (``<=>``):
#: the inner query is the HNSW index's scan (``:candidates`` of them, the nearest first), the
#: outer one leaves out those the user interacted with and those made for them. (With those
#: conditions in one query, PostgreSQL anti-joins every video of the tenant and sorts them.)
NEAREST_SQL = f"""
    SELECT near.job_id, 1 - near.distance AS similarity
    FROM (
        SELECT e.job_id, e.embedding <=> CAST(:vector AS vector) AS distance
        FROM video_embeddings e
        WHERE e.tenant = :tenant AND e.model = :model
        ORDER BY e.embedding <=> CAST(:vector AS vector)
        LIMIT :candidates
    ) near
    WHERE NOT EXISTS (
          SELECT 1 FROM interactions i
          WHERE i.tenant = :tenant AND i.user_id = :user_id AND i.video_id = near.job_id)
      AND NOT EXISTS (
          SELECT 1 FROM feed_items f
          WHERE f.tenant = :tenant AND f.user_id = :user_id AND f.job_id = near.job_id
            AND f.kind = '{GENERATED}')
    ORDER BY near.distance
    LIMIT :limit
"""
#: The query vector, sent as ``real[]`` (asyncpg encodes it in C; the text form pgvector's
#: own type would send costs milliseconds to write and parse at 1,536 numbers).
VECTOR_PARAM = bindparam("vector", type_=FLOATS)
_NEAREST = text(NEAREST_SQL).bindparams(VECTOR_PARAM)


async def nearest(
    session: AsyncSession,
    tenant: str,
    user_id: str,
    vector: Sequence[float],
    model: str,
    limit: int,
    *,
    exact: bool = False,
) -> list[tuple[uuid.UUID, float]]:
    """:data:`NEAREST_SQL`'s ``limit`` videos, nearest first, with their cosine similarity:
    by the HNSW index, or, with ``exact`` (and whenever the index's candidates left fewer than
    ``limit``), by comparing every one of the tenant's videos."""
    candidates = max(EF_SEARCH, limit)
    params = {
        "vector": list(vector), "tenant": tenant, "model": model, "user_id": user_id,
        "limit": limit, "candidates": candidates,
    }  # fmt: skip
    # SET LOCAL lasts until the transaction ends: the session's own, committed below.
    if exact:
        await session.execute(text("SET LOCAL enable_indexscan = off"))
    else:
        await session.execute(text(f"SET LOCAL hnsw.ef_search = {candidates}"))
    found = [
        (job_id, float(similarity))
        for job_id, similarity in await session.execute(_NEAREST, params)
    ]
    await session.commit()
    if len(found) < limit and not exact:
        return await nearest(session, tenant, user_id, vector, model, limit, exact=True)
    return found


async def briefs_of(session: AsyncSession, tenant: str, user_id: str) -> list[FeedBrief]:
    """Every brief made for the user, oldest first."""
    query = (
        select(FeedBrief)
        .where(FeedBrief.tenant == tenant, FeedBrief.user_id == user_id)
        .order_by(FeedBrief.created_at, FeedBrief.id)
    )
    return list((await session.execute(query)).scalars())


async def add_briefs(
    session: AsyncSession,
    tenant: str,
    user_id: str,
    briefs: Sequence[tuple[str, dict[str, Any], float]],
    *,
    now: datetime,
) -> list[FeedBrief]:
    """Record new briefs ``(fingerprint, brief, similarity)`` for the user (committed); one
    whose fingerprint the user already has is left out. Returns those recorded."""
    if not briefs:
        return []
    rows = [
        {"id": uuid.uuid4(), "tenant": tenant, "user_id": user_id, "fingerprint": fingerprint,
         "brief": brief, "similarity": similarity, "created_at": now}
        for fingerprint, brief, similarity in briefs
    ]  # fmt: skip
    statement = (
        insert(FeedBrief)
        .values(rows)
        .on_conflict_do_nothing(constraint="feed_briefs_once")
        .returning(FeedBrief)
    )
    added = list((await session.execute(statement)).scalars())
    await session.commit()
    return added


async def attach_job(session: AsyncSession, brief: FeedBrief, job_id: uuid.UUID) -> None:
    """The brief's job was submitted: it is recorded, and queued in the user's feed as a
    ``generated_video`` (committed)."""
    await session.execute(update(FeedBrief).where(FeedBrief.id == brief.id).values(job_id=job_id))
    item = {
        "tenant": brief.tenant, "user_id": brief.user_id, "job_id": job_id, "kind": GENERATED,
        "similarity": brief.similarity or 0.0,
    }  # fmt: skip
    await session.execute(insert(FeedItem).values(item).on_conflict_do_nothing())
    await session.commit()


async def ended(session: AsyncSession, *, now: datetime) -> list[tuple[Any, ...]]:
    """Generated items whose jobs ended since the last look, marked announced (committed, so
    each end is announced once): ``(tenant, user_id, job_id, status)`` each."""
    statement = (
        update(FeedItem)
        .where(
            FeedItem.kind == GENERATED,
            FeedItem.announced_at.is_(None),
            FeedItem.job_id == Job.id,
            Job.status.in_(TERMINAL),
        )
        .values(announced_at=now)
        .returning(FeedItem.tenant, FeedItem.user_id, FeedItem.job_id, Job.status)
        .execution_options(synchronize_session=False)
    )
    rows = [tuple(row) for row in await session.execute(statement)]
    await session.commit()
    return rows


def _encode_cursor(similarity: float, job_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{similarity!r}|{job_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, uuid.UUID]:
    try:
        if len(cursor) > 128:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        similarity, key = raw.split("|")
        value = float(similarity)
        if not -1.0 <= value <= 1.0:
            raise ValueError("out of range")
        return value, uuid.UUID(key)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("invalid cursor") from exc


@dataclass(frozen=True)
class Item:
    """One entry of a user's feed, with its job's state."""

    kind: str
    job_id: uuid.UUID
    similarity: float
    status: str


async def page(
    session: AsyncSession, tenant: str, user_id: str, *, limit: int, cursor: str | None
) -> tuple[list[Item], str | None]:
    """The user's feed, best (most similar) first, leaving out videos that failed or expired;
    keyset-paginated. :class:`ValueError` for a cursor not made here."""
    query = (
        select(FeedItem.kind, FeedItem.job_id, FeedItem.similarity, Job.status)
        .join(Job, Job.id == FeedItem.job_id)
        .where(
            FeedItem.tenant == tenant,
            FeedItem.user_id == user_id,
            Job.status.not_in((JobStatus.FAILED, JobStatus.CANCELLED)),
            Job.artifacts_expired_at.is_(None),
        )
    )
    if cursor:
        similarity, key = _decode_cursor(cursor)
        query = query.where(
            or_(
                FeedItem.similarity < similarity,
                and_(FeedItem.similarity == similarity, FeedItem.job_id > key),
            )
        )
    query = query.order_by(FeedItem.similarity.desc(), FeedItem.job_id).limit(limit + 1)
    rows = [Item(*row) for row in await session.execute(query)]
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if rows else None
    return rows, (_encode_cursor(last.similarity, last.job_id) if more and last else None)


async def user(session: AsyncSession, tenant: str, user_id: str) -> FeedUser | None:
    """The user's counters and preference (None: no interaction yet)."""
    return await session.get(FeedUser, (tenant, user_id))


async def made_since(session: AsyncSession, tenant: str, user_id: str, since: datetime) -> int:
    """Briefs made for the user since ``since``."""
    query = select(func.count()).where(
        FeedBrief.tenant == tenant, FeedBrief.user_id == user_id, FeedBrief.created_at >= since
    )
    return int((await session.execute(query)).scalar_one())


async def figures(session: AsyncSession, threshold: int) -> dict[str, int]:
    """For operators (``/v1/queue/stats``): users with enough new interactions that their feed
    is due a refill, and jobs made for feeds that have not finished yet."""
    users_due = select(func.count()).select_from(FeedUser).where(FeedUser.pending >= threshold)
    waiting = (
        select(func.count())
        .select_from(FeedBrief)
        .join(Job, Job.id == FeedBrief.job_id)
        .where(Job.status.not_in(TERMINAL))
    )
    return {
        "users_due": int((await session.execute(users_due)).scalar_one()),
        "generated_waiting": int((await session.execute(waiting)).scalar_one()),
    }


async def refilled_since(session: AsyncSession, since: datetime) -> int:
    """Users whose feed was refilled at ``since`` or later."""
    query = select(func.count()).select_from(FeedUser).where(FeedUser.refilled_at >= since)
    return int((await session.execute(query)).scalar_one())
