"""Recurring jobs (``/v1/schedules``): validation, tenant scoping, one job per tick however
many workers tick at once, the missed-ticks policy, and cron read in a time zone across DST."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from arq import create_pool
from sqlalchemy import select, text, update

from tests.conftest import LiveApi, auth, new_key, running_worker
from tests.test_api import assert_error, named_fields
from videoq import cron, lifecycle, store
from videoq.broker import queue
from videoq.client import Client, NotFoundError, ValidationError
from videoq.settings import Settings
from videoq.store import schedules
from videoq.workers import supervisor
from videoq.workers.state import WorkerState

BRIEF: dict[str, Any] = {"product_name": "Nimbus", "duration_s": 5}
EVERY_5 = {**BRIEF, "cron": "*/5 * * * *"}
#: A tick of EVERY_5, well in the past.
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# -- cron in a time zone ---------------------------------------------------------------------


def test_a_fixed_time_in_the_gap_of_spring_forward_runs_after_the_gap() -> None:
    # Paris, 29 March 2026: clocks go from 02:00 to 03:00; 02:30 does not exist that day.
    first = cron.after("30 2 * * *", "Europe/Paris", utc("2026-03-28T12:00:00+01:00"))
    assert first == utc("2026-03-29T03:00:00+02:00")
    assert cron.after("30 2 * * *", "Europe/Paris", first) == utc("2026-03-30T02:30:00+02:00")


def test_a_fixed_time_repeated_at_fall_back_runs_once() -> None:
    # Paris, 25 October 2026: 02:30 happens twice (CEST, then CET); the job runs once.
    first = cron.after("30 2 * * *", "Europe/Paris", utc("2026-10-24T12:00:00+02:00"))
    assert first == utc("2026-10-25T02:30:00+02:00")
    assert cron.after("30 2 * * *", "Europe/Paris", first) == utc("2026-10-26T02:30:00+01:00")


def test_hourly_ticks_follow_real_hours_across_fall_back() -> None:
    ticks, when = [], utc("2026-10-25T00:30:00+02:00")
    for _ in range(4):
        when = cron.after("0 * * * *", "Europe/Paris", when)
        ticks.append(when)
    # 01:00 CEST, 02:00 CEST, 02:00 CET, 03:00 CET: one an hour, none twice, none lost.
    assert [t.isoformat() for t in ticks] == [
        "2026-10-24T23:00:00+00:00", "2026-10-25T00:00:00+00:00",
        "2026-10-25T01:00:00+00:00", "2026-10-25T02:00:00+00:00",
    ]  # fmt: skip


def test_wall_clock_time_stays_put_across_dst_in_its_zone() -> None:
    # 09:00 in New York is 14:00 UTC in winter and 13:00 UTC once DST starts (8 March 2026).
    before = cron.after("0 9 * * *", "America/New_York", utc("2026-03-07T12:00:00+00:00"))
    after = cron.after("0 9 * * *", "America/New_York", before + timedelta(hours=1))
    assert (before, after) == (utc("2026-03-07T14:00:00Z"), utc("2026-03-08T13:00:00Z"))
    assert cron.after("0 9 * * *", "UTC", before) == utc("2026-03-08T09:00:00Z")


def test_macros_and_due_ticks() -> None:
    assert cron.check("@daily") == "0 0 * * *" and cron.check(" */5  *  * * * ") == "*/5 * * * *"
    # Due at 10:02, last expected at 09:00: 10:00 fires, the twelve ticks before it are skipped.
    due = cron.due("*/5 * * * *", "UTC", T0, T0 + timedelta(hours=1, minutes=2))
    assert (due.tick, due.skipped, due.next) == (
        T0 + timedelta(hours=1),
        12,
        T0 + timedelta(hours=1, minutes=5),
    )
    # On time: nothing skipped.
    assert cron.due("*/5 * * * *", "UTC", T0, T0 + timedelta(seconds=1)).skipped == 0
    # Years of every-minute ticks: counted up to a bound, and still the latest fires.
    now = T0 + timedelta(days=3 * 365, seconds=30)
    due = cron.due("* * * * *", "UTC", T0, now)
    assert due.skipped == cron.MAX_COUNTED
    assert due.tick == now.replace(second=0) and due.next == due.tick + timedelta(minutes=1)


# -- the routes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**BRIEF}, "cron"),
        ({**BRIEF, "cron": "every day"}, "cron"),
        ({**BRIEF, "cron": "61 * * * *"}, "cron"),
        ({**BRIEF, "cron": "0 0 31 2 *"}, "cron"),  # never fires
        ({**BRIEF, "cron": "0 0 * * * *"}, "cron"),  # seconds: no
        ({**BRIEF, "cron": 5}, "cron"),
        ({**EVERY_5, "timezone": "Mars/Olympus"}, "timezone"),
        ({**EVERY_5, "timezone": "../../etc/passwd"}, "timezone"),
        ({**EVERY_5, "timezone": "CEST"}, "timezone"),
        ({**EVERY_5, "timezone": ""}, "timezone"),
        ({**EVERY_5, "name": ""}, "name"),
        ({"cron": "@daily"}, "product_name"),
        ({**EVERY_5, "duration_s": 99}, "duration_s"),
        ({**EVERY_5, "run_at": "2030-01-01T00:00:00Z"}, "run_at"),
        ({**EVERY_5, "delay_s": 10}, "delay_s"),
        ({**EVERY_5, "every": "day"}, "every"),
    ],
)
async def test_a_bad_schedule_names_its_field(
    asgi_client: httpx.AsyncClient, api_key: str, body: dict[str, Any], field: str
) -> None:
    response = await asgi_client.post("/v1/schedules", json=body, headers=auth(api_key))
    assert named_fields(assert_error(response, 422, "validation_error")) == [field]


async def test_a_body_that_is_not_an_object_is_refused(
    asgi_client: httpx.AsyncClient, api_key: str
) -> None:
    response = await asgi_client.post("/v1/schedules", json=["x"], headers=auth(api_key))
    assert_error(response, 422, "validation_error")


async def test_a_schedule_is_created_read_listed_and_deleted_by_its_tenant_only(
    asgi_client: httpx.AsyncClient, sessions: Any
) -> None:
    mine, theirs = await new_key(sessions), await new_key(sessions)
    body = {**BRIEF, "cron": "0 9 * * 1-5", "timezone": "Europe/Paris", "name": "weekday ad"}
    before = datetime.now(UTC)
    created = await asgi_client.post("/v1/schedules", json=body, headers=auth(mine))
    assert created.status_code == 201, created.text
    view = created.json()
    assert created.headers["location"] == view["links"]["self"]
    assert (view["cron"], view["timezone"], view["name"]) == ("0 9 * * 1-5", "Europe/Paris",
                                                              "weekday ad")  # fmt: skip
    assert view["job"]["product_name"] == "Nimbus" and "cron" not in view["job"]
    next_run = datetime.fromisoformat(view["next_run_at"])
    assert next_run == cron.after("0 9 * * 1-5", "Europe/Paris", before)
    local = next_run.astimezone(ZoneInfo("Europe/Paris"))
    assert (local.hour, local.minute) == (9, 0) and local.weekday() < 5
    assert view["skipped_ticks"] == 0 and view["last_job_id"] is None
    url = f"/v1/schedules/{view['id']}"
    assert (await asgi_client.get(url, headers=auth(mine))).json() == view
    # Another tenant: not there at all.
    assert_error(await asgi_client.get(url, headers=auth(theirs)), 404, "not_found")
    assert_error(await asgi_client.delete(url, headers=auth(theirs)), 404, "not_found")
    listed = await asgi_client.get("/v1/schedules", headers=auth(theirs))
    assert listed.json() == {"data": [], "next_cursor": None}
    assert [s["id"] for s in (await asgi_client.get("/v1/schedules", headers=auth(mine))).json()[
        "data"
    ]] == [view["id"]]  # fmt: skip
    assert (await asgi_client.delete(url, headers=auth(mine))).status_code == 204
    assert_error(await asgi_client.get(url, headers=auth(mine)), 404)
    assert_error(await asgi_client.delete(url, headers=auth(mine)), 404)
    for ref in ("nope", str(uuid.uuid4())):
        assert_error(await asgi_client.get(f"/v1/schedules/{ref}", headers=auth(mine)), 404)


async def test_a_tenant_has_at_most_so_many_schedules(
    asgi_client: httpx.AsyncClient, sessions: Any, api_key: str
) -> None:
    name = await tenant(sessions, api_key)
    async with sessions() as session:
        await session.execute(
            text(
                "INSERT INTO schedules (id, tenant, queue, cron, timezone, job, next_run_at) "
                "SELECT gen_random_uuid(), :tenant, 'elsewhere', '@daily', 'UTC', '{}', now() "
                "FROM generate_series(1, :n)"
            ),
            {"tenant": name, "n": schedules.MAX_PER_TENANT},
        )
        await session.commit()
    response = await asgi_client.post("/v1/schedules", json=EVERY_5, headers=auth(api_key))
    assert_error(response, 409, "conflict")
    # Another tenant is not held back by it.
    other = await asgi_client.post(
        "/v1/schedules", json=EVERY_5, headers=auth(await new_key(sessions))
    )
    assert other.status_code == 201


async def test_the_list_pages_newest_first(asgi_client: httpx.AsyncClient, api_key: str) -> None:
    ids = []
    for _ in range(3):
        created = await asgi_client.post("/v1/schedules", json=EVERY_5, headers=auth(api_key))
        ids.append(created.json()["id"])
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await asgi_client.get("/v1/schedules", params=params, headers=auth(api_key))).json()
        seen += [s["id"] for s in page["data"]]
        if not (cursor := page["next_cursor"]):
            break
    assert seen == ids[::-1]
    for params in ({"limit": 0}, {"limit": "x"}, {"cursor": "garbage!"}):
        response = await asgi_client.get("/v1/schedules", params=params, headers=auth(api_key))
        assert_error(response, 422, "validation_error")


# -- the ticker ------------------------------------------------------------------------------


@pytest.fixture
async def workers(settings: Settings) -> AsyncIterator[Callable[[], Any]]:
    """Worker states on ``settings``' queue, each with its own engine and Redis pool (two
    workers' worth of connections), made on demand; no job runs."""
    async with AsyncExitStack() as stack:

        async def make() -> WorkerState:
            engine = store.create_engine(settings.database_url or "")
            stack.push_async_callback(engine.dispose)
            redis = await create_pool(queue.redis_settings(settings))
            stack.push_async_callback(redis.aclose)
            return WorkerState(
                settings, engine, store.sessionmaker(engine), redis, f"w-{uuid.uuid4().hex[:6]}"
            )

        yield make


