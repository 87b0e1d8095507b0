"""The worker registry in Redis: a sorted set of worker ids scored by their last heartbeat, and
one JSON document per worker (host, pid, start time, current jobs, counters), for
``GET /v1/workers``, ``/metrics`` and ``/health``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from arq import ArqRedis

from videoq.broker import keys


async def heartbeat(redis: ArqRedis, worker_id: str, info: dict[str, Any], ttl_s: float) -> None:
    now = time.time()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zadd(keys.WORKERS, {worker_id: now})
        pipe.set(
            keys.worker_info(worker_id), json.dumps({**info, "last_heartbeat": now}), ex=int(ttl_s)
        )
        await pipe.execute()


async def forget_worker(redis: ArqRedis, worker_id: str) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrem(keys.WORKERS, worker_id)
        pipe.delete(keys.worker_info(worker_id))
        await pipe.execute()


async def list_workers(redis: ArqRedis, stale_s: float) -> list[dict[str, Any]]:
    """Every registered worker, newest heartbeat first, with ``alive`` set."""
    entries = await redis.zrevrange(keys.WORKERS, 0, -1, withscores=True)
    if not entries:
        return []
    infos = await redis.mget([keys.worker_info(wid.decode()) for wid, _ in entries])
    now = time.time()
    out = []
    for (wid, seen), raw in zip(entries, infos, strict=True):
        info = json.loads(raw) if raw else {"id": wid.decode()}
        out.append({**info, "last_heartbeat": seen, "alive": now - seen <= stale_s})
    return out


async def clear_stale(redis: ArqRedis, stale_s: float) -> list[str]:
    """Forget workers whose heartbeat is older than ``stale_s``; returns their ids."""
    stale = await redis.zrangebyscore(keys.WORKERS, "-inf", time.time() - stale_s)
    ids = [s.decode() for s in stale]
    for worker_id in ids:
        await forget_worker(redis, worker_id)
    return ids


async def count_workers(redis: ArqRedis, stale_s: float) -> int:
    return int(await redis.zcount(keys.WORKERS, time.time() - stale_s, "+inf"))
