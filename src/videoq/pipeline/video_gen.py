"""Stage 3, ``video_gen`` (progress 50–75): one clip per scene, all scenes at once.

With a :class:`~videoq.providers.ResumableVideoProvider` (Replicate) every scene's paid work
is noted in the checkpoints under ``scene_NN`` — its id and the fingerprint of its inputs — as
soon as it exists, before the stage waits for it. A later run of the stage (a retry, a worker
killed mid-stage, a redeploy) re-attaches to the noted work whose fingerprint still matches
instead of paying for the same clip again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from videoq.providers import ResumableVideoProvider, VideoProvider
from videoq.types import Clip, Script

if TYPE_CHECKING:
    from videoq.ffmpeg import ProgressCallback
    from videoq.pipeline import Checkpoints
    from videoq.types import Brief

STAGE = "video_gen"


def note_key(index: int) -> str:
    """The checkpoint note under which a scene's paid work is recorded."""
    return f"scene_{index:02d}"


async def run(
    brief: Brief,
    script: Script,
    *,
    provider: VideoProvider,
    workdir: Path,
    on_progress: ProgressCallback,
    checkpoints: Checkpoints | None = None,
) -> list[Clip]:
    """Render every scene concurrently; ``on_progress`` gets the fraction of clips finished.

    If one scene fails the others are cancelled (TaskGroup) and the first error propagates;
    their noted work stays noted, for the next attempt to re-attach to.
    """
    total = len(script.scenes)
    finished = 0
    noted = await checkpoints.notes(STAGE) if checkpoints is not None else {}

    async def render(index: int) -> Clip:
        nonlocal finished
        scene = script.scenes[index]
        if isinstance(provider, ResumableVideoProvider) and checkpoints is not None:
            key = note_key(index)
            fingerprint = provider.work_fingerprint(scene, index, brief)
            previous = noted.get(key) or {}
            attach_to = previous.get("id") if previous.get("fingerprint") == fingerprint else None

            async def submitted(work_id: str) -> None:
                await checkpoints.note(STAGE, key, {"id": work_id, "fingerprint": fingerprint})

            clip = await provider.render_clip(
                scene,
                index,
                brief,
                workdir,
                attach_to=str(attach_to) if attach_to else None,
                on_submitted=submitted,
            )
        else:
            clip = Clip(path=await provider.render_scene(scene, index, brief, workdir))
        finished += 1
        await on_progress(finished / total)
        return clip

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(render(i)) for i in range(total)]
    return [task.result() for task in tasks]


def to_output(clips: list[Clip]) -> dict[str, Any]:
    """The checkpoint for a list of clips (with their cost and provider ids, if any)."""
    output: dict[str, Any] = {"clips": [str(clip.path) for clip in clips]}
    ids = [clip.work_id for clip in clips]
    if any(ids):
        output["work_ids"] = ids
    if any(clip.cost for clip in clips):
        seconds = [clip.cost.get("predict_time_s") for clip in clips]
        provider = next((c.cost["provider"] for c in clips if "provider" in c.cost), None)
        cost: dict[str, Any] = {"provider": provider, "clips": len(clips)}
        if all(isinstance(s, int | float) for s in seconds):
            cost["predict_time_s"] = round(sum(float(s or 0) for s in seconds), 3)
        cost["scenes"] = [clip.cost for clip in clips]
        output["cost"] = cost
    return output


def from_output(output: dict[str, Any]) -> list[Path]:
    """The clips recorded in a checkpoint."""
    return [Path(path) for path in output["clips"]]


def artifacts(output: dict[str, Any]) -> list[Path]:
    """Files a checkpointed output refers to: the clips."""
    return from_output(output)
