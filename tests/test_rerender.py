"""Per-scene re-render against the spec-checked provider mocks on loopback and a real worker:
exactly one clip bought (and one voice when the narration changed), nothing else; a dry run
buys nothing; every version downloads, and two versions differ only in the re-rendered
scene's time range (decoded frames compared); a failed re-render is retried, and one whose
worker is killed (SIGKILL) is finished by another worker with an empty disk, re-attaching to
the paid prediction. And the bad requests around it."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import httpx
import imageio_ffmpeg
import numpy as np
import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response

from tests.conftest import (
    FOREVER,
    LiveApi,
    Providers,
    auth,
    new_key,
    running_worker,
    serving,
    stage_rows,
)
from tests.mocks.live import LiveMocks, live_mocks
from tests.mocks.replicate import ReplicateMock, invalid_input
from tests.processes import WorkerProcess
from videoq import store
from videoq.children import preexec
from videoq.client import Client, ConflictError, Job
from videoq.settings import Settings

DURATION_S = 15


@functools.cache
def painted_clip(colour: str) -> bytes:
    """A 1 s 192×192 clip of one colour (``RRGGBB``), H.264, no audio."""
    path = Path(tempfile.mkdtemp(prefix="videoq-painted-")) / "clip.mp4"
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"color=c=0x{colour}:s=192x192:r=12:d=1",
         "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)],
        check=True, timeout=60, stdin=subprocess.DEVNULL, preexec_fn=preexec(),
    )  # fmt: skip
    return path.read_bytes()


def colour_of(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()[:6]


class PaintingReplicate(ReplicateMock):
    """Replicate whose clips are painted in a colour of their prompt: a scene re-rendered
    with another prompt looks different, the others the same."""

    async def download(self, request: Request) -> Response:
        with self.tracking("download"):
            prediction = self.predictions[request.path_params["name"].removesuffix(".mp4")]
            colour = colour_of(str(prediction.input["prompt"]))
            clip = await asyncio.to_thread(painted_clip, colour)
            return Response(clip, media_type="video/mp4")


@pytest.fixture
async def mocks(settings: Settings) -> AsyncIterator[LiveMocks]:
    async with live_mocks(settings, replicate=PaintingReplicate(polls=1)) as live:
        yield live


def frames(path: Path, times: list[float]) -> list[np.ndarray]:
    """The decoded frames of ``path`` nearest each of ``times`` (grey, as numbers)."""
    with av.open(str(path), mode="r") as container:
        decoded = [
            (float(f.time or 0.0), f.to_ndarray(format="gray").astype(np.int16))
            for f in container.decode(video=0)
        ]
    return [min(decoded, key=lambda d: abs(d[0] - t))[1] for t in times]


async def purchases(sessions: Any, job_id: str) -> dict[str, store.Purchase]:
    async with sessions() as session:
        rows = await session.execute(
            select(store.Purchase).where(store.Purchase.job_id == uuid.UUID(job_id))
        )
        return {row.key: row for row in rows.scalars()}


@dataclass(frozen=True)
class Rendered:
    """A job rendered once (version 1) on the mocks, its API and worker still running."""

    api: LiveApi
    key: str
    client: Client
    job: Job


@asynccontextmanager
async def rendered(mocks: LiveMocks, sessions: Any) -> AsyncIterator[Rendered]:
    """The API and a worker on the mocks, and a tenant's job that has succeeded."""
    key = await new_key(sessions)
    async with (
        serving(mocks.settings) as api,
        running_worker(mocks.settings),
        Client(api.url, key) as client,
    ):
        job = await client.submit(product_name="Kettle", duration_s=DURATION_S)
        first = await client.wait(job.id, timeout=120)
        assert first.status == "succeeded" and first.version == 1, first
        yield Rendered(api, key, client, first)


