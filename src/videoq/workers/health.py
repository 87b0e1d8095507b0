"""``videoq worker --check``: whether a worker of this host (or one id) heartbeats, read from
the worker registry in Redis (:mod:`videoq.broker.registry`), for liveness probes. A worker is
alive while its last heartbeat is younger than ``worker_stale_s``: as long as the other
workers leave its jobs alone."""

from __future__ import annotations

import socket

from videoq.broker import BROKER_ERRORS, connect, registry
from videoq.settings import Settings


def this_host() -> str:
    """How the ids of the workers started on this host begin (``host:pid:random``)."""
    return f"{socket.gethostname()}:"


async def check(settings: Settings, worker_id: str | None = None) -> tuple[bool, str]:
    """Whether a live worker's id begins with ``worker_id`` (default: :func:`this_host`), and
    one line saying which, or why not."""
    prefix = worker_id or this_host()
    try:
        redis = await connect(settings, retries=0)
        try:
            workers = await registry.list_workers(redis, settings.worker_stale_s)
        finally:
            await redis.aclose()
    except BROKER_ERRORS as exc:
        return False, f"unhealthy: cannot reach Redis to read the heartbeats: {exc}"
    mine = [w for w in workers if str(w.get("id", "")).startswith(prefix)]
    alive = [w for w in mine if w["alive"]]
    if alive:
        return True, "healthy: " + ", ".join(str(w["id"]) for w in alive)
    if mine:
        return False, (
            f"unhealthy: no heartbeat from {prefix}… in the last {settings.worker_stale_s:g} s"
        )
    return False, f"unhealthy: no worker {prefix}… is registered"
