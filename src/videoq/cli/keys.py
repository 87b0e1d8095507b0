"""``videoq keys create/list/revoke``: over HTTP with an admin key (``VIDEOQ_API_URL`` and
``VIDEOQ_API_KEY``, or the key of a ``videoq dev`` running in this directory), as every other
command talks to the API; straight to PostgreSQL only to bootstrap, when no API key is
configured but a database is (the very first admin key), or with ``--database``. Both ways
take the same flags, print the same things and fail with the same exit codes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import click
from rich.table import Table

from videoq.cli.base import (
    JOB_FAILED,
    UNREACHABLE,
    USAGE,
    Failure,
    call,
    connection_options,
    err,
    field_message,
    main,
    out,
    settings_of,
)
from videoq.settings import Settings

#: How a field of ``POST /v1/keys`` is given on the command line.
KEY_FLAGS = {
    "tenant": "--tenant",
    "scope": "--admin",
    "name": "--name",
    "expires_at": "--expires-at",
}
LISTS = "`videoq keys list` lists the keys"


def _database(ctx: click.Context, api_url: str | None, api_key: str | None, forced: bool) -> Any:
    """The settings to reach PostgreSQL with when the command goes there, or ``None`` when it
    goes over HTTP: an API URL and key are found as :func:`videoq.cli.base.client_args`
    finds them, and ``--database`` was not given."""
    from videoq.dev import dev_api
    from videoq.embedded import resolve

    settings = settings_of(ctx)
    session = dev_api(settings.home)
    if not forced and (api_url or session) and (api_key or session):
        return None
    settings = resolve(settings)
    if settings.database_url:
        return settings
    if forced:
        raise Failure(
            "--database: no database to write to; set VIDEOQ_DATABASE_URL, or run `videoq dev` "
            "in this directory",
            USAGE,
        )
    raise Failure(
        "no API and no database to manage keys with: set VIDEOQ_API_URL and VIDEOQ_API_KEY (an "
        "admin key), or VIDEOQ_DATABASE_URL to create the first admin key, or run `videoq dev`",
        USAGE,
    )


def _in_database(settings: Settings, fn: Callable[[Any], Awaitable[Any]]) -> Any:
    """``fn(session)`` in one session; the store's refusals exit 1, an unreachable database 3."""
    from videoq import store
    from videoq.errors import Conflict, NotFound

    async def go() -> Any:
        assert settings.database_url
        engine = store.create_engine(settings.database_url)
        try:
            async with store.sessionmaker(engine)() as session:
                return await fn(session)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(go())
    except (NotFound, Conflict) as exc:
        raise Failure(exc.message, JOB_FAILED) from None
    except store.DATABASE_ERRORS as exc:
        raise Failure(
            f"cannot use the database: {type(exc).__name__}: {_first_line(exc)}; check "
            "VIDEOQ_DATABASE_URL (and that `videoq migrate` has run)",
            UNREACHABLE,
        ) from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0]


def _from_row(row: Any) -> Any:
    """A stored key as the API shows it (:class:`videoq.client.ApiKey`)."""
    from videoq.client import ApiKey

    return ApiKey(
        id=str(row.id), prefix=row.prefix, tenant=row.tenant,
        scope="admin" if row.is_admin else "tenant", name=row.name, created_at=row.created_at,
        last_used_at=row.last_used_at, expires_at=row.expires_at, revoked_at=row.revoked_at,
    )  # fmt: skip


def _view(key: Any) -> dict[str, Any]:
    """What ``--json`` prints of a key: the API's fields (never the key, unless just made),
    and ``scopes``, every scope the key has."""
    view: dict[str, Any] = key.model_dump(mode="json", exclude_none=False)
    if view.get("key") is None:
        view.pop("key", None)
    view["scopes"] = ["tenant", "admin"] if key.scope == "admin" else ["tenant"]
    return view


def database_option(fn: Any) -> Any:
    return click.option(
        "--database",
        "direct",
        is_flag=True,
        help="Go to VIDEOQ_DATABASE_URL, not the API: to make the first admin key. The default "
        "when no API key is configured.",
    )(fn)


@main.group()
def keys() -> None:
    """Manage API keys (over the API with an admin key; see `videoq keys create --help`)."""


