"""What one worker process holds: its stores and clients, the attempts it runs, and what they
still do after their job's task ends.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from videoq.artifacts import ArtifactStore, open_store
from videoq.broker import events
from videoq.store.events import EventArchive
from videoq.store.grouped import GroupedWriter
from videoq.store.liveness import SessionLock

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

    from videoq.broker import ArqRedis
    from videoq.providers import ProviderPool
    from videoq.providers.embeddings import Embedder
    from videoq.settings import Settings


@dataclass
class RunningJob:
    """An attempt running in this process. ``stop_reason`` is set before its task is cancelled
    on purpose (``cancelled`` by a user, ``lease_lost`` to another worker)."""

    task: asyncio.Task[Any]
    attempt: int
    stop_reason: str | None = None


@dataclass
class WorkerState:
    """What one worker process opens at startup and every job shares."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[Any]
    redis: ArqRedis
    worker_id: str
    started_at: float = field(default_factory=time.time)
    running: dict[uuid.UUID, RunningJob] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    background: list[asyncio.Task[None]] = field(default_factory=list)
    #: What finished attempts still do after their job's task ends (recording a success);
    #: waited for at shutdown.
    wrapping_up: set[asyncio.Task[None]] = field(default_factory=set)
    #: Set to make the worker poll now (VideoqWorker); None under the plain arq CLI.
    wake: asyncio.Event | None = None
    #: Set once the worker listens for cancel signals and wake-ups.
    listening: asyncio.Event = field(default_factory=asyncio.Event)
    #: False while the scratch disk is nearly full: the worker takes no new jobs.
    accepting: bool = True
    #: Free bytes of the scratch disk at the last heartbeat.
    scratch_free_bytes: int | None = None
    #: Tenants' weights (those not 1), refreshed with each heartbeat: their shares of this
    #: process's FFmpeg slots and provider calls (:mod:`videoq.fair`).
    weights: dict[str, float] = field(default_factory=dict)
    #: Recent stage durations by stage key (:mod:`videoq.eta`), refreshed with each heartbeat.
    durations: dict[str, float] = field(default_factory=dict)
    #: Stage durations and ETA errors measured since the last heartbeat, which sends them.
    stage_times: list[tuple[str, float]] = field(default_factory=list)
    #: When this worker's last compositing ended (monotonic; None: none yet).
    composited_at: float | None = None
    eta_errors: list[float] = field(default_factory=list)
    #: Live provider clients, opened once per process and shared by its jobs.
    providers: ProviderPool | None = None
    #: What embeds finished videos for the feed (:mod:`videoq.feed`), opened at startup.
    embedder: Embedder | None = None
    #: Where jobs' files outlive this worker's scratch (``settings.storage_url``).
    artifacts: ArtifactStore = field(init=False)
    #: The worker's grouped writes to PostgreSQL (claims, checkpoints, progress, events).
    books: GroupedWriter = field(init=False)
    #: Held while the worker lives: others see it dead the moment PostgreSQL lets go of it.
    lock: SessionLock = field(init=False)
    #: The worker's grouped event publishing; what Redis took is archived in PostgreSQL
    #: (``books``).
    publish: events.Publisher = field(init=False)

    def __post_init__(self) -> None:
        self.artifacts = open_store(self.settings)
        self.books = GroupedWriter(self.settings.database_url or "", self.worker_id)
        self.lock = SessionLock(self.settings.database_url or "", self.worker_id)
        self.publish = events.Publisher(
            self.redis,
            keep=self.books.keep_events,
            tenant_floor=EventArchive(self.sessions).tenant_last_seq,
        )

    def wrap_up(self, work: Awaitable[None]) -> asyncio.Future[None]:
        task = asyncio.ensure_future(work)
        self.wrapping_up.add(task)
        task.add_done_callback(self.wrapping_up.discard)
        return task

    def stop(self, job_id: uuid.UUID, reason: str, attempt: int | None = None) -> bool:
        """Cancel a running attempt on purpose (only ``attempt``, when given); False if it does
        not run here."""
        running = self.running.get(job_id)
        if running is None or running.stop_reason is not None:
            return False
        if attempt is not None and running.attempt != attempt:
            return False
        running.stop_reason = reason
        running.task.cancel()
        return True
