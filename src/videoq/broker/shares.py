"""Tenants' fair shares of a queue, kept in Redis beside arq's own sorted set.

arq's queue is one sorted set, first due first out: a tenant that queues 1,000 jobs puts every
other tenant's job behind them. So each waiting job is also indexed under its tenant
(``<queue>:fair:t:<tenant>``, scored as on arq's queue, so priorities and schedules keep their
order within the tenant), and :class:`~videoq.workers.worker.VideoqWorker` takes jobs tenant by
tenant in weighted fair order (start-time fair queueing, as :mod:`videoq.fair` does inside a
process): each waiting tenant has a virtual time (``<queue>:fair:tenants``); a look takes the
next job of the tenant whose time is lowest, among those under their ``max_running``
(``<queue>:fair:run:<tenant>``, the jobs taken and not ended), and moves that tenant's time on
by ``1 / weight``. A tenant that starts waiting starts at the current clock, so a burst from
one tenant cannot delay another's first job by more than the jobs already running.

arq's sorted set stays the record of what is queued: arq's ``Job`` API and its plain worker
keep working (they take jobs in arq's order, without shares), and an index entry whose job is
no longer on arq's queue, or is held by a worker, is dropped when a look meets it. The index is
written with the queue (:func:`index`) and rebuilt by the reconciler from PostgreSQL after a
Redis loss. Weights and limits are set per tenant by admins (``PUT /v1/tenants/{tenant}``),
stored in PostgreSQL and copied here (:func:`configure`, :func:`sync`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from redis.asyncio import Redis

from videoq.broker import keys
from videoq.broker.scripts import LuaScript

#: Lua shared by the scripts that put jobs back among their tenant's waiting jobs (this
#: module's and the worker's), with the keys named as :func:`videoq.broker.keys.fair` names them.
FAIR_LUA = """
local function fair_index(queue, id, tenant)
  local score = redis.call('ZSCORE', queue, id)
  if not score then return 0 end
  redis.call('ZADD', queue .. ':fair:t:' .. tenant, score, id)
  local clock = redis.call('GET', queue .. ':fair:clock') or '0'
  redis.call('ZADD', queue .. ':fair:tenants', 'NX', clock, tenant)
  return 1
end
local function fair_unrun(queue, id)
  local tenant = redis.call('HGET', queue .. ':fair:of', id)
  if tenant then redis.call('SREM', queue .. ':fair:run:' .. tenant, id) end
  return tenant
end
"""

#: KEYS[1] the queue; ARGV[1] arq's in-progress prefix, then job id and tenant pairs. Each job
#: is recorded as its tenant's and, unless a worker holds it, indexed as waiting.
_INDEX = LuaScript(
    FAIR_LUA
    + """
local indexed = 0
for i = 2, #ARGV, 2 do
  local id, tenant = ARGV[i], ARGV[i + 1]
  redis.call('HSET', KEYS[1] .. ':fair:of', id, tenant)
  if redis.call('EXISTS', ARGV[1] .. id) == 0 then
    indexed = indexed + fair_index(KEYS[1], id, tenant)
  end
end
return indexed
"""
)

#: KEYS[1] the queue; ARGV[1] arq's job data prefix, ARGV[2] the job id: off the queue and out
#: of the index.
_REMOVE = LuaScript(
    FAIR_LUA
    + """
local id = ARGV[2]
local tenant = fair_unrun(KEYS[1], id)
if tenant then
  redis.call('ZREM', KEYS[1] .. ':fair:t:' .. tenant, id)
  redis.call('HDEL', KEYS[1] .. ':fair:of', id)
end
redis.call('ZREM', KEYS[1], id)
redis.call('DEL', ARGV[1] .. id)
return 1
"""
)

#: KEYS[1] the queue; ARGV[1] arq's in-progress prefix, ARGV[2] the job id: let go of a job
#: whose worker died, back among its tenant's waiting jobs.
_RELEASE = LuaScript(
    FAIR_LUA
    + """
