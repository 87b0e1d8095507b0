"""Throughput with all bookkeeping on (job rows, transitions, checkpoints, events), one worker
process, against raw arq on the same Redis in the same run.

    python -m bench.throughput [--io-jobs 2000] [--noop-jobs 5000] [--reps 3] [--quick]

- **I/O jobs**: each job awaits 0.1 s (four stages of 25 ms), 100 at a time: the ideal is
  1000 jobs/s; the figure is the share of it reached.
- **No-op drain**: jobs whose stages do nothing; jobs/s, and the ratio to raw arq's no-op drain.

Jobs are queued before the worker starts; the rate is counted from the first job's start to the
last one's end (videoq: the job rows; arq: its results).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import uuid
from typing import Any

import httpx
from arq import create_pool
from arq.connections import RedisSettings
from arq.jobs import Job
from sqlalchemy import func, select

from bench.common import ROOT, raw_arq_worker, spawn, stack, videoq_worker, write_section
from videoq import store


async def videoq_rate(st: Any, pipeline: str, n: int, max_jobs: int) -> float:
    queue = f"bench:{uuid.uuid4().hex[:6]}"
    settings = st.settings.model_copy(update={"queue_name": queue})
    from videoq.api import create_app

    app = create_app(settings)
    headers = {"Authorization": f"Bearer {st.api_key}"}
    ids: list[str] = []
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://videoq", headers=headers
    ) as http:  # fmt: skip
        sem = asyncio.Semaphore(20)

        async def submit(i: int) -> None:
            async with sem:
                response = await http.post("/v1/jobs", json={"product_name": f"T{i}"})
                ids.append(response.json()["id"])

        await asyncio.gather(*(submit(i) for i in range(n)))
    worker = videoq_worker(
        st, st.home / "throughput.log", VIDEOQ_QUEUE_NAME=queue, VIDEOQ_PIPELINE=pipeline,
        VIDEOQ_MAX_JOBS=str(max_jobs), VIDEOQ_LOG_LEVEL="WARNING",
    )  # fmt: skip
    engine = store.create_engine(settings.database_url or "")
    try:
        keys = [uuid.UUID(i) for i in ids]
        while True:
            async with engine.connect() as conn:
                row = (
                    await conn.execute(
                        select(
                            func.count().filter(store.Job.status == "succeeded"),
                            func.min(store.Job.started_at),
                            func.max(store.Job.finished_at),
                        ).where(store.Job.id.in_(keys))
                    )
                ).one()
            if row[0] == n:
                first, last = row[1], row[2]
                assert first is not None and last is not None  # all n succeeded: started, ended
                return n / (last - first).total_seconds()
            await asyncio.sleep(0.2)
    finally:
        await engine.dispose()
        worker.terminate()
        worker.wait()


async def arq_rate(st: Any, function: str, args: tuple[Any, ...], n: int, poll: float,
                   max_jobs: int) -> float:  # fmt: skip
    queue = f"arq-bench:{uuid.uuid4().hex[:6]}"
    pool = await create_pool(RedisSettings.from_dsn(st.settings.redis_url or ""))
    try:
        job_ids = []
        for _ in range(n):
            job = await pool.enqueue_job(function, *args, _queue_name=queue)
            assert job is not None
            job_ids.append(job.job_id)
        worker = raw_arq_worker(
            st.settings.redis_url or "", queue, st.home / "throughput.log",
            BENCH_POLL_DELAY_S=str(poll), BENCH_MAX_JOBS=str(max_jobs),
        )  # fmt: skip
        try:
            while await pool.zcard(queue):  # noqa: ASYNC110
                await asyncio.sleep(0.2)
            while True:  # this run's own results (arq writes each as its job ends)
                jobs = [Job(job_id, pool, _queue_name=queue) for job_id in job_ids]
                mine = await asyncio.gather(*(job.result_info() for job in jobs))
                if all(mine):
                    break
                await asyncio.sleep(0.2)
            start = min(r.start_time for r in mine if r)
            end = max(r.finish_time for r in mine if r)
            return len(mine) / (end - start).total_seconds()
        finally:
            worker.terminate()
            worker.wait()
    finally:
        await pool.aclose()


async def saq_rate(st: Any, function: str, kwargs: dict[str, Any], n: int, max_jobs: int) -> float:
    """SAQ's rate on the same Redis, the same way: jobs queued first, first start to last end."""
    from saq import Queue

    name = f"saq-bench-{uuid.uuid4().hex[:6]}"
    queue = Queue.from_url(st.settings.redis_url or "", name=name)
    try:
        keys = []
        for _ in range(n):
            job = await queue.enqueue(function, **kwargs)
            assert job is not None
            keys.append(job.key)
        env = {"BENCH_REDIS_URL": st.settings.redis_url or "", "BENCH_QUEUE": name,
               "BENCH_MAX_JOBS": str(max_jobs), "PYTHONPATH": str(ROOT)}  # fmt: skip
        worker = spawn([sys.executable, "-m", "saq", "bench.raw_saq.settings"], env,
                       st.home / "throughput.log")  # fmt: skip
        try:
            while True:
                jobs = [job for job in await queue.jobs(keys) if job]
                # SAQ's start-up sweep aborts a job or two that were queued before it started
                # (stuck in "aborting"): those are left out of the count.
                if all(job.status not in ("new", "queued", "active") for job in jobs):
                    done = [job for job in jobs if job.status == "complete"]
                    start = min(job.started for job in done)
                    end = max(job.completed for job in done)
                    return float(len(done) / ((end - start) / 1000))  # saq's times are Any
                await asyncio.sleep(0.2)
        finally:
            worker.terminate()
            worker.wait()
    finally:
        await queue.disconnect()


