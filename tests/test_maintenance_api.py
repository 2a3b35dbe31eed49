"""Planned works listed, withdrawn and moved through the HTTP interface, against the app
with a real store: what callers hear follows at once, and it lasts (the database, the
journal file, a replica's copy)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from outagemon import config
from outagemon.core.incidents import Maintenance
from outagemon.db import durable, store
from outagemon.db.spool import Record
from outagemon.http.runtime import iso
from outagemon.metrics import Registry
from outagemon.monitor import Monitor
from tests.world import READ, WRITE, World, build_directory, worker, world


def future(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).astimezone().isoformat()


async def declare(w: World, node: str, starts: str, ends: str, reason: str = "") -> str:
    async with w.session.post(w.url("/api/v1/maintenance"), headers=w.auth(WRITE),
                              json={"node": node, "starts_at": starts, "ends_at": ends,
                                    "reason": reason}) as r:  # fmt: skip
        assert r.status == 201, await r.text()
        return str((await r.json())["id"])


async def listed(w: World, **params: str) -> list[dict[str, Any]]:
    async with w.session.get(w.url("/api/v1/maintenance"), params=params,
                             headers=w.auth(READ)) as r:  # fmt: skip
        assert r.status == 200, await r.text()
        found: list[dict[str, Any]] = (await r.json())["maintenance"]
        return found


async def change(w: World, wid: str, body: dict[str, Any], token: str = WRITE,
                 status: int = 200) -> dict[str, Any]:  # fmt: skip
    async with w.session.post(w.url(f"/api/v1/maintenance/{wid}"), headers=w.auth(token),
                              json=body) as r:  # fmt: skip
        assert r.status == status, await r.text()
        answer: dict[str, Any] = await r.json()
        return answer


async def test_planned_works_are_listed_with_who_declared_them(fresh_db: str) -> None:
    async with world(fresh_db) as w:
        later = await declare(w, "sw-lenina-5", future(60), future(120), "кабель")
        now = await declare(w, "agg-s", datetime.now(UTC).isoformat(), future(90), "замена")
        works = await listed(w)
        assert [x["id"] for x in works] == [now, later]
        assert works[0]["node"] == "agg-s" and works[0]["reason"] == "замена"
        assert works[0]["by"] == "noc" and works[0]["running"] is True
        assert works[1]["running"] is False and works[1]["ends_at"]
        assert [x["id"] for x in await listed(w, node="sw-lenina-5")] == [later]
        assert await listed(w, node="core") == []
        async with w.session.get(w.url("/api/v1/maintenance"), params={"nodes": "x"},
                                 headers=w.auth(READ)) as r:  # fmt: skip
            assert r.status == 400 and "unknown parameter" in (await r.json())["error"]


async def test_works_withdrawn_are_no_longer_heard_nor_listed_and_stay_withdrawn(
    fresh_db: str,
) -> None:
    async with world(fresh_db) as w:
        wid = await declare(w, "agg-s", datetime.now(UTC).isoformat(), future(120))
        assert (await w.check(account="1007"))["status"] == "maintenance"
        await change(w, wid, {"withdraw": True}, token=READ, status=403)
        answer = await change(w, wid, {"withdraw": True})
        assert answer["id"] == wid and answer["withdrawn"] is True
        said = await w.check(account="1007")
        assert (said["status"], said["eta"]) == ("ok", "")
        assert await listed(w) == []
        await change(w, wid, {"withdraw": True}, status=404)  # nothing left to withdraw
        await w.flushed()
        rows = await store.recent_maintenance(w.pool)
        assert [r for r in rows if r["ends_at"] > datetime.now(UTC)] == []
        again = Monitor(w.monitor.config, w.monitor.directory, Registry())
        await again.restore(w.pool)
        assert [m for m in again.maintenance if m.ends_at > time.time()] == []


async def test_an_end_moved_is_heard_by_callers_and_stored(fresh_db: str) -> None:
    async with world(fresh_db) as w:
        wid = await declare(w, "agg-s", datetime.now(UTC).isoformat(), future(120))
        for minutes in (30, 300):  # cut short, then extended
            end = future(minutes)
            answer = await change(w, wid, {"ends_at": end})
            expected = iso(datetime.fromisoformat(end).timestamp())
            assert answer["ends_at"] == expected
            said = await w.check(account="1007")
            assert (said["status"], said["eta"]) == ("maintenance", expected)
            assert [x["ends_at"] for x in await listed(w)] == [expected]
            await w.flushed()
            (row,) = await store.recent_maintenance(w.pool)
            assert iso(row["ends_at"].timestamp()) == expected


async def test_bad_changes_get_a_4xx_with_a_sentence(fresh_db: str) -> None:
    async with world(fresh_db) as w:
        wid = await declare(w, "agg-s", datetime.now(UTC).isoformat(), future(120))
        cases: list[tuple[str, dict[str, Any], int, str]] = [
            (wid, {}, 400, "give one of"),
            (wid, {"withdraw": True, "ends_at": future(5)}, 400, "give one of"),
            (wid, {"withdraw": False}, 400, "withdraw must be true"),
            (wid, {"reason": "x"}, 400, "unknown field"),
            (wid, {"ends_at": future(-5)}, 400, "withdraw"),
            (wid, {"ends_at": "tomorrow"}, 400, "ends_at"),
            (wid, {"ends_at": future(60 * 24 * 400)}, 400, "year"),
            ("999", {"withdraw": True}, 404, "no planned works 999"),
            ("x1", {"withdraw": True}, 404, "not a planned works id"),
        ]
        for target, body, status, words in cases:
            answer = await change(w, target, body, status=status)
            assert words in answer["error"], (body, answer)
        later = await declare(w, "sw-lenina-5", future(60), future(120))
        answer = await change(w, later, {"ends_at": future(30)}, status=400)
        assert "after the works' starts_at" in answer["error"]
        assert len(await listed(w)) == 2  # nothing was changed by the refusals


async def test_a_maintenance_incidents_eta_is_what_its_callers_hear(fresh_db: str) -> None:
    # Works running on sw-sad-5 and more booked to follow on: the incident and its
    # callers both say the chain's end.
    async with world(fresh_db) as w:
        now = w.net.now
        ends = time.time() + 7200
        w.monitor.add_maintenance(Maintenance(1, "sw-sad-5", now, ends - 3600), "noc")
        w.monitor.add_maintenance(Maintenance(2, "sw-sad-5", ends - 3600, ends), "noc")
        w.net.fail("sw-sad-5")
        w.run(60)
        said = await w.check(account="1007")
        assert said["status"] == "maintenance" and said["eta"] == iso(ends)
        async with w.session.get(w.url("/api/v1/incidents"), headers=w.auth(READ)) as r:
            (inc,) = (await r.json())["incidents"]
        assert (inc["id"], inc["kind"], inc["eta"]) == (said["incident_id"], "maintenance",
                                                        iso(ends))  # fmt: skip
        async with w.session.get(w.url(f"/api/v1/incidents/{inc['id']}"),
                                 headers=w.auth(READ)) as r:  # fmt: skip
            assert (await r.json())["eta"] == iso(ends)


async def works_withdrawn_over_a_failed_node(w: World) -> dict[str, Any]:
    """sw-sad-5 failed inside two hours of planned works, which are withdrawn; the
    next tick is run. What 1007 heard before the withdrawal."""
    w.monitor.add_maintenance(Maintenance(1, "sw-sad-5", w.net.now, time.time() + 7200),
                              "noc")  # fmt: skip
    w.monitor.next_maintenance = 2
    w.net.fail("sw-sad-5")
    w.run(60)
    before = await w.check(account="1007")
    assert before["status"] == "maintenance"
    await change(w, "1", {"withdraw": True})
    w.run(65)  # the next tick
    return before


async def test_works_withdrawn_over_a_failed_node_make_it_an_outage_with_a_timeline_note(
    fresh_db: str,
) -> None:
    async with world(fresh_db) as w:
        before = await works_withdrawn_over_a_failed_node(w)
        after = await w.check(account="1007")
        assert (after["status"], after["incident_id"]) == ("outage", before["incident_id"])
        await w.flushed()
        async with w.session.get(w.url(f"/api/v1/incidents/{after['incident_id']}"),
                                 headers=w.auth(READ)) as r:  # fmt: skip
            found = await r.json()
        (row,) = await store.recent_maintenance(w.pool)
        assert row["ends_at"].timestamp() < time.time() + 60  # cut to the withdrawal
        lines = [str(e) for e in found["timeline"]]
        assert any("planned works 1 on sw-sad-5 withdrawn" in line for line in lines), lines
        assert found["kind"] == "outage"


async def test_a_withdrawal_in_the_journal_file_outlives_a_restart() -> None:
    # Declared and withdrawn while the database was away: both only in the journal file.
    wall = time.time()
    records = [
        Record(1, "maintenance", durable.maintenance_record(
            Maintenance(7, "agg-s", wall - 60, wall + 3600, "замена"), "noc", 0.0)),
        Record(2, "maintenance", durable.maintenance_record(
            Maintenance(8, "agg-n", wall - 60, wall + 3600, "кабель"), "noc", 0.0)),
        Record(3, "maintenance_end", durable.maintenance_end_record(7, wall, True, "noc", wall)),
        Record(4, "maintenance_end", durable.maintenance_end_record(8, wall + 60, False, "noc",
                                                                    wall)),
    ]  # fmt: skip
    cfg = config.parse("", Path("/etc/outagemon/outagemon.toml"))
    monitor = Monitor(cfg, build_directory(), Registry())
    monitor.continue_from(durable.pending(records))
    works = {m.id: m for m in monitor.maintenance}
    assert 7 not in works or works[7].ends_at <= time.time()
    assert works[8].ends_at == wall + 60 and works[8].by == "noc"


async def test_a_replica_stops_saying_maintenance_once_works_are_withdrawn(
    fresh_db: str,
) -> None:
    # What a worker or a standby answers from: the leader's writes, through PostgreSQL.
    async with world(fresh_db) as w:
        wid = await declare(w, "agg-s", datetime.now(UTC).isoformat(), future(120))
        await w.flushed()
        async with (
            worker(w, fresh_db) as server,
            aiohttp.ClientSession(headers=w.auth(READ)) as http,
        ):

            async def heard() -> dict[str, str]:
                async with http.get(server.make_url("/api/v1/check"),
                                    params={"account": "1007"}) as r:  # fmt: skip
                    said: dict[str, str] = await r.json()
                    return said

            assert (await heard())["status"] == "maintenance"
            async with http.get(server.make_url("/api/v1/maintenance")) as r:
                assert [x["id"] for x in (await r.json())["maintenance"]] == [wid]
            await change(w, wid, {"withdraw": True})
            await w.flushed()
            deadline = time.monotonic() + 10
            while (await heard())["status"] == "maintenance":
                assert time.monotonic() < deadline, "the replica still says maintenance"
                await asyncio.sleep(0.05)
            async with http.post(
                server.make_url(f"/api/v1/maintenance/{wid}"),
                headers=w.auth(WRITE),
                json={"withdraw": True},
            ) as r:
                assert r.status == 409  # a replica takes no writes
