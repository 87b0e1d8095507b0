"""The ``videoq`` command line. Exit codes: 0 success, 1 job failed (or the API refused the
request), 2 usage error, 3 API unreachable or unavailable (after retrying for
``api_timeout_s``). Errors are one line on stderr."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from videoq.embedded import resolve
from videoq.logs import configure_logging
from videoq.settings import Settings
from videoq.types import STAGES, JobStatus

STATUSES = [str(status) for status in JobStatus]
err = Console(stderr=True)
out = Console(width=140)


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


def _need_urls(settings: Settings) -> Settings:
    settings = resolve(settings)
    if not (settings.database_url and settings.redis_url):
        raise click.UsageError(
            "set VIDEOQ_DATABASE_URL and VIDEOQ_REDIS_URL, or run `videoq dev` in this directory"
        )
    return settings


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """videoq: AI video generation jobs, from a brief to a finished MP4.

    Settings come from VIDEOQ_* variables and ./videoq.toml; flags override both."""
    ctx.obj = Settings()
    configure_logging(ctx.obj)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.pass_context
def dev(ctx: click.Context, host: str, port: int, workers: int) -> None:
    """Embedded services, migrations, the API and workers in one command (Ctrl-C stops all)."""
    from videoq.dev import running_stack

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with running_stack(_settings(ctx), host=host, port=port, workers=workers) as stack:
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


@main.command()
@click.option("--host", default=None, help="Default: settings.host.")
@click.option("--port", default=None, type=int, help="Default: settings.port.")
@click.pass_context
def api(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Run the HTTP/WebSocket API under uvicorn."""
    import uvicorn

    from videoq.api import create_app

    settings = _need_urls(_settings(ctx))
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_level="warning",
        lifespan="on",
    )


@main.command()
@click.option("--burst", is_flag=True, help="Stop once the queue is empty.")
@click.pass_context
def worker(ctx: click.Context, burst: bool) -> None:
    """Run a worker: arq's, woken at once by new jobs (`arq videoq.workers.WorkerSettings` runs
    the same code but polls every VIDEOQ_POLL_DELAY_S)."""
    from videoq.workers import create_worker, new_event_loop

    settings = _need_urls(_settings(ctx))
    asyncio.set_event_loop(new_event_loop())  # arq's worker runs on the current loop
    create_worker(settings, burst=burst).run()


