"""The big writes (a city's inventory, every node's loss history): the stored topology
follows the loaded one, and a COPY of many rows lets the event loop run between slices
(real PostgreSQL)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Iterator
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


def city_directory(tmp_path: Path, subscribers: int) -> Directory:
    from outagemon.core import directory
    from outagemon.sim import citygen

    city = citygen.sized(max(10, subscribers // 200), subscribers)
    loaded = directory.load(*city.write(tmp_path))
    assert loaded.problems == []
    return loaded.directory


async def write_all(writer: Writer, dsn: str, until: Awaitable[object] | None = None) -> None:
    """The database connected: the writer writes what it holds (and `until` is done)."""
    pool = await store.connect(dsn)
    writer.attach(pool)
    writing = asyncio.create_task(writer.run())
    try:
        if until is not None:
            await asyncio.wait_for(until, 30)
        assert await writer.drain(120)
    finally:
        writing.cancel()
        await pool.close()


async def stored(dsn: str) -> tuple[int, int, int]:
    """Nodes, subscribers and open subscriber periods in the database."""
    conn = await asyncpg.connect(dsn)
    try:
        return (await conn.fetchval("select count(*) from node where removed_at is null"),
                await conn.fetchval("select count(*) from subscriber"),
                await conn.fetchval("select count(*) from subscriber_period"
                                    " where valid_to is null"))  # fmt: skip
    finally:
        await conn.close()


async def test_a_citys_inventory_is_made_as_it_is_written_no_step_of_the_loop_holding_it(
    fresh_db: str, tmp_path: Path
) -> None:
    """Queued, the inventory makes none of its rows (at 50,000 subscribers that took
    ~200 ms of the loop at start, 3.9 s at a million); written, its rows are made a slice
    a step, and no row list is left to free at once."""
    import time

    from outagemon.db.journal import Journal

    await migrate.migrate(fresh_db)
    d = city_directory(tmp_path, 50_000)
    gc.collect()
    gc.freeze()  # as the daemon does after a load (else a full collection walks it all)
    writer = Writer(None, 1000, Registry())
    journal = Journal(writer)
    c0 = time.thread_time()
    journal.inventory(d)
    queued = time.thread_time() - c0
    steps: list[float] = []
    run = asyncio.Handle._run

    def timed(handle: asyncio.Handle) -> None:
        c0 = time.thread_time()
        run(handle)
        steps.append(time.thread_time() - c0)

    asyncio.Handle._run = timed  # type: ignore[method-assign,assignment]
    try:
        await write_all(writer, fresh_db)
    finally:
        asyncio.Handle._run = run  # type: ignore[method-assign]
        gc.unfreeze()
    assert await stored(fresh_db) == (len(d.topology.nodes), 50_000, 50_000)
    assert queued < 0.02, queued
    assert max(steps) < 0.05, sorted(steps)[-5:]  # ~2,000 rows a step: a few ms


async def test_a_copy_cut_off_midway_is_made_again_in_full(
    fresh_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database gone in the middle of the subscribers' COPY: the write is made again
    once it answers, every row of it (its rows made afresh from the directory)."""
    from outagemon.core.directory import Roster
    from outagemon.db.journal import Journal
    from tests.world import build_directory

    await migrate.migrate(fresh_db)
    d = build_directory()
    records = Roster.records
    reads = 0

    def cut_off(self: Roster) -> Iterator[tuple[object, ...]]:
        nonlocal reads
        reads += 1
        for i, row in enumerate(records(self)):
            if reads == 1 and i == 2:
                raise ConnectionResetError("the database went away")
            yield row

    monkeypatch.setattr(Roster, "records", cut_off)
    writer = Writer(None, 1000, Registry())
    Journal(writer).inventory(d)
    await write_all(writer, fresh_db)
    count = len(d.subscribers)
    assert reads >= 3 and count > 2  # cut off once, then the subscribers and their periods
    assert await stored(fresh_db) == (len(d.topology.nodes), count, count)


