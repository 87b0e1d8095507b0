"""`videoq submit`'s flags reach the API as the fields of `POST /v1/jobs`, and `videoq download`
saves a finished job's video."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.commands import isolated, one_line, videoq
from tests.conftest import LiveApi, new_key, running_worker
from videoq import store
from videoq.settings import Settings


async def _job_row(sessions: Any, job_id: str) -> store.Job:
    async with sessions() as session:
        row: store.Job | None = await session.get(store.Job, uuid.UUID(job_id))
    assert row is not None
    return row


async def test_submit_has_a_flag_for_every_create_field(
    live_api: LiveApi, sessions: Any, tmp_path: Path
) -> None:
    env = isolated(tmp_path, VIDEOQ_API_URL=live_api.url, VIDEOQ_API_KEY=await new_key(sessions))
    code, out, err = await videoq(
        "submit", "Flagged Lamp", "--style", "bold", "--cta", "Buy", "--prompt", "warm light",
        "--duration", "6", "--aspect-ratio", "1:1", "--voice", "v-1", "--no-captions",
        "--priority", "high",
        "--delay", "3600", "--max-retries", "1", "--option", "providers=offline",
        "--option", "job_timeout_s=600", "--idempotency-key", "flagged-1", "--json",
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    job = json.loads(out)
    assert job["priority"] == "high" and job["status"] == "scheduled"
    row = await _job_row(sessions, job["id"])
    assert row.brief == {
        "product_name": "Flagged Lamp", "style": "bold", "cta_text": "Buy",
        "prompt": "warm light", "duration_s": 6, "aspect_ratio": "1:1", "voice": "v-1",
        "captions": False,
    }  # fmt: skip
    assert row.max_retries == 1
    assert row.options == {"providers": "offline", "job_timeout_s": 600}
    # The same idempotency key: the same job.
    code, again, _ = await videoq(
        "submit", "Flagged Lamp", "--style", "bold", "--cta", "Buy", "--prompt", "warm light",
        "--duration", "6", "--aspect-ratio", "1:1", "--voice", "v-1", "--no-captions",
        "--priority", "high",
        "--delay", "3600", "--max-retries", "1", "--option", "providers=offline",
        "--option", "job_timeout_s=600", "--idempotency-key", "flagged-1", "--json",
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert code == 0 and json.loads(again)["id"] == job["id"]
    run_at = (datetime.now(UTC) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    code, out, err = await videoq(
        "submit", "Later Lamp", "--run-at", run_at, "--webhook-url", "https://hooks.example/x",
        "--json", env=env, cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    row = await _job_row(sessions, json.loads(out)["id"])
    assert row.status == "scheduled" and row.run_at is not None
    assert row.webhook_url == "https://hooks.example/x"


async def test_download_saves_the_video(
    live_api: LiveApi, sessions: Any, settings: Settings, tmp_path: Path
) -> None:
    env = isolated(tmp_path, VIDEOQ_API_URL=live_api.url, VIDEOQ_API_KEY=await new_key(sessions))
    async with running_worker(settings.model_copy(update={"pipeline": "tests.fakes:quick"})):
        code, out, err = await videoq("submit", "Saved", "--watch", "--json", env=env, cwd=tmp_path)
    assert code == 0, err
    job_id = json.loads(out)["id"]
    target = tmp_path / "lamp.mp4"
    code, out, err = await videoq("download", job_id, str(target), env=env, cwd=tmp_path)
    assert code == 0, err
    assert out.strip() == str(target.resolve()) and target.read_bytes() == b"\0" * 64
    code, out, err = await videoq("download", job_id, env=env, cwd=tmp_path)
    assert code == 0 and (tmp_path / f"{job_id}.mp4").read_bytes() == b"\0" * 64
    code, _, err = await videoq("download", job_id, "no/such/dir/v.mp4", env=env, cwd=tmp_path)
    assert code == 2 and "no directory no/such/dir" in one_line(err)
