"""``make demo``: embedded services, the API and one worker as real processes; one job submitted
through the SDK over HTTP, its live progress from the WebSocket, the MP4 downloaded. The MP4's
path is the last line on stdout."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from videoq.cli import watch_progress
from videoq.client import Client
from videoq.dev import Stack, running_stack
from videoq.ffmpeg import probe
from videoq.logs import configure_logging
from videoq.settings import Settings
from videoq.types import JobStatus

BRIEF: dict[str, Any] = {
    "product_name": "Aurora Desk Lamp",
    "style": "cinematic",
    "cta_text": "Light up your evenings — shop now",
    "prompt": "Warm, cosy home office at dusk",
    "duration_s": 15,
    "aspect_ratio": "9:16",
}


async def run(stack: Stack, console: Console) -> Path:
    async with Client(stack.api_url, stack.api_key) as client:
        job = await client.submit(**BRIEF)
        console.print(f"submitted job [bold]{job.id}[/] to {stack.api_url}")
        await watch_progress(client, job.id)
        job = await client.get(job.id)
        if job.status != JobStatus.SUCCEEDED:
            raise SystemExit(f"demo job {job.status}: {job.error}")
        out = (stack.settings.home / "demo" / f"{job.id}.mp4").resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        await client.download(job.id, out)
    info = await probe(out, stack.settings)
    console.print(
        f"{info.video_codec}/{info.audio_codec} {info.width}x{info.height} "
        f"{info.duration_s:.2f}s {out.stat().st_size / 1e6:.1f} MB"
    )
    return out


def main() -> None:
    settings = Settings()
    configure_logging(settings)
    console = Console(stderr=True)
    started = time.monotonic()
    with running_stack(settings, workers=1) as stack:
        console.print(f"embedded services and API ready in {time.monotonic() - started:.1f}s")
        path = asyncio.run(run(stack, console))
    console.print(f"demo finished in {time.monotonic() - started:.1f}s")
    print(path, flush=True)


if __name__ == "__main__":
    main()
