"""Failover between video models, against the spec-checked provider mocks on loopback and a
real worker: a first model that answers 503 to every create hands every scene to the second
(each scene bought once, the switch in the events, the purchases and the job's cost); a cap
below the second's price fails the job with ``no_provider`` instead; a scene noted on the
second model goes back to it after a crash, whatever the first does meanwhile; and the bad
input around the chain is refused at start-up, naming the setting."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import select

from tests.conftest import new_key, running_worker, serving
from tests.mocks import replicate as mock
from tests.mocks.live import LiveMocks, live_mocks
from tests.mocks.replicate import ReplicateMock
from videoq import store
from videoq.client import Client
from videoq.pipeline import MemoryCheckpoints, video_gen
from videoq.providers import ProviderPool, Transports
from videoq.providers.offline import OfflineScriptProvider
from videoq.schemas import JobCreate, job_context
from videoq.settings import DEFAULT_PRICES, Price, Settings
from videoq.types import Brief, scene_count

DURATION_S = 15
SCENES = scene_count(DURATION_S)
PRIMARY = "minimax/video-01"  # the default model, $0.50 a prediction
FALLBACK = "acme/video-fallback"
FALLBACK_USD = Decimal("0.8")
PRICES = {**DEFAULT_PRICES, f"replicate:{FALLBACK}": Price(prediction=FALLBACK_USD)}


@pytest.fixture
async def mocks(settings: Settings) -> AsyncIterator[LiveMocks]:
    """The provider mocks (predictions end at their first read) and settings for a worker on
    them, with ``FALLBACK`` after the default model and quick retries."""
    async with live_mocks(
        settings, replicate_fallback_models=[FALLBACK], prices=PRICES,
        provider_backoff_s=0.01, provider_backoff_max_s=0.05,
    ) as live:  # fmt: skip
        yield live


async def video_purchases(sessions: Any, job_id: str) -> list[store.Purchase]:
    async with sessions() as session:
        rows = await session.execute(
            select(store.Purchase)
            .where(store.Purchase.job_id == uuid.UUID(job_id), store.Purchase.stage == "video_gen")
            .order_by(store.Purchase.key)
        )
        return list(rows.scalars())


async def test_scenes_switch_to_the_next_model_when_the_first_answers_503(
    mocks: LiveMocks, sessions: Any
) -> None:
    mocks.replicate.down[PRIMARY] = mock.unavailable()
    key = await new_key(sessions)
    async with (
        serving(mocks.settings) as api,
        running_worker(mocks.settings),
        Client(api.url, key) as client,
    ):
        job = await client.submit(product_name="Kettle", duration_s=DURATION_S)
        events = [event async for event in client.events(job.id, after=0)]
        final = await client.get(job.id)
    assert final.status == "succeeded", final
    assert final.attempts == 1  # switched within the attempt, not after a job-level retry
    # Every scene was bought once, on the second model.
    predictions = list(mocks.replicate.predictions.values())
    assert len(predictions) == mocks.replicate.paid == SCENES
    assert {p.model for p in predictions} == {FALLBACK}
    assert len({json.dumps(p.input, sort_keys=True) for p in predictions}) == SCENES
    rows = await video_purchases(sessions, job.id)
    assert [(r.key, r.model, r.state, r.actual_usd) for r in rows] == [
        (f"video_gen:{i}", FALLBACK, "settled", FALLBACK_USD) for i in range(SCENES)
    ]
    # The switch is in the job's cost (its result) and in its events.
    async with sessions() as session:
        row = await session.get(store.Job, uuid.UUID(job.id))
    assert row is not None and row.result is not None
    cost = row.result["video_gen"]
    assert [scene["model"] for scene in cost["scenes"]] == [FALLBACK] * SCENES
    switch = {"from": PRIMARY, "to": FALLBACK, "error": "provider_unavailable"}
    assert cost["failover"] == [{"scene": i, **switch} for i in range(SCENES)]
    told = sorted(e.message or "" for e in events if "switched" in (e.message or ""))
    assert told == [
        f"scene {i}: switched from {PRIMARY} to {FALLBACK} (provider_unavailable)"
        for i in range(SCENES)
    ]
    assert {e.type for e in events if "switched" in (e.message or "")} == {"progress"}


async def test_a_cap_below_the_next_models_price_fails_the_job_with_no_provider(
    mocks: LiveMocks, sessions: Any
) -> None:
    mocks.replicate.down[PRIMARY] = mock.unavailable()
    key = await new_key(sessions)
    async with (
        serving(mocks.settings) as api,
        running_worker(mocks.settings),
        Client(api.url, key) as client,
    ):
        job = await client.submit(
            product_name="Kettle", duration_s=DURATION_S, max_retries=3,
            options={"max_cost_per_scene_usd": 0.6},
        )  # fmt: skip
        final = await client.wait(job.id, timeout=120)
    assert final.status == "failed" and final.attempts == 1  # for good: no retry helps
    assert final.error is not None and final.error.code == "no_provider"
    assert f"{PRIMARY} failed (provider_unavailable)" in final.error.message
    assert "max_cost_per_scene_usd ($0.6)" in final.error.message
    assert f"{FALLBACK}, costs $0.8" in final.error.message
    assert mocks.replicate.predictions == {}
    # Nothing was bought, nor settled. (A scene cancelled by its sibling's failure keeps its
    # reservation on the first model, as any cancelled call does: what the state says here.)
    assert mocks.replicate.paid == 0
    rows = await video_purchases(sessions, job.id)
    assert rows and {r.model for r in rows} == {PRIMARY}
    assert "settled" not in {r.state for r in rows}


async def instantly(_: float) -> None:
    await asyncio.sleep(0)


async def test_a_scene_noted_on_the_second_model_goes_back_to_it(tmp_path: Path) -> None:
    replicate = ReplicateMock(polls=1)
    replicate.down[PRIMARY] = mock.unavailable()
    settings = Settings(
        providers="auto", replicate_api_token="r8_test", replicate_base_url="http://replicate.mock",
        replicate_fallback_models=[FALLBACK], prices=PRICES, log_level="WARNING",
    )  # fmt: skip
    brief = Brief(product_name="Kettle", duration_s=10)
    script = await OfflineScriptProvider().write_script(brief)
    checkpoints = MemoryCheckpoints()

    async def ignore(_: float) -> None:
        return None

    async def render(workdir: Path) -> list[Any]:
        # A new process each time: a new pool, nothing remembered but the notes.
        await asyncio.to_thread(workdir.mkdir)
        transports = Transports(replicate=httpx.ASGITransport(app=replicate.app))
        async with ProviderPool(settings, transports=transports, sleep=instantly) as pool:
            providers = pool.for_settings(settings)
            return await video_gen.run(
                brief, script, provider=providers.video, workdir=workdir, on_progress=ignore,
                checkpoints=checkpoints, settings=settings,
                fallbacks=providers.video_fallbacks,
            )  # fmt: skip

    first = await render(tmp_path / "first")
    bought = replicate.paid
    assert bought == len(script.scenes)
    # The worker died before the clips were kept; the first model is back meanwhile.
    replicate.down.clear()
    again = await render(tmp_path / "again")
    assert replicate.paid == bought  # re-attached, on the model each note names
    assert [c.work_id for c in again] == [c.work_id for c in first]
    assert {c.cost["model"] for c in again} == {FALLBACK}
    switch = {"from": PRIMARY, "to": FALLBACK, "error": "provider_unavailable"}
    assert all(c.failover == [switch] for c in again)
    notes = await checkpoints.notes("video_gen")
    assert {n["model"] for n in notes.values()} == {FALLBACK}


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("replicate_fallback_models", ["acme-video"]),
        ("replicate_fallback_models", ["acme/video/../predictions"]),
        ("replicate_fallback_models", [f"{FALLBACK}", "acme/"]),
        ("replicate_model", "minimax video"),
    ],
)
def test_a_model_in_the_chain_that_is_not_owner_name_is_refused_at_start_up(
    settings: Settings, setting: str, value: Any
) -> None:
    with pytest.raises(ValidationError, match=f"{setting} has '.*', which is not a model's"):
        Settings.model_validate({**settings.model_dump(), setting: value})


def test_a_fallback_model_without_a_price_is_refused_at_start_up(settings: Settings) -> None:
    with pytest.raises(ValidationError, match="prices has no entry for 'replicate:acme/unpriced'"):
        Settings.model_validate(
            {
                **settings.model_dump(),
                "providers": "auto",
                "replicate_api_token": "r8_test",
                "replicate_fallback_models": ["acme/unpriced"],
            }
        )


def test_a_job_may_lower_the_cap_per_scene_but_never_raise_it() -> None:
    capped = Settings(max_cost_per_scene_usd=Decimal("1"))
    assert capped.for_job({"max_cost_per_scene_usd": 0.5}).max_cost_per_scene_usd == Decimal("0.5")
    assert capped.for_job({"max_cost_per_scene_usd": 5}).max_cost_per_scene_usd == Decimal("1")
    free = Settings().for_job({"max_cost_per_scene_usd": 5})
    assert free.max_cost_per_scene_usd == Decimal("5")
    with pytest.raises(ValidationError, match="must be at most 1, this server's"):
        JobCreate.model_validate(
            {"product_name": "Kettle", "options": {"max_cost_per_scene_usd": 2}},
            context=job_context(capped),
        )