async def a_schedule(
    client: httpx.AsyncClient, sessions: Any, key: str, due_at: datetime, **body: Any
) -> str:
    """A schedule of ``key``'s tenant whose next tick is ``due_at``."""
    created = await client.post("/v1/schedules", json={**EVERY_5, **body}, headers=auth(key))
    assert created.status_code == 201, created.text
    schedule_id: str = created.json()["id"]
    async with sessions() as session:
        stmt = update(store.Schedule).where(store.Schedule.id == uuid.UUID(schedule_id))
        await session.execute(stmt.values(next_run_at=due_at))
        await session.commit()
    return schedule_id


async def jobs_of(sessions: Any, schedule_id: str) -> list[store.Job]:
    async with sessions() as session:
        query = select(store.Job).where(store.Job.idempotency_key.like(f"schedule:{schedule_id}:%"))
        return list((await session.scalars(query)).all())


async def schedule_row(client: httpx.AsyncClient, key: str, schedule_id: str) -> dict[str, Any]:
    view: dict[str, Any] = (
        await client.get(f"/v1/schedules/{schedule_id}", headers=auth(key))
    ).json()
    return view


async def test_two_workers_ticking_at_once_make_one_job_per_tick(
    asgi_client: httpx.AsyncClient, sessions: Any, api_key: str, workers: Any
) -> None:
    ids = [await a_schedule(asgi_client, sessions, api_key, T0) for _ in range(3)]
    one, other = await workers(), await workers()
    now = T0 + timedelta(seconds=30)
    passes = [supervisor.fire_schedules(w, now) for w in (one, other, one, other)]
    made = await asyncio.gather(*passes)
    assert sum(made) == 3
    for schedule_id in ids:
        (job,) = await jobs_of(sessions, schedule_id)
        assert job.idempotency_key == supervisor.tick_key(uuid.UUID(schedule_id), T0)
        assert job.brief["product_name"] == "Nimbus" and job.status == "queued"
        view = await schedule_row(asgi_client, api_key, schedule_id)
        assert view["last_job_id"] == str(job.id)
        assert utc(view["last_tick_at"]) == T0
        assert utc(view["next_run_at"]) == T0 + timedelta(minutes=5)
    # The same tick again, from either worker: nothing new. The next tick: one more job each.
    assert await supervisor.fire_schedules(one, now) == 0
    later = T0 + timedelta(minutes=5, seconds=1)
    assert (
        sum(await asyncio.gather(*(supervisor.fire_schedules(w, later) for w in (one, other)))) == 3
    )
    for schedule_id in ids:
        assert len(await jobs_of(sessions, schedule_id)) == 2


