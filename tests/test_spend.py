"""Spend control against the spec-checked provider mocks on loopback and a real worker: the
estimate of a brief against what its job settles at; a tenant's budget holding every call it
cannot cover (the jobs wait in ``awaiting_budget``, buy nothing twice and finish once it is
raised) while another tenant runs on; reservations serialised across concurrent writers; and
the bad input around budgets and prices."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import select, update

from tests.conftest import LiveApi, auth, new_key, running_worker, serving
from tests.mocks.live import LiveMocks, live_mocks
from videoq import prices, store
from videoq.client import Client
from videoq.settings import Settings
from videoq.store import spend
from videoq.types import Brief

DURATION_S = 15


@pytest.fixture
async def mocks(settings: Settings) -> AsyncIterator[LiveMocks]:
    """The provider mocks (predictions end at their first read) and settings for a worker on
    them, rechecking budgets only when told to."""
    async with live_mocks(settings, budget_recheck_s=3600.0) as live:
        yield live


async def purchases(sessions: Any, tenant: str) -> list[store.Purchase]:
    async with sessions() as session:
        rows = await session.execute(select(store.Purchase).where(store.Purchase.tenant == tenant))
        return list(rows.scalars())


async def statuses(sessions: Any, tenant: str) -> dict[str, int]:
    async with sessions() as session:
        rows = await session.execute(select(store.Job.status).where(store.Job.tenant == tenant))
    counts: dict[str, int] = {}
    for (status,) in rows:
        counts[status] = counts.get(status, 0) + 1
    return counts


async def until(condition: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.1)


def by_stage(rows: list[store.Purchase]) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    for row in rows:
        totals[row.stage] = totals.get(row.stage, Decimal(0)) + (row.actual_usd or Decimal(0))
    return totals


async def test_the_estimate_matches_what_the_job_settles_at(
    mocks: LiveMocks, sessions: Any
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    key = await new_key(sessions, tenant)
    async with (
        serving(mocks.settings) as api,
        running_worker(mocks.settings),
        Client(api.url, key) as client,
    ):
        estimate = await client.estimate(product_name="Kettle", duration_s=DURATION_S)
        job = await client.submit(product_name="Kettle", duration_s=DURATION_S)
        final = await client.wait(job.id, timeout=120)
        assert final.status == "succeeded", final
        view = (await http_get(api, key, f"/v1/jobs/{job.id}")).json()
    rows = await purchases(sessions, tenant)
    assert {row.state for row in rows} == {"settled"} and len(rows) == 2 + 3
    settled = by_stage(rows)
    stages = estimate["stages"]
    assert estimate["currency"] == "USD"
    # Tokens and characters to the cent; the clips exactly (priced per prediction).
    assert abs(stages["script_gen"]["usd"] - float(settled["script_gen"])) < 0.01
    assert abs(stages["voice_gen"]["usd"] - float(settled["voice_gen"])) < 0.01
    assert stages["video_gen"]["usd"] == float(settled["video_gen"]) == 1.5
    assert abs(estimate["total"] - float(sum(settled.values()))) < 0.02
    # The job shows both, and each scene's call apart.
    assert view["cost"]["estimated_usd"] == pytest.approx(estimate["total"], abs=1e-6)
    assert view["cost"]["actual_usd"] == pytest.approx(float(sum(settled.values())), abs=1e-6)
    scenes = [c for c in view["cost"]["calls"] if c["stage"] == "video_gen"]
    assert [c["key"] for c in sorted(scenes, key=lambda c: c["key"])] == [
        "video_gen:0", "video_gen:1", "video_gen:2"
    ]  # fmt: skip
    assert all(c["actual_usd"] == 0.5 for c in scenes)


async def http_get(api: LiveApi, key: str, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=api.url, headers=auth(key)) as http:
        return await http.get(path)


async def test_a_budget_holds_every_call_it_cannot_cover_until_it_is_raised(
    mocks: LiveMocks, sessions: Any
) -> None:
    spender, other = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    spender_key, other_key = await new_key(sessions, spender), await new_key(sessions, other)
    admin_key = await new_key(sessions, admin=True)
    async with (
        serving(mocks.settings) as api,
        running_worker(mocks.settings, max_jobs=20),
        Client(api.url, spender_key) as client,
        Client(api.url, other_key) as other_client,
        httpx.AsyncClient(base_url=api.url, headers=auth(admin_key)) as admin,
    ):
        # What one job costs, settled: measured on the other tenant, which has no budget.
        first = await other_client.submit(product_name="Kettle", duration_s=DURATION_S)
        assert (await other_client.wait(first.id, timeout=120)).status == "succeeded"
        one_job = sum(by_stage(await purchases(sessions, other)).values(), Decimal(0))
        budget = (one_job * Decimal("7.5")).quantize(Decimal("0.000001"))
        answer = await admin.put(f"/v1/tenants/{spender}", json={"daily_budget_usd": float(budget)})
        assert answer.status_code == 200, answer.text
        before = mocks.paid_calls()

        jobs = [
            await client.submit(product_name=f"Kettle {n}", duration_s=DURATION_S)
            for n in range(20)
        ]

        async def settled_down() -> bool:
            counts = await statuses(sessions, spender)
            return counts.get("succeeded", 0) + counts.get("awaiting_budget", 0) == 20

        await until(settled_down)
        held = await statuses(sessions, spender)
        assert held.get("succeeded", 0) <= 7 and held.get("awaiting_budget", 0) >= 13, held
        rows = await purchases(sessions, spender)
        made = {s: n - before[s] for s, n in mocks.paid_calls().items()}
        # Exactly the calls the budget covered were made: each was reserved first, and the
        # reservations (settled at their cost) fit in the budget.
        live = [row for row in rows if row.state != "released"]
        assert made == {stage: sum(1 for row in live if row.stage == stage) for stage in made}, (
            made,
            [(r.key, r.state) for r in rows],
        )
        spent = sum((row.actual_usd or row.reserved_usd for row in live), Decimal(0))
        assert spent <= budget
        assert budget - spent < Decimal("0.5") + 20 * Decimal("0.05")  # used, not left idle
        usage = await client.usage()
        assert usage["today_usd"] == pytest.approx(float(spent), abs=1e-6)
        assert usage["daily_budget_usd"] == pytest.approx(float(budget))

        # Another tenant is unaffected.
        theirs = await other_client.submit(product_name="Teapot", duration_s=DURATION_S)
        assert (await other_client.wait(theirs.id, timeout=120)).status == "succeeded"

        # Raised: every job finishes, and nothing is bought twice.
        answer = await admin.put(f"/v1/tenants/{spender}", json={"daily_budget_usd": 1000})
        assert answer.status_code == 200, answer.text
        for job in jobs:
            final = await client.wait(job.id, timeout=180)
            assert final.status == "succeeded", final
    made = {s: n - before[s] for s, n in mocks.paid_calls().items()}
    assert made == {"script_gen": 20, "voice_gen": 20, "video_gen": 60} or made == {
        # The other tenant's second job, made meanwhile.
        "script_gen": 21, "voice_gen": 21, "video_gen": 63,
    }  # fmt: skip
    rows = await purchases(sessions, spender)
    assert len(rows) == 20 * 5 and {row.state for row in rows} == {"settled"}


async def test_a_job_awaiting_its_budget_resumes_by_itself(mocks: LiveMocks, sessions: Any) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    key = await new_key(sessions, tenant)
    async with sessions() as session:
        await store.tenants.put(session, tenant, {"daily_budget_usd": Decimal(0)})
    settings = mocks.settings.model_copy(update={"budget_recheck_s": 0.3})
    async with (
        serving(settings) as api,
        running_worker(settings),
        Client(api.url, key) as client,
    ):
        job = await client.submit(product_name="Kettle", duration_s=DURATION_S, max_retries=0)

        async def waiting() -> bool:
            return (await statuses(sessions, tenant)).get("awaiting_budget") == 1

        await until(waiting)
        assert mocks.paid_calls()["script_gen"] == 0
        # Raised behind the API's back (as a new day would): the recheck finds it.
        async with sessions() as session:
            await session.execute(
                update(store.Tenant)
                .where(store.Tenant.tenant == tenant)
                .values(daily_budget_usd=Decimal(100))
            )
            await session.commit()
        final = await client.wait(job.id, timeout=120)
    # It waited through several rechecks with no retries to spare, and still succeeded.
    assert final.status == "succeeded", final
    history = (final.model_extra or {}).get("history") or []
    assert any(entry.get("outcome") == "awaiting_budget" for entry in history), history


async def test_reservations_from_many_writers_never_overshoot(sessions: Any) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    async with sessions() as session:
        await store.tenants.put(session, tenant, {"daily_budget_usd": Decimal("1.000000")})
        job = store.Job(
            id=uuid.uuid4(), tenant=tenant, status="running", brief={}, options={}, max_retries=0,
            created_at=datetime.now(UTC), updated_at=datetime.now(UTC),
        )  # fmt: skip
        session.add(job)
        await session.commit()

    async def one(n: int) -> bool:
        call = spend.Call(job.id, f"video_gen:{n}", tenant, "video_gen", "replicate", "m")
        async with sessions() as session:
            return await spend.reserve(session, call, Decimal("0.1"))

    granted = await asyncio.gather(*(one(n) for n in range(40)))
    assert sum(granted) == 10
    # The same call again is the reservation it has, not a second one.
    assert await one(granted.index(True)) is True
    assert len(await purchases(sessions, tenant)) == 10


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"daily_budget_usd": -1}, "daily_budget_usd"),
        ({"monthly_budget_usd": 1e12}, "monthly_budget_usd"),
        ({"daily_budget_usd": "12"}, "daily_budget_usd"),
        ({"daily_budget_usd": True}, "daily_budget_usd"),
        ({"daily_budget_usd": 0.0000001}, "daily_budget_usd"),
        ({"reject_when_over_budget": "yes"}, "reject_when_over_budget"),
        ({"hourly_budget_usd": 5}, "hourly_budget_usd"),
    ],
)
async def test_bad_budgets_are_refused_naming_the_field(
    live_api: LiveApi, sessions: Any, body: dict[str, Any], field: str
) -> None:
    admin = await new_key(sessions, admin=True)
    async with httpx.AsyncClient(base_url=live_api.url, headers=auth(admin)) as http:
        answer = await http.put("/v1/tenants/acme", json=body)
    assert answer.status_code == 422, answer.text
    assert [error["field"] for error in answer.json()["error"]["details"]] == [field]


def test_a_live_model_without_a_price_is_refused_at_start_up(settings: Settings) -> None:
    with pytest.raises(ValidationError, match="prices has no entry for 'replicate:acme/video'"):
        Settings.model_validate(
            {
                **settings.model_dump(),
                "providers": "auto",
                "replicate_api_token": "r8_test",
                "replicate_model": "acme/video",
            }
        )


async def test_a_job_asking_for_an_unpriced_model_is_refused(
    mocks: LiveMocks, sessions: Any
) -> None:
    key = await new_key(sessions)
    async with (
        serving(mocks.settings) as api,
        httpx.AsyncClient(base_url=api.url, headers=auth(key)) as http,
    ):
        body = {"product_name": "Kettle", "options": {"anthropic_model": "claude-unpriced"}}
        for path in ("/v1/jobs", "/v1/estimates"):
            answer = await http.post(path, json=body)
            assert answer.status_code == 422, answer.text
            fields = [error["field"] for error in answer.json()["error"]["details"]]
            assert fields == ["options.anthropic_model"]


async def test_a_tenant_over_budget_that_asked_gets_402_on_create(
    live_api: LiveApi, sessions: Any
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    key = await new_key(sessions, tenant)
    admin = await new_key(sessions, admin=True)
    async with (
        httpx.AsyncClient(base_url=live_api.url, headers=auth(key)) as http,
        httpx.AsyncClient(base_url=live_api.url, headers=auth(admin)) as admin_http,
    ):
        await admin_http.put(f"/v1/tenants/{tenant}", json={"daily_budget_usd": 0})
        assert (await http.post("/v1/jobs", json={"product_name": "Kettle"})).status_code == 202
        answer = await admin_http.put(
            f"/v1/tenants/{tenant}", json={"reject_when_over_budget": True}
        )
        assert answer.json()["reject_when_over_budget"] is True
        refused = await http.post("/v1/jobs", json={"product_name": "Kettle"})
        assert refused.status_code == 402, refused.text
        assert refused.json()["error"]["code"] == "over_budget"
        # Reading another tenant's usage is an admin's business.
        assert (await http.get("/v1/usage", params={"tenant": "other"})).status_code == 403
        assert (await admin_http.get("/v1/usage", params={"tenant": tenant})).status_code == 200


def test_the_estimate_offline_is_free(settings: Settings) -> None:
    estimate = prices.estimate(Brief(product_name="Kettle"), settings)
    assert estimate.total == 0
    assert {stage.provider for stage in estimate.stages.values()} == {"offline", "ffmpeg"}
