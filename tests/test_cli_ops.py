"""Operating the service from the command line: `videoq process-pending` and `worker --burst`
(everything due, then exit, with a summary), `videoq worker --check` (a liveness probe for one
host's or one id's worker), `videoq info`'s feed figures, and the plain `arq` command's logs
(each line once, no misleading "delayed")."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.config
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq.logs import default_log_config

from tests.commands import isolated, videoq
from tests.conftest import LiveApi, auth, new_key, running_worker
from tests.test_feed import BREAD, finished_video
from videoq.children import preexec
from videoq.cli import ops
from videoq.logs import configure_logging
from videoq.settings import Settings
from videoq.store.tables import FeedUser
from videoq.workers import supervisor, worker_options

ROOT = Path(__file__).resolve().parent.parent


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    """The test's servers, queue and directories, and the quick fake pipeline."""
    test = {
        "VIDEOQ_DATABASE_URL": settings.database_url or "",
        "VIDEOQ_REDIS_URL": settings.redis_url or "",
        "VIDEOQ_QUEUE_NAME": settings.queue_name,
        "VIDEOQ_SCRATCH_DIR": str(settings.scratch),
        "VIDEOQ_ARTIFACTS_DIR": str(settings.artifacts),
        "VIDEOQ_PIPELINE": "tests.fakes:quick",
    }
    return isolated(settings.home, **{**test, **extra})


