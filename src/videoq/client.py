"""The async SDK::

async with Client("http://127.0.0.1:8000", api_key) as c:
    job = await c.submit(product_name="Acme Mug", cta_text="Buy now")
    async for event in c.events(job.id):
        print(event.stage, event.progress)
    job = await c.wait(job.id)
    await c.download(job.id, "acme.mp4")

While the service answers 503 (its database is down or restarting), every call waits as its
``Retry-After`` asks (at most :data:`MAX_RETRY_WAIT_S` at a time) and tries again, for up to
the client's ``timeout``; then it raises :class:`ServerError`. ``submit`` always sends an
``Idempotency-Key`` (the caller's, or a new one per call), the same on every try, so a retried
create never makes a second job.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NoReturn
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from videoq.types import TERMINAL, JobStatus


class ApiError(Exception):
    """The API answered with an error: ``status`` (HTTP), ``code`` (stable), ``message``.

    Subclasses by status: :class:`AuthenticationError` (401), :class:`PermissionDenied` (403),
    :class:`NotFoundError` (404), :class:`ConflictError` (409), :class:`ValidationError` (422,
    ``details`` lists the bad fields), :class:`RateLimitError` (429, ``retry_after``),
    :class:`ServerError` (5xx).
    """

    def __init__(
        self, status: int, code: str, message: str, details: Any = None,
        retry_after: float | None = None,
    ) -> None:  # fmt: skip
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.retry_after = retry_after


class AuthenticationError(ApiError):
    """Missing, unknown or revoked API key."""


class PermissionDenied(ApiError):
    """The key lacks the scope (e.g. admin routes)."""


class NotFoundError(ApiError):
    """No such job for this tenant."""


class ConflictError(ApiError):
    """The job's state forbids the operation (e.g. cancelling a finished job)."""


class ValidationError(ApiError):
    """The request was refused; ``details`` names each bad field."""


class RateLimitError(ApiError):
    """Too many requests or queued jobs; wait ``retry_after`` seconds."""


class ServerError(ApiError):
    """The service failed or is unavailable (503: its database is down or restarting; the
    client already retried for its ``timeout``); safe to retry later."""


_ERRORS: dict[int, type[ApiError]] = {
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFoundError,
    409: ConflictError,
    422: ValidationError,
    429: RateLimitError,
}


#: The longest a client waits between two tries of a request the service answered 503 to,
#: whatever its ``Retry-After`` says.
MAX_RETRY_WAIT_S = 10.0
#: The wait when a 503 carries no usable ``Retry-After``, and the least wait whatever it says.
DEFAULT_RETRY_WAIT_S = 1.0
MIN_RETRY_WAIT_S = 0.1


def error_for(
    status: int, code: str, message: str, details: Any = None, retry_after: float | None = None
) -> ApiError:
    """The :class:`ApiError` subclass for an HTTP status."""
    cls = _ERRORS.get(status, ServerError if status >= 500 else ApiError)
    return cls(status, code, message, details, retry_after)


class JobError(BaseModel):
    code: str
    message: str
    retryable: bool = False


class JobResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    video_url: str
    #: The WebVTT captions (None when the brief turned them off).
    captions_url: str | None = None
    duration_s: float | None = None
    size_bytes: int | None = None
    #: The finished video's poster image (JPEG, the video's size).
    poster_url: str | None = None


class JobCost(BaseModel):
    """A job's cost in US dollars (``Job.cost``)."""

    model_config = ConfigDict(extra="allow")

    currency: str = "USD"
    estimated_usd: float | None = None
    #: Settled calls at their cost (on the job's own page; None in lists).
    actual_usd: float | None = None
    #: Calls in flight, at their reservation.
    reserved_usd: float | None = None
    calls: list[dict[str, Any]] = []


class Job(BaseModel):
    """A job as the API reports it."""

    model_config = ConfigDict(extra="allow")

    id: str
    status: JobStatus
    stage: str | None = None
    progress: float = 0.0
    priority: str = "normal"
    attempts: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker_id: str | None = None
    error: JobError | None = None
    result: JobResult | None = None
    #: While waiting: the jobs that go first, in fair order between tenants.
    queue_position: int | None = None
    #: While not finished: seconds until it should (None until the service has measured its
    #: stages).
    eta_s: float | None = None
    #: What it was estimated to cost at submit, and (on its own page) what its calls cost.
    cost: JobCost | None = None
    #: The video's version: 1, raised by each :meth:`Client.rerender`.
    version: int = 1
    #: What each re-render asked for (``version``, ``scene``, ``changed``, ...), oldest first.
    versions: list[dict[str, Any]] = []

    @property
    def done(self) -> bool:
        """True once the job has succeeded, failed or been cancelled."""
        return self.status in TERMINAL


