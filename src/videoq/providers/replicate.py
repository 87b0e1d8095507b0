"""Video from Replicate predictions, one per scene, over plain ``httpx``.

Why not the ``replicate`` SDK: 1.0.7 cannot read a prediction whose status is ``aborted``
(pydantic rejects it) and never retries a POST; both matter here, so predictions are read and
created directly (``POST /v1/predictions`` or ``/v1/models/{owner}/{name}/predictions``,
``GET /v1/predictions/{id}``).

Money is the point of this module. Each scene's purchase is noted in PostgreSQL twice, through
the stage's :class:`~videoq.providers.PaidWork`: that it is about to be bought (``since``,
before the create request leaves) and the prediction's id (the moment the create answer names
it). Creates do not hold the request open (no ``Prefer: wait``): the answer, and the id in it,
comes back at once. The clip is then polled for, or, when the settings name a webhook URL and
the process has a :class:`~videoq.providers.PredictionWatch`, awaited on the prediction's
webhook, with the process's :class:`PredictionSweep` listing the account's predictions each
``replicate_webhook_poll_s`` meanwhile, for webhooks that never come. So a later attempt, on
any worker:

- with a noted id, re-attaches to that prediction while it runs or has its output;
- with a purchase noted as under way but no id (the worker died, or the connection broke,
  between the create reaching Replicate and its answer being noted), first looks for it among
  the account's predictions created since (``GET /v1/predictions?created_after=``), by its
  exact input and model, skipping ids the job's other scenes hold; a create retried after an
  ambiguous failure (a timeout, a 5xx) looks the same way before it buys again;
- buys anew only when neither finds a prediction that can still deliver (failed, canceled,
  aborted, or its output already deleted, an hour after it finished).

Each provider buys from one model (``model``: ``replicate_model`` or one of
``replicate_fallback_models``). A create still failing past its retries (429, 5xx, timeouts)
whose last search finds nothing raises :class:`~videoq.errors.Declined`: nothing was bought,
and ``video_gen`` may buy the scene from the next model.

``Cancel-After`` on create stops a runaway prediction by itself; :meth:`cancel_work` stops the
ones of a job that failed or was cancelled. Outputs stream to a temporary file with a size
limit and are renamed into place only when complete.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import json
import math
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes, urlsplit

import httpx
import structlog

from videoq import prices, tracing
from videoq.errors import Declined, PermanentError, ProviderError, RetryableError
from videoq.ffmpeg import atomic_output
from videoq.providers import PaidWork, PredictionWatch
from videoq.providers.http import (
    MAYBE_DONE,
    RetryPolicy,
    call_with_retries,
    classify,
    keepalive_limits,
    problem_message,
    transport_error,
)
from videoq.types import Clip, Scene

if TYPE_CHECKING:
    from videoq.providers.limits import Limiter
    from videoq.settings import Settings
    from videoq.types import Brief

log = structlog.get_logger(__name__)

#: Prediction statuses after which a prediction changes no more (Replicate spells "canceled").
PREDICTION_ENDED = frozenset({"succeeded", "failed", "canceled", "aborted"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".webm", ".mkv", ".gif"})
CHUNK = 1 << 16
#: How far before a noted purchase a search for it starts: the worker's clock and Replicate's
#: may disagree by this much.
CLOCK_SKEW = timedelta(minutes=5)
#: Pages of the prediction list (100 each, newest first) searched for a lost purchase.
SEARCH_PAGES = 10
#: The most pages one pass of the :class:`PredictionSweep` reads (100,000 predictions).
SWEEP_PAGES = 1000


def _created_at(prediction: dict[str, Any]) -> datetime | None:
    """When Replicate says the prediction was created, if it says so readably."""
    try:
        created = datetime.fromisoformat(str(prediction.get("created_at")))
    except ValueError:
        return None
    return created if created.tzinfo is not None else created.replace(tzinfo=UTC)


def make_client(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The process's Replicate client. The token is added per API request (not as a default
    header), so output downloads from other hosts never carry it."""
    if settings.replicate_api_token is None:
        raise ValueError("REPLICATE_API_TOKEN is not set")
    return httpx.AsyncClient(
        base_url=settings.replicate_base_url,
        timeout=httpx.Timeout(settings.replicate_timeout_s, connect=10.0),
        limits=keepalive_limits(settings.replicate_concurrency * 2),
        transport=transport,
    )


