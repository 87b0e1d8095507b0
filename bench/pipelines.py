"""Pipelines for benchmarks (`Settings.pipeline = "bench.pipelines:<name>"`): the real
pipeline's contract — checkpoints after each stage, progress at each stage — around stages
that only wait, so what is measured is videoq's own bookkeeping; and one real stage alone."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from videoq.pipeline import STAGE_RANGES, STAGES, Artifacts, Checkpoints, Reporter, video_gen
from videoq.providers import Providers
from videoq.types import Brief, Result, Scene, Script


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


async def predictions(
    brief: Brief,
    *,
    checkpoints: Checkpoints,
    report: Reporter,
    providers: Providers,
    workdir: Path,
    artifacts: Artifacts | None = None,
    **_: Any,
) -> Result:
    """The real ``video_gen`` stage alone, on a script of four scenes: a job that waits on
    four paid predictions (bench/waiting.py), noted and kept as the real pipeline does."""
    stage = video_gen.STAGE
    script = Script(
        title=brief.product_name,
        scenes=[Scene(f"Scene {i}.", f"{brief.product_name}, shot {i}", 5.0) for i in range(4)],
    )
    low, high = STAGE_RANGES[stage]

    async def progress(fraction: float) -> None:
        await report(stage, low + (high - low) * fraction)

    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    await report(stage, low, "started")
    clips = await video_gen.run(
        brief, script, provider=providers.video, workdir=workdir, on_progress=progress,
        checkpoints=checkpoints, artifacts=artifacts,
    )  # fmt: skip
    await checkpoints.save(stage, video_gen.to_output(clips))
    return Result(video_path=Path("/dev/null"), duration_s=0.0, size_bytes=0)
