"""PostgreSQL through asyncpg: the pool, and every SQL statement outagemon runs."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import asyncpg

from outagemon.errors import DatabaseError

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # A connection of our own, or one borrowed from the pool: both run the same SQL.
    Conn: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]


T = TypeVar("T")

# Rows a COPY makes and encodes in one step of the event loop: the inventory's rows, made
# from the directory as they are read, took 13-15 ms of CPU a step of 2,000 at load 10-14
# (once 29.9 ms), 6-11 ms a step of 1,000. A timer waits for two or three such steps (its
# handle, then its task's wakeup, each behind a writer's step): at 1,000 the loop's lag
# reached 25.5 ms CPU at a million subscribers; at 500, 8.0 ms, in the same time and CPU.
COPY_SLICE = 500


async def sliced(rows: Iterable[T]) -> AsyncIterator[T]:
    """Rows for a COPY, COPY_SLICE at a time with the event loop let run between: asyncpg
    encodes a list whole in one step (a city's million subscribers held the loop ~3 s at
    load 10; a mass outage's 100,000 node states 50 ms of CPU), and builds the rows from
    a generator in the same step as it encodes them."""
    count = 0
    for row in rows:
        yield row
        count += 1
        if count == COPY_SLICE:
            count = 0
            await asyncio.sleep(0)


async def let_go(held: list[Any] | dict[Any, Any]) -> None:
    """Empty a list (from its end) or a dict, COPY_SLICE entries a step of the event loop:
    what only it holds is freed a slice at a time, not all at once when its holder returns
    (a mass outage's 100,000 node states, their rows and each node's latest state, freed
    as the write returned: one step of 15 ms CPU at load 10, 29 ms at a million nodes)."""
    while held:
        if isinstance(held, dict):
            for _ in range(min(COPY_SLICE, len(held))):
                held.popitem()
        else:
            del held[-COPY_SLICE:]
        await asyncio.sleep(0)


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
    nodes: Iterable[tuple[str, str, str | None, str, list[str]]],
    subscribers: Iterable[tuple[str, list[str], str, str, str | None, str]],
) -> None:
    """Replace the stored topology and subscribers with the loaded ones (inside the caller's
    transaction)."""
    await save_nodes(conn, nodes)
    await save_subscribers(conn, subscribers)


async def save_nodes(
    conn: Conn, nodes: Iterable[tuple[str, str, str | None, str, list[str]]]
) -> None:
    """Replace the stored topology with the loaded one (inside the caller's transaction).
    Nodes that left the topology are kept with removed_at set, since incidents refer to
    them. `nodes` is read once, a slice a step of the event loop."""
    await conn.execute(
        "create temporary table new_node (id text, kind text, ip inet, name text,"
        " parents text[]) on commit drop"
    )
    await conn.copy_records_to_table(
        "new_node", records=sliced(nodes), columns=["id", "kind", "ip", "name", "parents"]
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
    # Not `id not in (select ...)`: past work_mem (a city's million nodes) PostgreSQL
    # scans the subquery's rows again for every node, and the write took hours.
    await conn.execute(
        "update node set removed_at = now() where removed_at is null"
        " and not exists (select from new_node n where n.id = node.id)"
    )


async def save_subscribers(
    conn: Conn, subscribers: Iterable[tuple[str, list[str], str, str, str | None, str]]
) -> None:
    """Replace the stored subscribers (inside the caller's transaction; the nodes first);
    `subscribers` is read once, a slice a step of the event loop."""
    await conn.execute("delete from subscriber")
    await conn.copy_records_to_table(
        "subscriber",
        records=sliced(subscribers),
        columns=["account", "phones", "address", "flat", "ip", "node_id"],
    )


# -- incidents -------------------------------------------------------------------------


def ts(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=UTC)


async def open_incidents(conn: Conn) -> list[asyncpg.Record]:
    """Open incidents with their nodes (root first), for the correlator after a restart;
    for one raised by calls, its opening's detail (callers, buildings, first_call_ago)."""
    return list(
        await conn.fetch(
            f"""
            select i.id, i.kind, i.root_node, i.inferred, i.opened_at, i.eta, i.calls, i.raised_by,
                   i.recovering_since, {_REOPENED},
                   case when i.raised_by = 'calls' then
                       (select e.detail from incident_event e where e.incident_id = i.id
                        and e.kind = 'opened' order by e.id limit 1) end as opened_detail,
                   coalesce(array_agg(n.node_id order by n.node_id = i.root_node desc, n.node_id)
                            filter (where n.node_id is not null), '{{}}') as nodes
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
                   i.recovering_since,
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
        "incident_node", records=sliced((incident_id, n) for n in dict.fromkeys(nodes)),
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
    """A line of an incident's timeline (`detail`: a JSON object, as text), once: a write
    the journal file replays at a restart (the daemon died between the database's commit
    and the file's acknowledgement) finds its line there and adds no second one."""
    await conn.execute(
        "insert into incident_event (incident_id, at, kind, detail)"
        " select $1, $2, $3, $4::jsonb where not exists (select 1 from incident_event"
        " where incident_id = $1 and at = $2 and kind = $3 and detail = $4::jsonb)",
        incident_id, at, kind, detail,
    )  # fmt: skip


async def add_calls(conn: Conn, counts: list[tuple[int, int]]) -> None:
    """Check answers that named each incident: (incident id, how many more)."""
    await conn.executemany("update incident set calls = calls + $2 where id = $1", counts)


async def add_call_minutes(conn: Conn, counts: list[tuple[datetime | None, int, int]]) -> None:
    """Check answers per minute and incident: (minute, incident id, how many more)."""
    await conn.executemany(
        "insert into call_minute (minute, incident_id, calls) values ($1, $2, $3)"
        " on conflict (minute, incident_id) do update"
        " set calls = call_minute.calls + excluded.calls",
        counts,
    )


# -- planned works ---------------------------------------------------------------------


async def add_maintenance(conn: Conn, window_id: int, node: str, starts_at: datetime | None,
                          ends_at: datetime | None, reason: str, who: str) -> None:  # fmt: skip
    await conn.execute(
        "insert into maintenance (id, node_id, starts_at, ends_at, reason, created_by)"
        " overriding system value values ($1, $2, $3, $4, $5, $6)"
        " on conflict (id) do nothing",  # a replayed write changes nothing
        window_id, node, starts_at, ends_at, reason, who,
    )  # fmt: skip


async def end_maintenance(conn: Conn, window_id: int, ends_at: datetime | None) -> None:
    """Planned works' end moved (cut short, withdrawn, extended); works withdrawn before
    they began are deleted (a window holds some time)."""
    await conn.execute("delete from maintenance where id = $1 and starts_at >= $2",
                       window_id, ends_at)  # fmt: skip
    await conn.execute("update maintenance set ends_at = $2 where id = $1", window_id, ends_at)


async def recent_maintenance(conn: Conn) -> list[asyncpg.Record]:
    """Planned works that ended less than a day ago, or have not ended."""
    return list(
        await conn.fetch(
            "select id, node_id, starts_at, ends_at, reason, created_by from maintenance"
            " where ends_at > now() - interval '1 day'"
        )
    )


async def max_maintenance_id(conn: Conn) -> int:
    return int(await conn.fetchval("select coalesce(max(id), 0) from maintenance"))


# -- node states -----------------------------------------------------------------------


async def save_node_states(conn: Conn, rows: list[tuple[str, str, datetime | None, float]]) -> None:
    """Nodes' latest states: (node, state, changed at, short-term loss). Inside the
    caller's transaction; many at once (a core's failure, a new leader's own view) go by
    COPY: about three times faster than one statement a row, and the lease row a fenced
    write holds is held for that much less."""
    if len(rows) < STATES_BY_COPY:
        await conn.executemany(
            _SAVE_STATES.format(source="values ($1, $2, $3, $4, nextval('node_state_seq'))"), rows
        )
        return
    await conn.execute("create temporary table s (node_id text, state text,"
                       " changed_at timestamptz, loss real) on commit drop")  # fmt: skip
    columns = ["node_id", "state", "changed_at", "loss"]
    await conn.copy_records_to_table("s", records=sliced(rows), columns=columns)
    await conn.execute(
        _SAVE_STATES.format(
            source="select node_id, state, changed_at, loss, nextval('node_state_seq') from s"
        )
    )


STATES_BY_COPY = 1000  # rows from which node states are written by COPY
_SAVE_STATES = (
    "insert into node_state (node_id, state, changed_at, loss, seq) {source}"
    " on conflict (node_id) do update set state = excluded.state,"
    " changed_at = excluded.changed_at, loss = excluded.loss, seq = excluded.seq"
)


async def answering_since(conn: Conn, nodes: list[str], before: datetime) -> list[str]:
    """Those of these nodes last written answering (up) since `before` or earlier."""
    rows = await conn.fetch(
        "select node_id from node_state where node_id = any($1::text[]) and state = 'up'"
        " and changed_at <= $2 order by node_id",
        nodes, before,
    )  # fmt: skip
    return [r["node_id"] for r in rows]


async def node_state_values(conn: Conn) -> dict[str, str]:
    """Each node's state as last written (by whichever leader wrote it)."""
    return {
        r["node_id"]: r["state"] for r in await conn.fetch("select node_id, state from node_state")
    }


async def save_histories(conn: Conn, rows: Iterable[tuple[str, float, float]]) -> None:
    """Every node's loss history (node, n, lost), in one COPY (`rows` read a slice a step
    of the event loop)."""
    await conn.execute("create temporary table h (node_id text, n real, lost real)"
                       " on commit drop")  # fmt: skip
    await conn.copy_records_to_table("h", records=sliced(rows), columns=["node_id", "n", "lost"])
    await conn.execute(
        "insert into node_state (node_id, state, changed_at, history_n, history_lost)"
        " select node_id, 'unknown', now(), n, lost from h"
        " on conflict (node_id) do update set history_n = excluded.history_n,"
        " history_lost = excluded.history_lost"
    )


async def save_call_rates(conn: Conn, rows: list[tuple[str, str, float, float]]) -> None:
    """What the calls' detector learned (kind, key, count, wall time), replacing what was
    kept (migrations/0010_call_rates.sql)."""
    await conn.execute("delete from call_rate")
    await conn.copy_records_to_table(
        "call_rate", records=sliced((k, key, c, ts(at)) for k, key, c, at in rows),
        columns=["kind", "key", "count", "at"],
    )  # fmt: skip


async def call_rates(conn: Conn) -> list[tuple[str, str, float, float]]:
    rows = await conn.fetch("select kind, key, count, at from call_rate")
    return [(r["kind"], r["key"], float(r["count"]), r["at"].timestamp()) for r in rows]


async def node_histories(conn: Conn) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "select node_id, history_n, history_lost from node_state where history_n > 0"
        )
    )


# -- notifications (the outbox) --------------------------------------------------------

# The incident as a JSON object, as a notification shows it: its row, how many nodes it
# cuts off, the latest engineer's note and, for one raised by calls, what raised it (its
# opened event's detail: callers, buildings, first_call_ago).
_ALERT_INCIDENT = """
    jsonb_build_object(
        'id', i.id, 'state', i.state, 'kind', i.kind, 'root_node', i.root_node,
        'inferred', i.inferred, 'opened_at', i.opened_at, 'resolved_at', i.resolved_at,
        'eta', i.eta, 'merged_into', i.merged_into, 'subscribers', i.subscribers,
        'calls', i.calls, 'raised_by', i.raised_by,
        'raised', case when i.raised_by = 'calls' then
                      (select e.detail from incident_event e
                       where e.incident_id = i.id and e.kind = 'opened'
                       order by e.at, e.id limit 1) end,
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


async def cut_off_stale_holder(conn: Conn, me: str) -> int:
    """A lapsed lease whose holder still holds the lease row (share-locked by a fenced
    write it began and never finished: paused, say, between asyncpg's prepare and execute,
    where no server timeout reaches it): its sessions that hold the row are ended, so the
    lease can be taken (and the write cannot land: it was fenced by the lapse). Only when
    the lease has lapsed on the database's clock and is not `me`'s. How many were ended."""
    ended = await conn.fetchval(
        "select count(*) filter (where pg_terminate_backend(l.pid))"
        " from pg_locks l, cluster_lease c"
        " where c.id = 1 and c.expires_at < now() and c.holder is distinct from $1"
        " and l.locktype = 'relation' and l.relation = 'cluster_lease'::regclass"
        " and l.mode = 'RowShareLock' and l.granted and l.pid <> pg_backend_pid()",
        me,
    )
    return int(ended or 0)


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


# -- callers answered by a standby, for the leader (migrations/0009_cluster_calls.sql) ------


async def call_salt(conn: Conn) -> bytes:
    """The key every node of a cluster hashes its callers with (one caller, one key)."""
    return bytes(await conn.fetchval("select call_salt from cluster_lease where id = 1"))


async def relay_calls(conn: Conn, node: str, counts: list[tuple[int, int]],
                      records: list[tuple[str, str, str, str, str, str]]) -> None:  # fmt: skip
    """A standby's answers for the leader: counts (incident id, answers naming it) and
    callers' records (place, building, caller's key, channel, status, router)."""
    if counts:
        await conn.copy_records_to_table(
            "cluster_call_count", columns=("node", "incident_id", "calls"),
            records=[(node, iid, n) for iid, n in counts if n > 0],
        )  # fmt: skip
    if records:
        await conn.copy_records_to_table(
            "cluster_call_record",
            columns=("node", "place", "building", "caller", "channel", "status", "router"),
            records=[(node, *r) for r in records],
        )  # fmt: skip


async def transaction_id(conn: Conn) -> int:
    """The id of the caller's transaction (assigned now if it had none): what
    `transaction_states` asks about when the commit's answer was lost."""
    return int(await conn.fetchval("select pg_current_xact_id()::text::bigint"))


async def transaction_states(conn: Conn, ids: list[int]) -> dict[int, str | None]:
    """What became of these transactions: 'committed', 'aborted', 'in progress', or None
    when the server no longer knows (too old). An id the server never gave (a database
    restored from before it) is 'aborted': nothing of it is here."""
    rows = await conn.fetch(
        "select x, case when x::text::xid8 < pg_snapshot_xmax(pg_current_snapshot())"
        " then pg_xact_status(x::text::xid8) else 'aborted' end as status"
        " from unnest($1::bigint[]) x",
        ids,
    )
    return {int(r["x"]): r["status"] for r in rows}


async def take_relayed_counts(conn: Conn) -> list[asyncpg.Record]:
    """Every count waiting, taken (deleted): per incident and minute of the database's
    clock when it was relayed (incident_id, minute, calls). Inside the caller's transaction."""
    return list(
        await conn.fetch(
            "with taken as (delete from cluster_call_count returning incident_id, at, calls)"
            " select incident_id, date_trunc('minute', at) as minute, sum(calls)::int as calls"
            " from taken group by 1, 2 order by 2, 1"
        )
    )


async def take_relayed_records(conn: Conn) -> list[asyncpg.Record]:
    """Every caller's record waiting, taken (deleted), oldest first, with its age in
    seconds on the database's clock. Inside the caller's transaction."""
    return list(
        await conn.fetch(
            "with taken as (delete from cluster_call_record returning *)"
            " select node, extract(epoch from clock_timestamp() - at)::float8 as age, place,"
            " building, caller, channel, status, router from taken order by id"
        )
    )


# -- history (migrations/0006_history.sql) -----------------------------------------------
#
# The model: `impact` rows say a node was cut off by an incident, for a cause (outage or
# maintenance), from started_at to ended_at (null: still is); they are written from the
# incident events (db/journal.py). `subscriber_period` rows say an account was served by a
# node from valid_from to valid_to (null: still is), written at each inventory load
# (`inventory_version`). `blind_period` rows say when the monitor could not see. An
# account's downtime in [start, end) is the union of its node's impact within its
# validity, clipped to the period: outage time, planned-works time (less any outage at
# the same moment) and unverified time (any of it inside a blind period) kept apart.
# Open rows (null ends) count up to `now`, which callers pass so answers are repeatable.
# A confirmed outage raised by calls names, in the event that ended it (`spared`), the
# accounts whose own router answered throughout (monitor.Monitor._spared): its impact is
# not theirs.

CPE_PREFIX = "cpe:"  # subscribers' own routers (core.directory.cpe_id): not in impact


def _infrastructure(nodes: list[str]) -> list[str]:
    return [n for n in dict.fromkeys(nodes) if not n.startswith(CPE_PREFIX)]


async def impact_open(conn: Conn, incident_id: int, nodes: list[str], cause: str,
                      at: datetime | None) -> None:  # fmt: skip
    """These nodes are cut off by the incident from `at` (those already open stay as they
    are: a replayed write changes nothing)."""
    await conn.execute(
        """
        insert into impact (incident_id, node_id, cause, started_at)
        select $1, n, $3, $4 from unnest($2::text[]) n
        where not exists (select 1 from impact i where i.incident_id = $1
                          and i.node_id = n and i.ended_at is null)
        """,
        incident_id, _infrastructure(nodes), cause, at,
    )  # fmt: skip


async def impact_set_nodes(conn: Conn, incident_id: int, nodes: list[str], cause: str,
                           at: datetime | None) -> None:  # fmt: skip
    """The incident now cuts off exactly these nodes: the others' rows end at `at`, new ones
    start at `at`."""
    kept = _infrastructure(nodes)
    await conn.execute(
        "update impact set ended_at = greatest($3, started_at) where incident_id = $1"
        " and ended_at is null and node_id <> all($2::text[])",
        incident_id, kept, at,
    )  # fmt: skip
    await impact_open(conn, incident_id, kept, cause, at)


async def impact_close(conn: Conn, incident_id: int | None, at: datetime | None) -> None:
    """The incident cuts off nothing from `at` (it recovers, resolves or is merged)."""
    await conn.execute(
        "update impact set ended_at = greatest($2, started_at)"
        " where incident_id = $1 and ended_at is null",
        incident_id, at,
    )  # fmt: skip


async def impact_cause(conn: Conn, incident_id: int | None, cause: str,
                       at: datetime | None) -> None:  # fmt: skip
    """The incident's kind changed at `at` (for works that overran, their end, before the
    change was made): its rows of another cause still open, or that ended after `at` (a
    node it left since), end at `at`, and the same nodes continue under the new cause
    until those rows' ends (a replayed write changes nothing)."""
    await conn.execute(
        """
        with old as (
            select id, ended_at from impact
            where incident_id = $1 and cause <> $2
              and coalesce(ended_at, 'infinity') > greatest($3, started_at)
        ),
        ended as (
            update impact i set ended_at = greatest($3, i.started_at)
            from old where i.id = old.id
            returning i.node_id, i.ended_at as began, old.ended_at as ended
        )
        insert into impact (incident_id, node_id, cause, started_at, ended_at)
        select $1, node_id, $2, began, ended from ended
        """,
        incident_id, cause, at,
    )  # fmt: skip


async def blind_start(conn: Conn, reason: str, at: datetime | None) -> None:
    """The monitor stopped seeing at `at` (once: while a period of this reason is open,
    nothing)."""
    await conn.execute(
        "insert into blind_period (reason, started_at) select $1, $2 where not exists"
        " (select 1 from blind_period where reason = $1 and ended_at is null)",
        reason, at,
    )  # fmt: skip


async def blind_end(conn: Conn, reason: str, at: datetime | None) -> None:
    await conn.execute(
        "update blind_period set ended_at = greatest($2, started_at)"
        " where reason = $1 and ended_at is null",
        reason, at,
    )  # fmt: skip


async def run_start(conn: Conn, at: datetime, gap: float, node: str | None = None,
                    epoch: int | None = None) -> int:  # fmt: skip
    """This run of the daemon begins at `at`; the time since the previous run was last
    seen alive, when longer than `gap` seconds, is a 'stopped' blind period (and a
    'blind' period the previous run left open ends when it was last seen). Returns the
    run's id. A cluster's run is a leader's term: its `node` and `epoch`."""
    last = await conn.fetchrow(
        "select id, seen_at, coalesce(stopped_at, seen_at) as gone from monitor_run"
        " order by id desc limit 1"
    )
    if last is not None:
        await conn.execute(
            "update blind_period set ended_at = greatest($1, started_at)"
            " where reason = 'blind' and ended_at is null", last["seen_at"],
        )  # fmt: skip
        if (at - last["gone"]).total_seconds() > gap:
            await conn.execute(
                "insert into blind_period (reason, started_at, ended_at)"
                " values ('stopped', $1, $2)", last["gone"], at,
            )  # fmt: skip
    run_id = await conn.fetchval(
        "insert into monitor_run (started_at, seen_at, node, epoch) values ($1, $1, $2, $3)"
        " returning id", at, node, epoch,
    )  # fmt: skip
    return int(run_id)


async def run_seen(conn: Conn, run_id: int, at: datetime, stopped: bool = False) -> None:
    """This run was alive at `at` (and stopped then, when `stopped`)."""
    await conn.execute(
        "update monitor_run set seen_at = greatest(seen_at, $2),"
        " stopped_at = case when $3 then $2 else stopped_at end where id = $1",
        run_id, at, stopped,
    )  # fmt: skip


async def save_subscriber_periods(
    conn: Conn, rows: Iterable[tuple[str, str, str, str, list[str]]], count: int, at: datetime
) -> tuple[int, int, int, int]:
    """An inventory load at `at` (inside the caller's transaction): `count` rows (read
    once, a slice a step of the event loop) of (account, serving node, address, flat,
    phones). Accounts gone or changed (node, address, flat, phones) end their period at
    `at`; new and changed ones begin one. Returns the version's id and how many were
    added, removed and changed."""
    await conn.execute(
        "create temporary table loaded_sub (account text, node_id text, address text,"
        " flat text, phones text[]) on commit drop"
    )
    await conn.copy_records_to_table(
        "loaded_sub",
        records=sliced(rows),
        columns=["account", "node_id", "address", "flat", "phones"],
    )
    await conn.execute("create index on loaded_sub (account)")
    await conn.execute("analyze loaded_sub")
    version = int(await conn.fetchval(
        "insert into inventory_version (loaded_at, subscribers) values ($1, $2) returning id",
        at, count,
    ))  # fmt: skip
    # The accounts whose period ended, then began, kept in the database and counted there:
    # fetched, a first load's million accounts were decoded and made into sets in one
    # step of the event loop (~300 ms of CPU).
    await conn.execute(
        "create temporary table load_change (account text, ended bool) on commit drop"
    )
    await conn.execute(
        """
        with ended as (
            update subscriber_period p set valid_to = greatest($1, p.valid_from),
                version_to = $2
            where p.valid_to is null and not exists (
                select 1 from loaded_sub l where l.account = p.account
                and l.node_id = p.node_id and l.address = p.address and l.flat = p.flat
                and l.phones = p.phones)
            returning p.account
        )
        insert into load_change select account, true from ended
        """,
        at, version,
    )  # fmt: skip
    await conn.execute(
        """
        with added as (
            insert into subscriber_period (account, node_id, address, flat, phones,
                                           valid_from, version_from)
            select l.account, l.node_id, l.address, l.flat, l.phones, $1, $2 from loaded_sub l
            where not exists (select 1 from subscriber_period p
                              where p.account = l.account and p.valid_to is null)
            returning account
        )
        insert into load_change select account, false from added
        """,
        at, version,
    )  # fmt: skip
    row = await conn.fetchrow(
        """
        select count(*) filter (where began and not ended) as added,
               count(*) filter (where ended and not began) as removed,
               count(*) filter (where began and ended) as changed
        from (select bool_or(ended) as ended, bool_or(not ended) as began
              from load_change group by account) a
        """
    )
    assert row is not None  # an aggregate: always one row
    counts = (int(row["added"]), int(row["removed"]), int(row["changed"]))
    await conn.execute(
        "update inventory_version set added = $2, removed = $3, changed = $4 where id = $1",
        version, *counts,
    )  # fmt: skip
    return version, *counts


# -- history: reads ---------------------------------------------------------------------


async def account_known(conn: Conn, account: str) -> bool:
    """Whether the account was ever in the inventory."""
    return bool(await conn.fetchval(
        "select exists (select 1 from subscriber_period where account = $1)", account))  # fmt: skip


async def accounts_at(conn: Conn, address: str, flat: str, start: datetime,
                      end: datetime) -> list[str]:  # fmt: skip
    """Accounts at this address (as stored, without the flat) and flat within [start, end)."""
    rows = await conn.fetch(
        "select distinct account from subscriber_period where address = $1 and flat = $2"
        " and valid_from < $4 and coalesce(valid_to, 'infinity') > $3 order by account",
        address, flat, start, end,
    )  # fmt: skip
    return [r["account"] for r in rows]


async def account_history(conn: Conn, account: str, start: datetime, end: datetime,
                          now: datetime) -> list[asyncpg.Record]:  # fmt: skip
    """What one account's question needs, in one round trip: rows of kind 'served' (the
    account's periods: node, address, flat), 'hit' (its serving node cut off while it was
    served: incident_id, cause; they may overlap, as incidents do) and 'blind' (as
    blind_periods: cause holds the reason), each with started_at and ended_at clipped to
    [start, end) (open ones up to `now`), in start order."""
    return list(
        await conn.fetch(
            """
            select 'served' as kind, null::bigint as incident_id, null::text as cause,
                   valid_from as started_at, valid_to as ended_at, node_id, address, flat
            from subscriber_period
            where account = $1 and valid_from < $3 and coalesce(valid_to, 'infinity') > $2
            union all
            select 'hit', i.incident_id, i.cause,
                   greatest(i.started_at, s.valid_from, $2),
                   least(coalesce(i.ended_at, $4), coalesce(s.valid_to, 'infinity'), $3),
                   null, null, null
            from subscriber_period s
            join impact i on i.node_id = s.node_id
                and i.started_at < coalesce(s.valid_to, 'infinity')
                and coalesce(i.ended_at, $4) > s.valid_from
            where s.account = $1 and s.valid_from < $3 and coalesce(s.valid_to, 'infinity') > $2
              and i.started_at < $3 and coalesce(i.ended_at, $4) > $2
              and greatest(i.started_at, s.valid_from, $2)
                  < least(coalesce(i.ended_at, $4), coalesce(s.valid_to, 'infinity'), $3)
              and not exists (select 1 from incident_event x
                              where x.incident_id = i.incident_id
                                and x.kind in ('resolved', 'merged')
                                and x.detail->'spared' ? s.account)
            union all
            select 'blind', null, reason, greatest(started_at, $2),
                   least(coalesce(ended_at, $4), $3), null, null, null
            from blind_period
            where started_at < $3 and coalesce(ended_at, $4) > $2
              and greatest(started_at, $2) < least(coalesce(ended_at, $4), $3)
            order by 4, 2
            """,
            account, start, end, now,
        )
    )  # fmt: skip


async def blind_periods(conn: Conn, start: datetime, end: datetime,
                        now: datetime) -> list[asyncpg.Record]:  # fmt: skip
    """When the monitor could not see within [start, end): (reason, started_at, ended_at),
    clipped, open ones up to `now`."""
    return list(
        await conn.fetch(
            "select reason, greatest(started_at, $1) as started_at,"
            " least(coalesce(ended_at, $3), $2) as ended_at from blind_period"
            " where started_at < $2 and coalesce(ended_at, $3) > $1"
            " and greatest(started_at, $1) < least(coalesce(ended_at, $3), $2)"
            " order by 2", start, end, now,
        )
    )  # fmt: skip


# One row per account cut off within [$1, $2), open rows up to $3, with at least $4
# minutes in all: minutes of outage, of planned works (less outage at the same moment)
# and unverified (inside a blind period), each moment counted once where incidents
# overlap. Without multiranges (a million of them cost three times the rest): the hits of
# each account in start order, each contributing only what no earlier hit covered
# ("piece"), so the pieces are disjoint and add up to the union; the outage pieces the same
# way among outage hits alone. Only the pieces that meet a blind spell (few) are cut by it.
# core/downtime.py computes the same another way; the tests hold the two equal.
DOWNTIME = """
with blind as (
    select coalesce(range_agg(tstzrange(greatest(started_at, $1),
                                        least(coalesce(ended_at, $3), $2))),
                    '{}'::tstzmultirange) as r
    from blind_period
    where started_at < $2 and coalesce(ended_at, $3) > $1
      and greatest(started_at, $1) < least(coalesce(ended_at, $3), $2)
),
spared as (
    select x.incident_id, a.account
    from incident_event x
    cross join lateral jsonb_array_elements_text(x.detail->'spared') as a(account)
    where x.kind in ('resolved', 'merged') and x.at >= $1 and x.detail ? 'spared'
),
hit as (
    select s.account, i.incident_id, i.cause = 'outage' as outage,
           greatest(i.started_at, s.valid_from, $1) as lo,
           least(coalesce(i.ended_at, $3), coalesce(s.valid_to, 'infinity'), $2) as hi
    from impact i
    join subscriber_period s on s.node_id = i.node_id
        and s.valid_from < coalesce(i.ended_at, $3)
        and coalesce(s.valid_to, 'infinity') > i.started_at
    where i.started_at < $2 and coalesce(i.ended_at, $3) > $1
      and s.valid_from < $2 and coalesce(s.valid_to, 'infinity') > $1
      and greatest(i.started_at, s.valid_from, $1)
          < least(coalesce(i.ended_at, $3), coalesce(s.valid_to, 'infinity'), $2)
      and not exists (select 1 from spared p
                      where p.incident_id = i.incident_id and p.account = s.account)
),
piece as (
    select account, incident_id, outage, hi,
           greatest(lo, coalesce(max(hi) over earlier, lo)) as lo_any,
           greatest(lo, coalesce(max(hi) filter (where outage) over earlier, lo)) as lo_outage
    from hit
    window earlier as (partition by account order by lo, hi
                       rows between unbounded preceding and 1 preceding)
),
per as (
    select p.account,
           array_agg(distinct p.incident_id order by p.incident_id) as incidents,
           sum(greatest(p.hi - p.lo_any, '0')) as covered,
           coalesce(sum(greatest(p.hi - p.lo_outage, '0')) filter (where p.outage), '0')
               as outage,
           coalesce(sum(case when p.hi > p.lo_any and b.r && tstzrange(p.lo_any, p.hi)
                             then (select sum(upper(x) - lower(x)) from unnest(
                                   b.r * tstzmultirange(tstzrange(p.lo_any, p.hi))) x)
                        end), '0') as covered_blind,
           coalesce(sum(case when p.hi > p.lo_outage and b.r && tstzrange(p.lo_outage, p.hi)
                             then (select sum(upper(x) - lower(x)) from unnest(
                                   b.r * tstzmultirange(tstzrange(p.lo_outage, p.hi))) x)
                        end) filter (where p.outage), '0') as outage_blind
    from piece p cross join blind b
    group by p.account
)
select account, incidents,
       round(extract(epoch from outage - outage_blind) / 60, 1) as outage_minutes,
       round(extract(epoch from covered - outage - covered_blind + outage_blind) / 60, 1)
           as planned_minutes,
       round(extract(epoch from covered_blind) / 60, 1) as unverified_minutes
from per
where extract(epoch from covered) >= $4 * 60
order by account
"""


def downtime_cursor(conn: Conn, start: datetime, end: datetime, now: datetime,
                    min_minutes: float, prefetch: int = 2000) -> Any:  # fmt: skip
    """The billing rows (`DOWNTIME`) as a server-side cursor, read `prefetch` rows at a time
    (`async for`, inside the caller's transaction): a million rows never sit in memory."""
    return conn.cursor(DOWNTIME, start, end, now, min_minutes, prefetch=prefetch)


# The billing CSV, written by PostgreSQL itself (COPY ... TO STDOUT): the rows reach the
# caller as bytes, never as Python objects.
DOWNTIME_CSV = f"""
select account, outage_minutes, planned_minutes, unverified_minutes,
       array_to_string(incidents, ';') as incidents
from ({DOWNTIME}) d
"""


async def downtime_csv(conn: Conn, start: datetime, end: datetime, now: datetime,
                       min_minutes: float, output: Callable[[bytes], Coroutine[Any, Any, None]],
                       limit: float | None = None) -> None:  # fmt: skip
    """The billing CSV (header first) handed to `output` in chunks, as PostgreSQL writes it
    (`limit`: seconds it may take)."""
    await conn.copy_from_query(DOWNTIME_CSV, start, end, now, min_minutes, output=output,
                               format="csv", header=True, timeout=limit)  # fmt: skip


# -- reports ---------------------------------------------------------------------------


# Each place's losses within [$1, $2), open stretches up to $3: the nodes cut off (the
# impact record; for incidents it does not hold, their last nodes over their whole life,
# leaving out suspicions never confirmed: no outage, as the impact record has it),
# placed by the map ($4: "node TAB place" lines, one text rather than two arrays of
# thousands, which the client would encode string by string; a node may be in several)
# or by $5: 'node' places an unmapped node at itself, 'label' at '(none)', anything else
# drops it.
# Outage once where incidents overlap; planned works less outage at the same moment;
# unverified: either inside a blind or stopped period. Worst first, $6 rows at most, with
# how many places there are.
PLACES = """
with blind as (
    select coalesce(range_agg(tstzrange(greatest(started_at, $1),
                                        least(coalesce(ended_at, $3), $2))),
                    '{}'::tstzmultirange) as r
    from blind_period
    where started_at < $2 and coalesce(ended_at, $3) > $1
      and greatest(started_at, $1) < least(coalesce(ended_at, $3), $2)
),
stretch as (
    select incident_id, node_id, cause, started_at, ended_at from impact
    where started_at < $2 and coalesce(ended_at, $3) > $1
    union all
    select i.id, n.node_id, i.kind, i.opened_at, i.resolved_at
    from incident i join incident_node n on n.incident_id = i.id
    where i.opened_at < $2 and coalesce(i.resolved_at, $3) > $1
      and i.kind <> 'suspected'
      and not exists (select 1 from impact x where x.incident_id = i.id)
),
map as (
    select split_part(line, E'\t', 1) as node_id, split_part(line, E'\t', 2) as key
    from unnest(string_to_array($4, E'\n')) as line where line <> ''
),
cut as (
    select coalesce(m.key, case $5 when 'node' then s.node_id when 'label' then '(none)' end)
               as key,
           s.incident_id, s.cause,
           tstzrange(greatest(s.started_at, $1), least(coalesce(s.ended_at, $3), $2)) as r
    from stretch s left join map m on m.node_id = s.node_id
    where s.node_id not like 'cpe:%'
      and greatest(s.started_at, $1) < least(coalesce(s.ended_at, $3), $2)
),
per as (
    select key,
           coalesce(range_agg(r) filter (where cause = 'outage'), '{}') as outage,
           coalesce(range_agg(r) filter (where cause = 'maintenance'), '{}') as works,
           count(distinct incident_id) as incidents
    from cut where key is not null group by key
),
figured as (
    select p.key, multirange_seconds(p.outage) as outage_seconds,
           multirange_seconds(p.works - p.outage) as planned_seconds,
           multirange_seconds((p.outage + p.works) * b.r) as unverified_seconds, p.incidents
    from per p cross join blind b
)
select *, count(*) over () as places from figured
order by outage_seconds desc, planned_seconds desc, incidents desc, key collate "C"
limit $6
"""


async def places(conn: Conn, start: datetime, end: datetime, now: datetime, mapped: str,
                 unmapped: str, limit: int, seconds: float) -> list[asyncpg.Record]:  # fmt: skip
    """Each place's outage, planned and unverified seconds and incidents (`PLACES`), in a
    read-only transaction that the server ends after `seconds`."""
    async with conn.transaction(readonly=True):
        await conn.execute(f"set local statement_timeout = {int(seconds * 1000)}")
        return list(await conn.fetch(PLACES, start, end, now, mapped, unmapped, limit))


async def report(conn: Conn, start: datetime, end: datetime, now: datetime,
                 seconds: float) -> dict[str, list[asyncpg.Record]]:  # fmt: skip
    """What the reports read for [start, end), in one read-only snapshot that the server
    ends after `seconds`:

    - incidents: those open at some time in the period, oldest first, with when each was
      opened (its "opened" event), its first repair estimate, and when it was resolved
      and reopened (`resolutions`, `reopenings`, and `since`: the start of each fault
      that reopened it), null if never; how many of its subscribers its end named spared
      (`spared`: a confirmed outage raised by calls, 0 for others); a suspicion never
      confirmed (kind suspected: dismissed, expired, taken over by the probes' incident
      or still open) is no outage and is left out, as the impact record leaves it out;
    - blind: when the monitor could not see, clipped to the period, open ones up to
      `now`;
    - calls: /check answers per minute: all, and those that named an incident."""
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        await conn.execute(f"set local statement_timeout = {int(seconds * 1000)}")
        incidents = await conn.fetch(
            """
            select i.id, i.state, i.kind, i.root_node, i.opened_at, i.resolved_at,
                   i.merged_into, i.subscribers, i.calls, ev.detected_at,
                   ev.etas[1][1] as first_eta_at, ev.etas[1][2] as first_eta,
                   case when ev.reopenings is not null then ev.resolutions end as resolutions,
                   ev.reopenings, ev.since, coalesce(ev.spared, 0) as spared
            from incident i
            -- One look at the incident's events: its opening, first estimate, when it
            -- was resolved and reopened, and whom its end found spared.
            left join lateral (
                select min(e.at) filter (where e.kind = 'opened') as detected_at,
                       array_agg(array[e.at, (e.detail->>'eta')::timestamptz]
                                 order by e.at, e.id)
                           filter (where e.kind = 'eta' and e.detail->>'eta' is not null)
                           as etas,
                       array_agg(e.at order by e.at) filter (where e.kind = 'resolved')
                           as resolutions,
                       array_agg(e.at order by e.at) filter (where e.kind = 'reopened')
                           as reopenings,
                       array_agg(coalesce((e.detail->>'since')::timestamptz, e.at)
                                 order by e.at) filter (where e.kind = 'reopened') as since,
                       max(jsonb_array_length(e.detail->'spared'))
                           filter (where jsonb_typeof(e.detail->'spared') = 'array')
                           as spared
                from incident_event e
                where e.incident_id = i.id
                  and e.kind in ('opened', 'eta', 'resolved', 'reopened', 'merged')
            ) ev on true
            where i.opened_at < $2 and coalesce(i.resolved_at, 'infinity') > $1
              and i.kind <> 'suspected'
            order by i.opened_at, i.id
            """,
            start, end,
        )  # fmt: skip
        blind = await blind_periods(conn, start, end, now)
        calls = await conn.fetch(
            "select minute, sum(calls)::bigint as calls,"
            " coalesce(sum(calls) filter (where incident_id <> 0), 0)::bigint as named"
            " from call_minute where minute >= $1 and minute < $2"
            " group by minute order by minute",
            start, end,
        )  # fmt: skip
    return {"incidents": list(incidents), "blind": blind, "calls": list(calls)}


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
    """Open incidents and those resolved after `resolved_after`; only those of `ids` when
    given (whatever their state, so a replica learns that one was resolved or merged).
    Without their nodes: how many (`node_count`) and a digest of the set (`node_digest`,
    null when it has none), so a replica reads the nodes (`replica_incident_nodes`, in the
    same snapshot) only when the set changed: a core failure's incident has a city's,
    rewritten unchanged by most of its events."""
    if ids is not None:
        return list(await conn.fetch(f"{_REPLICA} where i.id = any($1::bigint[]) {_BY_ID}", ids))
    where = "i.state = 'open' or (i.state = 'resolved' and i.resolved_at > $1)"
    return list(await conn.fetch(f"{_REPLICA} where {where} {_BY_ID}", resolved_after))


async def replica_incident_nodes(conn: Conn, incident_id: int, after: str | None,
                                 limit: int) -> list[str]:  # fmt: skip
    """Up to `limit` of an incident's nodes after `after` (None: from the first), in the
    order of `node_digest`: a replica reads a city's in pieces (keyset pages; in one
    repeatable-read transaction with the incident's row, so the pieces are one set)."""
    page = "select node_id from incident_node where incident_id = $1"
    if after is not None:
        page += " and node_id > $3"
    found = await conn.fetchval(
        f"select coalesce(array_agg(node_id order by node_id), '{{}}') from ({page}"
        " order by node_id limit $2) p",
        *((incident_id, limit) if after is None else (incident_id, limit, after)),
    )  # fmt: skip
    return list(found)


# When an incident's current fault began, if it reopened (or failed again while
# recovering): the `since` of its latest such event (the incident keeps its first fault's
# start as opened_at). When its root failed, if the root moved up: the latest move's.
_REOPENED = """
    (select (e.detail->>'since')::timestamptz from incident_event e
     where e.incident_id = i.id and e.kind in ('reopened', 'refailed') and e.detail ? 'since'
     order by e.at desc, e.id desc limit 1) as reopened_since,
    (select (e.detail->>'since')::timestamptz from incident_event e
     where e.incident_id = i.id and e.kind = 'root_moved' and e.detail ? 'since'
     order by e.at desc, e.id desc limit 1) as root_since,
    (select (e.detail->>'works_ended')::timestamptz from incident_event e
     where e.incident_id = i.id and e.kind = 'kind_changed'
       and jsonb_typeof(e.detail->'works_ended') = 'string'  -- seconds before the 11th session
     order by e.at desc, e.id desc limit 1) as works_ended"""

_REPLICA = f"""
    select i.id, i.state, i.kind, i.root_node, i.inferred, i.opened_at, i.resolved_at,
           i.eta, i.calls, i.recovering_since, i.subscribers, i.raised_by, {_REOPENED},
           case when i.raised_by = 'calls' then
               (select e.detail from incident_event e where e.incident_id = i.id
                and e.kind = 'opened' order by e.id limit 1) end as opened_detail,
           n.node_count, n.node_digest
    from incident i cross join lateral (
        select count(*) as node_count,
               md5(string_agg(node_id, E'\\n' order by node_id)) as node_digest
        from incident_node where incident_id = i.id) n
"""
_BY_ID = "order by i.id"


async def replica_calls(conn: Conn, ids: list[int]) -> list[asyncpg.Record]:
    """The call counts of these incidents (a replica told only that they changed)."""
    return list(await conn.fetch("select id, calls from incident where id = any($1::bigint[])",
                                 ids))  # fmt: skip


async def replica_states(conn: Conn, after: int, limit: int = 5000) -> list[asyncpg.Record]:
    """Up to `limit` node states written after sequence number `after` (0: from the
    first), in the order written: a replica reads a city's in pieces. `changed_at` in
    seconds since the epoch (a float decodes in a fraction of a datetime's time)."""
    return list(
        await conn.fetch(
            "select node_id, state, extract(epoch from changed_at)::float8 as changed_at,"
            " loss, seq from node_state where seq > $1 order by seq limit $2",
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
