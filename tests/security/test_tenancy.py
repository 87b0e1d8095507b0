"""Tenancy on every route and WebSocket: the tables below classify each one, a test fails when
the app has a route they do not list (a new route must be audited here), and each class is
checked: no key is a 401, another tenant's job a 404 (never a 403), worker management needs
an admin key, and a tenant's event stream carries nothing of another tenant's."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, update
from starlette.routing import Route, WebSocketRoute
from websockets.asyncio.client import connect

from tests.conftest import LiveApi, new_key, set_status
from tests.security.conftest import auth
from tests.test_api import assert_error, close_code, create_live, ws_url
from videoq import store
from videoq.api import create_app
from videoq.broker import events
from videoq.settings import Settings
from videoq.store.apikeys import hash_key
from videoq.types import Scene, Script, make_event

#: Every HTTP route: who may call it.
HTTP = {
    ("GET", "/health"): "public",
    ("GET", "/openapi.json"): "public",
    ("POST", "/v1/jobs"): "tenant",
    ("GET", "/v1/jobs"): "tenant",
    ("GET", "/v1/jobs/{job_id}"): "job",
    ("GET", "/v1/jobs/{job_id}/video"): "job",
    ("GET", "/v1/jobs/{job_id}/captions"): "job",
    ("POST", "/v1/jobs/{job_id}/cancel"): "job",
    ("POST", "/v1/jobs/{job_id}/retry"): "job",
    ("GET", "/v1/jobs/{job_id}/scenes"): "job",
    ("GET", "/v1/jobs/{job_id}/scenes/{index}/thumbnail"): "job",
    ("POST", "/v1/jobs/{job_id}/scenes/{index}/rerender"): "job",
    ("GET", "/v1/jobs/{job_id}/poster"): "job",
    ("GET", "/v1/workers"): "admin",
    ("POST", "/v1/workers/clear-stale"): "admin",
    ("GET", "/v1/queue/stats"): "admin",
    # A tenant's own share, or any tenant's for admins: tests/test_fairness.py
    ("GET", "/v1/tenants/{tenant}"): "own",
    ("PUT", "/v1/tenants/{tenant}"): "own",
    ("POST", "/v1/estimates"): "tenant",
    ("GET", "/v1/usage"): "own",  # ?tenant= another's for admins: tests/test_spend.py
    # A user id names the caller's own end user: tests/test_feed.py
    ("POST", "/v1/interactions"): "tenant",
    ("GET", "/v1/users/{user_id}/feed"): "tenant",
    ("GET", "/v1/users/{user_id}/preferences"): "tenant",
    # Keys: admins only (a tenant key's 403 and the bodies: tests/test_keys_api.py).
    ("GET", "/v1/keys"): "admin",
    ("POST", "/v1/keys"): "keys",
    ("DELETE", "/v1/keys/{key_id}"): "keys",
    # A schedule is its tenant's: another tenant's is a 404 (tests/test_schedules.py).
    ("POST", "/v1/schedules"): "tenant",
    ("GET", "/v1/schedules"): "tenant",
    ("GET", "/v1/schedules/{schedule_id}"): "tenant",
    ("DELETE", "/v1/schedules/{schedule_id}"): "tenant",
    ("GET", "/metrics"): "admin",
    # The console: a page and files with no data (its script signs in and reads the routes
    # above), and its sign-in, whose cookie is the key's own principal and whose changes are
    # CSRF-checked: tests/test_console_auth.py
    ("GET", "/dashboard"): "public",
    ("GET", "/static/{name}"): "public",
    ("GET", "/v1/schemas/events.json"): "public",
    ("POST", "/v1/session"): "session",
    ("GET", "/v1/session"): "session",
    ("DELETE", "/v1/session"): "session",
    ("GET", "/v1/webhooks/secret"): "tenant",
    ("POST", "/v1/webhooks/github"): "signed",  # HMAC of the body: tests/security/test_inputs.py
    ("POST", "/v1/webhooks/replicate"): "signed",
}
#: Every WebSocket: ``job`` sockets are scoped to one job, ``tenant`` ones to the caller.
SOCKETS = {"/v1/jobs/{job_id}/events": "job", "/v1/events": "tenant"}

KEYED = [
    (m, p) for (m, p), kind in HTTP.items() if kind in ("tenant", "job", "admin", "own", "keys")
]
JOB_ROUTES = [(m, p) for (m, p), kind in HTTP.items() if kind == "job"]
ADMIN_ROUTES = [(m, p) for (m, p), kind in HTTP.items() if kind == "admin"]


def ids(routes: list[tuple[str, str]]) -> list[str]:
    return [f"{m} {p}" for m, p in routes]


def test_every_route_of_the_app_is_classified(settings: Settings) -> None:
    found_http: set[tuple[str, str]] = set()
    found_ws: set[str] = set()
    for route in create_app(settings).routes:
        if isinstance(route, WebSocketRoute):
            found_ws.add(route.path)
        elif isinstance(route, Route):
            found_http |= {(m, route.path) for m in route.methods or () if m != "HEAD"}
    assert found_http - set(HTTP) == set(), "new HTTP routes: classify and test them here"
    assert found_ws - set(SOCKETS) == set(), "new WebSockets: classify and test them here"
    assert set(HTTP) - found_http == set() and set(SOCKETS) - found_ws == set()


async def revoked(sessions: Any) -> str:
    key = await new_key(sessions)
    async with sessions() as session:
        stmt = update(store.ApiKey).where(store.ApiKey.key_hash == hash_key(key))
        await session.execute(stmt.values(revoked_at=func.now()))
        await session.commit()
    return key


@pytest.mark.parametrize(("method", "path"), KEYED, ids=ids(KEYED))
async def test_every_keyed_route_refuses_missing_unknown_and_revoked_keys(
    asgi_client: httpx.AsyncClient, sessions: Any, method: str, path: str
) -> None:
    owner = await new_key(sessions, admin=True)
    job = (
        await asgi_client.post("/v1/jobs", json={"product_name": "K"}, headers=auth(owner))
    ).json()
    url = path.format(
        job_id=job["id"], tenant="someone", user_id="someone", key_id=uuid.uuid4(),
        schedule_id=uuid.uuid4(), index=0,
    )  # fmt: skip
    for headers in ({}, auth("vq_" + uuid.uuid4().hex), auth(await revoked(sessions))):
        response = await asgi_client.request(
            method, url, json={"product_name": "K"} if method == "POST" else None, headers=headers
        )
        assert_error(response, 401, "unauthorized")


async def a_job_ready_for(
    client: httpx.AsyncClient, sessions: Any, settings: Settings, key: str, path: str
) -> dict[str, Any]:
    """A job of ``key``'s tenant in the state where ``path`` succeeds for its owner."""
    job: dict[str, Any] = (
        await client.post("/v1/jobs", json={"product_name": "K"}, headers=auth(key))
    ).json()
    if path.endswith("/video"):
        await set_status(
            sessions, job["id"], "succeeded", result={"duration_s": 1, "size_bytes": 3}
        )
        video = settings.artifacts / job["id"] / "video.mp4"
        video.parent.mkdir(parents=True)
        video.write_bytes(b"mp4")
    elif path.endswith("/captions"):
        await set_status(
            sessions, job["id"], "succeeded", result={"duration_s": 1, "captions": True}
        )
        vtt = settings.artifacts / job["id"] / "captions.vtt"
        vtt.parent.mkdir(parents=True)
        vtt.write_text("WEBVTT\n")
    elif path.endswith("/retry"):
        await set_status(sessions, job["id"], "failed")
    elif path.endswith(("/thumbnail", "/poster")):
        image = (
            settings.artifacts
            / job["id"]
            / ("thumbs/scene_00.jpg" if path.endswith("/thumbnail") else "poster.jpg")
        )
        image.parent.mkdir(parents=True)
        image.write_bytes(b"jpeg")
    elif path.endswith("/rerender"):
        await set_status(sessions, job["id"], "succeeded", result={"duration_s": 1})
        script = Script("K", [Scene("Meet K.", "K on a table", 5.0)])
        checkpoint = store.StageCheckpoint(
            job_id=uuid.UUID(job["id"]), stage="script_gen", attempt=1, output=script.to_dict()
        )
        async with sessions() as session:
            session.add(checkpoint)
            await session.commit()
    return job


