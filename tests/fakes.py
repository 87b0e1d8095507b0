"""Pipelines for lifecycle tests, injected through ``Settings.pipeline`` (``tests.fakes:name``)
into in-process and subprocess workers alike. They follow run_pipeline's signature and contract
(checkpoints, progress), but do no media work, so tests of queueing behaviour stay fast.

Every run appends ``<job dir> <stage> <pid> <time>`` to ``<scratch>/runs.log``, so tests can
count how often each stage of each job really ran, across processes.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from videoq.errors import RetryableError
from videoq.pipeline import STAGE_RANGES, STAGES, Checkpoints, Reporter
from videoq.settings import Settings
from videoq.types import Brief, Result


def runs(scratch: Path) -> list[tuple[str, str, int, float]]:
    """``(job_id, stage, pid, time)`` for every stage run recorded under ``scratch``."""
    log = scratch / "runs.log"
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        job, stage, pid, at = line.split()
        out.append((job, stage, int(pid), float(at)))
    return out


def _record(workdir: Path, stage: str) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir.parent / "runs.log").open("a") as log:
        log.write(f"{workdir.name} {stage} {os.getpid()} {time.time()}\n")


async def _stages(
    workdir: Path,
    checkpoints: Checkpoints,
    report: Reporter,
    *,
    seconds: float,
    fail_at: str | None = None,
) -> Result:
    for stage in STAGES:
        if await checkpoints.load(stage) is not None:
            continue
        start, end = STAGE_RANGES[stage]
        await report(stage, start, "started")
        _record(workdir, stage)
        if stage == fail_at:
            raise RetryableError(f"{stage} provider unavailable", code="provider_unavailable")
        await asyncio.sleep(seconds)
        await checkpoints.save(stage, {"done": True})
        await report(stage, end, "completed")
    video = workdir / "video.mp4"
    video.write_bytes(b"\0" * 64)
    return Result(video_path=video, duration_s=0.0, size_bytes=64)


async def quick(
    brief: Brief, *, settings: Settings, workdir: Path, checkpoints: Checkpoints,
    report: Reporter, **_: Any,
) -> Result:  # fmt: skip
    """Four stages of 20 ms each."""
    return await _stages(workdir, checkpoints, report, seconds=0.02)


async def chatty(
    brief: Brief, *, settings: Settings, workdir: Path, checkpoints: Checkpoints,
    report: Reporter, **_: Any,
) -> Result:  # fmt: skip
    """Four stages of ten progress steps, 5 ms apart: many events, quickly."""
    for stage in STAGES:
        start, end = STAGE_RANGES[stage]
        await report(stage, start, "started")
        for step in range(1, 11):
            await asyncio.sleep(0.005)
            await report(stage, start + (end - start) * step / 10)
        await checkpoints.save(stage, {"done": True})
    video = workdir / "video.mp4"
    _record(workdir, "chatty")
    video.write_bytes(b"\0" * 64)
    return Result(video_path=video, duration_s=0.0, size_bytes=64)


async def slow(
    brief: Brief, *, settings: Settings, workdir: Path, checkpoints: Checkpoints,
    report: Reporter, **_: Any,
) -> Result:  # fmt: skip
    """Four stages of 30 s each: for timeouts and cancellation."""
    return await _stages(workdir, checkpoints, report, seconds=30)


async def flaky(
    brief: Brief, *, settings: Settings, workdir: Path, checkpoints: Checkpoints,
    report: Reporter, **_: Any,
) -> Result:  # fmt: skip
    """``voice_gen`` fails (retryably) while ``<scratch>/<product name>.fail`` exists."""
    failing = (workdir.parent / f"{brief.product_name}.fail").exists()
    return await _stages(
        workdir, checkpoints, report, seconds=0.01, fail_at="voice_gen" if failing else None
    )


async def held(
    brief: Brief, *, settings: Settings, workdir: Path, checkpoints: Checkpoints,
    report: Reporter, **_: Any,
) -> Result:  # fmt: skip
    """Four quick stages, then waits while ``<scratch>/<product name>.hold`` exists."""
    result = await _stages(workdir, checkpoints, report, seconds=0.0)
    while (workdir.parent / f"{brief.product_name}.hold").exists():  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    return result
