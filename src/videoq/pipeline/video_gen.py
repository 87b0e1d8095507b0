"""Stage 3, ``video_gen`` (progress 50–75): one clip per scene, all scenes at once.

With a :class:`~videoq.providers.ResumableVideoProvider` (Replicate) every scene's paid work
is noted in the checkpoints under ``scene_NN``, with the fingerprint of its inputs: that it is
about to be bought, its id as soon as it exists, and the clip once it is kept in the artifact
store. A later run of the stage (a retry, a worker killed mid-stage, a redeploy, on any worker)
takes a kept clip back from the store, or re-attaches to the noted work, instead of paying for
the same clip again; only notes whose fingerprint still matches count.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from videoq.errors import OverBudget, RetryableError
from videoq.pipeline.spending import Spend, Unmetered, paid, paid_call
from videoq.providers import PaidWork, ResumableVideoProvider, VideoProvider, prices
from videoq.types import Clip, Script

if TYPE_CHECKING:
    from videoq.ffmpeg import ProgressCallback
    from videoq.pipeline import Artifacts, Checkpoints
    from videoq.settings import Settings
    from videoq.types import Brief

STAGE = "video_gen"


def note_key(index: int) -> str:
    """The checkpoint note under which a scene's paid work is recorded."""
    return f"scene_{index:02d}"


def purchase_key(index: int) -> str:
    """The key under which a scene's purchase is reserved against the budget."""
    return f"{STAGE}:{index}"


async def _clip(
    provider: VideoProvider, index: int, brief: Brief, script: Script, workdir: Path
) -> Clip:
    return Clip(path=await provider.render_scene(script.scenes[index], index, brief, workdir))


async def run(
    brief: Brief,
    script: Script,
    *,
    provider: VideoProvider,
    workdir: Path,
    on_progress: ProgressCallback,
    checkpoints: Checkpoints | None = None,
    artifacts: Artifacts | None = None,
    settings: Settings | None = None,
    spend: Spend | None = None,
) -> list[Clip]:
    """Render every scene concurrently; ``on_progress`` gets the fraction of clips finished.

    If one scene fails the others are cancelled and that scene's own error propagates (a
    permanent one before a retryable one, when several failed): their noted work stays noted,
    for the next attempt to re-attach to, or for the worker to cancel when the job fails. A
    scene the budget cannot cover cancels nothing: the others finish (each clip kept), and
    then :class:`~videoq.errors.OverBudget` propagates.
    """
    total = len(script.scenes)
    finished = 0
    noted = await checkpoints.notes(STAGE) if checkpoints is not None else {}
    metered = spend or Unmetered()

    async def render(index: int) -> Clip:
        nonlocal finished
        scene = script.scenes[index]
        if isinstance(provider, ResumableVideoProvider) and checkpoints is not None:
            clip = await _paid_clip(
                provider, index, brief, script, workdir, checkpoints, artifacts, noted,
                settings, metered,
            )  # fmt: skip
        elif paid(provider) and settings is not None:
            clip = await paid_call(
                metered, STAGE, purchase_key(index), prices.scene_usage(settings, scene),
                lambda: _clip(provider, index, brief, script, workdir), lambda c: c.cost,
            )  # fmt: skip
        else:
            clip = await _clip(provider, index, brief, script, workdir)
        finished += 1
        await on_progress(finished / total)
        return clip

    refused: list[OverBudget] = []

    async def render_or_wait(index: int) -> Clip | None:
        try:
            return await render(index)
        except OverBudget as exc:  # the scenes already reserved go on: they are paid for
            refused.append(exc)
            return None

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(render_or_wait(i)) for i in range(total)]
    except ExceptionGroup as failed:
        raise _first(failed) from None
    if refused:
        raise refused[0]
    return [clip for task in tasks if (clip := task.result()) is not None]


async def _paid_clip(
    provider: ResumableVideoProvider,
    index: int,
    brief: Brief,
    script: Script,
    workdir: Path,
    checkpoints: Checkpoints,
    artifacts: Artifacts | None,
    noted: dict[str, dict[str, Any]],
    settings: Settings | None,
    spend: Spend,
) -> Clip:
    """One scene's clip from the provider, its purchase noted at every step (and reserved
    against the budget before it is made, when settings say what it costs)."""
    scene = script.scenes[index]
    key = note_key(index)
    fingerprint = provider.work_fingerprint(scene, index, brief)
    previous = noted.get(key) or {}
    if previous.get("fingerprint") != fingerprint:
        previous = {}
    kept = previous.get("clip")
    if artifacts is not None and isinstance(kept, str) and await artifacts.fetch(workdir / kept):
        work_id = previous.get("id")
        cost = previous.get("cost")
        return Clip(
            path=workdir / kept,
            cost=cost if isinstance(cost, dict) else {},
            work_id=work_id if isinstance(work_id, str) else None,
        )
    current: dict[str, Any] = {**previous, "fingerprint": fingerprint}

    async def note(update: dict[str, Any]) -> None:
        current.update(update)
        await checkpoints.note(STAGE, key, dict(current))

    claimed = frozenset(
        str(other["id"]) for name, other in noted.items() if name != key and other.get("id")
    )
    work = PaidWork(previous, claimed, note)
    if settings is None:
        clip = await provider.render_clip(scene, index, brief, workdir, work=work)
    else:
        clip = await paid_call(
            spend, STAGE, purchase_key(index), prices.scene_usage(settings, scene),
            lambda: provider.render_clip(scene, index, brief, workdir, work=work),
            lambda c: c.cost,
        )  # fmt: skip
    if artifacts is not None:
        # Kept at once, not at the stage's end: a clip bought is never bought again, even
        # when the attempt dies before its siblings finish or after Replicate deleted it.
        await artifacts.keep(clip.path)
        await note({"clip": clip.path.name, "cost": clip.cost})
    return clip


def _first(failed: ExceptionGroup[Exception]) -> Exception:
    """The error a failed stage reports: a scene's own, not the task group's wrapper; a
    permanent one when a scene failed for good (retrying would not help the job)."""
    errors: list[Exception] = []
    pending: list[BaseException] = [failed]
    while pending:
        item = pending.pop(0)
        if isinstance(item, BaseExceptionGroup):
            pending[:0] = list(item.exceptions)
        elif isinstance(item, Exception):
            errors.append(item)
    permanent = [e for e in errors if not isinstance(e, RetryableError)]
    return (permanent or errors)[0]


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
