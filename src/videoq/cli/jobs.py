"""Commands on jobs, through the API: ``submit``, ``status``, ``cancel``, ``retry``, ``jobs``,
``download``, ``feed``; and ``render``, the pipeline in this process."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from videoq.cli.base import (
    FLAGS,
    INTERRUPTED,
    JOB_FAILED,
    USAGE,
    Failure,
    api_options,
    call,
    connection_options,
    err,
    field_message,
    main,
    out,
    say_error,
    settings_of,
)
from videoq.types import STAGES, JobStatus

STATUSES = [str(status) for status in JobStatus]


def brief_options(fn: Any) -> Any:
    """The brief: what ``submit`` and ``render`` both take."""
    options = [
        click.argument("product_name"),
        click.option("--style", type=click.Choice(["minimal", "bold", "cinematic", "playful"])),
        click.option("--cta", "cta_text", help="Call to action drawn over the last seconds."),
        click.option("--prompt", help="Extra direction for the script."),
        click.option("--duration", "duration_s", type=int, help="Seconds, 5–60 (default 15)."),
        click.option(
            "--aspect", "--aspect-ratio", "aspect_ratio", type=click.Choice(["9:16", "16:9", "1:1"])
        ),
        click.option("--voice", help="Voice id of the voice provider."),
        click.option(
            "--captions/--no-captions", default=None, help="Burn in captions (default: on)."
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def option_values(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``--option KEY=VALUE`` pairs; a VALUE that reads as JSON (a number, true) is that."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--option")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def job_options(fn: Any) -> Any:
    """How a job runs, beside its brief: what ``submit`` and ``schedules create`` both take."""
    options = [
        click.option(
            "--priority", type=click.Choice(["high", "normal", "low"]), help="Default: normal."
        ),
        click.option(
            "--max-retries", "max_retries", type=int, help="Retries after the first attempt."
        ),
        click.option("--webhook-url", "webhook_url", help="Signed POST here when the job ends."),
        click.option(
            "--option",
            "option_pairs",
            multiple=True,
            metavar="KEY=VALUE",
            help="A per-job setting (options in POST /v1/jobs), e.g. providers=offline; "
            "repeatable.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command()
@brief_options
@job_options
@click.option("--delay", "delay_s", type=float, help="Start no sooner than this many seconds.")
@click.option(
    "--run-at", "run_at", help="Start at this ISO 8601 time (YYYY-MM-DDTHH:MM:SSZ), within 30 days."
)
@click.option("--idempotency-key", help="A retry with the same key returns the same job.")
@click.option("--watch", is_flag=True, help="Show live progress until the job ends.")
@api_options
@click.pass_context
def submit(
    ctx: click.Context, /, watch: bool, as_json: bool, api_url: str | None, api_key: str | None,
    option_pairs: tuple[str, ...], idempotency_key: str | None, **brief: Any,
) -> None:  # fmt: skip
    """Submit a job; with --watch, follow it to the end (exit 1 if it fails). Ctrl-C stops
    watching, not the job."""
    fields = {k: v for k, v in brief.items() if v is not None}
    if option_pairs:
        fields["options"] = option_values(option_pairs)
    created: list[str] = []

    async def go(client: Any) -> Any:
        job = await client.submit(idempotency_key=idempotency_key, **fields)
        if not watch:
            return job
        created.append(job.id)
        err.print(f"job {job.id} {job.status}; following it (Ctrl-C stops watching, not the job)")
        await watch_progress(client, job.id)
        return await client.get(job.id)

    try:
        job = call(ctx, api_url, api_key, go, FLAGS)
    except KeyboardInterrupt:
        if created:
            say_error(
                f"stopped watching; job {created[0]} goes on: follow it with `videoq status "
                f"{created[0]}`, stop it with `videoq cancel {created[0]}`"
            )
        else:
            say_error("interrupted; the job may have been created: `videoq jobs` lists it")
        ctx.exit(INTERRUPTED)
    if as_json:
        click.echo(job.model_dump_json(indent=2))
    else:
        click.echo(f"{job.id} {job.status}")
    if job.status == JobStatus.FAILED:
        ctx.exit(JOB_FAILED)


async def watch_progress(client: Any, job_id: str) -> None:
    """Per-stage progress bars on stderr, fed by the job's WebSocket, with the previews above
    them as they come: the storyboard's scenes, each scene as its clip lands, the poster."""
    from videoq.client import describe_preview

    with Progress(
        TextColumn("{task.description:<12}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
        console=err, transient=False,
    ) as bars:  # fmt: skip
        tasks = {stage: bars.add_task(stage, total=25) for stage in STAGES}
        base = dict(zip(STAGES, (0, 25, 50, 75), strict=True))
        async for event in client.events(job_id):
            if (shown := describe_preview(event)) is not None:
                bars.console.print(shown, markup=False, highlight=False)
            for stage in STAGES:
                done = min(25.0, max(0.0, event.progress - base[stage]))
                bars.update(tasks[stage], completed=done)
            if event.terminal:
                err.print(f"job {event.status}: {event.message or ''}")


@main.command()
@brief_options
@click.option("--offline", is_flag=True, hidden=True, help="Accepted; always so.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("video.mp4"))
@click.pass_context
def render(ctx: click.Context, /, offline: bool, out: Path, **brief: Any) -> None:
    """Run the pipeline in this process with the offline providers, no Redis and no database,
    and write the MP4. The brief is checked as POST /v1/jobs checks it."""
    import shutil
    import tempfile

    from pydantic import ValidationError

    from videoq.errors import VideoqError
    from videoq.pipeline import MemoryCheckpoints, run_pipeline
    from videoq.providers import offline_providers
    from videoq.schemas import JobCreate, field_errors, job_context
    from videoq.types import Brief

    settings = settings_of(ctx).model_copy(update={"providers": "offline"})
    try:
        request = JobCreate.model_validate(
            {k: v for k, v in brief.items() if v is not None}, context=job_context(settings)
        )
    except ValidationError as exc:
        raise Failure(f"{field_message(field_errors(exc), FLAGS)}", USAGE) from None

    async def report(stage: str, progress: float, message: str | None = None) -> None:
        err.print(f"{progress:5.1f}% {stage} {message or ''}")

    async def go() -> None:
        with tempfile.TemporaryDirectory(prefix="videoq-render-") as work:
            result = await run_pipeline(
                Brief(**request.brief()), settings=settings, workdir=Path(work),
                checkpoints=MemoryCheckpoints(), report=report,
                providers=offline_providers(settings),
            )  # fmt: skip
            shutil.move(result.video_path, out)

    try:
        asyncio.run(go())
    except VideoqError as exc:  # e.g. FFmpeg failing
        raise Failure(f"render failed: {exc.message}", JOB_FAILED) from None
    except OSError as exc:
        raise Failure(f"cannot write {out}: {exc.strerror or exc}", JOB_FAILED) from None
    click.echo(str(out.resolve()))


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
@api_options
@click.pass_context
def status(
    ctx: click.Context, /, job_id: str, api_url: str | None, api_key: str | None, as_json: bool
) -> None:
    """Show one job."""
    _print_job(call(ctx, api_url, api_key, lambda c: c.get(job_id)), as_json)


@main.command()
@click.argument("job_id")
@api_options
@click.pass_context
def cancel(
    ctx: click.Context, /, job_id: str, api_url: str | None, api_key: str | None, as_json: bool
) -> None:
    """Cancel a queued, scheduled or running job."""
    _print_job(call(ctx, api_url, api_key, lambda c: c.cancel(job_id)), as_json)


@main.command()
@click.argument("job_id")
@api_options
@click.pass_context
def retry(
    ctx: click.Context, /, job_id: str, api_url: str | None, api_key: str | None, as_json: bool
) -> None:
    """Requeue a failed or cancelled job; it resumes from its checkpoints."""
    _print_job(call(ctx, api_url, api_key, lambda c: c.retry(job_id)), as_json)


@main.command()
@click.argument("job_id")
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
@connection_options
@click.pass_context
def download(
    ctx: click.Context, /, job_id: str, path: Path | None, api_url: str | None,
    api_key: str | None,
) -> None:  # fmt: skip
    """Save a finished job's MP4 to PATH (default: ./<job id>.mp4) and print where."""
    target = path or Path(f"{job_id}.mp4")
    if not target.parent.is_dir():
        raise Failure(f"no directory {target.parent} to save {target.name} in", USAGE)
    saved = call(ctx, api_url, api_key, lambda c: c.download(job_id, target))
    click.echo(str(Path(saved).resolve()))


@main.command()
@click.option("--status", "status_", type=click.Choice(STATUSES), help="Only jobs in this state.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@api_options
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

    found = call(ctx, api_url, api_key, fetch)
    if as_json:
        click.echo(json.dumps([j.model_dump(mode="json") for j in found], indent=2))
    else:
        out.print(_job_table(found))


@main.command()
@click.argument("user_id")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@api_options
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

    found = call(ctx, api_url, api_key, fetch)
    if as_json:
        click.echo(json.dumps([item.model_dump(mode="json") for item in found], indent=2))
        return
    table = Table("job", "type", "status", "similarity", "video", title=f"feed of {user_id}")
    for item in found:
        table.add_row(
            item.job_id, item.type, item.status, f"{item.similarity:.3f}", item.video_url or ""
        )
    out.print(table)
