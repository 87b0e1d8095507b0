"""The worker as users run it: `arq videoq.workers.WorkerSettings`, and failures recorded as
failed jobs with clear error codes."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import LiveApi, running_worker
from videoq import store
from videoq.children import preexec
from videoq.client import Client
from videoq.settings import Settings


def failing_ffmpeg(directory: Path) -> Path:
    """An 'ffmpeg' that always fails the way a broken FFmpeg would."""
    script = directory / "ffmpeg"
    script.write_text("#!/bin/sh\necho 'Unknown encoder libx264' >&2\nexit 1\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


async def test_ffmpeg_failure_fails_the_job_with_a_clear_code(
    live_api: LiveApi, client: Client, settings: Settings, tmp_path: Path
) -> None:
    broken = settings.model_copy(update={"ffmpeg_path": str(failing_ffmpeg(tmp_path))})
    async with running_worker(broken):
        job = await client.submit(product_name="Broken Encoder", duration_s=5)
        final = await client.wait(job.id, timeout=60)
    assert final.status == "failed"
    assert final.error is not None and final.error.code == "ffmpeg_failed"
    assert not final.error.retryable and "Unknown encoder libx264" in final.error.message
    assert final.attempts == 1  # permanent: no retry
    assert final.finished_at is not None


async def test_arq_cli_runs_worker_settings_as_is(
    asgi_client: httpx.AsyncClient, api_key: str, settings: Settings, sessions: Any
) -> None:
    """`arq videoq.workers.WorkerSettings --burst`, configured only by VIDEOQ_* variables."""
    headers = {"Authorization": f"Bearer {api_key}"}
    response = await asgi_client.post(
        "/v1/jobs", json={"product_name": "Burst Mode", "duration_s": 5}, headers=headers
    )
    assert response.status_code == 202
    job_id = response.json()["id"]
    env = {
        **os.environ,
        "VIDEOQ_DATABASE_URL": settings.database_url or "",
        "VIDEOQ_REDIS_URL": settings.redis_url or "",
        "VIDEOQ_QUEUE_NAME": settings.queue_name,
        "VIDEOQ_ARTIFACTS_DIR": str(settings.artifacts),
        "VIDEOQ_SCRATCH_DIR": str(settings.scratch),
        "VIDEOQ_PROVIDERS": "offline",
    }
    arq = Path(sys.executable).with_name("arq")
    proc = await asyncio.create_subprocess_exec(
        str(arq), "videoq.workers.WorkerSettings", "--burst", env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=preexec(),
    )  # fmt: skip
    output, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, output.decode()[-2000:]
    async with sessions() as session:
        row = await session.get(store.Job, uuid.UUID(job_id))
    assert row.status == "succeeded", (row.error, output.decode()[-2000:])
    assert (settings.artifacts / job_id / "video.mp4").is_file()
