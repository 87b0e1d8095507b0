"""Preference-driven generation end to end on the embedded PostgreSQL (with pgvector) and Redis,
with a real API and a real worker: interactions with videos of one style feed the user similar
existing videos; a taste nothing matches gets new videos made, run through the pipeline and
fed once they succeed (at most the daily cap, never one brief twice); another tenant sees none
of it. Then the nearest-neighbour query on the real server (the HNSW index, against an exact
scan), the migration's refusal of a server without pgvector, and the bad input."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import LiveApi, auth, new_key, running_worker, serving
from tests.test_api import assert_error
from tests.test_cli import run_cli
from videoq import store
from videoq.client import Client, ValidationError
from videoq.providers.offline import OfflineScriptProvider
from videoq.schemas import JobCreate
from videoq.settings import Settings
from videoq.store import feed as rows
from videoq.store import interactions
from videoq.store.engine import DirectPool
from videoq.store.tables import DIMENSIONS, ApiKey, FeedUser, Interaction, VideoEmbedding
from videoq.types import Brief

BREAD = "rustic sourdough loaves fresh from a wood-fired bakery oven"
DIVING = "scuba diving gear on a coral reef in deep blue water"
ORIGAMI = "folded paper origami cranes on a wooden desk"


async def finished_video(sessions: Any, tenant: str, name: str, style: str, prompt: str) -> str:
    """A succeeded job of ``tenant`` with its offline script, as a worker leaves one (its
    video file is not needed here); its id."""
    body = JobCreate.model_validate(
        {"product_name": name, "style": style, "prompt": prompt, "duration_s": 5}
    )
    script = await OfflineScriptProvider().write_script(Brief(**body.brief()))
    now = datetime.now(UTC)
    job = store.Job(
        id=uuid.uuid4(), tenant=tenant, queue="parked:feed", status="succeeded", progress=100.0,
        priority="normal", attempts=1, max_retries=0, brief=body.brief(), options={},
        created_at=now, updated_at=now, finished_at=now,
        result={"duration_s": 5.0, "size_bytes": 1},
    )  # fmt: skip
    async with sessions() as session:
        session.add(job)
        await session.flush()
        session.add(
            store.StageCheckpoint(
                job_id=job.id, stage="script_gen", attempt=1, output=script.to_dict()
            )
        )
        await session.commit()
    return str(job.id)


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def feed_of(client: Client, user_id: str) -> list[Any]:
    return [item async for item in client.feed(user_id, page_size=2)]  # pages too


class Stream:
    """The tenant's event stream (``WS /v1/events``), its feed events collected."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.feed: list[dict[str, Any]] = []

    async def next_feed(self, change: str, timeout: float = 120) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                event: dict[str, Any] = json.loads(await self.ws.recv())
                if event.get("type") == "feed":
                    self.feed.append(event)
                    if event["change"] == change:
                        return event


@pytest.fixture
def feed_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"feed_poll_s": 0.1})


@contextlib.asynccontextmanager
async def stream(api: LiveApi, key: str) -> AsyncIterator[Stream]:
    url = api.url.replace("http", "ws", 1) + f"/v1/events?token={key}"
    async with connect(url) as ws:
        yield Stream(ws)


