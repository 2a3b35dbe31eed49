"""PostgreSQL through asyncpg: the pool, and every SQL statement outagemon runs."""

from __future__ import annotations

import re
from collections.abc import Callable
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


async def connect(dsn: str, min_size: int = 2, max_size: int = 10,
                  statement_timeout: float | None = None) -> asyncpg.Pool:  # fmt: skip
    """A pool, or a DatabaseError that says which server could not be reached and why.

    With `statement_timeout`, a statement that takes longer raises TimeoutError in the client
    (asyncpg cancels it), and the server gives up on it at twice that: a hung database
    (a lock, a full disk) cannot hold the writer or a request for ever."""
    settings = {}
    if statement_timeout is not None:
        settings["statement_timeout"] = str(int(statement_timeout * 2000))
    try:
        pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, timeout=10,
                                         command_timeout=statement_timeout,
                                         server_settings=settings)  # fmt: skip
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
        raise DatabaseError(f"cannot connect to PostgreSQL at {redact(dsn)}: {e}") from None
    assert pool is not None
    return pool


async def connection(dsn: str, name: str | None = None) -> asyncpg.Connection:
    """One dedicated connection (migrations hold a session lock on it; a replica listens
    on it), named `name` in pg_stat_activity when given."""
    settings = {"application_name": name} if name else None
    try:
        return await asyncpg.connect(dsn, timeout=10, server_settings=settings)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
        raise DatabaseError(f"cannot connect to PostgreSQL at {redact(dsn)}: {e}") from None


async def save_inventory(
    conn: Conn,
    nodes: list[tuple[str, str, str | None, str, list[str]]],
    subscribers: list[tuple[str, list[str], str, str, str | None, str]],
) -> None:
    """Replace the stored topology and subscribers with the loaded ones (inside the caller's
    transaction)."""
    await save_nodes(conn, nodes)
    await save_subscribers(conn, subscribers)


async def save_nodes(conn: Conn, nodes: list[tuple[str, str, str | None, str, list[str]]]) -> None:
    """Replace the stored topology with the loaded one (inside the caller's transaction).
    Nodes that left the topology are kept with removed_at set, since incidents refer to
    them."""
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


async def save_subscribers(
    conn: Conn, subscribers: list[tuple[str, list[str], str, str, str | None, str]]
) -> None:
    """Replace the stored subscribers (inside the caller's transaction; the nodes first)."""
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


async def insert_incident(conn: Conn, incident_id: int, kind: str, root: str, inferred: bool,
                          opened_at: datetime | None, subscribers: int) -> None:  # fmt: skip
    """A new incident (once: a replayed write changes nothing)."""
    await conn.execute(
        "insert into incident (id, state, kind, root_node, inferred, opened_at,"
        " subscribers) values ($1, 'open', $2, $3, $4, $5, $6)"
        " on conflict (id) do nothing",
        incident_id, kind, root, inferred, opened_at, subscribers,
    )  # fmt: skip


async def set_incident_nodes(conn: Conn, incident_id: int, nodes: list[str]) -> None:
    """The nodes an incident cuts off, replaced."""
    await conn.execute("delete from incident_node where incident_id = $1", incident_id)
    await conn.copy_records_to_table(
        "incident_node", records=[(incident_id, n) for n in dict.fromkeys(nodes)],
        columns=["incident_id", "node_id"],
    )  # fmt: skip


async def set_incident_subscribers(conn: Conn, incident_id: int, subscribers: int) -> None:
    await conn.execute("update incident set subscribers = $2 where id = $1",
                       incident_id, subscribers)  # fmt: skip


async def reopen_incident(conn: Conn, incident_id: int | None) -> None:
    await conn.execute(
        "update incident set state = 'open', resolved_at = null where id = $1", incident_id
    )


async def move_incident_root(conn: Conn, incident_id: int | None, root: str,
                             inferred: bool) -> None:  # fmt: skip
    await conn.execute(
        "update incident set root_node = $2, inferred = $3 where id = $1",
        incident_id, root, inferred,
    )  # fmt: skip