async def _videoq(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    return await videoq(*args, env=env, cwd=ROOT, timeout_s=180)


async def _create(http: httpx.AsyncClient, key: str, **fields: Any) -> str:
    response = await http.post(
        "/v1/jobs", json={"product_name": "Pending", "duration_s": 5, **fields}, headers=auth(key)
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


@pytest.mark.parametrize("command", [("process-pending",), ("worker", "--burst")])
async def test_process_pending_runs_what_is_due_then_exits_with_a_summary(
    command: tuple[str, ...], asgi_client: httpx.AsyncClient, settings: Settings, sessions: Any
) -> None:
    """Jobs due now run, whatever their priority; one scheduled an hour ahead stays, and does
    not keep the run going (arq's own burst would wait for it)."""
    key = await new_key(sessions)
    due = [await _create(asgi_client, key, priority=p) for p in ("high", "normal", "low")]
    later = await _create(asgi_client, key, delay_s=3600.0)
    code, out, err = await _videoq(*command, env=_env(settings))
    assert code == 0, err[-3000:]
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("processed: 3 succeeded, 0 failed"), out
    assert "still waiting: 1 " in summary, summary
    for job_id in due:
        job = (await asgi_client.get(f"/v1/jobs/{job_id}", headers=auth(key))).json()
        assert job["status"] == "succeeded"
    job = (await asgi_client.get(f"/v1/jobs/{later}", headers=auth(key))).json()
    assert job["status"] == "scheduled"


@pytest.mark.parametrize("command", [("process-pending",), ("worker", "--burst")])
async def test_process_pending_refills_feeds_due_and_info_shows_the_feed_figures(
    command: tuple[str, ...], live_api: LiveApi, settings: Settings, sessions: Any
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    key, admin = await new_key(sessions, tenant), await new_key(sessions, admin=True)
    videos = [
        await finished_video(sessions, tenant, f"Loaf {n}", "playful", BREAD) for n in range(4)
    ]
    async with httpx.AsyncClient(base_url=live_api.url) as http:

        async def figures() -> dict[str, int]:
            stats = await http.get("/v1/queue/stats", headers=auth(admin))
            assert stats.status_code == 200
            feed: dict[str, int] = stats.json()["feed"]
            return feed

        before = await figures()
        for n in range(settings.preference_update_threshold):
            body = {"user_id": "u-1", "video_id": videos[n % 4], "type": "like"}
            posted = await http.post("/v1/interactions", json=body, headers=auth(key))
            assert posted.status_code == 202, posted.text
        due = await figures()
        assert due["users_due"] == before["users_due"] + 1
        assert set(due) == {"users_due", "generated_waiting"}
        api = {"VIDEOQ_API_URL": live_api.url, "VIDEOQ_API_KEY": admin}
        code, out, err = await _videoq("info", env=_env(settings, **api))
        assert code == 0, err
        assert f"feeds: {due['users_due']} users due a refill" in out
        code, out, err = await _videoq("info", "--json", env=_env(settings, **api))
        assert json.loads(out)["queue"]["feed"]["users_due"] == due["users_due"]

        code, out, err = await _videoq(*command, env=_env(settings))
        assert code == 0, err[-3000:]
        refills = int(out.strip().splitlines()[-1].split(", ")[2].split()[0])
        assert refills >= 1, (out, err[-3000:])
        prefs = (await http.get("/v1/users/u-1/preferences", headers=auth(key))).json()
        assert prefs["pending_interactions"] == 0 and prefs["preference_updated_at"]
        assert (await figures())["users_due"] < due["users_due"]
    async with sessions() as session:  # leave no user due for the other tests
        user = await session.get(FeedUser, (tenant, "u-1"))
        assert user is not None and user.pending == 0


async def test_worker_check_answers_for_this_host_or_one_id(settings: Settings) -> None:
    env = _env(settings)
    async with running_worker(settings) as worker:
        state = worker.ctx["videoq"]
        await supervisor.beat(state)
        code, out, err = await _videoq("worker", "--check", env=env)
        assert code == 0 and state.worker_id in out, err
        code, out, _ = await _videoq("worker", "--check", "--id", state.worker_id, env=env)
        assert code == 0 and out.startswith("healthy: ")
        code, _, err = await _videoq("worker", "--check", "--id", "no-such-host:", env=env)
        assert code == 1 and "no worker no-such-host:" in err
    # Shut down: it left the registry.
    code, _, err = await _videoq("worker", "--check", "--id", state.worker_id, env=env)
    assert code == 1 and err.startswith("unhealthy: ")


async def test_worker_check_without_redis_is_unhealthy(settings: Settings) -> None:
    env = _env(settings, VIDEOQ_REDIS_URL="redis://127.0.0.1:9/0")
    code, _, err = await _videoq("worker", "--check", env=env)
    assert code == 1 and "cannot reach Redis" in err and "Traceback" not in err


def test_arq_health_key_is_renewed_as_often_as_workers_go_stale(settings: Settings) -> None:
    """arq's health key is one for all the queue's workers and a worker's shutdown deletes
    it: renewed every `worker_stale_s`, `arq --check` passes again that soon."""
    assert worker_options(settings)["health_check_interval"] == settings.worker_stale_s


@pytest.fixture
def arq_cli_logging() -> Iterator[io.StringIO]:
    """Logging as `arq videoq.workers.WorkerSettings` leaves it (arq's dictConfig), then ours."""
    logging.config.dictConfig(default_log_config(verbose=False))
    captured = io.StringIO()
    configure_logging(Settings(), stream=captured)
    try:
        yield captured
    finally:
        configure_logging(Settings())
        logging.getLogger("arq").setLevel(logging.NOTSET)


def test_arq_lines_are_written_once(arq_cli_logging: io.StringIO, capsys: Any) -> None:
    logging.getLogger("arq.worker").info("Starting worker for %d functions: %s", 1, "run_job")
    lines = arq_cli_logging.getvalue().splitlines()
    assert sum("Starting worker for 1 functions" in line for line in lines) == 1
    assert logging.getLogger("arq").handlers == []
    assert "Starting worker" not in capsys.readouterr().err  # arq's own handler is gone


def test_arq_start_line_does_not_call_a_priority_a_delay(arq_cli_logging: io.StringIO) -> None:
    """A `normal` job's score is 300 s before its enqueue (priorities are score offsets): arq
    would log `delayed=300.01s` for a job that waited 10 ms."""
    log = logging.getLogger("arq.worker")
    log.info("%6.2fs → %s(%s)%s", 0.01, "abc:run_job", "'abc'", " try=2 delayed=300.01s")
    log.info("%6.2fs → %s(%s)%s", 0.02, "def:run_job", "'def'", " delayed=600.00s")
    text = arq_cli_logging.getvalue()
    assert "delayed" not in text
    assert "abc:run_job('abc') try=2" in text and "def:run_job('def')" in text


async def test_the_plain_arq_command_logs_each_line_once_and_no_priority_delay(
    asgi_client: httpx.AsyncClient, settings: Settings, sessions: Any
) -> None:
    key = await new_key(sessions)
    job_id = await _create(asgi_client, key, priority="normal")
    arq = Path(sys.executable).with_name("arq")
    proc = await asyncio.create_subprocess_exec(
        str(arq), "videoq.workers.WorkerSettings", "--burst", env=_env(settings), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=preexec(),
    )  # fmt: skip
    raw, _ = await asyncio.wait_for(proc.communicate(), 180)
    output = raw.decode()
    assert proc.returncode == 0, output[-3000:]
    lines = output.splitlines()
    started = [line for line in lines if f"{job_id}:run_job" in line and "→" in line]
    assert len(started) == 1, output[-3000:]  # once, in videoq's format
    assert "delayed=" not in output
    assert sum("worker_started" in line for line in lines) == 1
    job = (await asgi_client.get(f"/v1/jobs/{job_id}", headers=auth(key))).json()
    assert job["status"] == "succeeded"


async def test_process_pending_stopped_by_a_signal_says_so_and_requeues(
    asgi_client: httpx.AsyncClient, settings: Settings, sessions: Any
) -> None:
    key = await new_key(sessions)
    job_id = await _create(asgi_client, key)
    env = _env(settings, VIDEOQ_PIPELINE="tests.fakes:slow", VIDEOQ_SHUTDOWN_GRACE_S="0")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "videoq", "process-pending", env=env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec(),
    )  # fmt: skip
    try:
        for _ in range(600):
            job = (await asgi_client.get(f"/v1/jobs/{job_id}", headers=auth(key))).json()
            if job["status"] == "running":
                break
            await asyncio.sleep(0.1)
        assert job["status"] == "running"
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 130, err.decode()[-3000:]
    assert "Traceback" not in err.decode()
    assert err.decode().strip().splitlines()[-1].startswith("error: stopped by a signal")
    job = (await asgi_client.get(f"/v1/jobs/{job_id}", headers=auth(key))).json()
    assert job["status"] == "queued"


#: `videoq api` with uvicorn's run replaced: what the process is set up with when it would serve.
_SERVED_WITH = """
import gc, json, uvicorn
from videoq.cli import main

def run(app, **options):
    young, *_ = gc.get_threshold()
    print(json.dumps({"young": young, "frozen": gc.get_freeze_count(), **{
        name: options[name] for name in ("access_log", "server_header", "lifespan")}}))

uvicorn.run = run
main(["api", "--port", "0"])
"""


async def test_the_api_process_is_set_up_for_a_long_run(settings: Settings) -> None:
    # What it was built with is frozen (full collections no longer walk it), its youngest
    # generation collected less often; no access log to format, no Server header to send.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SERVED_WITH, env=_env(settings), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec(),
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    served = json.loads(out.decode().strip().splitlines()[-1])
    assert served["young"] == ops.YOUNG_GENERATION > 700
    assert served["frozen"] > 10_000  # the modules' objects, the app's
    assert served == {**served, "access_log": False, "server_header": False, "lifespan": "on"}
