"""Pay once, at every crash point: the paid stages (``script_gen``, ``voice_gen``,
``video_gen``) stopped at each point that matters, then run again on another worker (a fresh
work directory, the same PostgreSQL and artifact store), buy every output once.

The points that matter are those where an attempt's work becomes visible outside its process:
each HTTP request to a provider (before it leaves, and after the provider did the work but
before the answer arrives: the answer lost with the worker), each durable write of the
attempt (checkpoint saves and notes, before and after they land) and each file kept in the
artifact store (before and after). Between two of them an attempt changes nothing another
worker can see, so stopping it anywhere between is the same as stopping it at the next one:
crashing at every point is crashing at every await that counts. A crash is :class:`Killed`, a
``BaseException`` (nothing in videoq catches it), raised at the point; from then on every
point of that attempt raises it too, so nothing the dead process would have done still
happens (writes already handed to PostgreSQL may land, as they may after a real kill -9).

A clean run first counts the points; then every single point, and a sample of pairs (a crash,
then another crash in the attempt that resumes), is a run. ``VIDEOQ_CRASH_PAIRS`` sets how many
pairs (``make chaos`` runs 400). The only purchase allowed twice is a script whose answer
arrived and whose checkpoint had not landed when the worker died: Anthropic offers no way to
find an earlier answer (its voice is then bought again too, for the new script). Each such
run is counted, and the window is in docs/reliability.md. Voice tracks (found in ElevenLabs'
history) and clips (found among Replicate's predictions) are never bought twice.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import httpx2
import pytest

from tests.mocks.anthropic import AnthropicMock
from tests.mocks.elevenlabs import ElevenLabsMock
from tests.mocks.replicate import ReplicateMock
from tests.providers.conftest import Mocks, Sleeps
from videoq.artifacts import open_store
from videoq.pipeline import Artifacts, Checkpoints, run_pipeline
from videoq.providers import ProviderPool, Transports
from videoq.schemas import JobCreate
from videoq.settings import Settings
from videoq.store import jobs
from videoq.store.checkpoints import DbCheckpoints
from videoq.store.grouped import GroupedWriter
from videoq.types import Brief, scene_count

R = TypeVar("R", httpx.Response, httpx2.Response)

BRIEF = Brief(product_name="Solar Kettle", duration_s=15, aspect_ratio="1:1", cta_text="Buy")
SCENES = scene_count(BRIEF.duration_s)


class Killed(BaseException):
    """The worker process died here."""


class Finished(BaseException):
    """The paid stages are done: the run stops where compositing would start."""


@dataclass
class Plan:
    """Where one attempt dies: at its ``crash_at``-th point (never, when None)."""

    crash_at: int | None = None
    points: list[str] = field(default_factory=list)
    dead: bool = False

    async def point(self, label: str) -> None:
        if self.dead:
            raise Killed(label)
        self.points.append(label)
        if len(self.points) == self.crash_at:
            self.dead = True
            raise Killed(label)

    async def around(self, label: str, send: Callable[[], Awaitable[R]]) -> R:
        """A point before a request leaves and one after the provider answered it (its body
        read): between them the provider did the work."""
        await self.point(f"{label} sent")
        response = await send()
        await response.aread()
        await self.point(f"{label} answered")
        return response

    @property
    def died_at(self) -> str | None:
        return self.points[-1] if self.dead else None


class PointedTransport(httpx.AsyncBaseTransport):
    """A provider's transport with a point before each request and after its answer."""

    def __init__(self, name: str, inner: httpx.AsyncBaseTransport, plan: Plan) -> None:
        self.name, self.inner, self.plan = name, inner, plan

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        label = f"{self.name} {request.method} {request.url.path}"
        return await self.plan.around(label, lambda: self.inner.handle_async_request(request))


class PointedTransport2(httpx2.AsyncBaseTransport):
    """:class:`PointedTransport` for the Anthropic SDK's ``httpx2``."""

    def __init__(self, name: str, inner: httpx2.AsyncBaseTransport, plan: Plan) -> None:
        self.name, self.inner, self.plan = name, inner, plan

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        label = f"{self.name} {request.method} {request.url.path}"
        return await self.plan.around(label, lambda: self.inner.handle_async_request(request))


