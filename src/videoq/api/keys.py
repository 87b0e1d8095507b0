"""``POST``, ``GET /v1/keys`` and ``DELETE /v1/keys/{key_id}``: API keys, managed by admin
keys over HTTP (as ``videoq keys`` does on a machine with database access). A new key is in
the ``201`` answer and nowhere else, ever; lists show prefixes only. A revoked key is refused
by every API process from the next request on: keys are looked up in PostgreSQL on every
request, never cached. The last working admin key cannot be revoked (``409``).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from videoq.api.deps import admin, base_url, read_json, state_of
from videoq.api.errors import error_response, invalid, not_an_object
from videoq.errors import NotFound
from videoq.schemas import KeyCreate
from videoq.store import ApiKey, apikeys

#: What names a key in a path: its id (a UUID) or its 10-character prefix.
_KEY_REF = re.compile(r"[0-9a-fA-F-]{32,36}|vq_[A-Za-z0-9_-]{7}")


def _ts(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def key_view(row: ApiKey, url: str) -> dict[str, Any]:
    """A key as the API shows it: never the key, nor its hash."""
    return {
        "id": str(row.id),
        "prefix": row.prefix,
        "tenant": row.tenant,
        "scope": "admin" if row.is_admin else "tenant",
        "name": row.name,
        "created_at": _ts(row.created_at),
        "last_used_at": _ts(row.last_used_at),
        "expires_at": _ts(row.expires_at),
        "revoked_at": _ts(row.revoked_at),
        "links": {"self": f"{url}/v1/keys/{row.id}"},
    }


async def create_key(request: Request) -> Response:
    await admin(request)
    payload = await read_json(request)
    if not isinstance(payload, dict):
        return not_an_object()
    try:
        body = KeyCreate.model_validate(payload)
    except ValidationError as exc:
        return invalid(exc)
    async with state_of(request).sessions() as session:
        row, key = await apikeys.issue(
            session, body.tenant, admin=body.scope == "admin", name=body.name,
            expires_at=body.expires_at,
        )  # fmt: skip
    view = {**key_view(row, base_url(request)), "key": key}
    headers = {"Location": view["links"]["self"], "Cache-Control": "no-store"}
    return JSONResponse(view, status_code=201, headers=headers)


async def list_keys(request: Request) -> Response:
    await admin(request)
    params = request.query_params
    tenant = params.get("tenant")
    if tenant is not None and not 1 <= len(tenant) <= 100:
        return error_response(
            422, "validation_error", "tenant must be 1-100 characters",
            [{"field": "tenant", "message": "must be 1-100 characters"}],
        )  # fmt: skip
    revoked = params.get("include_revoked", "false")
    if revoked not in ("true", "false"):
        return error_response(
            422, "validation_error", "include_revoked must be true or false",
            [{"field": "include_revoked", "message": "must be true or false"}],
        )  # fmt: skip
    async with state_of(request).sessions() as session:
        rows = await apikeys.list_keys(session, tenant, revoked=revoked == "true")
    url = base_url(request)
    return JSONResponse({"data": [key_view(row, url) for row in rows]})


async def revoke_key(request: Request) -> Response:
    await admin(request)
    ref: str = request.path_params["key_id"]
    if not _KEY_REF.fullmatch(ref):
        raise NotFound(f"no API key {ref[:40]!r}: give its id or its 10-character prefix")
    async with state_of(request).sessions() as session:
        row = await apikeys.revoke_key(session, ref)
    return JSONResponse(key_view(row, base_url(request)))


ROUTES = [
    Route("/v1/keys", create_key, methods=["POST"]),
    Route("/v1/keys", list_keys, methods=["GET"]),
    Route("/v1/keys/{key_id}", revoke_key, methods=["DELETE"]),
]
