"""Node states written at once: one statement a row against COPY, on a real PostgreSQL.

    .venv/bin/python -m benchmarks.node_states_bench [--dsn DSN] [--nodes 100000]

A new leader's own view (and a core's failure) writes many node states in one fenced
write, which holds the lease row while it runs. A fresh database is made beside the one
of `--dsn` (dropped at the end), migrated, given `--nodes` nodes; then every node's state
is written twice each way, alternating (insert, then updates), in a transaction:
`executemany` of the upsert (what `store.save_node_states` did for every size) and COPY
into a temporary table with one upsert from it (what it does from `STATES_BY_COPY` rows).
Prints wall time and this process's CPU time (the server's work is in the wall time only)
and the load average, which inflates wall time on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
import uuid
from datetime import UTC, datetime

import asyncpg

from outagemon.db import migrate, store

UPSERT = (
    "insert into node_state (node_id, state, changed_at, loss, seq) {source}"
    " on conflict (node_id) do update set state = excluded.state,"
    " changed_at = excluded.changed_at, loss = excluded.loss, seq = excluded.seq"
)
Rows = list[tuple[str, str, datetime | None, float]]


async def one_a_row(conn: asyncpg.Connection, rows: Rows) -> None:
    source = "values ($1, $2, $3, $4, nextval('node_state_seq'))"
    await conn.executemany(UPSERT.format(source=source), rows)


async def by_copy(conn: asyncpg.Connection, rows: Rows) -> None:
    await store.save_node_states(conn, rows)  # COPY from STATES_BY_COPY rows


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def main(dsn: str, nodes: int) -> None:
    assert nodes >= store.STATES_BY_COPY, "too few nodes for the COPY path"
    name = "bench_states_" + uuid.uuid4().hex[:8]
    admin = await asyncpg.connect(dsn)
    await admin.execute(f"create database {name}")
    bench_dsn = dsn.rsplit("/", 1)[0] + "/" + name
    try:
        await migrate.migrate(bench_dsn)
        conn = await asyncpg.connect(bench_dsn)
        await conn.copy_records_to_table(
            "node", records=[(f"n{i}", "switch") for i in range(nodes)], columns=["id", "kind"]
        )
        state = "up"
        for round_ in range(2):
            for label, write in (("one statement a row", one_a_row), ("COPY", by_copy)):
                state = "down" if state == "up" else "up"
                rows: Rows = [(f"n{i}", state, datetime.now(UTC), 0.0) for i in range(nodes)]
                c0, t0 = cpu(), time.perf_counter()
                async with conn.transaction():
                    await write(conn, rows)
                wall, used = time.perf_counter() - t0, cpu() - c0
                print(f"round {round_ + 1}, {label}: {nodes} node states, wall {wall:.2f} s,"
                      f" client CPU {used:.2f} s, load {os.getloadavg()[0]:.1f}")  # fmt: skip
        await conn.close()
    finally:
        await admin.execute(f"drop database {name}")
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--nodes", type=int, default=100_000)
    args = parser.parse_args()
    asyncio.run(main(args.dsn, args.nodes))
