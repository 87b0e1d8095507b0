"""Fault runs with real processes (``make chaos``): jobs on the live pipeline, against the
spec-checked provider mocks served on loopback (which count every output they would bill),
while a fault strikes. Each scenario has PostgreSQL and Redis of its own, the API in this
process and ``videoq worker`` subprocesses whose disks are their own (a shared ``file://``
artifact store), and reports:

- jobs, faults injected, jobs lost (not succeeded, unless the fault meant them to fail), and
  duplicate successes (a job whose history records two);
- paid outputs against the minimum: scripts and voice tracks against the jobs that needed
  one, and predictions that succeeded but that no job's record holds (bought twice);
- replay gaps (a job's replayed history that is not 1..n) and reused seqs (a seq a live
  client saw for one event and the replay holds for another);
- API answers of 500 (there must be none), time to drain after the fault, and for kills the
  time from a worker's death to its jobs running elsewhere.

Scenarios: ``kill-storm`` (three workers, one SIGKILLed every 4–6 s and replaced),
``postgres-outage`` (the server stopped for tens of seconds mid-run), ``redis-restart``
(SIGKILLed and restarted empty), ``brownout`` (5xx, 529 and 429 with ``Retry-After`` from
Anthropic, concurrency refusals from ElevenLabs, 5xx on Replicate creates, predictions that
end ``failed`` — their jobs must fail with ``prediction_failed`` — or ``aborted``).

    python -m bench.chaos                 # every scenario, full length; writes docs/reliability.md
    python -m bench.chaos --quick         # every scenario, short; prints only
    python -m bench.chaos kill-storm      # one scenario
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pgserver
import uvicorn
from pgserver import _commands as pg_commands
from sqlalchemy import select
from tests.mocks import anthropic as anthropic_mock
from tests.mocks import elevenlabs as elevenlabs_mock
from tests.mocks import replicate as replicate_mock
from tests.mocks.anthropic import AnthropicMock
from tests.mocks.elevenlabs import ElevenLabsMock
from tests.mocks.replicate import ReplicateMock
from tests.mocks.server import serve

from bench.common import NO_LIMITS, ROOT, machine, spawn
from videoq import store
from videoq.api import create_app
from videoq.client import ApiError, Client
from videoq.embedded import free_port, start_redis
from videoq.settings import Settings
from videoq.store.apikeys import create_key
from videoq.types import scene_count

RELIABILITY_MD = ROOT / "docs" / "reliability.md"
DURATION_S = 10
SCENES = scene_count(DURATION_S)
TERMINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class Figures:
    """What one scenario measured."""

    scenario: str
    jobs: int = 0
    faults: int = 0
    lost: int = 0
    expected_failures: int = 0
    duplicate_successes: int = 0
    scripts: tuple[int, int] = (0, 0)  # (paid, minimum)
    voices: tuple[int, int] = (0, 0)
    clips: tuple[int, int] = (0, 0)  # (succeeded predictions, held by a job's record)
    replay_gaps: int = 0
    reused_seqs: int = 0
    api_500s: int = 0
    api_503s: int = 0
    drain_s: float = 0.0
    resumed_s: list[float] = field(default_factory=list)
    #: Workers SIGKILLed: (pid, time.time() of the kill).
    kills: list[tuple[int, float]] = field(default_factory=list)

    @property
    def extra_paid(self) -> int:
        return (
            self.scripts[0] - self.scripts[1]
            + self.voices[0] - self.voices[1]
            + self.clips[0] - self.clips[1]
        )  # fmt: skip

    def row(self) -> str:
        resumed = (
            f"{_pct(self.resumed_s, 50):.1f} / {max(self.resumed_s):.1f} s"
            if self.resumed_s
            else "—"
        )
        return (
            f"| {self.scenario} | {self.jobs} | {self.faults} | {self.lost} "
            f"| {self.duplicate_successes} | {self.scripts[0]}/{self.scripts[1]} "
            f"| {self.voices[0]}/{self.voices[1]} | {self.clips[0]}/{self.clips[1]} "
            f"| {self.replay_gaps} | {self.reused_seqs} | {self.api_500s} ({self.api_503s}) "
            f"| {self.drain_s:.1f} s | {resumed} |"
        )


HEADER = (
    "| fault | jobs | faults | lost | duplicate successes | scripts paid/min "
    "| voices paid/min | clips paid/min | replay gaps | reused seqs | API 500s (503s) "
    "| drain | resumed p50 / max |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


class Postgres:
    """An embedded PostgreSQL that can be stopped and started again (same data, same URL)."""

    def __init__(self, directory: Path) -> None:
        self.server = pgserver.get_server(directory, cleanup_mode="stop")  # type: ignore[attr-defined]
        self.url: str = self.server.get_uri()

    def stop(self) -> None:
        pg_commands.pg_ctl(  # type: ignore[attr-defined]
            ["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata,
            user=self.server.system_user, timeout=60,
        )  # fmt: skip

    def start(self) -> None:
        self.server.ensure_postgres_running()

    def cleanup(self) -> None:
        self.server.cleanup()


class Redis:
    """An embedded Redis on a fixed port that can be killed and started again, empty."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.proc, self.url = start_redis(directory)
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def start(self) -> None:
        self.proc, _ = start_redis(self.directory, self.port)


