"""PostgreSQL outages answered honestly: while the database is down every route that needs it
answers 503 ``database_unavailable`` with ``Retry-After`` (WebSockets close with 1013), the
routes that do not need it keep answering, and once it is back everything works again; the
SDK retries through the outage and its create makes one job.

The outage is real: a throwaway embedded PostgreSQL (not the session's shared one) is stopped
and started again. What an outage raises is checked class by class against the real server
(a backend terminated mid-query, a pool with no connection free, nothing listening), and the
API's answer for each class through the app in-process.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pgserver
import pytest
from pydantic import SecretStr
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from starlette.routing import Route, WebSocketRoute
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import auth, new_key, serving
from videoq import signing, store
from videoq.api import create_app
from videoq.children import preexec
from videoq.client import Client, ServerError
from videoq.embedded import free_port
from videoq.errors import DatabaseUnavailable
from videoq.settings import Settings

GITHUB_SECRET = "outage-github-secret"
REPLICATE_SECRET = signing.new_secret()


class Throwaway:
    """An embedded PostgreSQL of this module's own, migrated, that tests stop and start."""

    def __init__(self, directory: Path) -> None:
        self.pgdata = directory / "pg"
        self.server = self._start()
        self.url: str = self.server.get_uri()

    def _start(self) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pgserver.get_server(self.pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]

    def stop(self) -> None:
        """``pg_ctl stop`` (fast: open sessions are terminated, as an operator's stop does)."""
        self.server.cleanup()

    def start(self) -> None:
        self.server = self._start()
        assert self.server.get_uri() == self.url  # same socket: clients need no new URL


@pytest.fixture(scope="module")
def throwaway() -> Iterator[Throwaway]:
    directory = Path(tempfile.mkdtemp(prefix="videoq-outage-"))
    pg = Throwaway(directory)
    try:
        store.migrate(pg.url)
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Recording(httpx.AsyncBaseTransport):
    """A real HTTP transport that notes each request's method, Idempotency-Key and status."""

    inner: httpx.AsyncBaseTransport = field(default_factory=httpx.AsyncHTTPTransport)
    seen: list[tuple[str, str | None, int]] = field(default_factory=list)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        self.seen.append(
            (request.method, request.headers.get("idempotency-key"), response.status_code)
        )
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def release_body() -> bytes:
    return json.dumps(
        {
            "action": "published",
            "repository": {"name": "kettle", "full_name": "acme/kettle"},
            "release": {"tag_name": f"v{uuid.uuid4().hex[:6]}", "name": "Kettle"},
        }
    ).encode()


