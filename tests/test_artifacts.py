"""The artifact store on a directory (``file://``) and on a real S3-compatible server (moto's,
in-process): what the workers keep, what the API serves, what start-up refuses."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq import ArqRedis
from redis.asyncio import Redis

from tests.conftest import S3Server, app_client, auth, new_key, set_status
from tests.processes import WorkerProcess
from videoq import store
from videoq.api import create_app
from videoq.artifacts import ArtifactStore, open_store
from videoq.errors import RetryableError, StorageMisconfigured
from videoq.pipeline import MemoryCheckpoints, run_pipeline
from videoq.providers import offline_providers
from videoq.settings import Settings
from videoq.types import Brief
from videoq.workers import supervisor
from videoq.workers.state import WorkerState


@pytest.fixture(params=["file", "s3"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return (tmp_path / "store").as_uri()
    server: S3Server = request.getfixturevalue("s3_server")
    return server.url(server.bucket())


@pytest.fixture
async def artifacts(storage_url: str) -> ArtifactStore:
    opened = open_store(Settings(storage_url=storage_url))
    await opened.check()
    return opened


def a_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


async def read_all(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def test_a_kept_file_comes_back_on_an_empty_disk(
    artifacts: ArtifactStore, tmp_path: Path
) -> None:
    # Larger than one part: uploaded in concurrent parts on S3.
    data = a_file(tmp_path / "one" / "job" / "clips" / "scene_00.mp4", 20 * 1024 * 1024 + 7)
    await artifacts.for_job("job", tmp_path / "one" / "job").keep(
        tmp_path / "one" / "job" / "clips" / "scene_00.mp4"
    )
    elsewhere = artifacts.for_job("job", tmp_path / "two" / "job")  # another machine's scratch
    target = tmp_path / "two" / "job" / "clips" / "scene_00.mp4"
    assert await elsewhere.fetch(target)
    assert target.read_bytes() == data
    stat = await artifacts.stat("job/clips/scene_00.mp4")
    assert stat is not None and stat.size == len(data)
    assert await read_all(artifacts.read("job/clips/scene_00.mp4", 100, 200)) == data[100:200]
    assert await read_all(artifacts.read("job/clips/scene_00.mp4", len(data) - 5)) == data[-5:]


async def test_what_was_never_kept_is_missing(artifacts: ArtifactStore, tmp_path: Path) -> None:
    job = artifacts.for_job("nobody", tmp_path / "nobody")
    assert not await job.fetch(tmp_path / "nobody" / "voice.mp3")
    assert await artifacts.stat("nobody/voice.mp3") is None
    assert not (tmp_path / "nobody" / "voice.mp3").exists()


async def test_deleting_a_job_leaves_the_others(artifacts: ArtifactStore, tmp_path: Path) -> None:
    for job in ("old", "new"):
        a_file(tmp_path / job / "video.mp4", 1000)
        await artifacts.for_job(job, tmp_path / job).keep(tmp_path / job / "video.mp4")
    assert await artifacts.delete_prefix("old/") == 1
    assert await artifacts.stat("old/video.mp4") is None
    assert await artifacts.stat("new/video.mp4") is not None


async def test_a_pipeline_resumed_on_an_empty_disk_reruns_nothing(
    storage_url: str, tmp_path: Path, settings: Settings
) -> None:
    """Kept before each checkpoint, fetched back after: a second run on another disk skips
    every stage."""
    job_settings = settings.model_copy(update={"storage_url": storage_url})
    kept = open_store(job_settings)
    checkpoints = MemoryCheckpoints()
    brief = Brief("Acme", duration_s=5, aspect_ratio="1:1")
    first = tmp_path / "machine-a" / "job-1"
    await run_pipeline(
        brief, settings=job_settings, workdir=first, checkpoints=checkpoints,
        report=_quiet, providers=offline_providers(job_settings),
        artifacts=kept.for_job("job-1", first),
    )  # fmt: skip
    second = tmp_path / "machine-b" / "job-1"
    messages: list[str | None] = []

    async def record(stage: str, progress: float, message: str | None = None) -> None:
        messages.append(message)

    result = await run_pipeline(
        brief, settings=job_settings, workdir=second, checkpoints=checkpoints, report=record,
        providers=offline_providers(job_settings), artifacts=kept.for_job("job-1", second),
    )  # fmt: skip
    assert messages == ["skipped"] * 4
    assert result.video_path == second / "video.mp4"
    assert result.video_path.is_file()


async def _quiet(stage: str, progress: float, message: str | None = None) -> None:
    pass


async def test_unknown_scheme_fails_naming_the_setting() -> None:
    with pytest.raises(StorageMisconfigured, match="VIDEOQ_STORAGE_URL=ftp://host/x"):
        open_store(Settings(storage_url="ftp://host/x"))


async def test_an_unknown_option_fails_naming_the_setting() -> None:
    with pytest.raises(StorageMisconfigured, match=r"VIDEOQ_STORAGE_URL=s3://b.*bogus"):
        open_store(Settings(storage_url="s3://bucket?bogus=1"))


async def test_a_missing_bucket_fails_the_start(s3_server: S3Server) -> None:
    missing = open_store(Settings(storage_url=s3_server.url("no-such-bucket-here")))
    with pytest.raises(StorageMisconfigured, match="VIDEOQ_STORAGE_URL=s3://no-such-bucket"):
        await missing.check()


async def test_an_unreachable_endpoint_fails_the_start() -> None:
    url = "s3://bucket/x?endpoint_url=http://127.0.0.1:9&region=us-east-1"
    with pytest.raises(StorageMisconfigured, match="cannot be written"):
        await open_store(Settings(storage_url=url)).check()


async def test_an_outage_mid_job_is_retryable(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.bucket()
    opened = open_store(Settings(storage_url=s3_server.url(bucket)))
    await opened.check()
    a_file(tmp_path / "j" / "voice.mp3", 10)
    gone = open_store(Settings(storage_url=s3_server.url(bucket).replace(
        s3_server.endpoint, "http://127.0.0.1:9")))  # fmt: skip
    with pytest.raises(RetryableError, match="artifact store"):
        await gone.for_job("j", tmp_path / "j").keep(tmp_path / "j" / "voice.mp3")


async def test_the_api_does_not_start_on_a_store_it_cannot_use(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"storage_url": "gs://"}))
    with pytest.raises(StorageMisconfigured, match="VIDEOQ_STORAGE_URL"):
        async with app.router.lifespan_context(app):
            pass


@pytest.fixture
async def s3_api(
    settings: Settings, s3_server: S3Server
) -> AsyncIterator[tuple[httpx.AsyncClient, Settings, Any]]:
    """The API on an S3 store, with one succeeded job whose video is in the store."""
    s3_settings = settings.model_copy(update={"storage_url": s3_server.url(s3_server.bucket())})
    engine = store.create_engine(s3_settings.database_url or "")
    sessions = store.sessionmaker(engine)
    key = await new_key(sessions)
    async with app_client(s3_settings) as client:
        job = await client.post("/v1/jobs", json={"product_name": "S3"}, headers=auth(key))
        job_id = job.json()["id"]
        await set_status(
            sessions, job_id, "succeeded", result={"duration_s": 1.0, "size_bytes": 1000}
        )
        video = Path(s3_settings.scratch) / job_id / "video.mp4"
        data = a_file(video, 1000)
        await open_store(s3_settings).for_job(job_id, video.parent).keep(video)
        yield client, s3_settings, (job_id, key, data)
    await engine.dispose()


async def test_an_object_store_video_is_streamed_with_ranges(
    s3_api: tuple[httpx.AsyncClient, Settings, Any],
) -> None:
    client, _, (job_id, key, data) = s3_api
    whole = await client.get(f"/v1/jobs/{job_id}/video", headers=auth(key))
    assert whole.status_code == 200
    assert whole.content == data
    assert whole.headers["accept-ranges"] == "bytes"
    part = await client.get(
        f"/v1/jobs/{job_id}/video", headers={**auth(key), "Range": "bytes=10-19"}
    )
    assert part.status_code == 206
    assert part.content == data[10:20]
    assert part.headers["content-range"] == "bytes 10-19/1000"
    tail = await client.get(f"/v1/jobs/{job_id}/video", headers={**auth(key), "Range": "bytes=-4"})
    assert (tail.status_code, tail.content) == (206, data[-4:])
    beyond = await client.get(
        f"/v1/jobs/{job_id}/video", headers={**auth(key), "Range": "bytes=5000-"}
    )
    assert beyond.status_code == 416
    assert beyond.json()["error"]["code"] == "range_not_satisfiable"
    assert beyond.headers["content-range"] == "bytes */1000"


async def test_an_object_store_video_can_redirect_to_a_signed_url(
    s3_api: tuple[httpx.AsyncClient, Settings, Any], settings: Settings
) -> None:
    _, s3_settings, (job_id, key, data) = s3_api
    redirecting = s3_settings.model_copy(update={"video_redirect": True})
    async with app_client(redirecting) as other:
        answer = await other.get(f"/v1/jobs/{job_id}/video", headers=auth(key))
    assert answer.status_code == 307
    signed = answer.headers["location"]
    assert "X-Amz-Signature=" in signed
    async with httpx.AsyncClient() as anyone:  # no API key, no AWS credentials: the URL is all
        fetched = await anyone.get(signed)
    assert fetched.status_code == 200
    assert fetched.content == data


# --- Retention and scratch space ----------------------------------------------------------------


async def finished_job(
    client: httpx.AsyncClient, sessions: Any, key: str, *, days_ago: float, kept: ArtifactStore,
    scratch: Path,
) -> str:  # fmt: skip
    """A succeeded job finished ``days_ago``, with its video in the store."""
    created = await client.post("/v1/jobs", json={"product_name": "Old"}, headers=auth(key))
    job_id: str = created.json()["id"]
    await set_status(
        sessions, job_id, "succeeded", result={"duration_s": 1.0, "size_bytes": 10},
        finished_at=datetime.now(UTC) - timedelta(days=days_ago),
    )  # fmt: skip
    video = scratch / job_id / "video.mp4"
    a_file(video, 10)
    await kept.for_job(job_id, video.parent).keep(video)
    return job_id


async def test_expired_artifacts_are_deleted_and_their_video_is_gone(
    asgi_client: httpx.AsyncClient, sessions: Any, settings: Settings, api_key: str,
    redis: Redis,
) -> None:  # fmt: skip
    kept = open_store(settings)
    old = await finished_job(
        asgi_client, sessions, api_key, days_ago=31, kept=kept, scratch=settings.scratch
    )
    recent = await finished_job(
        asgi_client, sessions, api_key, days_ago=29, kept=kept, scratch=settings.scratch
    )
    engine = store.create_engine(settings.database_url or "")
    state = WorkerState(
        settings, engine, store.sessionmaker(engine), ArqRedis(redis.connection_pool), "w-expiry"
    )
    try:
        while await supervisor.expire_artifacts(state):  # other tests' old jobs expire too
            pass
    finally:
        await engine.dispose()
    assert await kept.stat(f"{old}/video.mp4") is None
    assert await kept.stat(f"{recent}/video.mp4") is not None
    gone = await asgi_client.get(f"/v1/jobs/{old}/video", headers=auth(api_key))
    assert gone.status_code == 410
    assert gone.json()["error"]["code"] == "gone"
    view = (await asgi_client.get(f"/v1/jobs/{old}", headers=auth(api_key))).json()
    assert view["status"] == "succeeded" and view["history"] == []
    assert view["result"]["video_url"] is None and view["result"]["expired_at"]
    served = await asgi_client.get(f"/v1/jobs/{recent}/video", headers=auth(api_key))
    assert served.status_code == 200


async def test_a_worker_with_a_full_scratch_disk_takes_no_jobs(
    settings: Settings, redis: Redis
) -> None:
    full = settings.model_copy(update={"scratch_min_free_bytes": 2**62})  # more than any disk
    engine = store.create_engine(full.database_url or "")
    state = WorkerState(
        full, engine, store.sessionmaker(engine), ArqRedis(redis.connection_pool), "w-full"
    )
    try:
        free = supervisor.check_scratch(state)
        assert free > 0 and not state.accepting
        assert supervisor.worker_info(state)["accepting_jobs"] is False
        roomy = settings.model_copy(update={"scratch_min_free_bytes": 0})
        state.settings = roomy
        supervisor.check_scratch(state)
        assert state.accepting
    finally:
        await engine.dispose()


async def test_a_worker_does_not_start_on_a_store_it_cannot_use(
    settings: Settings, tmp_path: Path
) -> None:
    worker = WorkerProcess(settings, tmp_path, VIDEOQ_STORAGE_URL="s3://")
    worker.start()
    try:
        assert await worker.exited(timeout=60) != 0
    finally:
        worker.stop()
    assert "VIDEOQ_STORAGE_URL=s3://" in worker.output()