def have_saq() -> bool:
    return importlib.util.find_spec("saq") is not None


async def main(io_jobs: int, noop_jobs: int, reps: int, quick: bool) -> None:
    runs: dict[str, list[float]] = {name: [] for name in ROWS}
    async with stack() as st:
        for _ in range(reps):
            runs["io"].append(await videoq_rate(st, "bench.pipelines:io", io_jobs, 100))
            runs["arq_io_default"].append(await arq_rate(st, "sleeper", (0.1,), io_jobs, 0.5, 100))
            runs["arq_io_fast"].append(await arq_rate(st, "sleeper", (0.1,), io_jobs, 0.05, 100))
            runs["noop"].append(await videoq_rate(st, "bench.pipelines:noop", noop_jobs, 10))
            runs["arq_noop_default"].append(await arq_rate(st, "noop", (), noop_jobs, 0.5, 10))
            runs["arq_noop_fast"].append(await arq_rate(st, "noop", (), noop_jobs, 0.05, 10))
            if have_saq():
                io_kwargs = {"seconds": 0.1}
                runs["saq_io"].append(await saq_rate(st, "sleeper", io_kwargs, io_jobs, 100))
                runs["saq_noop"].append(await saq_rate(st, "noop", {}, noop_jobs, 10))
    m = {name: statistics.median(values) for name, values in runs.items() if values}

    def share(name: str) -> str:  # of the ideal 1000 jobs/s
        values = [v / 10 for v in runs[name]]
        if not values:
            return "not installed"
        return f"{statistics.median(values):.0f} % ({min(values):.0f}–{max(values):.0f})"

    def rate(name: str) -> str:
        values = runs[name]
        if not values:
            return "not installed"
        return f"{statistics.median(values):.0f} ({min(values):.0f}–{max(values):.0f})"

    body = f"""\
`python -m bench.throughput --io-jobs {io_jobs} --noop-jobs {noop_jobs} --reps {reps}`: one worker
process; median (min–max) of {reps} repetitions, all in the same run on the same Redis.

| | videoq | raw arq, poll 0.5 s | raw arq, poll 0.05 s | SAQ | videoq ÷ raw arq (0.5 s / 0.05 s) |
|---|---|---|---|---|---|
| {io_jobs} jobs × 0.1 s I/O at concurrency 100, share of the ideal 1000 jobs/s | {share("io")} | {share("arq_io_default")} | {share("arq_io_fast")} | {share("saq_io")} | {m["io"] / m["arq_io_default"]:.2f} / {m["io"] / m["arq_io_fast"]:.2f} |
| {noop_jobs} no-op jobs drained, jobs/s (max_jobs 10) | {rate("noop")} | {rate("arq_noop_default")} | {rate("arq_noop_fast")} | {rate("saq_noop")} | {m["noop"] / m["arq_noop_default"]:.2f} / {m["noop"] / m["arq_noop_fast"]:.2f} |

SAQ runs when the optional `bench` extra is installed (`make bench` installs it). videoq's jobs
carry their bookkeeping: the job row claimed and finished in PostgreSQL with its
history, a checkpoint per stage, the row's stage and progress, numbered events through Redis,
archived in PostgreSQL as they are published. Goals (issue 7): ≥ 90 % of the ideal I/O rate, no-op ratio ≥ 0.5.
"""
    print(body)
    if not quick:
        write_section("Throughput", body)


ROWS = ("io", "arq_io_default", "arq_io_fast", "noop", "arq_noop_default", "arq_noop_fast",
        "saq_io", "saq_noop")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--io-jobs", type=int, default=2000)
    parser.add_argument("--noop-jobs", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    a = parser.parse_args()
    if a.quick:
        a.io_jobs, a.noop_jobs, a.reps = 200, 200, 1
    asyncio.run(main(a.io_jobs, a.noop_jobs, a.reps, a.quick))
