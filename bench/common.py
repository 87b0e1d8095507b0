"""What every benchmark needs: embedded services in a temporary directory, the API served by
uvicorn in this process, worker subprocesses, and writing figures into docs/benchmarks.md."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import uvicorn

from videoq import store
from videoq.api import create_app
from videoq.children import preexec
from videoq.embedded import embedded_services, free_port
from videoq.settings import Settings
from videoq.store.apikeys import create_key

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"


#: Benchmarks measure the machinery, not the per-tenant admission limits.
NO_LIMITS = {"VIDEOQ_RATE_LIMIT_PER_S": "0", "VIDEOQ_MAX_QUEUED_JOBS": "0"}


@dataclass
class Stack:
    settings: Settings
    api_url: str
    api_key: str
    home: Path


@contextlib.asynccontextmanager
async def stack(**overrides: object) -> AsyncIterator[Stack]:
    """Embedded PostgreSQL and Redis, migrated, and the API on a free port."""
    home = Path(tempfile.mkdtemp(prefix="videoq-bench-"))
    with embedded_services(home) as services:
        settings = Settings(
            database_url=services.database_url, redis_url=services.redis_url, home=home,
            providers="offline", log_level="WARNING", rate_limit_per_s=0, max_queued_jobs=0,
            **overrides,  # type: ignore[arg-type]
        )  # fmt: skip
        await asyncio.to_thread(store.migrate, services.database_url)
        engine = store.create_engine(services.database_url)
        async with store.sessionmaker(engine)() as session:
            key = await create_key(session, "bench", admin=True)
        await engine.dispose()
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
        )
        task = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110  uvicorn offers no event for this
            await asyncio.sleep(0.01)
        try:
            yield Stack(settings, f"http://127.0.0.1:{port}", key, home)
        finally:
            server.should_exit = True
            await task


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds the process has used (Linux: ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spawn(args: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            list(args), env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=preexec(),  # dies with the benchmark, however it ends
        )  # fmt: skip


def videoq_worker(stack: Stack, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """`videoq worker` on the stack's services; ``env`` adds or overrides VIDEOQ_* settings
    (e.g. ``VIDEOQ_PIPELINE="bench.pipelines:noop"``: bench/ is on its path)."""
    s = stack.settings
    base = {
        "VIDEOQ_DATABASE_URL": s.database_url or "",
        "VIDEOQ_REDIS_URL": s.redis_url or "",
        "VIDEOQ_QUEUE_NAME": s.queue_name,
        "VIDEOQ_ARTIFACTS_DIR": str(s.artifacts),
        "VIDEOQ_SCRATCH_DIR": str(s.scratch),
        "VIDEOQ_PROVIDERS": "offline",
        "VIDEOQ_LOG_FORMAT": "json",
        "PYTHONPATH": str(ROOT),
        **NO_LIMITS,
    }
    return spawn([sys.executable, "-m", "videoq", "worker"], {**base, **env}, log)


def raw_arq_worker(redis_url: str, queue: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """The baseline, `arq bench.raw_arq.Settings`, on ``queue``; ``env`` adds BENCH_* settings."""
    base = {"BENCH_REDIS_URL": redis_url, "BENCH_QUEUE": queue, "PYTHONPATH": str(ROOT)}
    return spawn([sys.executable, "-m", "arq", "bench.raw_arq.Settings"], {**base, **env}, log)


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (e.g. a job's work directory)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


async def wait_for(predicate: object, timeout: float, what: str, every: float = 0.005) -> float:
    """Poll ``predicate()`` (sync or async) every ``every`` seconds; returns when it first
    held."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()  # type: ignore[operator]
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(every)


def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` by nearest rank (the p99 of 100 values is the largest)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: Sequence[float]) -> str:
    """``median (min–max)`` of ``values``, in the unit they came in."""
    return f"{statistics.median(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_section(title: str, body: str) -> None:
    """Replace (or add) the ``## title`` section of docs/benchmarks.md."""
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = f"## {title}\n\nMeasured {stamp} on {machine()}.\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(section + "\n", text)
    else:
        text = text.rstrip() + "\n\n" + section
    BENCHMARKS_MD.parent.mkdir(parents=True, exist_ok=True)
    BENCHMARKS_MD.write_text(text.rstrip() + "\n")
