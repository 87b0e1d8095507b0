"""Nothing outspends its job: a worker (in this process) on the spec-checked provider mocks,
served on loopback. A job whose one scene fails for good fails with that scene's own code,
and the predictions of its other scenes are cancelled at Replicate; a cancelled job's
predictions are cancelled too; a prediction Replicate ``aborted`` is retried, not failed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import running_worker
from tests.mocks.live import live_mocks
from tests.mocks.replicate import Prediction, ReplicateMock
from videoq.client import Client
from videoq.settings import Settings
from videoq.types import scene_count

DURATION_S = 15
SCENES = scene_count(DURATION_S)
FOREVER = 10**9


@pytest.fixture
async def replicate(settings: Settings) -> AsyncIterator[tuple[ReplicateMock, Settings]]:
    """The Replicate mock (its predictions run until a test lets them end) and settings for
    a worker on all three mocks."""
    async with live_mocks(settings, ReplicateMock(polls=FOREVER)) as live:
        yield live.replicate, live.settings


async def all_created(
    replicate: ReplicateMock, count: int, timeout: float = 60
) -> list[Prediction]:
    deadline = time.monotonic() + timeout
    while len(replicate.predictions) < count:
        assert time.monotonic() < deadline, f"{len(replicate.predictions)} predictions"
        await asyncio.sleep(0.02)
    return list(replicate.predictions.values())


def finish_soon(prediction: Prediction, outcome: str) -> None:
    prediction.outcome = outcome
    prediction.polls_left = 1


async def test_one_scene_failing_fails_the_job_with_its_code_and_cancels_the_others(
    replicate: tuple[ReplicateMock, Settings], live_api: Any, api_key: str
) -> None:
    mock, settings = replicate
    async with running_worker(settings), Client(live_api.url, api_key) as client:
        job = await client.submit(product_name="Kettle", duration_s=DURATION_S, max_retries=3)
        predictions = await all_created(mock, SCENES)
        finish_soon(predictions[1], "failed")
        final = await client.wait(job.id, timeout=60)
        assert final.status == "failed" and final.attempts == 1
        assert final.error is not None and final.error.code == "prediction_failed"
        await until(lambda: all(p.status != "processing" for p in predictions))
    assert [p.status for p in predictions].count("canceled") == SCENES - 1
    assert mock.calls["create"] == SCENES


async def test_a_cancelled_job_cancels_its_predictions(
    replicate: tuple[ReplicateMock, Settings], live_api: Any, api_key: str
) -> None:
    mock, settings = replicate
    async with running_worker(settings), Client(live_api.url, api_key) as client:
        job = await client.submit(product_name="Kettle", duration_s=DURATION_S)
        predictions = await all_created(mock, SCENES)
        await client.cancel(job.id)
        final = await client.wait(job.id, timeout=60)
        assert final.status == "cancelled"
        await until(lambda: all(p.status == "canceled" for p in predictions))


async def test_an_aborted_prediction_is_retried_and_only_it_is_bought_again(
    replicate: tuple[ReplicateMock, Settings], live_api: Any, api_key: str
) -> None:
    mock, settings = replicate
    async with running_worker(settings), Client(live_api.url, api_key) as client:
        job = await client.submit(product_name="Kettle", duration_s=DURATION_S, max_retries=2)
        predictions = await all_created(mock, SCENES)
        finish_soon(predictions[0], "aborted")
        await until(lambda: predictions[0].status == "aborted")
        mock.polls = 1  # the new purchase, and every prediction still running, end now
        for prediction in predictions[1:]:
            prediction.polls_left = 1
        final = await client.wait(job.id, timeout=60)
        assert final.status == "succeeded", final
        assert final.attempts == 2
    assert final.model_extra is not None
    errors = [h.get("error") or {} for h in final.model_extra["history"]]
    assert errors[0].get("code") == "prediction_aborted"
    # The two scenes still running were re-attached to; the aborted one bought again.
    assert mock.calls["create"] == SCENES + 1


async def until(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.02)
