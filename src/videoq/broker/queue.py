"""The arq queue, as the API and the workers share it: Redis settings, JSON (never pickle)
serialization, enqueueing with priorities, removal, cancel signals and wake-ups.

Priorities are score offsets on arq's queue (the approach arq's maintainer suggests): a job that
is ready now is queued as if it had been enqueued ``-offset`` seconds ago, so a ``high`` job
overtakes ``normal`` jobs queued in the last 5 minutes and ``low`` jobs queued in the last 10,
and a ``low`` job waits at most 10 minutes behind fresh ``high`` work: nothing starves.
Every job is also indexed under its tenant (:mod:`videoq.broker.shares`), whose fair order
``videoq worker`` takes jobs in.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog
from arq import ArqRedis
from arq.connections import RedisSettings
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, RedisError, TimeoutError

from videoq.broker import keys, shares
from videoq.broker.scripts import LuaScript
from videoq.settings import Settings

log = structlog.get_logger(__name__)

PRIORITY_OFFSET_S = {"high": -600.0, "normal": -300.0, "low": 0.0}


class QueuedJob(Protocol):
    """What the queue needs of a job (a :class:`videoq.store.Job` row is one)."""

    @property
    def id(self) -> Any: ...
    @property
    def tenant(self) -> str: ...
    @property
    def priority(self) -> str: ...
    @property
    def run_at(self) -> datetime | None: ...


def arq_timeout_s(settings: Settings) -> float:
    """arq's own job timeout: past ours (``job_timeout_s``), so our accounting always fires
    first."""
    return settings.job_timeout_s + 60


_CLEAR_IF_OLD = LuaScript("""
local cleared = {}
for _, key in ipairs(KEYS) do
  local left = redis.call('PTTL', key)
  if left > 0 and left <= tonumber(ARGV[1]) then
    redis.call('DEL', key)
    cleared[#cleared + 1] = key
  end
end
return cleared
""")


async def clear_stale_in_progress(
    redis: Redis, settings: Settings, job_ids: Sequence[str]
) -> set[str]:
    """Delete the arq in-progress keys of ``job_ids`` that a worker set more than
    ``worker_stale_s`` ago; returns those jobs. Each key is checked and deleted in one step, so
    a key another worker sets meanwhile stays."""
    if not job_ids:
        return set()
    most_left_ms = int((arq_timeout_s(settings) + 10 - settings.worker_stale_s) * 1000)
    names = [keys.in_progress(job_id) for job_id in job_ids]
    cleared = await _CLEAR_IF_OLD(redis, names, [most_left_ms])
    return {key.decode().removeprefix(keys.in_progress_key_prefix) for key in cleared}


def redis_settings(settings: Settings, *, retries: int = 10) -> RedisSettings:
    """arq's Redis settings. Workers' commands retry with backoff for about 30 s on connection
    errors, so a restarting Redis does not take them down; the API uses few retries so that it
    answers (degraded) at once while Redis is away."""
    if not settings.redis_url:
        raise ValueError("redis_url is not set")
    rs = RedisSettings.from_dsn(settings.redis_url)
    rs.retry_on_error = [ConnectionError, TimeoutError, OSError]
    rs.retry = Retry(ExponentialBackoff(cap=4.0, base=0.1), retries=retries)
    rs.conn_retries = retries
    rs.conn_timeout = 2
    return rs


def _dumps(obj: Any) -> bytes:
    # arq stores exceptions in failed results; str() keeps them readable without pickle.
    return json.dumps(obj, default=str).encode()


def _loads(data: bytes) -> Any:
    return json.loads(data)


def serializers() -> dict[str, Any]:
    """arq's serializer hooks: JSON both ways, so nothing in Redis can execute code."""
    return {"job_serializer": _dumps, "job_deserializer": _loads}


def score_time(priority: str, run_at: datetime | None) -> datetime:
    """When arq should consider the job due (its ZSET score), priority included."""
    now = datetime.now(UTC)
    if run_at is not None and run_at > now:
        return run_at  # scheduled: starts on time, never early
    return now + timedelta(seconds=PRIORITY_OFFSET_S.get(priority, 0.0))


async def enqueue_job(redis: ArqRedis, settings: Settings, job: QueuedJob) -> bool:
    """Put the job on the arq queue, its priority and schedule in the score, and index it under
    its tenant; False when it was already there (arq dedupes by job id)."""
    job_id = str(job.id)
    queued = await redis.enqueue_job(
        keys.TASK,
        job_id,
        _job_id=job_id,
        _queue_name=settings.queue_name,
        _defer_until=score_time(job.priority, job.run_at),
    )
    await shares.index(redis, settings.queue_name, [(job_id, job.tenant)])
    return queued is not None


async def announce_created(redis: ArqRedis, settings: Settings, job: QueuedJob) -> None:
    """Enqueue a job just written to PostgreSQL and wake idle workers. If Redis is unreachable
    the row stays ``queued``/``scheduled`` and the workers' reconciler enqueues it later:
    nothing is lost."""
    try:
        await enqueue_job(redis, settings, job)
        if job.run_at is None:
            await redis.publish(keys.wake_channel(settings.queue_name), b"1")
    except (RedisError, OSError) as exc:
        log.warning("job_enqueue_deferred", job_id=str(job.id), error=str(exc))


async def remove(redis: ArqRedis, settings: Settings, job_id: str) -> None:
    """Take a job that is not running off the queue, so a later retry can enqueue it afresh."""
    await shares.remove(redis, settings.queue_name, job_id)


async def release_orphan(redis: ArqRedis, settings: Settings, job: QueuedJob) -> None:
    """Let arq start a job whose worker died now, not when arq's in-progress key expires
    (the job timeout plus 10 s), and wake idle workers to take it over at once."""
    job_id = str(job.id)
    await shares.release(redis, settings.queue_name, job_id)
    if not await enqueue_job(redis, settings, job):
        # The job's arq entry survived; make sure it is in the queue, due, and indexed.
        await redis.zadd(settings.queue_name, {job_id: time.time() * 1000}, nx=True)
        await shares.index(redis, settings.queue_name, [(job_id, job.tenant)])
    await redis.publish(keys.wake_channel(settings.queue_name), b"1")


async def run_now(redis: ArqRedis, settings: Settings, job_ids: Sequence[str]) -> None:
    """Make jobs deferred on the queue due now (those no longer on it are left be), and wake
    idle workers."""
    if not job_ids:
        return
    now_ms = time.time() * 1000
    await redis.zadd(settings.queue_name, dict.fromkeys(job_ids, now_ms), xx=True)
    await redis.publish(keys.wake_channel(settings.queue_name), b"1")


async def request_cancel(redis: ArqRedis, job_id: str) -> None:
    """Tell whichever worker runs the job to stop it now."""
    await redis.publish(keys.CANCEL_CHANNEL, job_id)


async def length(redis: Redis, queue_name: str) -> int:
    """Entries on the queue: waiting, scheduled, and running (arq keeps those until they end)."""
    return int(await redis.zcard(queue_name))


async def held(redis: Redis, job_ids: Sequence[str]) -> list[bool]:
    """For each job, whether arq holds it (its job data exists), in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.exists(keys.job_data(job_id))
        return [bool(found) for found in await pipe.execute()]


async def take_turn(redis: Redis, lock: str, holder: str, period_s: float) -> bool:
    """Whether ``holder`` does the duty of ``lock`` (a :mod:`~videoq.broker.keys` lock name)
    this period: one worker per period does it, and a dead one's turn passes to the others by
    itself (the lock expires just before the period ends)."""
    period_ms = int(period_s * 1000)
    return bool(await redis.set(lock, holder, nx=True, px=max(period_ms - 50, 1)))
