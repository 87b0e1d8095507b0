"""The pipeline's progress reporter on a worker: events (numbered, through Redis, archived in
PostgreSQL) and the job row's stage and progress, ordered behind the attempt's checkpoints."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog

from videoq import fair
from videoq.broker.events import LastSeq
from videoq.store import Job
from videoq.store.checkpoints import DbCheckpoints
from videoq.types import JobStatus, make_event

if TYPE_CHECKING:
    from videoq.broker.events import Publisher
    from videoq.store.grouped import GroupedWriter

log = structlog.get_logger(__name__)


#: The stage that makes each kind of preview (a preview event is about it, whichever other
#: stage runs at the same time).
_MADE_IN = {"storyboard": "script_gen", "thumbnail": "video_gen", "poster": "compositing"}

_Held = tuple["asyncio.Future[bool] | None", dict[str, Any], "asyncio.Future[int | None]"]


def _pass_on(into: asyncio.Future[int | None], done: asyncio.Future[int | None]) -> None:
    """Best effort, as the Publisher's own futures: a publish that failed resolves to None."""
    failed = done.cancelled() or done.exception() is not None
    into.set_result(None if failed else done.result())


class EventReporter:
    """The pipeline's :class:`~videoq.pipeline.Reporter` for one attempt: publishes ``stage`` and
    ``progress`` events (never backwards) and keeps the job row's stage and progress current
    (every stage change and every 5 points, without waiting for the write).

    An event goes out only once the checkpoints saved before it are in PostgreSQL (they are
    written while the next stage starts, :meth:`DbCheckpoints.save`): a client that sees
    ``video_gen`` started can count on ``voice_gen``'s output being kept. Events keep their
    order; those that follow a refused save (the attempt lost its job) are dropped.

    The attempt remembers the last ``seq`` Redis gave its events (:attr:`last_seq`): if Redis
    loses the job's counter (restarted empty), the next event is numbered after it, not from 1.
    An attempt after others starts from their archived history (set by the task)."""

    def __init__(
        self,
        publish: Publisher,
        books: GroupedWriter,
        worker_id: str,
        job: Job,
        checkpoints: DbCheckpoints,
        *,
        eta: Callable[[str], float | None] | None = None,
        on_stage_done: Callable[[str, float], None] | None = None,
        public_url: str | None = None,
    ) -> None:
        self.publish = publish
        #: What the URLs of ``preview`` events start with (none: they are paths of the API).
        self.root = (public_url or "").rstrip("/")
        #: The version of the video this attempt makes (raised by each re-render).
        self.version = job.version
        #: The job's ETA as a stage starts (carried by its ``stage`` event).
        self.eta = eta
        #: Told each stage that ran to its end, and how long it took (without its waits for
        #: FFmpeg slots, see :class:`videoq.fair.Spent`).
        self.on_stage_done = on_stage_done
        self.spent = fair.Spent()
        #: When each stage of this attempt started, and what the job had spent by then.
        self._since: dict[str, tuple[float, fair.Spent]] = {}
        self.books = books
        self.worker_id = worker_id
        self.job_id = job.id
        self.tenant = job.tenant
        self.attempt = job.attempts
        self.checkpoints = checkpoints
        self.status: str = JobStatus.RUNNING
        self.stage: str | None = None
        self.progress = 0.0
        self.stored_progress = -1.0
        self.last_seq = LastSeq()
        #: Events waiting for a save, in order: (the save, the event, its future).
        self._held: list[_Held] = []

    def emit(
        self,
        type_: str,
        status: str,
        message: str | None = None,
        *,
        eta_s: float | None = None,
        data: dict[str, Any] | None = None,
        stage: str | None = None,
    ) -> asyncio.Future[int | None]:
        """Publish an event without waiting (about ``stage``, default the current one); await
        the result to know it went out."""
        event = make_event(
            str(self.job_id), type_, status=status, stage=stage or self.stage,
            progress=self.progress,
            worker_id=self.worker_id, message=message, eta_s=eta_s, data=data,
        )  # fmt: skip
        saving = self.checkpoints.pending()
        if saving is None and not self._held:
            return self.publish(self.tenant, event, self.last_seq)
        published: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._held.append((saving, event, published))
        if len(self._held) == 1:
            self._release()
        return published

    def _release(self, _: object = None) -> None:
        while self._held:
            saving, event, published = self._held[0]
            if saving is not None and not saving.done():
                saving.add_done_callback(self._release)
                return
            del self._held[0]
            if saving is not None and (
                saving.cancelled() or saving.exception() or not saving.result()
            ):
                published.set_result(None)
                continue
            sent = self.publish(self.tenant, event, self.last_seq)
            sent.add_done_callback(partial(_pass_on, published))

    async def __call__(self, stage: str, progress: float, message: str | None = None) -> None:
        progress = min(100.0, max(self.progress, progress))
        if stage not in self._since:  # its first report: it started (or was skipped)
            self.stage, self.progress = stage, progress
            structlog.contextvars.bind_contextvars(stage=stage)
            self._store()
            self._since[stage] = (time.monotonic(), dataclasses.replace(self.spent))
            eta_s = self.eta(stage) if self.eta is not None else None
            self.emit("stage", JobStatus.RUNNING, message or f"{stage} started", eta_s=eta_s)
            # A stage whose checkpoint an earlier attempt recorded is skipped, not run again.
            log.info("stage_skipped" if message == "skipped" else "stage_started")
            return
        if message == "completed" and self.on_stage_done is not None:
            self.on_stage_done(stage, self._stage_time(stage))
        # Two stages may run at once (voice_gen and video_gen): each event names its own.
        self.stage = stage
        if progress - self.progress < 0.5 and message is None:
            return  # sub-percent steps are noise for every client
        self.progress = progress
        if progress - self.stored_progress >= 5.0:
            self._store()
        self.emit("progress", JobStatus.RUNNING, message)

    async def preview(self, kind: str, scene: int | None, data: dict[str, Any]) -> None:
        """Publish a ``preview`` event (:class:`videoq.pipeline.Previews`), its ``data`` being
        ``kind``, ``scene``, the ``url`` the API serves it at, the video's ``version`` and
        the pipeline's ``data``; in order with the other events, without waiting."""
        path = f"/v1/jobs/{self.job_id}"
        if kind == "storyboard":
            url = f"{path}/scenes"
        elif kind == "thumbnail":
            url = f"{path}/scenes/{scene}/thumbnail?version={self.version}"
        else:
            url = f"{path}/poster?version={self.version}"
        body = {"kind": kind, "scene": scene, "url": self.root + url, "version": self.version}
        message = f"{kind} of scene {scene} ready" if scene is not None else f"{kind} ready"
        self.emit(
            "preview", JobStatus.RUNNING, message, data={**body, **data}, stage=_MADE_IN[kind]
        )

    def _stage_time(self, stage: str) -> float:
        """How long ``stage`` took, its FFmpeg runs counted as if alone and without their
        waits for a slot (the job's, while two stages run at once)."""
        since, before = self._since[stage]
        now = self.spent
        ffmpeg = (now.alone_s - before.alone_s) - (now.ran_s - before.ran_s)
        return time.monotonic() - since - (now.waited_s - before.waited_s) + ffmpeg

    def _store(self) -> None:
        self.books.progress(self.job_id, self.attempt, self.stage or "", self.progress)
        self.stored_progress = self.progress