async def test_a_rerender_buys_one_clip_and_keeps_every_other_paid_output(
    mocks: LiveMocks, sessions: Any, tmp_path: Path
) -> None:
    async with rendered(mocks, sessions) as done:
        client, job = done.client, done.job
        # A stream ends at a terminal event: the re-render's is read after version 1's.
        ended = [e async for e in client.events(job.id, after=0)][-1]
        assert ended.terminal
        bought = mocks.paid_calls()
        assert bought == {"script_gen": 1, "voice_gen": 1, "video_gen": 3}
        paid = await purchases(sessions, job.id)
        scenes = await client.scenes(job.id)
        new_prompt = "a kettle glowing red on a night beach"
        assert colour_of(new_prompt) != colour_of(scenes[1].prompt)

        # A dry run prices the clip (the default model's $0.50), and buys nothing.
        estimate = await client.rerender_estimate(job.id, 1, prompt=new_prompt)
        assert estimate["total"] == 0.5 and estimate["changed"] == ["prompt"]
        assert estimate["stages"]["video_gen"]["usd"] == 0.5
        assert "voice_gen" not in estimate["stages"] and estimate["version"] == 2
        assert mocks.paid_calls() == bought
        assert (await purchases(sessions, job.id)).keys() == paid.keys()
        assert (await client.get(job.id)).version == 1

        requeued = await client.rerender(job.id, 1, prompt=new_prompt)
        assert requeued.version == 2 and requeued.status in ("queued", "running")
        second = await client.wait(job.id, timeout=120)
        events = [e async for e in client.events(job.id, after=ended.seq)]
        assert events[-1].terminal and events[-1].seq > ended.seq
        assert second.status == "succeeded" and second.version == 2, second
        # Exactly one clip bought; no script, no voice.
        assert mocks.paid_calls() == {**bought, "video_gen": 4}
        after = await purchases(sessions, job.id)
        assert set(after) - set(paid) == {"video_gen:1@v2"}
        assert after["video_gen:1@v2"].state == "settled"
        assert float(after["video_gen:1@v2"].actual_usd or 0) == 0.5
        # The history says what changed; the scene shows its new clip.
        assert second.versions == [
            {**second.versions[0], "version": 2, "scene": 1, "changed": ["prompt"],
             "prompt": new_prompt}
        ]  # fmt: skip
        relisted = await client.scenes(job.id)
        assert relisted[1].prompt == new_prompt and relisted[1].version == 2
        assert relisted[1].cost == 0.5 and [s.version for s in relisted] == [1, 2, 1]
        assert relisted[1].thumbnail_url != scenes[1].thumbnail_url
        # The re-render's previews: its storyboard, the one new thumbnail, its poster.
        shown = [e.preview for e in events if e.preview is not None]
        assert [(p.kind, p.scene, p.version) for p in shown] == [
            ("storyboard", None, 2), ("thumbnail", 1, 2), ("poster", None, 2)
        ]  # fmt: skip

        # Both versions download; the default is the latest.
        v1 = await client.download(job.id, tmp_path / "v1.mp4", version=1)
        v2 = await client.download(job.id, tmp_path / "v2.mp4", version=2)
        latest = await client.download(job.id, tmp_path / "latest.mp4")
    assert latest.read_bytes() == v2.read_bytes() != v1.read_bytes()
    # They differ in scene 1's time range only.
    start, length = relisted[1].start_s, relisted[1].duration_s
    inside = [start + length * f for f in (0.2, 0.5, 0.8)]
    outside = [
        t for t in (0.5, 1.5, start - 0.5, start + length + 0.5, DURATION_S - 3.5)
        if not start - 0.25 < t < start + length + 0.25
    ]  # fmt: skip
    times = inside + outside
    diffs = [
        float(np.abs(a - b).mean())
        for a, b in zip(frames(v1, times), frames(v2, times), strict=True)
    ]
    assert all(d > 10 for d in diffs[: len(inside)]), diffs
    assert all(d < 2 for d in diffs[len(inside) :]), diffs


