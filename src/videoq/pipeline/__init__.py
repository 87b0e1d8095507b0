"""The pipeline: four stages that turn a :class:`~videoq.types.Brief` into an MP4. Pure: it
imports only the vocabulary, the providers it is given and FFmpeg, so ``videoq render
--offline`` runs it with no Redis or PostgreSQL; the worker wraps it with checkpoints in
PostgreSQL and progress events in Redis.

Progress is overall, 0–100: ``script_gen`` 0–25, ``voice_gen`` 25–50, ``video_gen`` 50–75,
``compositing`` 75–100. ``voice_gen`` and ``video_gen`` need only the script, so when both
must run they run at once (:data:`TOGETHER`): each then adds its share (25 points) to the
overall progress as it goes, from 25 to 75, and the job's critical path is script + the longer
of voice and video + compositing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import structlog

from videoq import tracing
from videoq.errors import OverBudget, PermanentError, RetryableError
from videoq.pipeline import compositing, script_gen, stages, video_gen, voice_gen
from videoq.pipeline.previews import Previews, storyboard
from videoq.pipeline.spending import Spend, Unmetered
from videoq.pipeline.versions import VersionCheckpoints, VersionSpend
from videoq.providers import Providers
from videoq.settings import Settings
from videoq.types import STAGE_RANGES, STAGES, Brief, Result, Script, version_dir
from videoq.versions import Rerender

__all__ = [
    "STAGES",
    "STAGE_RANGES",
    "TOGETHER",
    "Artifacts",
    "Checkpoints",
    "MemoryCheckpoints",
    "Previews",
    "Reporter",
    "Rerender",
    "ScratchOnly",
    "Spend",
    "Unmetered",
    "run_pipeline",
]

log = structlog.get_logger(__name__)

#: The stages whose outputs each stage consumes: when one of them runs again, so does it.
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "script_gen": (),
    "voice_gen": ("script_gen",),
    "video_gen": ("script_gen",),
    "compositing": ("script_gen", "voice_gen", "video_gen"),
}


#: Stages that run at once when both must run: each needs only the script.
TOGETHER = ("voice_gen", "video_gen")


class Checkpoints(Protocol):
    """Where each stage's outputs are recorded as the next stage starts, and where a stage
    notes paid work in progress (a Replicate prediction id) before it waits for it."""

    async def load(self, stage: str) -> dict[str, Any] | None:
        """The recorded outputs of a completed stage, or None."""

    async def save(self, stage: str, output: dict[str, Any]) -> None:
        """Record a completed stage's outputs (JSON-serializable). May return before they are
        stored (the worker's checkpoints land while the next stage runs, and are all waited for
        before the job's outcome); raises if an earlier save of this attempt was refused."""

    async def note(self, stage: str, key: str, value: dict[str, Any] | None) -> None:
        """Durably record one piece of a stage's work in progress under ``key`` (merged with
        the other keys; None removes it). Concurrent notes of one stage must not lose each
        other."""

    async def notes(self, stage: str) -> dict[str, dict[str, Any]]:
        """Everything :meth:`note` recorded for ``stage`` (an empty dict when nothing)."""


class Artifacts(Protocol):
    """Where a job's files outlive its work directory (the worker's: the artifact store). A
    stage's files are kept before its checkpoint is recorded, and fetched back when a resumed
    job's work directory lacks them (another worker made them, or the disk was lost)."""

    async def keep(self, path: Path) -> None:
        """Keep ``path``, a file of the work directory."""

    async def fetch(self, path: Path) -> bool:
        """Make sure ``path`` is in the work directory; False when it cannot be had."""


class ScratchOnly:
    """:class:`Artifacts` that are the work directory itself: for ``videoq render`` and tests."""

    async def keep(self, path: Path) -> None:
        pass

    async def fetch(self, path: Path) -> bool:
        return await asyncio.to_thread(path.is_file)


class Reporter(Protocol):
    """Receives progress: ``stage`` is the current stage, ``progress`` the overall 0–100."""

    async def __call__(self, stage: str, progress: float, message: str | None = None) -> None: ...


class MemoryCheckpoints:
    """Checkpoints kept in a dict: for ``videoq render --offline`` and tests."""

    def __init__(self) -> None:
        self.outputs: dict[str, dict[str, Any]] = {}
        self.in_progress: dict[str, dict[str, dict[str, Any]]] = {}

    async def load(self, stage: str) -> dict[str, Any] | None:
        return self.outputs.get(stage)

    async def save(self, stage: str, output: dict[str, Any]) -> None:
        self.outputs[stage] = output

    async def note(self, stage: str, key: str, value: dict[str, Any] | None) -> None:
        entries = self.in_progress.setdefault(stage, {})
        if value is None:
            entries.pop(key, None)
        else:
            entries[key] = dict(value)

    async def notes(self, stage: str) -> dict[str, dict[str, Any]]:
        return {key: dict(value) for key, value in self.in_progress.get(stage, {}).items()}


class _Progress:
    """Forwards progress to a :class:`Reporter`, never letting it go backwards."""

    def __init__(self, report: Reporter) -> None:
        self._report = report
        self._last = 0.0

    async def __call__(self, stage: str, progress: float, message: str | None = None) -> None:
        self._last = max(self._last, min(100.0, progress))
        await self._report(stage, self._last, message)

    def within(self, stage: str) -> Callable[[float], Awaitable[None]]:
        """A callback mapping a stage's own fraction done (0–1) onto its overall range."""
        low, high = STAGE_RANGES[stage]

        async def on_progress(fraction: float) -> None:
            await self(stage, low + (high - low) * fraction)

        return on_progress

    def telling(self, stage: str) -> Callable[[str], Awaitable[None]]:
        """A callback passing a stage's message on, at the progress reached."""

        async def on_message(message: str) -> None:
            await self(stage, self._last, message)

        return on_message


@asynccontextmanager
async def _deadline(stage: str, timeout_s: float) -> AsyncIterator[None]:
    """Limit a stage to ``timeout_s``; running out is worth a retry, like any other timeout."""
    deadline = asyncio.timeout(timeout_s)
    try:
        async with deadline:
            yield
    except TimeoutError as exc:
        if not deadline.expired():
            raise  # a provider's own timeout, not ours
        raise RetryableError(
            f"stage {stage} timed out after {timeout_s} s", code="timeout"
        ) from exc


def _rebased(value: Any, workdir: Path) -> Any:
    """A checkpoint's paths, moved into ``workdir``: an earlier attempt may have run on another
    worker, whose work directory for the job (named after the job, as this one) was elsewhere."""
    if isinstance(value, str):
        _, found, rest = value.partition(f"/{workdir.name}/")
        return str(workdir / rest) if found and value.startswith("/") else value
    if isinstance(value, dict):
        return {key: _rebased(item, workdir) for key, item in value.items()}
    if isinstance(value, list):
        return [_rebased(item, workdir) for item in value]
    return value


async def _load_valid(
    checkpoints: Checkpoints, stage: str, workdir: Path, artifacts: Artifacts
) -> dict[str, Any] | None:
    """The stage's checkpoint, if it exists, parses, and every file it refers to is in the work
    directory (fetched from the artifact store when it is not)."""
    output = await checkpoints.load(stage)
    if output is None:
        return None
    output = _rebased(output, workdir)
    try:
        paths = _files(stage, output)
    except (KeyError, TypeError, ValueError):
        return None  # written by an incompatible version: cheaper to redo than to fail the job
    fetched = await asyncio.gather(*(artifacts.fetch(path) for path in paths))
    return output if all(fetched) else None


#: What files each stage's checkpointed output refers to.
_FILES: dict[str, Callable[[dict[str, Any]], list[Path]]] = {
    "script_gen": script_gen.artifacts,
    "voice_gen": voice_gen.artifacts,
    "video_gen": video_gen.artifacts,
    "compositing": compositing.artifacts,
}


def _files(stage: str, output: dict[str, Any]) -> list[Path]:
    """The files a stage's output refers to."""
    return _FILES[stage](output)


async def run_pipeline(
    brief: Brief,
    *,
    settings: Settings,
    workdir: Path,
    checkpoints: Checkpoints,
    report: Reporter,
    providers: Providers,
    artifacts: Artifacts | None = None,
    spend: Spend | None = None,
    previews: Previews | None = None,
    rerender: Rerender | None = None,
) -> Result:
    """Run the four stages in order and return the finished video, ``workdir/video.mp4``.

    A stage whose checkpoint is recorded (and whose files still exist) is skipped, unless a
    stage it depends on had to run again. Each completed stage is saved to ``checkpoints``
    before the next starts. ``report`` receives ``started`` / ``completed`` / ``skipped`` at
    the stage boundaries, non-decreasing progress in between, and what a stage tells (a scene
    switched to another video model) as a message at the progress reached. Each stage is
    limited to ``settings.stage_timeout_s`` (then :class:`RetryableError`); provider and FFmpeg
    errors propagate unchanged.

    ``artifacts`` keeps each stage's files before its checkpoint is saved, and fetches them
    back for a stage that is skipped (default: they stay in ``workdir``). ``providers`` serve
    the stages (the worker chooses them with the job's settings; a job's
    ``options`` may force offline). What each stage cost is in :attr:`Result.cost` and logged.
    Each paid call is reserved with ``spend`` before it is made and settled after (default:
    unmetered); a budget that cannot cover one raises :class:`~videoq.errors.OverBudget`.

    ``previews`` receives the storyboard once the script is written, each scene's thumbnail
    (kept in ``artifacts`` first) as its clip lands, and the poster of the finished video
    (:mod:`~videoq.pipeline.previews`); a stage skipped from its checkpoint previews nothing
    again.

    With ``rerender`` the run makes that version of the video from the version before it,
    re-buying only what the re-render changed (:func:`~videoq.pipeline.stages.rerun_stage`),
    into ``workdir/v<N>/``, with the version's own checkpoints and purchase keys
    (:mod:`~videoq.pipeline.versions`): it resumes after a crash as any run does.
    """
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    kept: Artifacts = artifacts or ScratchOnly()
    progress = _Progress(report)
    outputs: dict[str, dict[str, Any]] = {}
    ran: set[str] = set()
    metered: Spend = spend or Unmetered()
    out = workdir
    earlier: stages.Earlier | None = None
    if rerender is not None:
        earlier = _earlier(checkpoints, rerender.version - 1, workdir, kept)
        checkpoints = VersionCheckpoints(checkpoints, rerender.version)
        metered = VersionSpend(metered, rerender.version)
        out = workdir / version_dir(rerender.version).rstrip("/")
        await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)

    async def run(stage: str, on_progress: Callable[[float], Awaitable[None]]) -> None:
        with tracing.span(f"stage {stage}", {"videoq.stage": stage}):
            await run_stage(stage, on_progress)

    async def run_stage(stage: str, on_progress: Callable[[float], Awaitable[None]]) -> None:
        stage_run = stages.StageRun(
            settings=settings, workdir=out, providers=providers, checkpoints=checkpoints,
            artifacts=kept, spend=metered, on_progress=on_progress,
            on_message=progress.telling(stage), previews=previews,
        )  # fmt: skip
        async with _deadline(stage, settings.stage_timeout_s):
            output = await _make(stage, brief, outputs, rerender, earlier, stage_run)
        await asyncio.gather(*(kept.keep(path) for path in _files(stage, output)))
        await checkpoints.save(stage, output)
        if output.get("cost"):
            log.info("stage_cost_recorded", stage=stage, cost=output["cost"])
        outputs[stage] = output
        if previews is not None and stage == "script_gen":
            script = Script.from_dict(output)
            await previews.preview(
                "storyboard", None, {"title": script.title, "scenes": storyboard(script)}
            )

    async def saved_for(stage: str) -> dict[str, Any] | None:
        """The stage's checkpoint, when it still holds (nothing it depends on ran again)."""
        if ran.intersection(STAGE_INPUTS[stage]):
            return None
        return await _load_valid(checkpoints, stage, workdir, kept)

    for stage in STAGES:
        if stage in outputs:
            continue
        saved = await saved_for(stage)
        if saved is not None:
            outputs[stage] = saved
            await progress(stage, STAGE_RANGES[stage][1], "skipped")
            continue
        if stage == TOGETHER[0]:
            partner = await saved_for(TOGETHER[1])
            if partner is None:
                ran.update(TOGETHER)
                await _together(run, progress)
                continue
        ran.add(stage)
        await progress(stage, STAGE_RANGES[stage][0], "started")
        await run(stage, progress.within(stage))
        await progress(stage, STAGE_RANGES[stage][1], "completed")
    final = compositing.from_output(outputs["compositing"])
    # Stages may record what they cost (live providers); offline stages record nothing.
    cost = {
        stage: out["cost"] for stage, out in outputs.items() if isinstance(out.get("cost"), dict)
    }
    return Result(
        final.video_path, final.duration_s, final.size_bytes, cost=cost,
        captions_path=final.captions_path,
    )  # fmt: skip


