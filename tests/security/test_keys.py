"""API keys from the command line: `videoq keys list` shows ids, prefixes, scopes and times but
never a key; `videoq keys revoke` stops a key at once, by id or prefix."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
from click.testing import CliRunner

from tests.conftest import new_key
from tests.security.conftest import auth
from tests.test_cli import env_for
from videoq.cli import main
from videoq.settings import Settings


def keys(settings: Settings, *args: str) -> Any:
    return CliRunner().invoke(main, ["keys", *args], env=env_for(settings))


async def akeys(settings: Settings, *args: str) -> Any:
    """The command in a thread: it runs its own event loop, as from a shell."""
    return await asyncio.to_thread(keys, settings, *args)


async def listed(settings: Settings, tenant: str) -> list[dict[str, Any]]:
    result = await akeys(settings, "list", "--tenant", tenant, "--json")
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


async def test_revoked_keys_stop_working_at_once(
    asgi_client: httpx.AsyncClient, settings: Settings, sessions: Any
) -> None:
    tenant = f"acme-{uuid.uuid4().hex[:8]}"
    by_prefix, by_id, kept = [await new_key(sessions, tenant) for _ in range(3)]
    for key in (by_prefix, by_id, kept):
        assert (await asgi_client.get("/v1/jobs", headers=auth(key))).status_code == 200
    rows = {row["prefix"]: row for row in await listed(settings, tenant)}
    assert {by_prefix[:10], by_id[:10], kept[:10]} <= set(rows)
    assert all(row["last_used_at"] for p, row in rows.items() if p == kept[:10])
    assert rows[kept[:10]]["scopes"] == ["tenant"]
    revoke = await akeys(settings, "revoke", by_prefix[:10])
    assert revoke.exit_code == 0, revoke.output
    revoke = await akeys(settings, "revoke", rows[by_id[:10]]["id"])
    assert revoke.exit_code == 0, revoke.output
    for key, status in ((by_prefix, 401), (by_id, 401), (kept, 200)):
        assert (await asgi_client.get("/v1/jobs", headers=auth(key))).status_code == status
    after = {row["prefix"]: row for row in await listed(settings, tenant)}
    assert after[by_prefix[:10]]["revoked_at"] and after[by_id[:10]]["revoked_at"]
    assert after[kept[:10]]["revoked_at"] is None
    text = (await akeys(settings, "list", "--tenant", tenant)).output + json.dumps(after)
    assert all(key not in text for key in (by_prefix, by_id, kept))


def test_revoking_what_does_not_exist_or_again_fails(settings: Settings) -> None:
    created = CliRunner().invoke(main, ["keys", "create", "--tenant", "x"], env=env_for(settings))
    key = created.stdout.strip().splitlines()[-1]
    assert keys(settings, "revoke", key[:10]).exit_code == 0
    again = keys(settings, "revoke", key[:10])
    assert again.exit_code == 1 and "already revoked" in again.output
    for missing in ("vq_nothere", "00000000-0000-0000-0000-000000000000", "vq_"):
        result = keys(settings, "revoke", missing)
        assert result.exit_code == 1, result.output