async def test_a_new_narration_buys_the_clip_and_the_voice_only(
    mocks: LiveMocks, sessions: Any
) -> None:
    async with rendered(mocks, sessions) as done:
        client, job = done.client, done.job
        bought = mocks.paid_calls()
        line = "Boils in sixty seconds flat."
        estimate = await client.rerender_estimate(job.id, 0, narration=line)
        assert set(estimate["stages"]) == {"video_gen", "voice_gen", "compositing"}
        assert estimate["stages"]["voice_gen"]["usd"] > 0
        assert mocks.paid_calls() == bought
        await client.rerender(job.id, 0, narration=line)
        final = await client.wait(job.id, timeout=120)
        assert final.status == "succeeded" and final.version == 2
        assert mocks.paid_calls() == {**bought, "voice_gen": 2, "video_gen": 4}
        keys = set(await purchases(sessions, job.id))
        assert {"voice_gen@v2", "video_gen:0@v2"} <= keys and "script_gen@v2" not in keys
        assert (await client.scenes(job.id))[0].narration == line


async def test_a_failed_rerender_is_retried_and_buys_its_clip_once(
    mocks: LiveMocks, sessions: Any
) -> None:
    async with rendered(mocks, sessions) as done:
        client, job = done.client, done.job
        mocks.replicate.faults.append(invalid_input())  # the re-render's create is refused
        await client.rerender(job.id, 1, prompt="a kettle on the moon")
        failed = await client.wait(job.id, timeout=120)
        assert failed.status == "failed" and failed.version == 2, failed
        # Version 1 is still the video meanwhile.
        async with httpx.AsyncClient(base_url=done.api.url, headers=auth(done.key)) as http:
            assert (await http.get(f"/v1/jobs/{job.id}/video")).status_code == 200
        await client.retry(job.id)
        final = await client.wait(job.id, timeout=120)
        assert final.status == "succeeded" and final.version == 2, final
    assert mocks.replicate.paid == 3 + 1 and mocks.elevenlabs.paid == 1
    assert mocks.anthropic.paid == 1
    bought = await purchases(sessions, job.id)
    assert bought["video_gen:1@v2"].state == "settled"


@pytest.mark.timeout(240)
async def test_a_rerender_whose_worker_is_killed_finishes_elsewhere_buying_nothing_twice(
    live_api: LiveApi, client: Client, settings: Settings, providers: Providers,
    redis: Redis, sessions: Any, tmp_path: Path,
) -> None:  # fmt: skip
    providers.replicate.polls = 1  # version 1 runs through
    env = {**providers.env, "VIDEOQ_WORKER_STALE_S": "120"}  # handed over by its lock
    first = WorkerProcess(settings, tmp_path / "logs", **env).start()
    # The other worker's disk is its own: what it needs comes from the artifact store.
    elsewhere = {**env, "VIDEOQ_SCRATCH_DIR": str(tmp_path / "elsewhere")}
    second = WorkerProcess(settings, tmp_path / "logs", **elsewhere)
    try:
        await first.registered(redis)
        job = await client.submit(product_name="Kettle", duration_s=DURATION_S)
        assert (await client.wait(job.id, timeout=120)).status == "succeeded", first.output()
        providers.replicate.polls = FOREVER  # the re-render's prediction runs until released
        await client.rerender(job.id, 2, prompt="a kettle in the snow")
        await until_noted(sessions, job.id, "video_gen@v2.notes", "scene_02")
        first.signal(signal.SIGKILL)
        await first.exited()
        second.start()
        providers.release()
        final = await client.wait(job.id, timeout=120)
        assert final.status == "succeeded" and final.version == 2, second.output()
    finally:
        first.stop()
        second.stop()
    assert providers.replicate.paid == 3 + 1, "the noted prediction was bought again"
    assert (providers.anthropic.paid, providers.elevenlabs.paid) == (1, 1)
    for mock in providers.all():
        assert mock.invalid == [], f"{type(mock).__name__} saw requests off the spec"
    assert (await client.scenes(job.id))[2].prompt == "a kettle in the snow"
    video = await client.download(job.id, tmp_path / "v2.mp4", version=2)
    assert video.stat().st_size > 0


