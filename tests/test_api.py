"""The HTTP and WebSocket API through the real app on the embedded servers: request validation,
authentication, tenancy, idempotency, listing, the video route, health and the migration check.

HTTP goes through ``httpx.ASGITransport`` on the app in-process; WebSocket close codes need a
real server (uvicorn). No worker runs, so every job created here stays queued on its test's queue.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import LiveApi, app_client, new_key, set_status
from videoq import store
from videoq.api import create_app
from videoq.broker import keys
from videoq.errors import NotMigrated
from videoq.settings import Settings
from videoq.store import jobs
from videoq.store.apikeys import hash_key

#: A time within the 30 days a job may be scheduled ahead.
SOON = (datetime.now(UTC) + timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
VALID: dict[str, Any] = {"product_name": "Nimbus Headphones"}
TOO_LARGE = object()  # a body one byte over settings.max_body_bytes, built in the test


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def tenant_of(sessions: Any, key: str) -> str:
    async with sessions() as session:
        query = select(store.ApiKey.tenant).where(store.ApiKey.key_hash == hash_key(key))
        tenant: str = (await session.execute(query)).scalar_one()
        return tenant


async def count_jobs(sessions: Any, tenant: str) -> int:
    async with sessions() as session:
        query = select(func.count()).select_from(store.Job).where(store.Job.tenant == tenant)
        return int((await session.execute(query)).scalar_one())


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The one error shape of DESIGN.md: ``{"error": {"code", "message", "details"}}``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def named_fields(error: dict[str, Any]) -> list[str]:
    details = error["details"]
    assert isinstance(details, list) and details, f"details name no field: {error}"
    return [item["field"] for item in details]


async def submit(
    client: httpx.AsyncClient, key: str, headers: dict[str, str] | None = None, **fields: Any
) -> httpx.Response:
    return await client.post(
        "/v1/jobs", json={**VALID, **fields}, headers={**auth(key), **(headers or {})}
    )


async def create(client: httpx.AsyncClient, key: str, **fields: Any) -> dict[str, Any]:
    response = await submit(client, key, **fields)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


# --- 1. Validation of POST /v1/jobs -------------------------------------------------------------


def case(
    name: str, body: Any, field: str | tuple[str, ...] | None, status: int = 422, **kw: Any
) -> Any:
    code = {400: "bad_request", 413: "too_large", 422: "validation_error"}[status]
    return pytest.param(body, status, code, field, id=name, **kw)


INVALID = [
    # product_name: required, 1-200 chars, a string, no control characters
    case("product_name-missing", {"style": "bold"}, "product_name"),
    case("product_name-empty", {"product_name": ""}, "product_name"),
    case("product_name-blank", {"product_name": "   "}, "product_name"),
    case("product_name-201", {"product_name": "x" * 201}, "product_name"),
    case("product_name-null", {"product_name": None}, "product_name"),
    case("product_name-number", {"product_name": 123}, "product_name"),
    case("product_name-NUL", {"product_name": "Nim\x00bus"}, "product_name"),
    case("product_name-ESC", {"product_name": "Nim\x1b[31mbus"}, "product_name"),
    case("product_name-DEL", {"product_name": "Nim\x7fbus"}, "product_name"),
    # style, aspect_ratio, priority: closed, case-sensitive enums
    case("style-unknown", {**VALID, "style": "fancy"}, "style"),
    case("style-case", {**VALID, "style": "Bold"}, "style"),
    case("style-null", {**VALID, "style": None}, "style"),
    case("aspect_ratio-4:3", {**VALID, "aspect_ratio": "4:3"}, "aspect_ratio"),
    case("aspect_ratio-16x9", {**VALID, "aspect_ratio": "16x9"}, "aspect_ratio"),
    case("priority-urgent", {**VALID, "priority": "urgent"}, "priority"),
    case("priority-case", {**VALID, "priority": "HIGH"}, "priority"),
    # cta_text <= 80, prompt <= 2000, voice 1-100 chars
    case("cta_text-81", {**VALID, "cta_text": "c" * 81}, "cta_text"),
    case("cta_text-number", {**VALID, "cta_text": 42}, "cta_text"),
    case("prompt-2001", {**VALID, "prompt": "p" * 2001}, "prompt"),
    case("voice-empty", {**VALID, "voice": ""}, "voice"),
    case("voice-101", {**VALID, "voice": "v" * 101}, "voice"),
    case("voice-number", {**VALID, "voice": 7}, "voice"),
    # duration_s: an integer from 5 to 60
    case("duration_s-4", {**VALID, "duration_s": 4}, "duration_s"),
    case("duration_s-61", {**VALID, "duration_s": 61}, "duration_s"),
    case("duration_s-fraction", {**VALID, "duration_s": 10.5}, "duration_s"),
    case("duration_s-bool", {**VALID, "duration_s": True}, "duration_s"),
    case("duration_s-null", {**VALID, "duration_s": None}, "duration_s"),
    case("duration_s-string", {**VALID, "duration_s": "10"}, "duration_s"),
    # run_at (ISO 8601) or delay_s, not both; delay_s >= 0 and <= 30 days
    case("run_at-words", {**VALID, "run_at": "next tuesday"}, "run_at"),
    case("run_at-month-13", {**VALID, "run_at": "2030-13-01T00:00:00Z"}, "run_at"),
    case("run_at-unix-seconds", {**VALID, "run_at": 1900000000}, "run_at"),
    case("run_at-unix-string", {**VALID, "run_at": "1900000000"}, "run_at"),
    case("run_at-over-30-days", {**VALID, "run_at": "2999-01-01T00:00:00Z"}, "run_at"),
    case("run_at-past-calendar", {**VALID, "run_at": "9999-12-31T23:59:59-12:00"}, "run_at"),
    case(
        "run_at-and-delay_s",
        {**VALID, "run_at": SOON, "delay_s": 5},
        ("run_at", "delay_s"),
    ),
    case("delay_s-negative", {**VALID, "delay_s": -1}, "delay_s"),
    case("delay_s-over-30-days", {**VALID, "delay_s": 30 * 24 * 3600 + 1}, "delay_s"),
    case("delay_s-words", {**VALID, "delay_s": "soon"}, "delay_s"),
    # max_retries 0-10
    case("max_retries-negative", {**VALID, "max_retries": -1}, "max_retries"),
    case("max_retries-11", {**VALID, "max_retries": 11}, "max_retries"),
    case("max_retries-fraction", {**VALID, "max_retries": 2.5}, "max_retries"),
    case("max_retries-bool", {**VALID, "max_retries": True}, "max_retries"),
    # ... and never above the operator's max_retries (3 here): a job may only lower a limit
    case("max_retries-over-setting", {**VALID, "max_retries": 4}, "max_retries"),
    # webhook_url: http(s) only
    case("webhook_url-ftp", {**VALID, "webhook_url": "ftp://example.com/hook"}, "webhook_url"),
    case("webhook_url-js", {**VALID, "webhook_url": "javascript:alert(1)"}, "webhook_url"),
    case("webhook_url-words", {**VALID, "webhook_url": "not a url"}, "webhook_url"),
    # options: known keys with valid values only
    case("options-unknown-key", {**VALID, "options": {"colour": "red"}}, "options.colour"),
    case("options-bad-providers", {**VALID, "options": {"providers": "live"}}, "options.providers"),
    case(
        "options-zero-timeout", {**VALID, "options": {"job_timeout_s": 0}}, "options.job_timeout_s"
    ),
    case("options-not-object", {**VALID, "options": "fast"}, "options"),
    case(
        "options-timeout-string",
        {**VALID, "options": {"job_timeout_s": "60"}},
        "options.job_timeout_s",
    ),
    case(
        "options-timeout-bool",
        {**VALID, "options": {"job_timeout_s": True}},
        "options.job_timeout_s",
    ),
    case(
        "options-timeout-over-setting",
        {**VALID, "options": {"job_timeout_s": 1801}},
        "options.job_timeout_s",
    ),
    case(
        "options-stage-timeout-over-setting",
        {**VALID, "options": {"stage_timeout_s": 901}},
        "options.stage_timeout_s",
    ),
    case(
        "options-model-number",
        {**VALID, "options": {"anthropic_model": 5}},
        "options.anthropic_model",
    ),
    # unknown top-level fields, including an attempt to pick the tenant
    case("unknown-field", {**VALID, "callback_url": "https://x.test"}, "callback_url"),
    case("unknown-field-tenant", {**VALID, "tenant": "someone-else"}, "tenant"),
    # the body itself
    case("body-array", [VALID], "body"),
    case("body-string", "Nimbus", "body"),
    case("json-truncated", b'{"product_name": "Nimbus"', None, status=400),
    case("json-single-quotes", b"{'product_name': 'Nimbus'}", None, status=400),
    case("json-not-utf8", b'{"product_name": "\xff\xfe"}', None, status=400),
    case("body-too-large", TOO_LARGE, None, status=413),
]


@pytest.mark.parametrize(("body", "status", "code", "field"), INVALID)
async def test_invalid_job_is_refused_and_nothing_is_written(
    asgi_client: httpx.AsyncClient,
    sessions: Any,
    redis: Redis,
    settings: Settings,
    api_key: str,
    body: Any,
    status: int,
    code: str,
    field: str | tuple[str, ...] | None,
) -> None:
    tenant = await tenant_of(sessions, api_key)
    before = await count_jobs(sessions, tenant)
    if body is TOO_LARGE:
        # Valid JSON that would be accepted but for its size: only the limit can refuse it.
        padding = settings.max_body_bytes - len(json.dumps({**VALID, "prompt": ""})) + 1
        content = json.dumps({**VALID, "prompt": " " * padding}).encode()
        assert len(content) == settings.max_body_bytes + 1
    else:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await asgi_client.post(
        "/v1/jobs", content=content, headers={**auth(api_key), "Content-Type": "application/json"}
    )
    error = assert_error(response, status, code)
    assert await count_jobs(sessions, tenant) == before
    assert await redis.zcard(settings.queue_name) == 0
    if field is not None:
        expected = (field,) if isinstance(field, str) else field
        assert set(expected) & set(named_fields(error)), error


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"product_name": "Nim\x00bus"}, id="NUL"),
        pytest.param({"product_name": "Nim\x07bus"}, id="BEL"),
        pytest.param({"product_name": "Nimbus", "cta_text": "Buy\x1b[2J now"}, id="cta-ESC"),
        pytest.param({"product_name": "Nimbus", "voice": "al\x08ice"}, id="voice-BS"),
        pytest.param({**VALID, "run_at": "2030-01-01T00:00:00Z", "delay_s": 5}, id="both-times"),
        pytest.param([VALID], id="array"),
        pytest.param("Nimbus", id="string"),
        pytest.param(42, id="number"),
        pytest.param(None, id="null"),
        pytest.param(b"", id="empty"),
    ],
)
async def test_body_level_errors_are_refused(
    asgi_client: httpx.AsyncClient, sessions: Any, api_key: str, body: Any
) -> None:
    """What the model-level checks refuse (whatever field their details name)."""
    tenant = await tenant_of(sessions, api_key)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await asgi_client.post("/v1/jobs", content=content, headers=auth(api_key))
    error = assert_error(response, 422, "validation_error")
    said = " ".join([error["message"], *(d["message"] for d in error["details"] or [])])
    if isinstance(body, dict):
        offending = {"cta_text", "voice", "run_at"} & set(body) or {"product_name"}
        assert any(name in said for name in offending), error
    else:
        assert "object" in said, error
    assert await count_jobs(sessions, tenant) == 0


async def test_trailing_whitespace_is_stripped_not_stored(
    asgi_client: httpx.AsyncClient, api_key: str
) -> None:
    job = await create(asgi_client, api_key, product_name="  Nimbus  ", cta_text=" Buy ")
    assert job["brief"]["product_name"] == "Nimbus" and job["brief"]["cta_text"] == "Buy"


@pytest.mark.parametrize(
    ("fields", "key", "value"),
    [
        pytest.param({"duration_s": 5}, "brief.duration_s", 5, id="duration_s-5"),
        pytest.param({"duration_s": 60}, "brief.duration_s", 60, id="duration_s-60"),
        pytest.param({"product_name": "n" * 200}, "brief.product_name", "n" * 200, id="name-200"),
        pytest.param({"cta_text": "c" * 80}, "brief.cta_text", "c" * 80, id="cta_text-80"),
        pytest.param({"prompt": "p" * 2000}, "brief.prompt", "p" * 2000, id="prompt-2000"),
        pytest.param({"voice": "alice"}, "brief.voice", "alice", id="voice"),
        pytest.param({"style": "cinematic"}, "brief.style", "cinematic", id="style"),
        pytest.param({"aspect_ratio": "1:1"}, "brief.aspect_ratio", "1:1", id="aspect_ratio"),
        pytest.param({"priority": "high"}, "priority", "high", id="priority"),
        pytest.param({"max_retries": 0}, "max_retries", 0, id="max_retries-0"),
        pytest.param({"max_retries": 3}, "max_retries", 3, id="max_retries-at-setting"),
        pytest.param({"delay_s": 3600}, "status", "scheduled", id="delay_s"),
        pytest.param({"run_at": SOON}, "run_at", SOON.replace("Z", "+00:00"), id="run_at"),
        pytest.param(
            {"webhook_url": "https://hooks.example.com/v"}, "status", "queued", id="webhook_url"
        ),
        pytest.param(
            {"options": {"providers": "offline", "job_timeout_s": 60}},
            "status",
            "queued",
            id="options",
        ),
        pytest.param({}, "brief.duration_s", 15, id="defaults"),
    ],
)
async def test_valid_edge_values_are_accepted(
    asgi_client: httpx.AsyncClient,
    sessions: Any,
    redis: Redis,
    settings: Settings,
    api_key: str,
    fields: dict[str, Any],
    key: str,
    value: Any,
) -> None:
    response = await submit(asgi_client, api_key, **fields)
    assert response.status_code == 202, response.text
    view = response.json()
    for part in key.split("."):
        view = view[part]
    assert view == value
    assert await count_jobs(sessions, await tenant_of(sessions, api_key)) == 1
    assert await redis.zcard(settings.queue_name) == 1  # enqueued once


async def test_defaults_are_applied(asgi_client: httpx.AsyncClient, api_key: str) -> None:
    job = await create(asgi_client, api_key)
    assert job["status"] == "queued" and job["priority"] == "normal" and job["attempts"] == 0
    assert job["brief"]["style"] == "minimal" and job["brief"]["aspect_ratio"] == "9:16"
    assert job["links"]["self"].endswith(f"/v1/jobs/{job['id']}")


async def test_deeply_nested_json_is_a_client_error(live_api: LiveApi, api_key: str) -> None:
    """Valid JSON too deep for the parser, well under the size limit: a 4xx, not a crash."""
    depth = 20_000
    content = b'{"product_name": "x", "prompt": ' + b"[" * depth + b"]" * depth + b"}"
    async with httpx.AsyncClient(base_url=live_api.url) as http:
        response = await http.post("/v1/jobs", content=content, headers=auth(api_key))
    assert response.status_code in (400, 413, 422), response.text
    assert_error(response, response.status_code)


# --- 2. Authentication ----------------------------------------------------------------------------

ROUTES = [
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{id}"),
    ("GET", "/v1/jobs/{id}/video"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
@pytest.mark.parametrize("credentials", ["none", "unknown-key", "revoked-key", "basic-scheme"])
async def test_every_route_needs_a_valid_key(
    asgi_client: httpx.AsyncClient,
    sessions: Any,
    api_key: str,
    method: str,
    path: str,
    credentials: str,
) -> None:
    job = await create(asgi_client, api_key)  # the key works, and the job exists
    tenant = await tenant_of(sessions, api_key)
    headers = {
        "none": {},
        "unknown-key": auth("vq_" + uuid.uuid4().hex),
        "revoked-key": auth(api_key),
        "basic-scheme": {"Authorization": f"Basic {api_key}"},
    }[credentials]
    if credentials == "revoked-key":
        async with sessions() as session:
            stmt = update(store.ApiKey).where(store.ApiKey.key_hash == hash_key(api_key))
            await session.execute(stmt.values(revoked_at=datetime.now(UTC)))
            await session.commit()
    response = await asgi_client.request(
        method, path.format(id=job["id"]), json=VALID if method == "POST" else None, headers=headers
    )
    assert_error(response, 401, "unauthorized")
    assert api_key not in response.text
    assert await count_jobs(sessions, tenant) == 1


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
async def test_two_authorization_headers_are_refused_even_if_one_is_valid(
    asgi_client: httpx.AsyncClient, api_key: str, method: str, path: str
) -> None:
    job = await create(asgi_client, api_key)
    for pair in ([api_key, "vq_" + uuid.uuid4().hex], ["vq_" + uuid.uuid4().hex, api_key]):
        headers = [("Authorization", f"Bearer {key}") for key in pair]
        response = await asgi_client.request(
            method, path.format(id=job["id"]), json=VALID if method == "POST" else None,
            headers=headers,
        )  # fmt: skip
        assert_error(response, 401, "unauthorized")


async def test_health_needs_no_key(asgi_client: httpx.AsyncClient) -> None:
    response = await asgi_client.get("/health")
    assert response.status_code == 200 and response.json()["status"] in ("healthy", "degraded")


async def close_code(url: str, headers: dict[str, str] | None = None) -> int:
    """Connect and return the code the server closes with (failing on any message)."""
    async with connect(url, additional_headers=headers or {}) as ws, asyncio.timeout(10):
        with pytest.raises(ConnectionClosed) as closed:
            message = await ws.recv()
            pytest.fail(f"the socket sent {message!r} instead of closing")
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


def ws_url(live_api: LiveApi, job_id: str, query: str = "") -> str:
    return live_api.url.replace("http", "ws", 1) + f"/v1/jobs/{job_id}/events{query}"


async def create_live(live_api: LiveApi, key: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=live_api.url) as http:
        return await create(http, key)


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        pytest.param(None, "", id="no-credentials"),
        pytest.param("unknown", "", id="unknown-key-header"),
        pytest.param(None, "?token=vq_unknown", id="unknown-key-token"),
        pytest.param("revoked", "", id="revoked-key"),
    ],
)
async def test_events_socket_closes_4401_without_a_valid_key(
    live_api: LiveApi, sessions: Any, api_key: str, headers: str | None, query: str
) -> None:
    job = await create_live(live_api, api_key)
    sent: dict[str, str] = {}
    if headers == "unknown":
        sent = auth("vq_" + uuid.uuid4().hex)
    elif headers == "revoked":
        sent = auth(api_key)
        async with sessions() as session:
            stmt = update(store.ApiKey).where(store.ApiKey.key_hash == hash_key(api_key))
            await session.execute(stmt.values(revoked_at=datetime.now(UTC)))
            await session.commit()
    assert await close_code(ws_url(live_api, job["id"], query), sent) == 4401


@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "not-a-uuid"], ids=["unknown", "not-uuid"])
async def test_events_socket_closes_4404_for_an_unknown_job(
    live_api: LiveApi, api_key: str, job_id: str
) -> None:
    assert await close_code(ws_url(live_api, job_id), auth(api_key)) == 4404


async def test_events_socket_accepts_the_key_as_token(live_api: LiveApi, api_key: str) -> None:
    job = await create_live(live_api, api_key)
    async with connect(ws_url(live_api, job["id"], f"?token={api_key}")) as ws:
        async with asyncio.timeout(10):
            first = json.loads(await ws.recv())
    assert first["type"] == "snapshot" and first["job_id"] == job["id"]
    assert first["status"] == "queued"


# --- 3. Tenancy -----------------------------------------------------------------------------------


async def test_another_tenants_job_is_not_found(
    asgi_client: httpx.AsyncClient, sessions: Any, api_key: str
) -> None:
    other = await new_key(sessions)
    job = await create(asgi_client, api_key)
    await set_status(sessions, job["id"], "succeeded", result={"duration_s": 5, "size_bytes": 1})
    # The owner sees it...
    assert (
        await asgi_client.get(f"/v1/jobs/{job['id']}", headers=auth(api_key))
    ).status_code == 200
    mine = await asgi_client.get("/v1/jobs", headers=auth(api_key))
    assert [j["id"] for j in mine.json()["data"]] == [job["id"]]
    # ...the other tenant cannot tell it exists.
    response = await asgi_client.get(f"/v1/jobs/{job['id']}", headers=auth(other))
    assert_error(response, 404, "not_found")
    response = await asgi_client.get(f"/v1/jobs/{job['id']}/video", headers=auth(other))
    assert_error(response, 404, "not_found")
    theirs = await asgi_client.get("/v1/jobs", headers=auth(other))
    assert theirs.status_code == 200 and theirs.json()["data"] == []
    for status in ("succeeded", "queued"):
        filtered = await asgi_client.get(f"/v1/jobs?status={status}", headers=auth(other))
        assert filtered.json()["data"] == []


async def test_events_socket_closes_4404_for_another_tenants_job(
    live_api: LiveApi, sessions: Any, api_key: str
) -> None:
    job = await create_live(live_api, api_key)
    other = await new_key(sessions)
    assert await close_code(ws_url(live_api, job["id"]), auth(other)) == 4404
    assert await close_code(ws_url(live_api, job["id"], f"?token={other}")) == 4404


# --- 4. Idempotency-Key ---------------------------------------------------------------------------


async def test_idempotency_key_returns_the_same_job(
    asgi_client: httpx.AsyncClient, sessions: Any, redis: Redis, settings: Settings, api_key: str
) -> None:
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    first = await submit(asgi_client, api_key, key)
    second = await submit(asgi_client, api_key, key)
    assert (first.status_code, second.status_code) == (202, 200)
    assert first.json()["id"] == second.json()["id"]
    assert await count_jobs(sessions, await tenant_of(sessions, api_key)) == 1
    assert await redis.zcard(settings.queue_name) == 1  # enqueued once
    # Without the header, the same body is a new job.
    third = await submit(asgi_client, api_key)
    assert third.status_code == 202 and third.json()["id"] != first.json()["id"]


async def test_idempotency_key_is_scoped_by_tenant(
    asgi_client: httpx.AsyncClient, sessions: Any, api_key: str
) -> None:
    other = await new_key(sessions)
    key = {"Idempotency-Key": "shared-key"}
    mine = await submit(asgi_client, api_key, key)
    theirs = await submit(asgi_client, other, key)
    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert mine.json()["id"] != theirs.json()["id"]
    for tenant_key in (api_key, other):
        assert await count_jobs(sessions, await tenant_of(sessions, tenant_key)) == 1


async def test_idempotency_key_sent_with_another_body_is_refused(
    asgi_client: httpx.AsyncClient, sessions: Any, api_key: str
) -> None:
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}", **auth(api_key)}
    body = {"product_name": "Kettle", "duration_s": 10}
    first = await asgi_client.post("/v1/jobs", json=body, headers=key)
    # The same request with its defaults spelled out is the same request.
    same = await asgi_client.post(
        "/v1/jobs", json={**body, "style": "minimal", "aspect_ratio": "9:16"}, headers=key
    )
    other = await asgi_client.post("/v1/jobs", json={**body, "duration_s": 20}, headers=key)
    assert (first.status_code, same.status_code) == (202, 200)
    assert same.json()["id"] == first.json()["id"]
    assert_error(other, 422, "idempotency_key_reused")
    assert await count_jobs(sessions, await tenant_of(sessions, api_key)) == 1


@pytest.mark.parametrize("value", ["", "k" * 201], ids=["empty", "201-chars"])
async def test_idempotency_key_length_is_checked(
    asgi_client: httpx.AsyncClient, sessions: Any, api_key: str, value: str
) -> None:
    response = await submit(asgi_client, api_key, {"Idempotency-Key": value})
    error = assert_error(response, 422, "validation_error")
    assert named_fields(error) == ["Idempotency-Key"]
    assert await count_jobs(sessions, await tenant_of(sessions, api_key)) == 0


# --- 5. Listing -----------------------------------------------------------------------------------


async def list_ids(client: httpx.AsyncClient, key: str, query: str = "") -> list[str]:
    response = await client.get(f"/v1/jobs{query}", headers=auth(key))
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["data"]]


async def test_list_is_newest_first(asgi_client: httpx.AsyncClient, api_key: str) -> None:
    created = [(await create(asgi_client, api_key, product_name=f"P{i}"))["id"] for i in range(4)]
    response = await asgi_client.get("/v1/jobs", headers=auth(api_key))
    body = response.json()
    assert [j["id"] for j in body["data"]] == created[::-1]
    assert body["next_cursor"] is None
    assert body["data"][0]["brief"]["product_name"] == "P3"


@pytest.mark.parametrize("limit", ["0", "101", "x", "-1", "2.5", ""])
async def test_list_limit_bounds(asgi_client: httpx.AsyncClient, api_key: str, limit: str) -> None:
    response = await asgi_client.get(f"/v1/jobs?limit={limit}", headers=auth(api_key))
    assert named_fields(assert_error(response, 422, "validation_error")) == ["limit"]


@pytest.mark.parametrize("limit", [1, 100])
async def test_list_limit_edges_are_accepted(
    asgi_client: httpx.AsyncClient, api_key: str, limit: int
) -> None:
    for _ in range(2):
        await create(asgi_client, api_key)
    response = await asgi_client.get(f"/v1/jobs?limit={limit}", headers=auth(api_key))
    assert response.status_code == 200
    assert len(response.json()["data"]) == min(limit, 2)
    assert (response.json()["next_cursor"] is not None) == (limit == 1)


async def test_list_filters_by_status(
    asgi_client: httpx.AsyncClient, sessions: Any, api_key: str
) -> None:
    ids = [(await create(asgi_client, api_key))["id"] for _ in range(3)]
    async with sessions() as session:
        assert await jobs.transition(session, uuid.UUID(ids[1]), "cancelled") is not None
    assert await list_ids(asgi_client, api_key, "?status=cancelled") == [ids[1]]
    assert await list_ids(asgi_client, api_key, "?status=queued") == [ids[2], ids[0]]
    assert await list_ids(asgi_client, api_key, "?status=succeeded") == []


@pytest.mark.parametrize("status", ["done", "QUEUED", ""])
async def test_list_refuses_an_unknown_status(
    asgi_client: httpx.AsyncClient, api_key: str, status: str
) -> None:
    response = await asgi_client.get(f"/v1/jobs?status={status}", headers=auth(api_key))
    assert named_fields(assert_error(response, 422, "validation_error")) == ["status"]


@pytest.mark.parametrize("same_instant", [False, True], ids=["distinct-times", "same-created_at"])
async def test_cursor_walks_every_job_exactly_once(
    asgi_client: httpx.AsyncClient, sessions: Any, api_key: str, same_instant: bool
) -> None:
    ids = [(await create(asgi_client, api_key))["id"] for _ in range(7)]
    if same_instant:  # ties on created_at must be broken by id, across page boundaries too
        async with sessions() as session:
            stmt = update(store.Job).where(store.Job.id.in_([uuid.UUID(i) for i in ids]))
            await session.execute(stmt.values(created_at=datetime(2030, 1, 1, tzinfo=UTC)))
            await session.commit()
    everything = await list_ids(asgi_client, api_key, "?limit=100")
    assert sorted(everything) == sorted(ids)
    if not same_instant:
        assert everything == ids[::-1]
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        response = await asgi_client.get(f"/v1/jobs{query}", headers=auth(api_key))
        assert response.status_code == 200, response.text
        pages.append([job["id"] for job in response.json()["data"]])
        cursor = response.json()["next_cursor"]
        if cursor is None:
            break
        assert len(pages) < 5, "the cursor does not advance"
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [job_id for page in pages for job_id in page] == everything


def b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("garbage!", id="not-base64"),
        pytest.param("x", id="one-char"),
        pytest.param(b64("yesterday|" + str(uuid.uuid4())), id="bad-date"),
        pytest.param(b64("2030-01-01T00:00:00+00:00|not-a-uuid"), id="bad-id"),
        pytest.param(b64("2030-01-01T00:00:00+00:00"), id="no-id"),
        pytest.param(base64.urlsafe_b64encode(b"\xff\xfe|\x80").decode(), id="not-utf8"),
        # Well formed, but values PostgreSQL cannot compare or store: refused at the edge.
        pytest.param(b64(f"2030-01-01T00:00:00|{uuid.uuid4()}"), id="no-timezone"),
        pytest.param(b64(f"0001-01-01T00:00:00-23:59|{uuid.uuid4()}"), id="before-year-1-utc"),
        pytest.param(b64(f"9999-12-31T23:59:59-23:59|{uuid.uuid4()}"), id="after-year-9999-utc"),
        pytest.param(b64(f"0001-01-01T00:00:00+00:00|{uuid.uuid4()}"), id="year-1"),
        pytest.param(b64(f"2030-01-01T00:00:00+00:00|{uuid.uuid4()}|extra"), id="extra-part"),
        pytest.param(b64("2030-01-01T00:00:00+00:00|" + str(uuid.uuid4()) * 10), id="long"),
        pytest.param("A" * 5000, id="huge"),
    ],
)
async def test_list_refuses_a_bad_cursor(
    asgi_client: httpx.AsyncClient, api_key: str, cursor: str
) -> None:
    await create(asgi_client, api_key)
    response = await asgi_client.get("/v1/jobs", params={"cursor": cursor}, headers=auth(api_key))
    assert named_fields(assert_error(response, 422, "validation_error")) == ["cursor"]


# --- 6. One job and its video ---------------------------------------------------------------------


@pytest.mark.parametrize("job_id", ["not-a-uuid", "1", str(uuid.uuid4())])
async def test_unknown_job_is_404(
    asgi_client: httpx.AsyncClient, api_key: str, job_id: str
) -> None:
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/video"):
        assert_error(await asgi_client.get(path, headers=auth(api_key)), 404, "not_found")


async def test_get_job_shows_the_documented_fields(
    asgi_client: httpx.AsyncClient, api_key: str
) -> None:
    job = await create(asgi_client, api_key, priority="low")
    response = await asgi_client.get(f"/v1/jobs/{job['id']}", headers=auth(api_key))
    view = response.json()
    documented = {"id", "status", "stage", "progress", "priority", "attempts", "created_at"}
    documented |= {"started_at", "finished_at", "worker_id", "error", "result", "links"}
    assert documented <= set(view)
    assert (view["id"], view["status"], view["priority"]) == (job["id"], "queued", "low")
    assert view["progress"] == 0 and view["result"] is None


@pytest.mark.parametrize("status", ["queued", "scheduled", "running", "failed", "cancelled"])
async def test_video_of_an_unfinished_job_is_409(
    asgi_client: httpx.AsyncClient, sessions: Any, api_key: str, status: str
) -> None:
    job = await create(asgi_client, api_key)
    await set_status(sessions, job["id"], status)
    response = await asgi_client.get(f"/v1/jobs/{job['id']}/video", headers=auth(api_key))
    assert status in assert_error(response, 409, "conflict")["message"]


def store_video(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(data)


async def test_video_of_a_succeeded_job_is_served_with_ranges(
    asgi_client: httpx.AsyncClient, sessions: Any, settings: Settings, api_key: str
) -> None:
    job = await create(asgi_client, api_key)
    await set_status(sessions, job["id"], "succeeded", result={"duration_s": 5, "size_bytes": 10})
    path = f"/v1/jobs/{job['id']}/video"
    # Succeeded, but the file is gone: 404, not a crash.
    assert_error(await asgi_client.get(path, headers=auth(api_key)), 404, "not_found")
    store_video(settings.artifacts / job["id"] / "video.mp4", b"0123456789")
    whole = await asgi_client.get(path, headers=auth(api_key))
    assert whole.status_code == 200 and whole.content == b"0123456789"
    assert whole.headers["content-type"] == "video/mp4"
    part = await asgi_client.get(path, headers={**auth(api_key), "Range": "bytes=2-5"})
    assert part.status_code == 206 and part.content == b"2345"
    assert part.headers["content-range"] == "bytes 2-5/10"
    # Refusals carry the shared error shape, as every error does (was text/plain).
    beyond = await asgi_client.get(path, headers={**auth(api_key), "Range": "bytes=50-"})
    assert_error(beyond, 416, "range_not_satisfiable")
    assert beyond.headers["content-range"] == "bytes */10"
    # Forms this server does not serve (several ranges, other units, nonsense) get the whole
    # video, as RFC 9110 allows: never a text/plain 400.
    for ignored in ("bytes=0-1,4-5", "items=0-1", "bytes=abc", "bytes=5-2"):
        answer = await asgi_client.get(path, headers={**auth(api_key), "Range": ignored})
        if answer.status_code == 416:
            assert_error(answer, 416, "range_not_satisfiable")
        else:
            assert answer.status_code == 200 and answer.content == b"0123456789", ignored


# --- 7. Health ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def a_worker_seen(redis: Redis, ahead_s: float = 0.0) -> AsyncIterator[None]:
    """A worker in the registry, its heartbeat ``ahead_s`` from now, for the block only."""
    worker = f"test-worker-{uuid.uuid4().hex}"
    await redis.zadd(keys.WORKERS, {worker: time.time() + ahead_s})
    try:
        yield
    finally:
        await redis.zrem(keys.WORKERS, worker)


async def test_health_reports_stores_queue_and_workers(
    asgi_client: httpx.AsyncClient, redis: Redis, api_key: str
) -> None:
    before = (await asgi_client.get("/health")).json()
    assert set(before) == {"status", "redis", "database", "queue_length", "workers"}
    # Degraded while no worker has heartbeated lately: jobs are taken, but none would run.
    assert before["status"] == ("healthy" if before["workers"] else "degraded")
    assert before["redis"] is True and before["database"] is True
    assert type(before["queue_length"]) is int and type(before["workers"]) is int
    assert before["queue_length"] == 0  # this test's own queue

    await create(asgi_client, api_key)
    async with a_worker_seen(redis):
        response = await asgi_client.get("/health")
    after = response.json()
    assert response.status_code == 200
    assert after["queue_length"] == 1
    assert after["workers"] == before["workers"] + 1
    assert after["status"] == "healthy"


async def test_health_is_degraded_while_no_worker_is_seen(settings: Settings, redis: Redis) -> None:
    # Jobs would be taken and none run: still 200 (the record is safe), but not healthy.
    # A staleness window of a microsecond: no worker of another test counts here.
    async with app_client(settings.model_copy(update={"worker_stale_s": 1e-6})) as http:
        alone = await http.get("/health")
        async with a_worker_seen(redis, ahead_s=60):
            seen = await http.get("/health")
    assert alone.status_code == 200, alone.text
    assert alone.json()["status"] == "degraded" and alone.json()["workers"] == 0
    assert alone.json()["redis"] is True and alone.json()["database"] is True
    assert seen.json()["status"] == "healthy" and seen.json()["workers"] == 1


# --- 8. Unmigrated database -----------------------------------------------------------------------


async def test_api_refuses_to_start_on_an_unmigrated_database(settings: Settings) -> None:
    assert settings.database_url
    server_url = make_url(store.async_url(settings.database_url))
    name = f"videoq_empty_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        empty = server_url.set(database=name).render_as_string(hide_password=False)
        app = create_app(settings.model_copy(update={"database_url": empty}))
        with pytest.raises(NotMigrated) as refused:
            async with app.router.lifespan_context(app):
                pytest.fail("the API started on an unmigrated database")
        assert "run `videoq migrate`" in str(refused.value)
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()
