"""What callers and billing hear after a restart, and in edge cases: each a wrong answer
left alone by earlier sessions, pinned on a real PostgreSQL through the daemon's own
restart path (the fourteenth session's review)."""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from outagemon.core.incidents import Incident, Kind, Maintenance
from outagemon.db import store
from outagemon.db.journal import Journal
from outagemon.db.spool import Spool
from outagemon.db.writer import Writer
from outagemon.metrics import Registry
from outagemon.monitor import Monitor
from outagemon.sim.simnet import SimNet
from tests.test_api_callers import timeline
from tests.test_calls_api import NEIGHBOURS, post, three_callers_of_the_first_entrance
from tests.test_restart_taken_up import away, works_overran
from tests.test_suspicion_lifecycle_api import FAILING
from tests.test_writer import run_until_idle
from tests.world import World, restarted, world


async def test_a_write_replayed_at_a_restart_adds_no_second_timeline_line(
    fresh_db: str, tmp_path: Path
) -> None:
    """Works on sw-sad-5 overran: "Planned works ended ... an outage now". The database
    had each write, but the journal file never had their acknowledgements (the daemon
    killed between the commit and the acknowledgement): the next start makes every one
    of them again, as it must, and the timeline said each line twice."""
    async with world(fresh_db) as w:
        spool = Spool(tmp_path)
        spool.open()
        w.monitor.journal.spool = spool  # kept in the file; the world's writer acknowledges none
        inc, _ = works_overran(w.monitor, w.net, w.run, 300)
        w.monitor.journal.sync()
        before = [e["kind"] for e in await timeline(w, inc.id)]
        assert before.count("kind_changed") == 1, before
        spool.close()

        again = Spool(tmp_path)  # the next start
        replayed = again.open()
        kinds = Counter(r.kind for r in replayed.records)
        assert kinds["kind_changed"] == 1 and kinds["opened"] == 1, kinds
        writer = Writer(w.pool, 10_000, Registry(), spool=again)
        Journal(writer, again).replay(replayed.records)
        try:
            await run_until_idle(writer)
        finally:
            again.close()
        after = [e["kind"] for e in await timeline(w, inc.id)]
        assert after == before, (before, after)
        outbox = await w.pool.fetch("select event from alert_outbox where incident_id = $1"
                                    " order by revision", inc.id)  # fmt: skip
        assert [r["event"] for r in outbox].count("kind_changed") == 1, outbox


async def test_a_root_that_moved_up_is_taken_up_as_down_since_its_own_failure(
    fresh_db: str,
) -> None:
    """sw-sad-5 failed; five minutes later agg-s above it did too: the incident took agg-s
    as its root, its `since` still sw-sad-5's failure (its first callers' outage began
    then). After a restart agg-s was taken up as down since that older time, five minutes
    before it failed: what its failure is weighed with (children failing together, a
    split when it answers) read a time it never failed at. Its own failure is kept."""
    async with world(fresh_db) as w:
        inc, failed = moved_up(w.monitor, w.net, w.run)
        await w.flushed()
        async with restarted(w, w.net.now + 2) as again:
            (taken,) = again.monitor.correlator.incidents.values()
            assert (taken.id, taken.root) == (inc.id, "agg-s"), taken
            assert abs(taken.since - inc.since) < 1e-5  # its first callers' outage began then
            down_at = again.monitor.correlator.states["agg-s"].down_at
            assert abs(down_at - failed) < 1e-5, (down_at, failed, inc.since)


def moved_up(monitor: Monitor, net: SimNet, run: Callable[[float], None]) -> tuple[Incident, float]:
    """sw-sad-5 fails, agg-s above it five minutes later: the one incident, its root moved
    up to agg-s, and when agg-s failed."""
    net.fail("sw-sad-5")
    run(300)
    net.fail("agg-s")
    run(60)
    (inc,) = monitor.correlator.incidents.values()
    assert inc.root == "agg-s" and inc.nodes[0] == "agg-s", inc
    failed = monitor.correlator.states["agg-s"].down_at
    assert failed - inc.since > 250, (failed, inc.since)
    return inc, failed


async def test_the_page_says_the_probes_root_moved_up(fresh_db: str) -> None:
    """The incident's page said "Widened from sw-sad-5: more callers further up." of the
    probes' incident whose root moved up to agg-s: a suspicion's sentence (its root moves
    up as more callers call); no caller had anything to do with it."""
    async with world(fresh_db) as w:
        inc, _ = moved_up(w.monitor, w.net, w.run)
        await w.flushed()
        async with w.session.get(w.url(f"/incidents/{inc.id}"), headers=w.auth()) as r:
            page = html.unescape(await r.text())
        assert "Its root moved up from sw-sad-5: a failure above it cuts it off." in page
        assert "callers" not in page, page


def test_a_root_that_moved_up_keeps_its_own_failure_at_a_restart_from_the_file(
    tmp_path: Path,
) -> None:
    """As above, the database away: the journal file's incident keeps it too."""
    w = away(tmp_path)
    _, failed = moved_up(w.monitor, w.net, w.run)
    after = w.restarted(2)
    assert abs(after.correlator.states["agg-s"].down_at - failed) < 1e-5


