"""The shared vocabulary of videoq: job states and the moves between them, what a customer asks
for (:class:`Brief`), what the stages make of it (:class:`Script`, :class:`VoiceTrack`,
:class:`Clip`, :class:`Result`) and the events a job emits. Every layer speaks these; this module
imports nothing of videoq.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

#: A job's stages, in the order they run.
STAGES: tuple[str, ...] = ("script_gen", "voice_gen", "video_gen", "compositing")
#: The span of a job's progress (0-100) each stage covers.
STAGE_RANGES: dict[str, tuple[float, float]] = {
    "script_gen": (0.0, 25.0),
    "voice_gen": (25.0, 50.0),
    "video_gen": (50.0, 75.0),
    "compositing": (75.0, 100.0),
}


class JobStatus(StrEnum):
    """A job's state (DESIGN.md "Job states"). Stored in ``jobs.status`` as its value."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    RETRYING = "retrying"
    AWAITING_BUDGET = "awaiting_budget"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: The states a job may move to, from each state: every guarded transition checks this table.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.SCHEDULED: frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
            JobStatus.RETRYING,
            JobStatus.AWAITING_BUDGET,
            JobStatus.QUEUED,
        }
    ),
    JobStatus.RETRYING: frozenset(
        {JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED, JobStatus.QUEUED}
    ),
    JobStatus.AWAITING_BUDGET: frozenset(
        {JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED, JobStatus.QUEUED}
    ),
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),
    JobStatus.CANCELLED: frozenset({JobStatus.QUEUED}),
    JobStatus.SUCCEEDED: frozenset(),
}
#: States a job never leaves by itself (only a manual retry requeues failed or cancelled jobs).
TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
)
#: States in which a job waits to run: it should be on the queue.
WAITING: frozenset[JobStatus] = frozenset(
    {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RETRYING, JobStatus.AWAITING_BUDGET}
)
#: States a manual retry may requeue.
RETRYABLE: frozenset[JobStatus] = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})


def sources(target: JobStatus) -> list[JobStatus]:
    """The states from which ``target`` can be reached."""
    return [s for s, targets in TRANSITIONS.items() if target in targets]


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
    #: Burn captions into the video (and write its WebVTT file) from the voice's word timings.
    captions: bool = True

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
    #: The WebVTT file of the burned-in captions, when there are any.
    captions_path: Path | None = None


#: About how long one scene runs: a brief's duration divided by this gives its scene count.
SCENE_LENGTH_S = 5.0


def scene_count(duration_s: float) -> int:
    """How many scenes a video of ``duration_s`` has (at least two)."""
    return max(2, round(duration_s / SCENE_LENGTH_S))


def scene_durations(total_s: float, count: int) -> list[float]:
    """``count`` durations (millisecond precision) that add up to ``total_s``."""
    base = round(total_s / count, 3)
    return [base] * (count - 1) + [round(total_s - base * (count - 1), 3)]


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
class Word:
    """One spoken word and when the voice says it (seconds from the track's start)."""

    text: str
    start_s: float
    end_s: float


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
    #: When each word is said, if the provider knows: the captions follow them.
    words: tuple[Word, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        data: dict[str, Any] = {"path": str(self.path), "duration_s": self.duration_s}
        if self.scene_starts_s is not None:
            data["scene_starts_s"] = list(self.scene_starts_s)
        if self.words is not None:
            data["words"] = [[w.text, w.start_s, w.end_s] for w in self.words]
        if self.cost:
            data["cost"] = self.cost
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VoiceTrack:
        """The inverse of :meth:`to_dict`."""
        starts = data.get("scene_starts_s")
        words = data.get("words")
        return cls(
            path=Path(data["path"]),
            duration_s=float(data["duration_s"]),
            scene_starts_s=tuple(float(s) for s in starts) if starts is not None else None,
            cost=dict(data.get("cost") or {}),
            words=None
            if words is None
            else tuple(Word(str(t), float(a), float(b)) for t, a, b in words),
        )


@dataclass(frozen=True)
class Clip:
    """One scene's video file, with what it cost, the provider's id for the paid work and the
    models it switched between on the way (``{"from", "to", "error"}`` each)."""

    path: Path
    cost: dict[str, Any] = field(default_factory=dict)
    work_id: str | None = None
    failover: list[dict[str, str]] = field(default_factory=list)


#: What an event is about: ``snapshot`` (a socket's first message), ``status``, ``stage``,
#: ``progress``, ``preview``, ``log`` (DESIGN.md "Events").
EVENT_TYPES = ("snapshot", "status", "stage", "progress", "preview", "log")
#: What a ``preview`` event shows (its ``data.kind``): the script's scenes as soon as it is
#: written, a scene's thumbnail as its clip lands, the finished video's poster.
PREVIEW_KINDS = ("storyboard", "thumbnail", "poster")


def version_dir(version: int) -> str:
    """Where the files a version of a job's video made live, inside the job's work directory
    and its part of the artifact store: version 1 at the top (``""``), a re-render's under
    ``v<N>/``."""
    return "" if version <= 1 else f"v{version}/"


#: An event as an archive keeps it: job id, seq, and its JSON text as Redis holds it.
StoredEvent = tuple[str, int, str]


def make_event(
    job_id: str,
    type_: str,
    *,
    status: str,
    stage: str | None,
    progress: float,
    worker_id: str | None = None,
    message: str | None = None,
    seq: int | None = None,
    eta_s: float | None = None,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One event, as every client receives it; ``seq`` is given when it is published. A
    ``stage`` event carries the job's ``eta_s`` too, when one could be estimated, and a
    ``preview`` event its ``data``."""
    event: dict[str, Any] = {
        "job_id": job_id,
        "seq": seq,
        "type": type_,
        "status": status,
        "stage": stage,
        "progress": round(progress, 2),
        "worker_id": worker_id,
        "ts": datetime.now(UTC).isoformat(),
        "message": message,
    }
    if eta_s is not None:
        event["eta_s"] = round(eta_s, 1)
    if data is not None:
        event["data"] = data
    return event
