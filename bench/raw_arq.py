"""A plain arq worker, the baseline: a job that sleeps (abortable) and a no-op job.

Configured by BENCH_* variables, so a subprocess runs it as `arq bench.raw_arq.Settings`."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from arq.connections import RedisSettings


async def sleeper(ctx: dict[str, Any], seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def stamp(ctx: dict[str, Any]) -> None:
    """Record when it started, for pickup latency."""
    await ctx["redis"].set(f"bench:started:{ctx['job_id']}", str(time.time()), ex=600)


class _Settings(dict[str, Any]):
    def items(self) -> Any:  # read at worker start, not import
        return {
            "functions": [sleeper, noop, stamp],
            "redis_settings": RedisSettings.from_dsn(os.environ["BENCH_REDIS_URL"]),
            "queue_name": os.environ.get("BENCH_QUEUE", "arq:queue"),
            "job_timeout": float(os.environ.get("BENCH_JOB_TIMEOUT_S", "300")),
            "allow_abort_jobs": True,
            "poll_delay": float(os.environ.get("BENCH_POLL_DELAY_S", "0.5")),
            "max_jobs": int(os.environ.get("BENCH_MAX_JOBS", "10")),
            "keep_result": 60,
        }.items()


Settings = _Settings()