class PointedCheckpoints:
    """DbCheckpoints with a point before and after each write lands."""

    def __init__(self, inner: DbCheckpoints, plan: Plan) -> None:
        self.inner, self.plan = inner, plan

    async def load(self, stage: str) -> dict[str, Any] | None:
        return await self.inner.load(stage)

    async def save(self, stage: str, output: dict[str, Any]) -> None:
        await self.plan.point(f"save {stage}")
        await self.inner.save(stage, output)
        await self.inner.landed()
        await self.plan.point(f"saved {stage}")

    async def note(self, stage: str, key: str, value: dict[str, Any] | None) -> None:
        await self.plan.point(f"note {stage}/{key}")
        await self.inner.note(stage, key, value)
        await self.plan.point(f"noted {stage}/{key}")

    async def notes(self, stage: str) -> dict[str, dict[str, Any]]:
        return await self.inner.notes(stage)


class PointedArtifacts:
    """A job's artifacts with a point before and after each file is kept."""

    def __init__(self, inner: Artifacts, plan: Plan) -> None:
        self.inner, self.plan = inner, plan

    async def keep(self, path: Path) -> None:
        await self.plan.point(f"keep {path.name}")
        await self.inner.keep(path)
        await self.plan.point(f"kept {path.name}")

    async def fetch(self, path: Path) -> bool:
        return await self.inner.fetch(path)


async def stop_at_compositing(stage: str, progress: float, message: str | None = None) -> None:
    if stage == "compositing":
        raise Finished


#: Points after which a script was paid for and not yet recorded: a crash there costs it again
#: (Anthropic's API cannot find an earlier answer).
SCRIPT_WINDOW = ("anthropic POST /v1/messages answered", "save script_gen")


def in_window(label: str | None) -> bool:
    return label is not None and label.startswith(SCRIPT_WINDOW)


@dataclass
class Job:
    """One job's runs: its attempts share PostgreSQL, the artifact store and the mocks."""

    sessions: Any
    settings: Settings
    root: Path
    mocks: Mocks = field(
        default_factory=lambda: Mocks(AnthropicMock(), ElevenLabsMock(), ReplicateMock(polls=1))
    )
    job_id: uuid.UUID | None = None
    attempts: int = 0
    died: list[str | None] = field(default_factory=list)

    async def attempt(self, crash_at: int | None) -> Plan:
        """One attempt on a worker of its own; returns where it died (or that it did not)."""
        self.attempts += 1
        plan = Plan(crash_at)
        async with self.sessions() as session:
            if self.job_id is None:
                job, _ = await jobs.create_job(
                    session, "t-crash", JobCreate(product_name=BRIEF.product_name),
                    default_max_retries=0, queue="parked:crash",
                )  # fmt: skip
                self.job_id = job.id
            else:
                assert await jobs.transition(session, self.job_id, "queued") is not None
        url = self.sessions.kw["bind"].url.render_as_string(hide_password=False)
        books = GroupedWriter(url, f"w-crash-{self.attempts}")
        try:
            claimed = await books.claim(self.job_id)
            assert claimed is not None
            checkpoints: Checkpoints = PointedCheckpoints(
                DbCheckpoints(books, self.job_id, claimed.attempts), plan
            )
            workdir = self.root / f"worker-{self.attempts}" / str(self.job_id)
            store = open_store(self.settings)
            artifacts = PointedArtifacts(store.for_job(self.job_id, workdir), plan)
            m = self.mocks
            transports = Transports(
                anthropic=PointedTransport2(
                    "anthropic", httpx2.ASGITransport(app=m.anthropic.app), plan
                ),
                elevenlabs=PointedTransport(
                    "elevenlabs", httpx.ASGITransport(app=m.elevenlabs.app), plan
                ),
                replicate=PointedTransport(
                    "replicate", httpx.ASGITransport(app=m.replicate.app), plan
                ),
            )
            async with ProviderPool(
                self.settings, transports=transports, sleep=Sleeps(), rng=random.Random(1)
            ) as pool:
                try:
                    await run_pipeline(
                        BRIEF, settings=self.settings, workdir=workdir,
                        checkpoints=checkpoints, report=stop_at_compositing,
                        providers=pool.for_settings(self.settings), artifacts=artifacts,
                    )  # fmt: skip
                except (Killed, Finished):
                    pass
                except BaseExceptionGroup as group:
                    if not group.subgroup((Killed, Finished)):
                        raise
        finally:
            await books.aclose()
        self.died.append(plan.died_at)
        return plan

    def paid(self) -> Counter[str]:
        return Counter(
            script=self.mocks.anthropic.calls["messages"],
            voice=self.mocks.elevenlabs.calls["tts"],
            clips=len(self.mocks.replicate.predictions),
        )

    def check(self) -> Counter[str]:
        """Every output bought once, but for a crash in the script's window; returns the
        extra purchases made in it."""
        paid = self.paid()
        extra: Counter[str] = Counter()
        script_windows = sum(in_window(d) for d in self.died)
        assert paid["clips"] == SCENES, (self.died, paid)
        assert 1 <= paid["script"] <= 1 + script_windows, (self.died, paid)
        # A new script means new narration: its voice is bought again, by design.
        assert 1 <= paid["voice"] <= paid["script"], (self.died, paid)
        extra["script"] = paid["script"] - 1
        extra["voice"] = paid["voice"] - 1
        for mock in (self.mocks.anthropic, self.mocks.elevenlabs, self.mocks.replicate):
            assert mock.invalid == []
        return extra


