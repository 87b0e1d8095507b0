"""The console's sign-in sessions (``POST /v1/session``): an opaque random token, sent back only
in an HttpOnly cookie and stored here as its SHA-256 hash, with the API key it was opened with
and a CSRF token. A session is worth exactly its key: the same tenant and scope, and it ends
when the key is revoked, when it expires, or at sign-out.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from videoq.errors import Unauthorized
from videoq.store.apikeys import Principal, authenticate, hash_key
from videoq.store.tables import ApiKey, ConsoleSession

#: How long a sign-in lasts; the console asks for the key again after that.
SESSION_TTL = timedelta(hours=12)


@dataclass(frozen=True)
class SignedIn:
    """A live session: who it speaks for, its CSRF token, and when it ends. ``token`` is set
    only when it was just opened (the cookie's value; never stored)."""

    principal: Principal
    csrf_token: str
    expires_at: datetime
    token: str | None = None


async def open_session(session: AsyncSession, key: str | None) -> SignedIn:
    """A new session for ``key`` (:class:`~videoq.errors.Unauthorized` when it is not a valid
    key). Expired sessions are deleted on the way."""
    who = await authenticate(session, key)
    assert key is not None  # authenticate refuses a missing key
    key_id = (
        await session.execute(select(ApiKey.id).where(ApiKey.key_hash == hash_key(key)))
    ).scalar_one()
    now = datetime.now(UTC)
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    await session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at < now))
    row = ConsoleSession(
        token_hash=hash_key(token), key_id=key_id, csrf_token=csrf, expires_at=now + SESSION_TTL
    )
    session.add(row)
    await session.commit()
    return SignedIn(who, csrf, row.expires_at, token)


async def find_session(session: AsyncSession, token: str) -> SignedIn:
    """The live session of ``token``; :class:`~videoq.errors.Unauthorized` when it is unknown,
    expired, signed out, or its key was revoked."""
    query = (
        select(ApiKey.tenant, ApiKey.is_admin, ConsoleSession.csrf_token, ConsoleSession.expires_at)
        .join(ApiKey, ApiKey.id == ConsoleSession.key_id)
        .where(
            ConsoleSession.token_hash == hash_key(token),
            ConsoleSession.expires_at > datetime.now(UTC),
            ApiKey.revoked_at.is_(None),
        )
    )
    row = (await session.execute(query)).one_or_none()
    if row is None:
        raise Unauthorized("the session expired or was signed out: sign in again")
    return SignedIn(Principal(row.tenant, row.is_admin), row.csrf_token, row.expires_at)


async def close_session(session: AsyncSession, token: str) -> None:
    """Sign out: the session stops working at once."""
    await session.execute(
        delete(ConsoleSession).where(ConsoleSession.token_hash == hash_key(token))
    )
    await session.commit()
