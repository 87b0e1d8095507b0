"""When a job should finish (``eta_s``), from the recent duration of each stage.

A job's life is its stages, each taking about what it took recent jobs with the same provider
and model (:func:`stage_key`; the means are kept by :mod:`videoq.broker.estimates`), plus its
turn at compositing: FFmpeg is the one part that queues on a machine's cores, so a job waits
there for the compositing of every unfinished job ahead of it, spread over the workers. (A
duration is measured without the time its FFmpeg runs waited for a slot, and with each run's
time divided by the runs sharing the cores when it started: what it takes alone.) So::

    eta = max(own path, until compositing + (ahead + 1) × turn / workers)

where *own path* is what is left of the job's stages (``voice_gen`` and ``video_gen`` running
at once, the longer of the two counts), *ahead* counts the unfinished jobs created before it on
its queue, and *turn* is the time between two compositings ending on one worker whose FFmpeg
slots stayed full (:data:`TURN`): a backlog drains at that pace, which with several slots is
faster than one compositing alone (x264 alone leaves part of a second core idle). Until a
backlog has been seen, *turn* is a compositing's time alone. An estimate: providers that
slow down, or tenants' fair shares and limits reordering the queue, show up only as the means
move. No estimate is given until every stage has been measured once. When a job succeeds its
ETA at submit is compared with the truth (relative error, :data:`ERROR_BUCKETS`; a histogram
in ``/metrics``).
"""

from __future__ import annotations

from collections.abc import Mapping

from videoq.settings import Settings
from videoq.types import STAGES

#: Upper bounds of the relative-error histogram (|eta − actual| ÷ actual).
ERROR_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0)

#: The duration key of a worker's turn at compositing under a backlog (see the module).
TURN = "compositing:turn"


def stage_key(settings: Settings, stage: str) -> str:
    """The stage and what serves it under ``settings`` (a job's own): its duration's key."""
    if stage == "compositing":
        return "compositing"
    if settings.providers == "offline":
        return f"{stage}:offline"
    model = {
        "script_gen": settings.anthropic_model,
        "voice_gen": settings.elevenlabs_model_id,
        "video_gen": settings.replicate_model,
    }[stage]
    return f"{stage}:{model}"


def stage_times(settings: Settings, durations: Mapping[str, float]) -> dict[str, float] | None:
    """Each stage's recent duration for a job run with ``settings``; None until all are known."""
    times = {stage: durations.get(stage_key(settings, stage)) for stage in STAGES}
    if any(value is None for value in times.values()):
        return None
    known = {stage: float(value or 0.0) for stage, value in times.items()}
    if (turn := durations.get(TURN)) is not None:
        known[TURN] = float(turn)
    return known


def estimate(
    times: Mapping[str, float],
    *,
    stage: str | None,
    elapsed_s: float = 0.0,
    ahead: int = 0,
    workers: int = 1,
) -> float:
    """Seconds until a job finishes: it is at ``stage`` (None: not started) since
    ``elapsed_s``, with ``ahead`` unfinished jobs before it and ``workers`` compositing them."""
    compositing = times["compositing"]
    if stage == "compositing":
        return max(0.0, compositing - elapsed_s)
    # voice_gen and video_gen run at once: the longer decides.
    together = max(times["voice_gen"], times["video_gen"])
    script = times["script_gen"] if stage in (None, "script_gen") else 0.0
    until = max(0.0, script + together - elapsed_s)
    turn = (ahead + 1) * times.get(TURN, compositing) / max(1, workers)
    return max(until + compositing, until + turn)


def relative_error(eta_s: float, actual_s: float) -> float:
    return abs(eta_s - actual_s) / max(actual_s, 1e-3)
