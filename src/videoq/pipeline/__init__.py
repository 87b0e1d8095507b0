"""The pipeline: four stages that turn a :class:`Brief` into an MP4. It never imports arq, so
``videoq render --offline`` runs it with no Redis; the worker wraps it with checkpoints in
PostgreSQL and progress events in Redis.

Progress is overall, 0–100: ``script_gen`` 0–25, ``voice_gen`` 25–50, ``video_gen`` 50–75,
``compositing`` 75–100.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

STAGES: tuple[str, ...] = ("script_gen", "voice_gen", "video_gen", "compositing")
STAGE_RANGES: dict[str, tuple[float, float]] = {
    "script_gen": (0.0, 25.0),
    "voice_gen": (25.0, 50.0),
    "video_gen": (50.0, 75.0),
    "compositing": (75.0, 100.0),
}
RESOLUTIONS: dict[str, tuple[int, int]] = {
    "9:16": (1080, 1920),
    "16:9": (1920, 1080),
    "1:1": (1080, 1080),
}


@dataclass(frozen=True)
class Brief:
    """What the customer asked for; validated by the API before it gets here."""

    product_name: str
    style: str = "minimal"
    cta_text: str | None = None
    prompt: str | None = None
    duration_s: int = 15
    aspect_ratio: str = "9:16"
    voice: str | None = None

    @property
    def resolution(self) -> tuple[int, int]:
        return RESOLUTIONS[self.aspect_ratio]


@dataclass(frozen=True)
class Result:
    """The finished video."""

    video_path: Path
    duration_s: float
    size_bytes: int
    cost: dict[str, Any] = field(default_factory=dict)


class Checkpoints(Protocol):
    """Where each stage's outputs are recorded before the next stage starts."""

    async def load(self, stage: str) -> dict[str, Any] | None:
        """The recorded outputs of a completed stage, or None."""

    async def save(self, stage: str, output: dict[str, Any]) -> None:
        """Record a completed stage's outputs (JSON-serializable)."""


class Reporter(Protocol):
    """Receives progress: ``stage`` is the current stage, ``progress`` the overall 0–100."""

    async def __call__(self, stage: str, progress: float, message: str | None = None) -> None: ...


class MemoryCheckpoints:
    """Checkpoints kept in a dict: for ``videoq render --offline`` and tests."""

    def __init__(self) -> None:
        self.outputs: dict[str, dict[str, Any]] = {}

    async def load(self, stage: str) -> dict[str, Any] | None:
        return self.outputs.get(stage)

    async def save(self, stage: str, output: dict[str, Any]) -> None:
        self.outputs[stage] = output
