"""The connection to PostgreSQL: the async engine and its sessions, the direct asyncpg pools of
the hot paths, the URL forms SQLAlchemy and asyncpg take, what a failing database raises (and
which of it is an outage), and the schema's migrations (Alembic).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from asyncpg.exceptions import AdminShutdownError, CrashShutdownError, TooManyConnectionsError
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from videoq.errors import DatabaseUnavailable, NotMigrated


def async_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs (as pgserver and most hosts print them)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def driver_dsn(url: str) -> str:
    """The URL as asyncpg takes it (``postgresql://``), for code that talks to asyncpg directly."""
    return make_url(async_url(url)).set(drivername="postgresql").render_as_string(False)


class DatabaseUnreachable(ConnectionError):
    """Opening a connection failed at the socket (refused, no such socket, no route, timed
    out): the engine re-raises asyncpg's ``OSError`` as this, so that an ``OSError`` from the
    database can be told from any other (a file, the artifact store). Still an ``OSError``:
    whatever catches :data:`DATABASE_ERRORS` catches it."""


#: What a database call raises when PostgreSQL fails or is out of reach, through SQLAlchemy or
#: through asyncpg directly (the worker's bookkeeping).
DATABASE_ERRORS = (SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError)

#: Every class an outage surfaces as through the engine; :func:`outage` tells which errors of
#: these classes are one (an ``IntegrityError`` is a ``SQLAlchemyError`` too).
OUTAGE_SOURCES = (
    SQLAlchemyError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    DatabaseUnreachable,
)

#: The errors that mean the server cannot serve this connection, whatever the query: asyncpg's
#: SQLSTATE class 08 (connection exceptions, a connection lost mid-query included), 57P01-03
#: (shut down by an administrator or a crash; starting up or shutting down) and 53300 (too many
#: clients), and a connect that failed at the socket.
_SERVER_GONE = (
    asyncpg.PostgresConnectionError,
    AdminShutdownError,
    CrashShutdownError,
    asyncpg.CannotConnectNowError,
    TooManyConnectionsError,
    DatabaseUnreachable,
)

#: How long opening one connection may take (asyncpg's own default is a minute).
CONNECT_TIMEOUT_S = 10.0


def outage(exc: BaseException) -> DatabaseUnavailable | None:
    """The :class:`~videoq.errors.DatabaseUnavailable` that ``exc`` (or an error it was raised
    from) means, or None when it is not an outage but a failure of the request itself.

    The one place that decides: PostgreSQL refusing or dropping connections, starting up or
    shutting down, a connection SQLAlchemy invalidated as lost, or no pooled connection free
    within the pool's timeout. The message names no host, socket or query."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, sa_exc.TimeoutError):
            return DatabaseUnavailable("no database connection became free in time; try again")
        lost = isinstance(seen, sa_exc.DBAPIError) and seen.connection_invalidated
        if lost or isinstance(seen, _SERVER_GONE):
            return DatabaseUnavailable("the database is unavailable; try again shortly")
        seen = seen.__cause__
    return None


async def connect(dsn: str, **kwargs: Any) -> asyncpg.Connection:
    """``asyncpg.connect``, giving up after :data:`CONNECT_TIMEOUT_S` and failing at the socket
    as :class:`DatabaseUnreachable` (so :func:`outage` knows it): how the engine and the
    worker's own pool (:class:`~videoq.store.grouped.GroupedWriter`) open connections."""
    try:
        connection: asyncpg.Connection = await asyncpg.connect(
            dsn, **{"timeout": CONNECT_TIMEOUT_S, **kwargs}
        )
    except OSError as exc:  # TimeoutError included
        raise DatabaseUnreachable(f"cannot connect to PostgreSQL: {exc}") from exc
    return connection


class DirectPool:
    """asyncpg connections of their own, for a hot path that goes around SQLAlchemy (whose
    pool and execution layers cost several times the CPU: docs/decisions.md "Workers"):
    a pool opened on first use (at most ``max_size``), closed by :meth:`aclose` (and opened
    again if used again), and single connections with the same settings (:meth:`connect`),
    which are their caller's to close. Every statement sent on them must be its own
    transaction (autocommit), so a released connection is not reset (asyncpg's reset costs a
    round trip per release)."""

    def __init__(
        self,
        database_url: str,
        *,
        max_size: int,
        application_name: str,
        server_settings: dict[str, str] | None = None,
        init: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
    ) -> None:
        self.dsn = driver_dsn(database_url)
        self.max_size = max_size
        # Named in pg_stat_activity (and so in lock waits).
        self.server_settings = {"application_name": application_name[:63],
                                **(server_settings or {})}  # fmt: skip
        self._init = init
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def __call__(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self.dsn, min_size=1, max_size=self.max_size, connect=connect,
                        init=self._init, reset=_no_reset, server_settings=self.server_settings,
                    )  # fmt: skip
        return self._pool

    async def connect(self) -> asyncpg.Connection:
        """A connection with the same settings, outside the pool (its caller closes it): for
        one held between uses, where the pool's acquire and release would cost about as much
        CPU as the statement."""
        conn = await connect(self.dsn, server_settings=self.server_settings)
        if self._init is not None:
            await self._init(conn)
        return conn

    async def aclose(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Nothing to reset: see :class:`DirectPool`."""


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """The async engine; connections are pinged before use unless ``pool_pre_ping=False``.
    Opening a connection gives up after :data:`CONNECT_TIMEOUT_S` and fails at the socket as
    :class:`DatabaseUnreachable`.

    Connections are opened by asyncpg from the URL as libpq reads it, so every libpq option a
    managed PostgreSQL needs (``sslmode``, ``sslrootcert``, ``host=`` for a socket directory,
    ...) means the same here as in the worker's direct asyncpg pool (SQLAlchemy's own dialect
    would pass them to ``asyncpg.connect`` as keyword arguments it does not take)."""
    dsn = driver_dsn(url)

    async def creator() -> Any:
        return await connect(dsn)

    return create_async_engine(
        async_url(url), async_creator=creator, **{"pool_pre_ping": True, **kwargs}
    )


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return async_sessionmaker(engine, expire_on_commit=False)


MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", async_url(url).replace("%", "%%"))
    return cfg


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("postgresql://")).get_current_head()


def migrate(url: str, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` (blocking; runs its own event loop inside Alembic)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


async def ping(engine: AsyncEngine) -> None:
    """One round trip to PostgreSQL; raises when it is out of reach."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def check_migrated(engine: AsyncEngine) -> None:
    """Raise :class:`NotMigrated` unless the database is at the code's head revision."""
    head = head_revision()
    async with engine.connect() as conn:
        exists = (await conn.execute(text("SELECT to_regclass('alembic_version')"))).scalar()
        current = (
            (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
            if exists
            else None
        )
    if current != head:
        raise NotMigrated(
            f"the database is not migrated (at {current or 'nothing'}, code needs {head}): "
            "run `videoq migrate`"
        )
