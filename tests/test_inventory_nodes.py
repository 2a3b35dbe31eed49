"""The stored topology follows the loaded one: a node gone from it is kept (incidents refer
to it) with the time it was removed, and one back is current again (real PostgreSQL)."""

from __future__ import annotations

import asyncpg

from outagemon.db import migrate, store


def nodes(*ids: str) -> list[tuple[str, str, str | None, str, list[str]]]:
    return [(i, "access", None, i, []) for i in ids]


async def removed(conn: asyncpg.Connection) -> dict[str, bool]:
    rows = await conn.fetch("select id, removed_at is not null as gone from node")
    return {r["id"]: r["gone"] for r in rows}


async def test_a_node_gone_from_the_topology_is_marked_removed_and_back_when_it_returns(
    fresh_db: str,
) -> None:
    await migrate.migrate(fresh_db)
    conn = await asyncpg.connect(fresh_db)
    try:
        for loaded, expected in (
            (nodes("a", "b", "c"), {"a": False, "b": False, "c": False}),
            (nodes("a", "c"), {"a": False, "b": True, "c": False}),
            (nodes("b", "c", "d"), {"a": True, "b": False, "c": False, "d": False}),
        ):
            async with conn.transaction():
                await store.save_nodes(conn, loaded)
            assert await removed(conn) == expected
    finally:
        await conn.close()