local id = ARGV[2]
redis.call('DEL', ARGV[1] .. id)
local tenant = fair_unrun(KEYS[1], id)
if tenant then fair_index(KEYS[1], id, tenant) end
return 1
"""
)

#: KEYS[1] the queue, KEYS[2] the weights, ARGV: now (ms), tenant, job id. How many jobs go
#: before this one in fair order: its tenant's ahead of it, and for every other waiting tenant
#: those of its due jobs whose turn comes before this job's (-1: not waiting in the index).
#: An estimate: it leaves out tenants' ``max_running`` and jobs coming due meanwhile.
_POSITION = LuaScript("""
local fair = KEYS[1] .. ':fair:'
local tenant, id = ARGV[2], ARGV[3]
local rank = redis.call('ZRANK', fair .. 't:' .. tenant, id)
if not rank then return -1 end
local clock = tonumber(redis.call('GET', fair .. 'clock') or '0')
local function weight(t) return tonumber(redis.call('HGET', KEYS[2], t) or '1') end
local function start(t)
  return math.max(tonumber(redis.call('ZSCORE', fair .. 'tenants', t) or clock), clock)
end
local turn = start(tenant) + rank / weight(tenant)
local ahead = rank
local others = redis.call('ZRANGE', fair .. 'tenants', 0, 999)
for _, other in ipairs(others) do
  if other ~= tenant then
    local due = redis.call('ZCOUNT', fair .. 't:' .. other, '-inf', ARGV[1])
    local from, w = start(other), weight(other)
    local before = math.max(0, math.ceil((turn - from) * w))
    -- A turn at the same virtual time goes to the tenant whose name sorts first.
    if other < tenant and math.abs(from + before / w - turn) < 1e-9 then before = before + 1 end
    ahead = ahead + math.min(due, before)
  end
end
return ahead
""")


@dataclass(frozen=True)
class TenantShare:
    """What admins set for a tenant: its weight against others, and at most how many of its
    jobs run at once (None: no limit)."""

    weight: float = 1.0
    max_running: int | None = None


async def index(redis: Redis, queue_name: str, jobs: Iterable[tuple[str, str]]) -> int:
    """Record each ``(job id, tenant)`` as its tenant's, and index the ones on arq's queue that
    no worker holds as waiting; how many were indexed."""
    args: list[str] = [keys.in_progress_key_prefix]
    for job_id, tenant in jobs:
        args += (job_id, tenant)
    if len(args) == 1:
        return 0
    return int(await _INDEX(redis, [queue_name], args))


async def remove(redis: Redis, queue_name: str, job_id: str) -> None:
    """Take a job that is not running off arq's queue and out of the index."""
    await _REMOVE(redis, [queue_name], [keys.job_key_prefix, job_id])


async def release(redis: Redis, queue_name: str, job_id: str) -> None:
    """Delete the in-progress key of a job whose worker died; back among its tenant's waiting
    jobs if it is still on arq's queue."""
    await _RELEASE(redis, [queue_name], [keys.in_progress_key_prefix, job_id])


async def position(redis: Redis, queue_name: str, tenant: str, job_id: str, now_ms: int) -> int:
    """Jobs that go before this waiting one, in fair order (-1: not waiting in the index)."""
    args = [now_ms, tenant, job_id]
    return int(await _POSITION(redis, [queue_name, keys.TENANT_WEIGHTS], args))


#: KEYS the weights and the limits hashes; ARGV: 1 to replace both first (else 0), then
#: tenant, weight, limit ('' for none) triples.
_CONFIGURE = LuaScript("""
if ARGV[1] == '1' then redis.call('DEL', KEYS[1], KEYS[2]) end
for i = 2, #ARGV, 3 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  if ARGV[i + 2] == '' then
    redis.call('HDEL', KEYS[2], ARGV[i])
  else
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
  end
end
return 1
""")


async def configure(redis: Redis, tenant: str, share: TenantShare) -> None:
    """Copy one tenant's share into Redis, where looks read it."""
    await _configure(redis, {tenant: share}, replace=False)


async def sync(redis: Redis, shares: Mapping[str, TenantShare]) -> None:
    """Make Redis's copy of every tenant's share exactly ``shares`` (after a Redis loss, or a
    change made while Redis was away), in one step."""
    await _configure(redis, shares, replace=True)


async def _configure(redis: Redis, shares: Mapping[str, TenantShare], *, replace: bool) -> None:
    args: list[str] = ["1" if replace else "0"]
    for tenant, share in shares.items():
        limit = "" if share.max_running is None else str(share.max_running)
        args += (tenant, repr(share.weight), limit)
    await _CONFIGURE(redis, [keys.TENANT_WEIGHTS, keys.TENANT_MAX_RUNNING], args)


async def weights(redis: Redis) -> dict[str, float]:
    """Every tenant's weight that is not the default 1."""
    raw = await redis.hgetall(keys.TENANT_WEIGHTS)  # type: ignore[misc]
    return {tenant.decode(): float(value) for tenant, value in raw.items()}