@pytest.fixture
def crash_settings(live_settings: Settings, tmp_path: Path) -> Settings:
    return live_settings.model_copy(update={"storage_url": (tmp_path / "store").as_uri()})


async def count_points(sessions: Any, settings: Settings, root: Path) -> list[str]:
    job = Job(sessions, settings, root / "clean")
    plan = await job.attempt(None)
    assert job.check() == Counter()
    return plan.points


async def test_a_crash_at_any_single_point_buys_nothing_twice(
    sessions: Any, crash_settings: Settings, tmp_path: Path
) -> None:
    points = await count_points(sessions, crash_settings, tmp_path)
    assert len(points) > 30  # every stage's requests, notes, saves and kept files
    windows: Counter[str] = Counter()
    for k in range(1, len(points) + 1):
        job = Job(sessions, crash_settings, tmp_path / f"single-{k}")
        first = await job.attempt(k)
        assert first.dead, k
        second = await job.attempt(None)
        assert not second.dead
        windows += job.check()
    record("single crash", runs=len(points), points=len(points), extra=windows)
    # Only the scripts lost between arriving and being recorded are bought twice.
    assert windows["script"] <= sum(in_window(p) for p in points)
    assert windows["voice"] <= windows["script"]


def pair_count() -> int | None:
    """How many pairs of crash points to run: ``VIDEOQ_CRASH_PAIRS`` (``all``: every pair)."""
    value = os.environ.get("VIDEOQ_CRASH_PAIRS", "40")
    return None if value == "all" else int(value)


async def test_a_crash_while_resuming_from_a_crash_buys_nothing_twice(
    sessions: Any, crash_settings: Settings, tmp_path: Path
) -> None:
    points = await count_points(sessions, crash_settings, tmp_path)
    pairs = list(itertools.product(range(1, len(points) + 1), repeat=2))
    wanted = pair_count()
    if wanted is not None and wanted < len(pairs):
        pairs = random.Random(14).sample(pairs, wanted)
    extra: Counter[str] = Counter()
    for first, second in pairs:
        job = Job(sessions, crash_settings, tmp_path / f"pair-{first}-{second}")
        await job.attempt(first)
        await job.attempt(second)  # may finish before its point: then it is not killed
        last = await job.attempt(None)
        assert not last.dead
        extra += job.check()
    record("two crashes", runs=len(pairs), points=len(points), extra=extra)


def record(fault: str, *, runs: int, points: int, extra: Counter[str]) -> None:
    """Append the figures to ``VIDEOQ_CRASH_REPORT`` (a JSON line each), when it is set."""
    target = os.environ.get("VIDEOQ_CRASH_REPORT")
    if target:
        line = {"fault": fault, "runs": runs, "points": points, "extra": dict(extra)}
        with Path(target).open("a") as out:
            out.write(json.dumps(line) + "\n")
