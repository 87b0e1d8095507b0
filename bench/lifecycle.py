"""Cancel latency and crash-recovery time: videoq against raw arq, measured in the same run.

    python -m bench.lifecycle [--runs 5] [--quick]

- **cancel**: a running job is cancelled while FFmpeg composites. videoq: from sending
  ``POST /cancel`` until the FFmpeg child is gone. Raw arq: from ``Job.abort()`` until arq
  reports the job aborted (its poll interval, 0.5 s by default, is the floor).
- **crash recovery**: the worker running a job is killed with SIGKILL and a fresh worker
  starts at once. videoq (default settings): until the new worker resumes the job, which its
  first death-watch look hands it (the dead worker's PostgreSQL session lock is free). Raw arq: until it restarts the job, which arq
  allows only once its in-progress key expires (job timeout + 10 s; the run below uses a 20 s
  job timeout, so 30 s — with arq's default 300 s it is 310 s).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
import uuid
from pathlib import Path

from arq import create_pool
from arq.connections import RedisSettings

from bench.common import (
    Stack,
    processes_mentioning,
    raw_arq_worker,
    stack,
    summary,
    videoq_worker,
    wait_for,
    write_section,
)
from videoq.client import Client


async def _stage(client: Client, job_id: str, stage: str) -> None:
    async for event in client.events(job_id):
        if event.stage == stage:
            return
    raise RuntimeError(f"job ended before {stage}")


async def videoq_cancel(st: Stack, log: Path) -> float:
    worker = videoq_worker(st, log)
    try:
        async with Client(st.api_url, st.api_key) as client:
            job = (await client.submit(product_name="Benchmark", duration_s=30)).id
            await _stage(client, job, "compositing")
            workdir = str(st.settings.scratch / job)
            await wait_for(lambda: processes_mentioning(workdir), 30, "FFmpeg")
            started = time.monotonic()
            await client.cancel(job)
            stopped = await wait_for(lambda: not processes_mentioning(workdir), 10, "FFmpeg exit")
            return stopped - started
    finally:
        worker.kill()
        worker.wait()


async def arq_cancel(st: Stack, log: Path) -> float:
    rs = RedisSettings.from_dsn(st.settings.redis_url or "")
    queue = f"arq-bench:{uuid.uuid4().hex[:6]}"
    worker = raw_arq_worker(st.settings.redis_url or "", queue, log)
    pool = await create_pool(rs)
    try:
        job = await pool.enqueue_job("sleeper", 30, _queue_name=queue)
        assert job is not None
        await wait_for(lambda: pool.exists(f"arq:in-progress:{job.job_id}"), 30, "arq start")
        started = time.monotonic()
        await job.abort(timeout=10)
        return time.monotonic() - started
    finally:
        await pool.aclose()
        worker.kill()
        worker.wait()


async def videoq_recovery(st: Stack, log: Path) -> float:
    first = videoq_worker(st, log)
    second = None
    try:
        async with Client(st.api_url, st.api_key) as client:
            job = (await client.submit(product_name="Benchmark", duration_s=15)).id
            await _stage(client, job, "video_gen")
            first.send_signal(signal.SIGKILL)
            first.wait()
            killed = time.monotonic()
            second = videoq_worker(st, log)

            async def resumed() -> bool:
                return (await client.get(job)).attempts >= 2

            at = await wait_for(resumed, 120, "takeover")
            await client.wait(job, timeout=120)
            return at - killed
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.kill()
                proc.wait()


async def arq_recovery(st: Stack, log: Path, job_timeout_s: float) -> float:
    rs = RedisSettings.from_dsn(st.settings.redis_url or "")
    queue = f"arq-bench:{uuid.uuid4().hex[:6]}"
    timeout = str(job_timeout_s)
    first = raw_arq_worker(st.settings.redis_url or "", queue, log, BENCH_JOB_TIMEOUT_S=timeout)
    second = None
    pool = await create_pool(rs)
    try:
        job = await pool.enqueue_job("sleeper", 1, _queue_name=queue)
        assert job is not None
        await wait_for(lambda: pool.exists(f"arq:in-progress:{job.job_id}"), 30, "arq start")
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed = time.monotonic()
        second = raw_arq_worker(
            st.settings.redis_url or "", queue, log, BENCH_JOB_TIMEOUT_S=timeout
        )

        async def restarted() -> bool:
            tries = await pool.get(f"arq:retry:{job.job_id}")
            finished = await pool.exists(f"arq:result:{job.job_id}")
            return bool(finished) or (tries is not None and int(tries) >= 2)

        return await wait_for(restarted, job_timeout_s + 60, "arq restart") - killed
    finally:
        await pool.aclose()
        for proc in (first, second):
            if proc is not None:
                proc.kill()
                proc.wait()


async def main(runs: int, quick: bool) -> None:
    arq_timeout = 5.0 if quick else 20.0
    async with stack() as st:
        log = st.home / "bench-workers.log"
        ours_cancel = [await videoq_cancel(st, log) for _ in range(runs)]
        arq_cancels = [await arq_cancel(st, log) for _ in range(runs)]
        ours_recovery = [await videoq_recovery(st, log) for _ in range(runs)]
        arq_recoveries = [await arq_recovery(st, log, arq_timeout) for _ in range(runs)]
    cancel_ratio = sorted(arq_cancels)[runs // 2] / sorted(ours_cancel)[runs // 2]
    recovery_ratio = sorted(arq_recoveries)[runs // 2] / sorted(ours_recovery)[runs // 2]
    body = f"""\
`python -m bench.lifecycle --runs {runs}`; seconds, median (min–max) of {runs} runs.

| | videoq | raw arq (same Redis, same run) | arq ÷ videoq |
|---|---|---|---|
| cancel a running job → work stopped | {summary(ours_cancel)} | {summary(arq_cancels)} \
(`Job.abort`, poll 0.5 s) | {cancel_ratio:.1f}× |
| SIGKILL → job resumed on a new worker | {summary(ours_recovery)} | {summary(arq_recoveries)} \
(job timeout {arq_timeout:.0f} s; 310 s at arq's default) | {recovery_ratio:.1f}× |

videoq's cancel is a pub/sub signal to the worker, which cancels the job's task; FFmpeg gets
`q`, then SIGTERM, then SIGKILL. Recovery is the new worker's start-up: its first death-watch
look finds the dead worker's PostgreSQL session lock free and hands it the job (with a worker
already running, a takeover takes under a second: "Takeover" below). A machine lost without
closing its connections is noticed by the heartbeat timeout instead: `worker_stale_s` (10 s) +
`reconcile_s` (5 s).
"""
    print(body)
    if not quick:
        write_section("Lifecycle", body)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one run, short arq timeout")
    args = parser.parse_args()
    asyncio.run(main(1 if args.quick else args.runs, args.quick))
