"""Previews on a job's stream, against a real API and worker (offline providers): the
storyboard after the script, a thumbnail as each scene's clip lands, the poster of the
finished video; each an image of the right size at the URL its event names (decoded with
PyAV), replayed after a reconnect, listed by ``GET /v1/jobs/{id}/scenes`` and shown by the
SDK. And the bad requests around them."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import av
import httpx
import pytest

from tests.conftest import LiveApi, auth, new_key, set_status
from videoq.client import Client, Event, NotFoundError, describe_preview
from videoq.pipeline.previews import thumbnail_size
from videoq.types import Brief, scene_count
from videoq.workers.worker import VideoqWorker

DURATION_S = 10
SCENES = scene_count(DURATION_S)


def size_of(jpeg: bytes) -> tuple[int, int]:
    """The width and height of the one image in ``jpeg``, decoded."""
    with av.open(io.BytesIO(jpeg), mode="r") as container:
        frame = next(container.decode(video=0))
        return frame.width, frame.height


def previews(events: list[Event]) -> list[Event]:
    return [e for e in events if e.type == "preview"]


@pytest.fixture
async def finished(
    live_api: LiveApi, client: Client, worker: VideoqWorker
) -> tuple[str, list[Event]]:
    """A job run to its end, and every event of it, read live from its start."""
    job = await client.submit(product_name="Preview Mug", cta_text="Buy", duration_s=DURATION_S)
    events = [event async for event in client.events(job.id, after=0)]
    assert events[-1].terminal and events[-1].status == "succeeded", events[-1]
    return job.id, events


async def test_every_preview_arrives_in_order_with_an_image_of_the_right_size(
    finished: tuple[str, list[Event]], client: Client
) -> None:
    job_id, events = finished
    shown = previews(events)
    kinds = [e.preview.kind for e in shown if e.preview is not None]
    assert kinds == ["storyboard"] + ["thumbnail"] * SCENES + ["poster"], kinds
    seqs = [e.seq for e in events[1:]]
    assert seqs == sorted(seqs)
    # The storyboard comes right after the script, before any clip is made.
    storyboard = shown[0].preview
    assert storyboard is not None and len(storyboard.scenes) == SCENES
    # The snapshot shows the job as it was when the socket opened: not an event of the run.
    first_video = next(e.seq for e in events if e.stage == "video_gen" and e.type != "snapshot")
    script_started = next(e.seq for e in events if e.stage == "script_gen" and e.type != "snapshot")
    assert script_started < shown[0].seq < first_video
    assert [s["index"] for s in storyboard.scenes] == list(range(SCENES))
    assert all(s["narration"] and s["prompt"] for s in storyboard.scenes)
    assert sum(s["duration_s"] for s in storyboard.scenes) == pytest.approx(DURATION_S)
    assert storyboard.url.endswith(f"/v1/jobs/{job_id}/scenes")
    # One thumbnail per scene, while video_gen runs; the poster at the end, before success.
    thumbnails = [e.preview for e in shown[1:-1] if e.preview is not None]
    assert sorted(t.scene for t in thumbnails if t.scene is not None) == list(range(SCENES))
    assert all(e.stage == "video_gen" for e in shown[1:-1])
    assert shown[-1].stage == "compositing" and shown[-1].seq < events[-1].seq
    expected = thumbnail_size(Brief(product_name="x"))
    assert expected == (360, 640)
    for preview in thumbnails:
        assert (preview.width, preview.height) == expected
        assert size_of(await client.image(preview.url)) == expected
    poster = shown[-1].preview
    assert poster is not None and (poster.width, poster.height) == (1080, 1920)
    assert size_of(await client.image(poster.url)) == (1080, 1920)
    # Two thumbnails of different scenes are different pictures.
    images = {await client.image(t.url) for t in thumbnails}
    assert len(images) == SCENES
    # The line a watcher sees.
    assert (describe_preview(shown[0]) or "").startswith(f"storyboard: {SCENES} scenes")
    assert describe_preview(events[-1]) is None


async def test_replay_after_a_reconnect_includes_the_previews(
    finished: tuple[str, list[Event]], client: Client
) -> None:
    job_id, events = finished
    live = [e.model_dump() for e in previews(events)]
    again = [e async for e in client.events(job_id, after=0)]
    assert [e.model_dump() for e in previews(again)] == live
    # Reconnecting after the storyboard gets exactly the previews that came later.
    after = live[0]["seq"]
    rest = [e async for e in client.events(job_id, after=after)]
    assert rest[0].type == "snapshot"
    assert [e.model_dump() for e in previews(rest[1:])] == live[1:]


async def test_the_scenes_list_what_the_storyboard_showed_with_thumbnails_and_the_poster(
    finished: tuple[str, list[Event]], client: Client, live_api: LiveApi, api_key: str
) -> None:
    job_id, events = finished
    storyboard = previews(events)[0].preview
    assert storyboard is not None
    scenes = await client.scenes(job_id)
    assert [s.index for s in scenes] == list(range(SCENES))
    for scene, planned in zip(scenes, storyboard.scenes, strict=True):
        assert (scene.narration, scene.prompt) == (planned["narration"], planned["prompt"])
        assert scene.thumbnail_url is not None and scene.cost is None  # offline: free
        assert size_of(await client.image(scene.thumbnail_url)) == (360, 640)
        assert scene.version == 1
    assert scenes[0].start_s == 0
    assert sum(s.duration_s for s in scenes) == pytest.approx(DURATION_S, abs=0.01)
    for before, after in pairwise(scenes):
        assert after.start_s == pytest.approx(before.start_s + before.duration_s, abs=0.002)
    job = await client.get(job_id)
    assert job.version == 1 and job.versions == []
    assert job.result is not None and job.result.poster_url is not None
    assert job.result.poster_url.startswith(live_api.url)
    assert size_of(await client.image(job.result.poster_url)) == (1080, 1920)
    async with httpx.AsyncClient(base_url=live_api.url, headers=auth(api_key)) as http:
        listed = (await http.get(f"/v1/jobs/{job_id}/scenes")).json()
        assert listed["version"] == 1 and listed["job_id"] == job_id
        response = await http.get(f"/v1/jobs/{job_id}/scenes/0/thumbnail")
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/jpeg"


async def test_previews_need_the_key_of_the_jobs_tenant(
    finished: tuple[str, list[Event]], live_api: LiveApi, sessions: Any
) -> None:
    job_id, _ = finished
    other = await new_key(sessions)
    paths = [
        f"/v1/jobs/{job_id}/scenes",
        f"/v1/jobs/{job_id}/scenes/0/thumbnail",
        f"/v1/jobs/{job_id}/poster",
    ]
    async with httpx.AsyncClient(base_url=live_api.url) as http:
        for path in paths:
            assert (await http.get(path)).status_code == 401
            refused = await http.get(path, headers=auth(other))
            assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"


#: Bad requests around previews: (path under the job, status, the field the error names).
BAD = [
    ("/scenes/abc/thumbnail", 404, None),
    ("/scenes/-1/thumbnail", 404, None),
    ("/scenes/99/thumbnail", 404, None),
    ("/scenes/0/thumbnail?version=0", 422, "version"),
    ("/scenes/0/thumbnail?version=x", 422, "version"),
    ("/scenes/0/thumbnail?version=2", 404, None),
    ("/poster?version=-3", 422, "version"),
    ("/poster?version=7", 404, None),
]


async def test_bad_requests_for_previews_are_4xx_naming_the_field(
    finished: tuple[str, list[Event]], live_api: LiveApi, api_key: str
) -> None:
    job_id, _ = finished
    async with httpx.AsyncClient(base_url=live_api.url, headers=auth(api_key)) as http:
        for path, status, field in BAD:
            response = await http.get(f"/v1/jobs/{job_id}{path}")
            assert response.status_code == status, (path, response.text)
            error = response.json()["error"]
            if field is not None:
                assert [d["field"] for d in error["details"]] == [field], path


async def test_an_expired_job_lists_its_scenes_without_images(
    finished: tuple[str, list[Event]], live_api: LiveApi, api_key: str, sessions: Any
) -> None:
    job_id, _ = finished
    await set_status(sessions, job_id, "succeeded", artifacts_expired_at=datetime.now(UTC))
    async with httpx.AsyncClient(base_url=live_api.url, headers=auth(api_key)) as http:
        listed = await http.get(f"/v1/jobs/{job_id}/scenes")
        assert listed.status_code == 200
        assert [s["thumbnail_url"] for s in listed.json()["data"]] == [None] * SCENES
        for path in ("/scenes/0/thumbnail", "/poster"):
            gone = await http.get(f"/v1/jobs/{job_id}{path}")
            assert gone.status_code == 410 and gone.json()["error"]["code"] == "gone"
        refused = await http.post(f"/v1/jobs/{job_id}/scenes/0/rerender", json={"prompt": "x"})
        assert refused.status_code == 410


async def test_a_job_without_a_script_has_no_scenes_yet(client: Client, live_api: LiveApi) -> None:
    job = await client.submit(product_name="Not Started")  # no worker: it stays queued
    assert await client.scenes(job.id) == []
    with pytest.raises(NotFoundError):
        await client.image(f"/v1/jobs/{job.id}/poster")
