"""PostgreSQL, the record of truth: tables, the async engine, and the migration check.

The schema is owned by Alembic (``migrations/``); these models describe it for queries.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from videoq.errors import NotMigrated

STATUSES = ("queued", "scheduled", "running", "retrying", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
Json = JSON().with_variant(JSONB(), "postgresql")


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


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'scheduled', 'running', 'retrying', "
            "'succeeded', 'failed', 'cancelled')",
            name="jobs_status_valid",
        ),
        CheckConstraint("progress >= 0 AND progress <= 100", name="jobs_progress_range"),
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
            postgresql_where=text("status = 'running'"),
        ),
        Index("jobs_finished_at", "finished_at", postgresql_where=text("finished_at IS NOT NULL")),
        Index(
            "jobs_queue_waiting",
            "queue",
            "created_at",
            postgresql_where=text("status IN ('queued', 'scheduled', 'retrying')"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(100))
    #: The arq queue the job is enqueued on (Settings.queue_name of the API that took it).
    queue: Mapped[str] = mapped_column(String(200), server_default=text("'videoq:queue'"))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    stage: Mapped[str | None] = mapped_column(String(32))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    priority: Mapped[str] = mapped_column(String(8), default="normal")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_retries: Mapped[int] = mapped_column(Integer)
    brief: Mapped[dict[str, Any]] = mapped_column(Json)
    options: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
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
    #: Attempts made before the last manual retry: each retry gets a fresh ``max_retries``.
    retry_base: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


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
    """A job's events, archived from its Redis stream at the end of every attempt."""

    __tablename__ = "job_events"

    job_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    event: Mapped[dict[str, Any]] = mapped_column(Json)


def async_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs (as pgserver and most hosts print them)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def driver_dsn(url: str) -> str:
    """The URL as asyncpg takes it (``postgresql://``), for code that talks to asyncpg directly."""
    return make_url(async_url(url)).set(drivername="postgresql").render_as_string(False)


#: What a database call raises when PostgreSQL fails or is out of reach, through SQLAlchemy or
#: through asyncpg directly (the worker's bookkeeping).
DATABASE_ERRORS = (SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """The async engine; connections are pinged before use unless ``pool_pre_ping=False``."""
    return create_async_engine(async_url(url), **{"pool_pre_ping": True, **kwargs})


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return async_sessionmaker(engine, expire_on_commit=False)


MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", async_url(url).replace("%", "%%"))
    return cfg


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("postgresql://")).get_current_head()


def migrate(url: str, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` (blocking; runs its own event loop inside Alembic)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


async def check_migrated(engine: AsyncEngine) -> None:
    """Raise :class:`NotMigrated` unless the database is at the code's head revision."""
    head = head_revision()
    async with engine.connect() as conn:
        exists = (await conn.execute(text("SELECT to_regclass('alembic_version')"))).scalar()
        current = (
            (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
            if exists
            else None
        )
    if current != head:
        raise NotMigrated(
            f"the database is not migrated (at {current or 'nothing'}, code needs {head}): "
            "run `videoq migrate`"
        )
