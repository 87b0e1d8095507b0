"""The tables of PostgreSQL, the record of truth. The schema is owned by Alembic
(``videoq/store/migrations/``); these models describe it for queries.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

from pgvector.sqlalchemy import VECTOR
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from videoq.types import WAITING, JobStatus

Json = JSON().with_variant(JSONB(), "postgresql")

#: The size of every embedding (text-embedding-3-small's, and the offline embedder's).
DIMENSIONS = 1536


def _sql_list(values: Iterable[str]) -> str:
    """``'a', 'b'``: states as SQL literals, for constraints and partial indexes."""
    return ", ".join(f"'{value}'" for value in values)


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: A label for people (``POST /v1/keys``), never used to authenticate.
    name: Mapped[str | None] = mapped_column(String(100))
    #: When the key stops working by itself (None: never).
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ConsoleSession(Base):
    """A signed-in console (``POST /v1/session``): the hash of its cookie's token, the key it
    was opened with (its scope; revoking the key ends it) and its CSRF token."""

    __tablename__ = "console_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("api_keys.id", ondelete="CASCADE"), index=True
    )
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"status IN ({_sql_list(JobStatus)})", name="jobs_status_valid"),
        CheckConstraint("progress >= 0 AND progress <= 100", name="jobs_progress_range"),
        CheckConstraint("version >= 1", name="jobs_version_positive"),
        Index("jobs_tenant_created", "tenant", text("created_at DESC"), text("id DESC")),
        Index(
            "jobs_tenant_idempotency",
            "tenant",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        Index("jobs_status", "status"),
        Index(
            "jobs_running_heartbeat",
            "heartbeat_at",
            postgresql_where=text(f"status = '{JobStatus.RUNNING}'"),
        ),
        Index("jobs_finished_at", "finished_at", postgresql_where=text("finished_at IS NOT NULL")),
        Index(
            "jobs_artifacts_unexpired",
            "finished_at",
            postgresql_where=text("finished_at IS NOT NULL AND artifacts_expired_at IS NULL"),
        ),
        Index(
            "jobs_queue_waiting",
            "queue",
            "created_at",
            postgresql_where=text(f"status IN ({_sql_list(s for s in JobStatus if s in WAITING)})"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(100))
    #: The arq queue the job is enqueued on (Settings.queue_name of the API that took it).
    queue: Mapped[str] = mapped_column(String(200), server_default=text("'videoq:queue'"))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    stage: Mapped[str | None] = mapped_column(String(32))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    priority: Mapped[str] = mapped_column(String(8), default="normal")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_retries: Mapped[int] = mapped_column(Integer)
    brief: Mapped[dict[str, Any]] = mapped_column(Json)
    options: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    #: A digest of the request the key first came with: the same key with another body is refused.
    idempotency_fingerprint: Mapped[str | None] = mapped_column(String(64))
    run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    worker_id: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[dict[str, Any] | None] = mapped_column(Json)
    result: Mapped[dict[str, Any] | None] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Last sign of life of the running attempt's worker; stale means the worker died.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: One entry per finished attempt: attempt, worker_id, started_at, finished_at, outcome, error.
    history: Mapped[list[dict[str, Any]]] = mapped_column(
        Json, default=list, server_default=text("'[]'::jsonb")
    )
    #: When the artifact store's files of this finished job were deleted (artifact_ttl_days).
    artifacts_expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Attempts made before the last manual retry: each retry gets a fresh ``max_retries``.
    retry_base: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    #: The ``eta_s`` the job was given when it was created: its error is measured at the end.
    eta_at_submit_s: Mapped[float | None] = mapped_column(Float)
    #: What the job was expected to cost when it was submitted (USD).
    cost_estimate_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 6))
    #: When the finished video's embedding was stored (or given up on): the feed's backlog is
    #: the succeeded jobs without one.
    embedded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The W3C ``traceparent`` of the request that created the job (None: untraced): every
    #: attempt's spans join that trace (videoq.tracing).
    traceparent: Mapped[str | None] = mapped_column(String(100))
    #: The video's version: 1, raised by each per-scene re-render (``POST
    #: /v1/jobs/{id}/scenes/{index}/rerender``); every earlier version stays downloadable.
    version: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    #: What each re-render asked for, oldest first: ``version``, ``scene``, ``changed`` (the
    #: fields), ``prompt`` / ``narration`` (the new text), ``requested_at``.
    versions: Mapped[list[dict[str, Any]]] = mapped_column(
        Json, default=list, server_default=text("'[]'::jsonb")
    )


class Tenant(Base):
    """A tenant an admin configured (``PUT /v1/tenants/{tenant}``): its weight against other
    tenants in the workers' fair order, and how many of its jobs may run at once (None: no
    limit). Tenants without a row have weight 1 and no limit."""

    __tablename__ = "tenants"
    __table_args__ = (
        CheckConstraint("weight > 0", name="tenants_weight_positive"),
        CheckConstraint("max_running IS NULL OR max_running >= 0", name="tenants_max_running"),
    )

    tenant: Mapped[str] = mapped_column(String(100), primary_key=True)
    weight: Mapped[float] = mapped_column(Float, default=1.0, server_default=text("1"))
    max_running: Mapped[int | None] = mapped_column(Integer)
    daily_budget_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 6))
    monthly_budget_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 6))
    reject_when_over_budget: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=text("false")
    )
    updated_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class Schedule(Base):
    """A recurring job (``POST /v1/schedules``): the body of a ``POST /v1/jobs`` each tick of
    ``cron`` in ``timezone`` submits. ``next_run_at`` is the next tick; the ticker that fires
    it moves it on (:mod:`videoq.store.schedules`)."""

    __tablename__ = "schedules"
    __table_args__ = (
        Index("schedules_due", "queue", "next_run_at"),
        Index("schedules_tenant_created", "tenant", text("created_at DESC"), text("id DESC")),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(100))
    #: The arq queue of the API that took it: only that queue's workers fire it.
    queue: Mapped[str] = mapped_column(String(200))
    name: Mapped[str | None] = mapped_column(String(200))
    cron: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64))
    #: The job each tick submits: a ``POST /v1/jobs`` body as validated.
    job: Mapped[dict[str, Any]] = mapped_column(Json)
    next_run_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: The tick of the last job it submitted, and that job.
    last_tick_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_job_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="SET NULL")
    )
    #: Ticks that submitted no job: missed while no worker ran, or refused (last_error says why).
    skipped_ticks: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Purchase(Base):
    """One paid call of a job (its ``key``: ``script_gen``, ``voice_gen``, ``video_gen:3``),
    whatever the attempt that makes it: its cost reserved against the tenant's budget before
    the call, settled with the actual cost after, or released when the call bought nothing."""

    __tablename__ = "purchases"
    __table_args__ = (
        CheckConstraint(
            "state IN ('reserved', 'settled', 'released')", name="purchases_state_valid"
        ),
        Index("purchases_tenant_created", "tenant", "created_at"),
    )

    job_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100))
    stage: Mapped[str] = mapped_column(String(32))
    provider: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), default="reserved")
    reserved_usd: Mapped[Decimal] = mapped_column(Numeric(14, 6))
    actual_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 6))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    settled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class StageCheckpoint(Base):
    """A completed stage's outputs: what a resumed job reuses instead of paying again."""

    __tablename__ = "job_stages"

    job_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    stage: Mapped[str] = mapped_column(String(32), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer)
    output: Mapped[dict[str, Any]] = mapped_column(Json)
    completed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class WebhookSecret(Base):
    """A tenant's signing secret for outbound webhooks (``whsec_…``, Standard Webhooks)."""

    __tablename__ = "webhook_secrets"

    tenant: Mapped[str] = mapped_column(String(100), primary_key=True)
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookDelivery(Base):
    """One outbound webhook (a job reached a terminal state) and where its delivery stands."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'delivered', 'failed')", name="webhook_deliveries_status_valid"
        ),
        Index(
            "webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    tenant: Mapped[str] = mapped_column(String(100))
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(Json)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookAttempt(Base):
    """One HTTP attempt at a delivery: when, how long, and what came back."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


