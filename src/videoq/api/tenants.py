"""``GET`` and ``PUT /v1/tenants/{tenant}``: a tenant's fair share of the workers (its
``weight`` against other tenants, its ``max_running``). Admins read and set any tenant's; a
tenant's own key reads its own."""

from __future__ import annotations

from typing import Any

import structlog
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from videoq.api.deps import admin, principal, read_json, state_of
from videoq.api.errors import error_response, invalid, not_an_object
from videoq.broker import BROKER_ERRORS, shares
from videoq.errors import Forbidden
from videoq.schemas import TenantUpdate
from videoq.store import tenants

log = structlog.get_logger(__name__)


def _view(tenant: str, weight: float, max_running: int | None) -> dict[str, Any]:
    return {"tenant": tenant, "weight": weight, "max_running": max_running}


def _tenant(request: Request) -> str | None:
    name: str = request.path_params["tenant"]
    return name if 1 <= len(name) <= 100 and name.isprintable() else None


def _bad_name() -> Response:
    return error_response(
        422, "validation_error", "tenant must be 1-100 printable characters",
        [{"field": "tenant", "message": "must be 1-100 printable characters"}],
    )  # fmt: skip


async def get_tenant(request: Request) -> Response:
    who = await principal(request)
    name = _tenant(request)
    if name is None:
        return _bad_name()
    if name != who.tenant and not who.is_admin:
        raise Forbidden("a tenant key reads only its own tenant")
    async with state_of(request).sessions() as session:
        row = await tenants.get(session, name)
    if row is None:
        return JSONResponse(_view(name, 1.0, None))
    return JSONResponse(_view(name, row.weight, row.max_running))


async def put_tenant(request: Request) -> Response:
    await admin(request)
    name = _tenant(request)
    if name is None:
        return _bad_name()
    payload = await read_json(request)
    if not isinstance(payload, dict):
        return not_an_object()
    try:
        body = TenantUpdate.model_validate(payload)
    except ValidationError as exc:
        return invalid(exc)
    st = state_of(request)
    async with st.sessions() as session:
        current = await tenants.get(session, name)
        weight = body.weight if body.weight is not None else (current.weight if current else 1.0)
        if "max_running" in body.model_fields_set:
            max_running = body.max_running
        else:
            max_running = current.max_running if current else None
        row = await tenants.put(session, name, weight=weight, max_running=max_running)
    try:
        await shares.configure(st.redis, name, shares.TenantShare(row.weight, row.max_running))
    except BROKER_ERRORS as exc:  # workers' reconciler copies it once Redis is back
        log.warning("tenant_share_copy_deferred", tenant=name, error=str(exc))
    return JSONResponse(_view(name, row.weight, row.max_running))


ROUTES = [
    Route("/v1/tenants/{tenant}", get_tenant, methods=["GET"]),
    Route("/v1/tenants/{tenant}", put_tenant, methods=["PUT"]),
]
