"""Outbound webhooks: a job with a ``webhook_url`` that reaches ``succeeded``, ``failed`` or
``cancelled`` gets one delivery: a row in ``webhook_deliveries``, then POSTs of
``{"type": "job.<status>", "timestamp", "data": <the job>}`` with ``webhook-id`` (the same on
every attempt), ``webhook-timestamp`` and ``webhook-signature`` (:mod:`videoq.signing`), keyed by
the tenant's secret (``GET /v1/webhooks/secret``). Each attempt is a row in
``webhook_attempts``; failures retry after ``webhook_retry_delays_s``. Every hop, redirects
included, goes through the SSRF guard (:mod:`videoq.netguard`) and connects to the very address
that was checked. Deliveries whose process stopped are taken up again by
:func:`resume_pending` (the workers' reconciler).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import httpx
import structlog

from videoq.broker import BROKER_ERRORS
from videoq.errors import UnsafeUrl
from videoq.netguard import Resolver, parse_networks, resolve_checked, system_resolver
from videoq.settings import Settings
from videoq.signing import sign
from videoq.store import DATABASE_ERRORS, Job, WebhookAttempt, WebhookDelivery
from videoq.store import webhooks as webhook_rows
from videoq.types import TERMINAL
from videoq.views import job_view

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import async_sessionmaker

log = structlog.get_logger(__name__)

MAX_REDIRECTS = 3
REDIRECTS = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "videoq-webhooks/1"


@dataclass(frozen=True)
class DeliveryResult:
    """What one attempt achieved. ``permanent``: retrying cannot help (the URL is refused)."""

    status_code: int | None = None
    error: str | None = None
    permanent: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def payload(job: Job) -> dict[str, Any]:
    return {
        "type": f"job.{job.status}",
        "timestamp": datetime.now(UTC).isoformat(),
        "data": job_view(job),
    }


def _host(url: str) -> str:
    """Only the host of a URL reaches logs and attempt rows: paths and queries often carry
    the receiver's own tokens."""
    return urlsplit(url).hostname or "?"


async def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    allowed: Any = (),
    timeout_s: float = 10.0,
    resolver: Resolver = system_resolver,
    transport: httpx.AsyncBaseTransport | None = None,
) -> DeliveryResult:
    """POST ``body`` to ``url``, following up to :data:`MAX_REDIRECTS` redirects, each hop
    checked by the SSRF guard and pinned to the address that passed it."""
    current = url
    async with httpx.AsyncClient(
        transport=transport, timeout=timeout_s, follow_redirects=False, trust_env=False
    ) as client:
        for hop in range(MAX_REDIRECTS + 1):
            try:
                target = await resolve_checked(current, allowed, resolver)
            except UnsafeUrl as exc:
                where = "" if hop == 0 else f"redirect to {_host(current)}: "
                return DeliveryResult(error=f"{where}{exc}", permanent=True)
            except LookupError as exc:
                return DeliveryResult(error=str(exc))
            pinned = httpx.URL(current).copy_with(host=target.address)
            netloc = urlsplit(current).netloc.rpartition("@")[2]
            extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
            try:
                async with client.stream(
                    "POST", pinned, content=body, headers={**headers, "Host": netloc},
                    extensions=extensions,
                ) as response:  # fmt: skip
                    status = response.status_code
                    location = response.headers.get("location")
            except httpx.HTTPError as exc:
                return DeliveryResult(error=f"{type(exc).__name__} from {target.host}")
            if status in REDIRECTS and location:
                current = urljoin(current, location)
                continue
            return DeliveryResult(
                status_code=status, error=None if 200 <= status < 300 else f"HTTP {status}"
            )
    return DeliveryResult(error="too many redirects", permanent=True)


Sleep = Callable[[float], Awaitable[None]]


