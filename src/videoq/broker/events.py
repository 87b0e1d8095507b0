"""Job events in Redis: numbered per job, kept in a capped Redis Stream for replay, and
published on pub/sub for live delivery (DESIGN.md "Events").

One Lua script numbers, stores and publishes each event, so ``seq`` order, stream order and
pub/sub order are the same and a reconnecting client can resume from any ``seq``. What Redis no
longer holds (capped, expired, lost in a restart) comes from an :class:`Archive`: PostgreSQL's
copy (:class:`videoq.store.events.EventArchive`), injected by the caller.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from videoq.broker import keys
from videoq.broker.scripts import LuaScript
from videoq.groupcommit import GroupCommit
from videoq.types import StoredEvent

log = structlog.get_logger(__name__)

STREAM_MAXLEN = 2000
TTL_S = 7 * 24 * 3600


class Archive(Protocol):
    """Where a job's events outlive Redis (:class:`videoq.store.events.EventArchive`)."""

    async def last_seq(self, job_id: str) -> int:
        """The highest archived ``seq`` of the job (0 when none)."""
        ...

    async def between(
        self, job_id: str, after: int, before: int | None = None, upto: int | None = None
    ) -> list[dict[str, Any]]:
        """Archived events with ``after < seq``, ``seq < before`` and ``seq <= upto``."""
        ...


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


async def publish_many(redis: Redis, items: list[tuple[str, dict[str, Any]]]) -> list[int | None]:
    """Number, store and publish ``(tenant, event)`` pairs, in order, in one round trip;
    returns their ``seq``, None for an event Redis refused (logged; the others go on)."""
    names: list[str] = []
    args = [str(STREAM_MAXLEN), str(TTL_S)]
    for tenant, event in items:
        job_id = event["job_id"]
        names += (keys.seq(job_id), keys.stream(job_id), keys.job_channel(job_id),
                  keys.tenant_channel(tenant))  # fmt: skip
        args.append(json.dumps({k: v for k, v in event.items() if k != "seq"}))
    seqs: list[int | None] = []
    for (_, event), seq in zip(items, await _PUBLISH(redis, names, args), strict=True):
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
    redis: Redis, tenant: str, event: dict[str, Any], *, archive: Archive
) -> None:
    """:func:`publish` after :func:`restore_seq`, logging instead of raising: events are best
    effort, PostgreSQL holds the state. ``archive`` errors (PostgreSQL down) are the caller's
    to expect: they are logged too."""
    try:
        await restore_seq(redis, archive, event["job_id"])
        await publish(redis, tenant, event)
    except Exception as exc:  # Redis or the archive's store: neither may fail the transition
        log.warning("event_publish_failed", job_id=event["job_id"], error=str(exc))


async def last_seq(redis: Redis, job_id: str) -> int:
    value = await redis.get(keys.seq(job_id))
    return int(value) if value else 0


async def replay(
    redis: Redis, job_id: str, after: int, upto: int | None = None
) -> list[dict[str, Any]]:
    """The stored events with ``after < seq <= upto``, in order."""
    entries = await redis.xrange(
        keys.stream(job_id), f"{after + 1}-0", f"{upto}-0" if upto else "+"
    )
    return [json.loads(fields[b"e"]) for _, fields in entries]


async def archive(
    redis: Redis, store: Callable[[list[StoredEvent]], Awaitable[Any]], job_ids: Sequence[str]
) -> None:
    """Copy the jobs' streams into PostgreSQL (``job_events``) with ``store``
    (:func:`videoq.store.events.store_events`, or a worker's grouped writes), so their
    history outlives Redis: one round trip to read them all, one to store. Called when an
    attempt ends; idempotent. The events' text goes as it is, never parsed: each entry's id is
    its seq."""
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.xrange(keys.stream(job_id))
        streams = await pipe.execute()
    stored = [
        (job_id, int(id_.split(b"-")[0]), fields[b"e"].decode())
        for job_id, entries in zip(job_ids, streams, strict=True)
        for id_, fields in entries
    ]
    if stored:
        await store(stored)


async def history(
    redis: Redis, archive: Archive, job_id: str, after: int, upto: int | None = None
) -> list[dict[str, Any]]:
    """Events with ``after < seq <= upto``: from the Redis stream, or from the archive for the
    part Redis no longer holds (capped, expired, or lost in a restart)."""
    live = await replay(redis, job_id, after, upto)
    if live and live[0]["seq"] == after + 1:
        return live
    if live:
        return await archive.between(job_id, after, before=live[0]["seq"]) + live
    return await archive.between(job_id, after, upto=upto)


async def current_seq(redis: Redis, archive: Archive, job_id: str) -> int:
    """The job's latest ``seq``: Redis's counter, or the archive's when Redis lost it."""
    seq = await last_seq(redis, job_id)
    return seq or await archive.last_seq(job_id)


async def restore_seq(redis: Redis, archive: Archive, job_id: str) -> None:
    """After Redis lost a job's counter, continue numbering after its archived history."""
    if await redis.exists(keys.seq(job_id)):
        return
    seq = await archive.last_seq(job_id)
    if seq:
        await redis.set(keys.seq(job_id), seq, ex=TTL_S, nx=True)
