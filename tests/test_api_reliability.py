"""Issue 13 through the HTTP interface: out-of-range times and unstorable notes are a 400
before anything changes (finding 2, 7); an ETA is never rolled back with its note (7);
what the monitor keeps in memory stays bounded (9)."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta

import pytest

from outagemon.core.directory import Directory
from outagemon.core.incidents import Maintenance
from tests.world import WRITE, World, world


def future(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).astimezone().isoformat()


async def an_incident(w: World) -> int:
    w.net.fail("agg-s")
    w.run(60)
    (inc,) = w.monitor.correlator.incidents.values()
    return inc.id


@pytest.mark.parametrize(
    ("body", "sentence"),
    [
        ({"eta": "9999-12-31T23:59:59-14:00"}, "eta is more than a year ahead"),
        ({"eta": "0001-01-01T00:00:00+14:00"}, "eta is in the past"),
        ({"eta": future(60 * 24 * 400)}, "eta is more than a year ahead"),
        ({"note": "a\x00b"}, "note holds a NUL byte (U+0000) at character 2"),
        # The body is refused whole before its note is read (the security check on JSON).
        ({"note": "bad \ud800"}, "the body holds text that is not valid Unicode"),
        ({"eta": future(60), "note": "x\x1bz"}, "note holds a control character (U+001B)"),
    ],
)
async def test_an_out_of_range_time_or_unstorable_note_is_400_and_changes_nothing(
    fresh_db: str, body: dict[str, str], sentence: str
) -> None:
    async with world(fresh_db) as w:
        iid = await an_incident(w)
        async with w.session.post(w.url(f"/api/v1/incidents/{iid}"), json=body,
                                  headers=w.auth(WRITE)) as r:  # fmt: skip
            assert r.status == 400, await r.text()
            assert sentence in (await r.json())["error"]
        assert iid not in w.monitor.eta, "nothing was applied"
        assert len(w.monitor.writer or []) == 0 or await w.monitor.writer.drain(10)  # type: ignore[union-attr]
        # Everything that shows the incident still answers.
        a = await w.check(account="1007")
        assert a["status"] == "outage" and a["incident_id"] == str(iid)
        async with w.session.get(w.url("/api/v1/incidents"), headers=w.auth()) as r:
            assert r.status == 200
        async with w.session.get(w.url("/")) as r:
            assert r.status == 200


@pytest.mark.parametrize(
    ("starts", "ends", "sentence"),
    [
        ("0001-01-01T00:00:00+14:00", None, "starts_at is more than a day in the past"),
        (None, "9999-12-31T23:59:59-14:00", "ends_at is more than a year ahead"),
        ("2000-01-01T00:00:00Z", None, "starts_at is more than a day in the past"),
    ],
)
async def test_out_of_range_works_are_400_and_add_nothing(
    fresh_db: str, starts: str | None, ends: str | None, sentence: str
) -> None:
    async with world(fresh_db) as w:
        body = {"node": "sw-sad-5", "starts_at": starts or future(-5),
                "ends_at": ends or future(120)}  # fmt: skip
        async with w.session.post(w.url("/api/v1/maintenance"), json=body,
                                  headers=w.auth(WRITE)) as r:  # fmt: skip
            assert r.status == 400, await r.text()
            assert sentence in (await r.json())["error"]
        assert w.monitor.maintenance == []
        assert (await w.check(account="1007"))["status"] == "ok"


async def test_an_eta_is_kept_when_its_note_is_refused_by_the_database(fresh_db: str) -> None:
    """The ETA and the note are two writes: a note the database refuses (here a NUL that
    got past the API) takes nothing else with it."""
    async with world(fresh_db) as w:
        iid = await an_incident(w)
        eta = time.time() + 7200
        w.monitor.set_eta(iid, eta, "a\x00b", "noc")
        await w.flushed()
        stored = await w.pool.fetchval("select eta from incident where id = $1", iid)
        assert stored is not None and abs(stored.timestamp() - eta) < 1
        kinds = [r["kind"] for r in await w.pool.fetch(
            "select kind from incident_event where incident_id = $1", iid)]  # fmt: skip
        assert "eta" in kinds and "note" not in kinds


async def test_ended_works_are_pruned_and_estimates_and_calls_do_not_grow(fresh_db: str) -> None:
    """Finding 9: what ended is forgotten (after restored_for for incidents' estimates and
    call counts), so ticks and /check never scan a growing list."""
    async with world(fresh_db) as w:
        now = w.monitor.clock()
        for i in range(1, 501):
            w.monitor.add_maintenance(Maintenance(i, "sw-sad-1", now - 60, now + 30), "noc")
        iid = await an_incident(w)
        w.monitor.set_eta(iid, time.time() + 3600, "", "noc")
        await w.check(account="1007")
        assert w.monitor.calls.get(iid) == 1
        w.net.repair("agg-s")
        w.run(300)  # resolved (resolve_hold = 60), works ended
        assert w.monitor.correlator.incidents == {}
        assert w.monitor.maintenance == [], "ended works are pruned"
        assert w.monitor.correlator.maintenance == []
        w.run(3700)  # restored_for = 3600 has passed too
        assert iid not in w.monitor.eta and iid not in w.monitor.calls


async def test_a_subscriber_the_database_refuses_never_stops_the_nodes_or_incidents(
    fresh_db: str,
) -> None:
    """Finding 7: nodes and subscribers are two writes; a subscriber row that got past the
    loader (here a NUL made by hand) is refused alone, and incidents are still stored."""
    async with world(fresh_db) as w:
        await w.flushed()
        before = await w.pool.fetchval("select max(loaded_at) from node")
        await w.pool.execute("delete from subscriber")
        d = w.runtime.directory
        bad = dataclasses.replace(d.subscribers[0], flat="1\x00")
        w.monitor.journal.inventory(Directory(d.topology, [bad, *d.subscribers[1:]]))
        await w.flushed()
        saved = await w.pool.fetchval("select count(*) from node where loaded_at > $1", before)
        assert saved == len(d.topology), "the nodes were written again"
        failed = w.runtime.metrics.counter("outagemon_db_failed_total", "").get()
        assert failed == 1, "the subscribers' write alone was refused"
        assert await w.pool.fetchval("select count(*) from subscriber") == 0
        iid = await an_incident(w)
        await w.flushed()
        assert await w.pool.fetchval("select root_node from incident where id = $1", iid) == "agg-s"
