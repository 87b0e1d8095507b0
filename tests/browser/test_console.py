"""The operator console in Chromium: sign in, watch a job to the end, its page, cancel and
retry from the buttons, figures that match the API, a phone, a tenant key, a bad key."""

from __future__ import annotations

import asyncio
import re

from playwright.async_api import expect
from redis.asyncio import Redis

from tests.browser.conftest import Console
from videoq.broker import events
from videoq.types import make_event

TIMEOUT_MS = 30_000


async def until_status(console: Console, job_id: str, *statuses: str) -> dict[str, object]:
    for _ in range(600):
        job = await console.job(job_id)
        if job["status"] in statuses:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {statuses}: {job['status']}")


def no_key_in_urls(console: Console) -> None:
    assert console.urls, "the page made no requests"
    assert not [url for url in console.urls if console.key in url or "token=" in url]
    assert console.key not in console.page.url


async def test_sign_in_watch_a_job_to_the_end_and_open_its_page(admin_console: Console) -> None:
    console, page = admin_console, admin_console.page
    await console.sign_in()
    await expect(page.locator("#who")).to_contain_text("admin key", timeout=TIMEOUT_MS)
    await expect(page.locator("#live")).to_have_text("live", timeout=TIMEOUT_MS)
    job_id = await console.submit("Watched")
    row = page.locator(f'#jobs tr[data-id="{job_id}"]')
    await expect(row).to_be_visible(timeout=TIMEOUT_MS)
    await expect(row).to_have_attribute("data-status", "running", timeout=TIMEOUT_MS)
    await console.screenshot("board-running")
    await expect(row).to_have_attribute("data-status", "succeeded", timeout=TIMEOUT_MS)
    await expect(row.locator("td").nth(4)).to_have_text("100 %")
    await row.locator("a").click()
    await expect(page.locator("#job-id")).to_have_text(job_id)
    await expect(page.locator('[data-fact="status"]')).to_have_text("succeeded", timeout=TIMEOUT_MS)
    history = [e async for e in _events(console, job_id)]
    timeline = page.locator("#job-timeline li")
    await expect(timeline).to_have_count(len(history), timeout=TIMEOUT_MS)
    seqs = await timeline.evaluate_all("items => items.map(i => Number(i.dataset.seq))")
    assert seqs == [e["seq"] for e in history]
    for stage in ("script_gen", "voice_gen", "video_gen", "compositing"):
        duration = page.locator(f'#job-stages tr[data-stage="{stage}"] td').nth(2)
        await expect(duration).to_have_text(re.compile(r"^\d+\.\d s$"))
    video = page.locator("#job-video")
    await expect(video).to_be_visible()
    assert (await video.get_attribute("src")) == f"/v1/jobs/{job_id}/video"
    status = await page.evaluate(f"fetch('/v1/jobs/{job_id}/video').then(r => r.status)")
    assert status in (200, 206)  # the cookie signs the player's requests in too
    assert await page.locator("#job-cancel").is_disabled()
    assert await page.locator("#job-retry").is_disabled()
    await console.screenshot("job-page")
    no_key_in_urls(console)
    assert not console.errors


async def _events(console: Console, job_id: str):  # type: ignore[no-untyped-def]
    """The job's events (no snapshot) as the API replays them."""
    from tests.test_events import read_all, ws_url

    for event in await read_all(
        ws_url(console.api, f"/v1/jobs/{job_id}/events?after=0"), console.key
    ):
        if event["type"] != "snapshot":
            yield event


async def test_cancel_a_running_job_and_retry_a_failed_one_from_the_buttons(
    admin_console: Console,
) -> None:
    console, page = admin_console, admin_console.page
    await console.sign_in()
    await expect(page.locator("#live")).to_have_text("live", timeout=TIMEOUT_MS)
    held = await console.submit("hold me")
    await until_status(console, held, "running")
    await page.goto(f"{console.api.url}/dashboard#/jobs/{held}")
    await expect(page.locator('[data-fact="status"]')).to_have_text("running", timeout=TIMEOUT_MS)
    # A preview event (as the pipeline sends with scenes) shows in the timeline, with its image.
    preview = make_event(held, "preview", status="running", stage="video_gen", progress=50.0)
    preview["data"] = {"kind": "thumbnail", "scene": 0, "url": "/static/thumb-test.svg"}
    async with Redis.from_url(console.api.settings.redis_url or "") as redis:
        await events.publish(redis, console.tenant, preview)
    await expect(page.locator("#job-timeline li.type-preview")).to_contain_text("thumbnail scene 0")
    image = page.locator("#job-previews img")
    await expect(image).to_have_attribute("src", f"{console.api.url}/static/thumb-test.svg")
    await page.click("#job-cancel")
    await expect(page.locator('[data-fact="status"]')).to_have_text("cancelled", timeout=TIMEOUT_MS)
    assert (await console.job(held))["status"] == "cancelled"
    await console.screenshot("job-cancelled")

    console.failing("Refused")
    failed = await console.submit("Refused", max_retries=0)
    await until_status(console, failed, "failed")
    await page.goto(f"{console.api.url}/dashboard#/jobs/{failed}")
    await expect(page.locator("#job-error")).to_contain_text("voice_refused", timeout=TIMEOUT_MS)
    await expect(page.locator("#job-attempts tr")).to_have_count(1)
    await expect(page.locator("#job-timeline li.type-status").last).to_contain_text("failed")
    await expect(page.locator('[data-fact="status"]')).to_have_text("failed")
    assert await page.locator("#job-cancel").is_disabled()
    assert await page.locator("#job-retry").is_enabled()
    await console.screenshot("job-failed")
    console.failing("Refused", fails=False)
    await page.click("#job-retry")
    await expect(page.locator('[data-fact="status"]')).to_have_text("succeeded", timeout=TIMEOUT_MS)
    assert (await console.job(failed))["status"] == "succeeded"
    no_key_in_urls(console)


