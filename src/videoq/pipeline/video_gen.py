"""Stage 3, ``video_gen`` (progress 50–75): one clip per scene, all scenes at once.

With a :class:`~videoq.providers.ResumableVideoProvider` (Replicate) every scene's paid work
is noted in the checkpoints under ``scene_NN``, with the fingerprint of its inputs: that it is
about to be bought, its id as soon as it exists, and the clip once it is kept in the artifact
store. A later run of the stage (a retry, a worker killed mid-stage, a redeploy, on any worker)
takes a kept clip back from the store, or re-attaches to the noted work, instead of paying for
the same clip again; only notes whose fingerprint still matches count.

Failover: a resumable provider may come with ``fallbacks``, one per model, tried in order
(``replicate_model``, then ``replicate_fallback_models``). A scene is bought on the first model
whose price for it is within ``max_cost_per_scene_usd`` and that has not declined a scene in
this run; when that model declines it (:class:`~videoq.errors.Declined`: capacity, 5xx or
timeouts past its own retries, and nothing bought), its reservation is released and the scene
moves to the next model at once, as do the scenes that come to the declined model later. Each
switch is noted with the scene (each model's work has its own fingerprint, so an attempt after
a crash goes back to the model its note names, and never re-attaches one model's work as
another's), logged (``video_model_switched``), passed to ``on_message`` (a ``progress`` event
on a worker) and kept in the stage's cost (``failover``). A scene no model within the cap can
film fails with ``no_provider``; one every model declined fails with the last decline
(retryable: the job's next attempt starts from the first model again).

The chain is walked here, not inside a provider, because each switch changes what is
reserved against the tenant's budget (:mod:`~videoq.pipeline.spending`) and what the scene's
note says, and both belong to the stage: the providers' layer may import neither.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from videoq import prices
from videoq.errors import Declined, OverBudget, PermanentError, RetryableError
from videoq.pipeline.spending import Spend, Unmetered, paid, paid_call
from videoq.providers import PaidWork, ResumableVideoProvider, VideoProvider
from videoq.types import Clip, Scene, Script
from videoq.versions import scene_key

if TYPE_CHECKING:
    from videoq.ffmpeg import ProgressCallback
    from videoq.pipeline import Artifacts, Checkpoints
    from videoq.settings import Settings
    from videoq.types import Brief

log = structlog.get_logger(__name__)

STAGE = "video_gen"


def note_key(index: int) -> str:
    """The checkpoint note under which a scene's paid work is recorded."""
    return f"scene_{index:02d}"


def purchase_key(index: int) -> str:
    """The key under which a scene's purchase is reserved against the budget."""
    return scene_key(index)


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
    fallbacks: Sequence[ResumableVideoProvider] = (),
    on_message: Callable[[str], Awaitable[None]] | None = None,
    on_clip: Callable[[int, Clip], Awaitable[None]] | None = None,
    only: Sequence[int] | None = None,
) -> list[Clip]:
    """Render every scene (or the scenes ``only`` names, in its order: a re-render's)
    concurrently; ``on_progress`` gets the fraction of clips finished,
    ``on_message`` each switch of a scene to one of the ``fallbacks`` (the models a resumable
    ``provider`` hands a scene to, in order, when it declines it), ``on_clip`` each scene's
    clip as it lands (bought, or found kept by an earlier attempt).

    If one scene fails the others are cancelled and that scene's own error propagates (a
    permanent one before a retryable one, when several failed): their noted work stays noted,
    for the next attempt to re-attach to, or for the worker to cancel when the job fails. A
    scene the budget cannot cover cancels nothing: the others finish (each clip kept), and
    then :class:`~videoq.errors.OverBudget` propagates.
    """
    indices = list(range(len(script.scenes)) if only is None else only)
    total = len(indices)
    finished = 0
    noted = await checkpoints.notes(STAGE) if checkpoints is not None else {}
    metered = spend or Unmetered()
    purchases = None
    if isinstance(provider, ResumableVideoProvider) and checkpoints is not None:
        purchases = _Purchases(
            [provider, *fallbacks], brief, workdir, checkpoints, artifacts, noted, settings,
            metered, on_message,
        )  # fmt: skip

    async def render(index: int) -> Clip:
        nonlocal finished
        scene = script.scenes[index]
        if purchases is not None:
            clip = await purchases.clip(scene, index)
        elif paid(provider) and settings is not None:
            clip = await paid_call(
                metered, STAGE, purchase_key(index), prices.scene_usage(settings, scene),
                lambda: _clip(provider, index, brief, script, workdir), lambda c: c.cost,
            )  # fmt: skip
        else:
            clip = await _clip(provider, index, brief, script, workdir)
        if on_clip is not None:
            await on_clip(index, clip)
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
            tasks = [group.create_task(render_or_wait(i)) for i in indices]
    except ExceptionGroup as failed:
        raise first_error(failed) from None
    if refused:
        raise refused[0]
    return [clip for task in tasks if (clip := task.result()) is not None]


