"""Error classification, retry hints and retries with backoff: one implementation for all
three providers, so it is tested once here (with an injected sleep, never a real one)."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from tests.providers.conftest import Sleeps
from videoq.errors import PermanentError, RetryableError
from videoq.providers.http import RetryPolicy, call_with_retries, classify, retry_after


@pytest.mark.parametrize(
    ("status", "retryable", "code"),
    [
        (408, True, "provider_timeout"),
        (409, True, "provider_conflict"),
        (429, True, "rate_limited"),
        (500, True, "provider_unavailable"),
        (503, True, "provider_unavailable"),
        (529, True, "provider_overloaded"),
        (400, False, "invalid_request"),
        (401, False, "provider_auth_failed"),
        (403, False, "provider_forbidden"),
        (404, False, "provider_not_found"),
        (413, False, "request_too_large"),
        (422, False, "invalid_request"),
        (418, False, "provider_rejected"),
    ],
)
def test_statuses_are_classified_once(status: int, retryable: bool, code: str) -> None:
    error = classify("acme", status, message="nope")
    assert isinstance(error, RetryableError if retryable else PermanentError)
    assert error.code == code
    assert str(error) == f"acme: HTTP {status}: nope"


def test_retry_after_reads_milliseconds_seconds_and_dates() -> None:
    assert retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after({"Retry-After": "7"}) == 7.0
    now = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
    date = format_datetime(datetime(2026, 11, 22, 12, 0, 30, tzinfo=UTC), usegmt=True)
    assert retry_after({"retry-after": date}, clock=now.timestamp) == 30.0
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({"retry-after": "0"}) is None
    assert retry_after({"retry-after-ms": "0", "retry-after": "2"}) == 2.0
    assert retry_after({}) is None
    hinted = classify("acme", 429, headers={"retry-after": "3"})
    assert isinstance(hinted, RetryableError) and hinted.retry_after_s == 3.0


def _failing(errors: list[Exception]) -> tuple[list[int], Callable[[], Awaitable[str]]]:
    calls: list[int] = []

    async def call() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return "done"

    return calls, call


async def test_retryable_errors_retry_the_configured_times_with_growing_delays() -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(
        retries=3, backoff_s=2.0, max_delay_s=60, sleep=sleeps, rng=random.Random(1)
    )
    calls, call = _failing([RetryableError("busy", code="provider_busy") for _ in range(10)])
    with pytest.raises(RetryableError, match="busy"):
        await call_with_retries(call, policy=policy, what="t")
    assert len(calls) == 4 and len(sleeps.delays) == 3
    assert sleeps.delays == sorted(sleeps.delays) and len(set(sleeps.delays)) == 3
    # 2 s, 4 s, 8 s, each jittered into [0.5, 1.0] of itself.
    for delay, base in zip(sleeps.delays, (2.0, 4.0, 8.0), strict=True):
        assert base * 0.5 <= delay <= base


async def test_success_after_transient_failures_returns_the_result() -> None:
    sleeps = Sleeps()
    calls, call = _failing([RetryableError("x"), RetryableError("y")])
    result = await call_with_retries(call, policy=RetryPolicy(sleep=sleeps), what="t")
    assert result == "done" and len(calls) == 3 and len(sleeps.delays) == 2


async def test_permanent_errors_fail_at_once() -> None:
    sleeps = Sleeps()
    calls, call = _failing([PermanentError("bad key", code="provider_auth_failed")])
    with pytest.raises(PermanentError) as raised:
        await call_with_retries(call, policy=RetryPolicy(sleep=sleeps), what="t")
    assert raised.value.code == "provider_auth_failed"
    assert len(calls) == 1 and sleeps.delays == []


async def test_retry_after_hint_is_honoured_and_long_ones_go_to_the_job_retry() -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(max_delay_s=10, sleep=sleeps)
    calls, call = _failing([RetryableError("slow down", retry_after_s=3.5)])
    assert await call_with_retries(call, policy=policy, what="t") == "done"
    assert sleeps.delays == [3.5]

    calls, call = _failing([RetryableError("come back later", retry_after_s=120)])
    with pytest.raises(RetryableError) as raised:
        await call_with_retries(call, policy=policy, what="t")
    # Not waited for inside the stage; the worker defers the job by at least this long.
    assert raised.value.retry_after_s == 120 and len(calls) == 1 and sleeps.delays == [3.5]


async def test_concurrency_limit_retries_at_a_steady_pace() -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(retries=3, backoff_s=1.0, jitter=(1.0, 1.0), sleep=sleeps)
    errors: list[Exception] = [
        RetryableError("mine", code="provider_concurrency_limit") for _ in range(3)
    ]
    _, call = _failing(errors)
    assert await call_with_retries(call, policy=policy, what="t") == "done"
    assert sleeps.delays == [1.0, 1.0, 1.0]
    _, call = _failing([RetryableError("theirs", code="provider_busy") for _ in range(3)])
    sleeps.delays.clear()
    assert await call_with_retries(call, policy=policy, what="t") == "done"
    assert sleeps.delays == [1.0, 2.0, 4.0]
