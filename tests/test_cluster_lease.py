"""The leader's lease on a real PostgreSQL: one leader at a time, a take-over once the
leader stops renewing, a leader that cannot renew stops deciding by its own clock, and a
write decided under an epoch that no longer holds is refused (fenced), counted, never
retried, and makes its node step down. Also: [cluster] in the config, and the multi-host
DSN that follows a promoted primary."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from outagemon import config
from outagemon.cluster.lease import Leadership, Role, StepDown
from outagemon.db import migrate, store
from outagemon.db.writer import Op, Writer
from outagemon.errors import ConfigError
from outagemon.metrics import Registry


@pytest.fixture
async def pool(fresh_db: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate.migrate(fresh_db)
    p = await asyncpg.create_pool(fresh_db, min_size=1, max_size=6, command_timeout=5.0)
    assert p is not None
    await p.execute("create table t (x int primary key)")
    yield p
    await p.close()


async def wait_for(what: str, condition: Callable[[], object], within: float = 10.0) -> float:
    """Seconds it took for `condition` to hold; fails naming `what` after `within`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            raise AssertionError(f"{what}: not within {within} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def insert(x: int) -> Op:
    async def op(conn: store.Conn) -> None:
        await conn.execute("insert into t (x) values ($1)", x)

    return op


async def nothing(epoch: int) -> None:
    return None


async def expire(pool: asyncpg.Pool) -> None:
    """The lease runs out on the database's clock (as if its holder stopped renewing)."""
    await pool.execute("update cluster_lease set expires_at = now() - interval '1 second'")


# -- config ----------------------------------------------------------------------------


def test_no_cluster_section_is_a_single_host() -> None:
    cfg = config.parse('[database]\ndsn = "postgresql://om@db/om"\n', Path("/etc/om.toml"))
    assert cfg.cluster == config.ClusterConfig()
    assert not cfg.cluster.enabled


def test_a_cluster_section_is_read_and_the_node_defaults_to_the_host_name() -> None:
    text = '[database]\ndsn = "postgresql://om@db1,db2/om"\n[cluster]\n'
    cfg = config.parse(text + 'node = "noc-1"\nlease = 3\n', Path("/etc/om.toml"))
    assert (cfg.cluster.enabled, cfg.cluster.node, cfg.cluster.lease) == (True, "noc-1", 3.0)
    cfg = config.parse(text, Path("/etc/om.toml"))
    assert cfg.cluster.enabled and cfg.cluster.node and cfg.cluster.lease == 10.0


def test_bad_cluster_values_are_named() -> None:
    with pytest.raises(ConfigError) as info:
        config.parse('[cluster]\nnode = "noc 1"\nlease = 0.2\nleader = true\n',
                     Path("/etc/om.toml"))  # fmt: skip
    text = "\n".join(info.value.problems)
    assert "[cluster] node must be at most 63 letters" in text
    assert "[cluster] lease must be from 1 to 3600 seconds, not 0.2" in text
    assert "unknown key [cluster] 'leader'" in text
    assert "[cluster] needs [database] dsn" in text


# -- the lease row -----------------------------------------------------------------------


async def test_the_epoch_moves_only_when_the_lease_changes_hands_or_lapses(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        assert await store.take_lease(conn, "a", 5) == 1
        assert await store.take_lease(conn, "a", 5) == 1, "a renewal keeps the epoch"
        assert await store.take_lease(conn, "b", 5) is None, "b waits while a holds it"
        row = await store.read_lease(conn)
        assert row is not None and (row["holder"], row["epoch"]) == ("a", 1)
        assert 4 < row["remaining"] <= 5
        await expire(pool)
        assert await store.take_lease(conn, "b", 5) == 2
        assert not await store.holds_lease(conn, 1, "a")
        assert await store.holds_lease(conn, 2, "b")
        await expire(pool)
        assert await store.take_lease(conn, "b", 5) == 3, "a lapse is a new term"


async def test_one_leads_the_other_stands_by_and_takes_over_when_renewals_stop(
    pool: asyncpg.Pool,
) -> None:
    lease = 1.5
    a, b = Leadership("a", lease, Registry()), Leadership("b", lease, Registry())
    taken: list[tuple[str, int]] = []

    def noting(name: str) -> Callable[[int], Awaitable[None]]:
        async def on_lead(epoch: int) -> None:
            taken.append((name, epoch))

        return on_lead

    run_a = asyncio.create_task(a.run(pool, noting("a")))
    await wait_for("a leads", lambda: a.role is Role.LEADER)
    run_b = asyncio.create_task(b.run(pool, noting("b")))
    try:
        await wait_for("b sees a lead", lambda: b.leader == "a")
        assert b.role is Role.STANDBY and b.deciding() is None and not b.serving
        assert b.not_leading() == "this node stands by; a leads: write there."
        assert a.deciding() == 1 and a.serving and a.not_leading() is None
        run_a.cancel()  # a stops renewing: paused, cut off, or its process gone
        stopped = time.monotonic()
        await asyncio.gather(run_a, return_exceptions=True)
        # a gives up by its own clock before b may begin (b waits for the database's).
        await wait_for("a stops deciding", lambda: a.deciding() is None, within=lease + 1)
        a_gave_up = time.monotonic() - stopped
        await wait_for("b leads", lambda: b.role is Role.LEADER, within=lease + lease / 3 + 2)
        b_began = time.monotonic() - stopped
        assert a_gave_up < b_began and a_gave_up <= lease
        assert b.epoch == 2 and b.deciding() == 2
        await wait_for("b has taken the incidents up", lambda: b.serving)
        assert not a.serving and a.not_leading() is not None
        assert taken == [("a", 1), ("b", 2)]
        metrics = a._stepdowns  # the counter /metrics shows
        assert metrics.get(reason=StepDown.EXPIRED.value) == 1
    finally:
        run_b.cancel()
        await asyncio.gather(run_b, return_exceptions=True)


async def test_a_write_decided_under_an_old_epoch_is_fenced_counted_and_steps_down(
    pool: asyncpg.Pool,
) -> None:
    # a's own clock stands still: it believes it leads, as a paused process does when it
    # wakes up, before it has looked at a clock.
    metrics = Registry()
    a = Leadership("a", 2.0, metrics, monotonic=lambda: 100.0)
    run_a = asyncio.create_task(a.run(pool, nothing))
    await wait_for("a leads", lambda: a.role is Role.LEADER)
    run_a.cancel()
    await asyncio.gather(run_a, return_exceptions=True)
    writer = Writer(pool, 1000, metrics)
    writer.fence = a
    dropped: list[int] = []
    a.on_step_down(lambda epoch, reason: dropped.append(writer.drop_epoch(epoch)))
    a.on_step_down(lambda epoch, reason: a.dropped(dropped[-1]))
    task = asyncio.create_task(writer.run())
    try:
        writer.submit("still-leader", insert(1), epoch=1)
        assert await writer.drain(10)
        await expire(pool)
        async with pool.acquire() as conn:
            assert await store.take_lease(conn, "b", 30) == 2  # b took over meanwhile
        assert a.deciding() == 1, "a does not know yet"
        writer.pool = None  # hold the queue while a queues three writes under epoch 1
        writer.submit("fenced", insert(2), epoch=1, precious=True)
        writer.submit("queued-behind", insert(3), epoch=1, precious=True)
        writer.submit("not-an-incident", insert(4))
        writer.attach(pool)
        assert await writer.drain(10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    rows = sorted(r["x"] for r in await pool.fetch("select x from t"))
    assert rows == [1, 4], "no write of the old epoch lands; others go on"
    fenced = metrics.counter("outagemon_cluster_fenced_writes_total", "")
    assert fenced.get(how="refused") == 1, "one refused, the rest dropped unmade: never retried"
    assert fenced.get(how="dropped") == 1 and dropped == [1]
    assert a.role is Role.STANDBY and a.epoch is None and a.deciding() is None
    assert a._stepdowns.get(reason=StepDown.FENCED.value) == 1
    assert metrics.gauge("outagemon_db_failed_total", "").get() == 0


async def test_a_standbys_metrics_show_its_role_the_epoch_and_the_lease_age(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        assert await store.take_lease(conn, "a", 30) == 1
    metrics = Registry()
    b = Leadership("b", 3.0, metrics)
    run_b = asyncio.create_task(b.run(pool, nothing))
    try:
        await wait_for("b sees a", lambda: b.leader == "a")
        text = metrics.render()
    finally:
        run_b.cancel()
        await asyncio.gather(run_b, return_exceptions=True)
    assert 'outagemon_cluster_role{role="standby"} 1' in text
    assert 'outagemon_cluster_role{role="leader"} 0' in text
    assert "outagemon_cluster_epoch 1" in text
    age = next(line for line in text.splitlines()
               if line.startswith("outagemon_cluster_lease_age_seconds "))  # fmt: skip
    assert 0 <= float(age.split()[1]) < 3


# -- the database's address ------------------------------------------------------------


async def test_a_multi_host_dsn_reaches_the_primary_when_the_first_host_is_down(
    fresh_db: str,
) -> None:
    """What a Patroni pair looks like to outagemon: two hosts in one DSN, and
    target_session_attrs=read-write picks the one that takes writes."""
    base, _, name = fresh_db.rpartition("/")
    scheme, _, hostport = base.partition("@")
    with_dead_first = f"{scheme}@127.0.0.1:1,{hostport}/{name}?target_session_attrs=read-write"
    pool = await store.connect(with_dead_first)
    try:
        assert await pool.fetchval("select not pg_is_in_recovery()")
    finally:
        await pool.close()
    with pytest.raises(Exception, match="target attribute"):
        await store.connect(f"{fresh_db}?target_session_attrs=read-only")