async def snapshot(sessions: Any, job_id: str) -> tuple[Any, ...]:
    async with sessions() as session:
        row = await session.get(store.Job, uuid.UUID(job_id), populate_existing=True)
        assert row is not None
        return (row.tenant, row.status, row.updated_at, row.attempts, row.finished_at)


@pytest.mark.parametrize(("method", "path"), JOB_ROUTES, ids=ids(JOB_ROUTES))
@pytest.mark.parametrize("intruder", ["tenant-key", "admin-key"])
async def test_another_tenants_job_is_404_on_every_job_route(
    asgi_client: httpx.AsyncClient,
    sessions: Any,
    settings: Settings,
    method: str,
    path: str,
    intruder: str,
) -> None:
    owner = await new_key(sessions)
    other = await new_key(sessions, admin=intruder == "admin-key")  # admin is not "all tenants"
    job = await a_job_ready_for(asgi_client, sessions, settings, owner, path)
    url = path.format(job_id=job["id"], index=0)
    # A dry run: the owner's succeeds, and changes nothing either.
    body = {"prompt": "K on a beach", "dry_run": True} if path.endswith("/rerender") else None
    before = await snapshot(sessions, job["id"])
    response = await asgi_client.request(method, url, headers=auth(other), json=body)
    error = assert_error(response, 404, "not_found")
    assert "another tenant" not in error["message"]
    assert await snapshot(sessions, job["id"]) == before
    # The owner, with the same request, succeeds: the 404 was about the tenant alone.
    mine = await asgi_client.request(method, url, headers=auth(owner), json=body)
    assert mine.status_code in (200, 202), mine.text


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES, ids=ids(ADMIN_ROUTES))
async def test_worker_management_needs_an_admin_key(
    asgi_client: httpx.AsyncClient, sessions: Any, method: str, path: str
) -> None:
    response = await asgi_client.request(method, path, headers=auth(await new_key(sessions)))
    assert_error(response, 403, "forbidden")
    admin = await asgi_client.request(
        method, path, headers=auth(await new_key(sessions, admin=True))
    )
    assert admin.status_code == 200, admin.text


