"""Job events: numbered per job, kept in a capped Redis Stream for replay, and published on
pub/sub for live delivery (DESIGN.md "Events").

One Lua script numbers, stores and publishes each event, so ``seq`` order, stream order and
pub/sub order are the same and a reconnecting client can resume from any ``seq``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError, ResponseError
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from videoq.batching import GroupCommit
from videoq.db import JobEvent
from videoq.queue import LuaScript

log = structlog.get_logger(__name__)

STREAM_MAXLEN = 2000
TTL_S = 7 * 24 * 3600


def job_channel(job_id: str) -> str:
    return f"videoq:events:job:{job_id}"


def tenant_channel(tenant: str) -> str:
    return f"videoq:events:tenant:{tenant}"


def _seq_key(job_id: str) -> str:
    return f"videoq:seq:{job_id}"


def _stream_key(job_id: str) -> str:
    return f"videoq:stream:{job_id}"


#: Number, store and publish events, in order, in one call: event i (from 0) has the keys
#: KEYS[4i+1..4i+4] (seq counter, stream, job channel, tenant channel) and its JSON object,
#: without ``seq``, in ARGV[i+3]; ARGV[1] is the stream's cap and ARGV[2] the keys' TTL. The
#: seq goes in front of the object's other fields. A counter that fell behind its stream
#: (Redis lost the counter and kept the stream) catches up with the stream's last entry.
#: Returns each event's seq, or the error that kept it out (a key of the wrong type, say):
#: that event's number is given back, so a job's numbers keep no gap, and the batch's other
#: events go on.
_PUBLISH = LuaScript("""
local function add(k, body)
  local seq = redis.pcall('INCR', KEYS[k + 1])
  if type(seq) == 'table' then return nil, seq.err end
  local data = '{"seq":' .. seq .. ',' .. body
  local added = redis.pcall('XADD', KEYS[k + 2], 'MAXLEN', '~', ARGV[1], seq .. '-0',
                            'e', data)
  if type(added) == 'table' then
    if seq == 1 then redis.call('DEL', KEYS[k + 1]) else redis.call('DECR', KEYS[k + 1]) end
    return nil, added.err
  end
  return seq, data
