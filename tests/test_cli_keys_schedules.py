"""`videoq keys` over the API with an admin key (the database only to bootstrap, or with
`--database`), and `videoq schedules`, against a real API served on loopback: what they print,
and each refusal as one line with its exit code."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from tests.commands import Case, closed_port, one_line
from tests.conftest import LiveApi, auth, new_key
from videoq.cli import main
from videoq.settings import Settings

OK, FAILED, USAGE, UNREACHABLE = 0, 1, 2, 3
MISSING = "00000000-0000-4000-8000-000000000000"


def _env(home: Path, **values: str | None) -> dict[str, str | None]:
    """Click's runner lays this over the process's environment: only what is given, every
    other VIDEOQ_ variable unset (as :func:`tests.commands.isolated` for a subprocess), no
    `videoq dev` session."""
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("VIDEOQ_")}
    return {**unset, "VIDEOQ_HOME": str(home), **values}


def _api_env(live: LiveApi, home: Path, key: str) -> dict[str, str | None]:
    """An API and a key, and no database: a command that succeeds went over HTTP."""
    return _env(home, VIDEOQ_API_URL=live.url, VIDEOQ_API_KEY=key)


def _db_env(settings: Settings, home: Path, **values: str) -> dict[str, str | None]:
    return _env(home, VIDEOQ_DATABASE_URL=settings.database_url or "", **values)


async def _cli(env: dict[str, str | None], *args: str) -> Any:
    """The command in a thread (it runs its own event loop, as from a shell)."""
    return await asyncio.to_thread(CliRunner().invoke, main, list(args), env=env)


def _one_line(result: Any) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return one_line(result.stderr)


def _closed_database() -> str:
    return f"postgresql://videoq@127.0.0.1:{closed_port()}/videoq"


async def _status(live: LiveApi, key: str) -> int:
    async with httpx.AsyncClient(base_url=live.url) as http:
        return (await http.get("/v1/jobs", headers=auth(key))).status_code


async def test_keys_over_the_api_create_list_and_revoke(
    live_api: LiveApi, sessions: Any, tmp_path: Path
) -> None:
    env = _api_env(live_api, tmp_path, await new_key(sessions, admin=True))
    tenant = f"acme-{uuid.uuid4().hex[:8]}"
    made = await _cli(
        env, "keys", "create", "--tenant", tenant, "--name", "ci deploys",
        "--expires-at", "2030-01-01T09:00:00Z", "--json",
    )  # fmt: skip
    assert made.exit_code == OK, made.output
    shown = json.loads(made.stdout)
    key = shown["key"]
    assert (
        shown["tenant"] == tenant and shown["scope"] == "tenant" and shown["name"] == "ci deploys"
    )
    assert shown["expires_at"].startswith("2030-01-01T09:00:00")
    assert await _status(live_api, key) == 200
    plain = await _cli(env, "keys", "create", "--tenant", tenant, "--admin")
    assert plain.exit_code == OK and plain.stdout.strip().startswith("vq_"), plain.output

    listed = await _cli(env, "keys", "list", "--tenant", tenant, "--json")
    assert listed.exit_code == OK, listed.output
    rows = {row["prefix"]: row for row in json.loads(listed.stdout)}
    assert set(rows) == {key[:10], plain.stdout.strip()[:10]}
    assert rows[key[:10]]["name"] == "ci deploys" and rows[key[:10]]["scopes"] == ["tenant"]
    assert rows[plain.stdout.strip()[:10]]["scopes"] == ["tenant", "admin"]
    table = await _cli(env, "keys", "list", "--tenant", tenant)
    assert table.exit_code == OK and "ci deploys" in table.stdout, table.output
    assert key not in listed.stdout + table.stdout

    revoked = await _cli(env, "keys", "revoke", key[:10])
    assert revoked.exit_code == OK, revoked.output
    assert f"revoked key {key[:10]}" in revoked.stderr and tenant in revoked.stderr
    assert await _status(live_api, key) == 401
    after = await _cli(env, "keys", "list", "--tenant", tenant, "--json")
    assert {r["prefix"]: r for r in json.loads(after.stdout)}[key[:10]]["revoked_at"]


async def test_the_first_admin_key_comes_from_the_database_then_works_over_the_api(
    live_api: LiveApi, settings: Settings, tmp_path: Path
) -> None:
    tenant = f"boot-{uuid.uuid4().hex[:8]}"
    # No API key anywhere (the URL alone is not enough): the database, to bootstrap.
    boot = await _cli(
        _db_env(settings, tmp_path, VIDEOQ_API_URL=live_api.url),
        "keys", "create", "--tenant", tenant, "--admin", "--name", "first",
    )  # fmt: skip
    assert boot.exit_code == OK, boot.output
    admin = boot.stdout.strip()
    over_api = await _cli(_api_env(live_api, tmp_path, admin), "keys", "list", "--json")
    assert over_api.exit_code == OK, over_api.output
    first = [r for r in json.loads(over_api.stdout) if r["prefix"] == admin[:10]]
    assert first[0]["name"] == "first" and first[0]["scope"] == "admin"
    assert first[0]["last_used_at"]  # the list itself was made with it

    # --database goes there even with an API key configured (here a bad one).
    forced_env = _db_env(
        settings, tmp_path, VIDEOQ_API_URL=live_api.url, VIDEOQ_API_KEY="vq_not_a_key_at_all"
    )
    forced = await _cli(forced_env, "keys", "create", "--tenant", tenant, "--database")
    assert forced.exit_code == OK, forced.output
    assert await _status(live_api, forced.stdout.strip()) == 200
    refused = await _cli(forced_env, "keys", "create", "--tenant", tenant)
    assert refused.exit_code == USAGE and "401" in _one_line(refused)


@dataclass(frozen=True)
class ViaCase(Case):
    #: "admin" or "tenant": an API key of that scope; "database": --database, no API;
    #: "nothing": neither an API key nor a database; "dead database": one on a closed port.
    via: str = "admin"


PAST = "2020-01-01T00:00:00Z"
KEY_CASES = [
    ViaCase("tenant key", ("keys", "list"), USAGE, ("403", "admin key"), via="tenant"),
    ViaCase(
        "bad expiry",
        ("keys", "create", "--tenant", "t", "--expires-at", "soon"),
        USAGE,
        ("--expires-at (expires_at): must be an ISO 8601 date-time", "422"),
    ),
    ViaCase(
        "bad expiry, database",
        ("keys", "create", "--tenant", "t", "--expires-at", "soon"),
        USAGE,
        ("--expires-at (expires_at): must be an ISO 8601 date-time",),
        via="database",
    ),
    ViaCase(
        "past expiry",
        ("keys", "create", "--tenant", "t", "--expires-at", PAST),
        USAGE,
        ("--expires-at (expires_at)",),
    ),
    ViaCase(
        "empty tenant", ("keys", "create", "--tenant", ""), USAGE, ("--tenant (tenant)", "422")
    ),
    ViaCase(
        "empty tenant, database",
        ("keys", "create", "--tenant", ""),
        USAGE,
        ("--tenant (tenant)",),
        via="database",
    ),
    ViaCase("unknown key", ("keys", "revoke", "vq_nothere"), FAILED, ("404", "vq_nothere")),
    ViaCase("unknown key id", ("keys", "revoke", MISSING), FAILED, ("404",)),
    ViaCase("not a key", ("keys", "revoke", "x" * 50), FAILED, ("404",)),
    ViaCase(
        "unknown key, database",
        ("keys", "revoke", "vq_nothere"),
        FAILED,
        ("vq_nothere",),
        via="database",
    ),
    ViaCase(
        "nothing configured",
        ("keys", "list"),
        USAGE,
        ("VIDEOQ_API_KEY", "VIDEOQ_DATABASE_URL", "first admin key"),
        via="nothing",
    ),
    ViaCase(
        "database unreachable",
        ("keys", "create", "--tenant", "t"),
        UNREACHABLE,
        ("cannot use the database", "VIDEOQ_DATABASE_URL"),
        via="dead database",
    ),
    ViaCase(
        "--database without one",
        ("keys", "list", "--database"),
        USAGE,
        ("--database", "VIDEOQ_DATABASE_URL"),
        via="nothing",
    ),
]
SCHEDULE_CASES = [
    ViaCase(
        "bad cron", ("schedules", "create", "61 * * * *", "Lamp"), USAGE, ("CRON (cron)", "422")
    ),
    ViaCase("six fields", ("schedules", "create", "* * * * * *", "Lamp"), USAGE, ("CRON (cron)",)),
    ViaCase(
        "bad zone",
        ("schedules", "create", "@daily", "Lamp", "--timezone", "Mars/Olympus"),
        USAGE,
        ("--timezone (timezone)",),
    ),
    ViaCase(
        "bad brief",
        ("schedules", "create", "@daily", "Lamp", "--duration", "3"),
        USAGE,
        ("--duration (duration_s)",),
    ),
    ViaCase(
        "bad option",
        ("schedules", "create", "@daily", "Lamp", "--option", "colour=red"),
        USAGE,
        ("--option (options.colour)",),
    ),
    ViaCase(
        "no run-at on a schedule",
        ("schedules", "create", "@daily", "Lamp", "--run-at", PAST),
        USAGE,
        ("--run-at",),
    ),
    ViaCase(
        "unknown schedule",
        ("schedules", "delete", MISSING),
        USAGE,
        ("404", "videoq schedules list"),
    ),
    ViaCase("not an id", ("schedules", "show", "nope"), USAGE, ("404", "videoq schedules list")),
    ViaCase("no API", ("schedules", "list"), USAGE, ("VIDEOQ_API_URL",), via="nothing"),
]


@pytest.mark.parametrize("case", KEY_CASES + SCHEDULE_CASES, ids=lambda c: c.name)
async def test_each_refusal_is_one_line_with_its_exit_code(
    case: ViaCase, live_api: LiveApi, settings: Settings, sessions: Any, tmp_path: Path
) -> None:
    if case.via == "database":
        env = _db_env(settings, tmp_path)
        args = (*case.args, "--database")
    elif case.via == "nothing":
        env, args = _env(tmp_path), case.args
    elif case.via == "dead database":
        env, args = _env(tmp_path, VIDEOQ_DATABASE_URL=_closed_database()), case.args
    else:
        key = await new_key(sessions, admin=case.via == "admin")
        env, args = _api_env(live_api, tmp_path, key), case.args
    result = await _cli(env, *args)
    case.check(result.exit_code, _one_line(result))


async def test_schedules_create_list_show_and_delete(
    live_api: LiveApi, sessions: Any, tmp_path: Path
) -> None:
    key = await new_key(sessions)
    env = _api_env(live_api, tmp_path, key)
    made = await _cli(
        env, "schedules", "create", "0 9 * * 1-5", "Aurora Desk Lamp", "--timezone",
        "Europe/Paris", "--name", "weekday mornings", "--style", "bold", "--cta", "Shop now",
        "--duration", "10", "--priority", "high", "--max-retries", "1", "--option",
        "providers=offline", "--json",
    )  # fmt: skip
    assert made.exit_code == OK, made.output
    schedule = json.loads(made.stdout)
    assert schedule["cron"] == "0 9 * * 1-5" and schedule["timezone"] == "Europe/Paris"
    assert schedule["name"] == "weekday mornings" and schedule["next_run_at"]
    job = schedule["job"]
    assert job["product_name"] == "Aurora Desk Lamp" and job["style"] == "bold"
    assert job["cta_text"] == "Shop now" and job["duration_s"] == 10
    assert job["priority"] == "high" and job["max_retries"] == 1
    assert job["options"] == {"providers": "offline"}
    plain = await _cli(env, "schedules", "create", "@hourly", "Lamp")
    assert plain.exit_code == OK, plain.output
    plain_id, _, next_run = plain.stdout.strip().partition(" next run ")
    assert uuid.UUID(plain_id) and next_run

    listed = await _cli(env, "schedules", "list", "--json")
    assert listed.exit_code == OK, listed.output
    assert [s["id"] for s in json.loads(listed.stdout)] == [plain_id, schedule["id"]]
    table = await _cli(env, "schedules", "list")
    assert "weekday mornings" in table.stdout and "Europe/Paris" in table.stdout, table.output
    shown = await _cli(env, "schedules", "show", schedule["id"])
    assert shown.exit_code == OK and "Aurora Desk Lamp" in shown.stdout, shown.output

    other = _api_env(live_api, tmp_path, await new_key(sessions))
    foreign = await _cli(other, "schedules", "delete", schedule["id"])
    assert foreign.exit_code == USAGE and "404" in _one_line(foreign)
    deleted = await _cli(env, "schedules", "delete", schedule["id"])
    assert deleted.exit_code == OK and schedule["id"] in deleted.stderr, deleted.output
    after = await _cli(env, "schedules", "list", "--json")
    assert [s["id"] for s in json.loads(after.stdout)] == [plain_id]
    again = await _cli(env, "schedules", "delete", schedule["id"])
    assert again.exit_code == USAGE and "404" in _one_line(again)
