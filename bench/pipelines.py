"""Pipelines for throughput benchmarks (`Settings.pipeline = "bench.pipelines:<name>"`): the
real pipeline's contract — checkpoints after each stage, progress at each stage — around stages
that only wait, so what is measured is videoq's own bookkeeping."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from videoq.pipeline import STAGE_RANGES, STAGES, Brief, Checkpoints, Reporter, Result
from videoq.settings import Settings


async def _run(checkpoints: Checkpoints, report: Reporter, stage_s: float) -> Result:
    for stage in STAGES:
        if await checkpoints.load(stage) is not None:
            continue
        await report(stage, STAGE_RANGES[stage][0], "started")
        if stage_s:
            await asyncio.sleep(stage_s)
        await checkpoints.save(stage, {"done": True})
    return Result(video_path=Path("/dev/null"), duration_s=0.0, size_bytes=0)


async def io(
    brief: Brief, *, settings: Settings, workdir: Path, checkpoints: Checkpoints,
    report: Reporter, **_: Any,
) -> Result:  # fmt: skip
    """Four stages awaiting 25 ms each: 0.1 s of provider I/O per job."""
    return await _run(checkpoints, report, 0.025)


async def noop(
    brief: Brief, *, settings: Settings, workdir: Path, checkpoints: Checkpoints,
    report: Reporter, **_: Any,
) -> Result:  # fmt: skip
    """Four stages that do nothing: pure bookkeeping."""
    return await _run(checkpoints, report, 0.0)


async def hold(
    brief: Brief, *, settings: Settings, workdir: Path, checkpoints: Checkpoints,
    report: Reporter, **_: Any,
) -> Result:  # fmt: skip
    """Four stages of 2 s each: jobs that stay in flight while a benchmark looks at the worker."""
    return await _run(checkpoints, report, 2.0)
