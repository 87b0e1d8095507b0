"""The browser client (``/static/videoq.js``) in Chromium against a real API and worker: dropped
in the middle of a job, it reconnects and delivers every event exactly once, for one job
(``seq``) and for the tenant feed (``tenant_seq``)."""

from __future__ import annotations

import asyncio
from typing import Any

from playwright.async_api import Page

from tests.browser.conftest import Console
from tests.test_events import read_all, ws_url
from tests.test_tenant_replay import feed_url, read_feed

#: A page of the API's own origin loads the module, signed in by the session cookie.
LOAD = """async (key) => {
  const response = await fetch("/v1/session", {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({api_key: key}),
  });
  if (response.status !== 201) throw new Error("sign-in: " + response.status);
  window.videoq = await import("/static/videoq.js");
  window.got = [];
  window.states = [];
}"""


async def until(page: Page, test: str, timeout: float = 30) -> Any:
    for _ in range(int(timeout / 0.05)):
        value = await page.evaluate(test)
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"never true: {test}")


async def test_a_job_subscription_survives_reconnects_with_every_event_once(
    admin_console: Console,
) -> None:
    console, page = admin_console, admin_console.page
    await page.goto(console.api.url + "/dashboard")
    await page.evaluate(LOAD, console.key)
    job_id = await console.submit("Followed")
    await page.evaluate(
        """(id) => { window.sub = window.videoq.subscribe(id, {
             after: 0, backoff: {initialMs: 50, maxMs: 200},
             onEvent: (e) => window.got.push(e), onState: (s) => window.states.push(s) }); }""",
        job_id,
    )
    drops = 0
    for wanted in (3, 8, 14):  # drop the connection three times while the job runs
        await until(page, f"window.got.filter(e => e.type !== 'snapshot').length >= {wanted}")
        await page.evaluate("window.sub.reconnect()")
        drops += 1
    ended = await page.evaluate("window.sub.done")
    assert ended == "ended"
    got = await page.evaluate("window.got")
    events = [e for e in got if e["type"] != "snapshot"]
    history = [
        e
        for e in await read_all(
            ws_url(console.api, f"/v1/jobs/{job_id}/events?after=0"), console.key
        )
        if e["type"] != "snapshot"
    ]
    assert [e["seq"] for e in events] == [e["seq"] for e in history]  # none missed, none twice
    assert events == history
    assert events[-1]["status"] == "succeeded"
    assert sum(e["type"] == "snapshot" for e in got) == drops + 1  # one per connection
    assert (await page.evaluate("window.states")).count("reconnecting") >= drops


async def test_the_tenant_feed_survives_reconnects_with_every_event_once(
    admin_console: Console,
) -> None:
    console, page = admin_console, admin_console.page
    await page.goto(console.api.url + "/dashboard")
    await page.evaluate(LOAD, console.key)
    await page.evaluate(
        """() => { window.sub = window.videoq.subscribeFeed({
             backoff: {initialMs: 50, maxMs: 200}, onEvent: (e) => window.got.push(e) }); }"""
    )
    await until(page, "window.sub && true")
    await asyncio.sleep(0.3)  # subscribed before the jobs start
    jobs = [await console.submit(f"Fed {i}") for i in range(2)]
    for wanted in (4, 12, 25):
        await until(page, f"window.got.length >= {wanted}")
        await page.evaluate("window.sub.reconnect()")
    for job_id in jobs:
        for _ in range(600):
            if (await console.job(job_id))["status"] == "succeeded":
                break
            await asyncio.sleep(0.05)
    full = await read_feed(feed_url(console.api, 0), console.key)
    expected = len(full)
    await until(page, f"window.got.length >= {expected}")
    await asyncio.sleep(0.5)  # nothing more may come
    got = await page.evaluate("window.got")
    assert [e["tenant_seq"] for e in got] == list(range(1, expected + 1))
    assert got == full
    assert {e["job_id"] for e in got} == set(jobs)
    await page.evaluate("window.sub.close()")
    assert await page.evaluate("window.sub.done") == "closed"
