"""What jobs cost: ``POST /v1/estimates`` (a brief's price before it is queued) and
``GET /v1/usage`` (the caller's spend today and this month, by stage and provider)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from videoq import prices
from videoq.api.deps import principal, state_of
from videoq.api.errors import error_response
from videoq.api.jobs import read_brief
from videoq.errors import Forbidden
from videoq.store import spend, tenants
from videoq.types import Brief


async def create_estimate(request: Request) -> Response:
    await principal(request)
    st = state_of(request)
    body = await read_brief(request)
    if isinstance(body, Response):
        return body
    settings = st.settings.for_job(body.options.model_dump(exclude_none=True))
    return JSONResponse(prices.estimate(Brief(**body.brief()), settings).to_json())


async def get_usage(request: Request) -> Response:
    who = await principal(request)
    tenant = request.query_params.get("tenant", who.tenant)
    if not (1 <= len(tenant) <= 100 and tenant.isprintable()):
        return error_response(
            422, "validation_error", "tenant must be 1-100 printable characters",
            [{"field": "tenant", "message": "must be 1-100 printable characters"}],
        )  # fmt: skip
    if tenant != who.tenant and not who.is_admin:
        raise Forbidden("a tenant key reads only its own usage")
    async with state_of(request).sessions() as session:
        row = await tenants.get(session, tenant)
        used = await spend.usage(session, tenant)
    budgets = {
        "daily_budget_usd": None if row is None or row.daily_budget_usd is None
        else float(row.daily_budget_usd),
        "monthly_budget_usd": None if row is None or row.monthly_budget_usd is None
        else float(row.monthly_budget_usd),
    }  # fmt: skip
    return JSONResponse({"tenant": tenant, **used, **budgets})


ROUTES = [
    Route("/v1/estimates", create_estimate, methods=["POST"]),
    Route("/v1/usage", get_usage, methods=["GET"]),
]