async def test_bulk_retry_of_failed_jobs(admin_console: Console) -> None:
    console, page = admin_console, admin_console.page
    names = ["Bulk one", "Bulk two"]
    for name in names:
        console.failing(name)
    jobs = [await console.submit(name, max_retries=0) for name in names]
    for job_id in jobs:
        await until_status(console, job_id, "failed")
    for name in names:
        console.failing(name, fails=False)
    await console.sign_in()
    await expect(page.locator("#retry-failed")).to_be_enabled(timeout=TIMEOUT_MS)
    await page.click("#retry-failed")
    await expect(page.locator("#toast")).to_contain_text(
        "Retried 2 failed jobs", timeout=TIMEOUT_MS
    )
    for job_id in jobs:
        await until_status(console, job_id, "succeeded")


async def test_the_figures_match_the_api(admin_console: Console) -> None:
    """An admin key's job figures are its tenant's, as its job list (docs/decisions.md,
    "Console figures"); the queue and the workers are the service's."""
    console, page = admin_console, admin_console.page
    await console.sign_in()
    jobs = [await console.submit(f"Counted {i}") for i in range(2)]
    for job_id in jobs:
        await until_status(console, job_id, "succeeded")
    # The figures come in the feed's stats messages (every 5 s): wait for one after the end.
    succeeded = page.locator('[data-figure="succeeded"] b')
    await expect(succeeded).to_have_text(str(len(jobs)), timeout=TIMEOUT_MS)
    await expect(page.locator("#figures-scope")).to_contain_text("Your tenant's jobs, the queue")
    for status in ("queued", "running", "succeeded", "failed", "cancelled"):
        listed = await console.http.get("/v1/jobs", params={"status": status, "limit": 100})
        shown = await page.locator(f'[data-figure="{status}"] b').inner_text()
        assert int(shown) == len(listed.json()["data"]), status
    stats = (await console.http.get("/v1/queue/stats")).json()
    assert (
        int(await page.locator('[data-figure="queue_length"] b').inner_text())
        == stats["queue_length"]
    )
    workers = (await console.http.get("/v1/workers")).json()["data"]
    alive = sum(1 for w in workers if w["alive"])
    assert int(await page.locator('[data-figure="workers"] b').inner_text()) == alive
    await expect(page.locator("#workers tr")).to_have_count(len(workers))
    total = await page.locator("#chart-throughput").get_attribute("data-total")
    assert total is not None and int(total) >= 2  # this test's two jobs, in the last hour
    await console.screenshot("board-figures")


async def test_a_tenant_key_sees_its_own_view_and_makes_no_admin_calls(
    tenant_console: Console, sessions: object
) -> None:
    console, page = tenant_console, tenant_console.page
    await console.sign_in()
    await expect(page.locator("#who")).to_contain_text("tenant key", timeout=TIMEOUT_MS)
    job_id = await console.submit("Mine")
    await expect(page.locator(f'#jobs tr[data-id="{job_id}"]')).to_have_attribute(
        "data-status", "succeeded", timeout=TIMEOUT_MS
    )
    await expect(page.locator('[data-figure="succeeded"] b')).to_have_text("1", timeout=TIMEOUT_MS)
    assert await page.locator("#workers-panel").is_hidden()
    assert await page.locator("#clear-stale").is_hidden()
    assert await page.locator('[data-figure="queue_length"]').count() == 0
    assert not [u for u in console.urls if "/v1/workers" in u or "/v1/queue" in u]
    # The one failing request is the session check before signing in.
    assert [status for status, url in console.failed if not url.endswith("/v1/session")] == []
    await console.screenshot("tenant-view")
    no_key_in_urls(console)


async def test_a_bad_key_shows_a_readable_message(tenant_console: Console) -> None:
    console, page = tenant_console, tenant_console.page
    await console.sign_in("vq_this-is-not-a-key")
    message = page.locator("#signin-error")
    await expect(message).to_contain_text("not accepted", timeout=TIMEOUT_MS)
    text = await message.inner_text()
    assert "{" not in text and "invalid API key" in text
    assert await page.locator("#board").is_hidden()
    assert await page.locator("#key").input_value() == ""  # the key is not kept in the form
    await console.screenshot("bad-key")


async def test_a_phone_sized_viewport_fits(phone_console: Console) -> None:
    console, page = phone_console, phone_console.page
    await console.sign_in()
    job_id = await console.submit("Pocket")
    await expect(page.locator(f'#jobs tr[data-id="{job_id}"]')).to_have_attribute(
        "data-status", "succeeded", timeout=TIMEOUT_MS
    )
    await expect(page.locator('[data-figure="succeeded"] b')).to_have_text("1", timeout=TIMEOUT_MS)
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than the phone"
    await console.screenshot("phone-board")
    await page.locator(f'#jobs tr[data-id="{job_id}"] a').click()
    await expect(page.locator('[data-fact="status"]')).to_have_text("succeeded", timeout=TIMEOUT_MS)
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the job page is {overflow}px wider than the phone"
    await console.screenshot("phone-job")