end
local out = {}
for i = 3, #ARGV do
  local k = (i - 3) * 4
  local body = string.sub(ARGV[i], 2)
  local seq, data = add(k, body)
  if seq == nil then
    local last = redis.pcall('XREVRANGE', KEYS[k + 2], '+', '-', 'COUNT', 1)
    if type(last) == 'table' and last[1] then
      redis.call('SET', KEYS[k + 1], string.match(last[1][1], '^%d+'))
      seq, data = add(k, body)
    end
  end
  if seq == nil then
    out[#out + 1] = data
  else
    redis.call('EXPIRE', KEYS[k + 1], ARGV[2])
    redis.call('EXPIRE', KEYS[k + 2], ARGV[2])
    redis.call('PUBLISH', KEYS[k + 3], data)
    redis.call('PUBLISH', KEYS[k + 4], data)
    out[#out + 1] = seq
  end
end
return out
""")


def make_event(
    job_id: str,
    type_: str,
    *,
    status: str,
    stage: str | None,
    progress: float,
    worker_id: str | None = None,
    message: str | None = None,
    seq: int | None = None,
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "seq": seq,
        "type": type_,
        "status": status,
        "stage": stage,
        "progress": round(progress, 2),
        "worker_id": worker_id,
        "ts": datetime.now(UTC).isoformat(),
        "message": message,
    }


async def publish_many(redis: Redis, items: list[tuple[str, dict[str, Any]]]) -> list[int | None]:
    """Number, store and publish ``(tenant, event)`` pairs, in order, in one round trip;
    returns their ``seq``, None for an event Redis refused (logged; the others go on)."""
    keys: list[str] = []
    args = [str(STREAM_MAXLEN), str(TTL_S)]
    for tenant, event in items:
        job_id = event["job_id"]
        keys += (_seq_key(job_id), _stream_key(job_id), job_channel(job_id), tenant_channel(tenant))
        args.append(json.dumps({k: v for k, v in event.items() if k != "seq"}))
    seqs: list[int | None] = []
    for (_, event), seq in zip(items, await _PUBLISH(redis, keys, args), strict=True):
        if isinstance(seq, int):
            seqs.append(seq)
        else:
            log.warning("event_refused", job_id=event["job_id"], error=seq.decode(errors="replace"))
            seqs.append(None)
    return seqs


async def publish(redis: Redis, tenant: str, event: dict[str, Any]) -> int:
    """Number, store and publish ``event``; returns its ``seq``."""
    seq = (await publish_many(redis, [(tenant, event)]))[0]
    if seq is None:
        raise ResponseError(f"event of job {event['job_id']} refused by Redis")
    return seq


class Publisher:
    """:func:`publish` for a worker's many jobs, without waiting: events published while a
    batch is in flight go together in the next, one script call and one round trip. Batches go
    out in order, so each job's events keep theirs; await an event's future to know it (and
    every event before it) went out. Best effort: the future's result is None when Redis could
    not take it (logged)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._group = GroupCommit(self._publish)

    async def _publish(self, items: list[tuple[str, dict[str, Any]]]) -> list[int | None]:
        try:
            return list(await publish_many(self.redis, items))
        except (RedisError, OSError) as exc:
            log.warning("event_publish_failed", events=len(items), error=str(exc))
            return [None] * len(items)

    def __call__(self, tenant: str, event: dict[str, Any]) -> asyncio.Future[int | None]:
        return self._group.submit((tenant, event))

    async def aclose(self) -> None:
        await self._group.aclose()


async def publish_best_effort(
    redis: Redis, tenant: str, event: dict[str, Any], *, restore_from: Any = None
) -> None:
    """:func:`publish`, logging instead of raising: progress is best effort, PostgreSQL holds
    the state. With ``restore_from`` (a sessionmaker), a seq counter Redis lost is first
    restored from the archived history."""
    try:
        if restore_from is not None:
            await restore_seq(redis, restore_from, event["job_id"])
        await publish(redis, tenant, event)
    except (RedisError, OSError, SQLAlchemyError) as exc:
        log.warning("event_publish_failed", job_id=event["job_id"], error=str(exc))


async def last_seq(redis: Redis, job_id: str) -> int:
    value = await redis.get(_seq_key(job_id))
    return int(value) if value else 0


async def replay(
    redis: Redis, job_id: str, after: int, upto: int | None = None
) -> list[dict[str, Any]]:
    """The stored events with ``after < seq <= upto``, in order."""
    entries = await redis.xrange(
        _stream_key(job_id), f"{after + 1}-0", f"{upto}-0" if upto else "+"
    )
    return [json.loads(fields[b"e"]) for _, fields in entries]


async def _archived_seq(session: Any, job_id: uuid.UUID) -> int:
    """The highest ``seq`` of the job kept in PostgreSQL (0 when none)."""
    result = await session.execute(select(func.max(JobEvent.seq)).where(JobEvent.job_id == job_id))
    return int(result.scalar() or 0)


#: An event as kept in PostgreSQL: job id, seq, and its JSON text as Redis holds it.
StoredEvent = tuple[str, int, str]


async def archive(
    redis: Redis, store: Callable[[list[StoredEvent]], Awaitable[Any]], job_ids: Sequence[str]
) -> None:
    """Copy the jobs' streams into PostgreSQL (``job_events``) with ``store``
    (:func:`videoq.bookkeeping.store_events`, or a worker's :class:`Bookkeeper`), so their
    history outlives Redis: one round trip to read them all, one to store. Called when an
    attempt ends; idempotent. The events' text goes as it is, never parsed: each entry's id is
    its seq."""
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.xrange(_stream_key(job_id))
        streams = await pipe.execute()
    stored = [
        (job_id, int(id_.split(b"-")[0]), fields[b"e"].decode())
        for job_id, entries in zip(job_ids, streams, strict=True)
        for id_, fields in entries
    ]
    if stored:
        await store(stored)


async def history(
    redis: Redis, sessions: Any, job_id: str, after: int, upto: int | None = None
) -> list[dict[str, Any]]:
    """Events with ``after < seq <= upto``: from the Redis stream, or from PostgreSQL for the
    part Redis no longer holds (capped, expired, or lost in a restart)."""
    live = await replay(redis, job_id, after, upto)
    if live and live[0]["seq"] == after + 1:
        return live
    first_live = live[0]["seq"] if live else None
    query = select(JobEvent.event).where(JobEvent.job_id == uuid.UUID(job_id), JobEvent.seq > after)
    if first_live is not None:
        query = query.where(JobEvent.seq < first_live)
    elif upto is not None:
        query = query.where(JobEvent.seq <= upto)
    async with sessions() as session:
        stored = list((await session.execute(query.order_by(JobEvent.seq))).scalars())
    return stored + live


async def current_seq(redis: Redis, sessions: Any, job_id: str) -> int:
    """The job's latest ``seq``: Redis's counter, or PostgreSQL's history when Redis lost it."""
    seq = await last_seq(redis, job_id)
    if seq:
        return seq
    async with sessions() as session:
        return await _archived_seq(session, uuid.UUID(job_id))


async def restore_seq(redis: Redis, sessions: Any, job_id: str) -> None:
    """After Redis lost a job's counter, continue numbering after its archived history."""
    if await redis.exists(_seq_key(job_id)):
        return
    seq = await current_seq(redis, sessions, job_id)
    if seq:
        await redis.set(_seq_key(job_id), seq, ex=TTL_S, nx=True)


class Broadcaster:
    """One pub/sub connection per process, fanned out to any number of local subscribers.

    Each subscriber gets a bounded queue; one that falls behind is told so (``None`` in its queue)
    and dropped, so a slow client never slows the others or the publisher.
    """

    def __init__(self, redis: Redis, *, queue_size: int = 1000) -> None:
        self._redis = redis
        self._queue_size = queue_size
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._subscribers: dict[str, set[asyncio.Queue[dict[str, Any] | None]]] = {}
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Broadcaster:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[asyncio.Queue[dict[str, Any] | None]]:
        """A queue receiving every message published on ``channel`` from now on."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(self._queue_size)
        async with self._lock:
            if self._pubsub is None:
                self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            if channel not in self._subscribers:
                await self._pubsub.subscribe(channel)  # first: a failure leaves no deaf entry
                self._subscribers[channel] = set()
            self._subscribers[channel].add(queue)
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read(), name="broadcaster")
        try:
            yield queue
        finally:
            async with self._lock:
                subs = self._subscribers.get(channel)
                if subs is not None:
                    subs.discard(queue)
                    if not subs:
                        del self._subscribers[channel]
                        with contextlib.suppress(Exception):
                            await self._pubsub.unsubscribe(channel)

    async def _read(self) -> None:
        assert self._pubsub is not None
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a Redis hiccup must not kill fan-out for good
                log.warning("broadcast_read_failed", error=str(exc))
                await asyncio.sleep(0.5)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"].decode()
            try:
                event = json.loads(message["data"])
            except ValueError:
                log.warning("broadcast_message_invalid", channel=channel)
                continue
            for queue in list(self._subscribers.get(channel, ())):
                try:
                    queue.put_nowait(event)
                except asyncio.QueueFull:
                    self._subscribers[channel].discard(queue)
                    with contextlib.suppress(asyncio.QueueEmpty):
                        queue.get_nowait()
                    queue.put_nowait(None)
