"""The job routes: create, read, list, the video, cancel and retry. Each is a few lines: the
use cases are :mod:`videoq.lifecycle`'s, the reads :mod:`videoq.store.jobs`'.
"""

from __future__ import annotations

from typing import TypeVar, overload

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from videoq import lifecycle
from videoq.api.deps import base_url, page_limit, principal, read_json, state_of
from videoq.api.errors import error_response, invalid, not_an_object
from videoq.api.scenes import requested_version
from videoq.api.video import captions_response, video_response
from videoq.errors import InvalidParameter
from videoq.schemas import JobCreate, job_context
from videoq.store import jobs, spend
from videoq.types import TERMINAL, JobStatus
from videoq.views import job_view

_STATUSES = tuple(JobStatus)
Body = TypeVar("Body", bound=JobCreate)


@overload
async def read_brief(request: Request) -> JobCreate | Response: ...
@overload
async def read_brief(request: Request, model: type[Body]) -> Body | Response: ...
async def read_brief(request: Request, model: type[JobCreate] = JobCreate) -> JobCreate | Response:
    """The body of a ``POST /v1/jobs`` (or of an estimate, or of a ``model`` that extends it:
    a schedule's), or the error answer to it."""
    payload = await read_json(request)
    if not isinstance(payload, dict):
        return not_an_object()
    try:
        return model.model_validate(payload, context=job_context(state_of(request).settings))
    except ValidationError as exc:
        return invalid(exc)


async def create_job(request: Request) -> Response:
    who = await principal(request)
    st = state_of(request)
    body = await read_brief(request)
    if isinstance(body, Response):
        return body
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 200:
        return error_response(
            422, "validation_error", "Idempotency-Key must be 1-200 characters",
            [{"field": "Idempotency-Key", "message": "must be 1-200 characters"}],
        )  # fmt: skip
    job, created = await lifecycle.submit(st, who.tenant, body, idempotency_key=key)
    view = job_view(job, base_url(request), eta_s=job.eta_at_submit_s)
    return JSONResponse(view, status_code=202 if created else 200)


async def get_job(request: Request) -> Response:
    who = await principal(request)
    st = state_of(request)
    async with st.sessions() as session:
        job = await jobs.get_job(session, request.path_params["job_id"], who.tenant)
        eta_s = None
        if job.status not in TERMINAL:
            eta_s = await lifecycle.estimate(st, session, st.settings.for_job(job.options), job)
        purchases = await spend.of_job(session, job.id)
    position = await lifecycle.position(st, job)
    view = job_view(
        job, base_url(request), queue_position=position, eta_s=eta_s, purchases=purchases
    )
    return JSONResponse(view)


async def list_jobs(request: Request) -> Response:
    who = await principal(request)
    params = request.query_params
    status = params.get("status")
    if status is not None and status not in _STATUSES:
        return error_response(
            422, "validation_error", f"status must be one of {', '.join(_STATUSES)}",
            [{"field": "status", "message": "unknown status"}],
        )  # fmt: skip
    limit = page_limit(request)
    async with state_of(request).sessions() as session:
        try:
            page, cursor = await jobs.list_jobs(
                session, who.tenant, status=status, limit=limit, cursor=params.get("cursor")
            )
        except ValueError:
            raise InvalidParameter("cursor", "is not a cursor of this list") from None
    url = base_url(request)
    return JSONResponse({"data": [job_view(j, url) for j in page], "next_cursor": cursor})


async def get_video(request: Request) -> Response:
    who = await principal(request)
    st = state_of(request)
    async with st.sessions() as session:
        job = await jobs.get_job(session, request.path_params["job_id"], who.tenant)
    return await video_response(request, st, job)


async def get_captions(request: Request) -> Response:
    who = await principal(request)
    st = state_of(request)
    async with st.sessions() as session:
        job = await jobs.get_job(session, request.path_params["job_id"], who.tenant)
    version = requested_version(request, job)
    if isinstance(version, Response):
        return version
    return await captions_response(st, job, version)


async def cancel_job(request: Request) -> Response:
    who = await principal(request)
    job = await lifecycle.cancel(state_of(request), request.path_params["job_id"], who.tenant)
    return JSONResponse(job_view(job, base_url(request)), status_code=202)


async def retry_job(request: Request) -> Response:
    who = await principal(request)
    job = await lifecycle.retry(state_of(request), request.path_params["job_id"], who.tenant)
    return JSONResponse(job_view(job, base_url(request)), status_code=202)


ROUTES = [
    Route("/v1/jobs", create_job, methods=["POST"]),
    Route("/v1/jobs", list_jobs, methods=["GET"]),
    Route("/v1/jobs/{job_id}", get_job),
    Route("/v1/jobs/{job_id}/video", get_video),
    Route("/v1/jobs/{job_id}/captions", get_captions),
    Route("/v1/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
    Route("/v1/jobs/{job_id}/retry", retry_job, methods=["POST"]),
]
