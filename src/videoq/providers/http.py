"""What every live provider shares: telling retryable failures from permanent ones, reading the
provider's retry hints, and retrying one call with exponential backoff and jitter.

Classification (DESIGN.md, "Errors"): timeouts, connection errors, 408, 409, 429, 5xx and 529
are :class:`~videoq.errors.RetryableError`; every other 4xx is a
:class:`~videoq.errors.PermanentError`. Providers add what only they know (an ElevenLabs
``detail.status``, an Anthropic refusal) on top, by passing ``code`` and ``message``.

:func:`call_with_retries` retries a :class:`RetryableError` ``policy.retries`` times, waiting
``backoff_s · 2^n`` (capped, jittered) or the provider's ``Retry-After`` / ``retry-after-ms``
when it gave one. A hint longer than ``policy.max_delay_s`` is not waited for here: the error
propagates with ``retry_after_s`` set, and the worker defers the whole job by at least that long.
Sleep, clock and randomness are injected, so tests never sleep.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import httpx
import structlog

from videoq import tracing
from videoq.errors import PermanentError, ProviderError, RetryableError

if TYPE_CHECKING:
    from videoq.settings import Settings

log = structlog.get_logger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

#: Statuses worth another try: timeout, conflict, rate limit (5xx and 529 are checked by range).
RETRYABLE_STATUSES = frozenset({408, 409, 429})

#: Error codes by status; anything else is ``provider_unavailable`` (≥ 500) or
#: ``provider_rejected`` (other 4xx).
STATUS_CODES: dict[int, str] = {
    400: "invalid_request",
    401: "provider_auth_failed",
    402: "provider_billing",
    403: "provider_forbidden",
    404: "provider_not_found",
    408: "provider_timeout",
    409: "provider_conflict",
    413: "request_too_large",
    422: "invalid_request",
    429: "rate_limited",
    529: "provider_overloaded",
}

#: Retryable codes meaning "your own concurrency is over the plan's limit": the slot frees up
#: as soon as one of our own requests finishes, so waiting longer and longer does not help.
STEADY_CODES = frozenset({"provider_concurrency_limit"})


def keepalive_limits(connections: int) -> httpx.Limits:
    """Connection limits for a provider client: keep-alive as large as the pool.

    httpcore (1.0.9) closes an idle connection whenever the pool holds more connections *in
    total* than ``max_keepalive_connections`` (default 20); with dozens of predictions in
    flight every request then dials a fresh connection. Equal limits avoid that churn.
    """
    return httpx.Limits(max_connections=connections, max_keepalive_connections=connections)


def is_retryable_status(status: int) -> bool:
    """True for 408, 409, 429 and every 5xx (including Anthropic's 529)."""
    return status in RETRYABLE_STATUSES or status >= 500


def retry_after(headers: Mapping[str, str], *, clock: Clock = time.time) -> float | None:
    """The provider's wait hint in seconds: ``retry-after-ms``, else ``retry-after`` (seconds or
    an HTTP date). None when absent, unparsable or not positive."""
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000.0
        except ValueError:
            value = 0.0
        if value > 0:
            return value
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - clock()
    return seconds if seconds > 0 else None


def classify(
    provider: str,
    status: int,
    *,
    headers: Mapping[str, str] | None = None,
    message: str = "",
    code: str | None = None,
    clock: Clock = time.time,
) -> ProviderError:
    """The error for an HTTP failure of ``provider``: retryable or permanent, with a stable code
    (``code`` overrides the default for the status) and the provider's retry hint."""
    text = f"{provider}: HTTP {status}" + (f": {message}" if message else "")
    default = STATUS_CODES.get(status)
    if is_retryable_status(status):
        hint = retry_after(headers or {}, clock=clock)
        fallback = "provider_unavailable" if status >= 500 and status != 529 else default
        return RetryableError(text, code=code or fallback, retry_after_s=hint)
    return PermanentError(text, code=code or default or "provider_rejected")


#: Failure codes after which the failed request may have been carried out all the same (a
#: timeout, a dropped connection, a 5xx): a retry of a purchase looks for it first.
MAYBE_DONE = frozenset({"provider_timeout", "provider_unreachable", "provider_unavailable"})


def transport_error(provider: str, exc: BaseException) -> RetryableError:
    """A timeout or connection failure: always worth another try."""
    # httpx, httpx2 and the SDKs each have their own timeout classes; the names agree.
    timed_out = isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__
    code = "provider_timeout" if timed_out else "provider_unreachable"
    return RetryableError(f"{provider}: {type(exc).__name__}: {exc}", code=code)


@dataclass(frozen=True)
class RetryPolicy:
    """How one provider call is retried inside a stage."""

    retries: int = 3
    backoff_s: float = 1.0
    max_delay_s: float = 30.0
    #: Each delay is multiplied by a factor drawn uniformly from this range.
    jitter: tuple[float, float] = (0.5, 1.0)
    sleep: Sleep = asyncio.sleep
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> RetryPolicy:
        """The policy the settings describe (``provider_retries`` / ``provider_backoff*``)."""
        values: dict[str, object] = {
            "retries": settings.provider_retries,
            "backoff_s": settings.provider_backoff_s,
            "max_delay_s": settings.provider_backoff_max_s,
            **overrides,
        }
        return cls(**values)  # type: ignore[arg-type]

    def delay(self, retry: int, error: RetryableError) -> float | None:
        """Seconds to wait before retry number ``retry`` (0-based), or None to give up now
        (the provider asked for a longer wait than a stage should block for)."""
        hint = error.retry_after_s
        if hint is not None:
            return hint if hint <= self.max_delay_s else None
        steps = 0 if error.code in STEADY_CODES else retry
        base = min(self.max_delay_s, self.backoff_s * (2**steps))
        low, high = self.jitter
        return float(base * self.rng.uniform(low, high))


async def call_with_retries(
    call: Callable[[], Awaitable[T]], *, policy: RetryPolicy, what: str
) -> T:
    """``await call()``, retrying :class:`RetryableError` as ``policy`` says; the last error
    (or a permanent one, at once) propagates unchanged. Traced as one span named ``what``,
    with the retries it took and each retry's error and wait as an event."""
    with tracing.span(what, {"videoq.provider.call": what}, kind="client") as span:
        return await _with_retries(call, policy, what, span)


async def _with_retries(
    call: Callable[[], Awaitable[T]], policy: RetryPolicy, what: str, span: tracing.Span
) -> T:
    retry = 0
    while True:
        span.set_attribute("videoq.provider.retries", retry)
        try:
            return await call()
        except RetryableError as exc:
            span.set_attribute("videoq.provider.last_error", exc.code)
            delay = policy.delay(retry, exc) if retry < policy.retries else None
            if delay is None:
                raise
            span.add_event("retry", {"error.type": exc.code, "delay_s": delay})
            log.warning(
                "provider_call_retried",
                call=what,
                error=exc.code,
                retry=retry + 1,
                delay_s=round(delay, 3),
            )
            retry += 1
            await policy.sleep(delay)


def problem_message(body: object) -> str:
    """A short human message from a JSON error body of any provider's shape."""
    if isinstance(body, dict):
        for key in ("detail", "message", "error", "title"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value[:500]
            if isinstance(value, dict):
                inner = problem_message(value)
                if inner:
                    return inner
            if isinstance(value, list) and value:
                return "; ".join(problem_message(v) or str(v) for v in value)[:500]
        if isinstance(body.get("msg"), str):
            return str(body["msg"])[:500]
    return ""


__all__ = [
    "Clock",
    "PermanentError",
    "RetryPolicy",
    "RetryableError",
    "Sleep",
    "call_with_retries",
    "classify",
    "is_retryable_status",
    "problem_message",
    "retry_after",
    "transport_error",
]