@pytest.mark.parametrize("blip", [False, True])
async def test_a_router_that_answered_throughout_is_left_out_of_the_history_across_restarts(
    fresh_db: str, blip: bool
) -> None:
    """A confirmed suspicion at an entrance: 1004's own router answered from before it
    was raised to its end (1004 heard `ok` all along), so billing leaves 1004 out of it.
    The daemon restarted twice meanwhile: the routers' states start afresh at a restart,
    and the outage ended by the run after it named nobody spared; 1004 was billed its
    minutes. Still billed: 1002, whose router failed in it, and 1030, whom the probes
    cannot see; and 1004 too when its router failed for a minute between the restarts."""
    async with world(fresh_db, subscribers=NEIGHBOURS) as w:
        iid = await confirmed_at_the_first_entrance(w)
        w.net.fail(*FAILING)
        w.run(40)
        await w.flushed()
        async with restarted(w, w.net.now + 5) as first:
            first.net.fail(*FAILING)
            first.run(120)
            if blip:
                first.net.fail("cpe:1004")
                first.run(60)
                first.net.repair("cpe:1004")
                first.run(60)
            assert iid in first.monitor.watch.open
        async with restarted(w, first.net.now + 5) as second:
            second.net.fail(*FAILING)
            second.run(120)
            assert second.monitor.repaired(iid, "noc")
            second.run(5)
        accounts = {r["account"] for r in await billed(w, iid)}
        assert {"1002", "1030"} <= accounts and ("1004" in accounts) is blip, accounts


async def test_the_reports_count_the_subscribers_an_outage_cut_off_as_billing_does(
    fresh_db: str,
) -> None:
    """The same outage, no restart: billing left 1004 out, but the reports' row said
    the nine subscribers the entrance serves and their subscriber-hours, 1004's among
    them. The reports are of what was lost: those it cut off, as billing counts them."""
    async with world(fresh_db, subscribers=NEIGHBOURS) as w:
        iid = await confirmed_at_the_first_entrance(w)
        w.net.fail(*FAILING)
        w.run(120)
        assert w.monitor.repaired(iid, "noc")
        w.run(5)
        await w.flushed()
        by_account = {r["account"]: r for r in await billed(w, iid)}
        assert "1004" not in by_account and len(by_account) == 8, sorted(by_account)
        minutes = sum(float(r["outage_minutes"]) for r in by_account.values())
        w.runtime.reports = await store.connect(fresh_db, min_size=1, max_size=2)
        try:
            period = {"from": datetime.fromtimestamp(w.now, UTC).isoformat(),
                      "to": datetime.now(UTC).isoformat()}  # fmt: skip
            async with w.session.get(w.url("/api/v1/reports/incidents"), params=period,
                                     headers=w.auth()) as r:  # fmt: skip
                assert r.status == 200
                (row,) = [i for i in (await r.json())["incidents"] if i["id"] == str(iid)]
        finally:
            await w.runtime.reports.close()
        assert row["subscribers"] == 8, row
        assert abs(row["subscriber_hours"] - minutes / 60) <= 0.01, (row, minutes)


async def confirmed_at_the_first_entrance(w: World) -> int:
    """Three callers of the first entrance of пр-т Мира, 10 raise a suspicion; an
    engineer confirms it: its id. The history has the subscribers' periods."""
    await w.flushed()  # the inventory's nodes, then its subscribers' periods
    w.monitor.journal.inventory(w.monitor.directory, at=w.now)
    sus = await three_callers_of_the_first_entrance(w)
    assert (await post(w, sus["id"], {"confirm": True}))[0] == 200
    return int(sus["id"])


async def billed(w: World, iid: int) -> list[Any]:
    """The billing's rows (accounts' downtime) over the incident, which has ended."""
    row = await w.pool.fetchrow("select state, opened_at, resolved_at from incident"
                                " where id = $1", iid)  # fmt: skip
    assert row["state"] == "resolved", row
    start = row["opened_at"] - timedelta(minutes=1)
    end = row["resolved_at"] + timedelta(minutes=1)
    return list(await w.pool.fetch(store.DOWNTIME, start, end, end, 0))


async def test_an_incident_of_works_that_ended_is_an_outage_after_a_restart_under_later_works(
    fresh_db: str,
) -> None:
    """Works on sw-sad-5 end with it still down; other works on it begin 10 s later. The
    monitor restarts inside resolve_hold: the incident it took up found its works' end in
    the works covering it now, the later ones, and stayed maintenance to their end (15
    minutes more of "planned works"); without the restart it is an outage from its own
    works' end, as it is now."""
    async with world(fresh_db) as w:
        began = w.net.now
        ends = began + 300
        w.monitor.add_maintenance(Maintenance(1, "sw-sad-5", began - 60, ends, "cable"), "noc")
        w.monitor.add_maintenance(Maintenance(2, "sw-sad-5", ends + 10, ends + 900, "other"),
                                  "noc")  # fmt: skip
        w.net.fail("sw-sad-5")
        while w.net.now < ends + 20:
            w.run(5)
        (inc,) = w.monitor.correlator.incidents.values()
        assert inc.kind is Kind.MAINTENANCE, inc
        await w.flushed()
        async with restarted(w, w.net.now + 2) as again:
            again.net.fail("sw-sad-5")
            again.run(120)
            (taken,) = again.monitor.correlator.incidents.values()
            assert taken.id == inc.id and taken.kind is Kind.OUTAGE, taken
            assert taken.works_ended is not None and abs(taken.works_ended - ends) < 1e-5
