"""PostgreSQL through asyncpg: the pool, and every SQL statement outagemon runs."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

from outagemon.errors import DatabaseError

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # A connection of our own, or one borrowed from the pool: both run the same SQL.
    Conn: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]


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
    conn: Conn,
    nodes: list[tuple[str, str, str | None, str, list[str]]],
    subscribers: list[tuple[str, list[str], str, str, str | None, str]],
) -> None:
    """Replace the stored topology and subscribers with the loaded ones (inside the caller's
    transaction). Nodes that left the topology are kept with removed_at set, since
    incidents refer to them."""
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


# -- incidents -------------------------------------------------------------------------


def ts(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=UTC)


async def open_incidents(conn: Conn) -> list[asyncpg.Record]:
    """Open incidents with their nodes (root first), for the correlator after a restart."""
    return list(
        await conn.fetch(
            """
            select i.id, i.kind, i.root_node, i.inferred, i.opened_at, i.eta, i.calls,
                   coalesce(array_agg(n.node_id order by n.node_id = i.root_node desc, n.node_id)
                            filter (where n.node_id is not null), '{}') as nodes
            from incident i left join incident_node n on n.incident_id = i.id
            where i.state = 'open'
            group by i.id
            order by i.id
            """
        )
    )


async def resolved_since(conn: Conn, since: datetime | None) -> list[asyncpg.Record]:
    """Incidents resolved after `since`, with their nodes (root first), oldest first: their
    callers still hear "restored" after a restart."""
    return list(
        await conn.fetch(
            """
            select i.id, i.kind, i.root_node, i.inferred, i.opened_at, i.resolved_at,
                   coalesce(array_agg(n.node_id order by n.node_id = i.root_node desc, n.node_id)
                            filter (where n.node_id is not null), '{}') as nodes
            from incident i left join incident_node n on n.incident_id = i.id
            where i.state = 'resolved' and i.resolved_at > $1
            group by i.id
            order by i.resolved_at, i.id
            """,
            since,
        )
    )


async def next_incident_id(conn: Conn) -> int:
    value = await conn.fetchval("select coalesce(max(id), 0) + 1 from incident")
    return int(value)


# An incident with the nodes it cuts off, root first.
_INCIDENT = """
    select i.*, coalesce((select array_agg(node_id order by node_id = i.root_node desc, node_id)
                          from incident_node where incident_id = i.id), '{}') as nodes
    from incident i
"""
_STATES = {"open": "state = 'open'", "resolved": "state in ('resolved', 'merged')", "all": "true"}


async def list_incidents(pool: asyncpg.Pool, state: str, limit: int = 200) -> list[asyncpg.Record]:
    where = _STATES[state]
    query = f"{_INCIDENT} where {where} order by i.opened_at desc, i.id desc limit $1"
    return list(await pool.fetch(query, limit))


async def get_incident(pool: asyncpg.Pool, incident_id: int) -> asyncpg.Record | None:
    rows = await pool.fetch(f"{_INCIDENT} where i.id = $1", incident_id)
    return rows[0] if rows else None


async def timeline(pool: asyncpg.Pool, incident_id: int) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            "select at, kind, detail from incident_event where incident_id = $1 order by at, id",
            incident_id,
        )
    )
