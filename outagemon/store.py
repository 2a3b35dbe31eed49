"""PostgreSQL through asyncpg: the pool, and every SQL statement outagemon runs."""

from __future__ import annotations

import re

import asyncpg

from outagemon.errors import DatabaseError


def redact(dsn: str) -> str:
    """The DSN with any password replaced, fit for a log line or an error message."""
    dsn = re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password=)[^&\s]*", r"\1***", dsn)


async def connect(dsn: str, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    """A pool, or a DatabaseError that says which server could not be reached and why."""
    try:
        pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, timeout=10)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
        raise DatabaseError(f"cannot connect to PostgreSQL at {redact(dsn)}: {e}") from None
    assert pool is not None
    return pool


async def connection(dsn: str) -> asyncpg.Connection:
    """One dedicated connection (migrations hold a session lock on it)."""
    try:
        return await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
        raise DatabaseError(f"cannot connect to PostgreSQL at {redact(dsn)}: {e}") from None
