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


async def connect(dsn: str, min_size: int = 2, max_size: int = 10,
                  statement_timeout: float | None = None,
                  idle_in_transaction: float | None = None) -> asyncpg.Pool:  # fmt: skip
    """A pool, or a DatabaseError that says which server could not be reached and why.

    With `statement_timeout`, a statement that takes longer raises TimeoutError in the client
    (asyncpg cancels it), and the server gives up on it at twice that: a hung database
    (a lock, a full disk) cannot hold the writer or a request for ever. With
    `idle_in_transaction`, the server ends a session that sits that long inside a
    transaction (a cluster's leader paused in the middle of a fenced write holds the lease
    row: its successor waits at most that long)."""
    settings = {}
    if statement_timeout is not None:
        settings["statement_timeout"] = str(int(statement_timeout * 2000))
    if idle_in_transaction is not None:
        settings["idle_in_transaction_session_timeout"] = str(int(idle_in_transaction * 1000))
    try:
        pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, timeout=10,
                                         command_timeout=statement_timeout,
                                         server_settings=settings)  # fmt: skip
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
            select i.id, i.kind, i.root_node, i.inferred, i.opened_at, i.eta, i.calls, i.raised_by,
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
                          opened_at: datetime | None, subscribers: int,
                          raised_by: str = "probes") -> None:  # fmt: skip
    """A new incident (once: a replayed write changes nothing)."""
    await conn.execute(
        "insert into incident (id, state, kind, root_node, inferred, opened_at,"
        " subscribers, raised_by) values ($1, 'open', $2, $3, $4, $5, $6, $7)"
        " on conflict (id) do nothing",
        incident_id, kind, root, inferred, opened_at, subscribers, raised_by,
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
        "insert into node_state (node_id, state, changed_at, loss) values ($1, $2, $3, $4)"
        " on conflict (node_id) do update set state = excluded.state,"
        " changed_at = excluded.changed_at, loss = excluded.loss",
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


# -- notifications (the outbox) --------------------------------------------------------

# The incident as a JSON object, as a notification shows it: its row, how many nodes it
# cuts off and the latest engineer's note.
_ALERT_INCIDENT = """
    jsonb_build_object(
        'id', i.id, 'state', i.state, 'kind', i.kind, 'root_node', i.root_node,
        'inferred', i.inferred, 'opened_at', i.opened_at, 'resolved_at', i.resolved_at,
        'eta', i.eta, 'merged_into', i.merged_into, 'subscribers', i.subscribers,
        'calls', i.calls,
        'nodes', (select count(*) from incident_node n where n.incident_id = i.id),
        'note', coalesce((select e.detail->>'note' from incident_event e
                          where e.incident_id = i.id and e.kind = 'note'
                          order by e.at desc, e.id desc limit 1), ''))
"""


async def add_outbox(conn: Conn, incident_id: int | None, event: str, at: datetime | None) -> None:
    """A notification of an incident's change, with the incident as this transaction left
    it (inside the transaction of the change: both are written, or neither). A replayed
    write adds nothing; an incident the database does not have adds nothing."""
    await conn.execute(
        f"""
        insert into alert_outbox (incident_id, revision, event, at, incident)
        select i.id,
               coalesce((select max(revision) from alert_outbox where incident_id = i.id), 0) + 1,
               $2, $3, {_ALERT_INCIDENT}
        from incident i where i.id = $1
        on conflict do nothing
        """,
        incident_id, event, at,
    )  # fmt: skip


async def outbox_after(conn: Conn, after: int, limit: int) -> list[asyncpg.Record]:
    """Notifications after row `after`, oldest first (with their age in seconds)."""
    return list(
        await conn.fetch(
            "select id, incident_id, revision, event, at, incident,"
            " extract(epoch from now() - created_at)::float8 as age"
            " from alert_outbox where id > $1 order by id limit $2",
            after, limit,
        )
    )  # fmt: skip


async def outbox_waiting(conn: Conn, after: int) -> tuple[int, float]:
    """How many notifications wait after row `after`, and the oldest one's age in seconds."""
    row = await conn.fetchrow(
        "select count(*) as n, coalesce(extract(epoch from now() - min(created_at)), 0)::float8"
        " as oldest from alert_outbox where id > $1",
        after,
    )
    assert row is not None
    return int(row["n"]), float(row["oldest"])


async def alert_cursor(conn: Conn, target: str) -> int:
    """How far a target got; a new target starts at the newest row (it is not told the past)."""
    value = await conn.fetchval(
        "insert into alert_target (target, last_id)"
        " select $1, coalesce(max(id), 0) from alert_outbox"
        " on conflict (target) do update set target = excluded.target"
        " returning last_id",
        target,
    )
    return int(value)


async def set_alert_cursor(conn: Conn, target: str, last_id: int) -> None:
    await conn.execute(
        "update alert_target set last_id = $2, updated_at = now() where target = $1",
        target, last_id,
    )  # fmt: skip


async def alert_open_incidents(conn: Conn) -> list[asyncpg.Record]:
    """Open incidents as notifications show them, each with its latest revision."""
    return list(
        await conn.fetch(
            f"""
            select i.id as incident_id, {_ALERT_INCIDENT} as incident,
                   coalesce((select max(revision) from alert_outbox o
                             where o.incident_id = i.id), 0) as revision
            from incident i where i.state = 'open' order by i.id
            """
        )
    )


# -- the cluster's lease (migrations/0005_cluster.sql) -----------------------------------


async def take_lease(conn: Conn, holder: str, seconds: float) -> int | None:
    """Take the lease, or renew it, for `seconds` on the database's clock: the epoch now
    held, or None while another node holds it. The epoch goes up whenever the lease
    changes hands or had lapsed, so whatever was decided before a lapse is fenced off."""
    value = await conn.fetchval(
        "update cluster_lease set holder = $1,"
        " epoch = epoch + (holder <> $1 or expires_at < now())::int,"
        " expires_at = now() + make_interval(secs => $2), renewed_at = now()"
        " where id = 1 and (expires_at < now() or holder = $1) returning epoch",
        holder,
        float(seconds),
    )
    return None if value is None else int(value)


async def read_lease(conn: Conn) -> asyncpg.Record | None:
    """Who holds the lease, its epoch, seconds left (negative: lapsed) and since renewal."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "select holder, epoch, extract(epoch from expires_at - now())::float8 as remaining,"
        " extract(epoch from now() - renewed_at)::float8 as age from cluster_lease where id = 1"
    )
    return row


async def release_lease(conn: Conn, holder: str, epoch: int) -> None:
    """A clean stop: the lease lapses now, so a standby takes over without waiting."""
    await conn.execute(
        "update cluster_lease set expires_at = now()"
        " where id = 1 and holder = $1 and epoch = $2 and expires_at > now()",
        holder,
        epoch,
    )


async def holds_lease(conn: Conn, epoch: int, holder: str) -> bool:
    """Fencing, at the start of a write's transaction: whether `holder` still holds the
    lease at `epoch`. The row stays share-locked until the write commits, so a new leader's
    take-over waits for it, and its restore sees it."""
    found = await conn.fetchval(
        "select 1 from cluster_lease where id = 1 and epoch = $1 and holder = $2 for share",
        epoch,
        holder,
    )
    return found is not None
