"""Planned works that overran (their end passed, the place still cut off): what `since`
says while they are still works, and where the history splits planned works from the
outage; through the real HTTP interface (and a worker's replica) on a real PostgreSQL."""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, datetime

import aiohttp

from outagemon.core.incidents import Kind, Maintenance
from outagemon.db import store
from tests.test_history import get, history_world, load, m, minutes_of
from tests.world import restarted, worker, world


def _at(said: dict[str, str]) -> float:
    return datetime.fromisoformat(said["since"]).timestamp()


async def test_overrunning_works_say_since_their_start_until_they_are_an_outage(
    fresh_db: str,
) -> None:
    """sw-sad-5 fails 30 s into planned works: its callers hear of works since the works'
    start; once the works' end passed with the switch still down, `since` jumped to the
    switch's failure (a helpdesk tool saw the works start later than they did), and so
    did the workers' replica. It stays the works' start until the incident becomes an
    outage, then it is the works' end."""
    async with world(fresh_db) as w:
        began, ended = w.net.now, time.time() - 20  # the works' end: 20 s ago by /check's clock
        w.monitor.add_maintenance(Maintenance(1, "sw-sad-5", began, ended, "замена"), "noc")
        w.monitor.next_maintenance = 2
        w.run(30)
        w.net.fail("sw-sad-5")
        w.run(60)
        (inc,) = w.monitor.correlator.incidents.values()
        assert inc.since - began >= 30  # the switch failed inside the works
        w.run(time.time() - 5 - w.net.now)  # past the works' end, within resolve_hold
        over = await w.check(account="1007")
        assert over["status"] == "maintenance" and over["eta"] == "", over
        assert abs(_at(over) - began) < 1, over  # as before their end: the works' start
        await w.flushed()
        # A worker answers from the leader's writes (as the leader after a restart, its
        # incident without the works' end it was opened with).
        async with (
            worker(w, fresh_db) as server,
            aiohttp.ClientSession(headers=w.auth()) as http,
            http.get(server.make_url("/api/v1/check"), params={"account": "1007"}) as r,
        ):
            heard: dict[str, str] = await r.json()
        assert heard["status"] == "maintenance", heard
        assert abs(_at(heard) - began) < 1, heard
        w.run(90)  # past resolve_hold: an outage, heard since the works' end
        outage = await w.check(account="1007")
        assert outage["status"] == "outage", outage
        assert abs(_at(outage) - ended) < 1, outage


async def test_the_history_splits_overrunning_works_at_their_end(fresh_db: str) -> None:
    """Works 0-600 s, sw-sad-5 down from their start until 900 s: the history counted
    planned works until the works' end plus resolve_hold (660 s, when the incident became
    an outage) and the outage only from then, while callers heard it began at 600 s: a
    minute of outage billed as planned. It splits at the works' end, in each subscriber's
    answer and in the billing CSV alike."""
    async with history_world(fresh_db) as w:
        await load(w, w.runtime.directory, datetime.fromtimestamp(w.now, UTC))
        began = w.net.now
        w.monitor.add_maintenance(Maintenance(w.monitor.next_maintenance, "sw-sad-5", began,
                                              began + 600), "test")  # fmt: skip
        w.net.fail("sw-sad-5")
        w.run(900)
        w.net.repair("sw-sad-5")
        w.run(300)
        await w.flushed()
        async with w.pool.acquire() as conn:
            rows = await conn.fetch("select cause, started_at, ended_at from impact"
                                    " where node_id = 'sw-sad-5' order by started_at")  # fmt: skip
        assert [r["cause"] for r in rows] == ["maintenance", "outage"], rows
        split = began + 600
        assert abs(rows[0]["ended_at"].timestamp() - split) < 0.01, rows
        assert rows[1]["started_at"] == rows[0]["ended_at"], rows
        body = await minutes_of(w, "1007", began - 60, w.net.now + 60)
        # Planned: from the failure's detection to the works' end; outage: from their end
        # until the switch answered again (a probe interval or two after 900 s).
        assert 9.5 <= body["planned_minutes"] <= 10.0, body
        assert 5.0 <= body["outage_minutes"] <= 5.5, body
        period = {
            "from": datetime.fromtimestamp(began - 60, UTC).isoformat(),
            "to": datetime.fromtimestamp(w.net.now + 60, UTC).isoformat(),
        }
        status, text = await get(w, "/api/v1/reports/downtime", **period)
        assert status == 200, text
        (row,) = [r for r in csv.DictReader(io.StringIO(text)) if r["account"] == "1007"]
        assert float(row["planned_minutes"]) == body["planned_minutes"], (row, body)
        assert float(row["outage_minutes"]) == body["outage_minutes"], (row, body)


async def test_a_node_left_while_works_overran_is_outage_from_their_end(fresh_db: str) -> None:
    """The impact's kind change at the works' end (minute 40), written when the incident
    became an outage (minute 41): sw-sad-5 left the incident at 40.5, inside the overrun,
    so its row had already ended; its half minute past the works' end is outage too. A
    replayed write changes nothing."""
    async with history_world(fresh_db) as w:
        await load(w, w.runtime.directory, m(-10))
        async with w.pool.acquire() as conn:
            await store.insert_incident(conn, 9100, "maintenance", "agg-s", False, m(20), 0)
            await store.impact_open(conn, 9100, ["agg-s", "sw-sad-5"], "maintenance", m(20))
            await store.impact_set_nodes(conn, 9100, ["agg-s"], "maintenance", m(40.5))
            for _ in range(2):
                await store.impact_cause(conn, 9100, "outage", m(40))
            rows = await conn.fetch("select node_id, cause, started_at, ended_at from impact"
                                    " where incident_id = 9100"
                                    " order by node_id, started_at")  # fmt: skip
        assert [tuple(r) for r in rows] == [
            ("agg-s", "maintenance", m(20), m(40)),
            ("agg-s", "outage", m(40), None),
            ("sw-sad-5", "maintenance", m(20), m(40)),
            ("sw-sad-5", "outage", m(40), m(40.5)),
        ]


async def test_works_taken_up_after_a_restart_still_become_an_outage_at_their_end(
    fresh_db: str,
) -> None:
    """Works 0-400 s on sw-sad-5, down from their start; the monitor restarts inside the
    works (at 310 s) or after their end, inside the overrun (at 430 s): the incident it
    took up had lost the works' end it was opened with, never became an outage, and its
    callers heard the works take longer than planned until the switch answered. It
    becomes one `resolve_hold` after the works' end, heard since then, as without the
    restart."""
    for restart_at in (310, 430):
        async with history_world(fresh_db) as w:
            began = w.net.now
            w.monitor.add_maintenance(Maintenance(w.monitor.next_maintenance, "sw-sad-5",
                                                  began, began + 400), "test")  # fmt: skip
            w.net.fail("sw-sad-5")
            w.run(300)
            (inc,) = w.monitor.correlator.incidents.values()
            assert inc.kind is Kind.MAINTENANCE
            await w.flushed()
            async with restarted(w, began + restart_at) as again:
                assert again.taken == 1
                again.net.fail("sw-sad-5")
                while again.net.now < began + 480:  # the works' end and resolve_hold passed
                    again.run(10)
                (taken,) = again.monitor.correlator.incidents.values()
                (works,) = again.monitor.maintenance
            assert taken.id == inc.id and taken.kind is Kind.OUTAGE, (restart_at, taken)
            # The works' end on the new monitor's clock (stored times come back on it).
            assert taken.works_ended == works.ends_at, (restart_at, taken, works)