def error_for(response: httpx.Response) -> ProviderError:
    """Classify a failed response (RFC 7807 problem details)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    message = problem_message(body) or response.reason_phrase
    return classify("replicate", response.status_code, headers=response.headers, message=message)


def output_url(prediction: dict[str, Any]) -> str:
    """The clip's URL in a succeeded prediction's ``output`` (a string or a list of them)."""
    output = prediction.get("output")
    candidates = [output] if isinstance(output, str) else output
    if isinstance(candidates, list):
        urls = [c for c in candidates if isinstance(c, str) and c]
        if urls:
            return urls[-1]
    raise PermanentError(
        f"prediction {prediction.get('id')} has no video output", code="invalid_output"
    )


def outcome_error(prediction: dict[str, Any]) -> ProviderError:
    """The error for a prediction that ended without output."""
    ident, status = prediction.get("id"), prediction.get("status")
    detail = str(prediction.get("error") or "")[:500]
    if status == "failed":
        return PermanentError(
            f"replicate prediction {ident} failed: {detail}", code="prediction_failed"
        )
    return RetryableError(
        f"replicate prediction {ident} was {status}" + (f": {detail}" if detail else ""),
        code=f"prediction_{status}",
    )


def reusable(prediction: dict[str, Any]) -> bool:
    """Whether a recorded prediction is worth re-attaching to: running, or done with output."""
    status = prediction.get("status")
    if status not in PREDICTION_ENDED:
        return True
    return (
        status == "succeeded"
        and not prediction.get("data_removed")
        and prediction.get("output") is not None
    )


class ReplicateAPI:
    """Reads and writes of Replicate's API for one client: the token added to each request,
    failures classified (:func:`error_for`), reads retried under ``policy``."""

    def __init__(self, client: httpx.AsyncClient, settings: Settings, policy: RetryPolicy) -> None:
        self._client = client
        self._policy = policy
        token = settings.replicate_api_token
        self.auth = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}

    async def request(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        """A request answered by a JSON object, tried once."""
        headers = {**self.auth, **kwargs.pop("headers", {})}
        try:
            response = await self._client.request(method, url, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise transport_error("replicate", exc) from exc
        if response.status_code >= 400:
            raise error_for(response)
        try:
            data = response.json()
        except ValueError as exc:
            raise RetryableError("replicate sent invalid JSON", code="invalid_response") from exc
        if not isinstance(data, dict):
            raise RetryableError("replicate sent no JSON object", code="invalid_response")
        return data

    async def call(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        """A request answered by one prediction, tried once."""
        data = await self.request(method, url, **kwargs)
        if not isinstance(data.get("id"), str):
            raise RetryableError("replicate sent no prediction", code="invalid_response")
        return data

    async def get(self, prediction_id: str) -> dict[str, Any]:
        """The prediction, read (with retries)."""
        return await call_with_retries(
            lambda: self.call("GET", f"/v1/predictions/{prediction_id}"),
            policy=self._policy,
            what="replicate.get",
        )

    async def pages(
        self, params: dict[str, str], limit: int
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The account's predictions (``GET /v1/predictions`` with ``params``), newest first, a
        page (100) at a time, at most ``limit`` pages; each page read with retries. A ``next``
        on another host than the API's is not followed: the token would go there."""
        url: str | None = "/v1/predictions"
        query: dict[str, str] | None = params
        for _ in range(limit):
            if url is None:
                return
            page = await call_with_retries(
                functools.partial(self.request, "GET", url, params=query),
                policy=self._policy,
                what="replicate.list",
            )
            yield [p for p in page.get("results") or [] if isinstance(p, dict)]
            following = page.get("next")
            url, query = (following, None) if self._ours(following) else (None, None)

    def _ours(self, url: object) -> bool:
        if not isinstance(url, str):
            return False
        parts = urlsplit(url)
        base = self._client.base_url
        return parts.scheme == base.scheme and parts.netloc == base.netloc.decode()


