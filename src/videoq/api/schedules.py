"""``/v1/schedules``: recurring jobs. A schedule is the body of a ``POST /v1/jobs`` with a
``cron`` expression and the IANA ``timezone`` it is read in; the workers' ticker submits one
job per tick (:func:`videoq.workers.supervisor.fire_schedules`). Scoped by the key's tenant:
another tenant's schedule is a 404.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from videoq import cron
from videoq.api.deps import base_url, page_limit, principal, state_of
from videoq.api.jobs import read_brief
from videoq.errors import InvalidParameter
from videoq.schemas import ScheduleCreate
from videoq.store import Schedule, schedules


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def schedule_view(row: Schedule, url: str) -> dict[str, Any]:
    last_job = f"{url}/v1/jobs/{row.last_job_id}" if row.last_job_id else None
    return {
        "id": str(row.id),
        "name": row.name,
        "cron": row.cron,
        "timezone": row.timezone,
        "job": row.job,
        "next_run_at": _ts(row.next_run_at),
        "last_tick_at": _ts(row.last_tick_at),
        "last_job_id": str(row.last_job_id) if row.last_job_id else None,
        "skipped_ticks": row.skipped_ticks,
        "last_error": row.last_error,
        "created_at": _ts(row.created_at),
        "links": {"self": f"{url}/v1/schedules/{row.id}", "last_job": last_job},
    }


async def create_schedule(request: Request) -> Response:
    who = await principal(request)
    st = state_of(request)
    body = await read_brief(request, ScheduleCreate)
    if isinstance(body, Response):
        return body
    first = cron.after(body.cron, body.timezone, datetime.now(UTC))
    async with st.sessions() as session:
        row = await schedules.create(
            session, who.tenant, queue=st.settings.queue_name, cron=body.cron,
            timezone=body.timezone, job=body.job(), next_run_at=first, name=body.name,
        )  # fmt: skip
    view = schedule_view(row, base_url(request))
    return JSONResponse(view, status_code=201, headers={"Location": view["links"]["self"]})


async def list_schedules(request: Request) -> Response:
    who = await principal(request)
    params = request.query_params
    limit = page_limit(request)
    async with state_of(request).sessions() as session:
        try:
            rows, cursor = await schedules.page(
                session, who.tenant, limit=limit, cursor=params.get("cursor")
            )
        except ValueError:
            raise InvalidParameter("cursor", "is not a cursor of this list") from None
    url = base_url(request)
    return JSONResponse({"data": [schedule_view(r, url) for r in rows], "next_cursor": cursor})


async def get_schedule(request: Request) -> Response:
    who = await principal(request)
    async with state_of(request).sessions() as session:
        row = await schedules.get(session, request.path_params["schedule_id"], who.tenant)
    return JSONResponse(schedule_view(row, base_url(request)))


async def delete_schedule(request: Request) -> Response:
    who = await principal(request)
    async with state_of(request).sessions() as session:
        await schedules.remove(session, request.path_params["schedule_id"], who.tenant)
    return Response(status_code=204)


ROUTES = [
    Route("/v1/schedules", create_schedule, methods=["POST"]),
    Route("/v1/schedules", list_schedules, methods=["GET"]),
    Route("/v1/schedules/{schedule_id}", get_schedule, methods=["GET"]),
    Route("/v1/schedules/{schedule_id}", delete_schedule, methods=["DELETE"]),
]
