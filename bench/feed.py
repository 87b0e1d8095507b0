"""Preference-driven generation: refilling one user's feed among ``--videos`` stored video
embeddings, and interactions accepted per second by one API process.

- **Refill**: :func:`videoq.feed.refill` for a user with 15 interactions: their history read,
  the preference computed and stored, the tenant's nearest finished videos found by the HNSW
  index (the planner's own choice at this size, shown below) and written to the feed, the
  claim released and the refill announced. p50 and p99 of ``--refills`` runs; goal p99 ≤ 50 ms.
  The vectors lie near a 32-dimensional subspace of the 1,536 dimensions (as real embeddings
  are far from uniform), normalised.
- **Intake**: ``POST /v1/interactions`` (each with its own ``Idempotency-Key``, as the SDK
  sends) to one ``videoq api`` process for ``--seconds``, from each of ``--clients``
  concurrent connections in turn; the baseline, in the same run, is the same row INSERTed by
  asyncpg from as many connections (up to :data:`BARE_MAX`). Goal: the intake's best at least
  half the bare insert's best.

    python -m bench.feed [--videos 100000 --refills 200 --seconds 10]   # writes benchmarks.md
    python -m bench.feed --quick                                       # seconds; prints only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import numpy as np
import uvloop
from pgvector.asyncpg import register_vector
from sqlalchemy import text

from bench.common import ROOT, cpu_s, pct, spawn, stack, wait_for, write_section
from videoq import broker, feed, store
from videoq.embedded import free_port
from videoq.providers.briefs import OfflineBriefWriter
from videoq.providers.embeddings import DIMENSIONS, OFFLINE_MODEL, OfflineEmbedder
from videoq.settings import Settings
from videoq.store import feed as rows
from videoq.store.apikeys import create_key

SECTION = "Feed"
TENANT = "bench-feed"
USER = "viewer-1"
CHUNK = 10_000
#: The bare INSERT's most connections: each is a server process (the embedded server allows
#: 100, some of them the API's).
BARE_MAX = 64


@dataclass
class Services:
    """What :func:`videoq.feed.refill` needs of a process (a :class:`videoq.lifecycle.Services`)."""

    settings: Settings
    engine: Any
    sessions: Any
    redis: Any
    background: list[asyncio.Task[None]] = field(default_factory=list)


def vectors(rng: np.random.Generator, count: int, basis: np.ndarray) -> np.ndarray:
    points = rng.normal(size=(count, basis.shape[0])) @ basis
    points += 0.05 * rng.normal(size=points.shape)
    unit: np.ndarray = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    return unit


async def seed(dsn: str, count: int) -> tuple[list[uuid.UUID], float]:
    """``count`` succeeded jobs of the tenant with their embeddings (COPY, the HNSW index built
    after); returns the job ids and the seconds the index took to build."""
    rng = np.random.default_rng(20)
    basis = rng.normal(size=(32, DIMENSIONS))
    ids = [uuid.uuid4() for _ in range(count)]
    now = datetime.now(UTC)
    conn = await asyncpg.connect(dsn)
    try:
        await register_vector(conn)
        await conn.execute("DROP INDEX video_embeddings_hnsw")
        for start in range(0, count, CHUNK):
            chunk = ids[start : start + CHUNK]
            await conn.copy_records_to_table(
                "jobs",
                columns=["id", "tenant", "queue", "status", "progress", "priority", "attempts",
                         "max_retries", "brief", "options", "created_at", "updated_at",
                         "finished_at", "embedded_at"],
                records=[
                    (i, TENANT, "parked:bench", "succeeded", 100.0, "normal", 1, 0,
                     json.dumps({"product_name": f"Video {n}", "style": "minimal"}), "{}",
                     now, now, now, now)
                    for n, i in enumerate(chunk, start)
                ],
            )  # fmt: skip
            block = vectors(rng, len(chunk), basis)
            await conn.copy_records_to_table(
                "video_embeddings",
                columns=["job_id", "tenant", "model", "embedding"],
                records=[(i, TENANT, OFFLINE_MODEL, v) for i, v in zip(chunk, block, strict=True)],
            )
        await conn.execute("SET maintenance_work_mem = '2GB'")
        await conn.execute("SET max_parallel_maintenance_workers = 1")
        started = time.monotonic()
        await conn.execute(
            "CREATE INDEX video_embeddings_hnsw ON video_embeddings "
            "USING hnsw (embedding vector_cosine_ops)"
        )
        built = time.monotonic() - started
        await conn.execute("ANALYZE video_embeddings")
        for n, kind in enumerate(("view", "like", "save", "share", "view") * 3):
            await conn.execute(
                "INSERT INTO interactions (tenant, user_id, video_id, type, watched_s) "
                "VALUES ($1, $2, $3, $4, 30)",
                TENANT, USER, ids[n % 5], kind,
            )  # fmt: skip
        await conn.execute(
            "INSERT INTO feed_users (tenant, user_id, interactions, pending) VALUES ($1, $2, 15, 15)",
            TENANT, USER,
        )  # fmt: skip
    finally:
        await conn.close()
    return ids, built


async def refills(settings: Settings, count: int) -> tuple[list[float], str, int]:
    """``count`` refills of the user's feed; milliseconds each, the plan of the nearest
    neighbours' query, and the feed's length."""
    assert settings.database_url
    engine = store.create_engine(settings.database_url)
    redis = await broker.connect(settings)
    svc = Services(settings, engine, store.sessionmaker(engine), redis)
    embedder, writer = OfflineEmbedder(), OfflineBriefWriter()
    took = []
    try:
        for _ in range(count):
            async with svc.sessions() as session:
                user = await rows.user(session, TENANT, USER)
            assert user is not None
            started = time.perf_counter()
            await feed.refill(svc, embedder, writer, user)
            took.append((time.perf_counter() - started) * 1000)
        async with svc.sessions() as session:
            user = await rows.user(session, TENANT, USER)
            assert user is not None and user.preference is not None
            params = {
                "vector": np.asarray(user.preference).tolist(), "tenant": TENANT, "model": OFFLINE_MODEL,
                "user_id": USER, "limit": settings.feed_size, "candidates": rows.EF_SEARCH,
            }  # fmt: skip
            explain = text("EXPLAIN " + rows.NEAREST_SQL).bindparams(rows.VECTOR_PARAM)
            plan = "\n".join(line for (line,) in await session.execute(explain, params))
            items, _ = await rows.page(session, TENANT, USER, limit=100, cursor=None)
    finally:
        await redis.aclose()
        await engine.dispose()
    return took, plan, len(items)


@dataclass
class Intake:
    """One measurement of the intake: interactions accepted per second, each's latency
    (milliseconds, send to answer) and the API process's CPU per interaction."""

    clients: int
    rate: float
    p50_ms: float
    p99_ms: float
    api_cpu_us: float
    api_busy: float  # of one core, 0-1


