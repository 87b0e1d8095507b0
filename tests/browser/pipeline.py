"""The pipeline the console's browser tests run: four stages of a second each with progress
steps (a job a person can watch), and by product name a job that holds in ``video_gen`` until
cancelled (``hold …``) or fails for good in ``voice_gen`` while ``<scratch>/<name>.fail``
exists."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from videoq.errors import PermanentError
from videoq.pipeline import STAGE_RANGES, STAGES, Checkpoints, Reporter
from videoq.settings import Settings
from videoq.types import Brief, Result

STEPS = 4
PAUSE_S = 0.25


async def console(
    brief: Brief, *, settings: Settings, workdir: Path, checkpoints: Checkpoints,
    report: Reporter, **_: Any,
) -> Result:  # fmt: skip
    name = brief.product_name
    for stage in STAGES:
        if await checkpoints.load(stage) is not None:
            continue
        start, end = STAGE_RANGES[stage]
        await report(stage, start, "started")
        if stage == "voice_gen" and _failing(workdir, name):
            raise PermanentError("the voice was refused (the test asked)", code="voice_refused")
        if stage == "video_gen" and name.startswith("hold"):
            await asyncio.Event().wait()  # until cancelled
        for step in range(1, STEPS + 1):
            await asyncio.sleep(PAUSE_S)
            await report(stage, start + (end - start) * step / STEPS)
        await checkpoints.save(stage, {"done": True})
        await report(stage, end, "completed")
    return Result(video_path=_video(workdir), duration_s=0.0, size_bytes=64)


def _failing(workdir: Path, name: str) -> bool:
    return (workdir.parent / f"{name}.fail").exists()


def _video(workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    video = workdir / "video.mp4"
    video.write_bytes(b"\0" * 64)
    return video
