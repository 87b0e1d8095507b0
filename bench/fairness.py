"""Fair shares between tenants, on one worker of 8 slots running jobs of four 200 ms stages.

- **A newcomer behind a backlog**: tenant A submits ``--backlog`` jobs; then tenant B submits
  one job at a time, ``--reps`` times, each once the previous has started. B's wait is from
  its job's creation to its start (the row's ``created_at`` → ``started_at``). The baseline,
  in the same run: one more job of A's own, which waits behind A's backlog as every job did
  behind another's before shares (arq's queue is first due, first out).
- **Weights**: tenants C (weight 3) and D (weight 1) each submit ``--backlog`` jobs at once;
  among the jobs started while both still had jobs waiting, C's share against 3 : 1.

    python -m bench.fairness [--backlog 1000 --reps 20]   # writes docs/benchmarks.md
    python -m bench.fairness --quick                       # 100 jobs, 5 reps; prints only
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import httpx

from bench.common import pct, stack, videoq_worker, write_section
from videoq import store
from videoq.client import Client
from videoq.store.apikeys import create_key

SECTION = "Fair shares"
SLOTS = 8


async def keys_for(settings: Any, *tenants: str) -> dict[str, str]:
    engine = store.create_engine(settings.database_url)
    try:
        async with store.sessionmaker(engine)() as session:
            return {t: await create_key(session, t) for t in tenants}
    finally:
        await engine.dispose()


async def submit_many(client: Client, n: int, name: str) -> list[str]:
    ids: list[str] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def submitter() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            ids.append((await client.submit(product_name=f"{name} {i}", duration_s=5)).id)

    await asyncio.gather(*(submitter() for _ in range(16)))
    return ids


async def wait_started(client: Client, job_id: str, timeout: float = 3600) -> float:
    """Seconds from the job's creation to its start, once it started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = await client.get(job_id)
        if job.started_at is not None and job.created_at is not None:
            return (job.started_at - job.created_at).total_seconds()
        await asyncio.sleep(0.02)
    raise TimeoutError(job_id)


async def started_order(client: Client, ids: list[str]) -> list[tuple[float, str]]:
    rows = []
    for job_id in ids:
        job = await client.get(job_id)
        if job.started_at is not None:
            rows.append((job.started_at.timestamp(), job_id))
    return sorted(rows)


async def main(backlog: int, reps: int, quick: bool) -> None:
    async with stack() as st:
        keys = await keys_for(st.settings, "tenant-a", "tenant-b", "tenant-c", "tenant-d")
        log = st.home / "fairness.log"
        worker = videoq_worker(
            st, log, VIDEOQ_PIPELINE="bench.pipelines:fair", VIDEOQ_MAX_JOBS=str(SLOTS),
            VIDEOQ_LOG_LEVEL="WARNING",
        )  # fmt: skip
        try:
            await asyncio.sleep(3)
            async with (
                Client(st.api_url, keys["tenant-a"], timeout=60) as a,
                Client(st.api_url, keys["tenant-b"], timeout=60) as b,
                Client(st.api_url, keys["tenant-c"], timeout=60) as c,
                Client(st.api_url, keys["tenant-d"], timeout=60) as d,
                httpx.AsyncClient(base_url=st.api_url, timeout=60) as http,
            ):
                await submit_many(a, backlog, "A")
                waits = []
                for i in range(reps):
                    job = await b.submit(product_name=f"B {i}", duration_s=5)
                    waits.append(await wait_started(b, job.id))
                behind = await a.submit(product_name="A last", duration_s=5)
                baseline = await wait_started(a, behind.id)
                put = await http.put(
                    "/v1/tenants/tenant-c", json={"weight": 3},
                    headers={"Authorization": f"Bearer {st.api_key}"},
                )  # fmt: skip
                put.raise_for_status()
                await asyncio.sleep(2.5)  # a heartbeat: the worker's own slots learn it too
                heavy, light = await asyncio.gather(
                    submit_many(c, backlog, "C"), submit_many(d, backlog, "D")
                )
                for job_id in (*heavy, *light):
                    await wait_started(c if job_id in heavy else d, job_id)
                order_c = await started_order(c, heavy)
                order_d = await started_order(d, light)
        finally:
            worker.terminate()
            worker.wait()
    # Both backlogged from the last submission until the first of them ran out.
    both_from = max(order_c[len(order_c) // 10][0], order_d[len(order_d) // 10][0])
    both_until = min(order_c[-1][0], order_d[-1][0])
    in_c = sum(both_from <= t <= both_until for t, _ in order_c)
    in_d = sum(both_from <= t <= both_until for t, _ in order_d)
    share = in_c / max(1, in_c + in_d)
    body = f"""`python -m bench.fairness --backlog {backlog} --reps {reps}`: one `videoq worker`
of {SLOTS} slots, jobs of four 200 ms stages (0.8 s a slot).

| | fair shares | baseline: the backlog's own tenant |
|---|---|---|
| a job submitted behind another tenant's {backlog} queued jobs: wait to start, p50 / p99 over {reps} (goal p99 ≤ 2 s) | {statistics.median(waits):.2f} s / {pct(waits, 0.99):.2f} s | {baseline:.1f} s (one job) |
| weights 3 : 1, both backlogged ({backlog} jobs each): the heavy tenant's share of {in_c + in_d} starts (goal 0.75 ± 0.05) | {share:.3f} | |

A newcomer's job is taken at the next free slot (the first look after it arrived), ahead of
the backlog: within one slot turnover (a job holds its slot 0.8 s; with 8 slots, one frees
every 0.1 s on average, and up to all 8 at once when the jobs started together). The shares are those of the
jobs started while both tenants had jobs waiting (after the first tenth of each tenant's
starts, while submission was still going on)."""
    print(body)
    if not quick:
        write_section(SECTION, body)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.backlog, args.reps = 100, 5
    asyncio.run(main(args.backlog, args.reps, args.quick))


if __name__ == "__main__":
    cli()
