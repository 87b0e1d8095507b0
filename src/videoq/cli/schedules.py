"""``videoq schedules create/list/show/delete``: recurring jobs, through the API (the
``/v1/schedules`` routes), scoped by the key's tenant as jobs are."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from videoq.cli.base import FLAGS, api_options, call, connection_options, err, main, out
from videoq.cli.jobs import brief_options, job_options, option_values

#: How a field of ``POST /v1/schedules`` is given on the command line.
SCHEDULE_FLAGS = {**FLAGS, "cron": "CRON", "timezone": "--timezone", "name": "--name"}
LISTS = "`videoq schedules list` lists your schedules"


def _ts(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if value else ""


def _table(found: list[Any]) -> Table:
    table = Table("id", "name", "cron", "timezone", "product", "next run", "last job", "error")
    for s in found:
        table.add_row(
            s.id, s.name or "", s.cron, s.timezone, str(s.job.get("product_name", "")),
            _ts(s.next_run_at), s.last_job_id or "", s.last_error or "",
        )  # fmt: skip
    return table


@main.group()
def schedules() -> None:
    """Recurring jobs: a brief submitted as a job at every tick of a cron expression."""


@schedules.command("create")
@click.argument("cron")
@brief_options
@click.option(
    "--timezone", default="UTC", show_default=True, help="IANA time zone CRON is read in."
)
@click.option("--name", help="A label for the schedule, shown in lists.")
@job_options
@api_options
@click.pass_context
def schedules_create(
    ctx: click.Context, /, cron: str, timezone: str, name: str | None, as_json: bool,
    api_url: str | None, api_key: str | None, option_pairs: tuple[str, ...], **brief: Any,
) -> None:  # fmt: skip
    """Submit PRODUCT_NAME's brief as a job at every tick of CRON (five fields, quoted, e.g.
    "0 9 * * 1-5", or @daily, @hourly…), read in --timezone. Prints the schedule's id and
    its next run."""
    fields = {k: v for k, v in brief.items() if v is not None}
    if option_pairs:
        fields["options"] = option_values(option_pairs)
    made = call(
        ctx, api_url, api_key,
        lambda c: c.create_schedule(cron, timezone=timezone, name=name, **fields),
        SCHEDULE_FLAGS, LISTS,
    )  # fmt: skip
    if as_json:
        click.echo(made.model_dump_json(indent=2))
    else:
        click.echo(f"{made.id} next run {made.next_run_at.isoformat()}")


@schedules.command("list")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@api_options
@click.pass_context
def schedules_list(
    ctx: click.Context, /, limit: int, api_url: str | None, api_key: str | None, as_json: bool
) -> None:
    """List your tenant's schedules, newest first."""

    async def fetch(client: Any) -> list[Any]:
        found = []
        async for schedule in client.schedules(page_size=min(limit, 100)):
            found.append(schedule)
            if len(found) >= limit:
                break
        return found

    found = call(ctx, api_url, api_key, fetch, SCHEDULE_FLAGS, LISTS)
    if as_json:
        click.echo(json.dumps([s.model_dump(mode="json") for s in found], indent=2))
    else:
        out.print(_table(found))


@schedules.command("show")
@click.argument("schedule_id")
@api_options
@click.pass_context
def schedules_show(
    ctx: click.Context, /, schedule_id: str, api_url: str | None, api_key: str | None,
    as_json: bool,
) -> None:  # fmt: skip
    """Show one schedule: its brief, next run, last job and last error."""
    found = call(ctx, api_url, api_key, lambda c: c.schedule(schedule_id), lists=LISTS)
    if as_json:
        click.echo(found.model_dump_json(indent=2))
        return
    out.print(_table([found]))
    out.print(f"job: {json.dumps(found.job)}", soft_wrap=True, markup=False, highlight=False)


@schedules.command("delete")
@click.argument("schedule_id")
@connection_options
@click.pass_context
def schedules_delete(
    ctx: click.Context, /, schedule_id: str, api_url: str | None, api_key: str | None
) -> None:
    """Delete a schedule: no more ticks; the jobs it made stay."""
    call(ctx, api_url, api_key, lambda c: c.delete_schedule(schedule_id), lists=LISTS)
    err.print(f"deleted schedule {schedule_id}")
