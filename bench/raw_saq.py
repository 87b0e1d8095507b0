"""A plain SAQ worker, the optional second baseline (`pip install -e '.[bench]'`): the same
sleeping and no-op jobs as bench.raw_arq, run as `saq bench.raw_saq.settings`, configured by
BENCH_* variables."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from saq import Queue


async def sleeper(ctx: dict[str, Any], *, seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"


async def noop(ctx: dict[str, Any]) -> None:
    return None


settings = {
    "queue": Queue.from_url(os.environ["BENCH_REDIS_URL"], name=os.environ["BENCH_QUEUE"]),
    "functions": [sleeper, noop],
    "concurrency": int(os.environ.get("BENCH_MAX_JOBS", "10")),
}