@dataclass
class World:
    """One scenario's services, mocks, API and workers."""

    home: Path
    postgres: Postgres
    redis: Redis
    anthropic: AnthropicMock
    elevenlabs: ElevenLabsMock
    replicate: ReplicateMock
    settings: Settings
    api_url: str
    api_key: str
    worker_env: dict[str, str]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    started: int = 0

    def start_worker(self) -> subprocess.Popen[bytes]:
        return self.start_worker_with({})

    def start_worker_with(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """A worker on a disk of its own, with ``env`` over the world's settings."""
        self.started += 1
        name = f"worker-{self.started}"
        disk = self.home / name
        env = {
            **self.worker_env,
            **env,
            "VIDEOQ_HOME": str(disk),
            "VIDEOQ_ARTIFACTS_DIR": str(disk / "artifacts"),
            "VIDEOQ_SCRATCH_DIR": str(disk / "scratch"),
        }
        proc = spawn([sys.executable, "-m", "videoq", "worker"], env, self.home / f"{name}.log")
        self.workers.append(proc)
        return proc

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [w for w in self.workers if w.poll() is None]

    def stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@contextlib.asynccontextmanager
async def world(name: str, *, clip_latency: float) -> AsyncIterator[World]:
    home = Path(tempfile.mkdtemp(prefix=f"videoq-chaos-{name}-"))
    postgres = Postgres(home / "pg")
    redis = Redis(home / "redis")
    mocks = (
        AnthropicMock(latency=0.3),
        ElevenLabsMock(latency=0.5),
        ReplicateMock(latency=clip_latency, polls=1),
    )
    try:
        await asyncio.to_thread(store.migrate, postgres.url)
        engine = store.create_engine(postgres.url)
        async with store.sessionmaker(engine)() as session:
            key = await create_key(session, "chaos", admin=True)
        await engine.dispose()
        settings = Settings(
            database_url=postgres.url, redis_url=redis.url, home=home, log_level="WARNING",
            rate_limit_per_s=0, max_queued_jobs=0, queue_name=f"chaos:{name}",
            storage_url=(home / "store").as_uri(),
        )  # fmt: skip
        async with contextlib.AsyncExitStack() as stack:
            urls = [await stack.enter_async_context(serve(m.app)) for m in mocks]
            port = free_port()
            server = uvicorn.Server(
                uvicorn.Config(
                    create_app(settings), host="127.0.0.1", port=port, log_level="critical"
                )
            )
            serving = asyncio.create_task(server.serve())
            while not server.started:  # noqa: ASYNC110  uvicorn offers no event for this
                await asyncio.sleep(0.01)
            env = {
                "VIDEOQ_DATABASE_URL": postgres.url,
                "VIDEOQ_REDIS_URL": redis.url,
                "VIDEOQ_QUEUE_NAME": settings.queue_name,
                "VIDEOQ_STORAGE_URL": settings.storage_url or "",
                "VIDEOQ_PROVIDERS": "auto",
                "ANTHROPIC_API_KEY": mocks[0].key,
                "ELEVENLABS_API_KEY": mocks[1].key,
                "REPLICATE_API_TOKEN": mocks[2].key,
                "VIDEOQ_ANTHROPIC_BASE_URL": urls[0],
                "VIDEOQ_ELEVENLABS_BASE_URL": urls[1],
                "VIDEOQ_REPLICATE_BASE_URL": urls[2],
                "VIDEOQ_REPLICATE_POLL_S": "0.25",
                "VIDEOQ_REPLICATE_POLL_MAX_S": "1",
                "VIDEOQ_PROVIDER_BACKOFF_S": "0.2",
                "VIDEOQ_PROVIDER_BACKOFF_MAX_S": "2",
                "VIDEOQ_RETRY_DELAYS_S": "[0.5, 1, 2]",
                "VIDEOQ_HEARTBEAT_S": "0.5",
                "VIDEOQ_WORKER_STALE_S": "3",
                "VIDEOQ_RECONCILE_S": "1",
                "VIDEOQ_MAX_JOBS": "4",
                "VIDEOQ_LOG_FORMAT": "json",
                "VIDEOQ_LOG_LEVEL": "INFO",
                "PYTHONPATH": str(ROOT),
                **NO_LIMITS,
            }
            here = World(
                home, postgres, redis, *mocks, settings=settings,
                api_url=f"http://127.0.0.1:{port}", api_key=key, worker_env=env,
            )  # fmt: skip
            try:
                yield here
            finally:
                here.stop_workers()
                server.should_exit = True
                await serving
    finally:
        with contextlib.suppress(Exception):
            redis.kill()
        with contextlib.suppress(Exception):
            postgres.start()  # cleanup stops a running server
        postgres.cleanup()


class Watcher:
    """A live client of one job's events, reconnecting through any fault: what it saw."""

    def __init__(self, client: Client, job_id: str) -> None:
        self.client, self.job_id = client, job_id
        self.seen: dict[int, list[tuple[Any, ...]]] = {}
        self.task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        after = 0
        while True:
            try:
                async for event in self.client.events(self.job_id, after=after):
                    if event.type == "snapshot":
                        continue
                    self.seen.setdefault(event.seq, []).append(_identity(event))
                    after = max(after, event.seq)
                    if event.terminal:
                        return
                return
            except (ApiError, OSError):
                await asyncio.sleep(0.5)


def _identity(event: Any) -> tuple[Any, ...]:
    return (event.type, event.status, event.stage, event.message, round(event.progress, 3))


async def replay_check(client: Client, watcher: Watcher) -> tuple[int, int]:
    """(gaps, reused seqs) of a job: its replay from seq 0 against what a live client saw."""
    replayed: dict[int, tuple[Any, ...]] = {}
    duplicates = 0
    async for event in client.events(watcher.job_id, after=0):
        if event.type == "snapshot":
            continue
        if event.seq in replayed:
            duplicates += 1
        replayed[event.seq] = _identity(event)
    seqs = sorted(replayed)
    gaps = duplicates + (0 if seqs == list(range(1, len(seqs) + 1)) else 1)
    reused = sum(
        1
        for seq, seen in watcher.seen.items()
        if len(set(seen)) > 1 or (seq in replayed and seen[0] != replayed[seq])
    )
    return gaps, reused


async def probe_api(here: World, until: asyncio.Event, figures: Figures) -> None:
    """Call the API's main routes every 0.25 s and count 500s and 503s."""
    headers = {"Authorization": f"Bearer {here.api_key}"}
    async with httpx.AsyncClient(base_url=here.api_url, headers=headers, timeout=10) as http:
        while not until.is_set():
            for method, path, body in (
                ("GET", "/v1/jobs", None),
                ("GET", f"/v1/jobs/{uuid.uuid4()}", None),
                ("POST", "/v1/jobs", {"product_name": ""}),  # invalid: refused, never created
            ):
                with contextlib.suppress(httpx.HTTPError):
                    answer = await http.request(method, path, json=body)
                    figures.api_500s += answer.status_code == 500
                    figures.api_503s += answer.status_code == 503
            await asyncio.sleep(0.25)


Fault = Callable[[World, Figures, list[str]], Awaitable[None]]


async def kill_storm(here: World, figures: Figures, job_ids: list[str], *, seconds: float) -> None:
    """One live worker SIGKILLed every 4–6 s, and a replacement started, for ``seconds``."""
    rng = random.Random(23)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await asyncio.sleep(rng.uniform(4, 6))
        alive = here.alive()
        if alive:
            victim = rng.choice(alive)
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            figures.faults += 1
            figures.kills.append((victim.pid, time.time()))
        here.start_worker()


async def postgres_outage(
    here: World, figures: Figures, job_ids: list[str], *, seconds: float
) -> None:
    """PostgreSQL stopped once most jobs are under way, for ``seconds``, then started."""
    await asyncio.sleep(6)
    await asyncio.to_thread(here.postgres.stop)
    figures.faults += 1
    await asyncio.sleep(seconds)
    await asyncio.to_thread(here.postgres.start)


async def redis_restart(
    here: World, figures: Figures, job_ids: list[str], *, seconds: float
) -> None:
    """Redis SIGKILLed mid-run and started again, empty, after ``seconds``."""
    await asyncio.sleep(6)
    here.redis.kill()
    figures.faults += 1
    await asyncio.sleep(seconds)
    here.redis.start()


async def brownout(here: World, figures: Figures, job_ids: list[str], *, seconds: float) -> None:
    """Every provider misbehaves for a while; two predictions end badly."""
    anthropic, elevenlabs, replicate = here.anthropic, here.elevenlabs, here.replicate
    anthropic.fail_next(
        anthropic_mock.overloaded(),
        anthropic_mock.rate_limited(retry_after="1"),
        anthropic_mock.server_error(),
    )
    elevenlabs.fail_next(elevenlabs_mock.too_many_concurrent(), elevenlabs_mock.server_error())
    replicate.fail_next(replicate_mock.server_error(), replicate_mock.throttled(retry_after="1"))
    # The 3rd prediction is aborted (retried: a new one), the 6th fails for good (its job
    # fails with prediction_failed).
    replicate.outcomes.extend(["succeeded", "succeeded", "aborted", "succeeded", "succeeded",
                               "failed"])  # fmt: skip
    figures.faults += 3 + 2 + 2 + 2
    figures.expected_failures = 1
    await asyncio.sleep(seconds)


SCENARIOS: dict[str, tuple[Callable[..., Awaitable[None]], int, int, float, float]] = {
    # name: (fault, workers, jobs, fault seconds (full, quick))
    "kill-storm": (kill_storm, 3, 24, 90.0, 20.0),
    "postgres-outage": (postgres_outage, 2, 8, 20.0, 8.0),
    "redis-restart": (redis_restart, 2, 9, 3.0, 2.0),
    "brownout": (brownout, 2, 8, 1.0, 1.0),
}


async def run(name: str, *, quick: bool) -> Figures:
    fault, workers, jobs, full_s, quick_s = SCENARIOS[name]
    if quick:
        jobs = max(3, jobs // 3)
    figures = Figures(name, jobs=jobs)
    async with world(name, clip_latency=3.0 if quick else 6.0) as here:
        for _ in range(workers):
            here.start_worker()
        async with Client(here.api_url, here.api_key, timeout=60) as client:
            ids = [
                (await client.submit(product_name=f"Chaos {i}", duration_s=DURATION_S,
                                     max_retries=3)).id
                for i in range(jobs)
            ]  # fmt: skip
            watchers = [Watcher(client, job_id) for job_id in ids]
            probing = asyncio.Event()
            probe = asyncio.create_task(probe_api(here, probing, figures))
            await fault(here, figures, ids, seconds=quick_s if quick else full_s)
            fault_ended = time.monotonic()
            finals = await drain(client, ids, timeout=600)
            figures.drain_s = time.monotonic() - fault_ended
            probing.set()
            await probe
            await asyncio.wait([w.task for w in watchers], timeout=30)
            for watcher in watchers:
                gaps, reused = await replay_check(client, watcher)
                figures.replay_gaps += gaps
                figures.reused_seqs += reused
        await account(here, figures, finals)
    return figures


async def drain(client: Client, ids: list[str], *, timeout: float) -> dict[str, Any]:
    """Every job's final view, once all are terminal."""
    deadline = time.monotonic() + timeout
    finals: dict[str, Any] = {}
    while len(finals) < len(ids) and time.monotonic() < deadline:
        for job_id in ids:
            if job_id in finals:
                continue
            with contextlib.suppress(ApiError, httpx.HTTPError):
                job = await client.get(job_id)
                if job.status in TERMINAL:
                    finals[job_id] = job
        await asyncio.sleep(0.5)
    return finals


async def account(here: World, figures: Figures, finals: dict[str, Any]) -> None:
    """Lost jobs, duplicate successes, paid outputs against the minimum, takeover times."""
    figures.lost = figures.jobs - len(finals)
    failed_as_meant = 0
    for job in finals.values():
        extra = job.model_extra or {}
        history = extra.get("history") or []
        if [h.get("outcome") for h in history].count("succeeded") > 1:
            figures.duplicate_successes += 1
        if job.status != "succeeded":
            meant = job.error is not None and job.error.code == "prediction_failed"
            if meant and failed_as_meant < figures.expected_failures:
                failed_as_meant += 1
            else:
                figures.lost += 1
        figures.resumed_s += resumed_after_kill(history, job, figures.kills)
    engine = store.create_engine(here.postgres.url)
    try:
        async with store.sessionmaker(engine)() as session:
            rows = (
                await session.execute(
                    select(store.StageCheckpoint.job_id, store.StageCheckpoint.stage,
                           store.StageCheckpoint.output)
                )
            ).all()  # fmt: skip
    finally:
        await engine.dispose()
    stages = {(str(job_id), stage): output for job_id, stage, output in rows}
    scripted = sum(1 for (_, stage) in stages if stage == "script_gen")
    voiced = sum(1 for (_, stage) in stages if stage == "voice_gen")
    held = {
        str(note["id"])
        for (_, stage), output in stages.items()
        if stage == "video_gen.notes"
        for note in output.values()
        if isinstance(note, dict) and note.get("id")
    }
    succeeded = {p.id for p in here.replicate.predictions.values() if p.status == "succeeded"}
    figures.scripts = (here.anthropic.paid, scripted)
    figures.voices = (here.elevenlabs.paid, voiced)
    figures.clips = (len(succeeded), len(succeeded & held))


def resumed_after_kill(
    history: list[dict[str, Any]], job: Any, kills: list[tuple[int, float]]
) -> list[float]:
    """For each attempt lost with a killed worker: seconds from the kill to the next attempt's
    start."""
    out: list[float] = []
    starts = [h.get("started_at") for h in history[1:]] + [
        job.started_at.isoformat() if job.started_at else None
    ]
    for record, next_start in zip(history, starts, strict=True):
        if record.get("outcome") != "worker_lost" or not next_start:
            continue
        match = re.search(r":(\d+):", str(record.get("worker_id")))
        killed = [at for pid, at in kills if match and pid == int(match.group(1))]
        if killed:
            started = datetime.fromisoformat(str(next_start)).timestamp()
            out.append(max(0.0, started - killed[0]))
    return out


def write_figures(figures: list[Figures], crash_points: list[dict[str, Any]]) -> None:
    """Replace the measured section of docs/reliability.md."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "<!-- measured: written by python -m bench.chaos -->",
        f"Measured {stamp} on {machine()} (`make chaos`).",
        "",
        HEADER,
        *(f.row() for f in figures),
    ]
    if crash_points:
        lines += ["", "| crash points | runs | points | extra scripts | extra voices | extra clips |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for entry in crash_points:
            extra = entry.get("extra", {})
            lines.append(
                f"| {entry['fault']} | {entry['runs']} | {entry['points']} "
                f"| {extra.get('script', 0)} | {extra.get('voice', 0)} | {extra.get('clips', 0)} |"
            )
    lines.append("<!-- /measured -->")
    text = RELIABILITY_MD.read_text()
    pattern = re.compile(r"<!-- measured:.*?<!-- /measured -->", re.S)
    RELIABILITY_MD.write_text(pattern.sub(lambda _: "\n".join(lines), text))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenarios", nargs="*", help=f"any of {', '.join(SCENARIOS)} (all)")
    parser.add_argument("--quick", action="store_true", help="short runs; prints only")
    parser.add_argument("--crash-report", type=Path, help="crash-point figures (JSON lines)")
    args = parser.parse_args()
    names = args.scenarios or list(SCENARIOS)
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    results: list[Figures] = []
    for name in names:
        figures = asyncio.run(run(name, quick=args.quick))
        if not results:
            print(HEADER, flush=True)
        print(figures.row(), flush=True)
        results.append(figures)
    bad = [f for f in results if f.lost or f.duplicate_successes or f.extra_paid
           or f.replay_gaps or f.reused_seqs or f.api_500s]  # fmt: skip
    if not args.quick and len(names) == len(SCENARIOS):
        report = args.crash_report
        crash = (
            [json.loads(line) for line in report.read_text().splitlines()]
            if report and report.exists()
            else []
        )
        write_figures(results, crash)
    for f in bad:
        print(f"goal missed in {f.scenario}: see {f.scenario} row", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