async def test_tenant_routes_see_and_write_only_the_callers_tenant(
    asgi_client: httpx.AsyncClient, sessions: Any
) -> None:
    mine, theirs = await new_key(sessions), await new_key(sessions)
    created = await asgi_client.post("/v1/jobs", json={"product_name": "A"}, headers=auth(mine))
    assert created.status_code == 202
    for query in ("", "?status=queued", "?limit=100"):
        listed = await asgi_client.get(f"/v1/jobs{query}", headers=auth(theirs))
        assert listed.status_code == 200 and listed.json()["data"] == []
    listed = await asgi_client.get("/v1/jobs", headers=auth(mine))
    assert [j["id"] for j in listed.json()["data"]] == [created.json()["id"]]
    # A cursor minted for one tenant walks only the caller's own jobs.
    for _ in range(2):
        await asgi_client.post("/v1/jobs", json={"product_name": "A"}, headers=auth(mine))
    cursor = (await asgi_client.get("/v1/jobs?limit=1", headers=auth(mine))).json()["next_cursor"]
    stolen = await asgi_client.get("/v1/jobs", params={"cursor": cursor}, headers=auth(theirs))
    assert stolen.status_code == 200 and stolen.json()["data"] == []
    # Each tenant has its own webhook secret.
    secrets = [
        (await asgi_client.get("/v1/webhooks/secret", headers=auth(k))).json()["secret"]
        for k in (mine, theirs, mine)
    ]
    assert secrets[0] == secrets[2] != secrets[1] and secrets[0].startswith("whsec_")


@pytest.mark.parametrize("path", list(SOCKETS))
async def test_every_socket_closes_4401_without_a_valid_key(
    live_api: LiveApi, sessions: Any, path: str
) -> None:
    owner = await new_key(sessions)
    job = await create_live(live_api, owner)
    url = live_api.url.replace("http", "ws", 1) + path.format(job_id=job["id"])
    assert await close_code(url) == 4401
    assert await close_code(url + f"?token={await revoked(sessions)}") == 4401


async def test_a_job_socket_of_another_tenant_closes_4404(live_api: LiveApi, sessions: Any) -> None:
    job = await create_live(live_api, await new_key(sessions))
    for intruder in (await new_key(sessions), await new_key(sessions, admin=True)):
        assert await close_code(ws_url(live_api, job["id"]), auth(intruder)) == 4404


async def test_the_tenant_socket_carries_no_event_of_another_tenant(
    live_api: LiveApi, sessions: Any, redis: Any
) -> None:
    """Events of tenant A are published first, then a marker of tenant B, on one Redis
    connection: B's socket must see its marker without anything of A's before it."""
    key_a, key_b = await new_key(sessions), await new_key(sessions)
    job_a, job_b = await create_live(live_api, key_a), await create_live(live_api, key_b)
    tenants = {}
    async with sessions() as session:
        for job in (job_a, job_b):
            row = await session.get(store.Job, uuid.UUID(job["id"]))
            assert row is not None
            tenants[job["id"]] = row.tenant
    base = live_api.url.replace("http", "ws", 1) + "/v1/events"

    async def publish(job_id: str, message: str) -> None:
        event = make_event(job_id, "log", status="queued", stage=None, progress=0.0,
                                  message=message)  # fmt: skip
        await events.publish(redis, tenants[job_id], event)

    async with (
        connect(base, additional_headers=auth(key_a)) as socket_a,
        connect(base, additional_headers=auth(key_b)) as socket_b,
        asyncio.timeout(20),
    ):
        # Until both sockets are subscribed, publish probes; then the real sequence.
        seen_b: list[dict[str, Any]] = []
        seen_a: list[dict[str, Any]] = []
        while True:
            await publish(job_a["id"], "probe-a")
            await publish(job_b["id"], "probe-b")
            try:
                async with asyncio.timeout(0.5):
                    seen_b.append(json.loads(await socket_b.recv()))
                    seen_a.append(json.loads(await socket_a.recv()))
                break
            except TimeoutError:
                continue
        await publish(job_a["id"], "secret of A")
        await publish(job_b["id"], "marker of B")
        while not seen_b or seen_b[-1].get("message") != "marker of B":
            seen_b.append(json.loads(await socket_b.recv()))
        while not seen_a or seen_a[-1].get("message") != "secret of A":
            seen_a.append(json.loads(await socket_a.recv()))
    assert {e["job_id"] for e in seen_b} == {job_b["id"]}
    assert {e["job_id"] for e in seen_a} == {job_a["id"]}