async def _record(
    sessions: async_sessionmaker[Any],
    row: WebhookDelivery,
    result: DeliveryResult,
    started: datetime,
    duration_ms: float,
    delays: tuple[float, ...],
) -> float | None:
    """Store the attempt and the delivery's new state; returns the wait before the next attempt,
    or None when the delivery is settled."""
    attempt = row.attempts + 1
    now = datetime.now(UTC)
    values: dict[str, Any] = {"attempts": attempt, "last_error": result.error}
    wait: float | None = None
    if result.ok:
        values |= {"status": "delivered", "delivered_at": now, "next_attempt_at": None}
    elif result.permanent or attempt > len(delays):
        values |= {"status": "failed", "next_attempt_at": None}
    else:
        wait = delays[attempt - 1]
        values["next_attempt_at"] = now + timedelta(seconds=wait)
    record = WebhookAttempt(
        delivery_id=row.id, attempt=attempt, started_at=started, duration_ms=duration_ms,
        status_code=result.status_code, error=result.error,
    )  # fmt: skip
    await webhook_rows.record_attempt(sessions, row, record, values)
    return wait


async def deliver(
    sessions: async_sessionmaker[Any],
    settings: Settings,
    delivery_id: uuid.UUID,
    *,
    resolver: Resolver = system_resolver,
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: Sleep = asyncio.sleep,
) -> str | None:
    """Attempt the delivery until it is delivered or has failed for good; returns its final
    status (None when another process holds it)."""
    allowed = parse_networks(settings.webhook_allowed_networks)
    lease_s = settings.webhook_timeout_s * (MAX_REDIRECTS + 1) + 30
    msg_id = f"msg_{delivery_id.hex}"
    while True:
        row = await webhook_rows.claim_delivery(sessions, delivery_id, lease_s)
        if row is None:
            return None
        async with sessions() as session:
            secret = await webhook_rows.tenant_secret(session, row.tenant)
        body = json.dumps(row.payload, separators=(",", ":")).encode()
        stamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": msg_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign(secret, msg_id, stamp, body),
        }
        started = datetime.now(UTC)
        clock = time.monotonic()
        result = await post(
            row.url, body, headers, allowed=allowed, timeout_s=settings.webhook_timeout_s,
            resolver=resolver, transport=transport,
        )  # fmt: skip
        elapsed_ms = (time.monotonic() - clock) * 1000
        wait = await _record(
            sessions, row, result, started, elapsed_ms, settings.webhook_retry_delays_s
        )
        context = {"delivery_id": str(row.id), "job_id": str(row.job_id), "host": _host(row.url)}
        if result.ok:
            log.info("webhook_delivered", attempt=row.attempts + 1, **context)
            return "delivered"
        if wait is None:
            log.warning("webhook_failed", attempt=row.attempts + 1, error=result.error, **context)
            return "failed"
        log.info("webhook_retry_scheduled", delay_s=wait, error=result.error, **context)
        await sleep(wait)


def _spawn(tasks: list[asyncio.Task[None]], coro: Coroutine[Any, Any, Any]) -> None:
    async def run() -> None:
        try:
            await coro
        except (*DATABASE_ERRORS, *BROKER_ERRORS) as exc:
            # The row stays pending; the next sweep (resume_pending) takes it up again.
            log.warning("webhook_delivery_interrupted", error=str(exc))

    task = asyncio.create_task(run())
    tasks.append(task)
    task.add_done_callback(lambda done: done in tasks and tasks.remove(done))  # type: ignore[func-returns-value]


async def resume_pending(
    sessions: async_sessionmaker[Any], settings: Settings, tasks: list[asyncio.Task[None]]
) -> int:
    """Take up deliveries that are due but have nobody attempting them (their process stopped
    between attempts); returns how many."""
    ids = await webhook_rows.due_deliveries(sessions)
    for delivery_id in ids:
        _spawn(tasks, deliver(sessions, settings, delivery_id))
    return len(ids)


async def job_finished(
    sessions: async_sessionmaker[Any], settings: Settings, job: Job, tasks: list[asyncio.Task[None]]
) -> None:
    """Record and start the webhook of a job that just reached a terminal state (no-op for
    other states or jobs without ``webhook_url``). Never raises: the job's outcome is already
    recorded and must not be disturbed."""
    if job.status not in TERMINAL or not job.webhook_url:
        return
    try:
        delivery_id = await webhook_rows.add_delivery(sessions, job, payload(job))
    except DATABASE_ERRORS as exc:
        log.warning("webhook_not_recorded", job_id=str(job.id), error=str(exc))
        return
    _spawn(tasks, deliver(sessions, settings, delivery_id))


async def stop(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel deliveries in flight (their rows stay pending and are resumed later)."""
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
