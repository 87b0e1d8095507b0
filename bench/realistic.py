"""Throughput at realistic provider latencies, and the ETA's quality, on one worker.

Real providers take seconds to write and speak a script and minutes to render a clip; a job
spends nearly all its life waiting, and a few seconds of CPU in FFmpeg. The spec-checked mocks
(``tests/mocks``, served over HTTP by this process) answer in the same ratio, scaled down ten
times so a run takes minutes: script 1 s (Claude, ~10 s for a 4-scene script), voice 1.6 s
(ElevenLabs multilingual v2, ~16 s for 15 s of speech), each clip 20 s (Replicate video
models, one to several minutes; 200 s taken here). Compositing is real FFmpeg work.

One real ``videoq worker`` process runs N jobs submitted at once. The ideal is one job's
critical path plus (N − 1) compositings done alone — the machine's CPU is what finishes
videos. Measured in this run: one job alone first (its wall time and its compositing time),
then the N jobs with the worker's defaults, then the same with the previous defaults as the
baseline (4 jobs per worker, FFmpeg unlimited, 16 predictions in flight). The ETA each job was
given at submit (``eta_s``) is compared with when it finished.

    python -m bench.realistic [--jobs 24]   # writes docs/benchmarks.md
    python -m bench.realistic --quick       # 4 jobs, 3 s clips; prints only
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass, field

from bench.chaos import World, drain, world
from bench.common import pct, write_section
from videoq.client import Client

SECTION = "Realistic latencies"
DURATION_S = 15
#: The previous defaults, the baseline.
BEFORE = {"VIDEOQ_MAX_JOBS": "4", "VIDEOQ_FFMPEG_SLOTS": "64", "VIDEOQ_REPLICATE_CONCURRENCY": "16"}
#: chaos.world's speed-ups that are not defaults: removed, so the worker runs as shipped.
NOT_DEFAULTS = (
    "VIDEOQ_MAX_JOBS", "VIDEOQ_REPLICATE_POLL_S", "VIDEOQ_REPLICATE_POLL_MAX_S",
    "VIDEOQ_HEARTBEAT_S", "VIDEOQ_WORKER_STALE_S", "VIDEOQ_RECONCILE_S",
)  # fmt: skip


@dataclass
class Run:
    name: str
    jobs: int
    wall_s: float = 0.0
    failed: int = 0
    eta_errors: list[float] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    eta_bias: list[float] = field(default_factory=list)  # signed: > 0 too late

    @property
    def per_hour(self) -> float:
        return self.jobs / self.wall_s * 3600


async def stage_times(here: World, job_id: str) -> dict[str, float]:
    """When each stage of a finished job started and the job ended, seconds from its first
    event (replayed from the archive)."""
    marks: dict[str, float] = {}
    start = None
    async with Client(here.api_url, here.api_key) as client:
        async for event in client.events(job_id, after=0):
            if event.type == "snapshot":
                continue
            assert event.ts is not None
            at = event.ts.timestamp()
            start = at if start is None else start
            if event.type == "stage" and event.stage:
                marks.setdefault(event.stage, at - start)
            if event.terminal:
                marks["end"] = at - start
    return marks


async def batch(here: World, name: str, n: int, env: dict[str, str]) -> Run:
    """N jobs submitted at once to one fresh worker with ``env``; drained."""
    worker = here.start_worker_with(env)
    run = Run(name, n)
    try:
        await asyncio.sleep(2.0)  # started and listening
        async with Client(here.api_url, here.api_key, timeout=60) as client:
            began = time.monotonic()
            created = [
                await client.submit(product_name=f"{name} {i}", duration_s=DURATION_S)
                for i in range(n)
            ]
            run.job_ids = [job.id for job in created]
            finals = await drain(client, run.job_ids, timeout=3600)
            run.wall_s = time.monotonic() - began
            for job in created:
                final = finals[job.id]
                if final.status != "succeeded":
                    run.failed += 1
                elif job.eta_s is not None and final.finished_at and job.created_at:
                    took = (final.finished_at - job.created_at).total_seconds()
                    run.eta_errors.append(abs(job.eta_s - took) / took)
                    run.eta_bias.append((job.eta_s - took) / took)
    finally:
        worker.terminate()  # its shutdown sends what it measured
        worker.wait()
    return run


async def main(jobs: int, quick: bool) -> None:
    clip = 3.0 if quick else 20.0
    async with world("realistic", clip_latency=clip) as here:
        here.anthropic.latency = 0.15 if quick else 1.0
        here.elevenlabs.latency = 0.25 if quick else 1.6
        here.replicate.latency = clip
        for name in NOT_DEFAULTS:
            here.worker_env.pop(name, None)
        alone = await batch(here, "alone", 1, {})
        marks = await stage_times(here, alone.job_ids[0])
        path_s, compositing_s = marks["end"], marks["end"] - marks["compositing"]
        now = await batch(here, "defaults", jobs, {})
        before = await batch(here, "baseline", jobs, BEFORE)
    ideal = path_s + (jobs - 1) * compositing_s
    rows = [
        ("one job alone: wall / compositing", f"{path_s:.1f} s / {compositing_s:.1f} s",
         "", ""),
        ("ideal drain (path + (N − 1) × compositing)", f"{ideal:.1f} s", "", ""),
        ("measured drain", f"{now.wall_s:.1f} s", f"{before.wall_s:.1f} s",
         f"{before.wall_s / now.wall_s:.2f}× faster"),
        ("**ideal ÷ measured** (goal ≥ 0.8)", f"**{ideal / now.wall_s:.2f}**",
         f"{ideal / before.wall_s:.2f}", ""),
        ("jobs per hour", f"{now.per_hour:.0f}", f"{before.per_hour:.0f}", ""),
        ("failed jobs", str(now.failed), str(before.failed), ""),
        ("ETA at submit, median / p90 relative error (goal median ≤ 15 %)",
         f"{100 * statistics.median(now.eta_errors or [float('nan')]):.0f} % / "
         f"{100 * pct(now.eta_errors or [float('nan')], 0.9):.0f} % ({len(now.eta_errors)} jobs)",
         f"{100 * statistics.median(before.eta_errors or [float('nan')]):.0f} % / "
         f"{100 * pct(before.eta_errors or [float('nan')], 0.9):.0f} %", ""),
        ("ETA at submit, median signed error (+: said later than it was)",
         f"{100 * statistics.median(now.eta_bias or [float('nan')]):+.0f} %",
         f"{100 * statistics.median(before.eta_bias or [float('nan')]):+.0f} %", ""),
    ]  # fmt: skip
    table = "\n".join(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows)
    body = f"""`python -m bench.realistic --jobs {jobs}`: {jobs} jobs of {DURATION_S} s submitted
at once to one `videoq worker`, mock providers over HTTP answering in the ratio of real ones
scaled down ten times (script {here.anthropic.latency:g} s, voice {here.elevenlabs.latency:g} s,
each of 4 clips {clip:g} s; real: ~10 s, ~16 s, ~200 s), compositing real FFmpeg. The bench
process (API, mocks) shares the machine's cores with the worker.

| | defaults (max_jobs 200, FFmpeg slots = cores) | baseline (max_jobs 4, FFmpeg unlimited, 16 predictions) | |
|---|---|---|---|
{table}

The ETA is made from the stages' recent durations measured on the worker (the one job alone
and whatever ran before) and the unfinished jobs ahead (docs/decisions.md, "ETA")."""
    print(body)
    if not quick:
        write_section(SECTION, body)
    assert now.failed == 0 and before.failed == 0


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(4 if args.quick else args.jobs, args.quick))


if __name__ == "__main__":
    cli()
