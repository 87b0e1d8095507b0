"""The whole path: SDK → real API (uvicorn) → Redis → real arq worker → PostgreSQL → events →
MP4, on the embedded servers."""

from __future__ import annotations

import json
import uuid
from itertools import pairwise
from pathlib import Path
from typing import Any

import av
from sqlalchemy import select
from websockets.asyncio.client import connect

from tests.conftest import LiveApi
from videoq import store
from videoq.client import Client

STAGES = ["script_gen", "voice_gen", "video_gen", "compositing"]


async def collect_ws(url: str, key: str) -> list[dict[str, Any]]:
    async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        return [json.loads(message) async for message in ws]


def probe_with_pyav(path: Path) -> dict[str, Any]:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        assert container.duration is not None
        return {
            "video_codec": video.codec_context.name,
            "audio_codec": audio.codec_context.name,
            "width": video.codec_context.width,
            "height": video.codec_context.height,
            "duration_s": container.duration / av.time_base,
        }


async def test_job_runs_end_to_end(
    live_api: LiveApi, client: Client, api_key: str, worker: Any, sessions: Any, tmp_path: Path
) -> None:
    job = await client.submit(
        product_name="Nimbus Headphones", style="bold", cta_text="Order today", duration_s=6,
        aspect_ratio="16:9",
    )  # fmt: skip
    assert job.status == "queued"
    ws_url = live_api.url.replace("http", "ws", 1) + f"/v1/jobs/{job.id}/events?after=0"
    events = await collect_ws(ws_url, api_key)

    # The socket: a snapshot, then every event in order, ending with the terminal one.
    assert events[0]["type"] == "snapshot"
    stream = events[1:]
    seqs = [e["seq"] for e in stream]
    assert seqs == list(range(1, len(stream) + 1))
    progress = [e["progress"] for e in stream]
    assert progress == sorted(progress) and progress[-1] == 100
    assert [e["stage"] for e in stream if e["type"] == "stage"] == STAGES
    assert stream[-1]["type"] == "status" and stream[-1]["status"] == "succeeded"
    assert {e["job_id"] for e in events} == {job.id}

    # The record of truth agrees with the events.
    final = await client.get(job.id)
    assert final.status == "succeeded" and final.progress == 100 and final.attempts == 1
    assert final.result is not None and final.result.video_url.endswith(f"/v1/jobs/{job.id}/video")
    async with sessions() as session:
        row = await session.get(store.Job, uuid.UUID(job.id))
        stages = (
            await session.execute(
                select(store.StageCheckpoint.stage).where(store.StageCheckpoint.job_id == row.id)
            )
        ).scalars()
        assert sorted(stages) == sorted(STAGES)
    assert row.status == "succeeded" and row.worker_id == stream[-1]["worker_id"]

    # The MP4, checked by an independent reader (PyAV), not by our own probe.
    path = await client.download(job.id, tmp_path / "out.mp4")
    info = probe_with_pyav(path)
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert (info["width"], info["height"]) == (1920, 1080)
    assert abs(info["duration_s"] - 6) <= 0.5
    assert final.result.size_bytes == path.stat().st_size


async def test_socket_sends_snapshot_then_live_events_until_terminal(
    live_api: LiveApi, client: Client, api_key: str, worker: Any
) -> None:
    job = await client.submit(product_name="Solar Kettle", duration_s=5, aspect_ratio="1:1")
    events = [e async for e in client.events(job.id)]
    assert events[0].type == "snapshot"
    assert events[-1].terminal and events[-1].status == "succeeded"
    live = events[1:]
    assert all(b.seq == a.seq + 1 for a, b in pairwise(live))
    assert all(b.progress >= a.progress for a, b in pairwise(live))
    # Connecting after the end: the snapshot says so and the socket closes at once.
    again = [e async for e in client.events(job.id)]
    assert [e.type for e in again] == ["snapshot"] and again[0].status == "succeeded"
