"""``GET /metrics`` (Prometheus text, admin keys) and ``GET /dashboard`` (a live page)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import auth, new_key, running_worker
from tests.test_lifecycle import fake
from videoq.settings import Settings
from videoq.workers import supervisor


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels (the parser checks the format)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_need_an_admin_key(
    asgi_client: httpx.AsyncClient, sessions: Any, api_key: str
) -> None:
    assert (await asgi_client.get("/metrics")).status_code == 401
    assert (await asgi_client.get("/metrics", headers=auth(api_key))).status_code == 403


async def test_metrics_show_jobs_queue_workers_and_requests(
    asgi_client: httpx.AsyncClient, settings: Settings, sessions: Any, api_key: str
) -> None:
    admin, tenant = auth(await new_key(sessions, admin=True)), auth(api_key)
    async with running_worker(fake(settings, "quick")) as worker:
        state = worker.ctx["videoq"]
        job = await asgi_client.post("/v1/jobs", json={"product_name": "Lamp"}, headers=tenant)
        job_id = job.json()["id"]
        async with asyncio.timeout(20):
            while not state.counts["succeeded"]:  # noqa: ASYNC110  counted as the job ends
                await asyncio.sleep(0.02)
        assert (await asgi_client.get(f"/v1/jobs/{job_id}", headers=tenant)).status_code == 200
        await supervisor.beat(state)  # publishes the worker's counts now
        assert (await asgi_client.get("/metrics", headers=tenant)).status_code == 403
        await asgi_client.request("BREW", "/v1/jobs", headers=tenant)  # any method a client likes
        response = await asgi_client.get("/metrics", headers=admin)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    got = samples(response.text)
    assert got[("videoq_jobs", (("status", "succeeded"),))] >= 1
    assert ("videoq_queue_length", ()) in got and got[("videoq_workers", ())] >= 1
    me = (("worker_id", state.worker_id),)
    assert got[("videoq_worker_max_jobs", me)] == settings.max_jobs
    assert got[("videoq_worker_jobs_total", (("outcome", "succeeded"), *me))] == 1
    # Requests count by route template: one series for every job, not one per job.
    by_template = (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "200"))
    assert got[("videoq_http_requests_total", by_template)] >= 1
    assert not any(job_id in str(labels) for _, labels in got)
    assert not any("BREW" in str(labels) for _, labels in got)
    refused = (("method", "GET"), ("route", "/metrics"), ("status", "403"))
    assert got[("videoq_http_requests_total", refused)] >= 1
    brewed = (("method", "OTHER"), ("route", "/v1/jobs"), ("status", "405"))
    assert got[("videoq_http_requests_total", brewed)] == 1


async def test_the_dashboard_holds_no_data_and_runs_only_its_own_scripts(
    asgi_client: httpx.AsyncClient,
) -> None:
    page = await asgi_client.get("/dashboard")  # it signs in by itself: no key in its URL
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    # No inline script or style, no handler attributes: only its own files run.
    assert re.findall(r"<script[^>]*>", page.text) == [
        '<script type="module" src="/static/console.js">'
    ]
    assert "<style" not in page.text and not re.search(r"\son[a-z]+=", page.text)
    script = (await asgi_client.get("/static/console.js")).text
    assert "/v1/session" in script and "subscribeFeed" in script
