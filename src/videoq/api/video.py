"""``GET /v1/jobs/{id}/video``, from any API process: a file store's file as it is, a ranged
request or an object store's object streamed (``Range`` honoured, one range per request; a
refusal in the shared error shape) or, with ``VIDEOQ_VIDEO_REDIRECT``, a ``307`` to a
short-lived signed URL. ``GET /v1/jobs/{id}/captions``: the video's WebVTT captions, read from
the store likewise.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from videoq.api.deps import State
from videoq.api.errors import error_response
from videoq.api.scenes import requested_version
from videoq.artifacts import captions_key, video_key
from videoq.errors import Conflict, Gone, NotFound
from videoq.store import Job
from videoq.types import JobStatus

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
#: What :func:`_range` answers for a range no byte of the object satisfies.
_UNSATISFIABLE = (-1, -1)


async def video_response(request: Request, st: State, job: Job) -> Response:
    """The video of ``?version=N``, by default the latest one that is finished (while a
    re-render runs, the version before it)."""
    finished = job.version if job.status == JobStatus.SUCCEEDED else job.version - 1
    if "version" in request.query_params:
        version = requested_version(request, job)
        if isinstance(version, Response):
            return version
    else:
        version = max(finished, 1)
    if version > finished:
        raise Conflict(
            f"job {job.id} is {job.status}; version {version} of its video exists once it "
            "has succeeded"
        )
    if job.artifacts_expired_at is not None:
        raise Gone(
            f"the video of job {job.id} expired at {job.artifacts_expired_at.isoformat()} "
            f"(artifacts are kept {st.settings.artifact_ttl_days:g} days)"
        )
    key = video_key(job.id, version)
    name = f"{job.id}.mp4" if version == 1 else f"{job.id}.v{version}.mp4"
    store = st.artifacts
    if store.local_root is not None and "range" not in request.headers:
        # The whole file, sent by the server (sendfile). A ranged request takes the path below,
        # whose refusals carry the shared error shape (FileResponse's are text/plain).
        path = store.local_root / key
        if not path.is_file():
            raise NotFound(f"the video of job {job.id} is no longer stored")
        return FileResponse(path, media_type="video/mp4", filename=name)
    stat = await store.stat(key)
    if stat is None:
        raise NotFound(f"the video of job {job.id} is no longer stored")
    if st.settings.video_redirect and store.signs_urls:
        url = await store.signed_url(key, st.settings.signed_url_ttl_s)
        return RedirectResponse(url, status_code=307, headers={"cache-control": "no-store"})
    headers = {
        "accept-ranges": "bytes",
        "content-disposition": f'attachment; filename="{name}"',
    }
    if stat.etag:
        headers["etag"] = stat.etag
    wanted = _range(request.headers.get("range"), stat.size)
    if wanted is None:
        headers["content-length"] = str(stat.size)
        return StreamingResponse(store.read(key), media_type="video/mp4", headers=headers)
    if wanted == _UNSATISFIABLE:
        return error_response(
            416, "range_not_satisfiable", f"the video has {stat.size} bytes",
            headers={"content-range": f"bytes */{stat.size}"},
        )  # fmt: skip
    start, end = wanted
    headers["content-range"] = f"bytes {start}-{end - 1}/{stat.size}"
    headers["content-length"] = str(end - start)
    return StreamingResponse(
        store.read(key, start, end), status_code=206, media_type="video/mp4", headers=headers
    )


async def captions_response(st: State, job: Job, version: int = 1) -> Response:
    """A version's captions file (small: read whole, then sent); refused as the video is."""
    if job.status != JobStatus.SUCCEEDED:
        raise Conflict(f"job {job.id} is {job.status}; its captions exist once it has succeeded")
    if job.artifacts_expired_at is not None:
        raise Gone(
            f"the captions of job {job.id} expired at {job.artifacts_expired_at.isoformat()} "
            f"(artifacts are kept {st.settings.artifact_ttl_days:g} days)"
        )
    if not (job.result or {}).get("captions"):
        raise NotFound(
            f"job {job.id} has no captions (its brief turned them off, or its voice had no "
            "word timings)"
        )
    store = st.artifacts
    key = captions_key(job.id, version)
    if await store.stat(key) is None:
        raise NotFound(f"the captions of job {job.id} are no longer stored")
    body = b"".join([chunk async for chunk in store.read(key)])
    return Response(body, media_type="text/vtt; charset=utf-8")


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """The half-open byte range a ``Range`` header asks for; :data:`_UNSATISFIABLE` when no
    byte of the object is in it;
    None for the whole object (no header, several ranges, or a form this server ignores, as
    RFC 9110 allows)."""
    match = _RANGE.match((header or "").strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        suffix = int(last)
        return (max(0, size - suffix), size) if suffix else _UNSATISFIABLE
    start = int(first)
    end = min(size, int(last) + 1) if last else size
    if start >= size or end <= start:
        return _UNSATISFIABLE
    return start, end
