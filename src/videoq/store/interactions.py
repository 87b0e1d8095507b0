"""End users' interactions with finished videos (``interactions``). Each is the video checked
(a succeeded job of the tenant), the row inserted (once per ``Idempotency-Key``) and the
user's counters raised (``feed_users``: every interaction, and those since the preference was
last computed), so the workers know whose feed is due.

The API records them through an :class:`Intake`: the interactions that arrive while one batch
is being written go together in the next, as one statement and one commit
(:class:`~videoq.groupcommit.GroupCommit`), so under load a request costs a fraction of a
round trip and of a WAL flush. The same statement looks the caller's API key up (as
:func:`~videoq.store.apikeys.authenticate` does: by its hash, never revoked, not expired), so a
request sent with a key needs no round trip of its own, and a revoked key is still refused at
once."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import time
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from asyncpg.exceptions import OperatorInterventionError

from videoq.errors import IdempotencyKeyReused, Unauthorized, VideoNotFinished
from videoq.groupcommit import GroupCommit
from videoq.store.apikeys import LAST_USED_RESOLUTION, check_expiry, hash_key
from videoq.store.engine import DirectPool
from videoq.types import JobStatus

_CANONICAL = json.JSONEncoder(separators=(",", ":"))


@dataclass(frozen=True)
class NewInteraction:
    """What ``POST /v1/interactions`` asks to record (validated by the API)."""

    user_id: str
    video_id: uuid.UUID
    type: str
    watched_s: float | None = None

    def fingerprint(self) -> str:
        """A digest of the request: what an ``Idempotency-Key`` is bound to."""
        canonical = _CANONICAL.encode([self.user_id, str(self.video_id), self.type, self.watched_s])
        return hashlib.sha256(canonical.encode()).hexdigest()


#: A batch (arrays, one element per interaction, ``n`` its place). Each interaction's tenant is
#: its API key's (by its hash, not revoked) or, with no key, the one given (a caller the API
#: authenticated otherwise). Those whose key has not expired and whose video is a succeeded
#: job of their tenant get an id and are inserted (a repeated idempotency key: not), and
#: their users' counters are raised, each user once, in a fixed order (two batches
#: never wait on each other's users in a cycle). A key not written down as used for a minute
#: is, unless its row is locked (another batch writing it down, a revocation, a console
#: sign-in: skipped, so no batch waits on a key's row). One row per interaction: its place,
#: its tenant and key's expiry (no tenant: no such key), its id (none: its video is no
#: succeeded job of the tenant) and whether it was inserted.
_RECORD = f"""
    WITH input AS (
        SELECT * FROM unnest(
            $1::text[], $2::text[], $3::text[], $4::uuid[], $5::text[], $6::float8[], $7::text[],
            $8::text[]
        ) WITH ORDINALITY AS t(key_hash, tenant, user_id, video_id, type, watched_s, key,
                               fingerprint, n)
    ), callers AS (
        SELECT input.*, api_keys.id AS key_id, api_keys.expires_at,
               coalesce(api_keys.tenant, input.tenant) AS caller
        FROM input LEFT JOIN api_keys
        ON api_keys.key_hash = input.key_hash AND api_keys.revoked_at IS NULL
        WHERE input.key_hash IS NULL OR api_keys.id IS NOT NULL
    ), found AS (
        SELECT callers.*, nextval(pg_get_serial_sequence('interactions', 'id')) AS id
        FROM callers JOIN jobs ON jobs.id = callers.video_id AND jobs.tenant = callers.caller
        WHERE jobs.status = '{JobStatus.SUCCEEDED}'
          AND (callers.expires_at IS NULL OR callers.expires_at > $9)
    ), added AS (
        INSERT INTO interactions
            (id, tenant, user_id, video_id, type, watched_s, idempotency_key, fingerprint,
             created_at)
        SELECT id, caller, user_id, video_id, type, watched_s, key, fingerprint, $9
        FROM found ORDER BY n
        ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING id, tenant, user_id
    ), counted AS (
        INSERT INTO feed_users (tenant, user_id, interactions, pending)
        SELECT tenant, user_id, count(*), count(*) FROM added
        GROUP BY tenant, user_id ORDER BY tenant, user_id
        ON CONFLICT (tenant, user_id) DO UPDATE
        SET interactions = feed_users.interactions + EXCLUDED.interactions,
            pending = feed_users.pending + EXCLUDED.pending
    ), used AS (
        UPDATE api_keys SET last_used_at = $9
        WHERE id IN (
            SELECT id FROM api_keys
            WHERE id IN (SELECT key_id FROM callers WHERE expires_at IS NULL OR expires_at > $9)
              AND (last_used_at IS NULL OR last_used_at < $10)
            FOR NO KEY UPDATE SKIP LOCKED
        )
    )
    SELECT callers.n, callers.caller, callers.expires_at, found.id,
           added.id IS NOT NULL AS created
    FROM callers LEFT JOIN found ON found.n = callers.n LEFT JOIN added ON added.id = found.id
