"""A job's scenes, previews and re-renders: ``GET /v1/jobs/{id}/scenes`` (the script's
scenes, their timing, thumbnails and cost), a scene's thumbnail and the video's poster (JPEGs
from the artifact store, so any API process serves them), each of any version of the video
(``?version=N``, default the latest), and ``POST /v1/jobs/{id}/scenes/{index}/rerender``.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from videoq import lifecycle, prices
from videoq.api.deps import State, base_url, principal, read_json, state_of
from videoq.api.errors import error_response, invalid, not_an_object
from videoq.errors import Conflict, Gone, NotFound
from videoq.prices import Estimate, StageEstimate
from videoq.schemas import SceneRerender
from videoq.settings import Settings
from videoq.store import Job, jobs, spend, versions
from videoq.store.tables import Purchase
from videoq.types import JobStatus, Script, version_dir
from videoq.versions import (
    POSTER,
    checkpoint_name,
    edited,
    made_in,
    purchase_name,
    scene_key,
    script_at,
    thumbnail_name,
)
from videoq.views import job_view

#: Browsers may keep an image: the one a URL names (a scene of a version) never changes.
_IMAGE_HEADERS = {"cache-control": "private, max-age=86400"}


def scene_index(request: Request) -> int:
    """The ``{index}`` of the path; :class:`NotFound` when it names no scene there can be."""
    raw = request.path_params["index"]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 4:
        raise NotFound(f"no scene {raw!r}")
    return int(raw)


def requested_version(request: Request, job: Job) -> int | Response:
    """``?version=N`` (default: the job's latest), or the error answer to it: 422 when it is
    not a positive integer, 404 when the job has no such version."""
    raw = request.query_params.get("version")
    if raw is None:
        return job.version
    if not raw.isascii() or not raw.isdigit() or len(raw) > 6 or int(raw) < 1:
        return error_response(
            422, "validation_error", "version must be a positive integer",
            [{"field": "version", "message": "must be a positive integer", "type": "int_type"}],
        )  # fmt: skip
    if int(raw) > job.version:
        raise NotFound(f"job {job.id} has no version {raw} (its latest is {job.version})")
    return int(raw)


def thumbnail_key(job: Job, index: int, version: int) -> str:
    """The store key of scene ``index``'s thumbnail in ``version``: that of the version whose
    clip the scene shows."""
    made = made_in(job.versions, index, version)
    return f"{job.id}/{version_dir(made)}{thumbnail_name(index)}"


def poster_key(job: Job, version: int) -> str:
    return f"{job.id}/{version_dir(version)}{POSTER}"


async def _job(request: Request, *, files: bool = True) -> tuple[State, Job]:
    """The caller's job; :class:`Gone` when ``files`` are asked for and they expired."""
    who = await principal(request)
    st = state_of(request)
    async with st.sessions() as session:
        job = await jobs.get_job(session, request.path_params["job_id"], who.tenant)
    if files and job.artifacts_expired_at is not None:
        raise Gone(
            f"the files of job {job.id} expired at {job.artifacts_expired_at.isoformat()} "
            f"(artifacts are kept {st.settings.artifact_ttl_days:g} days)"
        )
    return st, job


async def _image(st: State, key: str, what: str) -> Response:
    """A JPEG of the store: the file itself from a directory store, else streamed."""
    store = st.artifacts
    if store.local_root is not None:
        path = store.local_root / key
        if not path.is_file():
            raise NotFound(f"{what} is not there (yet)")
        return FileResponse(path, media_type="image/jpeg", headers=_IMAGE_HEADERS)
    stat = await store.stat(key)
    if stat is None:
        raise NotFound(f"{what} is not there (yet)")
    headers = {**_IMAGE_HEADERS, "content-length": str(stat.size)}
    return StreamingResponse(store.read(key), media_type="image/jpeg", headers=headers)


async def get_thumbnail(request: Request) -> Response:
    st, job = await _job(request)
    index = scene_index(request)
    version = requested_version(request, job)
    if isinstance(version, Response):
        return version
    what = f"the thumbnail of scene {index} of job {job.id} (version {version})"
    return await _image(st, thumbnail_key(job, index, version), what)


async def get_poster(request: Request) -> Response:
    st, job = await _job(request)
    version = requested_version(request, job)
    if isinstance(version, Response):
        return version
    what = f"the poster of job {job.id} (version {version})"
    return await _image(st, poster_key(job, version), what)


def _timing(
    script: Script, outputs: dict[str, dict[str, Any]], version: int, total: float
) -> list[float]:
    """Where each scene starts in the video, and where the last ends: where the video of
    ``version`` cuts (the voice's timing, recorded by compositing), else, until it is
    composited, where the script puts them."""
    cuts = (outputs.get(checkpoint_name("compositing", version)) or {}).get("scene_starts_s")
    if isinstance(cuts, list) and len(cuts) == len(script.scenes):
        with contextlib.suppress(TypeError, ValueError):
            return [*(float(cut) for cut in cuts), total]
    return [0.0, *accumulate(scene.duration_s for scene in script.scenes)]


def _cost(purchases: dict[str, Purchase], key: str) -> float | None:
    """What the paid call ``key`` cost (its reservation while it runs); None when nothing
    was bought under it (offline providers, or not yet)."""
    bought = purchases.get(key)
    if bought is None or bought.state == "released":
        return None
    return float(bought.actual_usd if bought.actual_usd is not None else bought.reserved_usd)


async def list_scenes(request: Request) -> Response:
    # The scenes outlive the job's files: an expired job lists them, without thumbnails.
    st, job = await _job(request, files=False)
    async with st.sessions() as session:
        outputs = await versions.outputs(session, job.id)
        purchases = {p.key: p for p in await spend.of_job(session, job.id)}
    version = job.version
    script = script_at(outputs, job.versions, version)
    scenes = script.scenes if script is not None else []
    starts = (
        _timing(script, outputs, version, float(job.brief.get("duration_s", 15)))
        if script is not None
        else []
    )
    keys = [thumbnail_key(job, index, version) for index in range(len(scenes))]
    found = (
        [False] * len(keys)
        if job.artifacts_expired_at is not None
        else await asyncio.gather(*(_stored(st, key) for key in keys))
    )
    url = f"{base_url(request)}/v1/jobs/{job.id}/scenes"
    data = []
    for index, scene in enumerate(scenes):
        made = made_in(job.versions, index, version)
        data.append(
            {
                "index": index,
                "narration": scene.narration,
                "prompt": scene.visual_prompt,
                "start_s": round(starts[index], 3),
                "duration_s": round(starts[index + 1] - starts[index], 3),
                "thumbnail_url": f"{url}/{index}/thumbnail?version={made}"
                if found[index]
                else None,
                "version": made,
                "cost": _cost(purchases, purchase_name(scene_key(index), made)),
            }
        )
    return JSONResponse({"job_id": str(job.id), "version": version, "data": data})


async def _stored(st: State, key: str) -> bool:
    store = st.artifacts
    if store.local_root is not None:
        return (store.local_root / key).is_file()
    return await store.stat(key) is not None


async def rerender_scene(request: Request) -> Response:
    """``POST /v1/jobs/{id}/scenes/{index}/rerender``: the scene's new prompt and/or
    narration; 200 with the cost for ``dry_run``, else 202 with the job, requeued to make
    its next version."""
    who = await principal(request)
    st = state_of(request)
    async with st.sessions() as session:
        job = await jobs.get_job(session, request.path_params["job_id"], who.tenant)
        outputs = await versions.outputs(session, job.id)
    payload = await read_json(request)
    if not isinstance(payload, dict):
        return not_an_object()
    try:
        body = SceneRerender.model_validate(payload)
    except ValidationError as exc:
        return invalid(exc)
    sent = body.changes()
    if not sent:
        return error_response(
            422, "validation_error", "send the scene's new prompt, narration or both",
            [{"field": name, "message": "prompt or narration is required", "type": "missing"}
             for name in ("prompt", "narration")],
        )  # fmt: skip
    if job.status != JobStatus.SUCCEEDED:
        raise Conflict(f"job {job.id} is {job.status}; only a succeeded job can be re-rendered")
    if job.artifacts_expired_at is not None:
        raise Gone(f"the files of job {job.id} expired; it can no longer be re-rendered")
    index = scene_index(request)
    script = script_at(outputs, job.versions, job.version)
    if script is None or index >= len(script.scenes):
        raise NotFound(f"job {job.id} has no scene {index}")
    scene = script.scenes[index]
    current = {"prompt": scene.visual_prompt, "narration": scene.narration}
    changed = [name for name, value in sent.items() if value != current[name]]
    if body.dry_run:
        settings = st.settings.for_job(job.options)
        estimate = rerender_estimate(script, index, sent, changed, settings)
        return JSONResponse(
            {**estimate, "scene": index, "version": job.version + 1, "changed": changed}
        )
    change = {
        "version": job.version + 1, "scene": index, "changed": changed, **sent,
        "requested_at": datetime.now(UTC).isoformat(),
    }  # fmt: skip
    job = await lifecycle.rerender(st, job, change)
    return JSONResponse(job_view(job, base_url(request)), status_code=202)


def rerender_estimate(
    script: Script, index: int, sent: dict[str, str], changed: list[str], settings: Settings
) -> dict[str, Any]:
    """What re-rendering scene ``index`` with ``sent`` would cost: its clip, and the voice
    when the narration ``changed``, at the configured providers and prices (what the run
    reserves against the budget)."""
    live = settings.providers != "offline"
    edited_script = edited(script, {"scene": index, **sent})
    stages: dict[str, StageEstimate] = {}
    if live and settings.replicate_api_token is not None:
        usage = prices.scene_usage(settings, edited_script.scenes[index])
        stages["video_gen"] = StageEstimate("replicate", prices.reservation(settings, usage), usage)
    else:
        stages["video_gen"] = StageEstimate("offline")
    if "narration" in changed:
        if live and settings.elevenlabs_api_key is not None:
            characters = len(" ".join(s.narration for s in edited_script.scenes))
            usage = prices.voice_usage(settings, characters)
            stages["voice_gen"] = StageEstimate(
                "elevenlabs", prices.reservation(settings, usage), usage
            )
        else:
            stages["voice_gen"] = StageEstimate("offline")
    stages["compositing"] = StageEstimate("ffmpeg")
    return Estimate(stages).to_json()


ROUTES = [
    Route("/v1/jobs/{job_id}/scenes", list_scenes),
    Route("/v1/jobs/{job_id}/scenes/{index}/thumbnail", get_thumbnail),
    Route("/v1/jobs/{job_id}/scenes/{index}/rerender", rerender_scene, methods=["POST"]),
    Route("/v1/jobs/{job_id}/poster", get_poster),
]