async def test_a_ticker_skips_the_rows_another_ticker_holds(
    asgi_client: httpx.AsyncClient, sessions: Any, api_key: str, workers: Any
) -> None:
    """While one ticker fires a schedule, another passes it by at once (no wait, no double)."""
    schedule_id = await a_schedule(asgi_client, sessions, api_key, T0)
    one, other = await workers(), await workers()
    now, name = T0 + timedelta(seconds=1), one.settings.queue_name
    async with schedules.due(one.sessions, name, now, 10) as held:
        assert [str(row.id) for row in held] == [schedule_id]
        async with schedules.due(other.sessions, name, now, 10) as passed_by:
            assert passed_by == []
        assert await asyncio.wait_for(supervisor.fire_schedules(other, now), 10) == 0
    assert await supervisor.fire_schedules(other, now) == 1


async def test_a_tick_whose_job_was_made_before_a_crash_is_not_made_again(
    asgi_client: httpx.AsyncClient, sessions: Any, api_key: str, workers: Any
) -> None:
    """A ticker that submitted the tick's job and died before moving the schedule on: the next
    pass fires the same tick, finds that job by its key, and moves on."""
    schedule_id = await a_schedule(asgi_client, sessions, api_key, T0)
    key = supervisor.tick_key(uuid.UUID(schedule_id), T0)
    made_before = await asgi_client.post(
        "/v1/jobs", json=(await schedule_row(asgi_client, api_key, schedule_id))["job"],
        headers={**auth(api_key), "Idempotency-Key": key},
    )  # fmt: skip
    assert made_before.status_code == 202
    assert await supervisor.fire_schedules(await workers(), T0 + timedelta(seconds=1)) == 0
    (job,) = await jobs_of(sessions, schedule_id)
    view = await schedule_row(asgi_client, api_key, schedule_id)
    assert view["last_job_id"] == str(job.id) == made_before.json()["id"]
    assert utc(view["next_run_at"]) == T0 + timedelta(minutes=5)