@dataclass
class _Purchases:
    """What the scenes' purchases in one run of the stage share: the models to buy from, in
    order, where purchases are noted and reserved, and which models declined a scene in this
    run (by their place in ``options``): a scene that comes to one of those later passes it."""

    options: list[ResumableVideoProvider]
    brief: Brief
    workdir: Path
    checkpoints: Checkpoints
    artifacts: Artifacts | None
    noted: dict[str, dict[str, Any]]
    settings: Settings | None
    spend: Spend
    tell: Callable[[str], Awaitable[None]] | None
    declined: dict[int, Declined] = field(default_factory=dict)

    async def clip(self, scene: Scene, index: int) -> Clip:
        """One scene's clip: the one kept in the artifact store, else from the first model
        that delivers, going down the chain from the one the scene's note names (each
        purchase noted at every step and reserved against the budget before it is made)."""
        prints = [option.work_fingerprint(scene, index, self.brief) for option in self.options]
        previous = self.noted.get(note_key(index)) or {}
        if previous.get("fingerprint") not in prints:
            previous = {}
        kept = previous.get("clip")
        if (
            self.artifacts is not None
            and isinstance(kept, str)
            and await self.artifacts.fetch(self.workdir / kept)
        ):
            work_id, cost, made = (previous.get(k) for k in ("id", "cost", "failover"))
            return Clip(
                path=self.workdir / kept,
                cost=cost if isinstance(cost, dict) else {},
                work_id=work_id if isinstance(work_id, str) else None,
                failover=made if isinstance(made, list) else [],
            )
        return await self._bought(scene, index, prints, previous)

    async def _bought(
        self, scene: Scene, index: int, prints: list[str], previous: dict[str, Any]
    ) -> Clip:
        """The scene bought on the first model, from the noted one on, that is within the
        cap, has not declined in this run and takes it; each switch noted and announced."""
        key = note_key(index)
        noted_at = prints.index(previous["fingerprint"]) if previous else 0
        # Work bought (or about to be) on the noted model is gone back to, whatever happened.
        under_way = bool(previous.get("id") or previous.get("since"))
        claimed = frozenset(
            str(n["id"]) for name, n in self.noted.items() if name != key and n.get("id")
        )
        switches: list[dict[str, str]] = list(previous.get("failover") or [])
        skipped: list[tuple[Decimal, str]] = []
        failure: Declined | None = None
        came_from = ""
        for position in range(noted_at, len(self.options)):
            option = self.options[position]
            if not (under_way and position == noted_at):
                price = self._over_cap(option, scene)
                if price is not None:
                    skipped.append((price, option.model))
                    continue
                if position in self.declined:
                    failure, came_from = _again(self.declined[position]), option.model
                    continue
            earlier = previous if position == noted_at else {}
            current = {**earlier, "fingerprint": prints[position], "model": option.model}
            if failure is not None:
                switches.append({"from": came_from, "to": option.model, "error": failure.code})
            if switches:
                current["failover"] = list(switches)
            if failure is not None:
                # On record before anything is bought there: an attempt after a crash resumes
                # on this model, with the switch.
                await self.checkpoints.note(STAGE, key, dict(current))
                await self._announce(index, switches[-1])
            try:
                clip = await self._buy(option, scene, index, earlier, current, claimed)
            except Declined as exc:
                self.declined.setdefault(position, exc)
                failure, came_from = exc, option.model
                continue
            return dataclasses.replace(clip, failover=switches)
        if failure is not None and not skipped:
            raise failure
        raise self._no_provider(index, skipped, failure, came_from) from failure

    def _over_cap(self, option: ResumableVideoProvider, scene: Scene) -> Decimal | None:
        """What a scene on ``option`` is reserved at, when that is more than
        ``max_cost_per_scene_usd`` (else None)."""
        cap = self.settings.max_cost_per_scene_usd if self.settings is not None else None
        if cap is None or self.settings is None:
            return None
        price = prices.reservation(self.settings, option.usage(scene))
        return price if price > cap else None

    async def _buy(
        self,
        option: ResumableVideoProvider,
        scene: Scene,
        index: int,
        previous: dict[str, Any],
        current: dict[str, Any],
        claimed: frozenset[str],
    ) -> Clip:
        """The scene's clip from ``option``, reserved first and settled after; ``previous``
        is what earlier attempts noted of this model's purchase, ``current`` the scene's note
        from now on."""
        key = note_key(index)

        async def note(update: dict[str, Any]) -> None:
            current.update(update)
            await self.checkpoints.note(STAGE, key, dict(current))

        work = PaidWork(previous, claimed, note)
        clip = await paid_call(
            self.spend, STAGE, purchase_key(index), option.usage(scene),
            lambda: option.render_clip(scene, index, self.brief, self.workdir, work=work),
            lambda c: c.cost,
        )  # fmt: skip
        if self.artifacts is not None:
            # Kept at once, not at the stage's end: a clip bought is never bought again, even
            # when the attempt dies before its siblings finish or after Replicate deleted it.
            await self.artifacts.keep(clip.path)
            await note({"clip": clip.path.name, "cost": clip.cost})
        return clip

    async def _announce(self, index: int, switch: dict[str, str]) -> None:
        log.warning(
            "video_model_switched", scene=index, from_model=switch["from"],
            to_model=switch["to"], error=switch["error"],
        )  # fmt: skip
        if self.tell is not None:
            await self.tell(
                f"scene {index}: switched from {switch['from']} to {switch['to']} "
                f"({switch['error']})"
            )

    def _no_provider(
        self,
        index: int,
        skipped: list[tuple[Decimal, str]],
        failure: Declined | None,
        came_from: str,
    ) -> PermanentError:
        """The error of a scene no model within ``max_cost_per_scene_usd`` could film."""
        assert self.settings is not None  # only a cap skips a model
        cap = self.settings.max_cost_per_scene_usd
        price, model = min(skipped)
        why = (
            f"{came_from} failed ({failure.code}) and the other video models cost"
            if failure is not None
            else "every video model costs"
        )
        return PermanentError(
            f"scene {index}: {why} more than max_cost_per_scene_usd (${cap}); the cheapest of "
            f"those, {model}, costs ${price.normalize():f}",
            code="no_provider",
        )


def _again(declined: Declined) -> Declined:
    """A model's decline, as another scene that passes the model raises it."""
    return Declined(declined.message, code=declined.code, retry_after_s=declined.retry_after_s)


def first_error(failed: ExceptionGroup[Exception]) -> Exception:
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
    """The checkpoint for a list of clips (with their cost and provider ids, if any, and the
    scenes' switches of model under ``cost.failover``)."""
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
        switches = [{"scene": i, **s} for i, clip in enumerate(clips) for s in clip.failover]
        if switches:
            cost["failover"] = switches
        output["cost"] = cost
    return output


def from_output(output: dict[str, Any]) -> list[Path]:
    """The clips recorded in a checkpoint."""
    return [Path(path) for path in output["clips"]]


def artifacts(output: dict[str, Any]) -> list[Path]:
    """Files a checkpointed output refers to: the clips."""
    return from_output(output)
