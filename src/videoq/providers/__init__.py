"""Providers: who writes the script, speaks it and films it. One Protocol per kind, so a stage
can use a live API client or the offline (deterministic, no network) implementation.

Stage outputs are checkpointed as JSON in PostgreSQL, so the value types here round-trip
through :meth:`to_dict` / :meth:`from_dict`.

Which provider serves a stage (DESIGN.md): the live one when its key is set, the offline one
otherwise, and offline everywhere when ``settings.providers == "offline"``. Live clients are
opened once per process by :func:`open_providers` (a :class:`ProviderPool`) and shared by every
job; :meth:`ProviderPool.for_settings` picks each job's providers with that job's settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # videoq.pipeline imports this package; only the annotation is needed here.
    import anthropic
    import httpx
    import httpx2

    from videoq.limits import Limiter
    from videoq.pipeline import Brief
    from videoq.providers.http import RetryPolicy
    from videoq.settings import Settings

#: The live providers, by the name their limits and cost records use.
LIVE = ("anthropic", "elevenlabs", "replicate")


@dataclass(frozen=True)
class Scene:
    """One shot: what the voice says, what the picture shows, and for how long."""

    narration: str
    visual_prompt: str
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        return {
            "narration": self.narration,
            "visual_prompt": self.visual_prompt,
            "duration_s": self.duration_s,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        """The inverse of :meth:`to_dict`."""
        return cls(
            narration=str(data["narration"]),
            visual_prompt=str(data["visual_prompt"]),
            duration_s=float(data["duration_s"]),
        )


@dataclass(frozen=True)
class Script:
    """The script: scenes whose durations add up to the brief's duration."""

    title: str
    scenes: list[Scene]
    #: What writing it cost (live providers: model, tokens, request id); empty offline.
    cost: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        """Total length of the scenes."""
        return sum(scene.duration_s for scene in self.scenes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        data: dict[str, Any] = {
            "title": self.title,
            "scenes": [scene.to_dict() for scene in self.scenes],
        }
        if self.cost:
            data["cost"] = self.cost
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Script:
        """The inverse of :meth:`to_dict`."""
        return cls(
            title=str(data["title"]),
            scenes=[Scene.from_dict(s) for s in data["scenes"]],
            cost=dict(data.get("cost") or {}),
        )


@dataclass(frozen=True)
class VoiceTrack:
    """The narration audio file and its length."""

    path: Path
    duration_s: float
    #: When each scene's narration starts in the audio (seconds), if the provider knows;
    #: compositing then cuts the picture where the voice moves on.
    scene_starts_s: tuple[float, ...] | None = None
    #: What speaking it cost (live providers: characters, request id); empty offline.
    cost: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        data: dict[str, Any] = {"path": str(self.path), "duration_s": self.duration_s}
        if self.scene_starts_s is not None:
            data["scene_starts_s"] = list(self.scene_starts_s)
        if self.cost:
            data["cost"] = self.cost
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VoiceTrack:
        """The inverse of :meth:`to_dict`."""
        starts = data.get("scene_starts_s")
        return cls(
            path=Path(data["path"]),
            duration_s=float(data["duration_s"]),
            scene_starts_s=tuple(float(s) for s in starts) if starts is not None else None,
            cost=dict(data.get("cost") or {}),
        )


@dataclass(frozen=True)
class Clip:
    """One scene's video file, with what it cost and the provider's id for the paid work."""

    path: Path
    cost: dict[str, Any] = field(default_factory=dict)
    work_id: str | None = None


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
class ResumableVideoProvider(Protocol):
    """A video provider whose scenes are paid work that outlives this process (Replicate
    predictions). The ``video_gen`` stage records each work id through
    :meth:`~videoq.pipeline.Checkpoints.note` as soon as it exists, so a retried, recovered or
    redeployed job re-attaches to it instead of paying again."""

    def work_fingerprint(self, scene: Scene, index: int, brief: Brief) -> str:
        """A digest of everything the paid work depends on: a recorded id is re-attached only
        while the fingerprint still matches (a rewritten script must not reuse old clips)."""
        ...

    async def render_clip(
        self,
        scene: Scene,
        index: int,
        brief: Brief,
        out_dir: Path,
        *,
        attach_to: str | None,
        on_submitted: Callable[[str], Awaitable[None]],
    ) -> Clip:
        """The scene's clip in ``out_dir``. With ``attach_to``, first re-attach to that work
        (when it is still running or has its output); otherwise, or when it is gone, start
        new work and await ``on_submitted(work_id)`` before waiting for it."""
        ...


@dataclass(frozen=True)
class Providers:
    """The provider chosen for each stage."""

    script: ScriptProvider
    voice: VoiceProvider
    video: VideoProvider


def offline_providers(settings: Settings) -> Providers:
    """The deterministic, network-free providers for every stage."""
    # Imported here because the offline module imports this one for its value types.
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

    Opened once per worker (``async with open_providers(...)`` or :meth:`aclose` at
    shutdown) and shared by every job; :meth:`for_settings` gives a job its providers. With
    ``redis`` the limits are :class:`~videoq.limits.RedisSemaphore` leases shared by all
    workers; without, they hold for this process only. ``sleep`` and ``rng`` feed the retry
    policy (tests inject them); ``clock`` dates the leases.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        redis: Any = None,
        transports: Transports | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from videoq.limits import LocalLimiter, RedisSemaphore

        self.settings = settings
        self._sleep = sleep
        self._rng = rng or random.Random()
        transports = transports or Transports()
        live = settings.providers != "offline"
        self.anthropic: anthropic.AsyncAnthropic | None = None
        self.elevenlabs: httpx.AsyncClient | None = None
        self.replicate: httpx.AsyncClient | None = None
        if live and settings.anthropic_api_key is not None:
            from videoq.providers import anthropic as anthropic_provider

            self.anthropic = anthropic_provider.make_client(settings, transports.anthropic)
        if live and settings.elevenlabs_api_key is not None:
            from videoq.providers import elevenlabs

            self.elevenlabs = elevenlabs.make_client(settings, transports.elevenlabs)
        if live and settings.replicate_api_token is not None:
            from videoq.providers import replicate

            self.replicate = replicate.make_client(settings, transports.replicate)
        limits = {
            "anthropic": settings.anthropic_concurrency,
            "elevenlabs": settings.elevenlabs_concurrency,
            "replicate": settings.replicate_concurrency,
        }
        self.limiters: dict[str, Limiter] = {
            name: (
                RedisSemaphore(redis, name, limit, lease_s=settings.limit_lease_s, clock=clock)
                if redis is not None
                else LocalLimiter(limit)
            )
            for name, limit in limits.items()
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

            video = ReplicateVideoProvider(
                self.replicate, settings, limiter=self.limiters["replicate"], policy=policy
            )
        return Providers(script=script, voice=voice, video=video)

    async def aclose(self) -> None:
        """Close the live clients (idempotent)."""
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


@contextlib.asynccontextmanager
async def open_providers(
    settings: Settings,
    *,
    redis: Any = None,
    transports: Transports | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[ProviderPool]:
    """Open the process's live clients for the ``async with`` block (see :class:`ProviderPool`)."""
    pool = ProviderPool(
        settings, redis=redis, transports=transports, sleep=sleep, rng=rng, clock=clock
    )
    try:
        yield pool
    finally:
        await pool.aclose()


def select_providers(settings: Settings, pool: ProviderPool | Providers | None) -> Providers:
    """The providers ``run_pipeline`` uses for a job: a pool's choice for the job's settings,
    a fixed :class:`Providers` as given, or the offline ones when there is neither."""
    if isinstance(pool, ProviderPool):
        return pool.for_settings(settings)
    return pool if pool is not None else offline_providers(settings)
