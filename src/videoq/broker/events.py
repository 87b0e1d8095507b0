"""Job events in Redis: numbered per job, kept in a capped Redis Stream for replay, and
published on pub/sub for live delivery (DESIGN.md "Events").

One Lua script numbers, stores and publishes each event, so ``seq`` order, stream order and
pub/sub order are the same and a reconnecting client can resume from any ``seq``. What Redis no
longer holds (capped, expired, lost in a restart) comes from an :class:`Archive`: PostgreSQL's
copy (:class:`videoq.store.events.EventArchive`), injected by the caller, which every publisher
writes as it publishes. A seq is never given twice, even by a Redis that restarted empty: each
event carries a floor, the publisher's :class:`LastSeq` (a worker's attempt) or the archive's
last seq (the API), and takes at least that (docs/decisions.md, "Events across a Redis loss").
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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

    async def keep(self, events: list[StoredEvent]) -> None:
        """Archive events just published (ones already archived are skipped)."""
        ...


#: Number, store and publish events, in order, in one call: event i (from 0) has the keys
#: KEYS[4i+1..4i+4] (seq counter, stream, job channel, tenant channel), its floor in
#: ARGV[2i+3] and its JSON object, without ``seq``, in ARGV[2i+4]; ARGV[1] is the stream's cap
#: and ARGV[2] the keys' TTL. An event takes the counter's next number, or its floor if that is
#: higher (Redis lost the counter: restarted empty), and the counter follows it. The seq goes
#: in front of the object's other fields (as :func:`_numbered` writes it too). A counter that
#: fell behind its stream (Redis lost the counter and kept the stream) catches up with the
#: stream's last entry. Returns each event's seq, or the error that kept it out (a key of the
#: wrong type, say): that event's number is given back, so a job's numbers keep no gap, and the
#: batch's other events go on.
_PUBLISH = LuaScript("""
local function add(k, floor, body)
  local seq = redis.pcall('INCR', KEYS[k + 1])
  if type(seq) == 'table' then return nil, seq.err end
  if seq < floor then
    seq = floor
    redis.call('SET', KEYS[k + 1], seq)
  end
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
for i = 0, (#ARGV - 2) / 2 - 1 do
  local k = i * 4
  local floor = tonumber(ARGV[2 * i + 3])
  local body = string.sub(ARGV[2 * i + 4], 2)
  local seq, data = add(k, floor, body)
  if seq == nil then
    local last = redis.pcall('XREVRANGE', KEYS[k + 2], '+', '-', 'COUNT', 1)
    if type(last) == 'table' and last[1] then
      redis.call('SET', KEYS[k + 1], string.match(last[1][1], '^%d+'))
      seq, data = add(k, floor, body)
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

#: An event to publish: ``(tenant, event, floor)``, the floor being the least seq it may take
#: (0: none).
Outgoing = tuple[str, dict[str, Any], int]


def _numbered(seq: int, body: str) -> str:
    """An event's text as the script stores and publishes it: ``seq`` first, then ``body``'s
    fields."""
    return f'{{"seq":{seq},{body[1:]}'


async def publish_many(redis: Redis, items: Sequence[Outgoing]) -> list[StoredEvent | None]:
    """Number (each at least its floor), store and publish events, in order, in one round
    trip; returns each as the archive keeps it, None for an event Redis refused (logged; the
    others go on)."""
    names: list[str] = []
    bodies: list[str] = []
    args = [str(STREAM_MAXLEN), str(TTL_S)]
    for tenant, event, floor in items:
        job_id = event["job_id"]
        names += (keys.seq(job_id), keys.stream(job_id), keys.job_channel(job_id),
                  keys.tenant_channel(tenant))  # fmt: skip
        bodies.append(json.dumps({k: v for k, v in event.items() if k != "seq"}))
        args += (str(floor), bodies[-1])
    stored: list[StoredEvent | None] = []
    replies = await _PUBLISH(redis, names, args)
    for (_, event, _), body, seq in zip(items, bodies, replies, strict=True):
        if isinstance(seq, int):
            stored.append((event["job_id"], seq, _numbered(seq, body)))
        else:
            log.warning("event_refused", job_id=event["job_id"], error=seq.decode(errors="replace"))
            stored.append(None)
    return stored


async def publish(redis: Redis, tenant: str, event: dict[str, Any]) -> int:
    """Number, store and publish ``event``; returns its ``seq``."""
    stored = (await publish_many(redis, [(tenant, event, 0)]))[0]
    if stored is None:
        raise ResponseError(f"event of job {event['job_id']} refused by Redis")
    return stored[1]


@dataclass
class LastSeq:
    """The last ``seq`` one publisher was given for one job. Its next event takes a higher one
    even if Redis lost the job's counter meanwhile (restarted empty), so no number is given
    twice (:class:`Publisher`)."""

    value: int = 0


class Publisher:
    """:func:`publish` for a worker's many jobs, without waiting: events published while a
    batch is in flight go together in the next, one script call and one round trip. Batches go
    out in order, so each job's events keep theirs; await an event's future to know it (and
    every event before it) went out. Best effort: the future's result is None when Redis could
    not take it (logged).

    An event published with its attempt's :class:`LastSeq` is numbered after it, and updates it.
    The events Redis took are handed to ``keep`` (the worker's grouped archive writes,
    :meth:`videoq.store.grouped.GroupedWriter.keep_events`), which must not block."""

    def __init__(
        self, redis: Redis, keep: Callable[[list[StoredEvent]], object] | None = None
    ) -> None:
        self.redis = redis
        self.keep = keep
        self._group = GroupCommit(self._publish)

    async def _publish(
        self, items: list[tuple[str, dict[str, Any], LastSeq | None]]
    ) -> list[int | None]:
        # The batch before this one is done: each LastSeq is exact.
        outgoing = [(tenant, event, last.value + 1 if last else 0) for tenant, event, last in items]
        try:
            stored = await publish_many(self.redis, outgoing)
        except (RedisError, OSError) as exc:
            log.warning("event_publish_failed", events=len(items), error=str(exc))
            return [None] * len(items)
        for (_, _, last), one in zip(items, stored, strict=True):
            if last is not None and one is not None:
                last.value = max(last.value, one[1])
        published = [one for one in stored if one is not None]
        if self.keep is not None and published:
            self.keep(published)
        return [None if one is None else one[1] for one in stored]

    def __call__(
        self, tenant: str, event: dict[str, Any], last: LastSeq | None = None
    ) -> asyncio.Future[int | None]:
        return self._group.submit((tenant, event, last))

    async def aclose(self) -> None:
        await self._group.aclose()


async def publish_best_effort(
    redis: Redis, tenant: str, event: dict[str, Any], *, archive: Archive
) -> None:
    """Publish and archive the event of a publisher that keeps no :class:`LastSeq` (the API's
    transitions), logging instead of raising: events are best effort, PostgreSQL holds the
    state. It is numbered after the job's archived history (its floor), which every publisher
    archives as it goes (a worker within one grouped write), so the numbering goes on even if
    Redis lost the job's counter. ``archive`` errors (PostgreSQL down) are logged too."""
    try:
        floor = await archive.last_seq(event["job_id"]) + 1
        stored = (await publish_many(redis, [(tenant, event, floor)]))[0]
        if stored is not None:
            await archive.keep([stored])
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


async def history(
    redis: Redis, archive: Archive, job_id: str, after: int, upto: int | None = None
) -> list[dict[str, Any]]:
    """Events with ``after < seq <= upto``: from the Redis stream, and from the archive for the
    part Redis no longer holds (capped, expired, lost in a restart), or for all of them while
    Redis is out of reach. A seq names one event in both, so the parts join without a
    duplicate."""
    try:
        live = await replay(redis, job_id, after, upto)
    except (RedisError, OSError) as exc:
        log.warning("events_replayed_from_archive", job_id=job_id, error=str(exc))
        live = []
    if live and live[0]["seq"] == after + 1:
        return live
    if live:
        return await archive.between(job_id, after, before=live[0]["seq"]) + live
    return await archive.between(job_id, after, upto=upto)


async def current_seq(redis: Redis, archive: Archive, job_id: str) -> int:
    """The job's latest ``seq``: Redis's counter, or the archive's when Redis lost it."""
    seq = await last_seq(redis, job_id)
    return seq or await archive.last_seq(job_id)


async def publish_tenant(redis: Redis, tenant: str, event: dict[str, Any]) -> None:
    """Publish an event that belongs to no one job (a user's feed changed) on the tenant's
    channel, for the tenant's event stream. It has no ``seq`` and no replay: the feed itself,
    in PostgreSQL, is what a client reads again after a gap."""
    await redis.publish(keys.tenant_channel(tenant), json.dumps(event))
