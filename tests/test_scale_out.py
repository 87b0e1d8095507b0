"""Scale-out across machines: two `videoq worker` processes with separate homes (each its own
scratch disk, as on two machines) share only PostgreSQL, Redis and the artifact store. The
worker running a job is SIGKILLed in the middle of ``video_gen``, after every scene's Replicate
prediction exists; the other worker, whose scratch is empty, finishes the job from the
checkpoints and the store. The spec-checked provider mocks (served on loopback, as the real
APIs would be reached) prove that nothing paid was bought twice: one script, one voice track,
one prediction per scene. An API with a third home, which never saw a job's file, then serves
the video (``200``, and ``206`` for a range). Run for a shared ``file://`` directory and for
``s3://`` (moto's S3 server).
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.conftest import (
    Providers,
    S3Server,
    auth,
    home,
    new_key,
    serving,
    stage_rows,
    until_every_scene_noted,
    until_stage_kept,
)
from tests.processes import WorkerProcess
from videoq.client import Client
from videoq.pipeline import STAGES
from videoq.pipeline.video_gen import note_key
from videoq.settings import Settings
from videoq.types import scene_count

DURATION_S = 15
SCENES = scene_count(DURATION_S)


async def until_stage(client: Client, job_id: str, stage: str) -> None:
    async for event in client.events(job_id):
        if event.stage == stage:
            return
    raise AssertionError(f"job {job_id} ended before {stage}: {await client.get(job_id)}")


async def until_gone(path: Path, worker: WorkerProcess, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while path.exists():  # noqa: ASYNC240
        assert time.monotonic() < deadline, f"{path} left behind:\n{worker.output()}"
        await asyncio.sleep(0.05)


@pytest.fixture(params=["file", "s3"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return (tmp_path / "shared-store").as_uri()
    server: S3Server = request.getfixturevalue("s3_server")
    return server.url(server.bucket())


@pytest.mark.timeout(240)
async def test_kill_9_mid_video_gen_finishes_on_another_machine_buying_nothing_twice(
    settings: Settings, storage_url: str, providers: Providers, redis: Redis, sessions: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    first = WorkerProcess(
        settings, tmp_path / "logs", **home(tmp_path, "a", storage_url), **providers.env
    )
    second = WorkerProcess(
        settings, tmp_path / "logs", **home(tmp_path, "b", storage_url), **providers.env
    )
    api_home = tmp_path / "api"
    api_settings = settings.model_copy(
        update={
            "home": api_home,
            "artifacts_dir": api_home / "artifacts",
            "scratch_dir": api_home / "scratch",
            "storage_url": storage_url,
        }
    )
    key = await new_key(sessions)
    try:
        async with serving(api_settings) as api, Client(api.url, key) as client:
            first.start()
            await first.registered(redis, timeout=60)
            job = await client.submit(product_name="Scale Out", duration_s=DURATION_S)
            await asyncio.wait_for(until_stage(client, job.id, "video_gen"), 90)
            notes = await until_every_scene_noted(sessions, job.id, SCENES, first)
            assert providers.replicate.calls["create"] == SCENES, first.output()
            await until_stage_kept(sessions, job.id, "voice_gen", first)  # it runs beside
            first.signal(signal.SIGKILL)
            await first.exited()
            providers.release()
            second.start()
            second_id = await second.registered(redis, timeout=60)
            final = await client.wait(job.id, timeout=120)
            assert final.status == "succeeded", (final, second.output())

            # The job finished on the other machine, from the first one's checkpoints.
            assert final.attempts == 2
            assert final.worker_id == second_id
            assert final.model_extra is not None
            outcomes = [h["outcome"] for h in final.model_extra["history"]]
            assert outcomes == ["worker_lost", "succeeded"]
            rows = await stage_rows(sessions, job.id)
            assert {stage: rows[stage][0] for stage in STAGES} == {
                "script_gen": 1, "voice_gen": 1, "video_gen": 2, "compositing": 2,
            }  # fmt: skip
            # Every paid output bought once: the clips are the predictions the first worker
            # created (re-attached to, not bought again).
            assert providers.anthropic.calls["messages"] == 1
            assert providers.elevenlabs.calls["tts"] == 1
            assert providers.replicate.calls["create"] == SCENES
            work_ids = rows["video_gen"][1]["work_ids"]
            assert sorted(work_ids) == sorted(providers.replicate.predictions)
            assert [notes[note_key(i)]["id"] for i in range(SCENES)] == work_ids
            for mock in providers.all():
                assert mock.invalid == [], f"{type(mock).__name__} saw requests off the spec"
            # A finished job's scratch is removed (the store has what it kept).
            await until_gone(tmp_path / "b" / "scratch" / job.id, second)

            # The API's own disk never held the video: it serves it from the store.
            async with httpx.AsyncClient(base_url=api.url, headers=auth(key), timeout=30) as http:
                whole = await http.get(f"/v1/jobs/{job.id}/video")
                assert whole.status_code == 200, whole.text
                assert whole.content[4:8] == b"ftyp"
                assert final.result is not None
                assert len(whole.content) == final.result.size_bytes
                part = await http.get(f"/v1/jobs/{job.id}/video", headers={"Range": "bytes=0-99"})
                assert part.status_code == 206, part.text
                assert part.content == whole.content[:100]
                assert part.headers["content-range"] == f"bytes 0-99/{len(whole.content)}"
            assert not (api_home / "artifacts" / job.id).exists()
    finally:
        first.stop()
        second.stop()