async def test_a_reload_frees_the_directory_it_replaced_once_its_queued_inventory_is_written(
    fresh_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inventory reads its rows from the directory as it writes them: while it waits
    for the database, a reload's release leaves that directory whole, and frees it after."""
    from outagemon import daemon
    from outagemon.db.journal import Journal
    from tests.world import build_directory

    monkeypatch.setattr(daemon, "RELEASE_GRACE", 0.0)
    await migrate.migrate(fresh_db)
    d = build_directory()
    nodes, count = len(d.topology.nodes), len(d.subscribers)
    writer = Writer(None, 1000, Registry())
    journal = Journal(writer)
    journal.inventory(d)
    release = asyncio.create_task(daemon._release([d], journal.read))
    await asyncio.sleep(0.2)
    assert not release.done() and len(d.topology.nodes.values()) == nodes  # whole
    await write_all(writer, fresh_db, until=release)
    assert await stored(fresh_db) == (nodes, count, count)
    assert not any(d.topology.nodes.shards)  # freed, after


async def stored_nodes(dsn: str, ids: list[str]) -> None:
    """Nodes `ids` in the stored topology, as an inventory stores them."""
    await migrate.migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await store.save_nodes(conn, nodes(*ids))
    finally:
        await conn.close()


async def written_down(writer: Writer, dsn: str) -> tuple[int, list[int]]:
    """The writer writes what it holds: the nodes then stored down, and how many of the
    interpreter's allocated blocks each step of the event loop freed meanwhile (with the
    cyclic collector off, only what the writes let go of is freed)."""
    import sys

    drops: list[int] = []

    async def other_work() -> None:
        before = sys.getallocatedblocks()
        while True:
            await asyncio.sleep(0)
            now = sys.getallocatedblocks()
            drops.append(before - now)
            before = now

    enabled = gc.isenabled()
    gc.disable()
    ticking = asyncio.create_task(other_work())
    try:
        await write_all(writer, dsn)
    finally:
        ticking.cancel()
        if enabled:
            gc.enable()
    conn = await asyncpg.connect(dsn)
    try:
        down = await conn.fetchval("select count(*) from node_state where state = 'down'")
    finally:
        await conn.close()
    return int(down), drops


async def test_a_mass_outages_node_states_are_let_go_of_a_slice_a_step_once_written(
    fresh_db: str,
) -> None:
    """The node states of a mass outage are one write; what it made to write them (the
    latest state of each node, the rows) is freed a slice a step of the event loop, not
    all at once as the write returns (100,000 nodes: one step of 15-29 ms CPU, loaded).
    Each step's freeing is seen as the drop in the interpreter's allocated blocks."""
    from outagemon.db.journal import Journal

    ids = [f"sw-{i}" for i in range(20_000)]
    await stored_nodes(fresh_db, ids)
    changes = [(node, "down", 1000.0 + i / 7, 0.5) for i, node in enumerate(ids)]
    writer = Writer(None, 1000, Registry())
    Journal(writer).node_states(changes, lambda: changes)
    down, drops = await written_down(writer, fresh_db)
    assert down == len(ids)
    # A row and the node's latest state: ~4 blocks a node, 80,000 at once before.
    assert max(drops) < 10_000, sorted(drops)[-5:]


async def test_a_cuts_transitions_held_for_a_retry_are_let_go_of_a_slice_a_step_once_written(
    fresh_db: str,
) -> None:
    """The correlator's transitions, held by the node states' write (made again from them
    at a retry), are emptied a slice a step once it is written, not freed all in the
    writer step that takes the next write (a million routers cut: one step of ~27 ms);
    every node's state is written. Each step's freeing is seen as the drop in allocated
    blocks."""
    from outagemon.db.journal import Journal

    ids = [f"cpe-{i}" for i in range(20_000)]
    await stored_nodes(fresh_db, ids)
    changes = [(node, "down", 1000.0 + i / 7) for i, node in enumerate(ids)]
    writer = Writer(None, 1000, Registry())
    journal = Journal(writer)
    journal.node_states(changes, lambda: ((n, s, at, 0.5) for n, s, at in changes))
    journal.blind(False)  # the next write
    down, drops = await written_down(writer, fresh_db)
    assert down == len(ids)
    assert changes == []  # let go of: the monitor holds them no more, so they are freed
    # A transition is a tuple and its time (2 blocks): emptied at once, 40,000 in a step.
    assert max(drops) < 10_000, sorted(drops)[-5:]


async def test_each_nodes_latest_state_wins_across_batches_waiting_and_within_one(
    fresh_db: str,
) -> None:
    """Batches of node states that waited for the database together are one write, each
    node's latest state in it (kept in parts by the node's hash: one dict of a million
    grew in single steps of 14-41 ms), whichever batch and row said it last."""
    from outagemon.db.journal import Journal

    ids = [f"cpe-{i}" for i in range(3_000)]
    await stored_nodes(fresh_db, ids)
    first = [(node, "down", 1000.0, 1.0) for node in ids]
    first += [(node, "up", 1001.0, 0.0) for node in ids[::3]]  # within the batch
    second = [(node, "unknown", 1002.0, 0.25) for node in ids[1::3]]
    writer = Writer(None, 1000, Registry())
    journal = Journal(writer)
    journal.node_states(first, lambda: first)
    journal.node_states(second, lambda: second)
    await write_all(writer, fresh_db)
    conn = await asyncpg.connect(fresh_db)
    try:
        stored = {r["node_id"]: (r["state"], r["changed_at"].timestamp(), r["loss"])
                  for r in await conn.fetch("select node_id, state, changed_at, loss"
                                            " from node_state")}  # fmt: skip
    finally:
        await conn.close()
    expected = {n: ("up", 1001.0, 0.0) if i % 3 == 0 else
                ("unknown", 1002.0, 0.25) if i % 3 == 1 else ("down", 1000.0, 1.0)
                for i, n in enumerate(ids)}  # fmt: skip
    assert stored == expected
    assert first == [] and second == []  # let go of, once written
