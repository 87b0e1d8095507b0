"""The connection to PostgreSQL: the async engine and its sessions, the URL forms SQLAlchemy and
asyncpg take, what a failing database raises, and the schema's migrations (Alembic).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from videoq.errors import NotMigrated


def async_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs (as pgserver and most hosts print them)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def driver_dsn(url: str) -> str:
    """The URL as asyncpg takes it (``postgresql://``), for code that talks to asyncpg directly."""
    return make_url(async_url(url)).set(drivername="postgresql").render_as_string(False)


#: What a database call raises when PostgreSQL fails or is out of reach, through SQLAlchemy or
#: through asyncpg directly (the worker's bookkeeping).
DATABASE_ERRORS = (SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError)

#: Server errors that say PostgreSQL is down, starting, stopping or full, not that a statement
#: was wrong: class 08 (connection exception), 53300 (too many connections), class 57P
#: (shut down by an operator or a crash, or not accepting connections yet).
_UNAVAILABLE_SERVER = (
    asyncpg.PostgresConnectionError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
)
_UNAVAILABLE = (
    OSError,
    TimeoutError,
    SQLAlchemyTimeout,
    InterfaceError,
    OperationalError,
    asyncpg.InterfaceError,
    *_UNAVAILABLE_SERVER,
)


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means PostgreSQL cannot be reached now (refused, lost mid-query,
    restarting, out of connections, a pool that timed out), so the same call is worth trying
    again later; a statement PostgreSQL refused is not. Looks through SQLAlchemy's wrapping
    and the chain of causes."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, _UNAVAILABLE):
            return True
        orig = current.orig if isinstance(current, DBAPIError) else None
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return False


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """The async engine; connections are pinged before use unless ``pool_pre_ping=False``.

    Connections are opened by asyncpg from the URL as libpq reads it, so every libpq option a
    managed PostgreSQL needs (``sslmode``, ``sslrootcert``, ``host=`` for a socket directory,
    ...) means the same here as in the worker's direct asyncpg pool (SQLAlchemy's own dialect
    would pass them to ``asyncpg.connect`` as keyword arguments it does not take)."""
    dsn = driver_dsn(url)

    async def connect() -> Any:
        return await asyncpg.connect(dsn)

    return create_async_engine(
        async_url(url), async_creator=connect, **{"pool_pre_ping": True, **kwargs}
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