"""
_FIRST = """
    SELECT id, user_id, video_id, type, watched_s, fingerprint, created_at FROM interactions
    WHERE tenant = $1 AND idempotency_key = $2
"""


@dataclass(frozen=True)
class Recorded:
    """An interaction as recorded, as ``POST /v1/interactions`` shows it."""

    id: int
    user_id: str
    video_id: uuid.UUID
    type: str
    watched_s: float | None
    created_at: datetime


@dataclass(frozen=True)
class _Item:
    key_hash: str | None
    tenant: str | None
    new: NewInteraction
    key: str | None
    fingerprint: str | None


@dataclass(frozen=True)
class _Written:
    tenant: str | None  # None: no such key
    expires_at: datetime | None
    id: int | None  # None: its video is no succeeded job of the tenant (or the key expired)
    created: bool
    at: datetime


#: Batches written at once by one API process (:class:`Intake`).
WRITERS = 2
#: A writer's connection idle this long is replaced before its next batch, as an asyncpg
#: pool's would be: a NAT or load balancer may have dropped it without a word.
IDLE_S = 240.0


class Intake:
    """The API process's writer of interactions, in batches (see the module), on connections
    of its own (:meth:`~videoq.store.engine.DirectPool.connect`).

    A batch's commit waits for its WAL flush, so one writer at a time would bound the intake
    by a flush per batch. :data:`WRITERS` write at once instead, each with its own batches,
    and PostgreSQL flushes their commits together. A user's interactions always go to the
    same writer (by user id), so two batches written at once never raise the same user's
    counters: they never wait on each other's row locks (which, sharing users, they mostly
    did), and a user's interactions are recorded in the order they came. Each writer holds
    its connection between batches: an asyncpg pool's acquire and release cost about as much
    CPU as the statement."""

    def __init__(self, database_url: str, *, timeout_s: float = 30.0) -> None:
        # The pool serves the lookups of repeated idempotency keys, and ends statements cut
        # short.
        self._pool = DirectPool(database_url, max_size=WRITERS, application_name="videoq intake")
        self._held: list[tuple[asyncpg.Connection, float] | None] = [None] * WRITERS
        self._writers: list[GroupCommit[_Item, _Written]] = [
            GroupCommit(functools.partial(self._write, n), timeout_s=timeout_s)
            for n in range(WRITERS)
        ]

    async def _connection(self, writer: int) -> asyncpg.Connection:
        """The writer's connection: the one it holds, unless the server closed it or it lay
        idle past :data:`IDLE_S`."""
        held = self._held[writer]
        if held is not None:
            conn, used_at = held
            if not conn.is_closed() and time.monotonic() - used_at < IDLE_S:
                return conn
            conn.terminate()
            self._held[writer] = None
        conn = await self._pool.connect()
        self._held[writer] = (conn, time.monotonic())
        return conn

    async def _write(self, writer: int, items: list[_Item]) -> list[_Written]:
        conn = await self._connection(writer)
        try:
            written = await self._record(conn, items)
        except BaseException as exc:
            if not _as_it_was(conn, exc):
                self._held[writer] = None
                await self._end(conn)
            raise
        self._held[writer] = (conn, time.monotonic())
        return written

    async def _end(self, conn: asyncpg.Connection) -> None:
        """Close a connection whose batch was cut short (by the timeout) or lost. Its server
        process is ended first, from another connection: a statement still waiting (on a
        lock, say) would otherwise go on after the client left and commit a batch that is
        being written again."""
        if not conn.is_closed():
            with contextlib.suppress(Exception):  # no server to ask: nothing runs there
                pool = await self._pool()
                await pool.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
        conn.terminate()

    @staticmethod
    async def _record(conn: asyncpg.Connection, items: list[_Item]) -> list[_Written]:
        now = datetime.now(UTC)
        rows = await conn.fetch(
            _RECORD,
            [i.key_hash for i in items], [i.tenant for i in items],
            [i.new.user_id for i in items], [i.new.video_id for i in items],
            [i.new.type for i in items], [i.new.watched_s for i in items],
            [i.key for i in items], [i.fingerprint for i in items],
            now, now - LAST_USED_RESOLUTION,
        )  # fmt: skip
        written = {
            row["n"]: _Written(row["caller"], row["expires_at"], row["id"], row["created"], now)
            for row in rows
        }
        unknown = _Written(None, None, None, False, now)
        return [written.get(n, unknown) for n in range(1, len(items) + 1)]

    async def record(
        self,
        new: NewInteraction,
        *,
        idempotency_key: str | None,
        api_key: str | None = None,
        tenant: str | None = None,
    ) -> tuple[Recorded, bool]:
        """Record the interaction (committed) for the tenant of ``api_key`` (looked up with the
        batch) or, without one, for ``tenant``; returns ``(interaction, created)``.
        :class:`Unauthorized` for a key that is unknown, revoked or expired;
        :class:`VideoNotFinished` when the video is not a succeeded job of the tenant. A
        repeated ``idempotency_key`` returns the interaction it first recorded and
        ``created=False`` (the user's counters unchanged) when it comes with the same request,
        and raises :class:`IdempotencyKeyReused` with another."""
        if (api_key is None) == (tenant is None):
            raise TypeError("record() takes an api_key or a tenant, not both")
        key_hash = hash_key(api_key) if api_key is not None else None
        fingerprint = new.fingerprint() if idempotency_key is not None else None
        writer = self._writers[zlib.crc32(new.user_id.encode()) % WRITERS]
        done = await writer(_Item(key_hash, tenant, new, idempotency_key, fingerprint))
        if done.tenant is None:
            raise Unauthorized("invalid API key")
        check_expiry(done.expires_at, done.at)
        tenant = done.tenant
        if done.id is None:
            raise VideoNotFinished(f"video_id {new.video_id} is no finished video of this tenant")
        if done.created:
            recorded = Recorded(
                done.id, new.user_id, new.video_id, new.type, new.watched_s, done.at
            )
            return recorded, True
        pool = await self._pool()
        first = await pool.fetchrow(_FIRST, tenant, idempotency_key)
        if first["fingerprint"] != fingerprint:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was first sent with another interaction; use a new key"
            )
        recorded = Recorded(
            first["id"], first["user_id"], first["video_id"], first["type"], first["watched_s"],
            first["created_at"],
        )  # fmt: skip
        return recorded, False

    async def aclose(self) -> None:
        """Wait for the interactions already taken, then close the connections."""
        try:
            for writer in self._writers:
                await writer.aclose()
            held, self._held = self._held, [None] * WRITERS
            for conn, _ in filter(None, held):
                try:
                    await conn.close(timeout=5)
                except Exception:  # a lost server, or a statement that will not end
                    conn.terminate()
        finally:
            await self._pool.aclose()


def _as_it_was(conn: asyncpg.Connection, exc: BaseException) -> bool:
    """Whether a connection whose statement raised ``exc`` can take the next batch: when
    PostgreSQL refused the statement itself (not the connection, nor an operator's
    intervention: a cancel, a shutdown) and the connection is still open."""
    return (
        isinstance(exc, asyncpg.PostgresError)
        and not isinstance(exc, asyncpg.PostgresConnectionError | OperatorInterventionError)
        and not conn.is_closed()
    )
