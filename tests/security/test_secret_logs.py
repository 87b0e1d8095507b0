"""The logs of a whole job, captured from a real API process and a real worker process at DEBUG
level, hold none of the secrets those processes had: the provider keys (set, with providers
forced offline so nothing leaves the machine), the caller's API key, the tenant's webhook
signing secret, the inbound webhook secrets, the signatures sent, and a token in the webhook
URL's query."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from websockets.asyncio.client import connect

from tests.conftest import new_key
from tests.mocks.server import serve
from tests.processes import WorkerProcess
from tests.security.conftest import (
    GITHUB_SECRET,
    REPLICATE_SECRET,
    auth,
    replicate_headers,
)
from videoq import store
from videoq.children import preexec
from videoq.embedded import free_port
from videoq.settings import Settings

PROVIDER_KEYS = {
    "ANTHROPIC_API_KEY": "sk-ant-api03-" + uuid.uuid4().hex,
    "ELEVENLABS_API_KEY": "el_" + uuid.uuid4().hex,
    "REPLICATE_API_TOKEN": "r8_" + uuid.uuid4().hex,
}


def _spawn_api(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "videoq", "api", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec(),
        )  # fmt: skip


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, so the process logs its shutdown too; SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def _until_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(600):
            assert proc.poll() is None, "the API exited"
            try:
                if (await http.get(f"{url}/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("the API never came up")


async def _delivered(sessions: Any, job_id: str) -> None:
    """Until the job's webhook is recorded as delivered (the worker logs it then)."""
    async with asyncio.timeout(30):
        while True:
            async with sessions() as session:
                query = select(store.WebhookDelivery.status).where(
                    store.WebhookDelivery.job_id == uuid.UUID(job_id)
                )
                if (await session.execute(query)).scalar_one_or_none() == "delivered":
                    return
            await asyncio.sleep(0.05)


async def test_a_full_job_logs_no_secret(settings: Settings, sessions: Any, tmp_path: Path) -> None:
    key = await new_key(sessions)
    hook_token = "hooktoken" + uuid.uuid4().hex
    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: Request) -> Response:
        received.append((dict(request.headers), await request.body()))
        return Response(status_code=204)

    env = {
        **os.environ,
        **PROVIDER_KEYS,
        "VIDEOQ_DATABASE_URL": settings.database_url or "",
        "VIDEOQ_REDIS_URL": settings.redis_url or "",
        "VIDEOQ_QUEUE_NAME": settings.queue_name,
        "VIDEOQ_ARTIFACTS_DIR": str(settings.artifacts),
        "VIDEOQ_SCRATCH_DIR": str(settings.scratch),
        "VIDEOQ_PROVIDERS": "offline",
        "VIDEOQ_LOG_FORMAT": "json",
        "VIDEOQ_LOG_LEVEL": "DEBUG",
        "VIDEOQ_GITHUB_WEBHOOK_SECRET": GITHUB_SECRET,
        "VIDEOQ_REPLICATE_WEBHOOK_SECRET": REPLICATE_SECRET,
        "VIDEOQ_WEBHOOK_ALLOWED_NETWORKS": '["127.0.0.1/32"]',
        "VIDEOQ_RECONCILE_S": "3600",  # only this test's job: leave other tests' rows alone
    }
    port = free_port()
    api_log = tmp_path / "api.log"
    async with serve(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as hooks_url:
        api = _spawn_api(port, env, api_log)
        worker = WorkerProcess(settings, tmp_path, **{k: v for k, v in env.items() if k != "PATH"})
        worker.env["PATH"] = os.environ.get("PATH", "")
        worker.start()
        url = f"http://127.0.0.1:{port}"
        try:
            await _until_up(url, api)
            async with httpx.AsyncClient(base_url=url, headers=auth(key), timeout=30) as http:
                created = await http.post(
                    "/v1/jobs",
                    json={
                        "product_name": "Solar Kettle';[0:v]drawtext=text=x",
                        "cta_text": "Buy now",
                        "duration_s": 5,
                        "webhook_url": f"{hooks_url}/hook?token={hook_token}",
                    },
                )
                assert created.status_code == 202, created.text
                job_id = created.json()["id"]
                ws = url.replace("http", "ws", 1) + f"/v1/jobs/{job_id}/events?token={key}"
                async with connect(ws) as socket_, asyncio.timeout(120):
                    async for message in socket_:
                        event = json.loads(message)
                        if event["type"] == "status" and event["status"] in ("succeeded", "failed"):
                            break
                assert event["status"] == "succeeded", event
                video = await http.get(f"/v1/jobs/{job_id}/video")
                assert video.status_code == 200 and video.content[4:8] == b"ftyp"
                secret = (await http.get("/v1/webhooks/secret")).json()["secret"]
                body = json.dumps({"id": "pred" + uuid.uuid4().hex[:8], "status": "succeeded"})
                replicate = await http.post(
                    "/v1/webhooks/replicate",
                    content=body,
                    headers=replicate_headers(body.encode()),
                )
                assert replicate.status_code == 200
                # A wrong key and a forged webhook: refusals are logged too.
                assert (
                    await http.get("/v1/jobs", headers=auth("vq_" + "x" * 40))
                ).status_code == 401
                forged = await http.post("/v1/webhooks/github", content=b"{}",
                                         headers={"X-Hub-Signature-256": "sha256=00"})  # fmt: skip
                assert forged.status_code == 401
            await _delivered(sessions, job_id)
        finally:
            await asyncio.gather(
                asyncio.to_thread(_stop, api), asyncio.to_thread(_stop, worker.proc)
            )
    logs = b"".join(p.read_bytes() for p in (api_log, worker.log_path)).decode(errors="replace")
    # The capture is real: the whole job is in it, at debug level, from both processes.
    events = [json.loads(line)["event"] for line in logs.splitlines() if line.startswith("{")]
    for expected in ("worker_started", "job_started", "job_succeeded", "webhook_delivered"):
        assert expected in events, (expected, logs[-3000:])
    signatures = [headers["webhook-signature"].split(",", 1)[1] for headers, _ in received]
    secrets = {
        **PROVIDER_KEYS,
        "videoq API key": key,
        "tenant webhook secret": secret,
        "its key": secret.removeprefix("whsec_"),
        "GitHub webhook secret": GITHUB_SECRET,
        "Replicate webhook secret": REPLICATE_SECRET.removeprefix("whsec_"),
        "token in the webhook URL": hook_token,
        **{f"signature {i}": s for i, s in enumerate(signatures)},
    }
    leaked = {name for name, value in secrets.items() if value in logs}
    assert leaked == set(), f"secrets in the logs: {sorted(leaked)}"
