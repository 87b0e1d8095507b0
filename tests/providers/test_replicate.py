"""The video provider against the spec-checked Replicate mock: every prediction outcome, POST
retries, polling backoff, re-attaching to paid work, and the download size limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.mocks import replicate as mock
from tests.mocks.base import Reply
from tests.mocks.media import clip_mp4
from tests.providers.conftest import Mocks, Sleeps
from videoq.errors import PermanentError, RetryableError
from videoq.providers import PaidWork, ProviderPool, Transports
from videoq.providers.replicate import ReplicateVideoProvider
from videoq.settings import Settings
from videoq.types import Brief, Clip, Scene

SCENE = Scene("Meet the kettle.", "a copper kettle on a sunny table", 4.2)
BRIEF = Brief(product_name="Kettle", aspect_ratio="1:1")


def video_provider(pool: ProviderPool, settings: Settings | None = None) -> ReplicateVideoProvider:
    provider = pool.for_settings(settings or pool.settings).video
    assert isinstance(provider, ReplicateVideoProvider)
    return provider


async def render(
    provider: ReplicateVideoProvider,
    out: Path,
    attach_to: str | None = None,
    *,
    previous: dict[str, Any] | None = None,
    claimed: frozenset[str] = frozenset(),
    notes: list[dict[str, Any]] | None = None,
) -> tuple[Clip, list[str]]:
    """The scene rendered as video_gen would; returns the clip and the ids noted."""
    noted = notes if notes is not None else []

    async def note(update: dict[str, Any]) -> None:
        noted.append(dict(update))

    earlier = previous if previous is not None else ({"id": attach_to} if attach_to else {})
    work = PaidWork(previous=earlier, claimed=claimed, note=note)
    clip = await provider.render_clip(SCENE, 0, BRIEF, out, work=work)
    return clip, [n["id"] for n in noted if n.get("id")]


async def test_prediction_is_created_polled_and_downloaded(
    pool: ProviderPool, mocks: Mocks, sleeps: Sleeps, tmp_path: Path
) -> None:
    clip, submitted = await render(video_provider(pool), tmp_path)
    assert clip.path == tmp_path / "scene_00.mp4" and clip.path.read_bytes() == clip_mp4()
    assert submitted == [clip.work_id] and clip.work_id in mocks.replicate.predictions
    assert clip.cost == {"provider": "replicate", "model": "minimax/video-01",
                         "prediction_id": clip.work_id, "video_s": 4.2,
                         "predict_time_s": 1.5}  # fmt: skip
    body = mocks.replicate.bodies[0]
    assert body == {"input": {"prompt": SCENE.visual_prompt, "aspect_ratio": "1:1", "duration": 5}}
    # The create answers at once (nothing held: the id is noted before anything waits).
    assert mocks.replicate.prefer == [None]
    # Two polls (starting → processing → succeeded), each wait longer than the last.
    assert mocks.replicate.calls["get"] == 2 and sleeps.delays == [1.0, 1.5]


async def test_a_pinned_version_uses_the_versioned_route(
    pool: ProviderPool, mocks: Mocks, tmp_path: Path
) -> None:
    settings = pool.settings.model_copy(update={"replicate_version": "a" * 64})
    await render(video_provider(pool, settings), tmp_path)
    assert mocks.replicate.bodies[0]["version"] == "a" * 64


@pytest.mark.parametrize(
    ("outcome", "error", "code"),
    [
        ("failed", PermanentError, "prediction_failed"),
        ("canceled", RetryableError, "prediction_canceled"),
        ("aborted", RetryableError, "prediction_aborted"),
    ],
)
async def test_predictions_that_end_without_output(
    pool: ProviderPool,
    mocks: Mocks,
    tmp_path: Path,
    outcome: str,
    error: type[Exception],
    code: str,
) -> None:
    mocks.replicate.outcomes.append(outcome)
    with pytest.raises(error) as raised:
        await render(video_provider(pool), tmp_path)
    assert getattr(raised.value, "code", None) == code
    assert mocks.replicate.calls["create"] == 1 and mocks.replicate.calls["download"] == 0


async def test_create_is_retried_on_429_with_and_without_retry_after(
    pool: ProviderPool, mocks: Mocks, sleeps: Sleeps, tmp_path: Path
) -> None:
    mocks.replicate.fail_next(mock.throttled(), mock.throttled(retry_after="5"))
    clip, _ = await render(video_provider(pool), tmp_path)
    assert clip.path.exists()
    # 3 POSTs for one prediction: the SDK would have raised on the first 429.
    assert mocks.replicate.calls["create"] == 3 and len(mocks.replicate.predictions) == 1
    backoff, hinted = sleeps.delays[:2]
    assert 0.5 <= backoff <= 1.0 and hinted == 5.0


@pytest.mark.parametrize(
    ("fault", "code"),
    [(mock.invalid_input(), "invalid_request"), (mock.unauthenticated(), "provider_auth_failed")],
)
async def test_permanent_create_failures_fail_at_once(
    pool: ProviderPool, mocks: Mocks, sleeps: Sleeps, tmp_path: Path, fault: Reply, code: str
) -> None:
    mocks.replicate.fail_next(fault)
    with pytest.raises(PermanentError) as raised:
        await render(video_provider(pool), tmp_path)
    assert raised.value.code == code and mocks.replicate.calls["create"] == 1
    assert sleeps.delays == []


async def test_server_errors_while_polling_are_retried(
    pool: ProviderPool, mocks: Mocks, sleeps: Sleeps, tmp_path: Path
) -> None:
    mocks.replicate.polls = 1
    mocks.replicate.get_faults.extend([mock.server_error(), mock.server_error()])
    clip, _ = await render(video_provider(pool), tmp_path)
    assert clip.path.exists()
    assert mocks.replicate.calls["get"] == 3 and mocks.replicate.calls["create"] == 1
    assert len(sleeps.delays) == 3  # one poll interval, two retry backoffs


async def test_re_attaches_to_a_running_prediction_instead_of_paying_again(
    pool: ProviderPool, mocks: Mocks, tmp_path: Path
) -> None:
    mocks.replicate.polls = 3
    provider = video_provider(pool)
    first = mocks.replicate.predictions
    prediction = mock.Prediction("p" * 26, "minimax/video-01", "hidden", {}, "succeeded", 3)
    first[prediction.id] = prediction
    clip, submitted = await render(provider, tmp_path, attach_to=prediction.id)
    assert clip.work_id == prediction.id and submitted == []
    assert mocks.replicate.calls["create"] == 0 and mocks.replicate.calls["download"] == 1


@pytest.mark.parametrize("state", ["failed", "canceled", "aborted", "expired", "unknown"])
async def test_dead_or_unknown_predictions_are_not_re_attached(
    pool: ProviderPool, mocks: Mocks, tmp_path: Path, state: str
) -> None:
    dead = mock.Prediction("d" * 26, "minimax/video-01", "hidden", {}, "succeeded", 0)
    dead.status = "succeeded" if state == "expired" else state
    dead.data_removed = state == "expired"
    if state != "unknown":
        mocks.replicate.predictions[dead.id] = dead
    clip, submitted = await render(video_provider(pool), tmp_path, attach_to=dead.id)
    assert clip.work_id != dead.id and submitted == [clip.work_id]
    assert mocks.replicate.calls["create"] == 1


async def test_downloads_over_the_limit_are_refused_and_leave_nothing(
    pool: ProviderPool, mocks: Mocks, tmp_path: Path
) -> None:
    settings = pool.settings.model_copy(update={"max_download_bytes": 1000})
    with pytest.raises(PermanentError) as raised:
        await render(video_provider(pool, settings), tmp_path)
    assert raised.value.code == "file_too_large"
    assert list(tmp_path.iterdir()) == []  # noqa: ASYNC240


def test_fingerprint_changes_with_what_is_paid_for(pool: ProviderPool) -> None:
    provider = video_provider(pool)
    same = provider.work_fingerprint(SCENE, 0, BRIEF)
    assert same == provider.work_fingerprint(SCENE, 0, BRIEF)
    other = Scene(SCENE.narration, "a different shot", SCENE.duration_s)
    assert provider.work_fingerprint(other, 0, BRIEF) != same
    wide = Brief(product_name="Kettle", aspect_ratio="16:9")
    assert provider.work_fingerprint(SCENE, 0, wide) != same


async def test_the_purchase_is_noted_before_the_create_and_its_id_right_after(
    pool: ProviderPool, mocks: Mocks, tmp_path: Path
) -> None:
    notes: list[dict[str, Any]] = []
    clip, _ = await render(video_provider(pool), tmp_path, notes=notes)
    assert [set(n) for n in notes] == [{"since", "id"}, {"id"}]
    assert notes[0]["id"] is None and notes[1]["id"] == clip.work_id
    assert datetime.fromisoformat(notes[0]["since"]) <= datetime.now(UTC)


class LoseAnswers(httpx.AsyncBaseTransport):
    """Passes requests to the mock, then loses the answers of the first ``creates`` creates:
    Replicate made the prediction, the worker never heard of it."""

    def __init__(self, inner: httpx.AsyncBaseTransport, creates: int) -> None:
        self.inner = inner
        self.creates = creates

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        create = request.method == "POST" and request.url.path.endswith("/predictions")
        if create and self.creates > 0:
            self.creates -= 1
            await response.aread()
            raise httpx.ReadError("connection reset by peer", request=request)
        return response


async def test_a_create_whose_answer_was_lost_is_found_not_bought_again(
    live_settings: Settings, mocks: Mocks, tmp_path: Path
) -> None:
    inner = httpx.ASGITransport(app=mocks.replicate.app)
    transports = Transports(replicate=LoseAnswers(inner, creates=1))
    async with ProviderPool(live_settings, transports=transports, sleep=Sleeps()) as lossy:
        clip, noted = await render(video_provider(lossy), tmp_path)
    assert mocks.replicate.calls["create"] == 1 and mocks.replicate.calls["list"] == 1
    assert list(mocks.replicate.predictions) == [clip.work_id] == noted


async def test_a_purchase_noted_as_under_way_is_found_by_its_input(
    pool: ProviderPool, mocks: Mocks, tmp_path: Path
) -> None:
    provider = video_provider(pool)
    body = provider.request_body(SCENE, 0, BRIEF)
    since = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    # An earlier attempt's create reached Replicate; its worker died before the answer.
    lost = mock.Prediction("l" * 26, "minimax/video-01", "hidden", body["input"], "succeeded", 1)
    other_scene = mock.Prediction("o" * 26, "minimax/video-01", "hidden", body["input"],
                                  "succeeded", 1)  # fmt: skip
    stranger = mock.Prediction("s" * 26, "minimax/video-01", "hidden", {"prompt": "x"},
                               "succeeded", 1)  # fmt: skip
    for prediction in (lost, other_scene, stranger):
        mocks.replicate.predictions[prediction.id] = prediction
    clip, noted = await render(
        provider, tmp_path, previous={"since": since, "id": None},
        claimed=frozenset({other_scene.id}),
    )  # fmt: skip
    assert clip.work_id == lost.id and noted == []
    assert mocks.replicate.calls["create"] == 0 and mocks.replicate.calls["list"] == 1


async def test_a_purchase_under_way_that_never_reached_replicate_is_bought(
    pool: ProviderPool, mocks: Mocks, tmp_path: Path
) -> None:
    since = datetime.now(UTC).isoformat()
    clip, noted = await render(video_provider(pool), tmp_path, previous={"since": since})
    assert noted == [clip.work_id] and mocks.replicate.calls["create"] == 1


async def test_cancel_work_stops_running_predictions(
    pool: ProviderPool, mocks: Mocks, tmp_path: Path
) -> None:
    running = mock.Prediction("r" * 26, "minimax/video-01", "hidden", {}, "succeeded", 5)
    done = mock.Prediction("d" * 26, "minimax/video-01", "hidden", {}, "succeeded", 0)
    done.status = "succeeded"
    for prediction in (running, done):
        mocks.replicate.predictions[prediction.id] = prediction
    await video_provider(pool).cancel_work([running.id, done.id, "gone" * 6])
    assert running.status == "canceled" and done.status == "succeeded"
    assert mocks.replicate.calls["cancel"] == 3


async def test_scenes_bought_at_once_are_told_apart(
    pool: ProviderPool, mocks: Mocks, tmp_path: Path
) -> None:
    """Two scenes with the same shot, both noted as under way: the second never takes the
    prediction the first holds for its own."""
    provider = video_provider(pool)
    since = datetime.now(UTC).isoformat()
    mocks.replicate.polls = 1
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    first, _ = await render(provider, tmp_path / "a", previous={"since": since})
    second, _ = await render(
        provider, tmp_path / "b", previous={"since": since}, claimed=frozenset({str(first.work_id)})
    )
    assert first.work_id != second.work_id and mocks.replicate.calls["create"] == 2
