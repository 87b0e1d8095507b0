"""Pipelines for throughput benchmarks (`Settings.pipeline = "bench.pipelines:<name>"`): the
real pipeline's contract — checkpoints after each stage, progress at each stage — around stages
that only wait, so what is measured is videoq's own bookkeeping."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from videoq.pipeline import STAGE_RANGES, STAGES, Checkpoints, Reporter
from videoq.types import Result


def _stages_of(stage_s: float, doc: str) -> Callable[..., Awaitable[Result]]:
    """A pipeline whose four stages each await ``stage_s``, with the real contract around
    them: skipped when checkpointed, reported when started, checkpointed when done."""

    async def pipeline(*_: Any, checkpoints: Checkpoints, report: Reporter, **__: Any) -> Result:
        for stage in STAGES:
            if await checkpoints.load(stage) is not None:
                continue
            await report(stage, STAGE_RANGES[stage][0], "started")
            if stage_s:
                await asyncio.sleep(stage_s)
            await checkpoints.save(stage, {"done": True})
        return Result(video_path=Path("/dev/null"), duration_s=0.0, size_bytes=0)

    pipeline.__doc__ = doc
    return pipeline


io = _stages_of(0.025, "Four stages awaiting 25 ms each: 0.1 s of provider I/O per job.")
noop = _stages_of(0.0, "Four stages that do nothing: pure bookkeeping.")
fair = _stages_of(0.2, "Four stages of 200 ms: 0.8 s a job, for the fairness benchmark.")
hold = _stages_of(2.0, "Four stages of 2 s each: jobs that stay in flight while a benchmark looks.")
