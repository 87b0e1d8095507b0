"""Real worker processes for crash, shutdown and scale tests: `python -m videoq worker`,
configured only through VIDEOQ_* variables, as an operator would run it. Each dies with the
test run that started it, however that ends (:mod:`videoq.children`)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.common import processes_mentioning  # one /proc scan for tests and benchmarks
from redis.asyncio import Redis

from videoq.broker import keys
from videoq.children import preexec
from videoq.settings import Settings

FAST_RECOVERY = {
    "VIDEOQ_HEARTBEAT_S": "0.5",
    "VIDEOQ_WORKER_STALE_S": "3",
    "VIDEOQ_RECONCILE_S": "1",
}


#: The two ways an operator starts a worker: videoq's command (uvloop, woken by new jobs) and
#: arq's own CLI (asyncio's loop, polling).
VIDEOQ_WORKER = ("-m", "videoq", "worker")
ARQ_WORKER = ("-m", "arq", "videoq.workers.WorkerSettings")


class WorkerProcess:
    """One worker subprocess; its output goes to a log file for post-mortems."""

    def __init__(self, settings: Settings, log_dir: Path, **env: str) -> None:
        self.env = {
            **os.environ,
            "VIDEOQ_DATABASE_URL": settings.database_url or "",
            "VIDEOQ_REDIS_URL": settings.redis_url or "",
            "VIDEOQ_QUEUE_NAME": settings.queue_name,
            "VIDEOQ_ARTIFACTS_DIR": str(settings.artifacts),
            "VIDEOQ_SCRATCH_DIR": str(settings.scratch),
            "VIDEOQ_PROVIDERS": "offline",
            "VIDEOQ_PIPELINE": settings.pipeline,
            "VIDEOQ_LOG_FORMAT": "json",
            **FAST_RECOVERY,
            **env,
        }
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"worker-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, command: tuple[str, ...] = VIDEOQ_WORKER) -> WorkerProcess:
        """Start it: ``python <command>``, `videoq worker` unless told otherwise."""
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *command],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec(),
            )  # fmt: skip
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def registered(self, redis: Redis, timeout: float = 30) -> str:
        """Wait until the worker has heartbeated; returns its worker id."""
        deadline = time.monotonic() + timeout
        marker = f":{self.pid}:"
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.output()
            for member in await redis.zrange(keys.WORKERS, 0, -1):
                if marker in member.decode():
                    return str(member.decode())
            await asyncio.sleep(0.05)
        raise AssertionError(f"worker {self.pid} never registered:\n{self.output()}")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def exited(self, timeout: float = 60) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, f"worker {self.pid} did not exit"
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


__all__ = ["ARQ_WORKER", "FAST_RECOVERY", "VIDEOQ_WORKER", "WorkerProcess", "processes_mentioning"]