async def merge_incident(conn: Conn, incident_id: int | None, into: object,
                         at: datetime | None) -> None:  # fmt: skip
    await conn.execute(
        "update incident set state = 'merged', merged_into = $2, resolved_at = $3"
        " where id = $1", incident_id, into, at,
    )  # fmt: skip


async def resolve_incident(conn: Conn, incident_id: int | None, at: datetime | None) -> None:
    await conn.execute(
        "update incident set state = 'resolved', resolved_at = $2 where id = $1",
        incident_id, at,
    )  # fmt: skip


async def set_incident_kind(conn: Conn, incident_id: int | None, kind: str) -> None:
    await conn.execute("update incident set kind = $2 where id = $1", incident_id, kind)


async def set_incident_eta(conn: Conn, incident_id: int, eta: datetime | None) -> None:
    await conn.execute("update incident set eta = $2 where id = $1", incident_id, eta)


async def add_incident_event(conn: Conn, incident_id: int | None, at: datetime | None,
                             kind: str, detail: str) -> None:  # fmt: skip
    """A line of an incident's timeline (`detail`: a JSON object, as text)."""
    await conn.execute(
        "insert into incident_event (incident_id, at, kind, detail)"
        " values ($1, $2, $3, $4::jsonb)",
        incident_id, at, kind, detail,
    )  # fmt: skip


async def add_calls(conn: Conn, counts: list[tuple[int, int]]) -> None:
    """Check answers that named each incident: (incident id, how many more)."""
    await conn.executemany("update incident set calls = calls + $2 where id = $1", counts)


# -- planned works ---------------------------------------------------------------------


async def add_maintenance(conn: Conn, window_id: int, node: str, starts_at: datetime | None,
                          ends_at: datetime | None, reason: str, who: str) -> None:  # fmt: skip
    await conn.execute(
        "insert into maintenance (id, node_id, starts_at, ends_at, reason, created_by)"
        " overriding system value values ($1, $2, $3, $4, $5, $6)"
        " on conflict (id) do nothing",  # a replayed write changes nothing
        window_id, node, starts_at, ends_at, reason, who,
    )  # fmt: skip


async def recent_maintenance(conn: Conn) -> list[asyncpg.Record]:
    """Planned works that ended less than a day ago, or have not ended."""
    return list(
        await conn.fetch(
            "select id, node_id, starts_at, ends_at, reason from maintenance"
            " where ends_at > now() - interval '1 day'"
        )
    )


async def max_maintenance_id(conn: Conn) -> int:
    return int(await conn.fetchval("select coalesce(max(id), 0) from maintenance"))


# -- node states -----------------------------------------------------------------------


async def save_node_states(conn: Conn, rows: list[tuple[str, str, datetime | None, float]]) -> None:
    """Nodes' latest states: (node, state, changed at, short-term loss)."""
    await conn.executemany(
        "insert into node_state (node_id, state, changed_at, loss, seq)"
        " values ($1, $2, $3, $4, nextval('node_state_seq'))"
        " on conflict (node_id) do update set state = excluded.state,"
        " changed_at = excluded.changed_at, loss = excluded.loss, seq = excluded.seq",
        rows,
    )


async def save_histories(conn: Conn, rows: list[tuple[str, float, float]]) -> None:
    """Every node's loss history (node, n, lost), in one COPY."""
    await conn.execute("create temporary table h (node_id text, n real, lost real)"
                       " on commit drop")  # fmt: skip
    await conn.copy_records_to_table("h", records=rows, columns=["node_id", "n", "lost"])
    await conn.execute(
        "insert into node_state (node_id, state, changed_at, history_n, history_lost)"
        " select node_id, 'unknown', now(), n, lost from h"
        " on conflict (node_id) do update set history_n = excluded.history_n,"
        " history_lost = excluded.history_lost"
    )


async def node_histories(conn: Conn) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "select node_id, history_n, history_lost from node_state where history_n > 0"
        )
    )


# -- the read replica (outagemon/cluster/replica.py) -----------------------------------

REPLICA_CHANNEL = "outagemon_replica"
REPLICA_NAME = "outagemon replica"  # its connections' application_name