@keys.command("create")
@click.option("--tenant", required=True, help="Tenant the key belongs to.")
@click.option("--admin", is_flag=True, help="May also manage keys and operate workers and queues.")
@click.option("--name", help="A label for the key, shown in lists.")
@click.option("--expires-at", "expires_at", help="Stops working at this ISO 8601 time.")
@click.option("--json", "as_json", is_flag=True, help="Print the key and its fields as JSON.")
@database_option
@connection_options
@click.pass_context
def keys_create(
    ctx: click.Context, /, tenant: str, admin: bool, name: str | None, expires_at: str | None,
    as_json: bool, direct: bool, api_url: str | None, api_key: str | None,
) -> None:  # fmt: skip
    """Create an API key and print it on stdout (shown once; only its hash is stored). Over
    the API with an admin key; with no API key configured, or --database, straight in
    VIDEOQ_DATABASE_URL (how the first admin key is made)."""
    scope = "admin" if admin else "tenant"
    settings = _database(ctx, api_url, api_key, direct)
    if settings is None:
        made = call(
            ctx, api_url, api_key,
            lambda c: c.create_key(tenant, scope=scope, name=name, expires_at=expires_at),
            KEY_FLAGS, LISTS,
        )  # fmt: skip
    else:
        made = _create_in_database(settings, tenant, scope, name, expires_at)
    click.echo(json.dumps(_view(made), indent=2) if as_json else made.key)


def _create_in_database(
    settings: Settings, tenant: str, scope: str, name: str | None, expires_at: str | None
) -> Any:
    """The key, checked as ``POST /v1/keys`` checks it, issued in the database."""
    from pydantic import ValidationError

    from videoq.schemas import KeyCreate, field_errors
    from videoq.store.apikeys import issue

    fields = {"tenant": tenant, "scope": scope, "name": name, "expires_at": expires_at}
    try:
        body = KeyCreate.model_validate(fields)
    except ValidationError as exc:
        raise Failure(f"{field_message(field_errors(exc), KEY_FLAGS)}", USAGE) from None

    async def go(session: Any) -> Any:
        return await issue(
            session, body.tenant, admin=body.scope == "admin", name=body.name,
            expires_at=body.expires_at,
        )  # fmt: skip

    row, key = _in_database(settings, go)
    made = _from_row(row)
    made.key = key
    return made


@keys.command("list")
@click.option("--tenant", default=None, help="Only this tenant's keys.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@database_option
@connection_options
@click.pass_context
def keys_list(
    ctx: click.Context, /, tenant: str | None, as_json: bool, direct: bool, api_url: str | None,
    api_key: str | None,
) -> None:  # fmt: skip
    """List API keys, revoked ones too, newest first: id, prefix, tenant, scope, name and
    times (never the key)."""
    from videoq.store.apikeys import list_keys

    settings = _database(ctx, api_url, api_key, direct)
    if settings is None:
        found = call(
            ctx, api_url, api_key, lambda c: c.keys(tenant=tenant, include_revoked=True),
            KEY_FLAGS, LISTS,
        )  # fmt: skip
    else:
        found = [_from_row(r) for r in _in_database(settings, lambda s: list_keys(s, tenant))]
    if as_json:
        click.echo(json.dumps([_view(k) for k in found], indent=2))
        return

    def ts(value: Any) -> str:
        return value.isoformat(timespec="seconds") if value else ""

    table = Table(
        "id", "prefix", "tenant", "scope", "name", "created", "last used", "expires", "revoked"
    )
    for k in found:
        table.add_row(
            k.id, k.prefix, k.tenant, k.scope, k.name or "", ts(k.created_at),
            ts(k.last_used_at) or "never", ts(k.expires_at), ts(k.revoked_at),
        )  # fmt: skip
    out.print(table)


@keys.command("revoke")
@click.argument("prefix_or_id")
@database_option
@connection_options
@click.pass_context
def keys_revoke(
    ctx: click.Context, /, prefix_or_id: str, direct: bool, api_url: str | None,
    api_key: str | None,
) -> None:  # fmt: skip
    """Revoke a key by its id or 10-character prefix (`vq_…`); it stops working at once.
    Exit 1 when no key matches, it is already revoked, or it is the last working admin key."""
    from videoq.store.apikeys import revoke_key

    settings = _database(ctx, api_url, api_key, direct)
    if settings is None:
        gone = call(ctx, api_url, api_key, _revoke_over_http(prefix_or_id), KEY_FLAGS, LISTS)
    else:
        gone = _from_row(_in_database(settings, lambda s: revoke_key(s, prefix_or_id)))
    err.print(f"revoked key {gone.prefix}… ({gone.id}) of tenant {gone.tenant}")


def _revoke_over_http(prefix_or_id: str) -> Callable[[Any], Awaitable[Any]]:
    """The API's refusals of a revocation exit 1, as the database's do."""
    from videoq.client import ConflictError, NotFoundError

    async def go(client: Any) -> Any:
        try:
            return await client.revoke_key(prefix_or_id)
        except (NotFoundError, ConflictError) as exc:
            raise Failure(f"{exc.message} ({exc.status} {exc.code})", JOB_FAILED) from None

    return go
