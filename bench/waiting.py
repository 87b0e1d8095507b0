"""Waiting on Replicate: one worker holding 1,000 jobs that each wait on 4 predictions, on
webhooks, against the baseline measured in the same run, polling at today's defaults.

    python -m bench.waiting [--jobs 1000] [--window 60] [--quick]

Each mode gets fresh embedded PostgreSQL and Redis and the API (bench.common.stack), and the
spec-checked Replicate mock of tests/mocks in a process of its own on loopback, whose
predictions run for an hour: every one sits waiting. One real `videoq worker` process
(max_jobs = jobs, replicate_concurrency = 4 × jobs) runs `bench.pipelines:predictions`, the
real video_gen stage alone (notes in PostgreSQL, Redis-leased slots, live Replicate client).
Webhooks: VIDEOQ_PUBLIC_URL and the webhook secret set, the sweep at its default period. Polling:
neither set, replicate_poll_s → replicate_poll_max_s at their defaults.

The jobs are submitted to the running worker 20 a second. Once the mock has every create (or
BOUGHT_WITHIN_S after the last submission, for a worker that cannot keep up), and after a
settling time (past the polls' ramp up to their longest interval), the worker process is
measured over the window: peak VmRSS (sampled every 0.5 s) and CPU (utime + stime of
/proc/<pid>/stat) ÷ the window. Then the mock ends every prediction at once (sending the
webhooks, in that mode) and the time until every job ended is taken (at most ENDED_WITHIN_S).
Goal (issue 17): with webhooks, under 300 MB and at most 5 % of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from tests.mocks.replicate import ReplicateMock

from bench.common import ROOT, Stack, cpu_s, stack, videoq_worker, wait_for, write_section
from bench.memory import rss_mb
from videoq import store
from videoq.children import preexec
from videoq.embedded import free_port
from videoq.logs import configure_logging
from videoq.settings import Settings

SECRET = "whsec_" + base64.b64encode(b"bench-waiting-replicate-secret!!").decode()
SCENES = 4
#: Past the polls' ramp (1 s growing by half up to 10 s takes about 21 s).
SETTLE_S = 25.0
SUBMIT_PER_S = 20
#: How long after the last job's submission the window waits for every create, and how long
#: the jobs get to end once their predictions ended; past these, what was reached is shown.
BOUGHT_WITHIN_S = 120.0
ENDED_WITHIN_S = 300.0


async def serve_mock() -> None:
    """The child process: the Replicate mock on a local port (printed), with ``/_stats`` and
    ``/_finish`` (end every running prediction now), until stdin closes."""
    mock = ReplicateMock(latency=3600, webhook_secret=SECRET)
    ending: set[asyncio.Task[None]] = set()

    async def stats(request: Request) -> JSONResponse:
        accepted = sum(1 for status in mock.deliveries if status == 200)
        return JSONResponse({"calls": dict(mock.calls), "webhooks": accepted,
                             "invalid": len(mock.invalid)})  # fmt: skip

    async def finish(request: Request) -> JSONResponse:
        for prediction in list(mock.predictions.values()):
            task = asyncio.create_task(mock.complete(prediction.id))
            ending.add(task)
            task.add_done_callback(ending.discard)
        return JSONResponse({"ending": len(ending)})

    mock.app.router.routes += [Route("/_stats", stats), Route("/_finish", finish, methods=["POST"])]
    port = free_port()
    config = uvicorn.Config(
        mock.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", backlog=4096
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110  uvicorn offers no event for this
        await asyncio.sleep(0.01)
    print(json.dumps({"port": port}), flush=True)
    await asyncio.to_thread(sys.stdin.read)  # the parent closes our stdin to stop us
    server.should_exit = True
    await task
    await mock.aclose()


@dataclass
class Figures:
    bought: int
    peak_rss_mb: float
    cpu_percent: float
    reads_per_s: float
    pages_per_s: float
    drain_s: float
    ended: int
    failed: int
    webhooks: int
    invalid: int


async def measure(jobs: int, window: float, settle: float, slow_poll_s: float | None) -> Figures:
    """One mode: webhooks with that slow poll, or (None) polling."""
    async with stack(replicate_webhook_secret=SECRET) as st:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.waiting", "--serve-mock", cwd=ROOT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, preexec_fn=preexec(),
        )  # fmt: skip
        try:
            assert child.stdout is not None
            started = json.loads(await child.stdout.readline())
            mock_url = f"http://127.0.0.1:{started['port']}"
            async with httpx.AsyncClient(base_url=mock_url, timeout=60) as mock:
                return await _measure(st, mock, mock_url, jobs, window, settle, slow_poll_s)
        finally:
            if child.stdin is not None:
                child.stdin.close()
            await child.wait()


async def _measure(
    st: Stack,
    mock: httpx.AsyncClient,
    mock_url: str,
    jobs: int,
    window: float,
    settle: float,
    slow_poll_s: float | None,
) -> Figures:
    hooks = {
        "VIDEOQ_PUBLIC_URL": st.api_url,
        "VIDEOQ_REPLICATE_WEBHOOK_SECRET": SECRET,
        "VIDEOQ_REPLICATE_WEBHOOK_POLL_S": str(slow_poll_s),
    }
    worker = videoq_worker(
        st, st.home / "waiting.log", VIDEOQ_PIPELINE="bench.pipelines:predictions",
        VIDEOQ_PROVIDERS="auto", REPLICATE_API_TOKEN="r8_test",
        VIDEOQ_REPLICATE_BASE_URL=mock_url, VIDEOQ_MAX_JOBS=str(jobs),
        VIDEOQ_REPLICATE_CONCURRENCY=str(SCENES * jobs), VIDEOQ_LOG_LEVEL="WARNING",
        **(hooks if slow_poll_s is not None else {}),
    )  # fmt: skip
    engine = store.create_engine(st.settings.database_url or "")

    async def stats() -> dict[str, Any]:
        answer: dict[str, Any] = (await mock.get("/_stats")).json()
        return answer

    async def all_bought() -> bool:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited; see {st.home / 'waiting.log'}")
        bought: int = (await stats())["calls"].get("create", 0)
        return bought >= SCENES * jobs

    async def ended() -> dict[str, int]:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(store.Job.status, func.count())
                .where(store.Job.id.in_(ids), store.Job.status.in_(("succeeded", "failed")))
                .group_by(store.Job.status)
            )
        return {str(status): int(count) for status, count in rows}

    async def all_ended() -> bool:
        return sum((await ended()).values()) == jobs

    try:
        ids = await submit(st, jobs)
        with contextlib.suppress(TimeoutError):  # a worker that cannot keep up: measured as is
            await wait_for(all_bought, BOUGHT_WITHIN_S, "every prediction", every=0.25)
        bought: int = (await stats())["calls"].get("create", 0)
        await asyncio.sleep(settle)
        before, cpu_before, peak = await stats(), cpu_s(worker.pid), 0.0
        started = time.monotonic()
        while time.monotonic() - started < window:
            peak = max(peak, rss_mb(worker.pid))
            await asyncio.sleep(0.5)
        cpu = cpu_s(worker.pid) - cpu_before
        elapsed = time.monotonic() - started
        during = await stats()
        await mock.post("/_finish")
        finished = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await wait_for(all_ended, ENDED_WITHIN_S, "every job to end", every=0.25)
        drain = time.monotonic() - finished
        after, outcomes = await stats(), await ended()
    finally:
        await engine.dispose()
        worker.terminate()
        try:
            await asyncio.to_thread(worker.wait, 60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()

    def rate(kind: str) -> float:
        made = int(during["calls"].get(kind, 0)) - int(before["calls"].get(kind, 0))
        return made / elapsed

    return Figures(
        bought=bought,
        peak_rss_mb=peak,
        cpu_percent=100 * cpu / elapsed,
        reads_per_s=sum(rate(kind) for kind in ("get", "list")),
        pages_per_s=rate("list"),
        drain_s=drain,
        ended=sum(outcomes.values()),
        failed=outcomes.get("failed", 0),
        webhooks=after["webhooks"],
        invalid=after["invalid"],
    )


async def submit(st: Stack, jobs: int) -> list[str]:
    """Create the jobs, :data:`SUBMIT_PER_S` a second: a worker given a thousand jobs at once
    (4,000 creates at once, on two cores) falls behind its own heartbeats, and what would be
    measured is that storm, not the waiting."""
    headers = {"Authorization": f"Bearer {st.api_key}"}
    ids: list[str] = []
    async with httpx.AsyncClient(base_url=st.api_url, headers=headers, timeout=60) as api:

        async def one(number: int) -> str:
            response = await api.post("/v1/jobs", json={"product_name": f"Kettle {number}"})
            return str(response.raise_for_status().json()["id"])

        for first in range(0, jobs, SUBMIT_PER_S):
            second = asyncio.create_task(asyncio.sleep(1))
            ids += await asyncio.gather(
                *(one(n) for n in range(first, min(jobs, first + SUBMIT_PER_S)))
            )
            await second
    return ids


def table(jobs: int, window: float, hooked: Figures, polled: Figures) -> str:
    def drained(f: Figures) -> str:
        if f.ended == jobs:
            return f"{f.drain_s:.1f}"
        return f"not within {ENDED_WITHIN_S:.0f} ({f.ended} of {jobs} ended)"

    rows = [
        ("predictions bought when measured", f"{hooked.bought}", f"{polled.bought}"),
        ("peak RSS, MB", f"{hooked.peak_rss_mb:.0f}", f"{polled.peak_rss_mb:.0f}"),
        ("CPU, % of one core", f"{hooked.cpu_percent:.1f}", f"{polled.cpu_percent:.1f}"),
        ("Replicate reads per second", f"{hooked.reads_per_s:.1f}", f"{polled.reads_per_s:.1f}"),
        ("of them, list pages", f"{hooked.pages_per_s:.1f}", f"{polled.pages_per_s:.1f}"),
        ("all predictions end → every job ended, s", drained(hooked), drained(polled)),
        ("jobs failed", str(hooked.failed), str(polled.failed)),
        ("webhooks delivered and accepted", str(hooked.webhooks), str(polled.webhooks)),
        ("requests off the spec", str(hooked.invalid), str(polled.invalid)),
    ]  # fmt: skip
    lines = [
        "| | videoq worker, webhooks | videoq worker, polling (baseline) |",
        "|---|---|---|",
        *(f"| {name} | {a} | {b} |" for name, a, b in rows),
    ]
    met = "met" if hooked.peak_rss_mb < 300 and hooked.cpu_percent <= 5 else "not met"
    slow_poll = Settings().replicate_webhook_poll_s
    return f"""\