async def test_after_an_outage_only_the_latest_missed_tick_runs(
    asgi_client: httpx.AsyncClient, sessions: Any, api_key: str, workers: Any
) -> None:
    schedule_id = await a_schedule(asgi_client, sessions, api_key, T0)
    # No worker ran from 09:00 to 10:02: thirteen ticks missed (09:00 ... 10:00).
    now = T0 + timedelta(hours=1, minutes=2)
    assert await supervisor.fire_schedules(await workers(), now) == 1
    (job,) = await jobs_of(sessions, schedule_id)
    assert job.idempotency_key == supervisor.tick_key(
        uuid.UUID(schedule_id), T0 + timedelta(hours=1)
    )
    view = await schedule_row(asgi_client, api_key, schedule_id)
    assert view["skipped_ticks"] == 12
    assert utc(view["last_tick_at"]) == T0 + timedelta(hours=1)
    assert utc(view["next_run_at"]) == T0 + timedelta(hours=1, minutes=5)


async def test_a_tick_refused_for_now_stays_due_and_fires_later(
    asgi_client: httpx.AsyncClient, sessions: Any, api_key: str, workers: Any, settings: Settings
) -> None:
    """The tenant's queue cap is full: the tick is not lost, nor skipped; it fires once the
    tenant has room."""
    schedule_id = await a_schedule(asgi_client, sessions, api_key, T0)
    full = await workers()
    full.settings = settings.model_copy(update={"max_queued_jobs": 1})
    blocker = await asgi_client.post("/v1/jobs", json=BRIEF, headers=auth(api_key))
    now = T0 + timedelta(seconds=1)
    assert await supervisor.fire_schedules(full, now) == 0
    view = await schedule_row(asgi_client, api_key, schedule_id)
    assert utc(view["next_run_at"]) == T0 and "already waiting" in view["last_error"]
    assert await jobs_of(sessions, schedule_id) == []
    await lifecycle.cancel(full, blocker.json()["id"], await tenant(sessions, api_key))
    assert await supervisor.fire_schedules(full, now) == 1
    view = await schedule_row(asgi_client, api_key, schedule_id)
    assert view["last_error"] is None and view["skipped_ticks"] == 0
    assert utc(view["last_tick_at"]) == T0


