"""Commands that run or operate the service: ``dev``, ``api``, ``worker``, ``process-pending``,
``migrate``, ``info``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import click
from rich.table import Table

from videoq import heap
from videoq.cli.base import (
    INTERRUPTED,
    JOB_FAILED,
    USAGE,
    Failure,
    api_options,
    call,
    err,
    main,
    need_urls,
    out,
    settings_of,
)
from videoq.settings import Settings


def _port_free(host: str, port: int) -> None:
    from videoq.dev import port_in_use

    if port and port_in_use(host, port):
        raise Failure(
            f"port {port} on {host} is in use; stop what listens there, or choose another "
            "with --port (0: any free port)",
            USAGE,
        )


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.pass_context
def dev(ctx: click.Context, host: str, port: int, workers: int) -> None:
    """Embedded services, migrations, the API and workers in one command (Ctrl-C stops all)."""
    from videoq.dev import running_stack

    _port_free(host, port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with running_stack(settings_of(ctx), host=host, port=port, workers=workers) as stack:
            s = stack.settings
            click.echo(f"VIDEOQ_API_URL={stack.api_url}")
            click.echo(f"VIDEOQ_API_KEY={stack.api_key}")
            click.echo(f"VIDEOQ_DATABASE_URL={s.database_url}")
            click.echo(f"VIDEOQ_REDIS_URL={s.redis_url}", nl=True)
            sys.stdout.flush()
            try:
                while not stop.wait(0.5):
                    pass
            except KeyboardInterrupt:
                pass
            err.print("videoq dev: stopping")
    except RuntimeError as exc:  # a process that did not start, or the stack not ready in time
        raise Failure(f"{exc}; its log lines are above", JOB_FAILED) from None


@main.command()
@click.option("--host", default=None, help="Default: settings.host.")
@click.option("--port", default=None, type=click.IntRange(0, 65535), help="Default: settings.port.")
@click.pass_context
def api(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Run the HTTP/WebSocket API under uvicorn."""
    import uvicorn

    from videoq.api import create_app

    settings = need_urls(settings_of(ctx))
    host, port = host or settings.host, settings.port if port is None else port
    _port_free(host, port)
    app = create_app(settings)
    heap.settle(YOUNG_GENERATION)
    # No access log (at this level it would print nothing, yet format every request) and no
    # Server header (it only tells a scanner what runs here).
    uvicorn.run(
        app, host=host, port=port, log_level="warning", lifespan="on", access_log=False,
        server_header=False,
    )  # fmt: skip


#: The API's youngest generation, in objects. Under 32 clients at 700 (Python's) the
#: collector took 1.1 s of every 8, full collections walking every module's objects twice a
#: second; at 50,000 with the rest frozen, none (docs/decisions.md, "Preference-driven
#: generation"): a fifth of an interaction's CPU.
YOUNG_GENERATION = 50_000


@main.command()
@click.option("--burst", is_flag=True, help="Process the jobs due now, then stop.")
@click.option(
    "--check",
    is_flag=True,
    help="Exit 0 if a worker of this host (or --id) heartbeats, else 1: a liveness probe.",
)
@click.option("--id", "worker_id", help="With --check: a worker id, or its beginning.")
@click.pass_context
def worker(ctx: click.Context, burst: bool, check: bool, worker_id: str | None) -> None:
    """Run a worker: arq's, woken at once by new jobs (`arq videoq.workers.WorkerSettings` runs
    the same code but polls every VIDEOQ_POLL_DELAY_S)."""
    settings = need_urls(settings_of(ctx))
    if check:
        _check_worker(settings, worker_id)
        return
    if burst:
        _print_summary(settings)
        return
    from videoq.workers import create_worker, new_event_loop

    asyncio.set_event_loop(new_event_loop())  # arq's worker runs on the current loop
    with _start_failures():
        create_worker(settings).run()


@contextlib.contextmanager
def _start_failures() -> Iterator[None]:
    """A worker that cannot start (no schema, a store out of reach), or a burst stopped by a
    signal, says so in one line."""
    from videoq.broker import BROKER_ERRORS
    from videoq.errors import VideoqError
    from videoq.store import DATABASE_ERRORS

    try:
        yield
    except asyncio.CancelledError:  # SIGINT or SIGTERM: arq's handler cancels the worker
        raise Failure(
            "stopped by a signal; the jobs it had not finished are back on the queue",
            INTERRUPTED,
        ) from None
    except VideoqError as exc:
        raise Failure(f"the worker stopped: {exc.message}", JOB_FAILED) from None
    except (*BROKER_ERRORS, *DATABASE_ERRORS) as exc:
        raise Failure(
            f"the worker stopped: {type(exc).__name__}: {exc}; check VIDEOQ_DATABASE_URL and "
            "VIDEOQ_REDIS_URL",
            JOB_FAILED,
        ) from None