async def test_interactions_with_one_style_feed_similar_existing_videos(
    feed_settings: Settings, sessions: Any
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    key, other_key = await new_key(sessions, tenant), await new_key(sessions)
    names = ["Crust Co", "Levain Lab", "Morning Rise", "Oven Door", "Flour Power", "Rye Days"]
    bread = [await finished_video(sessions, tenant, n, "playful", BREAD) for n in names]
    diving = [
        await finished_video(sessions, tenant, n, "cinematic", DIVING)
        for n in ("Reef Fins", "Deep Mask", "Blue Tank")
    ]
    async with (
        serving(feed_settings) as api,
        running_worker(feed_settings),
        Client(api.url, key) as client,
        Client(api.url, other_key) as other,
    ):
        async with stream(api, key) as events:
            kinds = ("view", "like", "save", "share", "view")
            for n in range(15):
                await client.interact("u-1", bread[n % 3], kinds[n % 5], watched_s=42.0)  # type: ignore[arg-type]
            refilled = await events.next_feed("refilled", timeout=60)
        items = await feed_of(client, "u-1")
        prefs = await client.preferences("u-1")
        code, out, err = await run_cli("feed", "u-1", "--json", url=api.url, key=key)
        assert code == 0, err
        assert [row["job_id"] for row in json.loads(out)] == [item.job_id for item in items]
        code, table, err = await run_cli("feed", "u-1", "--limit", "2", url=api.url, key=key)
        assert code == 0, err
        # Another tenant: the same user id names another user, and the videos are not its own.
        assert await feed_of(other, "u-1") == []
        theirs = await other.preferences("u-1")
        with pytest.raises(ValidationError) as refused:
            await other.interact("u-1", bread[0], "like")
        assert [d["field"] for d in refused.value.details] == ["video_id"]
    assert refused.value.status == 422
    assert {item.job_id for item in items} == set(bread[3:])
    assert not {item.job_id for item in items} & set(diving)
    threshold = feed_settings.similarity_threshold
    assert all(item.type == "existing_video" and item.status == "ready" for item in items)
    # The table: the best two, each on its row with its similarity.
    assert "feed of u-1" in table and table.count("existing_video") == 2, table
    for item in items[:2]:
        assert item.job_id in table and f"{item.similarity:.3f}" in table, table
    assert items[2].job_id not in table
    assert all(item.similarity >= threshold for item in items)
    assert all(item.video_url and item.video_url.endswith(f"{item.job_id}/video") for item in items)
    similarities = [item.similarity for item in items]
    assert similarities == sorted(similarities, reverse=True)
    assert refilled["user_id"] == "u-1" and set(refilled["existing"]) == set(bread[3:])
    assert refilled["generated"] == []
    assert prefs["interactions"] == 15 and prefs["pending_interactions"] == 0
    assert prefs["preference_updated_at"] and prefs["briefs"] == []
    assert theirs["interactions"] == 0 and theirs["preference_updated_at"] is None


async def test_a_taste_nothing_matches_gets_new_videos_made_within_the_daily_cap(
    feed_settings: Settings, sessions: Any
) -> None:
    settings = feed_settings.model_copy(
        update={"max_generated_per_user_per_day": 4, "briefs_per_refill": 3}
    )
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    key, other_key = await new_key(sessions, tenant), await new_key(sessions)
    origami = [
        await finished_video(sessions, tenant, n, "minimal", ORIGAMI)
        for n in ("Fold Studio", "Paper Crane")
    ]
    for name in ("Crust Co", "Levain Lab", "Morning Rise"):
        await finished_video(sessions, tenant, name, "playful", BREAD)
    async with (
        serving(settings) as api,
        running_worker(settings),
        Client(api.url, key) as client,
    ):
        async with stream(api, key) as events:
            for n in range(15):
                await client.interact("u-2", origami[n % 2], "like")
            refilled = await events.next_feed("refilled", timeout=60)
            made = refilled["generated"]
            assert len(made) == 3 and refilled["existing"] == []
            pending = await feed_of(client, "u-2")
            assert {item.job_id for item in pending} == set(made)
            assert all(item.type == "generated_video" for item in pending)
            ready = {(await events.next_feed("ready"))["job_id"] for _ in made}
        assert ready == set(made)
        items = await feed_of(client, "u-2")
        assert {item.job_id for item in items} == set(made)
        assert all(item.status == "ready" and item.video_url for item in items)
        for job_id in made:
            job = await client.get(job_id)
            assert job.status == "succeeded" and job.priority == "low"
            brief = (job.model_extra or {})["brief"]
            assert brief["product_name"] in ("Fold Studio", "Paper Crane")
            assert brief["duration_s"] == 5  # the format of the videos the user watches
        # 15 more: one more brief fits in the day's cap of 4, and none repeats an earlier one.
        for n in range(15):
            await client.interact("u-2", origami[n % 2], "save")

        async def four_briefs() -> Any:
            prefs = await client.preferences("u-2")
            return prefs if prefs["interactions"] == 30 and prefs["pending_interactions"] == 0 \
                else None  # fmt: skip

        prefs = await until(four_briefs, what="the second refill")
        await asyncio.sleep(5 * settings.feed_poll_s)
        async with Client(api.url, other_key) as other:
            assert await feed_of(other, "u-2") == []
            assert (await other.preferences("u-2"))["briefs"] == []
    briefs = prefs["briefs"]
    assert len(briefs) == 4 and all(b["job_id"] for b in briefs)
    assert len({json.dumps(b["brief"], sort_keys=True) for b in briefs}) == 4
    async with sessions() as session:
        assert len(await rows.briefs_of(session, tenant, "u-2")) == 4


def low_dimensional(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` unit vectors on an 8-dimensional subspace: their neighbours are well apart
    (isotropic noise in 1,536 dimensions would put them all at about the same distance)."""
    points = rng.normal(size=(count, 8)) @ rng.normal(size=(8, DIMENSIONS))
    norms: np.ndarray = np.linalg.norm(points, axis=1, keepdims=True)
    unit: np.ndarray = points / norms
    return unit


async def test_nearest_neighbours_use_the_hnsw_index_and_equal_an_exact_scan(
    sessions: Any,
) -> None:
    tenant, model = f"t-{uuid.uuid4().hex[:8]}", "test-model"
    vectors = low_dimensional(np.random.default_rng(5), 1000)
    ids = [uuid.uuid4() for _ in vectors]
    now = datetime.now(UTC)
    async with sessions() as session:
        await session.execute(
            insert(store.Job),
            [
                {"id": i, "tenant": tenant, "queue": "parked:feed", "status": "succeeded",
                 "progress": 100.0, "priority": "normal", "attempts": 1, "max_retries": 0,
                 "brief": {}, "options": {}, "created_at": now, "updated_at": now,
                 "embedded_at": now}
                for i in ids
            ],
        )  # fmt: skip
        for start in range(0, len(ids), 250):
            await session.execute(
                insert(VideoEmbedding),
                [
                    {"job_id": i, "tenant": tenant, "model": model, "embedding": v.tolist()}
                    for i, v in zip(
                        ids[start : start + 250], vectors[start : start + 250], strict=True
                    )
                ],
            )
        await session.commit()
        await session.execute(text("ANALYZE video_embeddings"))
        await session.commit()
    # At 1,000 rows the planner finds scanning them all and sorting cheaper than the HNSW
    # index (bench/feed.py shows it choosing the index by itself at 100,000): here it is told
    # to avoid those paths, on one connection, to see the query take the index.
    rng = np.random.default_rng(11)
    queries = [(vectors[n * 37] + 0.05 * rng.normal(size=DIMENSIONS)).tolist() for n in range(5)]
    params = {"vector": queries[0], "tenant": tenant, "model": model, "user_id": "nobody",
              "limit": 10, "candidates": rows.EF_SEARCH}  # fmt: skip
    explain = text("EXPLAIN " + rows.NEAREST_SQL).bindparams(rows.VECTOR_PARAM)
    indexed = []
    async with sessions.kw["bind"].connect() as connection:
        for path in ("seqscan", "bitmapscan", "sort"):
            await connection.execute(text(f"SET enable_{path} = off"))
        await connection.commit()
        async with AsyncSession(bind=connection) as session:
            for query in queries:
                indexed.append(await rows.nearest(session, tenant, "nobody", query, model, 10))
            await session.execute(text(f"SET LOCAL hnsw.ef_search = {rows.EF_SEARCH}"))
            plan = "\n".join(line for (line,) in await session.execute(explain, params))
            await session.commit()
        await connection.execute(text("RESET ALL"))
        await connection.commit()
    assert "Index Scan using video_embeddings_hnsw" in plan, plan
    async with sessions() as session:
        await session.execute(text("SET LOCAL enable_indexscan = off"))
        exact_plan = "\n".join(line for (line,) in await session.execute(explain, params))
        await session.commit()
        assert "video_embeddings_hnsw" not in exact_plan, exact_plan
        for query, found in zip(queries, indexed, strict=True):
            exact = await rows.nearest(session, tenant, "nobody", query, model, 10, exact=True)
            assert [j for j, _ in found] == [j for j, _ in exact]
            assert np.allclose([s for _, s in found], [s for _, s in exact], atol=1e-5)
            truth = np.argsort(-(vectors @ np.asarray(query)))[:10]
            assert [j for j, _ in exact] == [ids[i] for i in truth]


async def test_the_migration_refuses_a_server_without_pgvector(sessions: Any) -> None:
    migration = importlib.import_module("videoq.store.migrations.versions.0010_feed")
    async with sessions() as session:
        connection = await session.connection()
        await connection.run_sync(migration.require_pgvector)  # this server has it
        with pytest.raises(RuntimeError, match=r"no pgvector extension .*videoq migrate"):
            await connection.run_sync(migration.require_pgvector, "no_such_extension")


async def count_stored(sessions: Any, tenant: str) -> tuple[int, int]:
    async with sessions() as session:
        interactions = await session.scalar(
            select(func.count()).select_from(Interaction).where(Interaction.tenant == tenant)
        )
        users = await session.scalar(
            select(func.count()).select_from(FeedUser).where(FeedUser.tenant == tenant)
        )
    return int(interactions or 0), int(users or 0)


async def test_bad_interactions_are_refused_naming_the_field_and_nothing_is_stored(
    live_api: LiveApi, sessions: Any
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    key, other_key = await new_key(sessions, tenant), await new_key(sessions)
    video = await finished_video(sessions, tenant, "Kettle", "bold", "a kettle")
    theirs = await finished_video(
        sessions, (await principal_tenant(sessions, other_key)), "Teapot", "bold", "a teapot"
    )
    async with httpx.AsyncClient(base_url=live_api.url, headers=auth(key)) as http:
        unfinished = (await http.post("/v1/jobs", json={"product_name": "Later"})).json()["id"]
        good = {"user_id": "u", "video_id": video, "type": "view", "watched_s": 3.5}
        cases: list[tuple[dict[str, Any] | bytes, str]] = [
            ({**good, "video_id": str(uuid.uuid4())}, "video_id"),
            ({**good, "video_id": unfinished}, "video_id"),
            ({**good, "video_id": theirs}, "video_id"),
            ({**good, "video_id": "not-a-uuid"}, "video_id"),
            ({**good, "type": "love"}, "type"),
            ({**good, "user_id": "u" * 10_240}, "user_id"),
            ({**good, "user_id": "\x00"}, "user_id"),
            ({**good, "watched_s": "12"}, "watched_s"),
            ({**good, "watched_s": -1}, "watched_s"),
            (json.dumps(good).replace("3.5", "NaN").encode(), "watched_s"),
            (json.dumps(good).replace("3.5", "Infinity").encode(), "watched_s"),
            ({**good, "extra": 1}, "extra"),
        ]
        for body, field in cases:
            if isinstance(body, bytes):
                answer = await http.post("/v1/interactions", content=body)
            else:
                answer = await http.post("/v1/interactions", json=body)
            error = assert_error(answer, 422, "validation_error")
            assert [d["field"] for d in error["details"]] == [field], (field, error)
            assert field in error["message"]
        assert await count_stored(sessions, tenant) == (0, 0)
        long_key = await http.post(
            "/v1/interactions", json=good, headers={"Idempotency-Key": "k" * 201}
        )
        assert assert_error(long_key, 422)["details"][0]["field"] == "Idempotency-Key"
        for path, field in (
            ("/v1/users/u/feed?limit=0", "limit"),
            ("/v1/users/u/feed?cursor=bogus", "cursor"),
            (f"/v1/users/{'u' * 201}/feed", "user_id"),
            (f"/v1/users/{'u' * 201}/preferences", "user_id"),
        ):
            error = assert_error(await http.get(path), 422, "validation_error")
            assert error["details"][0]["field"] == field
        assert await count_stored(sessions, tenant) == (0, 0)


async def principal_tenant(sessions: Any, key: str) -> str:
    from videoq.store.apikeys import authenticate

    async with sessions() as session:
        return (await authenticate(session, key)).tenant


async def test_a_retried_interaction_is_recorded_once(live_api: LiveApi, sessions: Any) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    key = await new_key(sessions, tenant)
    video = await finished_video(sessions, tenant, "Kettle", "bold", "a kettle")
    body = {"user_id": "u", "video_id": video, "type": "like"}
    async with httpx.AsyncClient(base_url=live_api.url, headers=auth(key)) as http:
        first = await http.post("/v1/interactions", json=body, headers={"Idempotency-Key": "a"})
        again = await http.post("/v1/interactions", json=body, headers={"Idempotency-Key": "a"})
        other = await http.post(
            "/v1/interactions", json={**body, "type": "skip"}, headers={"Idempotency-Key": "a"}
        )
        fresh = await http.post("/v1/interactions", json=body)
    assert first.status_code == 202 and again.status_code == 200, (first.text, again.text)
    assert again.json() == first.json() and first.json()["type"] == "like"
    assert assert_error(other, 422, "idempotency_key_reused")
    assert fresh.status_code == 202 and fresh.json()["id"] != first.json()["id"]
    assert await count_stored(sessions, tenant) == (2, 1)
    async with sessions() as session:
        user = await rows.user(session, tenant, "u")
    assert user is not None and user.interactions == user.pending == 2


async def test_one_idempotency_key_from_two_tenants_is_two_interactions(
    live_api: LiveApi, sessions: Any
) -> None:
    # Keys are the caller's to choose: another tenant's, however alike, neither replays this
    # one's answer nor is refused as reused.
    tenants = [f"t-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    answers = []
    async with httpx.AsyncClient(base_url=live_api.url) as http:
        for tenant, kind in zip(tenants, ("like", "skip"), strict=True):
            key = await new_key(sessions, tenant)
            video = await finished_video(sessions, tenant, "Kettle", "bold", "a kettle")
            body = {"user_id": "u", "video_id": video, "type": kind}
            headers = {**auth(key), "Idempotency-Key": "shared"}
            answers.append(await http.post("/v1/interactions", json=body, headers=headers))
    assert [a.status_code for a in answers] == [202, 202], [a.text for a in answers]
    assert [a.json()["type"] for a in answers] == ["like", "skip"]
    assert answers[0].json()["id"] != answers[1].json()["id"]
    assert [await count_stored(sessions, t) for t in tenants] == [(1, 1), (1, 1)]


async def test_interactions_sent_at_once_are_each_recorded_once(
    live_api: LiveApi, sessions: Any
) -> None:
    # Arriving together, they are written in shared batches: a repeated key inside a batch,
    # a video of another tenant and several users' counters must come out as if one by one.
    tenant, other = f"t-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    key = await new_key(sessions, tenant)
    video = await finished_video(sessions, tenant, "Kettle", "bold", "a kettle")
    foreign = await finished_video(sessions, other, "Toaster", "bold", "a toaster")

    def body(n: int, of: str = video) -> dict[str, Any]:
        return {"user_id": f"u{n % 3}", "video_id": of, "type": "view", "watched_s": 4.0}

    async with httpx.AsyncClient(base_url=live_api.url, headers=auth(key)) as http:
        answers = await asyncio.gather(
            *(http.post("/v1/interactions", json=body(n)) for n in range(30)),
            *(
                http.post("/v1/interactions", json=body(0), headers={"Idempotency-Key": "same"})
                for _ in range(5)
            ),
            *(http.post("/v1/interactions", json=body(n, foreign)) for n in range(3)),
        )
    codes = [a.status_code for a in answers]
    assert codes[:30] == [202] * 30
    assert sorted(codes[30:35]) == [200, 200, 200, 200, 202]
    assert len({a.json()["id"] for a in answers[30:35]}) == 1
    assert [assert_error(a, 422)["details"][0]["field"] for a in answers[35:]] == ["video_id"] * 3
    assert await count_stored(sessions, tenant) == (31, 3)
    async with sessions() as session:
        users = [await rows.user(session, tenant, f"u{n}") for n in range(3)]
    assert [u.interactions if u else 0 for u in users] == [11, 10, 10]
    assert all(u is not None and u.pending == u.interactions for u in users)


async def test_the_key_is_checked_in_the_batch_at_once_and_a_bad_one_stores_nothing(
    live_api: LiveApi, sessions: Any
) -> None:
    # A request with a key and a valid body has its key looked up by the batch's statement:
    # revocation and expiry must still hold at once, and a bad key must still outrank a bad
    # body (the caller learns nothing of the body's faults).
    from datetime import timedelta

    from videoq.store.apikeys import issue, revoke_key

    tenant = f"t-{uuid.uuid4().hex[:8]}"
    async with sessions() as session:
        row, key = await issue(session, tenant)
        _, expired = await issue(session, tenant, expires_at=datetime.now(UTC) - timedelta(1))
    video = await finished_video(sessions, tenant, "Kettle", "bold", "a kettle")
    good = {"user_id": "u", "video_id": video, "type": "like"}
    async with httpx.AsyncClient(base_url=live_api.url) as http:
        answers = await asyncio.gather(
            *(http.post("/v1/interactions", json=good, headers=auth(key)) for _ in range(4)),
            *(http.post("/v1/interactions", json=good, headers=auth("vq_bogus")) for _ in range(3)),
            http.post("/v1/interactions", json=good, headers=auth(expired)),
            http.post("/v1/interactions", json={"type": "love"}, headers=auth("vq_bogus")),
            http.post("/v1/interactions", json=good),
        )
        assert [a.status_code for a in answers[:4]] == [202] * 4
        for answer in answers[4:7]:
            assert "invalid API key" in assert_error(answer, 401, "unauthorized")["message"]
        assert "expired" in assert_error(answers[7], 401)["message"]
        assert_error(answers[8], 401)
        assert_error(answers[9], 401)
        async with sessions() as session:
            used = await session.get(ApiKey, row.id)
            assert used is not None and used.last_used_at is not None
            await revoke_key(session, str(row.id))
        revoked = await http.post("/v1/interactions", json=good, headers=auth(key))
        assert_error(revoked, 401)
    assert await count_stored(sessions, tenant) == (4, 1)


async def test_an_intake_connection_the_server_drops_is_replaced_and_nothing_is_lost(
    live_api: LiveApi, sessions: Any
) -> None:
    # The intake's writers hold their connections between batches: one the server dropped
    # must be given up and replaced, not written on again and again.
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    key = await new_key(sessions, tenant=tenant)
    video = await finished_video(sessions, tenant, "Kettle", "bold", "a kettle")
    users = [f"u{n}" for n in range(8)]  # enough for every writer, one per user
    async with httpx.AsyncClient(base_url=live_api.url, headers=auth(key)) as http:

        async def interact(user: str) -> int:
            body = {"user_id": user, "video_id": video, "type": "view"}
            return (await http.post("/v1/interactions", json=body)).status_code

        assert await asyncio.gather(*map(interact, users)) == [202] * len(users)
        async with sessions() as session:
            dropped = await session.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = 'videoq intake'"
                )
            )
        assert dropped
        for _ in range(2):  # the first batch on a dropped connection, then the next
            assert await asyncio.gather(*map(interact, users)) == [202] * len(users)
    assert await count_stored(sessions, tenant) == (3 * len(users), len(users))


async def test_a_batch_cut_short_is_ended_on_the_server_and_never_lands_later(
    settings: Settings, sessions: Any
) -> None:
    # A batch that outlives its timeout (here: waiting on the user's counters, which another
    # transaction holds) is ended on the server before it is written again, so neither it nor
    # its retry commits behind the caller's back once the lock is gone; the next batch takes
    # a new connection.
    assert settings.database_url
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    key = await new_key(sessions, tenant=tenant)
    video = uuid.UUID(await finished_video(sessions, tenant, "Kettle", "bold", "a kettle"))
    intake = interactions.Intake(settings.database_url, timeout_s=0.5)

    async def interact(kind: str) -> bool:
        new = interactions.NewInteraction("u", video, kind)
        _, created = await intake.record(new, idempotency_key=None, api_key=key)
        return created

    try:
        assert await interact("view")
        async with sessions() as session:
            held = select(FeedUser).where(FeedUser.tenant == tenant).with_for_update()
            assert (await session.execute(held)).scalar_one().interactions == 1
            with pytest.raises(TimeoutError):
                await interact("like")
            await session.rollback()
        async with sessions() as session:  # the row again: after whatever still waited on it
            await session.execute(held)
        assert await count_stored(sessions, tenant) == (1, 1)
        assert await interact("save")
    finally:
        await intake.aclose()
    assert await count_stored(sessions, tenant) == (2, 1)


@pytest.mark.parametrize(("idle_s", "connections"), [(240.0, 1), (0.0, 3)])
async def test_an_intake_connection_idle_too_long_is_replaced(
    settings: Settings,
    sessions: Any,
    monkeypatch: pytest.MonkeyPatch,
    idle_s: float,
    connections: int,
) -> None:
    # Held between batches, but not past IDLE_S: a NAT may have dropped it without a word.
    assert settings.database_url
    monkeypatch.setattr(interactions, "IDLE_S", idle_s)
    opened = 0
    connect = DirectPool.connect

    async def counted(pool: Any) -> Any:
        nonlocal opened
        opened += 1
        return await connect(pool)

    monkeypatch.setattr(DirectPool, "connect", counted)
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    key = await new_key(sessions, tenant=tenant)
    video = uuid.UUID(await finished_video(sessions, tenant, "Kettle", "bold", "a kettle"))
    intake = interactions.Intake(settings.database_url)
    try:
        for kind in ("view", "like", "save"):  # one user: one writer
            new = interactions.NewInteraction("u", video, kind)
            await intake.record(new, idempotency_key=None, api_key=key)
    finally:
        await intake.aclose()
    assert opened == connections
    assert await count_stored(sessions, tenant) == (3, 1)


def touch(
    kind: str,
    vector: list[float] | None,
    *,
    days: float = 0.0,
    watched_s: float | None = None,
    video: uuid.UUID | None = None,
) -> Any:
    """One interaction of a history: of ``video`` (a new one by default), whose brief's
    product name is the video's id."""
    from datetime import timedelta

    from videoq.store.feed import Touch

    video = video or uuid.uuid4()
    created = datetime.now(UTC) - timedelta(days=days)
    return Touch(kind, watched_s, created, video, {"product_name": str(video)}, vector, False)


def axis(i: int) -> list[float]:
    vector = [0.0] * DIMENSIONS
    vector[i] = 1.0
    return vector


def test_the_preference_weighs_types_ages_and_short_views(settings: Settings) -> None:
    from videoq import feed

    now = datetime.now(UTC)
    # A like pulls three times as hard as a view; a skip pushes away.
    liked = feed.preference([touch("like", axis(0)), touch("view", axis(1), watched_s=60)],
                            settings, now)  # fmt: skip
    assert liked is not None and liked[0] > liked[1] > 0
    assert math.isclose(sum(x * x for x in liked), 1.0)
    skipped = feed.preference([touch("view", axis(0), watched_s=60), touch("skip", axis(1))],
                              settings, now)  # fmt: skip
    assert skipped is not None and skipped[0] > 0 > skipped[1]
    # A view shorter than short_view_s counts against its video.
    short = feed.preference([touch("view", axis(0), watched_s=1.0)], settings, now)
    assert short is not None and short[0] < 0
    # The same like, one half-life older, counts half.
    half = settings.preference_half_life_days
    aged = feed.preference([touch("like", axis(0), days=half), touch("like", axis(1))],
                           settings, now)  # fmt: skip
    assert aged is not None and math.isclose(aged[0] / aged[1], 0.5, rel_tol=1e-3)
    # Nothing embedded, or weights that cancel: no preference.
    assert feed.preference([touch("like", None)], settings, now) is None
    assert feed.preference([touch("view", axis(0), watched_s=60), touch("view", axis(0),
                            watched_s=1.0)], settings, now) is None  # fmt: skip


def test_the_taste_ranks_liked_and_disliked_videos(settings: Settings) -> None:
    from videoq import feed

    liked, shared, skipped = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    touches = [
        touch("like", axis(0), video=liked), touch("share", axis(1), video=shared),
        touch("skip", axis(2), video=skipped), touch("view", axis(0), video=liked, watched_s=30),
    ]  # fmt: skip
    taste = feed.taste(touches, [], settings)
    # share (5) before like + view (3 + 1); the skip (-3) is disliked.
    assert [t["product_name"] for t in taste.liked] == [str(shared), str(liked)]
    assert [t["product_name"] for t in taste.disliked] == [str(skipped)]
    assert feed.fingerprint({"product_name": "A  Kettle", "style": "bold"}) == feed.fingerprint(
        {"product_name": "a kettle", "style": "BOLD", "prompt": None}
    )