def route_calls(job_id: str) -> dict[tuple[str, str], Callable[[], dict[str, Any]]]:
    """One valid request for every HTTP route of the app, as ``httpx.request`` arguments (made
    fresh at each call: webhooks are signed anew)."""

    def github() -> dict[str, Any]:
        body = release_body()
        digest = hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
        headers = {"x-github-event": "release", "x-hub-signature-256": f"sha256={digest}"}
        return {"url": "/v1/webhooks/github", "content": body, "headers": headers}

    def replicate() -> dict[str, Any]:
        body = json.dumps({"id": f"p{uuid.uuid4().hex[:12]}", "status": "succeeded"}).encode()
        msg_id, stamp = f"msg_{uuid.uuid4().hex}", int(time.time())
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": signing.sign(REPLICATE_SECRET, msg_id, stamp, body),
        }
        return {"url": "/v1/webhooks/replicate", "content": body, "headers": headers}

    def plain(url: str, **kwargs: Any) -> Callable[[], dict[str, Any]]:
        return lambda: {"url": url, **kwargs}

    job = f"/v1/jobs/{job_id}"
    return {
        ("GET", "/openapi.json"): plain("/openapi.json"),
        ("GET", "/health"): plain("/health"),
        ("GET", "/v1/webhooks/secret"): plain("/v1/webhooks/secret"),
        ("POST", "/v1/webhooks/github"): github,
        ("POST", "/v1/webhooks/replicate"): replicate,
        ("POST", "/v1/jobs"): plain("/v1/jobs", json={"product_name": "During"}),
        ("GET", "/v1/jobs"): plain("/v1/jobs"),
        ("GET", "/v1/jobs/{job_id}"): plain(job),
        ("GET", "/v1/jobs/{job_id}/video"): plain(f"{job}/video"),
        ("POST", "/v1/jobs/{job_id}/cancel"): plain(f"{job}/cancel"),
        ("POST", "/v1/jobs/{job_id}/retry"): plain(f"{job}/retry"),
        ("GET", "/v1/workers"): plain("/v1/workers"),
        ("POST", "/v1/workers/clear-stale"): plain("/v1/workers/clear-stale"),
        ("GET", "/v1/queue/stats"): plain("/v1/queue/stats"),
        ("GET", "/v1/tenants/{tenant}"): plain("/v1/tenants/someone"),
        ("PUT", "/v1/tenants/{tenant}"): plain("/v1/tenants/someone", json={"weight": 2}),
        ("POST", "/v1/estimates"): plain("/v1/estimates", json={"product_name": "During"}),
        ("GET", "/v1/usage"): plain("/v1/usage"),
        ("POST", "/v1/interactions"): plain(
            "/v1/interactions", json={"user_id": "u", "video_id": job_id, "type": "view"}
        ),
        ("GET", "/v1/users/{user_id}/feed"): plain("/v1/users/u/feed"),
        ("GET", "/v1/users/{user_id}/preferences"): plain("/v1/users/u/preferences"),
        ("GET", "/v1/jobs/{job_id}/scenes"): plain(f"{job}/scenes"),
        ("GET", "/v1/jobs/{job_id}/scenes/{index}/thumbnail"): plain(f"{job}/scenes/0/thumbnail"),
        ("POST", "/v1/jobs/{job_id}/scenes/{index}/rerender"): plain(
            f"{job}/scenes/0/rerender", json={"prompt": "again", "dry_run": True}
        ),
        ("GET", "/v1/jobs/{job_id}/poster"): plain(f"{job}/poster"),
        ("GET", "/v1/jobs/{job_id}/captions"): plain(f"{job}/captions"),
        ("POST", "/v1/keys"): plain("/v1/keys", json={"tenant": "someone"}),
        ("GET", "/v1/keys"): plain("/v1/keys"),
        ("DELETE", "/v1/keys/{key_id}"): plain(f"/v1/keys/{uuid.uuid4()}"),
        ("POST", "/v1/schedules"): plain(
            "/v1/schedules", json={"product_name": "During", "cron": "@daily"}
        ),
        ("GET", "/v1/schedules"): plain("/v1/schedules"),
        ("GET", "/v1/schedules/{schedule_id}"): plain(f"/v1/schedules/{uuid.uuid4()}"),
        ("DELETE", "/v1/schedules/{schedule_id}"): plain(f"/v1/schedules/{uuid.uuid4()}"),
        ("GET", "/metrics"): plain("/metrics"),
        ("GET", "/dashboard"): plain("/dashboard"),
        ("GET", "/static/{name}"): plain("/static/videoq.js"),
        ("GET", "/v1/schemas/events.json"): plain("/v1/schemas/events.json"),
        ("POST", "/v1/session"): plain("/v1/session", json={"api_key": "vq_someone"}),
        ("GET", "/v1/session"): plain("/v1/session"),
        ("DELETE", "/v1/session"): plain("/v1/session"),
    }


#: The routes that need no PostgreSQL, and what they answer during an outage.
WITHOUT_DATABASE = {
    ("GET", "/openapi.json"): 200,
    ("GET", "/health"): 503,
    # The console's files, and its session routes without a session cookie (not signed in).
    ("GET", "/dashboard"): 200,
    ("GET", "/static/{name}"): 200,
    ("GET", "/v1/schemas/events.json"): 200,
    ("GET", "/v1/session"): 401,
    ("DELETE", "/v1/session"): 204,
}


async def socket_close_code(url: str) -> int | None:
    """The close code of a WebSocket that closes before sending anything; None if it sent."""
    async with connect(url, open_timeout=10) as ws:
        try:
            await asyncio.wait_for(ws.recv(), 10)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None
    return None