def _check_worker(settings: Settings, worker_id: str | None) -> None:
    alive, message = asyncio.run(_worker_alive(settings, worker_id))
    click.echo(message, err=not alive)
    sys.exit(0 if alive else 1)


async def _worker_alive(settings: Settings, worker_id: str | None) -> tuple[bool, str]:
    """Whether a live worker's id begins with ``worker_id`` (default: this host's name, as
    every worker id does: ``host:pid:random``), read from the worker registry in Redis, and
    one line saying which, or why not. Alive: its last heartbeat is younger than
    ``worker_stale_s``, so the other workers leave its jobs alone. (Only the broker is
    imported: a probe that runs every few seconds should not load the pipeline.)"""
    from videoq.broker import BROKER_ERRORS, connect, registry

    prefix = worker_id or f"{socket.gethostname()}:"
    try:
        redis = await connect(settings, retries=0)
        try:
            workers = await registry.list_workers(redis, settings.worker_stale_s)
        finally:
            await redis.aclose()
    except BROKER_ERRORS as exc:
        return False, f"unhealthy: cannot reach Redis to read the heartbeats: {exc}"
    mine = [w for w in workers if str(w.get("id", "")).startswith(prefix)]
    alive = [str(w["id"]) for w in mine if w["alive"]]
    if alive:
        return True, "healthy: " + ", ".join(alive)
    if mine:
        return False, f"unhealthy: no heartbeat from {prefix}… in {settings.worker_stale_s:g} s"
    return False, f"unhealthy: no worker {prefix}… is registered"


def _print_summary(settings: Settings) -> None:
    from videoq.workers import new_event_loop
    from videoq.workers.pending import process_pending

    loop = new_event_loop()
    try:
        with _start_failures():
            done = loop.run_until_complete(process_pending(settings))
    finally:
        loop.close()
    click.echo(
        f"processed: {done.succeeded} succeeded, {done.failed} failed, {done.refills} feeds "
        f"refilled; still waiting: {done.waiting} (scheduled later, retrying or awaiting budget)"
    )


@main.command("process-pending")
@click.pass_context
def process_pending(ctx: click.Context) -> None:
    """Process every job due now and every feed refill due (with the jobs it makes), then
    exit with a summary. Jobs scheduled for later, or waiting for a retry or a budget, stay."""
    _print_summary(need_urls(settings_of(ctx)))


@main.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Bring the database schema up to date."""
    from videoq import store

    settings = need_urls(settings_of(ctx))
    assert settings.database_url
    try:
        store.migrate(settings.database_url)
    except RuntimeError as exc:  # a migration's refusal, e.g. a server without pgvector
        raise Failure(str(exc), JOB_FAILED) from None
    err.print("database migrated to", store.head_revision())


@main.command()
@api_options
@click.pass_context
def info(ctx: click.Context, /, api_url: str | None, api_key: str | None, as_json: bool) -> None:
    """Queue, feed and worker summary (needs an admin key)."""

    async def fetch(client: Any) -> dict[str, Any]:
        return {"queue": await client.queue_stats(), "workers": await client.workers()}

    data = call(ctx, api_url, api_key, fetch)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    stats = data["queue"]
    counts = Table(*stats["counts"], title=f"jobs (queue length {stats['queue_length']})")
    counts.add_row(*(str(n) for n in stats["counts"].values()))
    out.print(counts)
    oldest = stats["oldest_queued_age_s"]
    out.print(f"oldest queued job: {oldest:.0f} s" if oldest is not None else "nothing queued")
    feed = stats.get("feed")
    if feed is not None:
        out.print(
            f"feeds: {feed['users_due']} users due a refill, {feed['generated_waiting']} "
            "generated jobs waiting"
        )
    table = Table(
        "worker", "alive", "jobs", "succeeded", "failed", "last heartbeat", title="workers"
    )
    for w in data["workers"]:
        counts_ = w.get("counts", {})
        seen = time.strftime("%H:%M:%S", time.localtime(w["last_heartbeat"]))
        table.add_row(
            w["id"], "yes" if w["alive"] else "no", str(len(w.get("jobs", []))),
            str(counts_.get("succeeded", 0)), str(counts_.get("failed", 0)), seen,
        )  # fmt: skip
    out.print(table)