async def _make(
    stage: str,
    brief: Brief,
    outputs: dict[str, dict[str, Any]],
    rerender: Rerender | None,
    earlier: stages.Earlier | None,
    run: stages.StageRun,
) -> dict[str, Any]:
    """The stage's outputs: made anew, or, in a re-render, from the version before."""
    if rerender is None:
        return await stages.run_stage(stage, brief, outputs, run)
    assert earlier is not None
    return await stages.rerun_stage(stage, brief, rerender, outputs, earlier, run)


def _earlier(
    checkpoints: Checkpoints, version: int, workdir: Path, artifacts: Artifacts
) -> stages.Earlier:
    """What each stage made in ``version`` (the one a re-render starts from)."""
    made = VersionCheckpoints(checkpoints, version)

    async def earlier(stage: str) -> dict[str, Any]:
        found = await _load_valid(made, stage, workdir, artifacts)
        if found is None:
            raise PermanentError(
                f"the {stage} outputs of version {version} are gone", code="version_lost"
            )
        return found

    return earlier


async def _together(
    run: Callable[[str, Callable[[float], Awaitable[None]]], Awaitable[None]],
    progress: _Progress,
) -> None:
    """Run :data:`TOGETHER`'s stages at once, each adding its share of their range (25 points
    each, from 25 to 75) to the overall progress as it goes. If one fails the other is
    cancelled (its paid work stays noted, for the next attempt), and that one's error
    propagates, a permanent one first; one the budget cannot cover lets the other finish, and
    then :class:`~videoq.errors.OverBudget` propagates."""
    low = STAGE_RANGES[TOGETHER[0]][0]
    shares = {stage: STAGE_RANGES[stage][1] - STAGE_RANGES[stage][0] for stage in TOGETHER}
    done = dict.fromkeys(TOGETHER, 0.0)

    def overall() -> float:
        return low + sum(shares[stage] * done[stage] for stage in TOGETHER)

    refused: list[OverBudget] = []

    async def one(stage: str) -> None:
        async def on_progress(fraction: float) -> None:
            done[stage] = max(done[stage], min(1.0, fraction))
            await progress(stage, overall())

        try:
            await run(stage, on_progress)
        except OverBudget as exc:  # the other goes on: what it reserved is paid for
            refused.append(exc)
            return
        done[stage] = 1.0
        await progress(stage, overall(), "completed")

    for stage in TOGETHER:
        await progress(stage, low, "started")
    try:
        async with asyncio.TaskGroup() as group:
            for stage in TOGETHER:
                group.create_task(one(stage))
    except ExceptionGroup as failed:
        raise video_gen.first_error(failed) from None
    if refused:
        raise refused[0]