async def intake(
    url: str, key: str, ids: list[uuid.UUID], clients: int, seconds: float, api_pid: int
) -> Intake:
    """``POST /v1/interactions`` from ``clients`` connections for ``seconds``. Each client is
    a keep-alive HTTP/1.1 connection written by hand (a request, then its answer: no
    pipelining): a full client such as httpx spends about a millisecond of CPU a request on
    the cores the API needs, so the figure would be the load's own."""
    took: list[float] = []
    deadline = time.monotonic() + seconds
    port = int(url.rsplit(":", 1)[1])

    async def client(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = n
        try:
            while time.monotonic() < deadline:
                body = json.dumps(
                    {"user_id": f"u{n}", "video_id": str(ids[i % len(ids)]), "type": "view",
                     "watched_s": 12.5}
                ).encode()  # fmt: skip
                sent = time.perf_counter()
                writer.write(
                    b"POST /v1/interactions HTTP/1.1\r\nHost: bench\r\n"
                    b"Authorization: Bearer " + key.encode() + b"\r\n"
                    b"Content-Type: application/json\r\n"
                    b"Idempotency-Key: " + uuid.uuid4().hex.encode() + b"\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length: *(\d+)", head)
                answer = await reader.readexactly(int(length[1]) if length else 0)
                assert head.startswith(b"HTTP/1.1 202"), head + answer
                took.append((time.perf_counter() - sent) * 1000)
                i += clients
        finally:
            writer.close()

    started, cpu = time.monotonic(), cpu_s(api_pid)
    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed, cpu = time.monotonic() - started, cpu_s(api_pid) - cpu
    p50, p99 = percentiles(took, "interaction")
    return Intake(clients, len(took) / elapsed, p50, p99, cpu / len(took) * 1e6, cpu / elapsed)


async def settle(dsn: str) -> None:
    """A checkpoint, and fresh statistics for the planner."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CHECKPOINT")
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def free_connections(dsn: str) -> int:
    """How many more client connections the server would take now: ``max_connections`` less
    those reserved for superusers and those open (this one among them)."""
    conn = await asyncpg.connect(dsn)
    try:
        allowed = int(await conn.fetchval("SHOW max_connections"))
        reserved = int(await conn.fetchval("SHOW superuser_reserved_connections"))
        used = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
        )
        return allowed - reserved - int(used)
    finally:
        await conn.close()


@dataclass
class Bare:
    """One measurement of the baseline: rows INSERTed per second, and each statement's
    latency (milliseconds, with its commit)."""

    connections: int
    rate: float
    p50_ms: float
    p99_ms: float


async def bare_insert(dsn: str, ids: list[uuid.UUID], connections: int, seconds: float) -> Bare:
    """The same rows INSERTed by asyncpg, one statement (and commit) each, from
    ``connections`` connections for ``seconds`` (counted once the pool is open)."""
    took: list[float] = []
    pool = await asyncpg.create_pool(dsn, min_size=connections, max_size=connections)
    try:
        deadline = time.monotonic() + seconds

        async def client(n: int) -> None:
            i = n
            async with pool.acquire() as conn:
                while time.monotonic() < deadline:
                    sent = time.perf_counter()
                    await conn.execute(
                        "INSERT INTO interactions (tenant, user_id, video_id, type, watched_s, "
                        "idempotency_key, fingerprint, created_at) "
                        "VALUES ($1, $2, $3, 'view', 12.5, $4, $5, now())",
                        TENANT, f"b{n}", ids[i % len(ids)], uuid.uuid4().hex, "0" * 64,
                    )  # fmt: skip
                    took.append((time.perf_counter() - sent) * 1000)
                    i += connections

        started = time.monotonic()
        await asyncio.gather(*(client(n) for n in range(connections)))
        rate = len(took) / (time.monotonic() - started)
    finally:
        await pool.close()
    p50, p99 = percentiles(took, "INSERT")
    return Bare(connections, rate, p50, p99)


def percentiles(took: list[float], what: str) -> tuple[float, float]:
    if not took:
        raise SystemExit(f"no {what} completed in the time given: raise --seconds")
    return pct(took, 0.5), pct(took, 0.99)


def concurrencies(value: str) -> list[int]:
    """``--clients``: distinct positive counts, comma-separated, in ascending order."""
    try:
        counts = sorted({int(n) for n in value.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of counts: {value!r}"
        ) from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"each count must be at least 1: {value!r}")
    return counts


async def main(videos: int, count: int, clients: list[int], seconds: float, quick: bool) -> None:
    async with stack(feed_poll_s=3600.0) as st:
        settings = st.settings
        assert settings.database_url and settings.redis_url
        dsn = store.driver_dsn(settings.database_url)
        started = time.monotonic()
        ids, built = await seed(dsn, videos)
        seeded = time.monotonic() - started
        took, plan, fed = await refills(settings, count)
        engine = store.create_engine(settings.database_url)
        async with store.sessionmaker(engine)() as session:
            key = await create_key(session, TENANT)
        await engine.dispose()
        port = free_port()
        env = {
            "VIDEOQ_DATABASE_URL": settings.database_url, "VIDEOQ_REDIS_URL": settings.redis_url,
            "VIDEOQ_HOME": str(st.home), "VIDEOQ_LOG_LEVEL": "WARNING",
            "VIDEOQ_PROVIDERS": "offline", "PYTHONPATH": str(ROOT),
        }  # fmt: skip
        api = spawn(
            [sys.executable, "-m", "videoq", "api", "--port", str(port)], env,
            st.home / "bench-api.log",
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        ours: list[Intake] = []
        bare: dict[int, Bare] = {}  # by connections
        beside: dict[int, Bare] = {}  # by the intake's clients
        try:

            async def up() -> bool:
                try:
                    async with httpx.AsyncClient(base_url=url) as http:
                        return (await http.get("/health")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(up, 60, "the API", every=0.2)
            # Each measurement from a settled server: the seeding's writes flushed (else a
            # checkpoint under way slows whichever runs first). The baseline at as many
            # connections as the intake's clients, up to BARE_MAX and what the server has
            # free beside the API's own.
            for n in clients:
                await settle(dsn)
                ours.append(await intake(url, key, ids[:1000], n, seconds, api.pid))
                connections = min(n, BARE_MAX, await free_connections(dsn))
                if connections not in bare:
                    await settle(dsn)
                    bare[connections] = await bare_insert(dsn, ids[:1000], connections, seconds)
                beside[n] = bare[connections]
        finally:
            api.terminate()
            api.wait()
    p50, p99 = percentiles(took, "refill")
    hnsw = "Index Scan using video_embeddings_hnsw" in plan
    best = max(ours, key=lambda m: m.rate)
    top = max(bare.values(), key=lambda b: b.rate)
    ratio = best.rate / top.rate
    most = max(bare)

    sweep = "\n".join(
        f"| {m.clients} | {m.rate:,.0f} | {m.p50_ms:.1f} / {m.p99_ms:.1f} ms "
        f"| {m.api_cpu_us:.0f} µs, {m.api_busy:.0%} of a core "
        f"| {b.rate:,.0f} ({b.connections} connection{'s' if b.connections > 1 else ''}), {b.p50_ms:.1f} / {b.p99_ms:.1f} ms "
        f"| {m.rate / b.rate:.2f}× |"
        for m, b in ((m, beside[m.clients]) for m in ours)
    )
    # What the run shows of the baseline's ceiling and the intake's batching, in its own figures.
    counts = sorted(bare)
    if len(counts) > 1:
        last, before = bare[counts[-1]], bare[counts[-2]]
        change = last.rate / before.rate - 1
        ceiling = (
            f"From {before.connections} to {last.connections} connections its rate changed by "
            f"{change:+.0%}."
        )
    else:
        ceiling = "It was measured at one concurrency only."
    first, widest = ours[0], ours[-1]
    batching = (
        f"From {first.clients} to {widest.clients} clients the API's CPU per interaction went "
        f"from {first.api_cpu_us:.0f} µs to {widest.api_cpu_us:.0f} µs."
    )
    listed = ",".join(map(str, clients))
    body = f"""\
`python -m bench.feed --videos {videos} --refills {count} --clients {listed} --seconds \
{seconds:g}`; {os.cpu_count()} cores shared by PostgreSQL, the API and the load.

| | videoq | baseline (same run) | goal |
|---|---|---|---|
| feed refill for one user among {videos:,} embeddings, p50 | {p50:.1f} ms | | |
| feed refill, p99 ({count} refills) | {p99:.1f} ms | | ≤ 50 ms {"✓" if p99 <= 50 else "✗"} |
| interactions accepted per second by one API process (its best: {best.clients} clients) | {best.rate:,.0f} | {top.rate:,.0f} (bare asyncpg INSERT of the same row; its best: {top.connections} connections) | ≥ 0.5× {"✓" if ratio >= 0.5 else "✗"} ({ratio:.2f}×) |

Each figure is a capacity, so each side is measured at every concurrency of the run and
counted at its best. The intake's clients are keep-alive HTTP/1.1 connections (the end
users' devices); the bare INSERT's are PostgreSQL connections, which cost a server process
each: it is measured at as many connections as the intake's clients, up to {most} (at most
{BARE_MAX}, and no more than the server had free beside the API's own).
{ceiling}
Latency is from sending a request (or statement) to reading its answer.

| clients | interactions accepted per second | latency p50 / p99 | API CPU per interaction, busy | bare INSERT per second, latency p50 / p99 | ratio |
|---|---|---|---|---|---|
{sweep}

A refill reads the user's 15 interactions with their videos' embeddings, computes and stores
the preference, finds the {fed} nearest videos the user has not seen (the planner chose
{"the HNSW index" if hnsw else "a plan without the HNSW index"} by itself at this size:
`hnsw.ef_search` {rows.EF_SEARCH} candidates, filtered after), rewrites the feed's
`existing_video` items and announces the refill. Seeding {videos:,} embeddings (COPY) took
{seeded:.0f} s, of which building the HNSW index after them {built:.0f} s (default `m` 16,
`ef_construction` 64, `maintenance_work_mem` 2 GB). An accepted interaction is its body
parsed and validated, then a place in the next batch: the interactions that arrive while one
batch is written go together in one statement on the intake's own asyncpg connections (the
callers' keys looked up, the videos checked, the rows inserted, the users' counters raised)
and one commit, two writers at once (a user's always the same). So the more clients wait,
the larger the batches and the less each interaction costs, until the API process is busy.
{batching}
The bare INSERTs share PostgreSQL's WAL flushes (group commit) and its
backends' parallelism on both cores; the API is one Python process on one of them, and the
load (hand-written clients, in this process) shares the same two (where an interaction's
CPU goes: docs/decisions.md, "Preference-driven generation").
"""
    print(body)
    print("baseline: bare asyncpg INSERT")
    print(plan.splitlines()[0] if quick else plan)
    if not quick:
        write_section(SECTION, body)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--videos", type=int, default=100_000)
    parser.add_argument("--refills", type=int, default=200)
    parser.add_argument(
        "--clients",
        type=concurrencies,
        default=[1, 32, 64, 128, 256],
        help="concurrencies, comma-separated (default 1,32,64,128,256)",
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="2,000 videos, 20 refills, 2 s")
    args = parser.parse_args()
    if args.seconds <= 0 or args.refills < 1 or args.videos < 5:
        parser.error("--seconds must be above 0, --refills at least 1, --videos at least 5")
    if args.quick:
        args.videos, args.refills, args.seconds = 2000, 20, 2.0
    # The API's event loop (and the workers'), for the load and the baseline's client alike:
    # their CPU shares the cores the figures measure.
    uvloop.run(main(args.videos, args.refills, args.clients, args.seconds, args.quick))