class Preview(BaseModel):
    """What a ``preview`` event shows (:attr:`Event.preview`): the ``storyboard`` (its
    ``scenes``: ``index``, ``narration``, ``prompt``, ``start_s``, ``duration_s``) once the
    script is written, a scene's ``thumbnail`` as its clip lands, the finished video's
    ``poster``. ``url`` is where the API serves it (a path of the API unless the server has a
    public URL: :meth:`Client.image` takes either)."""

    model_config = ConfigDict(extra="allow")

    kind: Literal["storyboard", "thumbnail", "poster"]
    scene: int | None = None
    url: str
    version: int = 1
    width: int | None = None
    height: int | None = None
    title: str | None = None
    scenes: list[dict[str, Any]] = []


class Scene(BaseModel):
    """One scene of a job's video (``GET /v1/jobs/{id}/scenes``): its narration and visual
    prompt, where it starts and how long it runs, its thumbnail once its clip has landed
    (``thumbnail_url``), the version whose clip it shows, and what that clip cost (None when
    nothing was bought for it)."""

    model_config = ConfigDict(extra="allow")

    index: int
    narration: str
    prompt: str
    start_s: float
    duration_s: float
    thumbnail_url: str | None = None
    version: int = 1
    cost: float | None = None


class Event(BaseModel):
    """One progress event (DESIGN.md "Events")."""

    model_config = ConfigDict(extra="allow")

    job_id: str
    seq: int
    type: Literal["snapshot", "status", "stage", "progress", "preview", "log"]
    status: str
    stage: str | None = None
    progress: float = 0.0
    worker_id: str | None = None
    ts: datetime | None = None
    message: str | None = None
    #: On ``stage`` events: the job's ETA as the stage starts, when one could be estimated.
    eta_s: float | None = None
    #: On ``preview`` events: what it shows (see :attr:`preview`).
    data: dict[str, Any] | None = None

    @property
    def terminal(self) -> bool:
        """True for the event that ends the job's stream."""
        return self.type == "status" and self.status in TERMINAL

    @property
    def preview(self) -> Preview | None:
        """The preview a ``preview`` event carries (None for other events)."""
        if self.type != "preview" or self.data is None:
            return None
        return Preview.model_validate(self.data)


def describe_preview(event: Event) -> str | None:
    """One line for a person watching a job (``videoq submit --watch``): the storyboard's
    scenes, a thumbnail that landed, or the poster; None for other events."""
    shown = event.preview
    if shown is None:
        return None
    if shown.kind == "storyboard":
        lines = [f"storyboard: {len(shown.scenes)} scenes"]
        lines += [
            f"  scene {s.get('index')} ({s.get('start_s')}s, {s.get('duration_s')}s): "
            f"{s.get('narration')}"
            for s in shown.scenes
        ]
        return "\n".join(lines)
    if shown.kind == "thumbnail":
        return f"scene {shown.scene} landed: {shown.url}"
    return f"poster: {shown.url}"


class Interaction(BaseModel):
    """An end user's interaction with a finished video, as recorded."""

    model_config = ConfigDict(extra="allow")

    id: str
    user_id: str
    video_id: str
    type: str
    watched_s: float | None = None
    created_at: datetime | None = None


