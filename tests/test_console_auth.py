"""The console's sign-in: an API key for an HttpOnly, SameSite=Strict session cookie, scoped
exactly like the key; every state-changing request it authenticates is CSRF-checked; no key
ever travels in a URL. Bearer keys work as before."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import httpx
from starlette.routing import Route
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import LiveApi, auth, new_key
from videoq.api import create_app
from videoq.store.apikeys import revoke_key

BRIEF = {"product_name": "Console", "duration_s": 5}


async def sign_in(http: httpx.AsyncClient, key: str) -> dict[str, Any]:
    response = await http.post("/v1/session", json={"api_key": key})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_sign_in_sets_a_strict_httponly_cookie_and_never_echoes_the_key(
    live_api: LiveApi, api_key: str
) -> None:
    async with httpx.AsyncClient(base_url=live_api.url) as http:
        response = await http.post("/v1/session", json={"api_key": api_key})
        assert response.status_code == 201
        cookie = response.headers["set-cookie"]
        flags = {part.strip().lower() for part in cookie.split(";")}
        assert cookie.startswith("videoq_session=")
        assert {"httponly", "samesite=strict", "path=/"} <= flags
        assert not any(flag.startswith("secure") for flag in flags)  # plain http: no Secure
        assert api_key not in cookie and api_key not in response.text
        body = response.json()
        assert body["tenant"].startswith("t-") and body["admin"] is False
        assert len(body["csrf_token"]) >= 32
        again = await http.get("/v1/session")  # a reloaded page gets its CSRF token back
        assert again.json()["csrf_token"] == body["csrf_token"]


async def test_a_bad_or_missing_key_gets_a_readable_error(live_api: LiveApi) -> None:
    async with httpx.AsyncClient(base_url=live_api.url) as http:
        bad = await http.post("/v1/session", json={"api_key": "vq_not-a-key"})
        assert bad.status_code == 401
        assert bad.json()["error"]["message"] == "invalid API key"
        assert "set-cookie" not in bad.headers
        missing = await http.post("/v1/session", json={})
        assert missing.status_code == 422
        assert missing.json()["error"]["details"][0]["field"] == "api_key"
        for body in (b"[]", b"{", b'{"api_key": 3}'):
            response = await http.post("/v1/session", content=body)
            assert response.status_code in (400, 422), body
        assert (await http.get("/v1/session")).status_code == 401


async def test_the_cookie_is_scoped_exactly_like_its_key(
    live_api: LiveApi, sessions: Any, api_key: str
) -> None:
    other = await new_key(sessions)
    async with httpx.AsyncClient(base_url=live_api.url, headers=auth(other)) as bearer:
        theirs = (await bearer.post("/v1/jobs", json=BRIEF)).json()["id"]
    async with httpx.AsyncClient(base_url=live_api.url) as http:
        await sign_in(http, api_key)
        assert (await http.get("/v1/jobs")).status_code == 200
        assert (await http.get(f"/v1/jobs/{theirs}")).status_code == 404  # another tenant's
        assert (await http.get("/v1/workers")).status_code == 403  # not an admin key
        assert (await http.get("/v1/queue/stats")).status_code == 403
    admin = await new_key(sessions, admin=True)
    async with httpx.AsyncClient(base_url=live_api.url) as http:
        assert (await sign_in(http, admin))["admin"] is True
        assert (await http.get("/v1/workers")).status_code == 200


async def test_every_state_changing_request_with_the_cookie_needs_the_csrf_token(
    live_api: LiveApi, api_key: str
) -> None:
    async with httpx.AsyncClient(base_url=live_api.url) as http:
        csrf = (await sign_in(http, api_key))["csrf_token"]
        host = live_api.url.split("://", 1)[1]
        for headers in ({}, {"X-CSRF-Token": "wrong"}):
            refused = await http.post("/v1/jobs", json=BRIEF, headers=headers)
            assert refused.status_code == 403
            assert "X-CSRF-Token" in refused.json()["error"]["message"]
        foreign = {"X-CSRF-Token": csrf, "Origin": "https://evil.example"}
        assert (await http.post("/v1/jobs", json=BRIEF, headers=foreign)).status_code == 403
        mine = {"X-CSRF-Token": csrf, "Origin": f"http://{host}"}
        created = await http.post("/v1/jobs", json=BRIEF, headers=mine)
        assert created.status_code == 202
        job_id = created.json()["id"]
        cancel = f"/v1/jobs/{job_id}/cancel"
        assert (await http.post(cancel)).status_code == 403
        assert (await http.post(cancel, headers=mine)).status_code == 202
        assert (await http.post(f"/v1/jobs/{job_id}/retry")).status_code == 403
        assert (await http.post("/v1/estimates", json=BRIEF)).status_code == 403
        # A bearer key needs no CSRF token: the SDK and CLI work as before.
        bearer = await http.post("/v1/jobs", json=BRIEF, headers=auth(api_key))
        assert bearer.status_code == 202


async def test_sign_in_from_another_site_and_sign_out_without_the_token_are_refused(
    live_api: LiveApi, api_key: str
) -> None:
    async with httpx.AsyncClient(base_url=live_api.url) as http:
        foreign = {"Origin": "https://evil.example"}
        refused = await http.post("/v1/session", json={"api_key": api_key}, headers=foreign)
        assert refused.status_code == 403 and "set-cookie" not in refused.headers
        csrf = (await sign_in(http, api_key))["csrf_token"]
        assert (await http.delete("/v1/session")).status_code == 403
        assert (await http.get("/v1/jobs")).status_code == 200  # still signed in
        out = await http.delete("/v1/session", headers={"X-CSRF-Token": csrf})
        assert out.status_code == 204
        assert (
            'videoq_session=""' in out.headers["set-cookie"]
            or "Max-Age=0" in out.headers["set-cookie"]
        )
    async with httpx.AsyncClient(base_url=live_api.url) as http:
        token = await http.post("/v1/session", json={"api_key": api_key})
        cookie = token.cookies["videoq_session"]
        csrf = token.json()["csrf_token"]
        await http.delete("/v1/session", headers={"X-CSRF-Token": csrf})
    async with httpx.AsyncClient(base_url=live_api.url, cookies={"videoq_session": cookie}) as old:
        assert (await old.get("/v1/jobs")).status_code == 401  # the session ended server-side


async def test_revoking_the_key_ends_its_sessions(
    live_api: LiveApi, sessions: Any, api_key: str
) -> None:
    async with httpx.AsyncClient(base_url=live_api.url) as http:
        await sign_in(http, api_key)
        async with sessions() as session:
            await revoke_key(session, api_key[:10])
        response = await http.get("/v1/jobs")
        assert response.status_code == 401
        assert "sign in again" in response.json()["error"]["message"]


async def test_websockets_take_the_cookie_only_from_this_servers_pages(
    live_api: LiveApi, api_key: str
) -> None:
    async with httpx.AsyncClient(base_url=live_api.url) as http:
        await sign_in(http, api_key)
        cookie = f"videoq_session={http.cookies['videoq_session']}"
    url = live_api.url.replace("http", "ws", 1) + "/v1/events"
    own = live_api.url
    async with connect(url, additional_headers={"Cookie": cookie}, origin=own) as ws:  # type: ignore[arg-type]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.5)
        assert ws.close_code is None  # open and following
    for origin in ("https://evil.example", None):
        headers = {"Cookie": cookie}
        try:
            async with connect(url, additional_headers=headers, origin=origin) as ws:  # type: ignore[arg-type]
                with contextlib.suppress(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)
                assert ws.close_code == 4403
        except InvalidStatus:  # pragma: no cover - refused at the handshake would do too
            pass


async def test_no_key_in_any_url(live_api: LiveApi, api_key: str) -> None:
    """The console's page needs no key to load and its scripts never put one in a URL."""
    async with httpx.AsyncClient(base_url=live_api.url) as http:
        page = await http.get("/dashboard")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        names = ("console.js", "common.js", "job.js", "charts.js", "videoq.js")
        scripts = [await http.get(f"/static/{name}") for name in names]
        assert all(script.status_code == 200 for script in scripts)
        assert "text/javascript" in scripts[0].headers["content-type"]
        console = "".join(script.text for script in scripts[:4])  # the console's own
        assert "token=" not in page.text + console and "token:" not in console
        assert (await http.get("/static/../settings.py")).status_code == 404
        assert (await http.get("/static/nothing.js")).status_code == 404


async def test_no_state_changing_route_takes_the_cookie_without_the_csrf_token(
    live_api: LiveApi, api_key: str
) -> None:
    """Every POST/PUT/PATCH/DELETE of the app, a new one included, refuses a cookie alone
    (the signed inbound webhooks take no key at all; sign-out has its own test above)."""
    routes = {
        (method, route.path)
        for route in create_app(live_api.settings).routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method in ("POST", "PUT", "PATCH", "DELETE")
    }
    skipped = {p for _, p in routes if p.startswith("/v1/webhooks/")} | {"/v1/session"}
    async with httpx.AsyncClient(base_url=live_api.url) as http:
        await sign_in(http, api_key)
        job_id = (await http.post("/v1/jobs", json=BRIEF, headers=auth(api_key))).json()["id"]
        checked = 0
        for method, path in sorted(routes):
            if path in skipped:
                continue
            url = re.sub(r"\{[^}]+\}", "0", path.replace("{job_id}", job_id))
            response = await http.request(method, url, json=BRIEF)
            assert response.status_code == 403, (method, path, response.text)
            checked += 1
    assert checked >= 6
