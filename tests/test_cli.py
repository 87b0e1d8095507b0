"""The `videoq` command line, through click's runner and as real subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
import httpx
from click.testing import CliRunner

from tests.commands import videoq
from videoq.children import preexec
from videoq.cli import main
from videoq.settings import Settings
from videoq.store import ApiKey, create_engine
from videoq.store.apikeys import hash_key


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        "VIDEOQ_DATABASE_URL": settings.database_url or "",
        "VIDEOQ_REDIS_URL": settings.redis_url or "",
        "VIDEOQ_HOME": str(settings.home),
        **extra,
    }


def test_keys_create_prints_a_key_stored_only_as_hash(settings: Settings) -> None:
    result = CliRunner().invoke(
        main, ["keys", "create", "--tenant", "acme", "--admin"], env=env_for(settings)
    )
    assert result.exit_code == 0, result.output
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("vq_") and len(key) > 40

    async def stored_keys() -> list[Any]:
        assert settings.database_url
        engine = create_engine(settings.database_url)
        async with engine.connect() as conn:
            rows = (await conn.execute(ApiKey.__table__.select())).all()
        await engine.dispose()
        return list(rows)

    rows = asyncio.run(stored_keys())
    stored = [r for r in rows if r.key_hash == hash_key(key)]
    assert len(stored) == 1 and stored[0].tenant == "acme" and stored[0].is_admin
    assert all(key not in str(tuple(r)) for r in rows)


def test_keys_create_requires_tenant() -> None:
    result = CliRunner().invoke(main, ["keys", "create"])
    assert result.exit_code == 2 and "--tenant" in result.output


def test_render_offline_writes_an_mp4_without_redis_or_database(tmp_path: Path) -> None:
    out = tmp_path / "lamp.mp4"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOQ_")}
    env["VIDEOQ_HOME"] = str(tmp_path / "home")
    proc = subprocess.run(
        [sys.executable, "-m", "videoq", "render", "--offline", "Desk Lamp", "--duration", "5",
         "--aspect", "1:1", "--cta", "Shop now", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=120, preexec_fn=preexec(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out.resolve())
    with av.open(str(out)) as container:
        video = container.streams.video[0].codec_context
        assert (video.name, video.width, video.height) == ("h264", 1080, 1080)
    assert not (tmp_path / "home").exists()  # no embedded services were started


def test_dev_prints_its_urls_serves_and_stops_cleanly(settings: Settings, tmp_path: Path) -> None:
    """`videoq dev` with URLs set: migrations, API and a worker as processes; SIGTERM stops all."""
    env = {**os.environ, **env_for(settings, VIDEOQ_HOME=str(tmp_path))}
    env["VIDEOQ_QUEUE_NAME"] = settings.queue_name
    proc = subprocess.Popen(
        [sys.executable, "-m", "videoq", "dev", "--port", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        preexec_fn=preexec(),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = dict(proc.stdout.readline().strip().split("=", 1) for _ in range(4))
        assert set(lines) == {
            "VIDEOQ_API_URL", "VIDEOQ_API_KEY", "VIDEOQ_DATABASE_URL", "VIDEOQ_REDIS_URL"
        }  # fmt: skip
        assert lines["VIDEOQ_DATABASE_URL"] == settings.database_url
        health = httpx.get(lines["VIDEOQ_API_URL"] + "/health").json()
        assert health["status"] == "healthy" and health["workers"] >= 1
        headers = {"Authorization": f"Bearer {lines['VIDEOQ_API_KEY']}"}
        listed = httpx.get(lines["VIDEOQ_API_URL"] + "/v1/jobs", headers=headers)
        assert listed.status_code == 200
        # Other commands in the same directory find the running dev stack.
        status = subprocess.run(
            [sys.executable, "-m", "videoq", "submit", "From the CLI", "--duration", "5",
             "--json", "--watch"],
            env={**env, "VIDEOQ_API_URL": "", "VIDEOQ_API_KEY": ""}, cwd=tmp_path.parent,
            capture_output=True, text=True, timeout=120, preexec_fn=preexec(),
        )  # fmt: skip
        assert status.returncode == 0, status.stderr[-2000:]
        assert '"status": "succeeded"' in status.stdout
        # The scenes are listed as they land, above the bars.
        assert "storyboard: " in status.stderr and "scene 0 landed: " in status.stderr
        assert "poster: " in status.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    started = time.monotonic()
    while time.monotonic() - started < 5:
        try:
            httpx.get(lines["VIDEOQ_API_URL"] + "/health", timeout=0.5)
        except httpx.HTTPError:
            break
    else:
        raise AssertionError("the API kept running after videoq dev stopped")


async def run_cli(*args: str, url: str, key: str) -> tuple[int, str, str]:
    """`videoq …` as a subprocess, so the in-process API keeps serving meanwhile."""
    env = {**os.environ, "VIDEOQ_API_URL": url, "VIDEOQ_API_KEY": key}
    return await videoq(*args, env=env, timeout_s=60)


async def test_job_commands_print_tables_json_and_exit_codes(
    live_api: Any, sessions: Any, settings: Settings
) -> None:
    from tests.conftest import new_key, running_worker

    key = await new_key(sessions, admin=True)
    url = live_api.url
    code, out, _ = await run_cli("submit", "CLI Lamp", "--json", url=url, key=key)
    assert code == 0
    job_id = json.loads(out)["id"]
    code, out, _ = await run_cli("status", job_id, url=url, key=key)
    assert code == 0 and job_id in out and "queued" in out
    code, out, _ = await run_cli("jobs", "--json", url=url, key=key)
    assert code == 0 and [j["id"] for j in json.loads(out)] == [job_id]
    code, out, _ = await run_cli("cancel", job_id, "--json", url=url, key=key)
    assert code == 0 and json.loads(out)["status"] == "cancelled"
    code, _, err = await run_cli("cancel", job_id, url=url, key=key)
    assert code == 1 and "409" in err  # already finished
    code, out, _ = await run_cli("retry", job_id, "--json", url=url, key=key)
    assert code == 0 and json.loads(out)["status"] == "queued"
    async with running_worker(settings.model_copy(update={"pipeline": "tests.fakes:quick"})):
        code, out, _ = await run_cli("submit", "Watched", "--watch", "--json", url=url, key=key)
        assert code == 0 and json.loads(out)["status"] == "succeeded"
        code, out, _ = await run_cli("info", "--json", url=url, key=key)
    assert code == 0
    info = json.loads(out)
    assert info["queue"]["counts"]["succeeded"] >= 1 and info["workers"]
    code, out, _ = await run_cli("info", url=url, key=key)
    assert code == 0 and "workers" in out
    code, _, _ = await run_cli("status", "--nope", url=url, key=key)
    assert code == 2  # usage error
