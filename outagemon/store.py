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


async def save_inventory(
    pool: asyncpg.Pool,
    nodes: list[tuple[str, str, str | None, str, list[str]]],
    subscribers: list[tuple[str, list[str], str, str, str | None, str]],
) -> None:
    """Replace the stored topology and subscribers with the loaded ones, in one transaction.

    Nodes that left the topology are kept with removed_at set, since incidents refer to them.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "create temporary table new_node (id text, kind text, ip inet, name text,"
            " parents text[]) on commit drop"
        )
        await conn.copy_records_to_table(
            "new_node", records=nodes, columns=["id", "kind", "ip", "name", "parents"]
        )
        await conn.execute(
            """
            insert into node (id, kind, ip, name, parents, loaded_at, removed_at)
            select id, kind, ip, name, parents, now(), null from new_node
            on conflict (id) do update set kind = excluded.kind, ip = excluded.ip,
                name = excluded.name, parents = excluded.parents,
                loaded_at = excluded.loaded_at, removed_at = null
            """
        )
        await conn.execute(
            "update node set removed_at = now() where removed_at is null"
            " and id not in (select id from new_node)"
        )
        await conn.execute("delete from subscriber")
        await conn.copy_records_to_table(
            "subscriber",
            records=subscribers,
            columns=["account", "phones", "address", "flat", "ip", "node_id"],
        )