@dataclass
class _Awaited:
    """A prediction the sweep looks for: when it was created, and who waits for it."""

    created_at: datetime
    woken: set[asyncio.Event] = field(default_factory=set)


class PredictionSweep:
    """The slow poll under webhooks, once for every prediction this process awaits.

    A webhook can be lost, so a prediction awaited on its webhook must still be read now and
    then. Read one by one, that is a request per prediction per period: at 4,000 predictions
    in flight and a 30 s period, 134 requests a second only to learn that nothing ended. The
    sweep instead lists the account's predictions created since the oldest one awaited
    (``GET /v1/predictions?created_after=``, 100 a page, newest first), every ``period_s``,
    and wakes the waiters of those it finds ended: 40 requests a period for the same 4,000. A
    pass stops once it has seen every awaited id, or after :data:`SWEEP_PAGES` pages.

    A pass that fails (the list endpoint down, past its retries) wakes every waiter, and one
    that ends without seeing a prediction wakes that one's: each then reads its prediction
    itself, so an outage of the list costs the per-prediction slow poll, never a lost wake-up.
    Passes run in a task of their own, started by the first :meth:`track` and ended when no
    prediction is awaited.
    """

    def __init__(self, api: ReplicateAPI, period_s: float) -> None:
        self._api = api
        self._period_s = period_s
        self._awaited: dict[str, _Awaited] = {}
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def track(
        self, prediction_id: str, created_at: datetime, woken: asyncio.Event
    ) -> Iterator[None]:
        """Set ``woken`` when a pass finds ``prediction_id`` ended, or could not look, while the
        block runs."""
        awaited = self._awaited.setdefault(prediction_id, _Awaited(created_at))
        awaited.created_at = min(awaited.created_at, created_at)
        awaited.woken.add(woken)
        if self._task is None:
            with tracing.detached():  # the sweep serves every job: it is none's span
                self._task = asyncio.create_task(self._run(), name="replicate-sweep")
        try:
            yield
        finally:
            awaited.woken.discard(woken)
            if not awaited.woken:
                del self._awaited[prediction_id]

    async def _run(self) -> None:
        try:
            while self._awaited:
                await asyncio.sleep(self._period_s)
                awaited = list(self._awaited)
                try:
                    unseen = await self.sweep()
                except Exception as exc:  # every waiter must hear of it, whatever it was
                    log.warning("prediction_sweep_failed", error=getattr(exc, "code", repr(exc)))
                    unseen = set(awaited)
                self._wake(unseen)
        finally:
            self._task = None

    async def sweep(self) -> set[str]:
        """One pass: wake the waiters of every awaited prediction found ended; the ids of
        those it did not find."""
        if not self._awaited:
            return set()
        oldest = min(awaited.created_at for awaited in self._awaited.values())
        unseen = set(self._awaited)
        params = {"created_after": (oldest - CLOCK_SKEW).isoformat()}
        async for page in self._api.pages(params, SWEEP_PAGES):
            for prediction in page:
                ident = str(prediction.get("id"))
                if ident in unseen:
                    unseen.discard(ident)
                    if prediction.get("status") in PREDICTION_ENDED:
                        self._wake([ident])
            if not unseen:
                break
        return unseen

    def _wake(self, prediction_ids: Iterable[str]) -> None:
        for ident in prediction_ids:
            awaited = self._awaited.get(ident)
            for event in awaited.woken if awaited is not None else ():
                event.set()

    async def aclose(self) -> None:
        """Stop the pass in progress, if any."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class ReplicateVideoProvider:
    """A :class:`~videoq.providers.ResumableVideoProvider` on Replicate, buying from ``model``
    (one of ``settings.replicate_models``; ``replicate_version`` pins ``replicate_model``
    only)."""

    #: Its calls are paid for: the pipeline reserves them against the tenant's budget.
    paid = True

    def __init__(
        self,
        client: httpx.AsyncClient,
        settings: Settings,
        *,
        model: str,
        limiter: Limiter,
        policy: RetryPolicy,
        watch: PredictionWatch | None = None,
        sweep: PredictionSweep | None = None,
    ) -> None:
        self._client = client
        self._settings = settings
        self.model = model
        self._version = settings.replicate_version if model == settings.replicate_model else None
        self._limiter = limiter
        self._policy = policy
        self._api = ReplicateAPI(client, settings, policy)
        self._watch = watch
        self._sweep = sweep
        hook = settings.replicate_webhook_url
        #: Sent with each create, beside the body (not part of the work's fingerprint).
        self._webhook = {"webhook": hook, "webhook_events_filter": ["completed"]} if hook else {}

    def request_body(self, scene: Scene, index: int, brief: Brief) -> dict[str, Any]:
        """The create request's JSON body for a scene."""
        model_input = {
            "prompt": scene.visual_prompt,
            "aspect_ratio": brief.aspect_ratio,
            "duration": max(1, math.ceil(scene.duration_s)),
            **self._settings.replicate_input,
        }
        body: dict[str, Any] = {"input": model_input}
        if self._version:
            body["version"] = self._version
        return body

    def usage(self, scene: Scene) -> dict[str, Any]:
        return prices.scene_usage(self._settings, scene, self.model)

    def work_fingerprint(self, scene: Scene, index: int, brief: Brief) -> str:
        body = self.request_body(scene, index, brief)
        canonical = json.dumps({"model": self.model, "body": body}, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]

    async def render_scene(self, scene: Scene, index: int, brief: Brief, out_dir: Path) -> Path:
        """The plain :class:`~videoq.providers.VideoProvider` call (nothing noted)."""

        async def ignore(_: dict[str, Any]) -> None:
            return None

        work = PaidWork(previous={}, claimed=frozenset(), note=ignore)
        return (await self.render_clip(scene, index, brief, out_dir, work=work)).path

    async def render_clip(
        self, scene: Scene, index: int, brief: Brief, out_dir: Path, *, work: PaidWork
    ) -> Clip:
        body = self.request_body(scene, index, brief)
        async with self._limiter.slot():
            prediction = await self._recover(work, body)
            if prediction is None:
                since = datetime.now(UTC).isoformat()
                await work.note({"since": since, "id": None})
                prediction = await self._create(body, since, work.claimed)
                await work.note({"id": str(prediction["id"])})
                log.info("prediction_created", prediction_id=prediction["id"], scene=index)
            prediction = await self._wait(prediction)
        url = output_url(prediction)
        suffix = Path(urlsplit(url).path).suffix.lower()
        path = out_dir / f"scene_{index:02d}{suffix if suffix in VIDEO_SUFFIXES else '.mp4'}"
        await call_with_retries(
            lambda: self._download(url, path), policy=self._policy, what="replicate.download"
        )
        metrics = prediction.get("metrics") or {}
        cost: dict[str, Any] = {
            "provider": "replicate",
            "model": self.model,
            "prediction_id": prediction["id"],
            "video_s": round(scene.duration_s, 3),
        }
        if isinstance(metrics.get("predict_time"), int | float):
            cost["predict_time_s"] = float(metrics["predict_time"])
        return Clip(path=path, cost=cost, work_id=str(prediction["id"]))

    async def cancel_work(self, work_ids: list[str]) -> None:
        async def cancel(prediction_id: str) -> None:
            try:
                await self._api.call("POST", f"/v1/predictions/{prediction_id}/cancel")
            except ProviderError as exc:
                log.warning("prediction_cancel_failed", prediction_id=prediction_id, error=exc.code)
            else:
                log.info("prediction_cancelled", prediction_id=prediction_id)

        await asyncio.gather(*(cancel(ident) for ident in work_ids))

    async def _recover(self, work: PaidWork, body: dict[str, Any]) -> dict[str, Any] | None:
        """The prediction an earlier attempt bought for this scene, if it can still deliver."""
        noted = work.previous.get("id")
        if isinstance(noted, str) and noted:
            return await self._attach(noted)
        since = work.previous.get("since")
        if isinstance(since, str):
            return await self._find(body, since, work.claimed)
        return None

    async def _attach(self, prediction_id: str) -> dict[str, Any] | None:
        """The recorded prediction if it can still deliver its clip, else None."""
        try:
            prediction = await self._api.get(prediction_id)
        except PermanentError as exc:  # 404: not ours, or long gone
            log.warning("prediction_reattach_failed", prediction_id=prediction_id, error=exc.code)
            return None
        if not reusable(prediction):
            log.warning(
                "prediction_not_reusable",
                prediction_id=prediction_id,
                status=prediction.get("status"),
            )
            return None
        log.info("prediction_reattached", prediction_id=prediction_id)
        return prediction

    async def _create(
        self, body: dict[str, Any], since: str, claimed: frozenset[str]
    ) -> dict[str, Any]:
        """Create a prediction. Retried here on 429/5xx and lost connections (the Replicate SDK
        never retries a POST); a retry after a failure that may have reached Replicate (a
        timeout, a lost connection, a 5xx) first looks for the prediction the failed try may
        have made (:meth:`_find`), so it is not bought twice. Past its retries, once more: a
        create that found nothing raises :class:`~videoq.errors.Declined` (nothing bought;
        the stage may switch models), one that could not look raises its last error."""
        if self._version:
            url = "/v1/predictions"
        else:
            owner, _, name = self.model.partition("/")
            url = f"/v1/models/{owner}/{name}/predictions"
        headers = {"Cancel-After": self._settings.replicate_cancel_after}
        failed: list[ProviderError] = []

        async def once() -> dict[str, Any]:
            if failed and failed[-1].code in MAYBE_DONE:
                found = await self._find(body, since, claimed)
                if found is not None:
                    return found
            try:
                return await self._api.call(
                    "POST", url, json={**body, **self._webhook}, headers=headers
                )
            except ProviderError as exc:
                failed.append(exc)
                raise

        try:
            return await call_with_retries(once, policy=self._policy, what="replicate.create")
        except RetryableError as exc:
            if exc.code in MAYBE_DONE:
                try:
                    found = await self._find(body, since, claimed)
                except ProviderError:
                    raise exc from None  # it may have bought: not a decline, no switch
                if found is not None:
                    return found
            raise Declined(exc.message, code=exc.code, retry_after_s=exc.retry_after_s) from exc

    async def _find(
        self, body: dict[str, Any], since: str, claimed: frozenset[str]
    ) -> dict[str, Any] | None:
        """A prediction of this account created after ``since`` (less the clock skew) with
        exactly ``body``'s input and model, held by no other scene, that can still deliver;
        None when the first :data:`SEARCH_PAGES` pages (newest first) hold none."""
        try:
            after = datetime.fromisoformat(since) - CLOCK_SKEW
        except ValueError:
            return None
        async for page in self._api.pages({"created_after": after.isoformat()}, SEARCH_PAGES):
            for prediction in page:
                if (
                    prediction.get("id") not in claimed
                    and prediction.get("input") == body["input"]
                    and self._same_model(prediction)
                    and reusable(prediction)
                ):
                    log.info("prediction_found", prediction_id=prediction.get("id"))
                    return prediction
        return None

    def _same_model(self, prediction: dict[str, Any]) -> bool:
        if self._version:
            return prediction.get("version") == self._version.rpartition(":")[2]
        return prediction.get("model") == self.model

    async def _wait(self, prediction: dict[str, Any]) -> dict[str, Any]:
        """The prediction once it ended, with its output."""
        if prediction.get("status") not in PREDICTION_ENDED:
            if self._watch is not None and self._webhook:
                prediction = await self._await_webhook(self._watch, str(prediction["id"]))
            else:
                prediction = await self._poll(prediction)
        if prediction["status"] != "succeeded":
            raise outcome_error(prediction)
        if prediction.get("data_removed"):
            raise RetryableError(
                f"prediction {prediction['id']} output was already deleted", code="output_expired"
            )
        return prediction

    async def _poll(self, prediction: dict[str, Any]) -> dict[str, Any]:
        """Read the prediction until it ends, each interval longer than the last (capped)."""
        delay = self._settings.replicate_poll_s
        while prediction.get("status") not in PREDICTION_ENDED:
            await self._policy.sleep(delay)
            delay = min(self._settings.replicate_poll_max_s, delay * 1.5)
            prediction = await self._api.get(str(prediction["id"]))
        return prediction

    async def _await_webhook(self, watch: PredictionWatch, prediction_id: str) -> dict[str, Any]:
        """Read the prediction each time its webhook is announced, or the process's sweep
        finds it ended (or could not look), until it ends; without a sweep, read it too after
        each ``replicate_webhook_poll_s`` with no webhook."""
        with watch.expect(prediction_id) as woken, contextlib.ExitStack() as tracking:
            # Read once after the waiter is in place: a webhook that came before (between the
            # create's answer and now) is not missed, one that comes later wakes it.
            prediction = await self._api.get(prediction_id)
            created = _created_at(prediction)
            patience: float | None = self._settings.replicate_webhook_poll_s
            if self._sweep is not None and created is not None:
                tracking.enter_context(self._sweep.track(prediction_id, created, woken))
                patience = None  # the sweep wakes it: ended, or a pass could not tell
            while prediction.get("status") not in PREDICTION_ENDED:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(patience):
                        await woken.wait()
                woken.clear()  # before the read: a wake-up during it wakes the next wait
                prediction = await self._api.get(prediction_id)
        return prediction

    async def _download(self, url: str, path: Path) -> None:
        """Stream ``url`` into ``path`` (atomically), refusing more than max_download_bytes."""
        limit = self._settings.max_download_bytes
        if url.startswith("data:"):
            header, _, payload = url.partition(",")
            try:
                data = (
                    base64.b64decode(payload, validate=True)
                    if header.endswith(";base64")
                    else unquote_to_bytes(payload)
                )
            except binascii.Error as exc:
                raise PermanentError("invalid data: URL output", code="invalid_output") from exc
            if len(data) > limit:
                raise PermanentError(f"clip exceeds {limit} bytes", code="file_too_large")
            with atomic_output(path) as tmp:
                tmp.write_bytes(data)
            return
        same_host = urlsplit(url).netloc in ("", self._client.base_url.netloc.decode())
        headers = self._api.auth if same_host else {}
        try:
            async with self._client.stream("GET", url, headers=headers) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise error_for(response)
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > limit:
                    raise PermanentError(f"clip exceeds {limit} bytes", code="file_too_large")
                received = 0
                with atomic_output(path) as tmp, tmp.open("wb") as out:
                    async for chunk in response.aiter_bytes(CHUNK):
                        received += len(chunk)
                        if received > limit:
                            raise PermanentError(
                                f"clip exceeds {limit} bytes", code="file_too_large"
                            )
                        out.write(chunk)
        except httpx.TransportError as exc:
            raise transport_error("replicate", exc) from exc


__all__ = ["ReplicateVideoProvider", "error_for", "make_client", "output_url", "reusable"]
