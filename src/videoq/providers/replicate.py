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
webhook, read again each ``replicate_webhook_poll_s`` meanwhile. So a later attempt, on any
worker:

- with a noted id, re-attaches to that prediction while it runs or has its output;
- with a purchase noted as under way but no id (the worker died, or the connection broke,
  between the create reaching Replicate and its answer being noted), first looks for it among
  the account's predictions created since (``GET /v1/predictions?created_after=``), by its
  exact input and model, skipping ids the job's other scenes hold; a create retried after an
  ambiguous failure (a timeout, a 5xx) looks the same way before it buys again;
- buys anew only when neither finds a prediction that can still deliver (failed, canceled,
  aborted, or its output already deleted, an hour after it finished).

``Cancel-After`` on create stops a runaway prediction by itself; :meth:`cancel_work` stops the
ones of a job that failed or was cancelled. Outputs stream to a temporary file with a size
limit and are renamed into place only when complete.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes, urlsplit

import httpx
import structlog

from videoq.errors import PermanentError, ProviderError, RetryableError
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


class ReplicateVideoProvider:
    """A :class:`~videoq.providers.ResumableVideoProvider` on Replicate."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        settings: Settings,
        *,
        limiter: Limiter,
        policy: RetryPolicy,
        watch: PredictionWatch | None = None,
    ) -> None:
        self._client = client
        self._settings = settings
        self._limiter = limiter
        self._policy = policy
        self._watch = watch
        hook = settings.replicate_webhook_url
        #: Sent with each create, beside the body (not part of the work's fingerprint).
        self._webhook = {"webhook": hook, "webhook_events_filter": ["completed"]} if hook else {}
        token = settings.replicate_api_token
        self._auth = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}

    def request_body(self, scene: Scene, index: int, brief: Brief) -> dict[str, Any]:
        """The create request's JSON body for a scene."""
        model_input = {
            "prompt": scene.visual_prompt,
            "aspect_ratio": brief.aspect_ratio,
            "duration": max(1, math.ceil(scene.duration_s)),
            **self._settings.replicate_input,
        }
        body: dict[str, Any] = {"input": model_input}
        if self._settings.replicate_version:
            body["version"] = self._settings.replicate_version
        return body

    def work_fingerprint(self, scene: Scene, index: int, brief: Brief) -> str:
        body = self.request_body(scene, index, brief)
        canonical = json.dumps(
            {"model": self._settings.replicate_model, "body": body}, sort_keys=True
        )
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
        cost: dict[str, Any] = {"provider": "replicate", "prediction_id": prediction["id"]}
        if isinstance(metrics.get("predict_time"), int | float):
            cost["predict_time_s"] = float(metrics["predict_time"])
        return Clip(path=path, cost=cost, work_id=str(prediction["id"]))

    async def cancel_work(self, work_ids: list[str]) -> None:
        async def cancel(prediction_id: str) -> None:
            try:
                await self._call(
                    "POST", f"/v1/predictions/{prediction_id}/cancel", headers=self._auth
                )
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
            prediction = await self._get(prediction_id)
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
        have made (:meth:`_find`), so it is not bought twice."""
        if self._settings.replicate_version:
            url = "/v1/predictions"
        else:
            owner, _, name = self._settings.replicate_model.partition("/")
            url = f"/v1/models/{owner}/{name}/predictions"
        headers = {**self._auth, "Cancel-After": self._settings.replicate_cancel_after}
        failed: list[ProviderError] = []

        async def once() -> dict[str, Any]:
            if failed and failed[-1].code in MAYBE_DONE:
                found = await self._find(body, since, claimed)
                if found is not None:
                    return found
            try:
                return await self._call(
                    "POST", url, json={**body, **self._webhook}, headers=headers
                )
            except ProviderError as exc:
                failed.append(exc)
                raise

        return await call_with_retries(once, policy=self._policy, what="replicate.create")

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
        url: str | None = "/v1/predictions"
        params: dict[str, str] | None = {"created_after": after.isoformat()}
        for _ in range(SEARCH_PAGES):
            if url is None:
                break
            page = await self._list(url, params)
            for prediction in page.get("results") or []:
                if (
                    isinstance(prediction, dict)
                    and prediction.get("id") not in claimed
                    and prediction.get("input") == body["input"]
                    and self._same_model(prediction)
                    and reusable(prediction)
                ):
                    log.info("prediction_found", prediction_id=prediction.get("id"))
                    return prediction
            following = page.get("next")
            url, params = (following, None) if self._ours(following) else (None, None)
        return None

    def _same_model(self, prediction: dict[str, Any]) -> bool:
        if self._settings.replicate_version:
            return prediction.get("version") == self._settings.replicate_version.rpartition(":")[2]
        return prediction.get("model") == self._settings.replicate_model

    def _ours(self, url: object) -> bool:
        """Whether ``url`` (a list page's ``next``) is on the API's host: the token goes there."""
        if not isinstance(url, str):
            return False
        parts = urlsplit(url)
        base = self._client.base_url
        return parts.scheme == base.scheme and parts.netloc == base.netloc.decode()

    async def _list(self, url: str, params: dict[str, str] | None) -> dict[str, Any]:
        async def once() -> dict[str, Any]:
            return await self._object("GET", url, params=params, headers=self._auth)

        return await call_with_retries(once, policy=self._policy, what="replicate.list")

    async def _get(self, prediction_id: str) -> dict[str, Any]:
        async def once() -> dict[str, Any]:
            return await self._call("GET", f"/v1/predictions/{prediction_id}", headers=self._auth)

        return await call_with_retries(once, policy=self._policy, what="replicate.get")

    async def _call(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        """A request answered by one prediction."""
        data = await self._object(method, url, **kwargs)
        if not isinstance(data.get("id"), str):
            raise RetryableError("replicate sent no prediction", code="invalid_response")
        return data

    async def _object(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        """A request answered by a JSON object; failures classified."""
        try:
            response = await self._client.request(method, url, **kwargs)
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
            prediction = await self._get(str(prediction["id"]))
        return prediction

    async def _await_webhook(self, watch: PredictionWatch, prediction_id: str) -> dict[str, Any]:
        """Read the prediction each time its webhook is announced, and at the latest every
        ``replicate_webhook_poll_s``, until it ends."""
        with watch.expect(prediction_id) as announced:
            # Read once after the waiter is in place: a webhook that came before (between the
            # create's answer and now) is not missed, one that comes later wakes it.
            prediction = await self._get(prediction_id)
            while prediction.get("status") not in PREDICTION_ENDED:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._settings.replicate_webhook_poll_s):
                        await announced.wait()
                announced.clear()  # before the read: an announcement during it wakes the next
                prediction = await self._get(prediction_id)
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
        headers = self._auth if same_host else {}
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
