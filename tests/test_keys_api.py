"""API keys over HTTP (``/v1/keys``): admin keys only, the new key shown once and never listed,
revocation at once on every API process, expiry, and no way to revoke the last admin key."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import LiveApi, app_client, auth, new_key
from tests.test_api import assert_error, named_fields
from videoq import store
from videoq.client import AuthenticationError, Client, ConflictError, PermissionDenied
from videoq.settings import Settings


@pytest.fixture
async def fresh_settings(settings: Settings) -> AsyncIterator[Settings]:
    """Settings on a database of their own, migrated, with no key in it: the admin keys a
    test makes are the only ones."""
    assert settings.database_url
    server_url = make_url(store.async_url(settings.database_url))
    name = f"videoq_keys_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = server_url.set(database=name).render_as_string(hide_password=False)
        await asyncio.to_thread(store.migrate, url)
        yield settings.model_copy(update={"database_url": url})
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def test_only_admin_keys_manage_keys(asgi_client: httpx.AsyncClient, sessions: Any) -> None:
    tenant, named = await new_key(sessions), f"t-{uuid.uuid4().hex[:8]}"
    requests = [("POST", "/v1/keys", {"tenant": named}), ("GET", "/v1/keys", None),
                ("DELETE", f"/v1/keys/{uuid.uuid4()}", None)]  # fmt: skip
    for method, path, body in requests:
        for headers, status in (({}, 401), (auth("vq_" + "x" * 40), 401), (auth(tenant), 403)):
            response = await asgi_client.request(method, path, json=body, headers=headers)
            assert_error(response, status)
    # The refused create made no key.
    async with sessions() as session:
        assert await store.apikeys.list_keys(session, named) == []


async def test_a_key_is_shown_once_listed_by_prefix_and_works(
    asgi_client: httpx.AsyncClient, sessions: Any
) -> None:
    admin = await new_key(sessions, admin=True)
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    created = await asgi_client.post(
        "/v1/keys", json={"tenant": tenant, "name": "ci deploys"}, headers=auth(admin)
    )
    assert created.status_code == 201, created.text
    view = created.json()
    key = view["key"]
    assert key.startswith("vq_") and view["prefix"] == key[:10]
    assert view["scope"] == "tenant" and view["tenant"] == tenant and view["name"] == "ci deploys"
    assert view["expires_at"] is None and view["revoked_at"] is None
    assert view["last_used_at"] is None
    assert created.headers["location"].endswith(f"/v1/keys/{view['id']}")
    assert created.headers["cache-control"] == "no-store"
    # The key acts for its tenant, and only as a tenant key.
    job = await asgi_client.post("/v1/jobs", json={"product_name": "K"}, headers=auth(key))
    assert job.status_code == 202
    assert_error(await asgi_client.get("/v1/keys", headers=auth(key)), 403, "forbidden")
    # Listed by prefix: neither the key nor its hash, anywhere in the answer.
    listed = await asgi_client.get("/v1/keys", params={"tenant": tenant}, headers=auth(admin))
    assert listed.status_code == 200
    assert key not in listed.text and store.apikeys.hash_key(key) not in listed.text
    (row,) = listed.json()["data"]
    assert "key" not in row and row["id"] == view["id"] and row["prefix"] == key[:10]
    assert row["last_used_at"] is not None  # used above
    # Every tenant's keys for an admin, newest first.
    everyone = (await asgi_client.get("/v1/keys", headers=auth(admin))).json()["data"]
    ids = [k["id"] for k in everyone]
    assert view["id"] in ids and len(ids) > 1
    stamps = [k["created_at"] for k in everyone]
    assert stamps == sorted(stamps, reverse=True)


async def test_an_admin_scoped_key_manages_keys(
    asgi_client: httpx.AsyncClient, sessions: Any
) -> None:
    admin = await new_key(sessions, admin=True)
    created = await asgi_client.post(
        "/v1/keys", json={"tenant": "ops", "scope": "admin"}, headers=auth(admin)
    )
    assert created.status_code == 201 and created.json()["scope"] == "admin"
    listed = await asgi_client.get("/v1/keys", headers=auth(created.json()["key"]))
    assert listed.status_code == 200


async def test_a_revoked_key_is_refused_at_once_by_every_api_process(
    settings: Settings, sessions: Any
) -> None:
    admin = await new_key(sessions, admin=True)
    async with app_client(settings) as one, app_client(settings) as other:
        created = (await one.post("/v1/keys", json={"tenant": "r"}, headers=auth(admin))).json()
        key = created["key"]
        for api in (one, other):  # both have seen it work
            assert (await api.get("/v1/jobs", headers=auth(key))).status_code == 200
        revoked = await one.delete(f"/v1/keys/{created['id']}", headers=auth(admin))
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["revoked_at"] is not None and "key" not in revoked.json()
        for api in (one, other):
            assert_error(await api.get("/v1/jobs", headers=auth(key)), 401, "unauthorized")
        # Again: 409. Listed only when asked for.
        again = await other.delete(f"/v1/keys/{created['id']}", headers=auth(admin))
        assert_error(again, 409, "conflict")
        active = (await one.get("/v1/keys?tenant=r", headers=auth(admin))).json()["data"]
        assert created["id"] not in [k["id"] for k in active]
        every = await one.get("/v1/keys?tenant=r&include_revoked=true", headers=auth(admin))
        assert created["id"] in [k["id"] for k in every.json()["data"]]


async def test_revoking_by_prefix_and_what_does_not_exist(
    asgi_client: httpx.AsyncClient, sessions: Any
) -> None:
    admin = await new_key(sessions, admin=True)
    key = await new_key(sessions)
    revoked = await asgi_client.delete(f"/v1/keys/{key[:10]}", headers=auth(admin))
    assert revoked.status_code == 200 and revoked.json()["prefix"] == key[:10]
    assert_error(await asgi_client.get("/v1/jobs", headers=auth(key)), 401)
    for ref in (str(uuid.uuid4()), "vq_nothing", "nope", "%00", "x" * 300):
        response = await asgi_client.delete(f"/v1/keys/{ref}", headers=auth(admin))
        assert_error(response, 404, "not_found")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "tenant"),
        ({"tenant": ""}, "tenant"),
        ({"tenant": "x" * 101}, "tenant"),
        ({"tenant": "a\nb"}, "tenant"),
        ({"tenant": 7}, "tenant"),
        ({"tenant": "a", "scope": "root"}, "scope"),
        ({"tenant": "a", "name": ""}, "name"),
        ({"tenant": "a", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"tenant": "a", "expires_at": "tomorrow"}, "expires_at"),
        ({"tenant": "a", "expires_at": 1893456000}, "expires_at"),
        ({"tenant": "a", "admin": True}, "admin"),
    ],
)
async def test_a_bad_create_names_its_field(
    asgi_client: httpx.AsyncClient, sessions: Any, body: dict[str, Any], field: str
) -> None:
    admin = await new_key(sessions, admin=True)
    response = await asgi_client.post("/v1/keys", json=body, headers=auth(admin))
    assert named_fields(assert_error(response, 422, "validation_error")) == [field]


async def test_a_key_stops_working_when_it_expires(
    asgi_client: httpx.AsyncClient, sessions: Any
) -> None:
    admin = await new_key(sessions, admin=True)
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    created = await asgi_client.post(
        "/v1/keys", json={"tenant": "e", "expires_at": soon}, headers=auth(admin)
    )
    assert created.status_code == 201
    view = created.json()
    assert datetime.fromisoformat(view["expires_at"]) == datetime.fromisoformat(soon)
    assert (await asgi_client.get("/v1/jobs", headers=auth(view["key"]))).status_code == 200
    async with sessions() as session:  # an hour later
        past = datetime.now(UTC) - timedelta(seconds=1)
        stmt = update(store.ApiKey).where(store.ApiKey.id == uuid.UUID(view["id"]))
        await session.execute(stmt.values(expires_at=past))
        await session.commit()
    error = assert_error(await asgi_client.get("/v1/jobs", headers=auth(view["key"])), 401)
    assert "expired" in error["message"]


async def test_the_last_working_admin_key_cannot_be_revoked(fresh_settings: Settings) -> None:
    engine = store.create_engine(fresh_settings.database_url or "")
    sessions = store.sessionmaker(engine)
    try:
        first = await new_key(sessions, "ops", admin=True)
        async with app_client(fresh_settings) as api:
            second = (
                await api.post(
                    "/v1/keys", json={"tenant": "ops", "scope": "admin"}, headers=auth(first)
                )
            ).json()
            # An admin key that expired does not count as a way back in.
            expired = await new_key(sessions, "ops", admin=True)
            async with sessions() as session:
                stmt = update(store.ApiKey).where(
                    store.ApiKey.key_hash == store.apikeys.hash_key(expired)
                )
                await session.execute(stmt.values(expires_at=datetime.now(UTC)))
                await session.commit()
            revoked = await api.delete(f"/v1/keys/{first[:10]}", headers=auth(second["key"]))
            assert revoked.status_code == 200, revoked.text
            # The caller's own key is now the last one: refused, and it still works.
            last = await api.delete(f"/v1/keys/{second['id']}", headers=auth(second["key"]))
            error = assert_error(last, 409, "conflict")
            assert "last working admin key" in error["message"]
            assert (await api.get("/v1/keys", headers=auth(second["key"]))).status_code == 200
    finally:
        await engine.dispose()


async def test_two_admins_revoking_the_last_two_admin_keys_at_once_leave_one(
    fresh_settings: Settings,
) -> None:
    engine = store.create_engine(fresh_settings.database_url or "")
    sessions = store.sessionmaker(engine)
    try:
        keys = [await new_key(sessions, "ops", admin=True) for _ in range(2)]
        async with app_client(fresh_settings) as one, app_client(fresh_settings) as other:
            answers = await asyncio.gather(
                one.delete(f"/v1/keys/{keys[0][:10]}", headers=auth(keys[1])),
                other.delete(f"/v1/keys/{keys[1][:10]}", headers=auth(keys[0])),
            )
            assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
        async with sessions() as session:
            working = await store.apikeys.list_keys(session, "ops", revoked=False)
        assert len(working) == 1
    finally:
        await engine.dispose()


async def test_the_sdk_creates_lists_and_revokes_keys(live_api: LiveApi, sessions: Any) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    async with Client(live_api.url, await new_key(sessions, admin=True)) as admin:
        soon = datetime.now(UTC) + timedelta(days=1)
        made = await admin.create_key(tenant, name="sdk", expires_at=soon)
        assert made.key and made.scope == "tenant" and made.expires_at == soon
        (listed,) = await admin.keys(tenant=tenant)
        assert (listed.id, listed.prefix, listed.key) == (made.id, made.key[:10], None)
        async with Client(live_api.url, made.key) as theirs:
            with pytest.raises(PermissionDenied):
                await theirs.keys()
            revoked = await admin.revoke_key(made.prefix)
            assert revoked.revoked_at is not None
            with pytest.raises(AuthenticationError):
                await theirs.get(str(uuid.uuid4()))
        assert await admin.keys(tenant=tenant) == []
        assert [k.id for k in await admin.keys(tenant=tenant, include_revoked=True)] == [made.id]
        with pytest.raises(ConflictError):
            await admin.revoke_key(made.id)
