"""Shared fixtures: one real embedded PostgreSQL and Redis per test session (in a temporary
directory), migrated once; a real uvicorn API and an in-process arq worker on top of them;
the spec-checked provider mocks served on loopback, for worker processes.

Tests isolate themselves by tenant (every test gets fresh API keys), not by wiping tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer
from redis.asyncio import Redis
from sqlalchemy import select, update

from tests.mocks.anthropic import AnthropicMock
from tests.mocks.base import MockProvider
from tests.mocks.elevenlabs import ElevenLabsMock
from tests.mocks.replicate import ReplicateMock
from tests.mocks.server import serve
from tests.processes import WorkerProcess
from videoq import store
from videoq.api import create_app
from videoq.client import Client
from videoq.embedded import embedded_services
from videoq.pipeline.video_gen import note_key
from videoq.settings import Settings
from videoq.store.apikeys import create_key
from videoq.store.grouped import GroupedWriter
from videoq.workers import create_worker
from videoq.workers.worker import VideoqWorker

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")  # pgserver's platformdirs warns without it


@pytest.fixture(scope="session")
def base_settings() -> Iterator[Settings]:
    """Settings pointing at real embedded PostgreSQL and Redis, migrated to head."""
    # Not under pytest's basetemp: a concurrent pytest run prunes old basetemps, and with them
    # a running server's data directory.
    home = Path(tempfile.mkdtemp(prefix="videoq-test-"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        services = embedded_services(home)
        urls = services.__enter__()
    try:
        store.migrate(urls.database_url)
        yield Settings(
            database_url=urls.database_url,
            redis_url=urls.redis_url,
            home=home,
            providers="offline",
            log_level="WARNING",
            retry_delays_s=(0.05, 0.1, 0.2),
        )
    finally:
        services.__exit__(None, None, None)
        shutil.rmtree(home, ignore_errors=True)


@dataclass(frozen=True)
class S3Server:
    """A real S3-compatible server (moto's, in this process, on loopback) and its credentials."""

    endpoint: str

    def bucket(self) -> str:
        """A new, empty bucket."""
        name = f"videoq-{uuid.uuid4().hex[:12]}"
        s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket=name)
        return name

    def url(self, bucket: str, prefix: str = "artifacts") -> str:
        """``VIDEOQ_STORAGE_URL`` of ``bucket``."""
        return f"s3://{bucket}/{prefix}?endpoint_url={self.endpoint}&region=us-east-1"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server for the session; credentials through the usual AWS_* variables, as a
    deployment passes them (subprocess workers inherit them)."""
    os.environ.update(
        AWS_ACCESS_KEY_ID="videoq-test", AWS_SECRET_ACCESS_KEY="videoq-test-secret",
        AWS_REGION="us-east-1",
    )  # fmt: skip
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def settings(base_settings: Settings, tmp_path: Path) -> Settings:
    """Per-test settings: own queue, artifact store (a directory) and scratch; shared
    servers."""
    return base_settings.model_copy(
        update={
            "queue_name": f"test:{uuid.uuid4().hex[:8]}",
            "artifacts_dir": tmp_path / "art",
            "scratch_dir": tmp_path / "scratch",
        }
    )


@pytest.fixture
async def sessions(base_settings: Settings) -> AsyncIterator[Any]:
    assert base_settings.database_url
    engine = store.create_engine(base_settings.database_url)
    yield store.sessionmaker(engine)
    await engine.dispose()


_bookkeepers: list[GroupedWriter] = []


def bookkeeper(sessions: Any, worker_id: str) -> GroupedWriter:
    """A worker's :class:`GroupedWriter` on the test database, closed when the test ends."""
    books = GroupedWriter(sessions.kw["bind"].url.render_as_string(hide_password=False), worker_id)
    _bookkeepers.append(books)
    return books


@pytest.fixture(autouse=True)
async def _close_bookkeepers() -> AsyncIterator[None]:
    yield
    while _bookkeepers:
        await _bookkeepers.pop().aclose()


@pytest.fixture
async def redis(base_settings: Settings) -> AsyncIterator[Redis]:
    assert base_settings.redis_url
    client = Redis.from_url(base_settings.redis_url)
    yield client
    await client.aclose()


async def set_status(sessions: Any, job_id: str, status: str, **values: Any) -> None:
    """Put a job in a state directly (test setup, bypassing the transition guards)."""
    async with sessions() as session:
        stmt = update(store.Job).where(store.Job.id == uuid.UUID(job_id))
        await session.execute(stmt.values(status=status, **values))
        await session.commit()


def auth(key: str) -> dict[str, str]:
    """The headers of a request made with ``key``."""
    return {"Authorization": f"Bearer {key}"}


async def new_key(sessions: Any, tenant: str | None = None, admin: bool = False) -> str:
    async with sessions() as session:
        return await create_key(session, tenant or f"t-{uuid.uuid4().hex[:8]}", admin=admin)


@pytest.fixture
async def api_key(sessions: Any) -> str:
    """A key of a fresh tenant."""
    return await new_key(sessions)


@dataclass
class LiveApi:
    url: str
    settings: Settings


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[LiveApi]:
    """The real app for ``settings``, served by uvicorn on a free port in this event loop."""
    async with serve(create_app(settings), lifespan="on") as url:
        yield LiveApi(url, settings)


@pytest.fixture
async def live_api(settings: Settings) -> AsyncIterator[LiveApi]:
    """The real app served by uvicorn (WebSockets need a real server)."""
    async with serving(settings) as api:
        yield api


