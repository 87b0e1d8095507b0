"""Progress everyone can trust: exact replay across reconnects, history after the end, fan-out
to many sockets, and a stalled socket dropped without slowing the others."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import uuid
from typing import Any
from urllib.parse import urlparse

import pytest
from sqlalchemy import select, update
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK

from tests.conftest import LiveApi, new_key, running_worker, serving
from videoq import store
from videoq.broker import events
from videoq.client import Client, NotFoundError
from videoq.settings import Settings
from videoq.store import JobEvent
from videoq.store.apikeys import authenticate
from videoq.types import make_event


def ws_url(api: LiveApi, path: str) -> str:
    return api.url.replace("http", "ws", 1) + path


async def read_all(url: str, key: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Messages of one connection; with ``limit``, hang up after that many."""
    out: list[dict[str, Any]] = []
    async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        async for raw in ws:
            out.append(json.loads(raw))
            if limit is not None and len(out) >= limit:
                break
    return out


async def archived(sessions: Any, job_id: str) -> list[dict[str, Any]]:
    async with sessions() as session:
        rows = await session.execute(
            select(JobEvent.event)
            .where(JobEvent.job_id == uuid.UUID(job_id))
            .order_by(JobEvent.seq)
        )
        return list(rows.scalars())


async def test_reconnect_with_after_gets_exactly_the_missed_events(
    live_api: LiveApi, client: Client, api_key: str, settings: Settings, sessions: Any
) -> None:
    async with running_worker(settings.model_copy(update={"pipeline": "tests.fakes:chatty"})):
        job = await client.submit(product_name="Reconnect")
        first = await read_all(ws_url(live_api, f"/v1/jobs/{job.id}/events?after=0"), api_key, 8)
        seen = [e for e in first if e["type"] != "snapshot"]
        last = seen[-1]["seq"]
        rest = await read_all(ws_url(live_api, f"/v1/jobs/{job.id}/events?after={last}"), api_key)
    assert rest[0]["type"] == "snapshot"
    union = seen + [e for e in rest if e["type"] != "snapshot"]
    full = [e for e in await read_all(
        ws_url(live_api, f"/v1/jobs/{job.id}/events?after=0"), api_key
    ) if e["type"] != "snapshot"]  # fmt: skip
    assert [e["seq"] for e in union] == [e["seq"] for e in full] == list(range(1, len(full) + 1))
    assert union == full  # no gap, no duplicate, same content
    assert full[-1]["status"] == "succeeded" and len(full) > 20
    assert await archived(sessions, job.id) == full  # the PostgreSQL history agrees


async def test_history_outlives_redis(
    live_api: LiveApi, client: Client, settings: Settings, redis: Any
) -> None:
    """A finished job's events come from PostgreSQL once Redis no longer has them."""
    async with running_worker(settings.model_copy(update={"pipeline": "tests.fakes:quick"})):
        job = await client.submit(product_name="Outlives Redis")
        await client.wait(job.id, timeout=30)
    before = [e async for e in client.events(job.id, after=0)]
    await redis.delete(f"videoq:stream:{job.id}", f"videoq:seq:{job.id}")  # expired or lost
    after = [e async for e in client.events(job.id, after=0)]
    assert after[0].type == "snapshot" and after[0].seq == before[0].seq
    assert [e.model_dump() for e in after[1:]] == [e.model_dump() for e in before[1:]]
    assert after[-1].terminal


async def test_connecting_after_the_end_replays_history_then_closes(
    live_api: LiveApi, client: Client, settings: Settings
) -> None:
    async with running_worker(settings.model_copy(update={"pipeline": "tests.fakes:quick"})):
        job = await client.submit(product_name="Finished")
        await client.wait(job.id, timeout=30)
    history = [e async for e in client.events(job.id, after=0)]
    assert history[0].type == "snapshot" and history[0].status == "succeeded"
    assert [e.seq for e in history[1:]] == list(range(1, len(history)))
    assert history[-1].terminal
    with pytest.raises(NotFoundError):
        async for _ in client.events("00000000-0000-0000-0000-000000000000"):
            pass


