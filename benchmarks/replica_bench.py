"""What a core failure costs a worker's replica, in CPU (load-independent): the event
loop's longest steps and the collector's longest passes while it applies the leader's
writes for a 101,011-node incident.

    .venv/bin/python -m benchmarks.replica_bench [--city DIR] [--rewrites 6]

A real PostgreSQL database made for the run holds the generated city of
`cluster_http_bench` (sim/citygen.py; kept in --city) with every node up. A replica
(cluster/replica.py, as a worker runs it) reads it all; then another process writes what
the leader writes when the core dies: the states of every node, down, in pieces of
10,000 (one notification each), the incident with all 101,011 nodes, and `--rewrites`
later events that write the same node set again (as its "nodes" events do) with an
estimate. Nothing else runs on this process's event loop: each of its steps over 2 ms
of CPU (`time.thread_time`) is the replica's, and so is each pass of the collector.
Printed: the replica's CPU for the whole failure, its steps over 2 ms and 5 ms of CPU and
the longest, the collector's passes over 2 and 5 ms and the longest, and the wall time
until it had everything. Compare trees side by side in one session (a `git worktree`):
CPU figures vary less with the machine's load than wall ones, not at all with it never.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks.cluster_http_bench import ADMIN_DSN, city_dir, load
from outagemon.cluster.replica import Replica
from outagemon.core import directory
from outagemon.db import migrate, store
from outagemon.metrics import Registry

INCIDENT = 1
STATES_A_WRITE = 10_000


async def write_failure(dsn: str, city: str, rewrites: int) -> None:
    """The leader's writes for the core's failure (run in a process of its own)."""
    d = directory.load(Path(city) / "topology.yaml", Path(city) / "subscribers.csv").directory
    nodes = sorted(d.topology.nodes)
    conn = await store.connection(dsn)
    try:
        now = datetime.now(UTC)
        for start in range(0, len(nodes), STATES_A_WRITE):
            piece = nodes[start : start + STATES_A_WRITE]
            async with conn.transaction():
                await store.save_node_states(conn, [(n, "down", now, 1.0) for n in piece])
                await store.notify_replica(conn, "states", [])
        cut = ["core-1", *(n for n in nodes if n != "core-1")]
        async with conn.transaction():
            await store.insert_incident(conn, INCIDENT, "outage", "core-1", False, now, 96_000)
            await store.set_incident_nodes(conn, INCIDENT, cut)
            await store.notify_replica(conn, "incident", [INCIDENT])
        for i in range(rewrites):
            await asyncio.sleep(0.5)
            async with conn.transaction():
                await store.set_incident_nodes(conn, INCIDENT, cut)
                await store.set_incident_eta(conn, INCIDENT, now + timedelta(hours=1 + i))
                await store.notify_replica(conn, "incident", [INCIDENT])
    finally:
        await conn.close()


class Steps:
    """Each event-loop step and each pass of the collector over 2 ms of CPU, in this
    thread (the loop's)."""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.passes: list[tuple[int, float]] = []
        self.on = False
        self._gc_start = 0.0

    def install(self) -> None:
        from asyncio import events

        run = events.Handle._run
        clock = time.thread_time

        def timed(handle: Any) -> None:
            started = clock()
            run(handle)
            took = clock() - started
            if self.on and took > 0.002:
                self.steps.append(took)

        events.Handle._run = timed  # type: ignore[method-assign, assignment]

        def collected(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                self._gc_start = clock()
            elif self.on and clock() - self._gc_start > 0.002:
                self.passes.append((info["generation"], clock() - self._gc_start))

        gc.callbacks.append(collected)


async def run(args: argparse.Namespace) -> None:
    city = city_dir(args.city, 1000, 96_000)
    db = f"om_replica_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'create database "{db}"')
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + "/" + db
    try:
        await migrate.migrate(dsn)
        d = directory.load(city / "topology.yaml", city / "subscribers.csv").directory
        conn = await store.connection(dsn)
        nodes = [(n.id, n.kind, n.ip, n.name, list(n.parents)) for n in d.topology.nodes.values()]
        async with conn.transaction():
            await store.save_nodes(conn, nodes)
            await store.save_node_states(conn, [(n, "up", datetime.now(UTC), 0.0)
                                                for n in d.topology.nodes])  # fmt: skip
        await conn.close()
        gc.collect()
        gc.freeze()  # as a worker's directory: forked after a freeze
        steps = Steps()
        steps.install()
        metrics = Registry()
        replica = Replica(d, metrics, restored_for=3600)
        applied = metrics.counter("outagemon_replica_changes_total", "")
        task = asyncio.create_task(replica.run(dsn))
        while not replica.first_round_done:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        at_load = load()
        steps.on = True
        cpu = time.thread_time()
        started = time.monotonic()
        writer = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.replica_bench", "--write", dsn, "--city",
            str(city), "--rewrites", str(args.rewrites),
        )  # fmt: skip
        await writer.wait()
        inc = replica.correlator.incidents
        pieces = -(-len(d.topology.nodes) // STATES_A_WRITE)
        while (applied.get(kind="incident") < 1 + args.rewrites  # noqa: ASYNC110
               or applied.get(kind="states") < pieces):  # fmt: skip
            await asyncio.sleep(0.01)
        down = sum(1 for n in replica.correlator.states.values() if n.state.value == "down")
        wall = time.monotonic() - started
        used = time.thread_time() - cpu
        steps.on = False
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        s, p = steps.steps, [t for _, t in steps.passes]
        print(f"replica, core failure of {len(inc[INCIDENT].nodes):,} nodes ({down:,} down), "
              f"{args.rewrites} rewrites of the same set; load average {at_load}")  # fmt: skip
        print(f"  CPU {used * 1000:.0f} ms (until it had everything: {wall:.1f} s wall)")
        print(f"  loop steps > 2 ms CPU: {len(s)}, > 5 ms: {sum(t > 0.005 for t in s)}, longest "
              f"{max(s, default=0) * 1000:.1f} ms")  # fmt: skip
        print(f"  collector passes > 2 ms CPU: {len(p)}, > 5 ms: {sum(t > 0.005 for t in p)}, "
              f"longest {max(p, default=0) * 1000:.1f} ms (generations: "
              f"{sorted({g for g, _ in steps.passes})})")  # fmt: skip
    finally:
        await admin.execute(f'drop database if exists "{db}" with (force)')
        await admin.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--city", help="a directory with the 100,000-node city (kept)")
    ap.add_argument("--rewrites", type=int, default=6,
                    help="later events that write the same node set again")  # fmt: skip
    ap.add_argument("--write", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write:
        asyncio.run(write_failure(args.write, args.city, args.rewrites))
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
