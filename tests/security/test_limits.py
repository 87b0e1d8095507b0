"""Per-tenant limits: the Redis token bucket and the cap on waiting jobs (429 with
Retry-After, nothing written), and the size limit on request bodies (413)."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.conftest import new_key
from tests.security.conftest import auth, table_counts
from tests.test_api import assert_error
from videoq import lifecycle
from videoq.api import create_app
from videoq.broker import limits
from videoq.settings import Settings


@contextlib.asynccontextmanager
async def client_for(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://videoq") as client:
            yield client


async def create(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.post("/v1/jobs", json={"product_name": "K"}, headers=auth(key))


async def test_a_tenant_over_its_rate_gets_429_with_retry_after(
    settings: Settings, sessions: Any, redis: Redis
) -> None:
    # Three at once, then one per 1000 s: the fourth request cannot be let through by time.
    limited = settings.model_copy(update={"rate_limit_per_s": 0.001, "rate_limit_burst": 3})
    key, other = await new_key(sessions), await new_key(sessions)
    async with client_for(limited) as client:
        assert [(await create(client, key)).status_code for _ in range(3)] == [202] * 3
        before = await table_counts(sessions)
        refused = await create(client, key)
        error = assert_error(refused, 429, "rate_limited")
        assert "per second" in error["message"]
        assert 900 <= int(refused.headers["retry-after"]) <= 1000
        assert await table_counts(sessions) == before
        assert await redis.zcard(limited.queue_name) == 3
        # Another tenant has its own bucket.
        assert (await create(client, other)).status_code == 202


async def test_validation_errors_do_not_spend_tokens(settings: Settings, sessions: Any) -> None:
    limited = settings.model_copy(update={"rate_limit_per_s": 0.001, "rate_limit_burst": 1})
    key = await new_key(sessions)
    async with client_for(limited) as client:
        for _ in range(3):
            bad = await client.post("/v1/jobs", json={"product_name": ""}, headers=auth(key))
            assert bad.status_code == 422
        assert (await create(client, key)).status_code == 202
        assert (await create(client, key)).status_code == 429


async def test_the_bucket_refills_at_its_rate(redis: Redis) -> None:
    """Time is injected (Redis's own clock by default), so no test waits for it."""
    key = f"test:bucket:{uuid.uuid4().hex}"
    take = limits.take
    assert await take(redis, key, rate=2.0, burst=2, now=1000.0) == (True, 0.0)
    assert await take(redis, key, rate=2.0, burst=2, now=1000.0) == (True, 0.0)
    allowed, wait = await take(redis, key, rate=2.0, burst=2, now=1000.0)
    assert not allowed and wait == pytest.approx(0.5)
    assert (await take(redis, key, rate=2.0, burst=2, now=1000.25))[0] is False
    assert (await take(redis, key, rate=2.0, burst=2, now=1000.5))[0] is True
    # A long pause refills to the burst, never beyond it.
    assert [(await take(redis, key, rate=2.0, burst=2, now=5000.0))[0] for _ in range(3)] == [
        True,
        True,
        False,
    ]
    assert 0 < await redis.pttl(key) <= 2000  # an idle tenant's bucket expires


async def test_the_waiting_jobs_cap_gives_429_until_a_job_leaves(
    settings: Settings, sessions: Any
) -> None:
    capped = settings.model_copy(update={"max_queued_jobs": 2, "rate_limit_per_s": 0})
    key = await new_key(sessions)
    async with client_for(capped) as client:
        first = (await create(client, key)).json()
        assert (await create(client, key)).status_code == 202
        before = await table_counts(sessions)
        refused = await create(client, key)
        assert "already waiting" in assert_error(refused, 429, "rate_limited")["message"]
        assert refused.headers["retry-after"] == str(lifecycle.QUEUE_FULL_RETRY_AFTER_S)
        assert await table_counts(sessions) == before
        cancelled = await client.post(f"/v1/jobs/{first['id']}/cancel", headers=auth(key))
        assert cancelled.status_code == 202
        assert (await create(client, key)).status_code == 202


async def test_both_limits_can_be_turned_off(settings: Settings, sessions: Any) -> None:
    off = settings.model_copy(update={"max_queued_jobs": 0, "rate_limit_per_s": 0})
    key = await new_key(sessions)
    async with client_for(off) as client:
        for _ in range(5):
            assert (await create(client, key)).status_code == 202


@pytest.mark.parametrize(
    ("path", "limit_field"),
    [("/v1/jobs", "max_body_bytes"), ("/v1/webhooks/github", "webhook_max_body_bytes")],
)
async def test_bodies_one_byte_over_the_limit_are_413(
    settings: Settings, sessions: Any, path: str, limit_field: str
) -> None:
    small = settings.model_copy(update={"max_body_bytes": 1000, "webhook_max_body_bytes": 2000})
    limit = getattr(small, limit_field)
    key = await new_key(sessions)
    body = json.dumps({"product_name": "K", "prompt": ""}).encode()
    at_limit = body[:-2] + b" " * (limit - len(body)) + b'"}'
    assert len(at_limit) == limit
    async with client_for(small) as client:
        before = await table_counts(sessions)
        over = await client.post(path, content=at_limit + b" ", headers=auth(key))
        assert_error(over, 413, "too_large")
        assert await table_counts(sessions) == before
        at = await client.post(path, content=at_limit, headers=auth(key))
        assert at.status_code != 413  # the limit itself is allowed (and then judged on merit)