async def stalled_socket(
    api: LiveApi, path: str, key: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket client that completes the handshake, then stops reading (small buffers, so
    the server's sends back up quickly)."""
    parsed = urlparse(api.url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (parsed.hostname, parsed.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    nonce = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: {parsed.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {nonce}\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {key}\r\n\r\n"
        ).encode()
    )
    assert b" 101 " in await reader.readline()
    return reader, writer


async def test_many_sockets_get_every_event_and_a_stalled_one_is_dropped(
    base_settings: Settings, sessions: Any, redis: Any
) -> None:
    # A small per-socket buffer, so the stalled socket overflows quickly.
    settings = base_settings.model_copy(update={"ws_buffer_events": 16})
    key = await new_key(sessions)
    async with serving(settings) as api:
        async with Client(api.url, key) as c:
            watched = await c.submit(product_name="Watched by 200")
            flooded = await c.submit(product_name="Flooded")
        stalled, stalled_writer = await stalled_socket(api, f"/v1/jobs/{flooded.id}/events", key)
        url = ws_url(api, f"/v1/jobs/{watched.id}/events")
        sockets = [
            await connect(url, additional_headers={"Authorization": f"Bearer {key}"}).__aenter__()
            for _ in range(200)
        ]
        for ws in sockets:
            assert json.loads(await ws.recv())["type"] == "snapshot"
        async with sessions() as session:
            tenant = (await authenticate(session, key)).tenant
        big = "x" * 8192
        for i in range(400):  # fill the stalled socket's TCP buffers, then its queue
            await events.publish(redis, tenant, make_event(
                flooded.id, "log", status="running", stage="video_gen", progress=60,
                message=f"{i} {big}",
            ))  # fmt: skip
        for i in range(30):
            done = i == 29
            await events.publish(redis, tenant, make_event(
                watched.id, "status" if done else "progress",
                status="succeeded" if done else "running", stage="compositing",
                progress=75 + i * 25 / 29,
            ))  # fmt: skip
        received = await asyncio.gather(*(collect(ws) for ws in sockets))
        assert all(len(r) == 30 for r in received)
        assert all([e["seq"] for e in r] == [e["seq"] for e in received[0]] for r in received)
        assert received[0][-1]["status"] == "succeeded"
        # The stalled socket was closed by the server with 4408 once its buffer overflowed.
        tail = b""
        while chunk := await asyncio.wait_for(stalled.read(1 << 16), 30):
            tail = (tail + chunk)[-64:]
            if b"client too slow" in tail:
                break
        assert b"client too slow" in tail
        stalled_writer.close()


async def collect(ws: Any) -> list[dict[str, Any]]:
    out = []
    async for raw in ws:
        out.append(json.loads(raw))
    return out


async def test_socket_closes_when_the_job_ended_but_its_terminal_event_was_lost(
    settings: Settings, sessions: Any, api_key: str
) -> None:
    """The job finishes in PostgreSQL while Redis never carries the news: the socket's idle
    check reads the row and closes instead of waiting forever."""
    quick_check = settings.model_copy(update={"ws_idle_check_s": 0.2})
    async with serving(quick_check) as api:
        async with Client(api.url, api_key) as c:
            job = await c.submit(product_name="Silent End")
        url = ws_url(api, f"/v1/jobs/{job.id}/events")
        async with connect(url, additional_headers={"Authorization": f"Bearer {api_key}"}) as ws:
            assert json.loads(await ws.recv())["type"] == "snapshot"
            async with sessions() as session:  # finished, with no event published
                await session.execute(
                    update(store.Job)
                    .where(store.Job.id == uuid.UUID(job.id))
                    .values(status="cancelled")
                )
                await session.commit()
            with pytest.raises(ConnectionClosedOK):
                await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 1000


async def test_a_workers_publisher_numbers_events_in_order_even_after_redis_forgot_its_script(
    redis: Any,
) -> None:
    """Events go by the script's hash; a Redis that lost its script cache (restarted) gets the
    script again, and no event of the batch is lost or doubled."""
    publisher = events.Publisher(redis)
    job_id = str(uuid.uuid4())
    await redis.script_flush()
    sent = [
        publisher("t-publisher", make_event(job_id, "progress", status="running",
                                                    stage="script_gen", progress=float(i)))
        for i in range(5)
    ]  # fmt: skip
    assert await asyncio.gather(*sent) == [1, 2, 3, 4, 5]
    await redis.script_flush()  # and the API's single publish, the same
    one = make_event(job_id, "progress", status="running", stage="voice_gen", progress=5.0)
    assert await events.publish(redis, "t-publisher", one) == 6
    stored = await events.replay(redis, job_id, 0)
    assert [(e["seq"], e["progress"]) for e in stored] == [(i + 1, float(i)) for i in range(6)]
    await publisher.aclose()


async def test_an_event_redis_refuses_fails_alone_and_leaves_no_gap(redis: Any) -> None:
    """One script call carries many jobs' events: one that Redis refuses (here its stream's
    key holds a string) is reported as not sent, its number is given back, and the other
    events of the batch go out."""
    publisher = events.Publisher(redis)
    good, bad = str(uuid.uuid4()), str(uuid.uuid4())
    await redis.set(f"videoq:stream:{bad}", "not a stream")

    def event(job_id: str, progress: float) -> dict[str, Any]:
        return make_event(job_id, "progress", status="running", stage="script_gen",
                                 progress=progress)  # fmt: skip

    sent = [publisher("t-refused", event(job_id, i)) for i, job_id in enumerate((good, bad, good))]
    assert await asyncio.gather(*sent) == [1, None, 2]
    assert [e["seq"] for e in await events.replay(redis, good, 0)] == [1, 2]
    assert not await redis.exists(f"videoq:seq:{bad}")
    await redis.delete(f"videoq:stream:{bad}")
    assert await events.publish(redis, "t-refused", event(bad, 3.0)) == 1
    # A counter Redis lost while the stream stayed (evicted): numbering goes on after the
    # stream's last event instead of being refused for as long as the stream lives.
    await redis.delete(f"videoq:seq:{good}")
    assert await publisher("t-refused", event(good, 4.0)) == 3
    assert [e["seq"] for e in await events.replay(redis, good, 0)] == [1, 2, 3]
    await publisher.aclose()
