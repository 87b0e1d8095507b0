"""``GET`` and ``PUT /v1/tenants/{tenant}``: a tenant's fair share of the workers (its
``weight`` against other tenants, its ``max_running``) and its spend budgets
(``daily_budget_usd``, ``monthly_budget_usd``, ``reject_when_over_budget``). Admins read and set
any tenant's; a tenant's own key reads its own. A budget raised or lifted wakes the tenant's
jobs awaiting it at once."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import structlog
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from videoq import lifecycle
from videoq.api.deps import admin, principal, read_json, state_of
from videoq.api.errors import error_response, invalid, not_an_object
from videoq.broker import BROKER_ERRORS, shares
from videoq.errors import Forbidden
from videoq.schemas import TenantUpdate
from videoq.store import Tenant, tenants

log = structlog.get_logger(__name__)

NOT_NULL = frozenset({"weight", "reject_when_over_budget"})
BUDGETS = frozenset({"daily_budget_usd", "monthly_budget_usd"})


def _money(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _view(tenant: str, row: Tenant | None) -> dict[str, Any]:
    if row is None:
        return {
            "tenant": tenant, "weight": 1.0, "max_running": None, "daily_budget_usd": None,
            "monthly_budget_usd": None, "reject_when_over_budget": False,
        }  # fmt: skip
    return {
        "tenant": tenant,
        "weight": row.weight,
        "max_running": row.max_running,
        "daily_budget_usd": _money(row.daily_budget_usd),
        "monthly_budget_usd": _money(row.monthly_budget_usd),
        "reject_when_over_budget": row.reject_when_over_budget,
    }


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
    return JSONResponse(_view(name, row))


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
    # Sent as null: lifted (max_running, budgets); weight and the flag take no null.
    changes = body.model_dump(include=body.model_fields_set)
    changes = {k: v for k, v in changes.items() if v is not None or k not in NOT_NULL}
    async with st.sessions() as session:
        row = await tenants.put(session, name, changes)
    try:
        await shares.configure(st.redis, name, shares.TenantShare(row.weight, row.max_running))
    except BROKER_ERRORS as exc:  # workers' reconciler copies it once Redis is back
        log.warning("tenant_share_copy_deferred", tenant=name, error=str(exc))
    if BUDGETS & changes.keys():
        await lifecycle.budget_changed(st, name)
    return JSONResponse(_view(name, row))


ROUTES = [
    Route("/v1/tenants/{tenant}", get_tenant, methods=["GET"]),
    Route("/v1/tenants/{tenant}", put_tenant, methods=["PUT"]),
]
