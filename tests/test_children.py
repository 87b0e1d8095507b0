"""Nothing outlives its worker: a child videoq starts (FFmpeg here) dies with the process that
started it, however that process ends, SIGKILL included (:mod:`videoq.children`)."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.conftest import LiveApi
from tests.processes import ARQ_WORKER, VIDEOQ_WORKER, WorkerProcess, processes_mentioning
from videoq.children import preexec
from videoq.client import Client
from videoq.settings import Settings

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="children are tied to their parent on Linux only"
)

#: A parent that starts one long, idle FFmpeg through videoq.ffmpeg, prints its pid, and waits.
PARENT = textwrap.dedent(
    """
    import asyncio, sys
    from videoq.ffmpeg import run_ffmpeg
    from videoq.settings import Settings

    async def main():
        args = ["-re", "-f", "lavfi", "-i", "anullsrc", "-t", "600", "-f", "null", "-"]
        await run_ffmpeg(args, settings=Settings(), on_start=lambda pid: print(pid, flush=True))

    if sys.argv[1] == "uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())
    """
)


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, killed but not yet reaped, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


async def gone(pids: list[int], timeout: float = 10) -> list[int]:
    """``pids`` still running after ``timeout`` seconds (none, once each is gone)."""
    for _ in range(int(timeout / 0.05)):
        if not any(running(pid) for pid in pids):
            return []
        await asyncio.sleep(0.05)
    return [pid for pid in pids if running(pid)]


def kill_all(pids: list[int]) -> None:
    """Clean up after a failed test: nothing it started may keep running."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])  # the worker runs on uvloop
async def test_ffmpeg_dies_with_its_sigkilled_parent(loop: str) -> None:
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PARENT, loop, stdout=asyncio.subprocess.PIPE, preexec_fn=preexec()
    )
    ffmpeg: list[int] = []
    try:
        assert parent.stdout is not None
        ffmpeg.append(int(await asyncio.wait_for(parent.stdout.readline(), 30)))
        assert running(ffmpeg[0])
        parent.kill()
        assert await asyncio.wait_for(parent.wait(), 10) == -signal.SIGKILL
        assert await gone(ffmpeg) == [], "FFmpeg outlived its SIGKILLed parent"
    finally:
        with contextlib.suppress(ProcessLookupError):
            parent.kill()
        await parent.wait()
        kill_all(ffmpeg)


def test_a_child_whose_parent_died_before_it_was_tied_kills_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The parent's pid as the child checks it: another process's, as if the parent had died
    # between fork and the prctl and the child had been reparented.
    with monkeypatch.context() as patched:
        patched.setattr(os, "getpid", lambda: 1)
        tie = preexec()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], preexec_fn=tie)
    try:
        assert child.wait(10) == -signal.SIGKILL  # before exec: the sleep never ran
    finally:
        child.kill()
        child.wait()


# Both ways of running a worker: uvloop (`videoq worker`) and asyncio's loop (arq's CLI) start
# children each their own way.
@pytest.mark.parametrize("command", [VIDEOQ_WORKER, ARQ_WORKER], ids=["videoq", "arq"])
async def test_a_sigkilled_worker_leaves_no_ffmpeg_running(
    live_api: LiveApi, client: Client, settings: Settings, redis: Redis, tmp_path: Path,
    command: tuple[str, ...],
) -> None:  # fmt: skip
    worker = WorkerProcess(settings, tmp_path).start(command)
    ffmpeg: list[int] = []
    try:
        await worker.registered(redis)
        job = await client.submit(product_name="Killed Worker", duration_s=30)
        async for event in client.events(job.id):
            if event.stage == "compositing":
                break
        workdir = str(settings.scratch / job.id)
        deadline = time.monotonic() + 30
        while not (ffmpeg := processes_mentioning(workdir)):
            assert time.monotonic() < deadline, "compositing FFmpeg never appeared"
            await asyncio.sleep(0.01)
        worker.signal(signal.SIGKILL)
        assert await worker.exited() == -signal.SIGKILL
        assert await gone(ffmpeg) == [], f"FFmpeg outlived its SIGKILLed worker: {ffmpeg}"
    finally:
        worker.stop()
        kill_all(ffmpeg)


#: One-shot tools a test runs to completion under a timeout (kubectl, systemd-analyze, pip
#: wheel, an import check): nothing of videoq's runs in them.
ONE_SHOT = {"tests/test_deploy.py", "tests/test_layout.py", "tests/test_packaging.py"}
STARTS = {("subprocess", "Popen"), ("subprocess", "run"), ("asyncio", "create_subprocess_exec")}


def test_every_child_videoq_starts_is_tied_to_its_parent() -> None:
    """Every ``subprocess.Popen``/``run`` and ``asyncio.create_subprocess_exec`` in src, tests
    and bench (workers, APIs, FFmpeg, Redis, benchmark suites) passes ``preexec_fn``."""
    root = Path(__file__).resolve().parents[1]
    untied = []
    for path in sorted(p for d in ("src", "tests", "bench") for p in (root / d).rglob("*.py")):
        name = str(path.relative_to(root))
        if name in ONE_SHOT:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and (node.func.value.id, node.func.attr) in STARTS
                and not any(k.arg == "preexec_fn" for k in node.keywords)
            ):
                untied.append(f"{name}:{node.lineno}")
    assert untied == []