@contextlib.asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """httpx on one API process (its own engine and state) for ``settings``, in this event loop
    (lifespan run by hand: ASGITransport does not)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://videoq") as client:
            yield client


@pytest.fixture
async def asgi_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(settings) as client:
        yield client


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, **overrides: Any) -> AsyncIterator[VideoqWorker]:
    """A real arq worker for ``settings`` in this event loop."""
    worker = create_worker(settings, handle_signals=False, **overrides)
    task = asyncio.create_task(worker.async_run())
    while "videoq" not in worker.ctx:  # on_startup done: connected, migrated, registered
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    # ... and subscribed to cancel signals and wake-ups, which tests rely on.
    await asyncio.wait_for(worker.ctx["videoq"].listening.wait(), 10)
    try:
        yield worker
    finally:
        if worker.tasks:  # let arq finish recording jobs that just ended
            await asyncio.wait(list(worker.tasks.values()), timeout=5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(asyncio.CancelledError):
            await worker.close()


@pytest.fixture
async def worker(settings: Settings) -> AsyncIterator[VideoqWorker]:
    async with running_worker(settings) as w:
        yield w


@pytest.fixture
async def client(live_api: LiveApi, api_key: str) -> AsyncIterator[Client]:
    async with Client(live_api.url, api_key) as c:
        yield c


#: Predictions that never finish by themselves: the kill always lands mid-``video_gen``.
FOREVER = 10**9


@dataclass
class Providers:
    """The three mocks, each on a real loopback port, and the worker environment for them."""

    anthropic: AnthropicMock
    elevenlabs: ElevenLabsMock
    replicate: ReplicateMock
    env: dict[str, str]

    def all(self) -> tuple[MockProvider, ...]:
        return (self.anthropic, self.elevenlabs, self.replicate)

    def release(self) -> None:
        """Let every prediction (and any later one) finish at its next poll."""
        self.replicate.polls = 1
        for prediction in self.replicate.predictions.values():
            prediction.polls_left = min(prediction.polls_left, 1)


@pytest.fixture
async def providers() -> AsyncIterator[Providers]:
    anthropic, elevenlabs = AnthropicMock(), ElevenLabsMock()
    replicate = ReplicateMock(polls=FOREVER)
    async with AsyncExitStack() as stack:
        urls = [
            await stack.enter_async_context(serve(mock.app))
            for mock in (anthropic, elevenlabs, replicate)
        ]
        env = {
            "VIDEOQ_PROVIDERS": "auto",
            "ANTHROPIC_API_KEY": anthropic.key,
            "ELEVENLABS_API_KEY": elevenlabs.key,
            "REPLICATE_API_TOKEN": replicate.key,
            "VIDEOQ_ANTHROPIC_BASE_URL": urls[0],
            "VIDEOQ_ELEVENLABS_BASE_URL": urls[1],
            "VIDEOQ_REPLICATE_BASE_URL": urls[2],
            "VIDEOQ_REPLICATE_POLL_S": "0.2",
            "VIDEOQ_REPLICATE_POLL_MAX_S": "0.5",
        }
        yield Providers(anthropic, elevenlabs, replicate, env)


def home(root: Path, name: str, storage_url: str) -> dict[str, str]:
    """The environment of a process whose disk is its own: home, scratch, no local store."""
    return {
        "VIDEOQ_HOME": str(root / name),
        "VIDEOQ_ARTIFACTS_DIR": str(root / name / "artifacts"),
        "VIDEOQ_SCRATCH_DIR": str(root / name / "scratch"),
        "VIDEOQ_STORAGE_URL": storage_url,
    }


async def stage_rows(sessions: Any, job_id: str) -> dict[str, tuple[int, dict[str, Any]]]:
    """The job's ``job_stages`` rows: stage -> (attempt, output)."""
    async with sessions() as session:
        rows = await session.execute(
            select(
                store.StageCheckpoint.stage,
                store.StageCheckpoint.attempt,
                store.StageCheckpoint.output,
            ).where(store.StageCheckpoint.job_id == uuid.UUID(job_id))
        )
        return {stage: (attempt, output) for stage, attempt, output in rows.all()}


async def until_stage_kept(
    sessions: Any,
    job_id: str,
    stage: str,
    worker: WorkerProcess | None = None,
    timeout: float = 60,
) -> None:
    """Poll PostgreSQL until ``stage``'s checkpoint of the job is recorded (voice_gen runs
    beside video_gen: a test that kills a worker mid-video waits for it first)."""
    deadline = time.monotonic() + timeout
    while stage not in await stage_rows(sessions, job_id):
        assert time.monotonic() < deadline, f"{stage} was never kept:\n" + (
            worker.output() if worker is not None else ""
        )
        await asyncio.sleep(0.02)


async def until_every_scene_noted(
    sessions: Any, job_id: str, scenes: int, worker: WorkerProcess, timeout: float = 60
) -> dict[str, Any]:
    """Poll PostgreSQL until the job's ``video_gen.notes`` row records the prediction id of
    each of its ``scenes`` scenes; returns the notes."""
    wanted = {note_key(i) for i in range(scenes)}
    deadline = time.monotonic() + timeout
    while True:
        notes = (await stage_rows(sessions, job_id)).get("video_gen.notes", (0, {}))[1]
        if all((notes.get(key) or {}).get("id") for key in wanted):
            return notes
        assert time.monotonic() < deadline, f"notes {notes} never covered {wanted}:\n" + (
            worker.output()
        )
        await asyncio.sleep(0.05)