async def cli(*args: str, url: str, key: str, **env: str) -> tuple[int, str]:
    """`videoq …` as a subprocess: its exit code and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "videoq", *args,
        env={**os.environ, "VIDEOQ_API_URL": url, "VIDEOQ_API_KEY": key, **env},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, preexec_fn=preexec(),
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, err.decode()


@pytest.fixture
async def outage_api(throwaway: Throwaway, settings: Settings) -> AsyncIterator[Any]:
    on_throwaway = settings.model_copy(
        update={
            "database_url": throwaway.url,
            "github_webhook_secret": SecretStr(GITHUB_SECRET),
            "replicate_webhook_secret": SecretStr(REPLICATE_SECRET),
        }
    )
    async with serving(on_throwaway) as api:
        yield api


async def test_an_outage_is_503_on_every_route_and_everything_works_once_it_is_over(
    throwaway: Throwaway, outage_api: Any
) -> None:
    engine = store.create_engine(throwaway.url)
    key = await new_key(store.sessionmaker(engine), admin=True)
    await engine.dispose()
    app_routes = create_app(outage_api.settings).routes
    served = {
        (method, r.path)
        for r in app_routes
        if isinstance(r, Route)
        for method in r.methods or ()
        if method != "HEAD"
    }
    sockets = [r.path for r in app_routes if isinstance(r, WebSocketRoute)]
    ws_base = "ws" + outage_api.url.removeprefix("http")
    recording = Recording()
    async with (
        httpx.AsyncClient(base_url=outage_api.url, headers=auth(key), timeout=30) as http,
        Client(outage_api.url, key, timeout=60, transport=recording) as sdk,
    ):
        job_id = (await http.post("/v1/jobs", json={"product_name": "Before"})).json()["id"]
        calls = route_calls(job_id)
        assert set(calls) == served  # a new route must be added here, and so be checked
        assert sorted(sockets) == ["/v1/events", "/v1/jobs/{job_id}/events"]
        job_socket = f"{ws_base}/v1/jobs/{job_id}/events?token={key}"
        tenant_socket = f"{ws_base}/v1/events?token={key}"

        await asyncio.to_thread(throwaway.stop)
        try:
            submitted = asyncio.create_task(sdk.submit(product_name="Made during the outage"))
            for (method, path), call in calls.items():
                response = await http.request(method, **call())
                if (method, path) in WITHOUT_DATABASE:
                    assert response.status_code == WITHOUT_DATABASE[method, path], path
                    continue
                assert response.status_code == 503, (method, path, response.text)
                assert int(response.headers["retry-after"]) >= 1, path
                error = response.json()["error"]
                assert error["code"] == "database_unavailable", (path, error)
                assert set(error) == {"code", "message", "details"}
                assert throwaway.url.split("host=")[1] not in response.text  # no socket path
            health = (await http.get("/health")).json()
            assert health["status"] == "unhealthy" and health["database"] is False
            assert await socket_close_code(job_socket) == 1013
            assert await socket_close_code(tenant_socket) == 1013
            code, err = await cli("status", job_id, url=outage_api.url, key=key,
                                  VIDEOQ_API_TIMEOUT_S="1")  # fmt: skip
            assert code == 3, err
            assert "unavailable" in err and "database_unavailable" in err and "gave up" in err
            assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
            while not any(status == 503 for *_, status in recording.seen):
                assert not submitted.done(), submitted  # it must be waiting out the outage
                await asyncio.sleep(0.05)
        finally:
            await asyncio.to_thread(throwaway.start)

        made = await asyncio.wait_for(submitted, 60)
        posts = [(k, status) for method, k, status in recording.seen if method == "POST"]
        assert {k for k, _ in posts} == {posts[0][0]} and posts[0][0]  # one key, every try
        assert [status for _, status in posts][-1] == 202
        assert 503 in [status for _, status in posts]
        assert (await sdk.get(made.id)).id == made.id
        listed = [job.id async for job in sdk.list()]
        assert made.id in listed and listed.count(made.id) == 1

        for (method, path), call in calls.items():
            response = await http.request(method, **call())
            assert response.status_code < 500, (method, path, response.text)
        assert (await http.get("/health")).json()["database"] is True
        async with connect(job_socket, open_timeout=10) as ws:
            assert json.loads(await ws.recv())["type"] == "snapshot"


# --- What an outage raises, class by class --------------------------------------------------


async def failure_of(engine: Any, *statements: str) -> BaseException:
    """What running ``statements`` (``SELECT 1`` by default) on one connection raised."""
    try:
        async with engine.connect() as conn:
            for sql in statements or ("SELECT 1",):
                await conn.execute(text(sql))
    except Exception as exc:
        return exc
    raise AssertionError(f"{statements!r} did not fail")


async def terminate(engine: Any, marker: str) -> None:
    """Terminate the backend running the query that mentions ``marker``, once it runs."""
    find = text(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE query LIKE :q AND pid <> pg_backend_pid()"
    )
    async with engine.connect() as conn:
        for _ in range(200):
            if (await conn.execute(find, {"q": f"%AS {marker}%"})).all():
                return
            await asyncio.sleep(0.05)
    raise AssertionError("the query never ran")


async def test_a_backend_terminated_mid_query_is_an_outage(base_settings: Settings) -> None:
    assert base_settings.database_url
    engine = store.create_engine(base_settings.database_url)
    marker = f"outage_{uuid.uuid4().hex[:8]}"
    try:
        query = asyncio.create_task(failure_of(engine, f"SELECT pg_sleep(30) AS {marker}"))
        await terminate(engine, marker)
        lost = await asyncio.wait_for(query, 10)
    finally:
        await engine.dispose()
    assert isinstance(lost, sa_exc.DBAPIError) and lost.connection_invalidated
    assert isinstance(store.outage(lost), DatabaseUnavailable)


async def test_no_pooled_connection_free_in_time_is_an_outage(base_settings: Settings) -> None:
    assert base_settings.database_url
    engine = store.create_engine(
        base_settings.database_url, pool_size=1, max_overflow=0, pool_timeout=0.1
    )
    try:
        async with engine.connect() as held:
            await held.execute(text("SELECT 1"))
            timed_out = await failure_of(engine)
    finally:
        await engine.dispose()
    assert isinstance(timed_out, sa_exc.TimeoutError)
    unavailable = store.outage(timed_out)
    assert unavailable is not None and "no database connection" in unavailable.message


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@/postgres?host=/nonexistent-videoq-socket-dir",  # no socket
        "postgresql://postgres@127.0.0.1:{port}/postgres",  # nothing listens: refused
    ],
)
async def test_nothing_listening_is_an_outage(url: str) -> None:
    engine = store.create_engine(url.format(port=free_port()))
    try:
        refused = await failure_of(engine)
    finally:
        await engine.dispose()
    assert isinstance(refused, store.DatabaseUnreachable) and isinstance(refused, OSError)
    assert isinstance(store.outage(refused), DatabaseUnavailable)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.CannotConnectNowError("the database system is shutting down"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator"),
        asyncpg.exceptions.CrashShutdownError("terminating connection due to crash"),
        asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    ],
    ids=type,
)
def test_the_server_refusing_connections_is_an_outage(exc: Exception) -> None:
    assert isinstance(store.outage(exc), DatabaseUnavailable)


async def test_a_failing_request_is_not_an_outage(base_settings: Settings) -> None:
    assert base_settings.database_url
    engine = store.create_engine(base_settings.database_url)
    try:
        failures = [
            await failure_of(engine, "SELECT * FROM no_such_table"),
            await failure_of(engine, "SELECT 1/0"),
            await failure_of(engine, "SET statement_timeout = 1", "SELECT pg_sleep(1)"),
        ]
    finally:
        await engine.dispose()
    for failure in [*failures, FileNotFoundError("a file, not the database"), TimeoutError()]:
        assert store.outage(failure) is None, repr(failure)


OUTAGES = [
    store.DatabaseUnreachable("cannot connect to PostgreSQL: [Errno 111] refused"),
    sa_exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached"),
    sa_exc.DBAPIError("SELECT 1", None, Exception("closed"), connection_invalidated=True),
    asyncpg.CannotConnectNowError("the database system is starting up"),
]
NOT_OUTAGES = [
    sa_exc.DBAPIError("SELECT 1", None, Exception("syntax"), connection_invalidated=False),
    sa_exc.IntegrityError("INSERT", None, Exception("duplicate key")),
    FileNotFoundError("not the database"),
]


@pytest.mark.parametrize("exc", OUTAGES + NOT_OUTAGES, ids=lambda e: type(e).__name__)
async def test_the_api_answers_503_for_an_outage_and_500_for_anything_else(
    asgi_client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, exc: Exception
) -> None:
    async def failing(*_: Any) -> Any:
        raise exc

    monkeypatch.setattr("videoq.api.deps.authenticate", failing)
    response = await asgi_client.get("/v1/jobs", headers=auth("vq_whatever"))
    error = response.json()["error"]
    if any(exc is outage for outage in OUTAGES):
        assert response.status_code == 503
        assert response.headers["retry-after"] == "2"
        assert error["code"] == "database_unavailable"
        assert str(exc) not in error["message"]
    else:
        assert response.status_code == 500 and error["code"] == "internal_error"


# --- The SDK -----------------------------------------------------------------------------------


def replying(*replies: httpx.Response) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering with ``replies`` in turn (the last one forever)."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return replies[min(len(seen), len(replies)) - 1]

    return httpx.MockTransport(handle), seen


def unavailable(retry_after: str | None = "0") -> httpx.Response:
    headers = {} if retry_after is None else {"retry-after": retry_after}
    body = {"error": {"code": "database_unavailable", "message": "down", "details": None}}
    return httpx.Response(503, json=body, headers=headers)


JOB = {"id": "7d3f6c1e-0000-4000-8000-000000000000", "status": "queued"}


async def test_the_sdk_retries_a_create_through_503s_with_one_idempotency_key() -> None:
    transport, seen = replying(unavailable(), unavailable(), httpx.Response(202, json=JOB))
    async with Client("http://videoq", "vq_key", transport=transport) as sdk:
        job = await sdk.submit(product_name="Lamp")
        assert job.id == JOB["id"] and len(seen) == 3
        keys = {request.headers["idempotency-key"] for request in seen}
        assert len(keys) == 1 and uuid.UUID(keys.pop())
        assert {request.content for request in seen} == {b'{"product_name":"Lamp"}'}
        seen.clear()  # the transport answers 503 twice again
        await sdk.submit(product_name="Lamp", idempotency_key="mine")
        assert [request.headers["idempotency-key"] for request in seen] == ["mine"] * 3


async def test_the_sdk_gives_up_once_its_timeout_is_spent() -> None:
    transport, seen = replying(unavailable("0.1"))
    async with Client("http://videoq", "vq_key", timeout=0.5, transport=transport) as sdk:
        started = time.monotonic()
        with pytest.raises(ServerError) as raised:
            await sdk.get(JOB["id"])
        assert time.monotonic() - started < 2
    assert raised.value.status == 503 and raised.value.code == "database_unavailable"
    assert 2 <= len(seen) <= 6


async def test_the_sdk_does_not_wait_past_its_timeout_for_a_long_retry_after() -> None:
    transport, seen = replying(unavailable("3600"), httpx.Response(200, json=JOB))
    async with Client("http://videoq", "vq_key", timeout=5, transport=transport) as sdk:
        started = time.monotonic()
        with pytest.raises(ServerError):
            await sdk.get(JOB["id"])  # capped at 10 s, still past the 5 s budget: no wait
        assert time.monotonic() - started < 1 and len(seen) == 1


async def test_the_sdk_retries_only_503() -> None:
    failure = {"error": {"code": "internal_error", "message": "boom", "details": None}}
    transport, seen = replying(httpx.Response(500, json=failure), httpx.Response(200, json=JOB))
    async with Client("http://videoq", "vq_key", transport=transport) as sdk:
        with pytest.raises(ServerError) as raised:
            await sdk.get(JOB["id"])
    assert raised.value.status == 500 and len(seen) == 1


async def test_a_download_is_retried_through_503s(tmp_path: Path) -> None:
    transport, seen = replying(unavailable(None), httpx.Response(200, content=b"mp4 bytes"))
    async with Client("http://videoq", "vq_key", transport=transport) as sdk:
        path = await sdk.download(JOB["id"], tmp_path / "video.mp4")
    assert path.read_bytes() == b"mp4 bytes" and len(seen) == 2
