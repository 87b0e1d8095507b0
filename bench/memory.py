"""Worker memory with 100 jobs in flight, against a raw arq worker holding 100 jobs in the same
run.

    python -m bench.memory [--jobs 100] [--reps 3] [--quick]

videoq: one `videoq worker` process (max_jobs = jobs) whose jobs hold for 8 s (four stages of
2 s, with all their bookkeeping: job rows, checkpoints, events, provider pool and supervisor);
raw arq: `arq bench.raw_arq.Settings` running as many 8 s sleeps. The figure is the worker's
peak resident set (VmRSS, sampled every 50 ms) once every job is running; the process is new
each repetition. Goal (issue 7): ≤ 150 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import uuid
from pathlib import Path

import httpx
from arq import create_pool
from arq.connections import RedisSettings
from sqlalchemy import func, select

from bench.common import Stack, raw_arq_worker, stack, summary, videoq_worker, write_section
from videoq import store


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def peak_while(proc: subprocess.Popen[bytes], in_flight: object, seconds: float) -> float:
    """The process's peak RSS over ``seconds`` once ``in_flight()`` first holds."""
    while not await in_flight():  # type: ignore[operator]
        if proc.poll() is not None:
            raise RuntimeError("the worker exited")
        await asyncio.sleep(0.05)
    peak = 0.0
    for _ in range(int(seconds / 0.05)):
        peak = max(peak, rss_mb(proc.pid))
        await asyncio.sleep(0.05)
    return peak


async def videoq_peak(st: Stack, n: int) -> float:
    headers = {"Authorization": f"Bearer {st.api_key}"}
    async with httpx.AsyncClient(base_url=st.api_url, headers=headers) as http:
        ids = [
            uuid.UUID((await http.post("/v1/jobs", json={"product_name": f"M{i}"})).json()["id"])
            for i in range(n)
        ]
    worker = videoq_worker(
        st, st.home / "memory.log", VIDEOQ_PIPELINE="bench.pipelines:hold",
        VIDEOQ_MAX_JOBS=str(n), VIDEOQ_LOG_LEVEL="WARNING",
    )  # fmt: skip
    engine = store.create_engine(st.settings.database_url or "")

    async def all_running() -> bool:
        async with engine.connect() as conn:
            running = await conn.scalar(
                select(func.count()).where(store.Job.id.in_(ids), store.Job.status == "running")
            )
        return running == n

    try:
        return await peak_while(worker, all_running, 4.0)
    finally:
        await engine.dispose()
        worker.terminate()
        worker.wait()


async def arq_peak(st: Stack, n: int) -> float:
    queue = f"arq-mem:{uuid.uuid4().hex[:6]}"
    pool = await create_pool(RedisSettings.from_dsn(st.settings.redis_url or ""))
    try:
        for _ in range(n):
            await pool.enqueue_job("sleeper", 8.0, _queue_name=queue)
        worker = raw_arq_worker(
            st.settings.redis_url or "", queue, st.home / "memory.log",
            BENCH_POLL_DELAY_S="0.05", BENCH_MAX_JOBS=str(n),
        )  # fmt: skip

        async def all_running() -> bool:
            running = await pool.keys("arq:in-progress:*")
            return len(running) >= n

        try:
            return await peak_while(worker, all_running, 4.0)
        finally:
            worker.terminate()
            worker.wait()
    finally:
        await pool.aclose()


async def main(n: int, reps: int, quick: bool) -> None:
    ours, theirs = [], []
    async with stack() as st:
        for _ in range(reps):
            ours.append(await videoq_peak(st, n))
            theirs.append(await arq_peak(st, n))
    mine, base = statistics.median(ours), statistics.median(theirs)
    body = f"""\
`python -m bench.memory --jobs {n} --reps {reps}`: worker peak RSS in MB with {n} jobs in flight,
median (min–max) of {reps} fresh processes.

| | videoq worker | raw arq worker (baseline) | videoq ÷ raw arq |
|---|---|---|---|
| peak RSS, MB | {summary(ours)} | {summary(theirs)} | {mine / base:.2f} |

videoq's worker holds its provider pool, the SQLAlchemy engine and its {n} jobs' state (job row,
reporter, checkpoints); raw arq holds {n} sleeping coroutines. Goal (issue 7): ≤ 150 MB:
{"met" if mine <= 150 else "not met"}.
"""
    print(body)
    if not quick:
        write_section("Memory", body)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20 jobs, one repetition")
    a = parser.parse_args()
    if a.quick:
        a.jobs, a.reps = 20, 1
    asyncio.run(main(a.jobs, a.reps, a.quick))