async def until_noted(sessions: Any, job_id: str, row: str, key: str, timeout: float = 60) -> None:
    """Poll PostgreSQL until the notes ``row`` of the job records a prediction under ``key``."""
    deadline = time.monotonic() + timeout
    while not ((await stage_rows(sessions, job_id)).get(row, (0, {}))[1].get(key) or {}).get("id"):
        assert time.monotonic() < deadline, f"{row} never noted {key}"
        await asyncio.sleep(0.05)


#: Bad re-render requests: (body, status, the fields the error names).
BAD: list[tuple[Any, int, list[str]]] = [
    ({}, 422, ["prompt", "narration"]),
    ({"dry_run": True}, 422, ["prompt", "narration"]),
    ({"prompt": ""}, 422, ["prompt"]),
    ({"prompt": "   "}, 422, ["prompt"]),
    ({"prompt": 5}, 422, ["prompt"]),
    ({"narration": "x" * 1001}, 422, ["narration"]),
    ({"prompt": "ok\x00"}, 422, ["prompt"]),
    ({"prompt": "ok", "dry_run": "yes"}, 422, ["dry_run"]),
    ({"prompt": "ok", "colour": "red"}, 422, ["colour"]),
    ([], 422, ["body"]),
]


async def test_bad_rerender_requests_are_4xx_naming_the_field(
    live_api: LiveApi, client: Client, api_key: str, settings: Settings, sessions: Any
) -> None:
    waiting = await client.submit(product_name="Still Queued")  # no worker yet
    with pytest.raises(ConflictError):
        await client.rerender(waiting.id, 0, prompt="too soon")
    async with running_worker(settings):
        job = await client.submit(product_name="Kettle", duration_s=10)
        assert (await client.wait(job.id, timeout=120)).status == "succeeded"
    path = f"/v1/jobs/{job.id}/scenes"
    async with httpx.AsyncClient(base_url=live_api.url, headers=auth(api_key)) as http:
        for body, status, fields in BAD:
            response = await http.post(f"{path}/0/rerender", json=body)
            assert response.status_code == status, (body, response.text)
            assert [d["field"] for d in response.json()["error"]["details"]] == fields, body
        for index in ("2", "99", "abc", "-1"):
            response = await http.post(f"{path}/{index}/rerender", json={"prompt": "x"})
            assert response.status_code == 404, (index, response.text)
        unknown = await http.post(f"/v1/jobs/{uuid.uuid4()}/scenes/0/rerender", json={})
        assert unknown.status_code == 404
        for version, status in (("0", 422), ("x", 422), ("2", 404)):
            response = await http.get(f"/v1/jobs/{job.id}/video?version={version}")
            assert response.status_code == status, (version, response.text)
        # Offline, a dry run costs nothing and says so.
        dry = await http.post(f"{path}/1/rerender", json={"prompt": "new", "dry_run": True})
        assert dry.status_code == 200 and dry.json()["total"] == 0
        # Queued for version 2 (no worker): a second re-render waits for it; version 1 is
        # what the video is meanwhile, version 2 not yet.
        queued = await http.post(f"{path}/1/rerender", json={"prompt": "new"})
        assert queued.status_code == 202 and queued.json()["version"] == 2
        again = await http.post(f"{path}/0/rerender", json={"prompt": "newer"})
        assert again.status_code == 409
        assert (await http.get(f"/v1/jobs/{job.id}/video")).status_code == 200
        assert (await http.get(f"/v1/jobs/{job.id}/video?version=1")).status_code == 200
        assert (await http.get(f"/v1/jobs/{job.id}/video?version=2")).status_code == 409
    async with httpx.AsyncClient(base_url=live_api.url) as http:
        assert (await http.post(f"{path}/0/rerender", json={"prompt": "x"})).status_code == 401
        other = auth(await new_key(sessions))
        refused = await http.post(f"{path}/0/rerender", json={"prompt": "x"}, headers=other)
        assert refused.status_code == 404
