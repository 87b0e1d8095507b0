"""``videoq dev`` and ``make demo``: embedded services, migrations, the API and workers as
separate processes, stopped cleanly together."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from videoq import store
from videoq.children import preexec
from videoq.embedded import free_port, services_for
from videoq.settings import Settings
from videoq.store.apikeys import create_key


@dataclass(frozen=True)
class Stack:
    settings: Settings
    api_url: str
    api_key: str


async def _create_key(settings: Settings, tenant: str, admin: bool) -> str:
    assert settings.database_url
    engine = store.create_engine(settings.database_url)
    try:
        async with store.sessionmaker(engine)() as session:
            return await create_key(session, tenant, admin=admin)
    finally:
        await engine.dispose()


def _spawn(args: list[str], settings: Settings) -> subprocess.Popen[bytes]:
    assert settings.database_url and settings.redis_url
    env = {
        **os.environ,
        "VIDEOQ_DATABASE_URL": settings.database_url,
        "VIDEOQ_REDIS_URL": settings.redis_url,
        "VIDEOQ_HOME": str(settings.home.resolve()),
    }
    # Own process groups: a terminal's Ctrl-C reaches `videoq dev`, which stops them in order;
    # and they die with it if it is killed instead.
    return subprocess.Popen(
        [sys.executable, "-m", "videoq", *args], env=env, start_new_session=True,
        preexec_fn=preexec(),
    )  # fmt: skip


def _wait_ready(url: str, workers: int, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} during start-up")
        # (ValueError: something else answers there, with no JSON.)
        with contextlib.suppress(httpx.HTTPError, ValueError, AttributeError):
            health = httpx.get(f"{url}/health", timeout=1).json()
            if health.get("status") == "healthy" and health.get("workers", 0) >= workers:
                return
        time.sleep(0.1)
    raise RuntimeError("videoq dev: the API and workers did not become ready within 60 s")


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on ``host:port`` (the API could not bind it)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return False  # a host that does not resolve: uvicorn says so itself
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError:
            return True
    return False


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running_stack(
    settings: Settings, *, host: str = "127.0.0.1", port: int | None = None, workers: int = 1
) -> Iterator[Stack]:
    """Everything ``videoq dev`` runs, for the duration of the ``with`` block."""
    with services_for(settings) as live:
        assert live.database_url
        store.migrate(live.database_url)
        api_key = asyncio.run(_create_key(live, "dev", admin=True))
        port = port or free_port()
        api_url = f"http://{host}:{port}"
        procs = [_spawn(["api", "--host", host, "--port", str(port)], live)]
        procs += [_spawn(["worker"], live) for _ in range(workers)]
        record = live.home / "dev.json"
        try:
            _wait_ready(api_url, workers, procs)
            record.write_text(json.dumps({"api_url": api_url, "api_key": api_key}))
            record.chmod(0o600)
            yield Stack(live, api_url, api_key)
        finally:
            record.unlink(missing_ok=True)
            _stop(procs)


def dev_api(home: Path) -> tuple[str, str] | None:
    """The API URL and key of a ``videoq dev`` running in this directory, if any."""
    try:
        data = json.loads((home / "dev.json").read_text())
        return data["api_url"], data["api_key"]
    except (OSError, ValueError, KeyError):
        return None
