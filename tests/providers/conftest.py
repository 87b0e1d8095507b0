"""Fixtures for the live providers: spec-checked mocks of the three APIs, settings pointing at
them, a pool whose retry sleeps are recorded instead of slept."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import httpx2
import imageio_ffmpeg
import pytest

from tests.conftest import bookkeeper
from tests.mocks import spec
from tests.mocks.anthropic import AnthropicMock
from tests.mocks.elevenlabs import ElevenLabsMock
from tests.mocks.replicate import ReplicateMock
from videoq.providers import ProviderPool, Transports
from videoq.schemas import JobCreate
from videoq.settings import Settings
from videoq.store import jobs
from videoq.store.checkpoints import DbCheckpoints


@dataclass
class Sleeps:
    """An injected sleep: records each delay and returns at once (yielding to the loop)."""

    delays: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


@dataclass
class Mocks:
    anthropic: AnthropicMock
    elevenlabs: ElevenLabsMock
    replicate: ReplicateMock

    def transports(self) -> Transports:
        return Transports(
            anthropic=httpx2.ASGITransport(app=self.anthropic.app),
            elevenlabs=httpx.ASGITransport(app=self.elevenlabs.app),
            replicate=httpx.ASGITransport(app=self.replicate.app),
        )

    def calls(self) -> dict[str, int]:
        return {
            "script": self.anthropic.calls["messages"],
            "voice": self.elevenlabs.calls["tts"],
            "create": self.replicate.calls["create"],
            "get": self.replicate.calls["get"],
            "download": self.replicate.calls["download"],
        }


async def new_attempt(sessions: Any, job_id: uuid.UUID | None = None) -> DbCheckpoints:
    """The checkpoints of a new running attempt, as a worker claims it: of a new job, or the
    next attempt of ``job_id`` (its worker died and it was requeued). The jobs live on a queue
    no worker or reconciler of the shared test database looks at."""
    if job_id is None:
        async with sessions() as session:
            job, _ = await jobs.create_job(
                session, "t-providers", JobCreate(product_name="Solar Kettle"),
                default_max_retries=0, queue="parked:providers",
            )  # fmt: skip
        job_id = job.id
    else:
        async with sessions() as session:
            assert await jobs.transition(session, job_id, "queued") is not None
    books = bookkeeper(sessions, "w-providers")
    claimed = await books.claim(job_id)
    assert claimed is not None
    return DbCheckpoints(books, job_id, claimed.attempts)


@pytest.fixture(scope="session", autouse=True)
def _specs_present() -> None:
    """Fail (never skip) the whole directory when the specs are missing."""
    for provider in spec.SPEC_FILES:
        spec.spec_path(provider)


@pytest.fixture
def mocks() -> Iterator[Mocks]:
    created = Mocks(AnthropicMock(), ElevenLabsMock(), ReplicateMock(polls=2))
    yield created
    for mock in (created.anthropic, created.elevenlabs, created.replicate):
        assert mock.invalid == [], f"{type(mock).__name__} saw requests off the spec"


@pytest.fixture
def live_settings(tmp_path: Path) -> Settings:
    return Settings(
        ffmpeg_path=imageio_ffmpeg.get_ffmpeg_exe(),
        artifacts_dir=tmp_path / "art",
        scratch_dir=tmp_path / "scratch",
        anthropic_api_key="sk-ant-test",
        elevenlabs_api_key="el-test",
        replicate_api_token="r8_test",
        anthropic_base_url="http://anthropic.mock",
        elevenlabs_base_url="http://elevenlabs.mock",
        replicate_base_url="http://replicate.mock",
        replicate_poll_s=1.0,
        replicate_poll_max_s=4.0,
        provider_retries=3,
        provider_backoff_s=1.0,
        provider_backoff_max_s=30.0,
        log_level="WARNING",
    )


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def pool(
    live_settings: Settings, mocks: Mocks, sleeps: Sleeps
) -> AsyncIterator[ProviderPool]:
    async with ProviderPool(
        live_settings, transports=mocks.transports(), sleep=sleeps, rng=random.Random(7)
    ) as opened:
        yield opened
