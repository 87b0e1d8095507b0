"""The console and the browser client in a real browser: Playwright driving the system's
Chromium (Debian's ``chromium`` package; ``.ci/run`` installs it). Without one, every test
here is skipped, saying why. Screenshots go to ``.videoq/screenshots/`` (not committed)."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.conftest import LiveApi, auth, new_key, running_worker, serving
from videoq.settings import Settings

CHROMIUM = Path(os.environ.get("CHROME_BIN", "/usr/bin/chromium"))
HAVE_CHROMIUM = CHROMIUM.exists()
SCREENSHOTS = Path(__file__).resolve().parents[2] / ".videoq" / "screenshots"
PIPELINE = "tests.browser.pipeline:console"


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not HAVE_CHROMIUM:
        pytest.skip(
            f"no Chromium at {CHROMIUM}: the browser tests need one "
            "(apt-get install chromium, or set CHROME_BIN)"
        )
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield launched
        await launched.close()


@dataclass
class Console:
    """A live API and worker, a key, and a browser page that records every URL it asks for."""

    api: LiveApi
    key: str
    tenant: str
    page: Page
    http: httpx.AsyncClient
    urls: list[str] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def sign_in(self, key: str | None = None) -> None:
        await self.page.goto(self.api.url + "/dashboard")
        await self.page.fill("#key", key or self.key)
        await self.page.click("#signin-form button[type=submit]")

    async def submit(self, name: str, **fields: Any) -> str:
        response = await self.http.post("/v1/jobs", json={"product_name": name, **fields})
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id

    async def job(self, job_id: str) -> dict[str, Any]:
        body: dict[str, Any] = (await self.http.get(f"/v1/jobs/{job_id}")).json()
        return body

    def failing(self, name: str, fails: bool = True) -> None:
        """Make the job named ``name`` fail in voice_gen (for good), or no longer."""
        marker = Path(self.api.settings.scratch) / f"{name}.fail"
        marker.parent.mkdir(parents=True, exist_ok=True)
        if fails:
            marker.touch()
        else:
            marker.unlink()

    async def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{re.sub(r'[^a-z0-9-]+', '-', name.lower())}.png"
        await self.page.screenshot(path=str(path), full_page=True, scale="css")
        return path


async def open_console(
    browser: Browser, settings: Settings, sessions: Any, *, admin: bool, **context: Any
) -> AsyncIterator[Console]:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    key = await new_key(sessions, tenant, admin=admin)
    async with (
        serving(settings) as api,
        running_worker(settings.model_copy(update={"pipeline": PIPELINE})),
    ):
        page_context = await browser.new_context(**context)
        page = await page_context.new_page()
        async with httpx.AsyncClient(base_url=api.url, headers=auth(key)) as http:
            console = Console(api, key, tenant, page, http)
            page.on("request", lambda request: console.urls.append(request.url))
            page.on("websocket", lambda socket: console.urls.append(socket.url))
            page.on("pageerror", lambda error: console.errors.append(str(error)))

            def failed(response: Any) -> None:
                if response.status >= 400:
                    console.failed.append((response.status, response.url))

            page.on("response", failed)
            try:
                yield console
            finally:
                await page_context.close()


def _console(name: str, *, admin: bool) -> Any:
    """The fixture ``name``: a console whose key is an admin's, or (``admin`` false) only its
    tenant's."""

    @pytest.fixture(name=name)
    async def console(
        browser: Browser, settings: Settings, sessions: Any
    ) -> AsyncIterator[Console]:
        async for opened in open_console(browser, settings, sessions, admin=admin):
            yield opened

    return console


admin_console = _console("admin_console", admin=True)
tenant_console = _console("tenant_console", admin=False)


@pytest.fixture
async def phone_console(
    browser: Browser, settings: Settings, sessions: Any
) -> AsyncIterator[Console]:
    async for console in open_console(
        browser, settings, sessions, admin=False,
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
        has_touch=True,
    ):  # fmt: skip
        yield console
