"""API keys: random tokens shown once, stored as SHA-256 hashes, scoped to a tenant, with an
optional expiry. Every request looks its key up here (no cache in any process), so a revoked
or expired key is refused at once by every API process."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from videoq.errors import Conflict, NotFound, Unauthorized
from videoq.store.tables import ApiKey

KEY_PREFIX = "vq_"
#: Writing last_used_at on every request would turn each read into a write; once a minute is enough.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant every query is scoped by, and whether it may operate workers."""

    tenant: str
    is_admin: bool = False


def hash_key(key: str) -> str:
    # The keys are 256-bit random tokens, so a fast hash is safe (no dictionary to attack).
    return hashlib.sha256(key.encode()).hexdigest()


async def issue(
    session: AsyncSession,
    tenant: str,
    *,
    admin: bool = False,
    name: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key for ``tenant``: its row and the key itself, which is not stored (only its
    hash is) and so cannot be shown again."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        id=uuid.uuid4(), tenant=tenant, prefix=key[:10], key_hash=hash_key(key), is_admin=admin,
        name=name, expires_at=expires_at,
    )  # fmt: skip
    session.add(row)
    await session.commit()
    await session.refresh(row)
    return row, key


async def create_key(session: AsyncSession, tenant: str, *, admin: bool = False) -> str:
    """Create a key for ``tenant`` and return it; only its hash is stored."""
    return (await issue(session, tenant, admin=admin))[1]


def check_expiry(expires_at: datetime | None, now: datetime) -> None:
    """:class:`Unauthorized` when a key that expires at ``expires_at`` has expired by ``now``."""
    if expires_at is not None and expires_at <= now:
        raise Unauthorized(f"this API key expired at {expires_at.isoformat()}")


async def authenticate(session: AsyncSession, key: str | None) -> Principal:
    """The principal for ``key``, or :class:`Unauthorized`."""
    if not key:
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
    row = (
        await session.execute(
            select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
        )
    ).scalar_one_or_none()
    if row is None:
        raise Unauthorized("invalid API key")
    now = datetime.now(UTC)
    check_expiry(row.expires_at, now)
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        await session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
        await session.commit()
    return Principal(tenant=row.tenant, is_admin=row.is_admin)


async def list_keys(
    session: AsyncSession, tenant: str | None = None, *, revoked: bool = True
) -> list[ApiKey]:
    """Every key (or one tenant's; without the revoked ones when ``revoked`` is false), newest
    first: ids, prefixes and times, never a key."""
    query = select(ApiKey).order_by(ApiKey.created_at.desc(), ApiKey.id.desc())
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    if not revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list((await session.execute(query)).scalars())


async def revoke_key(session: AsyncSession, prefix_or_id: str) -> ApiKey:
    """Revoke one key, named by its id or its prefix (the first 10 characters, ``vq_…``); it
    stops working at once. :class:`NotFound` when nothing matches, :class:`Conflict` when a
    prefix names several keys, the key is already revoked, or it is the last admin key that
    works (revoking it would leave nobody able to manage keys over HTTP: create another
    admin key first)."""
    try:
        condition = ApiKey.id == uuid.UUID(prefix_or_id)
    except ValueError:
        if len(prefix_or_id) < 10:
            raise NotFound(
                f"give a key id or its full 10-character prefix, not {prefix_or_id!r}"
            ) from None
        condition = ApiKey.prefix == prefix_or_id[:10]
    rows = list((await session.execute(select(ApiKey).where(condition))).scalars())
    if not rows:
        raise NotFound(f"no API key {prefix_or_id!r}")
    if len(rows) > 1:
        raise Conflict(f"{len(rows)} keys share the prefix {prefix_or_id!r}; revoke by id")
    row = rows[0]
    if row.revoked_at is not None:
        raise Conflict(f"key {row.prefix}… was already revoked at {row.revoked_at.isoformat()}")
    now, prefix = datetime.now(UTC), row.prefix  # (a rollback expires the row's attributes)
    if row.is_admin:
        # Locked, so that two admins revoking the last two admin keys at once cannot both pass.
        working = select(ApiKey.id).where(
            ApiKey.is_admin, ApiKey.revoked_at.is_(None),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
        )  # fmt: skip
        if set((await session.execute(working.with_for_update())).scalars()) == {row.id}:
            await session.rollback()
            raise Conflict(
                f"key {prefix}… is the last working admin key; create another admin key "
                "first (POST /v1/keys with scope admin), then revoke this one"
            )
    revoke = update(ApiKey).where(ApiKey.id == row.id, ApiKey.revoked_at.is_(None))
    if (await session.execute(revoke.values(revoked_at=now).returning(ApiKey.id))).first() is None:
        await session.rollback()
        raise Conflict(f"key {prefix}… was revoked meanwhile")
    await session.commit()
    await session.refresh(row)
    return row
