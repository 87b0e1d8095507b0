"""Providers: who writes the script, speaks it and films it. One Protocol per kind, so a stage
can use a live API client or the offline (deterministic, no network) implementation. What they
make (:class:`~videoq.types.Script`, :class:`~videoq.types.VoiceTrack`,
:class:`~videoq.types.Clip`) is :mod:`videoq.types`' vocabulary.

Which provider serves a stage (DESIGN.md): the live one when its key is set, the offline one
otherwise, and offline everywhere when ``settings.providers == "offline"``. Live clients are
opened once per process (a :class:`ProviderPool`) and shared by every job;
:meth:`ProviderPool.for_settings` picks each job's providers with that job's settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from videoq.providers.limits import Limiter, LocalLimiter
from videoq.settings import Settings
from videoq.types import Brief, Clip, Scene, Script, VoiceTrack

if TYPE_CHECKING:  # the clients' modules are loaded only where a key is set
    import anthropic
    import httpx
    import httpx2

    from videoq.providers.briefs import BriefWriter
    from videoq.providers.http import RetryPolicy
    from videoq.providers.replicate import PredictionSweep

__all__ = [
    "LIVE",
    "PaidWork",
    "PredictionWatch",
    "ProviderPool",
    "Providers",
    "ResumableVideoProvider",
    "ResumableVoiceProvider",
    "ScriptProvider",
    "Transports",
    "VideoProvider",
    "VoiceProvider",
    "offline_providers",
]

#: The live providers, by the name their limits and cost records use.
LIVE = ("anthropic", "elevenlabs", "replicate")


class ScriptProvider(Protocol):
    """Writes the script for a brief."""

    async def write_script(self, brief: Brief) -> Script:
        """A script whose scene durations sum to ``brief.duration_s``."""
        ...


class VoiceProvider(Protocol):
    """Speaks a script."""

    async def speak(self, script: Script, brief: Brief, out_dir: Path) -> VoiceTrack:
        """An audio file in ``out_dir`` with the narration of every scene."""
        ...


class VideoProvider(Protocol):
    """Films one scene. The pipeline calls it for all scenes concurrently."""

    async def render_scene(self, scene: Scene, index: int, brief: Brief, out_dir: Path) -> Path:
        """A video file in ``out_dir`` for ``scene`` (any size or rate; audio is ignored)."""
        ...


@runtime_checkable
class Billed(Protocol):
    """A provider that charges for its calls (the live ones say so with ``paid = True``): the
    pipeline reserves each call against the tenant's budget before it is made."""

    paid: bool


@dataclass(frozen=True)
class PaidWork:
    """One scene's purchase as the ``video_gen`` stage keeps it: what earlier attempts noted
    of it (in PostgreSQL, through :meth:`~videoq.pipeline.Checkpoints.note`) and how to note
    more. A provider notes that it is about to buy (``{"since": …}``) before its create
    request, and the work's id the moment the answer names it; whatever it notes is merged
    into the scene's note and must be durable when ``note`` returns."""

    #: What earlier attempts noted for this scene (empty when nothing, or when the scene's
    #: inputs changed since).
    previous: Mapping[str, Any]
    #: Work ids other scenes of the job hold: never this scene's.
    claimed: frozenset[str]
    note: Callable[[dict[str, Any]], Awaitable[None]]


@runtime_checkable
class ResumableVideoProvider(Protocol):
    """A video provider whose scenes are paid work that outlives this process (Replicate
    predictions). Each scene's work is noted durably before it is bought and as soon as it
    exists, so a retried, recovered or redeployed job re-attaches to it instead of paying
    again; and work still running for a job that failed or was cancelled is stopped at the
    provider (:meth:`cancel_work`).

    Each one buys from one model: a stage may hold several, in order, and switch to the next
    when one declines a scene (:class:`~videoq.errors.Declined`, ``video_gen``)."""

    #: The model its scenes are bought from, as its cost records and prices name it.
    model: str

    def usage(self, scene: Scene) -> dict[str, Any]:
        """The scene's purchase as priced before it is made (its cost record without what only
        the outcome tells): what the stage reserves, and holds against a price cap."""
        ...

    def work_fingerprint(self, scene: Scene, index: int, brief: Brief) -> str:
        """A digest of everything the paid work depends on: noted work is re-attached only
        while the fingerprint still matches (a rewritten script must not reuse old clips)."""
        ...

    async def render_clip(
        self, scene: Scene, index: int, brief: Brief, out_dir: Path, *, work: PaidWork
    ) -> Clip:
        """The scene's clip in ``out_dir``: from the work ``work.previous`` names when it can
        still deliver, from work an earlier attempt bought but never heard of (its note says
        it was about to buy), or else from new work, noted through ``work.note``. Raises
        :class:`~videoq.errors.Declined` when the model would not take new work and none of
        it was bought."""
        ...

    async def cancel_work(self, work_ids: list[str]) -> None:
        """Stop these works at the provider, if they still run (best effort, never raises)."""
        ...


