"""Job events in Redis: numbered per job, kept in a capped Redis Stream for replay, and
published on pub/sub for live delivery (DESIGN.md "Events").

One Lua script numbers, stores and publishes each event, so ``seq`` order, stream order and
pub/sub order are the same and a reconnecting client can resume from any ``seq``. What Redis no
longer holds (capped, expired, lost in a restart) comes from an :class:`Archive`: PostgreSQL's
copy (:class:`videoq.store.events.EventArchive`), injected by the caller, which every publisher
writes as it publishes. A seq is never given twice, even by a Redis that restarted empty: each
event carries a floor, the publisher's :class:`LastSeq` (a worker's attempt) or the archive's
last seq (the API), and takes at least that (docs/decisions.md, "Events across a Redis loss").

The same script numbers each event in its tenant's feed too (``tenant_seq``, one counter per
tenant, a capped stream per tenant), for ``WS /v1/events?after=``. That counter is shared by
every publisher, so one Redis lost is restored from the tenant stream's last entry or, with
both gone, from the archive's last ``tenant_seq`` of the tenant (docs/decisions.md, "Tenant
feed replay").
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
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
#: A tenant's feed holds every job's events: a longer stream, the archive behind it.
TENANT_STREAM_MAXLEN = 10000
TTL_S = 7 * 24 * 3600
#: The fields the publish script writes.
_NUMBERS = ("seq", "tenant_seq")


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

    async def tenant_last_seq(self, tenant: str) -> int:
        """The highest archived ``tenant_seq`` of the tenant (0 when none)."""
        ...

    async def tenant_between(
        self, tenant: str, after: int, before: int | None = None, upto: int | None = None
    ) -> list[dict[str, Any]]:
        """The tenant's archived events with ``after < tenant_seq``, ``tenant_seq < before``
        and ``tenant_seq <= upto``."""
        ...


#: Number, store and publish events, in order, in one call: event i (from 0) has the keys
#: KEYS[6i+1..6i+6] (seq counter, stream, job channel, tenant channel, tenant seq counter,
#: tenant stream), its floor in ARGV[3i+4], its tenant floor in ARGV[3i+5] and its JSON
#: object, without ``seq``, in ARGV[3i+6]; ARGV[1] is the job stream's cap, ARGV[2] the keys'
#: TTL and ARGV[3] the tenant stream's cap. An event takes the counter's next number, or its
#: floor if that is higher (Redis lost the counter: restarted empty), and the counter follows
#: it. The seq and tenant_seq go in front of the object's other fields (as :func:`_numbered`
#: writes them too). A counter that fell behind its stream (Redis lost the counter and kept
#: the stream) catches up with the stream's last entry. Returns each event's ``{seq,
#: tenant_seq}``, or the error that kept it out (a key of the wrong type, say): that event's
#: numbers are given back, so a job's numbers keep no gap, and the batch's other events go on.
#:
#: A tenant's counter is shared by every publisher, so no one publisher's memory can restore
#: it. One Redis lost (restarted empty, expired) is set from the tenant stream's last entry if
#: that is left, else from the tenant floor, which a caller brings from the archive; without
#: either nothing is numbered and the reply is ``{"tenant_seq_missing", i, ...}``, naming the
#: events whose tenants need one, for the caller to call again with their floors.
_PUBLISH = LuaScript("""
local n = (#ARGV - 3) / 3
local missing = {}
for i = 0, n - 1 do
  local k = i * 6
  if redis.call('EXISTS', KEYS[k + 5]) == 0 then
    local floor = tonumber(ARGV[3 * i + 5])
    local last = redis.pcall('XREVRANGE', KEYS[k + 6], '+', '-', 'COUNT', 1)
    if type(last) == 'table' and last[1] then
      local after = tonumber(string.match(last[1][1], '^%d+')) + 1
      if after > floor then floor = after end
    end
    if floor > 0 then
      redis.call('SET', KEYS[k + 5], floor - 1)
    else
      missing[#missing + 1] = i
    end
  end
end
if #missing > 0 then
  table.insert(missing, 1, 'tenant_seq_missing')
  return missing
end
local function add(k, floor, body)
  local seq = redis.pcall('INCR', KEYS[k + 1])
  if type(seq) == 'table' then return nil, seq.err end
  if seq < floor then
    seq = floor
    redis.call('SET', KEYS[k + 1], seq)
  end
  local tseq = redis.call('INCR', KEYS[k + 5])
  local data = '{"seq":' .. seq .. ',"tenant_seq":' .. tseq .. ',' .. body
  local added = redis.pcall('XADD', KEYS[k + 2], 'MAXLEN', '~', ARGV[1], seq .. '-0',
                            'e', data)
  if type(added) == 'table' then
    if seq == 1 then redis.call('DEL', KEYS[k + 1]) else redis.call('DECR', KEYS[k + 1]) end
    redis.call('DECR', KEYS[k + 5])
    return nil, added.err
  end
  -- The archive holds the event too: a tenant stream Redis refuses only costs its replay a
  -- trip to PostgreSQL.
  redis.pcall('XADD', KEYS[k + 6], 'MAXLEN', '~', ARGV[3], tseq .. '-0', 'e', data)
  return {seq, tseq}, data
end
local out = {}
for i = 0, n - 1 do
  local k = i * 6
  local floor = tonumber(ARGV[3 * i + 4])
  local body = string.sub(ARGV[3 * i + 6], 2)
  local seqs, data = add(k, floor, body)
  if seqs == nil then
    local last = redis.pcall('XREVRANGE', KEYS[k + 2], '+', '-', 'COUNT', 1)
    if type(last) == 'table' and last[1] then
      redis.call('SET', KEYS[k + 1], string.match(last[1][1], '^%d+'))
      seqs, data = add(k, floor, body)
    end
  end
  if seqs == nil then
    out[#out + 1] = data
  else
    for key = k + 1, k + 6 do
      if key ~= k + 3 and key ~= k + 4 then redis.call('EXPIRE', KEYS[key], ARGV[2]) end
    end
    redis.call('PUBLISH', KEYS[k + 3], data)
    redis.call('PUBLISH', KEYS[k + 4], data)
    out[#out + 1] = seqs
  end
end
return out
""")

_MISSING = b"tenant_seq_missing"

#: An event to publish: ``(tenant, event, floor)``, the floor being the least seq it may take
#: (0: none).
Outgoing = tuple[str, dict[str, Any], int]

#: The least ``tenant_seq`` a tenant's next event may take, read from the archive: asked only
#: when Redis has lost the tenant's counter and stream (:data:`_PUBLISH`).
TenantFloor = Callable[[str], Awaitable[int]]


def _numbered(seq: int, tenant_seq: int, body: str) -> str:
    """An event's text as the script stores and publishes it: ``seq`` and ``tenant_seq``
    first, then ``body``'s fields."""
    return f'{{"seq":{seq},"tenant_seq":{tenant_seq},{body[1:]}'


def _args(
    items: Sequence[Outgoing], bodies: list[str], tenant_floors: dict[str, int]
) -> tuple[list[str], list[str]]:
    names: list[str] = []
    args = [str(STREAM_MAXLEN), str(TTL_S), str(TENANT_STREAM_MAXLEN)]
    for (tenant, event, floor), body in zip(items, bodies, strict=True):
        job_id = event["job_id"]
        names += (keys.seq(job_id), keys.stream(job_id), keys.job_channel(job_id),
                  keys.tenant_channel(tenant), keys.tenant_seq(tenant),
                  keys.tenant_stream(tenant))  # fmt: skip
        args += (str(floor), str(tenant_floors.get(tenant, 0)), body)
    return names, args


async def publish_many(
    redis: Redis, items: Sequence[Outgoing], tenant_floor: TenantFloor | None = None
) -> list[StoredEvent | None]:
    """Number (each at least its floor), store and publish events, in order, in one round
    trip (two when Redis lost a tenant's counter: its floor is asked of ``tenant_floor``, or
    taken as none before the first without one); returns each as the archive keeps it, None
    for an event Redis refused (logged; the others go on)."""
    numbered = await _numbered_many(redis, items, tenant_floor)
    return [None if one is None else one[0] for one in numbered]


async def _numbered_many(
    redis: Redis, items: Sequence[Outgoing], tenant_floor: TenantFloor | None
) -> list[tuple[StoredEvent, int] | None]:
    """:func:`publish_many`, each event with its ``tenant_seq``."""
    bodies = [json.dumps({k: v for k, v in e.items() if k not in _NUMBERS}) for _, e, _ in items]
    replies = await _PUBLISH(redis, *_args(items, bodies, {}))
    if replies and replies[0] == _MISSING:
        tenants = {items[int(i)][0] for i in replies[1:]}
        floors = {t: (await tenant_floor(t) if tenant_floor else 0) + 1 for t in tenants}
        log.info("tenant_seq_restored", tenants=len(floors))
        replies = await _PUBLISH(redis, *_args(items, bodies, floors))
    stored: list[tuple[StoredEvent, int] | None] = []
    for (_, event, _), body, reply in zip(items, bodies, replies, strict=True):
        if isinstance(reply, list):
            seq, tenant_seq = int(reply[0]), int(reply[1])
            stored.append(((event["job_id"], seq, _numbered(seq, tenant_seq, body)), tenant_seq))
        else:
            text = reply.decode(errors="replace")
            log.warning("event_refused", job_id=event["job_id"], error=text)
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
    :meth:`videoq.store.grouped.GroupedWriter.keep_events`), which must not block. When Redis
    lost a tenant's counter, its events are numbered after both the archive's last
    (``tenant_floor``) and the last this publisher was given, whichever is higher: its own
    archive writes trail its publishing."""

    def __init__(
        self,
        redis: Redis,
        keep: Callable[[list[StoredEvent]], object] | None = None,
        tenant_floor: TenantFloor | None = None,
    ) -> None:
        self.redis = redis
        self.keep = keep
        self.tenant_floor = tenant_floor
        self._tenant_last: dict[str, int] = {}
        self._group = GroupCommit(self._publish)

    async def _floor(self, tenant: str) -> int:
        archived = await self.tenant_floor(tenant) if self.tenant_floor else 0
        return max(archived, self._tenant_last.get(tenant, 0))

    async def _publish(
        self, items: list[tuple[str, dict[str, Any], LastSeq | None]]
    ) -> list[int | None]:
        # The batch before this one is done: each LastSeq is exact.
        outgoing = [(tenant, event, last.value + 1 if last else 0) for tenant, event, last in items]
        try:
            numbered = await _numbered_many(self.redis, outgoing, self._floor)
        except Exception as exc:  # Redis, or the archive asked for a tenant's floor
            log.warning("event_publish_failed", events=len(items), error=str(exc))
            return [None] * len(items)
        for (tenant, _, last), one in zip(items, numbered, strict=True):
            if one is None:
                continue
            if last is not None:
                last.value = max(last.value, one[0][1])
            self._tenant_last[tenant] = max(self._tenant_last.get(tenant, 0), one[1])
        published = [one[0] for one in numbered if one is not None]
        if self.keep is not None and published:
            self.keep(published)
        return [None if one is None else one[0][1] for one in numbered]

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
    Redis lost the job's counter; its ``tenant_seq`` likewise after the tenant's. ``archive``
    errors (PostgreSQL down) are logged too."""
    try:
        floor = await archive.last_seq(event["job_id"]) + 1
        outgoing = [(tenant, event, floor)]
        stored = (await publish_many(redis, outgoing, archive.tenant_last_seq))[0]
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


async def tenant_history(
    redis: Redis, archive: Archive, tenant: str, after: int, upto: int | None = None
) -> list[dict[str, Any]]:
    """The tenant's events with ``after < tenant_seq <= upto``, in order: :func:`history` for a
    tenant's feed, from its Redis stream and, for what that no longer holds, the archive."""
    try:
        entries = await redis.xrange(
            keys.tenant_stream(tenant), f"{after + 1}-0", f"{upto}-0" if upto else "+"
        )
        live = [json.loads(fields[b"e"]) for _, fields in entries]
    except (RedisError, OSError) as exc:
        log.warning("tenant_events_replayed_from_archive", error=str(exc))
        live = []
    if live and live[0]["tenant_seq"] == after + 1:
        return live
    if live:
        return await archive.tenant_between(tenant, after, before=live[0]["tenant_seq"]) + live
    return await archive.tenant_between(tenant, after, upto=upto)


async def current_tenant_seq(redis: Redis, archive: Archive, tenant: str) -> int:
    """The tenant's latest ``tenant_seq``: Redis's counter, or the archive's when Redis lost
    it."""
    value = await redis.get(keys.tenant_seq(tenant))
    return int(value) if value else await archive.tenant_last_seq(tenant)


async def publish_tenant(redis: Redis, tenant: str, event: dict[str, Any]) -> None:
    """Publish an event that belongs to no one job (a user's feed changed) on the tenant's
    channel, for the tenant's event stream. It has no ``seq`` nor ``tenant_seq`` and no
    replay: the feed itself, in PostgreSQL, is what a client reads again after a gap."""
    await redis.publish(keys.tenant_channel(tenant), json.dumps(event))
