"""Paid calls under a budget: each is reserved before it is made and settled after, through
the :class:`Spend` the pipeline is given (the worker's holds tenants' budgets in PostgreSQL;
``videoq render`` meters nothing).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from videoq import tracing
from videoq.errors import Declined, ProviderError
from videoq.providers import Billed
from videoq.providers.http import MAYBE_DONE

T = TypeVar("T")


class Spend(Protocol):
    """Where a job's paid calls are held against its tenant's budget."""

    async def reserve(self, stage: str, key: str, usage: dict[str, Any]) -> None:
        """Hold the most a call with ``usage`` (a provider's cost record, before the call)
        may cost, under ``key`` (one per paid call of the job, whatever the attempt); raises
        :class:`~videoq.errors.OverBudget` when the budget cannot cover it."""

    async def settle(self, key: str, cost: dict[str, Any]) -> None:
        """Record what the call cost (its provider's cost record)."""

    async def release(self, key: str) -> None:
        """Give back the reservation of a call that bought nothing."""


class Unmetered:
    """A :class:`Spend` with no budget: for ``videoq render`` and tests."""

    async def reserve(self, stage: str, key: str, usage: dict[str, Any]) -> None:
        pass

    async def settle(self, key: str, cost: dict[str, Any]) -> None:
        pass

    async def release(self, key: str) -> None:
        pass


def paid(provider: object) -> bool:
    """Whether ``provider`` charges for its calls (:class:`~videoq.providers.Billed`)."""
    return isinstance(provider, Billed) and provider.paid


def bought_nothing(exc: BaseException) -> bool:
    """Whether a failed call surely bought nothing: the provider refused it (a 4xx, a 429, a
    concurrency limit), or declined it (:class:`~videoq.errors.Declined`: it looked, and found
    nothing made). A timeout, a lost connection or a 5xx may have bought it, and a prediction
    that ran and then failed was billed for its time."""
    return isinstance(exc, Declined) or (
        isinstance(exc, ProviderError)
        and exc.code not in MAYBE_DONE
        and not exc.code.startswith("prediction_")
    )


async def paid_call(
    spend: Spend,
    stage: str,
    key: str,
    usage: dict[str, Any],
    call: Callable[[], Awaitable[T]],
    cost_of: Callable[[T], dict[str, Any]],
) -> T:
    """``call()``, reserved under ``key`` first and settled with ``cost_of(result)`` after;
    traced as one span with the provider, model and what the call used (the spend may add its
    price)."""
    provider = usage.get("provider")
    attributes = {"videoq.stage": stage, "videoq.purchase": key, "videoq.provider": provider,
                  "videoq.model": usage.get("model")}  # fmt: skip
    with tracing.span(f"{provider} purchase", attributes, kind="client") as span:
        await spend.reserve(stage, key, usage)
        try:
            result = await call()
        except Exception as exc:
            if bought_nothing(exc):
                await spend.release(key)
            raise
        cost = cost_of(result)
        for name, value in cost.items():  # the model that served it, and the units it used
            if isinstance(value, str | int | float) and name != "provider":
                span.set_attribute("videoq.model" if name == "model" else f"videoq.{name}", value)
        await spend.settle(key, cost)
        return result
