"""The big writes (a city's inventory, every node's loss history): the stored topology
follows the loaded one, and a COPY of many rows lets the event loop run between slices
(real PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from outagemon import config
from outagemon.core import topology
from outagemon.core.directory import Directory
from outagemon.db import migrate, store
from outagemon.db.writer import Writer
from outagemon.metrics import Registry
from outagemon.monitor import Monitor


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


async def test_a_copy_of_many_rows_reads_them_a_slice_at_a_time_between_loop_steps(
    fresh_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every node's loss history of a city is one COPY: its rows are read (and made) a
    slice a step of the event loop, so whatever else waits on it runs in between."""
    await migrate.migrate(fresh_db)
    ids = [f"sw-{i}" for i in range(5_000)]
    monkeypatch.setattr(store, "COPY_SLICE", 100)
    steps = 0
    read_at: list[int] = []  # the loop's step count when each row was read

    async def other_work() -> None:
        nonlocal steps
        while True:
            steps += 1
            await asyncio.sleep(0)

    def rows() -> Iterator[tuple[str, float, float]]:
        for i in ids:
            read_at.append(steps)
            yield i, 100.0, 1.0

    conn = await asyncpg.connect(fresh_db)
    ticking = asyncio.create_task(other_work())
    try:
        async with conn.transaction():
            await store.save_nodes(conn, nodes(*ids))
        async with conn.transaction():
            await store.save_histories(conn, rows())
        stored = await conn.fetchval("select count(*) from node_state where history_n = 100")
    finally:
        ticking.cancel()
        await conn.close()
    assert stored == len(ids)
    assert len(set(read_at)) >= len(ids) // 100  # 50 slices, each in a step of its own


TOWN = """
nodes:
  - {id: core, kind: core, ip: 127.0.0.2}
  - {id: sw-1, kind: access, ip: 127.0.0.4, parents: [core]}
  - {id: sw-2, kind: access, ip: 127.0.0.5, parents: [core]}
"""


def test_a_history_save_reads_its_rows_as_written_and_none_after_a_reload_replaced_them() -> None:
    """The loss histories are read when the write is made (nothing copied on the loop at
    the save); a reload before it leaves them to the next save, whose topology's nodes
    are in the database by then (its inventory is queued before)."""
    topo = topology.parse_text(TOWN, Path("t.yaml"))
    cfg = config.parse("", Path("outagemon.toml"))
    writer = Writer(None, 1000, Registry())
    monitor = Monitor(cfg, Directory(topo, []), Registry(), writer)
    for node in ("core", "sw-1", "sw-2"):
        monitor.correlator.observe(node, node != "sw-2", 1000.0)
    monitor.save_history()
    rows = writer._latest["history"][1]
    monitor.correlator.observe("core", True, 1010.0)  # after the save, before the write
    written = {node: (n, lost) for node, n, lost in rows()}
    states = monitor.correlator.states
    assert written == {node: (ns.n, ns.lost) for node, ns in states.items()}
    assert set(written) == {"core", "sw-1", "sw-2"} and written["core"][0] == 2.0 - 1 / 500
    monitor.set_directory(Directory(topology.parse_text(TOWN, Path("t.yaml")), []))
    assert list(rows()) == []
