"""Defects noted in earlier sessions and left alone, each pinned by the behaviour it broke."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
import pytest

from outagemon import config, probecmd
from outagemon.cluster.relay import CallRelay
from outagemon.core import figures
from outagemon.core.figures import Stored
from outagemon.db import migrate, store
from outagemon.errors import ConfigError
from outagemon.metrics import Registry
from tests.test_history import history_world, load
from tests.world import World


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


async def test_a_take_committed_but_unanswered_hands_its_calls_on_once(fresh_db: str) -> None:
    """The leader's take that the database committed but whose answer came too late: its
    counts and records are handed to the leader's monitor at the next take, once (the
    database added the counts once, in that transaction)."""
    await migrate.migrate(fresh_db)
    plain = await asyncpg.create_pool(fresh_db, min_size=1, max_size=2, command_timeout=5.0)
    pool = await asyncpg.create_pool(fresh_db, min_size=1, max_size=2, command_timeout=5.0,
                                     connection_class=LostCommit)  # fmt: skip
    assert pool is not None and plain is not None
    try:
        await plain.execute("insert into node (id, kind) values ('sw-1', 'switch')")
        await plain.execute("insert into incident (id, root_node, kind, opened_at, state)"
                            " values (7, 'sw-1', 'outage', now(), 'open')")  # fmt: skip
        async with plain.acquire() as conn:
            epoch = await store.take_lease(conn, "a", 10.0)
        assert epoch is not None
        a, b = CallRelay("a", Registry()), CallRelay("b", Registry())
        b.count({7: 3})
        b.record("seg-1", "b-1", "k1", "ivr", "ok", "")
        await b.send(plain)
        LostCommit.armed = "after"
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                await a.take(pool, epoch, "a")
        assert await plain.fetchval("select calls from incident where id = 7") == 3
        assert await plain.fetchval("select count(*) from cluster_call_count") == 0
        handed: dict[int, int] = {}
        records = []
        for _ in range(50):
            taken = await a.take(pool, epoch, "a")
            for iid, n in taken.counts.items():
                handed[iid] = handed.get(iid, 0) + n
            records += [rec for _, rec in taken.records]
            if a.unsure_take is None:
                break
            await asyncio.sleep(0.1)
        again = await a.take(pool, epoch, "a")
        assert (handed, again.counts, again.records) == ({7: 3}, {}, [])
        assert records == [("seg-1", "b-1", "k1", "ivr", "ok", "")]
        assert await plain.fetchval("select calls from incident where id = 7") == 3
    finally:
        LostCommit.armed = ""
        await pool.close()
        await plain.close()


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


# -- a reopened incident: the time between its two faults was service ---------------------


async def _get(w: World, path: str, **params: str) -> Any:
    async with w.session.get(w.url(path), params=params, headers=w.auth()) as r:
        assert r.status == 200, await r.text()
        if r.content_type == "application/json":
            return await r.json()
        return await r.text()


def _gauge(text: str, series: str) -> float:
    (line,) = [x for x in text.splitlines() if x.startswith(series + " ")]
    return float(line.split()[1])


async def test_every_downtime_figure_of_a_reopened_incident_leaves_out_the_service_between(
    fresh_db: str,
) -> None:
    """A fault back within the reopen window reopens its incident: callers hear "since"
    the second fault, the subscriber's history has two breaks; the gauge of what open
    incidents cost, the incidents report (subscriber-hours, repair) and its calls'
    open-incident buckets agree that the time between them was service."""
    async with history_world(fresh_db) as w:
        await load(w, w.monitor.directory, datetime.fromtimestamp(w.now, UTC))
        w.net.fail("agg-s")
        w.run(60)
        (inc,) = w.monitor.correlator.incidents.values()
        iid, opened = inc.id, inc.opened_at
        w.net.repair("agg-s")
        w.run(30)
        w.run(90)  # resolve_hold is 60 s: resolved
        assert iid not in w.monitor.correlator.incidents
        first_end = inc.resolved_at
        assert first_end is not None
        w.run(400)  # service, within REOPEN_WITHIN of the resolution
        w.net.fail("agg-s")
        w.run(120)
        assert w.monitor.correlator.incidents[iid] is inc and inc.reopened_at is not None
        second_start = inc.reopened_at
        assert second_start - first_end > 300

        # What the open incident has cost so far: this fault's minutes, not the gap's.
        subscribers = w.monitor.subscribers_of(inc.nodes)
        lost = subscribers * (w.monitor.clock() - inc.since) / 60
        metrics = await _get(w, "/metrics")
        assert _gauge(metrics, 'outagemon_open_subscriber_minutes{kind="outage"}') == round(lost, 1)

        w.net.repair("agg-s")
        w.run(30)
        w.run(90)
        assert iid not in w.monitor.correlator.incidents and inc.resolved_at is not None
        down = (first_end - opened) + (inc.resolved_at - second_start)
        await w.flushed()

        period = {"from": datetime.fromtimestamp(w.now, UTC).isoformat(),
                  "to": datetime.now(UTC).isoformat()}  # fmt: skip
        report = await _get(w, "/api/v1/reports/incidents", **period)
        (row,) = [r for r in report["incidents"] if r["id"] == str(iid)]
        assert abs(row["repair_seconds"] - down) < 1, (row, down)
        stored = await w.pool.fetchval("select subscribers from incident where id = $1", iid)
        assert abs(row["subscriber_hours"] - stored * down / 3600) <= 0.002, (row, down)
        # Calls a minute against incidents open: none open in the minutes between.
        calls = await _get(w, "/api/v1/reports/calls", step="60", **period)
        between = [b for b in calls["buckets"]
                   if first_end < datetime.fromisoformat(b["at"]).timestamp()
                   and datetime.fromisoformat(b["at"]).timestamp() + 60 < second_start]  # fmt: skip
        assert len(between) >= 5 and all(b["open_incidents"] == 0 for b in between), between

        # The reports page draws it as two bars in one lane, one a fault.
        page = await _get(w, "/reports", range="24h")
        bars = re.findall(rf'<rect [^>]*data-incident="{iid}"[^>]*>', page)
        assert len(bars) == 2, bars
        drawn = [tuple(int(v) for v in re.findall(r'data-(?:opened|resolved)="(\d+)"', b))
                 for b in bars]  # fmt: skip
        assert drawn == [(int(opened), int(first_end)),
                         (int(second_start), int(inc.resolved_at))], drawn  # fmt: skip

        # The subscriber's own history (the impact record) says the same: two breaks.
        mine = await _get(w, "/api/v1/subscribers/1006/outages", **period)
        spans = [(datetime.fromisoformat(i["from"]).timestamp(),
                  datetime.fromisoformat(i["to"]).timestamp())
                 for i in mine["intervals"]]  # fmt: skip
        assert len(spans) == 2 and spans[1][0] - spans[0][1] > 300, mine
        # And the billing export (`outagemon report downtime` is the same COPY).
        csv_text = await _get(w, "/api/v1/reports/downtime", **period)
        (line,) = [x for x in csv_text.splitlines() if x.startswith("1006,")]
        assert float(line.split(",")[1]) == mine["outage_minutes"], (line, mine)
        assert abs(mine["outage_minutes"] - sum(b - a for a, b in spans) / 60) <= 0.1, mine


def test_a_reopened_incidents_response_figures_count_its_faults_only() -> None:
    """Opened at 1000, repaired at 2000 (as the first estimate said, given at 1300),
    failed again at 3000, repaired at 5000: down 3000 s of the 4000 s from opening to
    resolution, and no incident open between 2000 and 3000."""
    inc = Stored(7, "resolved", "outage", "sw", opened_at=1000, resolved_at=5000,
                 merged_into=None, subscribers=10, calls=30, first_eta_at=1300,
                 first_eta=2000, gaps=((2000, 3000),))  # fmt: skip
    said = figures.response(inc, now=9000)
    assert said["repair_seconds"] == 3000 and said["first_eta_seconds"] == 300
    assert said["eta_error_seconds"] == 0  # the estimate was for the first repair
    assert said["subscriber_hours"] == round(10 * 3000 / 3600, 3)
    series = figures.calls_per_minute([inc], 0, 6000, 1000, now=9000)
    assert [n for _, _, n in series] == [0, 1, 0, 1, 1, 0]
    # Its 30 calls spread over the 3000 s it was down: 10 a thousand seconds.
    assert [rate for _, rate, _ in series] == [0, 0.6, 0, 0.6, 0.6, 0]
    # An estimate given in the second fault is held against the final repair.
    later = Stored(8, "resolved", "outage", "sw", opened_at=1000, resolved_at=5000,
                   merged_into=None, subscribers=1, calls=0, first_eta_at=3500,
                   first_eta=4000, gaps=((2000, 3000),))  # fmt: skip
    assert figures.response(later, now=9000)["eta_error_seconds"] == 1000
    assert figures.response(later, now=9000)["first_eta_seconds"] == 1500


# -- the standby's cut-off of a stale lease holder (reviewed: README, cluster) ------------


LEASE = 5.0  # seconds: the test's lease, held at first, then let lapse


async def test_the_cut_off_spares_a_leader_whose_lease_holds_and_ends_a_lapsed_one(
    fresh_db: str,
) -> None:
    """A leader whose lease holds on the database's clock, mid-write (the lease row
    share-locked), is never ended: a standby's renewal does not wait for it and the
    cut-off finds nothing. Once that lease has lapsed with the write still open, the
    cut-off ends that session only (not one that merely read the lease), and the standby
    takes the lease under a new epoch; the write never lands."""
    await migrate.migrate(fresh_db)
    pool = await asyncpg.create_pool(fresh_db, min_size=1, max_size=4, command_timeout=5.0)
    assert pool is not None
    leader = await asyncpg.connect(fresh_db)
    reader = await asyncpg.connect(fresh_db)
    try:
        async with pool.acquire() as conn:
            epoch = await store.take_lease(conn, "a", LEASE)
        assert epoch is not None
        taken = asyncio.get_running_loop().time()
        write = leader.transaction()
        await write.start()
        assert await store.holds_lease(leader, epoch, "a")  # a fenced write under way
        await leader.execute("insert into node (id, kind) values ('sw-late', 'switch')")
        async with pool.acquire() as conn:
            async with asyncio.timeout(2):  # not held up by the leader's write
                assert await store.take_lease(conn, "b", 30.0) is None
            assert await store.cut_off_stale_holder(conn, "b") == 0
        assert await leader.fetchval("select 1") == 1  # alive, in its transaction
        assert asyncio.get_running_loop().time() - taken < LEASE - 1, "too slow to show it"
        # Its lease lapses (a paused leader) while the write is still open.
        await asyncio.sleep(LEASE + 0.5 - (asyncio.get_running_loop().time() - taken))
        reading = reader.transaction()
        await reading.start()
        assert await store.read_lease(reader) is not None
        async with pool.acquire() as conn:
            assert await store.cut_off_stale_holder(conn, "b") == 1
        alive = "select count(*) from pg_stat_activity where pid = $1"
        for _ in range(100):  # the end is delivered by a signal: soon, not at once
            if await pool.fetchval(alive, leader.get_server_pid()) == 0:
                break
            await asyncio.sleep(0.05)
        assert await pool.fetchval(alive, leader.get_server_pid()) == 0, "the holder lives"
        assert await reader.fetchval("select 1") == 1  # a reader is not a holder
        await reading.rollback()
        async with pool.acquire() as conn:
            assert await store.take_lease(conn, "b", 30.0) == epoch + 1
        assert await pool.fetchval("select count(*) from node where id = 'sw-late'") == 0
    finally:
        await leader.close()
        await reader.close()
        await pool.close()
