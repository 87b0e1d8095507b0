"""Video from Replicate predictions, one per scene, over plain ``httpx``.

Why not the ``replicate`` SDK: 1.0.7 cannot read a prediction whose status is ``aborted``
(pydantic rejects it) and never retries a POST; both matter here, so predictions are read and
created directly (``POST /v1/predictions`` or ``/v1/models/{owner}/{name}/predictions``,
``GET /v1/predictions/{id}``).

Money is the point of this module. Each scene's create request carries ``Prefer: wait`` (most
clips finish within it) and ``Cancel-After`` (a runaway prediction stops by itself). The
prediction id is handed to ``on_submitted`` — the stage records it in PostgreSQL — *before*
anything waits on it, so a job that is retried, recovered after kill -9 or redeployed
re-attaches to the same prediction instead of buying the clip again. A recorded prediction
that ended without output (failed, canceled, aborted, or output already deleted) is not
re-attached: a new one is created. Outputs stream to a temporary file with a size limit and
are renamed into place only when complete.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes, urlsplit

import httpx
import structlog

from videoq.errors import PermanentError, ProviderError, RetryableError
from videoq.ffmpeg import atomic_output
from videoq.providers.http import (
    RetryPolicy,
    call_with_retries,
    classify,
    keepalive_limits,
    problem_message,
    transport_error,
)
from videoq.types import Clip, Scene

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from videoq.providers.limits import Limiter
    from videoq.settings import Settings
    from videoq.types import Brief

log = structlog.get_logger(__name__)

#: Prediction statuses after which a prediction changes no more (Replicate spells "canceled").
PREDICTION_ENDED = frozenset({"succeeded", "failed", "canceled", "aborted"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".webm", ".mkv", ".gif"})
CHUNK = 1 << 16


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
    ) -> None:
        self._client = client
        self._settings = settings
        self._limiter = limiter
        self._policy = policy
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
        """The plain :class:`~videoq.providers.VideoProvider` call (nothing recorded)."""

        async def ignore(_: str) -> None:
            return None

        clip = await self.render_clip(
            scene, index, brief, out_dir, attach_to=None, on_submitted=ignore
        )
        return clip.path

    async def render_clip(
        self,
        scene: Scene,
        index: int,
        brief: Brief,
        out_dir: Path,
        *,
        attach_to: str | None,
        on_submitted: Callable[[str], Awaitable[None]],
    ) -> Clip:
        async with self._limiter.slot():
            prediction = await self._attach(attach_to) if attach_to else None
            if prediction is None:
                prediction = await self._create(self.request_body(scene, index, brief))
                await on_submitted(str(prediction["id"]))
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

    async def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a prediction. Retried here on 429/5xx: the Replicate SDK never retries a POST.
        (A create that timed out after reaching Replicate may exist unseen; nothing in the API
        lets us find it, so that one case can cost a duplicate.)"""
        if self._settings.replicate_version:
            url = "/v1/predictions"
        else:
            owner, _, name = self._settings.replicate_model.partition("/")
            url = f"/v1/models/{owner}/{name}/predictions"
        wait = self._settings.replicate_wait_s
        headers = {
            **self._auth,
            "Prefer": f"wait={wait}",
            "Cancel-After": self._settings.replicate_cancel_after,
        }
        # The request is held open up to `wait` seconds: the read timeout must outlast it.
        timeout = httpx.Timeout(self._settings.replicate_timeout_s + wait, connect=10.0)

        async def once() -> dict[str, Any]:
            return await self._call("POST", url, json=body, headers=headers, timeout=timeout)

        return await call_with_retries(once, policy=self._policy, what="replicate.create")

    async def _get(self, prediction_id: str) -> dict[str, Any]:
        async def once() -> dict[str, Any]:
            return await self._call("GET", f"/v1/predictions/{prediction_id}", headers=self._auth)

        return await call_with_retries(once, policy=self._policy, what="replicate.get")

    async def _call(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
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
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise RetryableError("replicate sent no prediction", code="invalid_response")
        return data

    async def _wait(self, prediction: dict[str, Any]) -> dict[str, Any]:
        """Poll until the prediction ends, each interval longer than the last (capped)."""
        delay = self._settings.replicate_poll_s
        while prediction.get("status") not in PREDICTION_ENDED:
            await self._policy.sleep(delay)
            delay = min(self._settings.replicate_poll_max_s, delay * 1.5)
            prediction = await self._get(str(prediction["id"]))
        if prediction["status"] != "succeeded":
            raise outcome_error(prediction)
        if prediction.get("data_removed"):
            raise RetryableError(
                f"prediction {prediction['id']} output was already deleted", code="output_expired"
            )
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
