"""``GET /metrics``: Prometheus text format, for admin keys (a scrape job's
``authorization: {credentials: <key>}``).

Two kinds of figures:

- **The whole service, read at scrape time** from the stores every process shares, so any API
  process answers for all of them: jobs per status and the oldest queued job's age
  (PostgreSQL), the queue's length and the live workers (Redis), and per worker its running
  jobs and the outcomes it has counted since it started (each worker publishes them with its
  heartbeat, every ``heartbeat_s``; a restarted worker starts from zero, which Prometheus'
  ``rate()`` reads as a counter reset).
- **This API process's own requests**: a count by method, route template and status, and a
  latency histogram by route template (:class:`RequestMetrics`, an ASGI middleware). Each API
  process reports its own; Prometheus sums them across its targets.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from videoq.types import TRANSITIONS

#: The classic text format, which every Prometheus version reads (newer clients default to
#: announcing 1.0.0).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


#: Methods counted by name; any other (the server takes whatever a client sends) is ``OTHER``,
#: so no client can make a series per request.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetrics:
    """Counts and times every HTTP request by its route template (``/v1/jobs/{job_id}``, never
    the raw path: ids would make a series per job). Requests no route matched count under
    ``route="unmatched"``."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "videoq_http_requests", "HTTP requests served by this API process.",
            ["method", "route", "status"], registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "videoq_http_request_duration_seconds",
            "Time to the last byte of the response, by route.",
            ["route"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        # Each series' child, once found (``labels()`` takes a lock and checks the labels
        # every call); a few per route.
        self._counted: dict[tuple[str, str, str], Any] = {}
        self._timed: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception escaping the app is served as one

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            series = (method, route, str(status))
            if (counted := self._counted.get(series)) is None:
                counted = self._counted[series] = self.requests.labels(*series)
            if (timed := self._timed.get(route)) is None:
                timed = self._timed[route] = self.latency.labels(route)
            counted.inc()
            timed.observe(time.perf_counter() - started)


class _Families:
    """A collector of metric families built beforehand (prometheus_client collects
    synchronously; the figures come from async reads)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def service_families(stats: dict[str, Any], workers: list[dict[str, Any]]) -> list[Metric]:
    """The service-wide figures: ``stats`` as ``GET /v1/queue/stats`` has them (with the arq
    queue's length), and the registered workers as :func:`videoq.queue.list_workers` gives
    them."""
    jobs = GaugeMetricFamily("videoq_jobs", "Jobs per status, now.", labels=["status"])
    for status in TRANSITIONS:
        jobs.add_metric([status], stats["counts"].get(status, 0))
    oldest = GaugeMetricFamily(
        "videoq_oldest_queued_job_age_seconds", "Age of the oldest queued job (0 when none)."
    )
    oldest.add_metric([], stats["oldest_queued_age_s"] or 0.0)
    length = GaugeMetricFamily("videoq_queue_length", "Entries in the arq queue (due or not).")
    length.add_metric([], stats["queue_length"])
    alive = [w for w in workers if w.get("alive")]
    live = GaugeMetricFamily("videoq_workers", "Workers whose heartbeat is recent.")
    live.add_metric([], len(alive))
    running = GaugeMetricFamily(
        "videoq_worker_running_jobs", "Jobs a live worker runs, now.", labels=["worker_id"]
    )
    slots = GaugeMetricFamily(
        "videoq_worker_max_jobs", "Jobs a live worker runs at most.", labels=["worker_id"]
    )
    outcomes = CounterMetricFamily(
        "videoq_worker_jobs",
        "Attempts a live worker ended, by outcome, since it started.",
        labels=["worker_id", "outcome"],
    )
    for worker in alive:
        worker_id = str(worker.get("id"))
        running.add_metric([worker_id], len(worker.get("jobs", [])))
        slots.add_metric([worker_id], worker.get("max_jobs", 0))
        for outcome, count in sorted(worker.get("counts", {}).items()):
            outcomes.add_metric([worker_id, outcome], count)
    return [jobs, oldest, length, live, running, slots, outcomes]


def eta_error_family(counts: dict[str, float], buckets: Iterable[float]) -> Metric:
    """The relative error of the ETAs succeeded jobs were given at submit
    (:func:`videoq.broker.estimates.errors` counts, per bucket; here cumulative)."""
    family = HistogramMetricFamily(
        "videoq_eta_error_ratio",
        "|eta at submit - actual| / actual, over jobs that succeeded.",
    )
    cumulative, rows = 0.0, []
    for bound in (*(f"{b:g}" for b in buckets), "+Inf"):
        cumulative += counts.get(bound, 0.0)
        rows.append((bound, cumulative))
    family.add_metric([], rows, counts.get("sum", 0.0))
    return family


def spend_family(totals: Iterable[tuple[str, str, str, float]]) -> Metric:
    """Settled spend by tenant, stage and provider (:func:`videoq.store.spend.totals`)."""
    family = CounterMetricFamily(
        "videoq_spend_usd",
        "US dollars paid calls cost, once settled, by tenant, stage and provider.",
        labels=["tenant", "stage", "provider"],
    )
    for tenant, stage, provider, usd in totals:
        family.add_metric([tenant, stage, provider], usd)
    return family


def render(own: CollectorRegistry, families: list[Metric]) -> bytes:
    """The text exposition of this process's registry and the service-wide families."""
    return generate_latest(own) + generate_latest(_Families(families))
