"""Stage 3, ``video_gen`` (progress 50–75): one clip per scene, all scenes at once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from videoq.providers import Script, VideoProvider

if TYPE_CHECKING:
    from videoq.ffmpeg import ProgressCallback
    from videoq.pipeline import Brief


async def run(
    brief: Brief,
    script: Script,
    *,
    provider: VideoProvider,
    workdir: Path,
    on_progress: ProgressCallback,
) -> list[Path]:
    """Render every scene concurrently; ``on_progress`` gets the fraction of clips finished.

    If one scene fails the others are cancelled (TaskGroup) and the first error propagates.
    """
    total = len(script.scenes)
    finished = 0

    async def render(index: int) -> Path:
        nonlocal finished
        path = await provider.render_scene(script.scenes[index], index, brief, workdir)
        finished += 1
        await on_progress(finished / total)
        return path

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(render(i)) for i in range(total)]
    return [task.result() for task in tasks]


def to_output(clips: list[Path]) -> dict[str, Any]:
    """The checkpoint for a list of clips."""
    return {"clips": [str(path) for path in clips]}


def from_output(output: dict[str, Any]) -> list[Path]:
    """The clips recorded in a checkpoint."""
    return [Path(path) for path in output["clips"]]


def artifacts(output: dict[str, Any]) -> list[Path]:
    """Files a checkpointed output refers to: the clips."""
    return from_output(output)
