"""A mock of the Replicate predictions API, checked against the spec.

Each created prediction takes the next entry of ``outcomes`` (default ``succeeded``) and runs
for ``latency`` seconds from its create. A create with ``Prefer: wait`` is held that long; with
``polls == 0`` the prediction has then finished. Otherwise it comes back ``starting`` and
reaches its outcome at the first GET after both its run time and ``polls`` GETs
(``processing`` in between). ``GET /v1/predictions`` lists them newest first, a page at a
time, filtered by ``created_after``. Succeeded outputs are URLs served by the mock itself.

A create naming a ``webhook`` (for ``completed`` events, or all events) instead ends by itself
once its run time is over, or when :meth:`ReplicateMock.complete` ends it; its webhook is then
POSTed, signed with ``webhook_secret`` as Replicate signs them (Standard Webhooks), unless
``send_webhooks`` is off. A model named in ``down`` answers every create on its route with
its fault (a 503 from :func:`unavailable`: a model at capacity). Call
:meth:`ReplicateMock.aclose` when done.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.mocks import media, spec
from tests.mocks.base import MockProvider, Reply
from videoq import signing

CREATE = "/predictions"
CREATE_FOR_MODEL = "/models/{model_owner}/{model_name}/predictions"
GET = "/predictions/{prediction_id}"
LIST = "/predictions"
PAGE = 100
CANCEL_AFTER = re.compile(r"^(\d+h)?(\d+m)?(\d+s?)?$")


def problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> Reply:
    """An RFC 7807 error, as Replicate sends them."""
    body = {"title": title, "detail": detail, "status": status}
    return Reply(status, body, headers or {}, media_type="application/problem+json")


def throttled(retry_after: str | None = None) -> Reply:
    headers = {"retry-after": retry_after} if retry_after else {}
    return problem(429, "Request was throttled",
                   "Request was throttled. Your rate limit resets in ~30s.", headers)  # fmt: skip


def unauthenticated() -> Reply:
    return problem(401, "Unauthenticated", "You did not pass a valid authentication token")


def invalid_input() -> Reply:
    return problem(422, "Input validation failed", "input.prompt: Invalid type. Expected: string")


def server_error() -> Reply:
    return problem(500, "Internal Server Error", "Something went wrong")


def unavailable() -> Reply:
    return problem(503, "Service Unavailable", "The model is at capacity. Try again later.")


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


@dataclass
class Prediction:
    id: str
    model: str
    version: str
    input: dict[str, Any]
    outcome: str
    polls_left: int
    status: str = "starting"
    #: When its run ends (monotonic): GETs before then find it processing.
    ready_at: float = 0.0
    created_at: str = field(default_factory=_now)
    completed_at: str | None = None
    data_removed: bool = False
    #: Where its ``completed`` webhook goes, and the API root its body's URLs name.
    webhook: str | None = None
    base: str = ""


class ReplicateMock(MockProvider):
    def __init__(
        self,
        *,
        key: str = "r8_test",
        latency: float = 0.0,
        polls: int = 0,
        wait: bool = True,
        webhook_secret: str | None = None,
    ) -> None:
        super().__init__(key=key, latency=latency)
        self.polls = polls
        self.webhook_secret = webhook_secret
        #: Off: predictions asking for a webhook still end, but none is sent.
        self.send_webhooks = True
        #: On: a create asking for a webhook ends its prediction and sends the webhook before
        #: it answers (with the prediction as it was created), as a prediction finishing while
        #: its create's answer is on the way would.
        self.webhook_before_answer = False
        #: The status each webhook delivery was answered with.
        self.deliveries: list[int] = []
        self._timers: set[asyncio.Task[None]] = set()
        self._sender: httpx.AsyncClient | None = None
        # Thousands of deliveries queued in one httpx pool cost it quadratic time (httpcore
        # walks its whole queue per freed connection): a few at a time, as a sender would.
        self._sending = asyncio.Semaphore(32)
        self.outcomes: deque[str] = deque()
        #: Faults for GET /v1/predictions/{id} (``faults`` answers creates).
        self.get_faults: deque[Reply] = deque()
        #: What every create of a model (``owner/name``, by its own route) is answered with,
        #: once ``faults`` are spent: a model that is down.
        self.down: dict[str, Reply] = {}
        self.predictions: dict[str, Prediction] = {}
        self.prefer: list[str | None] = []
        #: Predictions created and not yet finished, now and at most.
        self.running = 0
        self.peak_running = 0
        self.checkers = {
            CREATE: spec.request_validator("replicate", CREATE, "post"),
            CREATE_FOR_MODEL: spec.request_validator("replicate", CREATE_FOR_MODEL, "post"),
        }
        self.response_checker = spec.response_validator("replicate", GET, "get", "200")
        self.list_checker = spec.response_validator("replicate", LIST, "get", "200")
        prefer = spec.parameter("replicate", CREATE, "post", "Prefer")
        self.prefer_pattern = re.compile(prefer["schema"]["pattern"])
        self.app = Starlette(
            routes=[
                Route("/v1/predictions", self.create, methods=["POST"]),
                Route("/v1/predictions", self.list, methods=["GET"]),
                Route("/v1/models/{owner}/{name}/predictions", self.create, methods=["POST"]),
                Route("/v1/predictions/{prediction_id}", self.get, methods=["GET"]),
                Route("/v1/predictions/{prediction_id}/cancel", self.cancel, methods=["POST"]),
                Route("/files/{name}", self.download, methods=["GET"]),
            ]
        )

    def authorised(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.key}"

    async def create(self, request: Request) -> Response:
        arrived = time.monotonic()
        with self.tracking("create"):
            if not self.authorised(request):
                return unauthenticated().response()
            prefer = request.headers.get("prefer")
            self.prefer.append(prefer)
            if prefer is not None and not self.prefer_pattern.match(prefer):
                self.reject(f"Prefer header {prefer!r} does not match the spec's pattern")
                return problem(400, "Invalid Prefer header", prefer).response()
            cancel_after = request.headers.get("cancel-after")
            if cancel_after is not None and not CANCEL_AFTER.match(cancel_after):
                self.reject(f"Cancel-After {cancel_after!r} is not a duration")
                return problem(400, "Invalid Cancel-After header", cancel_after).response()
            try:
                body: Any = await request.json()
            except ValueError:
                self.reject("body is not JSON")
                return invalid_input().response()
            self.bodies.append(body)
            route = CREATE if "owner" not in request.path_params else CREATE_FOR_MODEL
            error = spec.errors(self.checkers[route], body)
            if error is not None:
                self.reject(error)
                return problem(422, "Invalid request body", error).response()
            fault = self.take_fault()
            if fault is not None:
                return fault
            if route == CREATE:
                model, version = "owner/model", str(body["version"]).rpartition(":")[2]
            else:
                model = f"{request.path_params['owner']}/{request.path_params['name']}"
                version = "hidden"
                if model in self.down:
                    return self.down[model].response()
            prediction = Prediction(
                id=secrets.token_hex(13)[:26],
                model=model,
                version=version,
                input=body["input"],
                outcome=self.outcomes.popleft() if self.outcomes else "succeeded",
                polls_left=self.polls,
                ready_at=arrived + self.latency,
                webhook=body.get("webhook")
                if "completed" in body.get("webhook_events_filter", ["completed"])
                else None,
                base=str(request.base_url).rstrip("/"),
            )
            self.predictions[prediction.id] = prediction
            if prediction.webhook is not None:
                timer = asyncio.create_task(self._end_on_time(prediction))
                self._timers.add(timer)
                timer.add_done_callback(self._timers.discard)
            self.paid += 1
            self.running += 1
            self.peak_running = max(self.peak_running, self.running)
            if prefer is not None and prediction.polls_left == 0:
                self.finish(prediction)  # done within the wait: the model ran meanwhile
            status = 201 if prediction.status in ("succeeded", "failed", "canceled") else 202
            response = self.respond(request, prediction, status)
            if self.webhook_before_answer:
                await self.complete(prediction.id)
            if prefer is not None:
                await self.delay(arrived)  # the request is held while the model runs
            return response

    async def get(self, request: Request) -> Response:
        with self.tracking("get"):
            if not self.authorised(request):
                return unauthenticated().response()
            prediction = self.predictions.get(request.path_params["prediction_id"])
            if prediction is None:
                return problem(404, "Not found", "The requested resource could not be found.",
                               ).response()  # fmt: skip
            if self.get_faults:
                return self.get_faults.popleft().response()
            if prediction.status in ("starting", "processing"):
                running = time.monotonic() < prediction.ready_at
                prediction.polls_left -= 0 if running else 1
                if prediction.webhook is None and prediction.polls_left <= 0 and not running:
                    self.finish(prediction)
                else:
                    prediction.status = "processing"
            return self.respond(request, prediction, 200)

    async def list(self, request: Request) -> Response:
        """``GET /v1/predictions``: newest first, ``PAGE`` a page, ``created_after`` applied."""
        with self.tracking("list"):
            if not self.authorised(request):
                return unauthenticated().response()
            after = request.query_params.get("created_after")
            try:
                since = _parse(after) if after else None
            except ValueError:
                self.reject(f"created_after {after!r} is not an ISO 8601 date-time")
                return problem(400, "Invalid created_after", str(after)).response()
            found = [
                p for p in reversed(self.predictions.values())
                if since is None or _parse(p.created_at) >= since
            ]  # fmt: skip
            start = int(request.query_params.get("cursor", "0"))
            page = found[start : start + PAGE]
            more = start + PAGE < len(found)
            base = str(request.url.replace(query=""))
            query = urlencode(
                {"cursor": start + PAGE, **({"created_after": after} if after else {})}
            )
            body = {
                "next": f"{base}?{query}" if more else None,
                "previous": None,
                "results": [self.body(_base(request), p) for p in page],
            }
            error = spec.errors(self.list_checker, body)
            if error is not None:
                self.reject(f"mock list response breaks the spec: {error}")
            return JSONResponse(body)

    async def cancel(self, request: Request) -> Response:
        with self.tracking("cancel"):
            prediction = self.predictions.get(request.path_params["prediction_id"])
            if prediction is None or not self.authorised(request):
                return problem(404, "Not found", "no such prediction").response()
            if prediction.status in ("starting", "processing"):
                prediction.outcome = "canceled"
                self.finish(prediction)
            return self.respond(request, prediction, 200)

    async def complete(self, prediction_id: str) -> None:
        """End a running prediction that asked for a webhook now, and send its webhook."""
        prediction = self.predictions[prediction_id]
        if prediction.status in ("starting", "processing"):
            self.finish(prediction)
            await self._deliver(prediction)

    async def _end_on_time(self, prediction: Prediction) -> None:
        await asyncio.sleep(max(0.0, prediction.ready_at - time.monotonic()))
        await self.complete(prediction.id)

    async def _deliver(self, prediction: Prediction) -> None:
        if not self.send_webhooks or prediction.webhook is None:
            return
        assert self.webhook_secret is not None, "a webhook asked for, but no secret to sign it"
        if self._sender is None:
            self._sender = httpx.AsyncClient(timeout=30)
        async with self._sending:
            body = json.dumps(self.body(prediction.base, prediction)).encode()
            msg_id, stamp = f"msg_{secrets.token_hex(12)}", int(time.time())
            headers = {
                "content-type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(stamp),
                "webhook-signature": signing.sign(self.webhook_secret, msg_id, stamp, body),
            }
            try:
                response = await self._sender.post(
                    prediction.webhook, content=body, headers=headers
                )
            except httpx.TransportError:
                self.deliveries.append(0)
            else:
                self.deliveries.append(response.status_code)

    async def aclose(self) -> None:
        """Stop the predictions' timers and close the webhook sender."""
        for timer in list(self._timers):
            timer.cancel()
        await asyncio.gather(*self._timers, return_exceptions=True)
        if self._sender is not None:
            await self._sender.aclose()

    async def download(self, request: Request) -> Response:
        with self.tracking("download"):
            return Response(media.clip_mp4(), media_type="video/mp4")

    def finish(self, prediction: Prediction) -> None:
        if prediction.status in ("starting", "processing"):
            self.running -= 1
        prediction.status = prediction.outcome
        prediction.completed_at = _now()

    def body(self, base: str, prediction: Prediction) -> dict[str, Any]:
        """The prediction as the API rooted at ``base`` shows it."""
        done = prediction.status == "succeeded" and not prediction.data_removed
        errors = {"failed": "CUDA out of memory", "aborted": "deadline exceeded before start"}
        body: dict[str, Any] = {
            "id": prediction.id,
            "model": prediction.model,
            "version": prediction.version,
            "input": prediction.input,
            "output": f"{base}/files/{prediction.id}.mp4" if done else None,
            "data_removed": prediction.data_removed,
            "error": errors.get(prediction.status),
            "status": prediction.status,
            "created_at": prediction.created_at,
            "source": "api",
            "logs": "",
            "urls": {
                "web": f"https://replicate.com/p/{prediction.id}",
                "get": f"{base}/v1/predictions/{prediction.id}",
                "cancel": f"{base}/v1/predictions/{prediction.id}/cancel",
            },
        }
        if prediction.completed_at:
            body["completed_at"] = prediction.completed_at
            body["started_at"] = prediction.created_at
            body["metrics"] = {"predict_time": 1.5, "total_time": 1.6}
        return body

    def respond(self, request: Request, prediction: Prediction, status: int) -> Response:
        body = self.body(_base(request), prediction)
        error = spec.errors(self.response_checker, body)
        if error is not None:
            self.reject(f"mock response breaks the spec: {error}")
        return JSONResponse(body, status)