@main.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Bring the database schema up to date."""
    from videoq import store

    settings = _need_urls(_settings(ctx))
    assert settings.database_url
    try:
        store.migrate(settings.database_url)
    except RuntimeError as exc:  # a migration's refusal, e.g. a server without pgvector
        err.print(f"[red]error[/]: {exc}", soft_wrap=True)
        ctx.exit(1)
    err.print("database migrated to", store.head_revision())


@main.group()
def keys() -> None:
    """Manage API keys."""


@keys.command("create")
@click.option("--tenant", required=True, help="Tenant the key belongs to.")
@click.option("--admin", is_flag=True, help="May also operate workers and queues.")
@click.pass_context
def keys_create(ctx: click.Context, tenant: str, admin: bool) -> None:
    """Create an API key and print it (shown once; only its hash is stored)."""
    from videoq.dev import _create_key

    click.echo(asyncio.run(_create_key(_need_urls(_settings(ctx)), tenant, admin)))


async def _with_session(settings: Settings, fn: Any) -> Any:
    from videoq import store

    assert settings.database_url
    engine = store.create_engine(settings.database_url)
    try:
        async with store.sessionmaker(engine)() as session:
            return await fn(session)
    finally:
        await engine.dispose()


def _key_view(row: Any) -> dict[str, Any]:
    def ts(value: Any) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": str(row.id), "prefix": row.prefix, "tenant": row.tenant,
        "scopes": ["tenant", "admin"] if row.is_admin else ["tenant"],
        "created_at": ts(row.created_at), "last_used_at": ts(row.last_used_at),
        "revoked_at": ts(row.revoked_at),
    }  # fmt: skip


@keys.command("list")
@click.option("--tenant", default=None, help="Only this tenant's keys.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def keys_list(ctx: click.Context, tenant: str | None, as_json: bool) -> None:
    """List API keys: id, prefix, tenant, scopes, created, last used, revoked (never the key)."""
    from videoq.store.apikeys import list_keys

    settings = _need_urls(_settings(ctx))
    rows = asyncio.run(_with_session(settings, lambda s: list_keys(s, tenant)))
    views = [_key_view(r) for r in rows]
    if as_json:
        click.echo(json.dumps(views, indent=2))
        return
    table = Table("id", "prefix", "tenant", "scopes", "created", "last used", "revoked")
    for v in views:
        table.add_row(
            v["id"], v["prefix"], v["tenant"], ",".join(v["scopes"]), v["created_at"] or "",
            v["last_used_at"] or "never", v["revoked_at"] or "",
        )  # fmt: skip
    out.print(table)


@keys.command("revoke")
@click.argument("prefix_or_id")
@click.pass_context
def keys_revoke(ctx: click.Context, prefix_or_id: str) -> None:
    """Revoke a key by its id or 10-character prefix (`vq_…`); it stops working at once."""
    from videoq.errors import Conflict, NotFound
    from videoq.store.apikeys import revoke_key

    settings = _need_urls(_settings(ctx))
    try:
        row = asyncio.run(_with_session(settings, lambda s: revoke_key(s, prefix_or_id)))
    except (NotFound, Conflict) as exc:
        raise click.ClickException(exc.message) from None
    err.print(f"revoked key {row.prefix}… ({row.id}) of tenant {row.tenant}")


def _brief_options(fn: Any) -> Any:
    options = [
        click.argument("product_name"),
        click.option("--style", type=click.Choice(["minimal", "bold", "cinematic", "playful"])),
        click.option("--cta", "cta_text", help="Call to action drawn over the last seconds."),
        click.option("--prompt", help="Extra direction for the script."),
        click.option("--duration", "duration_s", type=int, help="Seconds, 5–60."),
        click.option("--aspect", "aspect_ratio", type=click.Choice(["9:16", "16:9", "1:1"])),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _client_args(api_url: str | None, api_key: str | None, settings: Settings) -> tuple[str, str]:
    from videoq.dev import dev_api

    found = dev_api(settings.home)
    url = api_url or (found[0] if found else None)
    key = api_key or (found[1] if found else None)
    if not url or not key:
        raise click.UsageError("set VIDEOQ_API_URL and VIDEOQ_API_KEY, or run `videoq dev` here")
    return url, key


@main.command()
@_brief_options
@click.option("--watch", is_flag=True, help="Show live progress until the job ends.")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@click.option("--api-url", envvar="VIDEOQ_API_URL")
@click.option("--api-key", envvar="VIDEOQ_API_KEY")
@click.pass_context
def submit(
    ctx: click.Context, /, watch: bool, as_json: bool, api_url: str | None, api_key: str | None,
    **brief: Any,
) -> None:  # fmt: skip
    """Submit a job; with --watch, follow it to the end (exit 1 if it fails)."""
    fields = {k: v for k, v in brief.items() if v is not None}
    job = _call(ctx, api_url, api_key, lambda client: _submit(client, fields, watch))
    if as_json:
        click.echo(job.model_dump_json(indent=2))
    else:
        click.echo(f"{job.id} {job.status}")
    if job.status == JobStatus.FAILED:
        ctx.exit(1)


async def _submit(client: Any, fields: dict[str, Any], watch: bool) -> Any:
    job = await client.submit(**fields)
    if not watch:
        return job
    await watch_progress(client, job.id)
    return await client.get(job.id)


async def watch_progress(client: Any, job_id: str) -> None:
    """Per-stage progress bars on stderr, fed by the job's WebSocket."""
    with Progress(
        TextColumn("{task.description:<12}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
        console=err, transient=False,
    ) as bars:  # fmt: skip
        tasks = {stage: bars.add_task(stage, total=25) for stage in STAGES}
        base = dict(zip(STAGES, (0, 25, 50, 75), strict=True))
        async for event in client.events(job_id):
            for stage in STAGES:
                done = min(25.0, max(0.0, event.progress - base[stage]))
                bars.update(tasks[stage], completed=done)
            if event.terminal:
                err.print(f"job {event.status}: {event.message or ''}")


@main.command()
@_brief_options
@click.option("--offline", is_flag=True, required=True, help="Use the offline providers.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("video.mp4"))
@click.pass_context
def render(ctx: click.Context, /, offline: bool, out: Path, **brief: Any) -> None:
    """Run the pipeline in this process, with no Redis or database, and write the MP4."""
    import shutil
    import tempfile

    from videoq.pipeline import MemoryCheckpoints, run_pipeline
    from videoq.providers import offline_providers
    from videoq.types import Brief

    settings = _settings(ctx).model_copy(update={"providers": "offline"})

    async def report(stage: str, progress: float, message: str | None = None) -> None:
        err.print(f"{progress:5.1f}% {stage} {message or ''}")

    async def go() -> None:
        with tempfile.TemporaryDirectory(prefix="videoq-render-") as work:
            result = await run_pipeline(
                Brief(**{k: v for k, v in brief.items() if v is not None}),
                settings=settings, workdir=Path(work), checkpoints=MemoryCheckpoints(),
                report=report, providers=offline_providers(settings),
            )  # fmt: skip
            shutil.move(result.video_path, out)

    asyncio.run(go())
    click.echo(str(out.resolve()))


def _api_options(fn: Any) -> Any:
    fn = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(fn)
    fn = click.option("--api-key", envvar="VIDEOQ_API_KEY")(fn)
    return click.option("--api-url", envvar="VIDEOQ_API_URL")(fn)


def _call(ctx: click.Context, api_url: str | None, api_key: str | None, fn: Any) -> Any:
    """Run ``fn(client)`` against the API. An API that cannot be reached, or stays
    unavailable (503) for ``api_timeout_s`` while the client retries, prints one line and
    exits 3; any other API error prints one line and exits 1."""
    import httpx

    from videoq.client import ApiError, Client

    url, key = _client_args(api_url, api_key, _settings(ctx))
    timeout = _settings(ctx).api_timeout_s

    async def go() -> Any:
        async with Client(url, key, timeout=timeout) as client:
            return await fn(client)

    try:
        return asyncio.run(go())
    except ApiError as exc:
        if exc.status == 503:
            err.print(
                f"[red]error[/]: the API at {url} is unavailable ({exc.status} {exc.code}: "
                f"{exc.message}); gave up retrying",
                soft_wrap=True,  # one line, however narrow the terminal
            )
            ctx.exit(3)
        err.print(f"[red]error[/]: {exc.message} ({exc.status} {exc.code})", soft_wrap=True)
        ctx.exit(1)
    except httpx.TransportError as exc:
        reason = str(exc) or type(exc).__name__
        err.print(f"[red]error[/]: cannot reach the API at {url}: {reason}", soft_wrap=True)
        ctx.exit(3)


def _job_table(jobs: list[Any]) -> Table:
    table = Table("id", "status", "stage", "progress", "priority", "attempts", "created")
    for job in jobs:
        created = job.created_at.strftime("%Y-%m-%d %H:%M:%S") if job.created_at else ""
        table.add_row(
            job.id, job.status, job.stage or "", f"{job.progress:.0f}%", job.priority,
            str(job.attempts), created,
        )  # fmt: skip
    return table


def _print_job(job: Any, as_json: bool) -> None:
    if as_json:
        click.echo(job.model_dump_json(indent=2))
        return
    out.print(_job_table([job]))
    if job.error:
        out.print(f"error: {job.error.code}: {job.error.message}")
    if job.result:
        out.print(f"video: {job.result.video_url} ({job.result.duration_s:.1f} s)")


@main.command()
@click.argument("job_id")
@_api_options
@click.pass_context
def status(
    ctx: click.Context, /, job_id: str, api_url: str | None, api_key: str | None, as_json: bool
) -> None:
    """Show one job."""
    _print_job(_call(ctx, api_url, api_key, lambda c: c.get(job_id)), as_json)


@main.command()
@click.argument("job_id")
@_api_options
@click.pass_context
def cancel(
    ctx: click.Context, /, job_id: str, api_url: str | None, api_key: str | None, as_json: bool
) -> None:
    """Cancel a queued, scheduled or running job."""
    _print_job(_call(ctx, api_url, api_key, lambda c: c.cancel(job_id)), as_json)


@main.command()
@click.argument("job_id")
@_api_options
@click.pass_context
def retry(
    ctx: click.Context, /, job_id: str, api_url: str | None, api_key: str | None, as_json: bool
) -> None:
    """Requeue a failed or cancelled job; it resumes from its checkpoints."""
    _print_job(_call(ctx, api_url, api_key, lambda c: c.retry(job_id)), as_json)


@main.command()
@click.option("--status", "status_", type=click.Choice(STATUSES), help="Only jobs in this state.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@_api_options
@click.pass_context
def jobs(
    ctx: click.Context, /, status_: str | None, limit: int, api_url: str | None,
    api_key: str | None, as_json: bool,
) -> None:  # fmt: skip
    """List jobs, newest first."""

    async def fetch(client: Any) -> list[Any]:
        found = []
        async for job in client.list(status=status_, page_size=min(limit, 100)):
            found.append(job)
            if len(found) >= limit:
                break
        return found

    found = _call(ctx, api_url, api_key, fetch)
    if as_json:
        click.echo(json.dumps([j.model_dump(mode="json") for j in found], indent=2))
    else:
        out.print(_job_table(found))


@main.command()
@_api_options
@click.pass_context
def info(ctx: click.Context, /, api_url: str | None, api_key: str | None, as_json: bool) -> None:
    """Queue and worker summary (needs an admin key)."""

    async def fetch(client: Any) -> dict[str, Any]:
        return {"queue": await client.queue_stats(), "workers": await client.workers()}

    data = _call(ctx, api_url, api_key, fetch)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    stats = data["queue"]
    counts = Table(*stats["counts"], title=f"jobs (queue length {stats['queue_length']})")
    counts.add_row(*(str(n) for n in stats["counts"].values()))
    out.print(counts)
    oldest = stats["oldest_queued_age_s"]
    out.print(f"oldest queued job: {oldest:.0f} s" if oldest is not None else "nothing queued")
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


@main.command()
@click.argument("user_id")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@_api_options
@click.pass_context
def feed(
    ctx: click.Context, /, user_id: str, limit: int, api_url: str | None, api_key: str | None,
    as_json: bool,
) -> None:  # fmt: skip
    """Show an end user's personalised feed, best first."""

    async def fetch(client: Any) -> list[Any]:
        found = []
        async for item in client.feed(user_id, page_size=min(limit, 100)):
            found.append(item)
            if len(found) >= limit:
                break
        return found

    found = _call(ctx, api_url, api_key, fetch)
    if as_json:
        click.echo(json.dumps([item.model_dump(mode="json") for item in found], indent=2))
        return
    table = Table("job", "type", "status", "similarity", "video", title=f"feed of {user_id}")
    for item in found:
        table.add_row(
            item.job_id, item.type, item.status, f"{item.similarity:.3f}", item.video_url or ""
        )
    out.print(table)