async def notify_replica(conn: Conn, kind: str, ids: list[int]) -> None:
    """Tell replicas, when the caller's transaction commits, what it changed: `kind`
    (incident, calls, states, maintenance, monitor) and the incidents' ids, never their values,
    with the database's time (`t`, epoch seconds) for the replica's lag."""
    await conn.execute(
        "select pg_notify($1, json_build_object('k', $2::text, 'i', $3::bigint[],"
        " 't', extract(epoch from clock_timestamp()))::text)",
        REPLICA_CHANNEL, kind, ids[:500],  # a payload stays far below NOTIFY's 8000 bytes
    )  # fmt: skip


async def set_incident_recovering(conn: Conn, incident_id: int | None,
                                  at: datetime | None) -> None:  # fmt: skip
    await conn.execute("update incident set recovering_since = $2 where id = $1",
                       incident_id, at)  # fmt: skip


async def set_blind(conn: Conn, blind: bool) -> None:
    await conn.execute("update monitor_view set blind = $1 where id = 1", blind)


async def replica_incidents(conn: Conn, ids: list[int] | None,
                            resolved_after: datetime | None) -> list[asyncpg.Record]:  # fmt: skip
    """Open incidents and those resolved after `resolved_after`, with their nodes (root
    first); only those of `ids` when given (whatever their state, so a replica learns
    that one was resolved or merged)."""
    if ids is not None:
        return list(await conn.fetch(f"{_REPLICA} where i.id = any($1::bigint[]) {_BY_ID}", ids))
    where = "i.state = 'open' or (i.state = 'resolved' and i.resolved_at > $1)"
    return list(await conn.fetch(f"{_REPLICA} where {where} {_BY_ID}", resolved_after))


_REPLICA = """
    select i.id, i.state, i.kind, i.root_node, i.inferred, i.opened_at, i.resolved_at,
           i.eta, i.calls, i.recovering_since, i.subscribers,
           coalesce(array_agg(n.node_id order by n.node_id = i.root_node desc, n.node_id)
                    filter (where n.node_id is not null), '{}') as nodes
    from incident i left join incident_node n on n.incident_id = i.id
"""
_BY_ID = "group by i.id order by i.id"


async def replica_calls(conn: Conn, ids: list[int]) -> list[asyncpg.Record]:
    """The call counts of these incidents (a replica told only that they changed)."""
    return list(await conn.fetch("select id, calls from incident where id = any($1::bigint[])",
                                 ids))  # fmt: skip


async def replica_states(conn: Conn, after: int, limit: int = 5000) -> list[asyncpg.Record]:
    """Up to `limit` node states written after sequence number `after` (0: from the
    first), in the order written: a replica reads a city's in pieces."""
    return list(
        await conn.fetch(
            "select node_id, state, changed_at, loss, seq from node_state where seq > $1"
            " order by seq limit $2",
            after, limit,
        )
    )  # fmt: skip


async def replica_backends(conn: Conn) -> list[int]:
    """Server pids of the replicas' connections to this database (tests end them)."""
    rows = await conn.fetch(
        "select pid from pg_stat_activity where application_name = $1"
        " and datname = current_database()",
        REPLICA_NAME,
    )
    return [int(r["pid"]) for r in rows]


async def terminate_backends(conn: Conn, pids: list[int]) -> None:
    await conn.execute("select pg_terminate_backend(p) from unnest($1::int[]) p", pids)


async def replica_blind(conn: Conn) -> bool:
    return bool(await conn.fetchval("select blind from monitor_view where id = 1"))


async def listen_replica(conn: asyncpg.Connection, notified: Callable[[str], None],
                         lost: Callable[[], None]) -> None:  # fmt: skip
    """LISTEN on the replica channel: `notified(payload)` for each notification, `lost()`
    when the connection closes (a terminated backend, a restarted server)."""
    conn.add_termination_listener(lambda _conn: lost())
    await conn.add_listener(REPLICA_CHANNEL, lambda _c, _pid, _ch, payload: notified(payload))
