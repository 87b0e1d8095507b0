"""What running one stage means: on a job's first version, the stage itself
(:func:`run_stage`); on a re-render's version, the stage redone only as far as the re-render
changed its inputs, the rest taken from the version before (:func:`rerun_stage`). Both take
what a stage runs with as one :class:`StageRun`.

A re-render (:class:`~videoq.pipeline.versions.Rerender`) rewrites one scene's prompt and/or
narration. Its script is the earlier one with that edit (nothing bought); its voice is bought
again only when the narration changed, else the earlier track; its clips are the earlier ones
with that scene's bought again; its compositing runs again, into the version's own directory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from videoq.errors import FFmpegError, PermanentError
from videoq.ffmpeg import find_font
from videoq.pipeline import compositing, script_gen, video_gen, voice_gen
from videoq.pipeline.previews import Previews, poster, thumbnail, thumbnail_size
from videoq.types import Brief, Clip, Script, VoiceTrack
from videoq.versions import Rerender, edited

if TYPE_CHECKING:
    from videoq.pipeline import Artifacts, Checkpoints
    from videoq.pipeline.spending import Spend
    from videoq.providers import Providers
    from videoq.settings import Settings

log = structlog.get_logger(__name__)

#: The outputs of a stage of the version before a re-render's (its files in the work
#: directory); :class:`~videoq.errors.PermanentError` when they cannot be had.
Earlier = Callable[[str], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class StageRun:
    """What one stage runs with: where its files go (``workdir``), the providers it buys
    from, its paid work's notes (``checkpoints``) and budget (``spend``), where its files are
    kept, and where it reports progress, messages and previews."""

    settings: Settings
    workdir: Path
    providers: Providers
    checkpoints: Checkpoints
    artifacts: Artifacts
    spend: Spend
    on_progress: Callable[[float], Awaitable[None]]
    on_message: Callable[[str], Awaitable[None]]
    previews: Previews | None


async def run_stage(
    stage: str, brief: Brief, outputs: dict[str, dict[str, Any]], run: StageRun
) -> dict[str, Any]:
    """Run one stage on the outputs of the earlier ones; return its checkpoint."""
    if stage == "script_gen":
        written = await script_gen.run(
            brief, provider=run.providers.script, settings=run.settings, spend=run.spend
        )
        return written.to_dict()
    script = Script.from_dict(outputs["script_gen"])
    if stage == "voice_gen":
        return (await _voice(brief, script, run)).to_dict()
    if stage == "video_gen":
        return video_gen.to_output(await _clips(brief, script, None, run))
    return await _composite(brief, script, outputs, run)


async def rerun_stage(
    stage: str,
    brief: Brief,
    rerender: Rerender,
    outputs: dict[str, dict[str, Any]],
    earlier: Earlier,
    run: StageRun,
) -> dict[str, Any]:
    """One stage of a re-render, into ``run.workdir`` (the version's directory), with
    ``run.checkpoints`` and ``run.spend`` of the version: what it changed bought again, the
    rest taken from the version before (``earlier``), its cost not counted again."""
    if stage == "script_gen":
        script = Script.from_dict(await earlier(stage))
        if not 0 <= rerender.scene < len(script.scenes):
            raise PermanentError(f"the script has no scene {rerender.scene}", code="no_scene")
        return edited(script, rerender.edit()).to_dict()
    script = Script.from_dict(outputs["script_gen"])
    if stage == "voice_gen":
        if "narration" not in rerender.changed:
            return _reused(await earlier(stage))
        return (await _voice(brief, script, run)).to_dict()
    if stage == "video_gen":
        clips = [str(path) for path in video_gen.from_output(await earlier(stage))]
        if len(clips) != len(script.scenes):
            raise PermanentError(f"{len(clips)} clips for {len(script.scenes)} scenes")
        bought = await _clips(brief, script, [rerender.scene], run)
        clips[rerender.scene] = str(bought[0].path)
        output = {k: v for k, v in video_gen.to_output(bought).items() if k == "cost"}
        return {"clips": clips, **output}
    return await _composite(brief, script, outputs, run)


def _reused(output: dict[str, Any]) -> dict[str, Any]:
    """An earlier version's output, as this version's: its cost was counted there."""
    return {key: value for key, value in output.items() if key != "cost"}


async def _voice(brief: Brief, script: Script, run: StageRun) -> VoiceTrack:
    """The script's narration, bought."""
    return await voice_gen.run(
        brief, script, provider=run.providers.voice, workdir=run.workdir,
        checkpoints=run.checkpoints, settings=run.settings, spend=run.spend,
    )  # fmt: skip


async def _clips(brief: Brief, script: Script, only: list[int] | None, run: StageRun) -> list[Clip]:
    """The scenes' clips (those ``only`` names), each one's thumbnail made as it lands."""

    async def on_clip(index: int, clip: Clip) -> None:
        await _thumbnail(
            clip, script, index, brief, run.workdir, run.settings, run.artifacts, run.previews
        )

    return await video_gen.run(
        brief,
        script,
        provider=run.providers.video,
        workdir=run.workdir,
        on_progress=run.on_progress,
        checkpoints=run.checkpoints,
        artifacts=run.artifacts,
        settings=run.settings,
        spend=run.spend,
        fallbacks=run.providers.video_fallbacks,
        on_message=run.on_message,
        on_clip=on_clip,
        only=only,
    )


async def _composite(
    brief: Brief, script: Script, outputs: dict[str, dict[str, Any]], run: StageRun
) -> dict[str, Any]:
    """``run.workdir/video.mp4`` from the script, voice and clips, and its poster; the output
    records where the video cuts to each scene (``scene_starts_s``, for the scenes' list)."""
    settings, workdir = run.settings, run.workdir
    voice = VoiceTrack.from_dict(outputs["voice_gen"])
    result = await compositing.run(
        brief,
        script,
        voice,
        video_gen.from_output(outputs["video_gen"]),
        settings=settings,
        workdir=workdir,
        font=await find_font(settings) if brief.cta_text or brief.captions else None,
        on_progress=run.on_progress,
    )
    # Made and kept before the checkpoint: a skipped compositing has its poster.
    image = await poster(result.video_path, result.duration_s, brief, workdir, settings)
    await run.artifacts.keep(image)
    if run.previews is not None:
        width, height = brief.resolution
        await run.previews.preview("poster", None, {"width": width, "height": height})
    cut = compositing.follow_narration(script, voice, float(brief.duration_s))
    starts = [0.0, *accumulate(scene.duration_s for scene in cut.scenes)][:-1]
    return {**compositing.to_output(result), "scene_starts_s": [round(s, 3) for s in starts]}


async def _thumbnail(
    clip: Clip,
    script: Script,
    index: int,
    brief: Brief,
    workdir: Path,
    settings: Settings,
    artifacts: Artifacts,
    previews: Previews | None,
) -> None:
    """A scene's thumbnail from its clip, kept, then previewed. One FFmpeg cannot take is
    left out (logged): compositing then reports what is wrong with the clip."""
    try:
        path = await thumbnail(clip.path, script.scenes[index], index, brief, workdir, settings)
    except FFmpegError as exc:
        log.warning("thumbnail_failed", scene=index, error=str(exc))
        return
    await artifacts.keep(path)
    if previews is not None:
        width, height = thumbnail_size(brief)
        await previews.preview("thumbnail", index, {"width": width, "height": height})
