"""Providers: who writes the script, speaks it and films it. One Protocol per kind, so a stage
can use a live API client or the offline (deterministic, no network) implementation.

Stage outputs are checkpointed as JSON in PostgreSQL, so the value types here round-trip
through :meth:`to_dict` / :meth:`from_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # videoq.pipeline imports this package; only the annotation is needed here.
    from videoq.pipeline import Brief
    from videoq.settings import Settings


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

    @property
    def duration_s(self) -> float:
        """Total length of the scenes."""
        return sum(scene.duration_s for scene in self.scenes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        return {"title": self.title, "scenes": [scene.to_dict() for scene in self.scenes]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Script:
        """The inverse of :meth:`to_dict`."""
        return cls(title=str(data["title"]), scenes=[Scene.from_dict(s) for s in data["scenes"]])


@dataclass(frozen=True)
class VoiceTrack:
    """The narration audio file and its length."""

    path: Path
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        return {"path": str(self.path), "duration_s": self.duration_s}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VoiceTrack:
        """The inverse of :meth:`to_dict`."""
        return cls(path=Path(data["path"]), duration_s=float(data["duration_s"]))


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
