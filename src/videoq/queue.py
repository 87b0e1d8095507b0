"""The arq side shared by the API and the workers: Redis settings, JSON (never pickle)
serialization, enqueueing, and the worker registry."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import structlog
from arq import ArqRedis
from arq.connections import RedisSettings
from redis.exceptions import RedisError

from videoq.db import Job
from videoq.settings import Settings

log = structlog.get_logger(__name__)

TASK = "run_job"
WORKERS_KEY = "videoq:workers"
#: A worker whose heartbeat is older than this is counted as gone.
WORKER_STALE_S = 30.0


def redis_settings(settings: Settings) -> RedisSettings:
    if not settings.redis_url:
        raise ValueError("redis_url is not set")
    return RedisSettings.from_dsn(settings.redis_url)


def _dumps(obj: Any) -> bytes:
    # arq stores exceptions in failed results; str() keeps them readable without pickle.
    return json.dumps(obj, default=str).encode()


def _loads(data: bytes) -> Any:
    return json.loads(data)


def serializers() -> dict[str, Any]:
    """arq's serializer hooks: JSON both ways, so nothing in Redis can execute code."""
    return {"job_serializer": _dumps, "job_deserializer": _loads}


async def enqueue(
    redis: ArqRedis, settings: Settings, job_id: str, *, run_at: datetime | None = None
) -> bool:
    """Put the job on the arq queue; False when it is already there (arq dedupes by job id)."""
    job = await redis.enqueue_job(
        TASK, job_id, _job_id=job_id, _queue_name=settings.queue_name, _defer_until=run_at
    )
    return job is not None


async def announce_created(redis: ArqRedis, settings: Settings, job: Job) -> None:
    """Enqueue a job just written to PostgreSQL. If Redis is unreachable the row stays
    ``queued``/``scheduled`` and the workers' reconciler enqueues it later: nothing is lost."""
    try:
        await enqueue(redis, settings, str(job.id), run_at=job.run_at)
    except (RedisError, OSError) as exc:
        log.warning("job_enqueue_deferred", job_id=str(job.id), error=str(exc))


async def heartbeat(redis: ArqRedis, worker_id: str) -> None:
    await redis.zadd(WORKERS_KEY, {worker_id: time.time()})


async def forget_worker(redis: ArqRedis, worker_id: str) -> None:
    await redis.zrem(WORKERS_KEY, worker_id)


async def count_workers(redis: ArqRedis) -> int:
    return int(await redis.zcount(WORKERS_KEY, time.time() - WORKER_STALE_S, "+inf"))
