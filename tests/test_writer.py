"""The writer against a real PostgreSQL: a bad write is refused and the writer goes on,
a hung database is told apart from a slow write, latest-wins writes are coalesced, the
queue is bounded by bytes without ever dropping a precious write, and journal lines are
acknowledged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import asyncpg
import pytest

from outagemon.db import store
from outagemon.db.spool import Spool
from outagemon.db.writer import Op, Writer
from outagemon.metrics import Registry


@pytest.fixture
async def pool(fresh_db: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(fresh_db, min_size=1, max_size=4, command_timeout=1.0)
    assert p is not None
    await p.execute("create table t (x int primary key, y text)")
    await p.execute("create table child (x int references t (x))")
    yield p
    await p.close()


def insert(x: int, y: str = "") -> Op:
    async def op(conn: store.Conn) -> None:
        await conn.execute("insert into t (x, y) values ($1, $2)", x, y)

    return op


async def run_until_idle(writer: Writer, within: float = 15) -> None:
    task = asyncio.create_task(writer.run())
    try:
        assert await writer.drain(within), "the writer did not finish its queue"
        assert not task.done(), "the writer task ended"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_any_failing_write_is_refused_counted_and_the_writer_goes_on(
    pool: asyncpg.Pool,
) -> None:
    metrics = Registry()
    writer = Writer(pool, 1000, metrics)

    async def out_of_range(conn: store.Conn) -> None:
        # What an ETA of year 9999 at -14:00 did: a Python error, not a database one.
        datetime.fromtimestamp(253402300799 + 14 * 3600 + 10**12)

    async def foreign_key(conn: store.Conn) -> None:
        await conn.execute("insert into child (x) values (99)")

    async def nul_byte(conn: store.Conn) -> None:
        await conn.execute("insert into t (x, y) values (5, $1)", "a\x00b")

    writer.submit("one", insert(1))
    writer.submit("range", out_of_range)
    writer.submit("fk", foreign_key)
    writer.submit("nul", nul_byte)
    writer.submit("two", insert(2))
    await run_until_idle(writer)
    assert sorted(r["x"] for r in await pool.fetch("select x from t")) == [1, 2]
    assert metrics.counter("outagemon_db_failed_total", "").get() == 3
    assert metrics.counter("outagemon_db_writes_total", "").get() == 2
    assert len(writer) == 0


async def test_a_write_stuck_on_a_lock_is_refused_while_the_database_answers(
    pool: asyncpg.Pool,
) -> None:
    metrics = Registry()
    writer = Writer(pool, 1000, metrics)
    holder = await pool.acquire()
    tx = holder.transaction()
    await tx.start()
    await holder.execute("lock table t in access exclusive mode")
    try:
        writer.submit("stuck", insert(1))
        await asyncio.sleep(0)  # queued before the lock is let go
        task = asyncio.create_task(writer.run())
        # Three attempts of one second each (the pool's command_timeout), then refused.
        for _ in range(200):
            if metrics.counter("outagemon_db_failed_total", "").get() == 1:
                break
            await asyncio.sleep(0.05)
        assert metrics.counter("outagemon_db_failed_total", "").get() == 1
        assert writer.available, "the database answered: it was the write, not the database"
    finally:
        await tx.rollback()
        await pool.release(holder)
    writer.submit("after", insert(2))
    assert await writer.drain(10)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert [r["x"] for r in await pool.fetch("select x from t")] == [2]


async def test_latest_wins_writes_wait_as_one_and_keep_the_merged_values(
    pool: asyncpg.Pool,
) -> None:
    writer = Writer(None, 1000, Registry())  # not connected yet: everything waits

    def make(counts: dict[int, int]) -> Op:
        async def op(conn: store.Conn) -> None:
            await conn.executemany("insert into t (x, y) values ($1, $2)",
                                   [(k, str(v)) for k, v in counts.items()])  # fmt: skip

        return op

    def add(a: dict[int, int], b: dict[int, int]) -> dict[int, int]:
        return {k: a.get(k, 0) + b.get(k, 0) for k in a.keys() | b.keys()}

    for i in range(1000):
        writer.latest("calls", {i % 3: 1}, add, make)
    assert len(writer) == 1
    writer.attach(pool)
    await run_until_idle(writer)
    rows = {r["x"]: r["y"] for r in await pool.fetch("select x, y from t")}
    assert rows == {0: "334", 1: "333", 2: "333"}


async def test_a_coalesced_write_moves_after_the_writes_it_refers_to(pool: asyncpg.Pool) -> None:
    writer = Writer(None, 1000, Registry())

    def make(xs: list[int]) -> Op:
        async def op(conn: store.Conn) -> None:
            await conn.executemany("insert into child (x) values ($1)", [(x,) for x in xs])

        return op

    writer.submit("opened 1", insert(1))
    writer.latest("calls", [1], lambda a, b: a + b, make)
    writer.submit("opened 2", insert(2))  # a later incident the next calls name
    writer.latest("calls", [2], lambda a, b: a + b, make)
    writer.attach(pool)
    await run_until_idle(writer)
    assert sorted(r["x"] for r in await pool.fetch("select x from child")) == [1, 2]


async def test_the_queue_is_bounded_by_bytes_and_never_drops_precious_writes(
    pool: asyncpg.Pool,
) -> None:
    metrics = Registry()
    writer = Writer(None, 1_000_000, metrics, limit_bytes=100_000)
    for i in range(1, 51):
        writer.submit("opened", insert(i), size=1000, precious=True)
    for i in range(1000, 2000):
        writer.submit("history", insert(i), size=10_000)
    dropped = metrics.counter("outagemon_db_dropped_total", "").get()
    assert dropped >= 990
    assert metrics.gauge("outagemon_db_queue_bytes", "").get() <= 100_000
    # Precious writes alone may pass the bound: they are never dropped.
    for i in range(51, 201):
        writer.submit("opened", insert(i), size=1000, precious=True)
    writer.attach(pool)
    await run_until_idle(writer)
    stored = {r["x"] for r in await pool.fetch("select x from t")}
    assert set(range(1, 201)) <= stored


async def test_written_and_refused_journal_lines_are_acknowledged(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    spool = Spool(tmp_path)
    spool.open()
    writer = Writer(pool, 1000, Registry(), spool=spool)
    good = spool.append("opened", {"x": 1}, precious=True)
    bad = spool.append("opened", {"x": 1}, precious=True)  # the same id again: refused
    writer.submit("opened", insert(1), seq=good)
    writer.submit("opened", insert(1), seq=bad)
    await run_until_idle(writer)
    assert spool.pending == {}
    spool.close()
    again = Spool(tmp_path)
    assert again.open().records == []
    again.close()


async def test_a_database_that_goes_away_keeps_the_queue_and_comes_back(fresh_db: str) -> None:
    """The writer waits (not refuses) while the database cannot be reached."""
    pool = await asyncpg.create_pool(fresh_db, min_size=1, max_size=2)
    assert pool is not None
    await pool.execute("create table t (x int primary key, y text)")
    await pool.close()
    writer = Writer(pool, 1000, Registry())  # closed: every acquire fails
    writer.submit("one", insert(1))
    task = asyncio.create_task(writer.run())
    await asyncio.sleep(0.5)
    assert not writer.available and len(writer) == 1 and writer.last_error
    fresh = await asyncpg.create_pool(fresh_db, min_size=1, max_size=2)
    assert fresh is not None
    writer.attach(fresh)
    assert await writer.drain(10)
    assert writer.available
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert [r["x"] for r in await fresh.fetch("select x from t")] == [1]
    await fresh.close()


async def test_a_coalesced_write_that_cannot_be_made_is_refused_and_the_writer_goes_on(
    pool: asyncpg.Pool,
) -> None:
    metrics = Registry()
    writer = Writer(None, 1000, metrics)

    def make(values: list[float]) -> Op:
        datetime.fromtimestamp(values[0])  # year 10000: OverflowError/ValueError
        return insert(99)

    writer.latest("node_states", [1e12], lambda a, b: b, make)
    writer.submit("after", insert(1))
    writer.attach(pool)
    await run_until_idle(writer)
    assert [r["x"] for r in await pool.fetch("select x from t")] == [1]
    assert metrics.counter("outagemon_db_failed_total", "").get() == 1


def test_a_journal_record_no_write_can_hold_is_refused_and_acknowledged(tmp_path: Path) -> None:
    from outagemon.db.journal import Journal

    spool = Spool(tmp_path)
    spool.open()
    seq = spool.append("eta", {"incident": 1, "eta": 1e15, "by": "x", "at": 0.0}, True)
    assert seq is not None
    replayed = list(spool.pending.values())
    writer = Writer(None, 1000, Registry(), spool=spool)
    Journal(writer, spool).replay(replayed)
    assert len(writer) == 0 and spool.pending == {}
    spool.close()


async def test_the_inventory_is_never_dropped_whatever_its_size(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A city's inventory (~256 MB estimated at a million routers) was dropped as soon as
    # queued under the default 64 MiB bound: every later write naming a new node refused.
    from outagemon.db import journal
    from tests.world import build_directory

    monkeypatch.setattr(journal, "inventory_ops", lambda current, at: (insert(1), insert(2)))
    metrics = Registry()
    writer = Writer(None, 1_000_000, metrics, limit_bytes=100)
    journal.Journal(writer).inventory(build_directory())
    writer.submit("history", insert(3), size=50)  # still fits beside it: kept
    assert metrics.counter("outagemon_db_dropped_total", "").get() == 0
    writer.submit("history", insert(4), size=80)  # over the bound: the older history goes
    assert metrics.counter("outagemon_db_dropped_total", "").get() == 1
    writer.attach(pool)
    await run_until_idle(writer)
    assert {r["x"] for r in await pool.fetch("select x from t")} == {1, 2, 4}


async def test_a_latest_wins_writes_values_are_let_go_of_once_written_not_at_a_retry(
    pool: asyncpg.Pool,
) -> None:
    """`release` gets a write's values once it is over: not while a lost connection (its
    transaction rolled back) makes it again, so the retry writes them whole."""
    attempts = 0
    released: list[list[int]] = []

    def make(values: list[int]) -> Op:
        async def op(conn: store.Conn) -> None:
            nonlocal attempts
            attempts += 1
            for x in values:
                await conn.execute("insert into t (x) values ($1)", x)
            if attempts == 1:  # the server ends the session in the middle of the write
                await conn.execute("select pg_terminate_backend(pg_backend_pid())")

        return op

    async def release(values: list[int]) -> None:
        released.append(list(values))
        values.clear()

    writer = Writer(None, 1000, Registry())
    writer.latest("node_states", [1, 2], lambda a, b: a + b, make, release=release)
    writer.latest("node_states", [3], lambda a, b: a + b, make, release=release)
    writer.attach(pool)
    await run_until_idle(writer)
    assert sorted(r["x"] for r in await pool.fetch("select x from t")) == [1, 2, 3]
    assert attempts == 2 and released == [[1, 2, 3]]


async def test_a_write_once_over_is_kept_by_the_writer_no_more(pool: asyncpg.Pool) -> None:
    """What a write was made from is freed once it is written and the writer has gone on
    to the next: not kept for a drop the queue may need later (every tick's node states
    stayed, a million transitions of a cut among them, until the queue next filled)."""
    import gc
    import weakref

    class Values(list[int]):
        pass

    def make(values: Values) -> Op:
        async def op(conn: store.Conn) -> None:  # made again from them at a retry
            await conn.execute("insert into t (x) values ($1)", values[0])

        return op

    async def release(values: Values) -> None:
        pass  # the values themselves: what holds them is the question

    writer = Writer(pool, 1000, Registry())
    values = Values([1])
    gone = weakref.ref(values)
    writer.latest("node_states", values, lambda a, b: b, make, release=release)
    writer.submit("note", insert(2))
    del values
    task = asyncio.create_task(writer.run())
    try:
        assert await writer.drain(15)
        writer.submit("next", insert(3))
        assert await writer.drain(15)
        gc.collect()
        assert gone() is None  # the writer, still running, holds them no more
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert sorted(r["x"] for r in await pool.fetch("select x from t")) == [1, 2, 3]