@runtime_checkable
class ResumableVoiceProvider(Protocol):
    """A voice provider whose track is paid work an earlier attempt may have bought unheard
    (ElevenLabs keeps it in the account's history): ``voice_gen`` notes each purchase through
    ``work`` before it is made, and a later attempt finds it instead of paying again."""

    def work_fingerprint(self, script: Script, brief: Brief) -> str:
        """A digest of everything the track depends on: a note counts only while it matches."""
        ...

    async def speak_once(
        self, script: Script, brief: Brief, out_dir: Path, *, work: PaidWork
    ) -> VoiceTrack:
        """The track in ``out_dir``: the one ``work.previous`` says was being bought, when the
        provider still has it, or else a new one, noted through ``work.note`` first."""
        ...


class PredictionWatch(Protocol):
    """Word, in this process, that a Replicate prediction may have ended (a verified webhook
    reported on it). The worker injects one fed by Redis
    (:class:`videoq.broker.inbound.PredictionWatcher`); without one, predictions are polled."""

    def expect(self, prediction_id: str) -> contextlib.AbstractContextManager[asyncio.Event]:
        """An event set whenever ``prediction_id`` is announced while the block runs (never
        for an announcement before it began)."""
        ...


def concurrency(settings: Settings, provider: str) -> int:
    """How many calls to a live provider may be in flight at once, across all workers."""
    limit: int = getattr(settings, f"{provider}_concurrency")
    return limit


@dataclass(frozen=True)
class Providers:
    """The provider chosen for each stage."""

    script: ScriptProvider
    voice: VoiceProvider
    video: VideoProvider
    #: Where ``video`` (a resumable one) switches to, in order, for a scene it declined.
    video_fallbacks: tuple[ResumableVideoProvider, ...] = ()


def offline_providers(settings: Settings) -> Providers:
    """The deterministic, network-free providers for every stage."""
    # Imported here because the offline module imports this one for its Protocols.
    from videoq.providers.offline import (
        OfflineScriptProvider,
        OfflineVideoProvider,
        OfflineVoiceProvider,
    )

    return Providers(
        script=OfflineScriptProvider(),
        voice=OfflineVoiceProvider(settings),
        video=OfflineVideoProvider(settings),
    )


@dataclass(frozen=True)
class Transports:
    """Injectable HTTP transports for the live clients (tests, mocks, benchmarks)."""

    anthropic: httpx2.AsyncBaseTransport | None = None
    elevenlabs: httpx.AsyncBaseTransport | None = None
    replicate: httpx.AsyncBaseTransport | None = None