class InboundWebhook(Base):
    """A verified inbound webhook, by its sender's delivery id: a replay finds it here."""

    __tablename__ = "inbound_webhooks"

    source: Mapped[str] = mapped_column(String(16), primary_key=True)
    delivery_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    subject: Mapped[str | None] = mapped_column(String(200))
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class JobEvent(Base):
    """A job's events, archived as they are published; ``tenant`` and ``tenant_seq`` (the
    event's number in its tenant's feed) let the tenant feed replay what Redis lost."""

    __tablename__ = "job_events"
    __table_args__ = (
        Index(
            "job_events_tenant_seq",
            "tenant",
            "tenant_seq",
            postgresql_where=text("tenant_seq IS NOT NULL"),
        ),
    )

    job_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    event: Mapped[dict[str, Any]] = mapped_column(Json)
    tenant: Mapped[str | None] = mapped_column(String(100))
    tenant_seq: Mapped[int | None] = mapped_column(Integer)


class Interaction(Base):
    """One end user's interaction with a finished video of the tenant (``POST
    /v1/interactions``)."""

    __tablename__ = "interactions"
    __table_args__ = (
        Index("interactions_user", "tenant", "user_id", "video_id"),
        Index(
            "interactions_idempotency",
            "tenant",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100))
    user_id: Mapped[str] = mapped_column(String(200))
    video_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(8))
    watched_s: Mapped[float | None] = mapped_column(Float)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    #: A digest of the request the key first came with: the same key with another body is refused.
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class VideoEmbedding(Base):
    """A finished video's embedding (of its brief and script), by the model that made it."""

    __tablename__ = "video_embeddings"

    job_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    tenant: Mapped[str] = mapped_column(String(100))
    model: Mapped[str] = mapped_column(String(200))
    embedding: Mapped[Any] = mapped_column(VECTOR(DIMENSIONS))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class FeedUser(Base):
    """An end user of a tenant as the feed knows them: interactions counted (``pending``: since
    the preference was last computed), the preference vector, and a worker's claim on a refill
    in progress."""

    __tablename__ = "feed_users"

    tenant: Mapped[str] = mapped_column(String(100), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    interactions: Mapped[int] = mapped_column(Integer, default=0)
    pending: Mapped[int] = mapped_column(Integer, default=0)
    preference: Mapped[Any | None] = mapped_column(VECTOR(DIMENSIONS))
    model: Mapped[str | None] = mapped_column(String(200))
    preference_updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    refilled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class FeedBrief(Base):
    """A brief written for one user, once (``fingerprint``), and the job made of it."""

    __tablename__ = "feed_briefs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(100))
    user_id: Mapped[str] = mapped_column(String(200))
    fingerprint: Mapped[str] = mapped_column(String(64))
    brief: Mapped[dict[str, Any]] = mapped_column(Json)
    similarity: Mapped[float | None] = mapped_column(Float)
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class FeedItem(Base):
    """One video in a user's feed: an ``existing_video`` that matched the preference, or a
    ``generated_video`` made for it (``announced_at``: when its being ready was announced)."""

    __tablename__ = "feed_items"

    tenant: Mapped[str] = mapped_column(String(100), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    similarity: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    announced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