class FeedItem(BaseModel):
    """One video of a user's feed: ``existing_video`` (a finished video like what they liked)
    or ``generated_video`` (made for them; ``status`` is ``pending`` until its job succeeds,
    then ``ready`` with its ``video_url``)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["existing_video", "generated_video"]
    job_id: str
    status: Literal["ready", "pending"]
    similarity: float
    video_url: str | None = None


class ApiKey(BaseModel):
    """An API key as the API shows it: by its prefix. ``key`` is set only in the answer to
    :meth:`Client.create_key`, the one time the key is ever shown."""

    model_config = ConfigDict(extra="allow")

    id: str
    prefix: str
    tenant: str
    scope: Literal["tenant", "admin"]
    name: str | None = None
    created_at: datetime | None = None
    last_used_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    key: str | None = None


class Schedule(BaseModel):
    """A recurring job: ``job`` (a ``POST /v1/jobs`` body) submitted at every tick of
    ``cron`` in ``timezone``."""

    model_config = ConfigDict(extra="allow")

    id: str
    name: str | None = None
    cron: str
    timezone: str
    job: dict[str, Any]
    next_run_at: datetime
    last_tick_at: datetime | None = None
    last_job_id: str | None = None
    skipped_ticks: int = 0
    last_error: str | None = None
    created_at: datetime | None = None


class Client:
    """Async client for the videoq API. Use as ``async with Client(base_url, api_key) as c``.

    ``timeout`` bounds each HTTP request, and also how long a call keeps retrying while the
    service answers 503. ``transport`` is passed to httpx (e.g. ``httpx.ASGITransport(app)``
    in tests).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._api_key = api_key
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the underlying HTTP connections."""
        await self._http.aclose()

    async def _send(
        self, method: str, path: str, *, stream: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """The response to a request that succeeded; retried while the service answers 503
        (see the module's docstring), and any error raised as :class:`ApiError`. With
        ``stream`` the body is left unread: the caller closes the response."""
        request = self._http.build_request(method, path, **kwargs)
        deadline = time.monotonic() + self.timeout
        while True:
            response = await self._http.send(request, stream=stream)
            if not response.is_error:
                return response
            await response.aread()
            await response.aclose()
            wait = _retry_wait(response)
            if response.status_code != 503 or time.monotonic() + wait > deadline:
                _raise(response)
            await asyncio.sleep(wait)

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._send(method, path, **kwargs)
        return response.json()

    async def submit(self, *, idempotency_key: str | None = None, **fields: Any) -> Job:
        """Create a job from a brief (``product_name``, ``style``, ``cta_text``, ``duration_s``,
        ``aspect_ratio``, …, as in ``POST /v1/jobs``). Sent with ``idempotency_key``, or a
        new random one: a retry of this call (by the client or by the caller, with the same
        key) returns the same job."""
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        return Job.model_validate(
            await self._request("POST", "/v1/jobs", json=fields, headers=headers)
        )

    async def get(self, job_id: str) -> Job:
        """The job's current state."""
        return Job.model_validate(await self._request("GET", f"/v1/jobs/{job_id}"))

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued, scheduled or running job (a finished one raises ApiError 409).
        Retried on 503 without a key: should the first try have landed after all, the repeat
        is a 409, never a second cancel."""
        return Job.model_validate(await self._request("POST", f"/v1/jobs/{job_id}/cancel"))

    async def retry(self, job_id: str) -> Job:
        """Requeue a failed or cancelled job; it resumes after its last checkpoint. Retried on
        503 without a key: should the first try have landed after all, the repeat is a 409,
        never a second requeue."""
        return Job.model_validate(await self._request("POST", f"/v1/jobs/{job_id}/retry"))

    async def estimate(self, **fields: Any) -> dict[str, Any]:
        """What a brief (the fields of :meth:`submit`) would cost, per stage, in US dollars
        (``POST /v1/estimates``: ``currency``, ``total``, ``stages``); nothing is queued."""
        data: dict[str, Any] = await self._request("POST", "/v1/estimates", json=fields)
        return data

    async def usage(self, tenant: str | None = None) -> dict[str, Any]:
        """The tenant's spend today and this month, by stage and provider (another tenant's
        needs an admin key)."""
        params = {"tenant": tenant} if tenant else None
        data: dict[str, Any] = await self._request("GET", "/v1/usage", params=params)
        return data

    async def interact(
        self,
        user_id: str,
        video_id: str,
        type: Literal["view", "like", "save", "share", "skip"],
        *,
        watched_s: float | None = None,
        idempotency_key: str | None = None,
    ) -> Interaction:
        """Record that the tenant's end user ``user_id`` viewed, liked, saved, shared or
        skipped the finished video ``video_id`` (a succeeded job). Sent with
        ``idempotency_key``, or a new random one: a retry of this call records it once."""
        body: dict[str, Any] = {"user_id": user_id, "video_id": video_id, "type": type}
        if watched_s is not None:
            body["watched_s"] = watched_s
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        return Interaction.model_validate(
            await self._request("POST", "/v1/interactions", json=body, headers=headers)
        )

    async def feed(self, user_id: str, *, page_size: int = 20) -> AsyncIterator[FeedItem]:
        """The user's feed, best first, fetched page by page."""
        cursor: str | None = None
        path = f"/v1/users/{quote(user_id, safe='')}/feed"
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if cursor:
                params["cursor"] = cursor
            page = await self._request("GET", path, params=params)
            for item in page["data"]:
                yield FeedItem.model_validate(item)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def preferences(self, user_id: str) -> dict[str, Any]:
        """The user's interaction count, when their preference was last computed, and the
        briefs written for them."""
        data: dict[str, Any] = await self._request(
            "GET", f"/v1/users/{quote(user_id, safe='')}/preferences"
        )
        return data

    async def workers(self) -> list[dict[str, Any]]:
        """Registered workers (admin key)."""
        data: list[dict[str, Any]] = (await self._request("GET", "/v1/workers"))["data"]
        return data

    async def queue_stats(self) -> dict[str, Any]:
        """Counts per status, oldest queued age, recent throughput (admin key)."""
        data: dict[str, Any] = await self._request("GET", "/v1/queue/stats")
        return data

    async def create_key(
        self,
        tenant: str,
        *,
        scope: Literal["tenant", "admin"] = "tenant",
        name: str | None = None,
        expires_at: datetime | str | None = None,
    ) -> ApiKey:
        """Create an API key for ``tenant`` (admin key): its ``key`` is in the answer and
        never shown again. ``expires_at`` (ISO 8601, or an aware datetime) ends it by itself."""
        body: dict[str, Any] = {"tenant": tenant, "scope": scope}
        if name is not None:
            body["name"] = name
        if expires_at is not None:
            body["expires_at"] = (
                expires_at.isoformat() if isinstance(expires_at, datetime) else expires_at
            )
        return ApiKey.model_validate(await self._request("POST", "/v1/keys", json=body))

    async def keys(
        self, *, tenant: str | None = None, include_revoked: bool = False
    ) -> list[ApiKey]:
        """API keys, newest first, by prefix (admin key)."""
        params: dict[str, Any] = {"include_revoked": "true" if include_revoked else "false"}
        if tenant is not None:
            params["tenant"] = tenant
        page = await self._request("GET", "/v1/keys", params=params)
        return [ApiKey.model_validate(item) for item in page["data"]]

    async def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke a key by its id or 10-character prefix (admin key); every API process refuses
        it from the next request on. The last working admin key cannot be revoked (409)."""
        return ApiKey.model_validate(
            await self._request("DELETE", f"/v1/keys/{quote(key_id, safe='')}")
        )

    async def create_schedule(
        self, cron: str, *, timezone: str = "UTC", name: str | None = None, **fields: Any
    ) -> Schedule:
        """A recurring job: the brief ``fields`` (as for :meth:`submit`, without ``run_at`` or
        ``delay_s``) submitted as a job at every tick of ``cron`` (five fields, or ``@daily``
        and the like) read in the IANA ``timezone``."""
        body = {**fields, "cron": cron, "timezone": timezone}
        if name is not None:
            body["name"] = name
        return Schedule.model_validate(await self._request("POST", "/v1/schedules", json=body))

    async def schedule(self, schedule_id: str) -> Schedule:
        """One schedule of the caller's tenant."""
        path = f"/v1/schedules/{quote(schedule_id, safe='')}"
        return Schedule.model_validate(await self._request("GET", path))

    async def schedules(self, *, page_size: int = 50) -> AsyncIterator[Schedule]:
        """The caller's tenant's schedules, newest first, fetched page by page."""
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if cursor:
                params["cursor"] = cursor
            page = await self._request("GET", "/v1/schedules", params=params)
            for item in page["data"]:
                yield Schedule.model_validate(item)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def delete_schedule(self, schedule_id: str) -> None:
        """Delete a schedule; the jobs it made stay."""
        response = await self._send("DELETE", f"/v1/schedules/{quote(schedule_id, safe='')}")
        await response.aclose()

    async def list(self, *, status: str | None = None, page_size: int = 50) -> AsyncIterator[Job]:
        """Every job of the caller's tenant, newest first, fetched page by page."""
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if status:
                params["status"] = status
            if cursor:
                params["cursor"] = cursor
            page = await self._request("GET", "/v1/jobs", params=params)
            for item in page["data"]:
                yield Job.model_validate(item)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def events(self, job_id: str, *, after: int | None = None) -> AsyncIterator[Event]:
        """The job's events, starting with a snapshot, until the terminal one. Reconnects by
        itself with ``after=`` the last seen ``seq``, so no event is missed or repeated."""
        ws_base = "ws" + self.base_url.removeprefix("http")
        headers = {"Authorization": f"Bearer {self._api_key}"}
        last = after
        failures = 0
        while True:
            url = f"{ws_base}/v1/jobs/{job_id}/events"
            if last is not None:
                url += f"?after={last}"
            try:
                async with connect(url, additional_headers=headers, open_timeout=10) as ws:
                    async for raw in ws:
                        event = Event.model_validate(json.loads(raw))
                        failures = 0
                        if event.type != "snapshot" or last is None:
                            last = event.seq
                        yield event
                        if event.terminal:
                            return
                    code = ws.close_code
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
            except (OSError, InvalidStatus, TimeoutError):
                code = None
            if code == 1000:
                return  # the job had already ended
            if code in (4400, 4401, 4404):
                raise error_for(code - 4000, "websocket_refused", f"events refused ({code})")
            failures += 1
            if failures > 10:
                raise ServerError(503, "unavailable", "the events stream kept failing")
            await asyncio.sleep(min(0.2 * 2**failures, 5.0))

    async def wait(self, job_id: str, *, timeout: float | None = None) -> Job:
        """Wait until the job has succeeded, failed or been cancelled, and return it."""

        async def until_done() -> Job:
            async for _ in self.events(job_id):
                pass
            return await self.get(job_id)

        return await asyncio.wait_for(until_done(), timeout)

    async def scenes(self, job_id: str) -> builtins.list[Scene]:
        """The job's scenes (``GET /v1/jobs/{id}/scenes``), of its latest version: empty until
        the script is written; thumbnails appear as the clips land."""
        page = await self._request("GET", f"/v1/jobs/{job_id}/scenes")
        return [Scene.model_validate(item) for item in page["data"]]

    async def rerender(
        self,
        job_id: str,
        index: int,
        *,
        prompt: str | None = None,
        narration: str | None = None,
    ) -> Job:
        """Re-render scene ``index`` of a succeeded job with a new visual ``prompt`` and/or
        ``narration``: only that scene's clip is bought again (and the voice, when the
        narration changed), then the next version of the video is composited. Returns the
        job, requeued, its ``version`` raised; every earlier version stays downloadable
        (:meth:`download` with ``version``)."""
        body = _rerender_body(prompt, narration)
        return Job.model_validate(
            await self._request("POST", f"/v1/jobs/{job_id}/scenes/{index}/rerender", json=body)
        )

    async def rerender_estimate(
        self,
        job_id: str,
        index: int,
        *,
        prompt: str | None = None,
        narration: str | None = None,
    ) -> dict[str, Any]:
        """What :meth:`rerender` with the same arguments would cost (``currency``, ``total``,
        ``stages``, ``changed``, ``version``); nothing is bought."""
        body = {**_rerender_body(prompt, narration), "dry_run": True}
        data: dict[str, Any] = await self._request(
            "POST", f"/v1/jobs/{job_id}/scenes/{index}/rerender", json=body
        )
        return data

    async def image(self, url: str) -> bytes:
        """The JPEG at a preview's ``url`` or a scene's ``thumbnail_url`` (a path of the API or
        a full URL of it), with this client's key."""
        response = await self._send("GET", url)
        return response.content

    async def download(
        self, job_id: str, path: str | os.PathLike[str], *, version: int | None = None
    ) -> Path:
        """Save the job's MP4 to ``path`` (written under a temporary name, then renamed): its
        latest version, or ``version``."""
        target = Path(path)
        tmp = target.with_name(f".{target.name}.part")
        params = {"version": version} if version is not None else None
        response = await self._send("GET", f"/v1/jobs/{job_id}/video", stream=True, params=params)
        try:
            with tmp.open("wb") as out:
                async for chunk in response.aiter_bytes():
                    out.write(chunk)
        finally:
            await response.aclose()
        tmp.replace(target)
        return target

    async def captions(self, job_id: str) -> str:
        """The finished video's captions, as WebVTT text."""
        response = await self._send("GET", f"/v1/jobs/{job_id}/captions")
        return response.text


def _rerender_body(prompt: str | None, narration: str | None) -> dict[str, Any]:
    fields = {"prompt": prompt, "narration": narration}
    return {name: value for name, value in fields.items() if value is not None}


def _retry_after(response: httpx.Response) -> float | None:
    """The response's ``Retry-After`` in seconds (the delay form), if it has one."""
    with contextlib.suppress(ValueError):
        return max(0.0, float(response.headers.get("retry-after", "")))
    return None


def _retry_wait(response: httpx.Response) -> float:
    """How long to wait before trying a request again after ``response``."""
    retry_after = _retry_after(response)
    wait = DEFAULT_RETRY_WAIT_S if retry_after is None else retry_after
    return min(max(wait, MIN_RETRY_WAIT_S), MAX_RETRY_WAIT_S)


def _raise(response: httpx.Response) -> NoReturn:
    retry_after = _retry_after(response)
    try:
        error = response.json()["error"]
        code, message, details = error["code"], error["message"], error.get("details")
    except (ValueError, KeyError, TypeError):
        code, message, details = "http_error", response.text[:200], None
    raise error_for(response.status_code, code, message, details, retry_after)