async def tenant(sessions: Any, key: str) -> str:
    async with sessions() as session:
        query = select(store.ApiKey.tenant).where(
            store.ApiKey.key_hash == store.apikeys.hash_key(key)
        )
        name: str = (await session.scalars(query)).one()
        return name


async def test_a_tick_whose_job_is_no_longer_valid_is_skipped(
    asgi_client: httpx.AsyncClient, sessions: Any, api_key: str, workers: Any, settings: Settings
) -> None:
    """The operator lowered ``max_retries`` below what the schedule's job asks for."""
    schedule_id = await a_schedule(asgi_client, sessions, api_key, T0, max_retries=3)
    strict = await workers()
    strict.settings = settings.model_copy(update={"max_retries": 1})
    assert await supervisor.fire_schedules(strict, T0 + timedelta(seconds=1)) == 0
    view = await schedule_row(asgi_client, api_key, schedule_id)
    assert view["skipped_ticks"] == 1 and "max_retries" in view["last_error"]
    assert utc(view["next_run_at"]) == T0 + timedelta(minutes=5)
    assert await jobs_of(sessions, schedule_id) == []


async def test_only_the_schedules_own_queue_fires_it(
    asgi_client: httpx.AsyncClient, sessions: Any, api_key: str, workers: Any, settings: Settings
) -> None:
    schedule_id = await a_schedule(asgi_client, sessions, api_key, T0)
    elsewhere = await workers()
    elsewhere.settings = settings.model_copy(update={"queue_name": "test:another"})
    assert await supervisor.fire_schedules(elsewhere, T0 + timedelta(seconds=1)) == 0
    assert await jobs_of(sessions, schedule_id) == []


async def test_a_running_worker_fires_a_due_schedule(
    asgi_client: httpx.AsyncClient, sessions: Any, api_key: str, settings: Settings
) -> None:
    due = datetime.now(UTC) - timedelta(minutes=1)
    schedule_id = await a_schedule(asgi_client, sessions, api_key, due)
    fast = settings.model_copy(update={"schedule_poll_s": 0.1})
    async with running_worker(fast):
        for _ in range(200):
            if found := await jobs_of(sessions, schedule_id):
                break
            await asyncio.sleep(0.05)
        assert len(found) == 1
        # (It need not run here.)
        await asgi_client.post(f"/v1/jobs/{found[0].id}/cancel", headers=auth(api_key))
    view = await schedule_row(asgi_client, api_key, schedule_id)
    assert view["last_job_id"] == str(found[0].id)
    assert datetime.fromisoformat(view["next_run_at"]) > datetime.now(UTC)


async def test_the_sdk_creates_lists_and_deletes_schedules(live_api: LiveApi, api_key: str) -> None:
    async with Client(live_api.url, api_key) as client:
        made = await client.create_schedule(
            "@weekly", timezone="Asia/Tokyo", name="sdk", product_name="Nimbus", style="bold"
        )
        assert (made.cron, made.timezone, made.job["style"]) == ("0 0 * * 0", "Asia/Tokyo", "bold")
        assert made.next_run_at.astimezone(ZoneInfo("Asia/Tokyo")).hour == 0
        assert (await client.schedule(made.id)).id == made.id
        assert [s.id async for s in client.schedules(page_size=1)] == [made.id]
        with pytest.raises(ValidationError):
            await client.create_schedule("@sometimes", product_name="Nimbus")
        await client.delete_schedule(made.id)
        assert [s async for s in client.schedules()] == []
        with pytest.raises(NotFoundError):
            await client.delete_schedule(made.id)