class ProviderPool:
    """The live clients of one process and their shared concurrency limits.

    Opened once per process (``async with ProviderPool(...)``, or :meth:`aclose` at shutdown)
    and shared by every job; :meth:`for_settings` gives a job its providers. ``limiters``
    holds each live provider's concurrency limit by name: the worker injects ones shared by
    every worker through Redis (:func:`videoq.broker.limits.shared`); a name missing gets a
    :class:`~videoq.providers.limits.LocalLimiter`, for this process only. ``watch`` wakes a
    stage waiting on a Replicate prediction when its webhook comes (the worker injects one
    fed by Redis; without it, predictions are polled); with it, the pool's one
    :class:`~videoq.providers.replicate.PredictionSweep` stands in for each waiter's slow
    poll. ``sleep`` and ``rng`` feed the retry policy (tests inject them).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        limiters: Mapping[str, Limiter] | None = None,
        transports: Transports | None = None,
        watch: PredictionWatch | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.watch = watch
        self._sleep = sleep
        self._rng = rng or random.Random()
        transports = transports or Transports()
        live = settings.providers != "offline"
        self.anthropic: anthropic.AsyncAnthropic | None = None
        self.elevenlabs: httpx.AsyncClient | None = None
        self.replicate: httpx.AsyncClient | None = None
        self.sweep: PredictionSweep | None = None
        if live and settings.anthropic_api_key is not None:
            from videoq.providers import anthropic as anthropic_provider

            self.anthropic = anthropic_provider.make_client(settings, transports.anthropic)
        if live and settings.elevenlabs_api_key is not None:
            from videoq.providers import elevenlabs

            self.elevenlabs = elevenlabs.make_client(settings, transports.elevenlabs)
        if live and settings.replicate_api_token is not None:
            from videoq.providers import replicate

            self.replicate = replicate.make_client(settings, transports.replicate)
            if watch is not None and settings.replicate_webhook_url:
                api = replicate.ReplicateAPI(self.replicate, settings, self.policy(settings))
                self.sweep = replicate.PredictionSweep(api, settings.replicate_webhook_poll_s)
        given = limiters or {}
        self.limiters: dict[str, Limiter] = {
            name: given.get(name) or LocalLimiter(concurrency(settings, name)) for name in LIVE
        }

    @property
    def live(self) -> tuple[str, ...]:
        """The providers with a live client in this pool."""
        return tuple(name for name in LIVE if getattr(self, name) is not None)

    def policy(self, settings: Settings) -> RetryPolicy:
        """The retry policy for a job with ``settings``."""
        from videoq.providers.http import RetryPolicy

        return RetryPolicy.from_settings(settings, sleep=self._sleep, rng=self._rng)

    def for_settings(self, settings: Settings) -> Providers:
        """A job's providers: live where this pool has a client, unless the job (or the
        process) asks for ``providers="offline"``."""
        offline = offline_providers(settings)
        if settings.providers == "offline":
            return offline
        policy = self.policy(settings)
        script: ScriptProvider = offline.script
        voice: VoiceProvider = offline.voice
        video: VideoProvider = offline.video
        fallbacks: tuple[ResumableVideoProvider, ...] = ()
        if self.anthropic is not None:
            from videoq.providers.anthropic import AnthropicScriptProvider

            script = AnthropicScriptProvider(
                self.anthropic, settings, limiter=self.limiters["anthropic"], policy=policy
            )
        if self.elevenlabs is not None:
            from videoq.providers.elevenlabs import ElevenLabsVoiceProvider

            voice = ElevenLabsVoiceProvider(
                self.elevenlabs, settings, limiter=self.limiters["elevenlabs"], policy=policy
            )
        if self.replicate is not None:
            from videoq.providers.replicate import ReplicateVideoProvider

            client = self.replicate
            first, *rest = [
                ReplicateVideoProvider(
                    client, settings, model=model, limiter=self.limiters["replicate"],
                    policy=policy, watch=self.watch, sweep=self.sweep,
                )
                for model in settings.replicate_models
            ]  # fmt: skip
            video, fallbacks = first, tuple(rest)
        return Providers(script=script, voice=voice, video=video, video_fallbacks=fallbacks)

    def briefs(self, settings: Settings) -> BriefWriter:
        """The writer of new briefs for users' feeds: Claude where this pool has a client
        (unless ``providers="offline"``), else the offline template."""
        from videoq.providers.anthropic import AnthropicBriefWriter
        from videoq.providers.briefs import OfflineBriefWriter

        if self.anthropic is None or settings.providers == "offline":
            return OfflineBriefWriter()
        return AnthropicBriefWriter(
            self.anthropic, settings, limiter=self.limiters["anthropic"],
            policy=self.policy(settings),
        )  # fmt: skip

    async def aclose(self) -> None:
        """Close the live clients (idempotent)."""
        if self.sweep is not None:
            await self.sweep.aclose()
            self.sweep = None
        if self.anthropic is not None:
            await self.anthropic.close()
        for client in (self.elevenlabs, self.replicate):
            if client is not None:
                await client.aclose()
        self.anthropic = self.elevenlabs = self.replicate = None

    async def __aenter__(self) -> ProviderPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
