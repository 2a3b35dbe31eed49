"""Defects noted in earlier sessions and left alone, each pinned by the behaviour it broke."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
import pytest

from outagemon import config, probecmd
from outagemon.cluster.relay import CallRelay
from outagemon.db import migrate, store
from outagemon.errors import ConfigError
from outagemon.metrics import Registry


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(text, Path("/etc/om.toml"))
    return info.value.problems


@pytest.mark.parametrize("value", ["0.0005", "1e-6", "0.000999"])
def test_a_probe_timeout_shorter_than_a_millisecond_is_refused_saying_why(value: str) -> None:
    (problem,) = _problems(f"[probe]\ninterval = 1\ntimeout = {value}\n")
    assert problem.startswith("/etc/om.toml: [probe] timeout must be from 0.001 (1 ms: "), problem
    assert "whole milliseconds" in problem and problem.endswith(f", not {float(value)!r}."), problem


def test_the_probe_timeout_bound_is_the_probe_commands() -> None:
    # `outagemon probe -t` refuses below MIN_TIMEOUT_MS for the same engine's reason.
    assert config.PROBE_TIMEOUT_MIN * 1000 == probecmd.MIN_TIMEOUT_MS
    accepted = config.parse("[probe]\ninterval = 1\ntimeout = 0.001\n", Path("/etc/om.toml"))
    assert accepted.probe.timeout == 0.001


# -- the calls relay: a standby's write whose commit went unanswered ----------------------


class LostCommit(asyncpg.Connection):
    """A connection whose next COMMIT's answer does not come in time: the commit is made
    first ("after") or never asked for ("before"), then the client waits, as it waits for
    an answer lost on a slow or broken network, until its timeout cancels it."""

    armed: ClassVar[str] = ""

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> str:
        if query == "COMMIT;" and LostCommit.armed:
            when, LostCommit.armed = LostCommit.armed, ""
            if when == "after":
                await super().execute(query, *args, **kwargs)
            await asyncio.sleep(3600)
        result: str = await super().execute(query, *args, **kwargs)
        return result


async def _relay_world(dsn: str) -> tuple[asyncpg.Pool, asyncpg.Pool, int]:
    """The database with incident 7 open, node a's lease, the leader's pool and the
    standby's (whose commits can be made to go unanswered)."""
    await migrate.migrate(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4, command_timeout=5.0)
    standby = await asyncpg.create_pool(dsn, min_size=1, max_size=2, command_timeout=5.0,
                                        connection_class=LostCommit)  # fmt: skip
    assert pool is not None and standby is not None
    await pool.execute("insert into node (id, kind) values ('sw-1', 'switch')")
    await pool.execute("insert into incident (id, root_node, kind, opened_at, state)"
                       " values (7, 'sw-1', 'outage', now(), 'open')")  # fmt: skip
    async with pool.acquire() as conn:
        epoch = await store.take_lease(conn, "a", 10.0)
    assert epoch is not None
    return pool, standby, epoch


async def _send_until_settled(relay: CallRelay, pool: asyncpg.Pool) -> None:
    for _ in range(50):
        await relay.send(pool)
        if not relay.unsure:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the unanswered write was never settled: {relay.unsure}")


async def test_a_relayed_write_committed_but_unanswered_is_counted_once(fresh_db: str) -> None:
    """A standby's write that the database committed but whose answer came too late is not
    written again: the leader adds its calls (and hands its records on) once."""
    pool, standby, epoch = await _relay_world(fresh_db)
    try:
        a, b = CallRelay("a", Registry()), CallRelay("b", Registry())
        b.count({7: 3})
        b.record("seg-1", "b-1", "k1", "ivr", "ok", "")
        LostCommit.armed = "after"
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):  # as the daemon's relay loop bounds a send
                await b.send(standby)
        # The database has it, though the standby heard nothing.
        assert await pool.fetchval("select sum(calls) from cluster_call_count") == 3
        b.count({7: 2})  # answered since
        await _send_until_settled(b, standby)
        taken = await a.take(pool, epoch, "a")
        assert taken.counts == {7: 5}
        assert [rec for _, rec in taken.records] == [("seg-1", "b-1", "k1", "ivr", "ok", "")]
        assert await pool.fetchval("select calls from incident where id = 7") == 5
        assert await pool.fetchval("select sum(calls) from call_minute where incident_id = 7") == 5
    finally:
        LostCommit.armed = ""
        await standby.close()
        await pool.close()


async def test_a_relayed_write_cut_before_its_commit_is_written_again(fresh_db: str) -> None:
    """A standby's write cut off before its commit was asked for is not lost: its calls
    are written with the next, and counted once."""
    pool, standby, epoch = await _relay_world(fresh_db)
    try:
        a, b = CallRelay("a", Registry()), CallRelay("b", Registry())
        b.count({7: 3})
        b.record("seg-1", "b-1", "k1", "ivr", "ok", "")
        LostCommit.armed = "before"
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                await b.send(standby)
        b.count({7: 2})
        await _send_until_settled(b, standby)
        await _send_until_settled(b, standby)  # what was set aside, rolled back, goes now
        assert (b.counts, b.records, b.unsure) == ({}, [], [])
        taken = await a.take(pool, epoch, "a")
        assert taken.counts == {7: 5}
        assert [rec for _, rec in taken.records] == [("seg-1", "b-1", "k1", "ivr", "ok", "")]
        assert await pool.fetchval("select calls from incident where id = 7") == 5
    finally:
        LostCommit.armed = ""
        await standby.close()
        await pool.close()