`python -m bench.waiting --jobs {jobs} --window {window:.0f}`: one `videoq worker` process
holding {jobs} jobs, each waiting on {SCENES} predictions ({SCENES * jobs} in all), measured over
{window:.0f} s once every prediction was bought (or {BOUGHT_WITHIN_S:.0f} s after the last job was
submitted) and the polls settled (the figures are the worker's own; the mock and the API run in
other processes on the same machine). Polling is
the baseline at today's defaults (1 s growing to 10 s); webhooks read each prediction once
after its waiter is in place and once more when it ended, while the worker's sweep lists the
account's predictions every {slow_poll:.0f} s (`replicate_webhook_poll_s`) for webhooks that
never came. The jobs were submitted {SUBMIT_PER_S} a second to the running worker.
"Every job ended" is from the mock ending all predictions at once (and sending their
webhooks) until PostgreSQL shows every job succeeded or failed (each downloads and keeps its
{SCENES} clips meanwhile).

{chr(10).join(lines)}

Goal (issue 17): with webhooks, under 300 MB and at most 5 % of one core: {met}.
"""


async def main(jobs: int, window: float, settle: float, quick: bool) -> None:
    configure_logging(Settings(log_level="WARNING"))  # not a line per webhook the API takes
    hooked = await measure(jobs, window, settle, Settings().replicate_webhook_poll_s)
    polled = await measure(jobs, window, settle, None)
    body = table(jobs, window, hooked, polled)
    print(body)
    if not quick:
        write_section("Waiting on Replicate", body)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument(
        "--window", type=float, default=60.0, help="seconds measured (two sweep periods)"
    )
    parser.add_argument("--quick", action="store_true", help="10 jobs, a 2 s window")
    parser.add_argument("--serve-mock", action="store_true", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.serve_mock:
        asyncio.run(serve_mock())
    elif a.quick:
        asyncio.run(main(10, 2.0, 0.5, quick=True))
    else:
        asyncio.run(main(a.jobs, a.window, SETTLE_S, quick=False))
