"""Defects found by the twelfth new user's trial (a NOC engineer following the README and
the demo), each pinned through the real HTTP interface on a real PostgreSQL."""

from __future__ import annotations

import html
import time
from datetime import datetime

from outagemon.core.incidents import Maintenance
from outagemon.db import restore as restore_db
from tests.world import world


async def test_works_past_their_end_with_the_switch_still_down_never_say_the_end_time(
    fresh_db: str,
) -> None:
    """The demo's sw-4-5, down inside planned works that ended at 06:39:23: at 06:39:26
    its callers heard "идут плановые работы, они закончатся в 06:39" (a time behind
    them; `eta` was already blank), for as long as the maintenance incident stays one
    after the works' end (`resolve_hold`)."""
    async with world(fresh_db) as w:
        ended = time.time() - 20  # the works' planned end: 20 s ago by the check's clock
        w.monitor.add_maintenance(Maintenance(1, "sw-sad-5", w.net.now, ended, "замена"),
                                  "noc")  # fmt: skip
        w.monitor.next_maintenance = 2
        w.net.fail("sw-sad-5")
        w.run(60)
        # The monitor's clock up to 5 s ago: the works ended 15 s before it, well inside
        # the 60 s after which they become an outage; the switch is still down.
        w.run(time.time() - 5 - w.net.now)
        said = await w.check(account="1007")
        assert said["status"] == "maintenance" and said["incident_id"], said
        assert said["eta"] == ""
        assert "закончатся" not in said["message"], said["message"]
        assert said["message"] == (
            "По адресу улица Садовая, дом 5, квартира 9 идут плановые работы, они длятся "
            "дольше запланированного. Работы продолжаются, время восстановления уточняется."
        )
    async with world(fresh_db, language="en") as w:
        w.monitor.add_maintenance(Maintenance(1, "sw-sad-5", w.net.now, time.time() - 20,
                                              "works"), "noc")  # fmt: skip
        w.monitor.next_maintenance = 2
        w.net.fail("sw-sad-5")
        w.run(60)
        w.run(time.time() - 5 - w.net.now)
        said = await w.check(account="1007")
        assert said["status"] == "maintenance", said
        assert " end at " not in said["message"], said["message"]
        assert "taking longer than planned" in said["message"], said["message"]


async def test_the_repair_time_callers_hear_does_not_move_when_the_incident_resolves(
    fresh_db: str,
) -> None:
    """The demo's entrance cable, spliced: at 06:38:51 callers heard "Авария ... устранена
    в 06:38" (its root answered at 06:38:38), and at 06:39:07, once `resolve_hold` had
    passed, "устранена в 06:39": the same repair, two times, a minute apart."""
    async with world(fresh_db) as w:
        w.net.fail("sw-sad-5")
        w.run(60)
        assert (await w.check(account="1007"))["status"] == "outage"
        w.net.repair("sw-sad-5")
        w.run(20)
        recovering = await w.check(account="1007")
        assert recovering["status"] == "restored", recovering
        w.run(70)  # past resolve_hold (60 s): resolved
        inc = w.monitor.correlator.last_resolved("sw-sad-5")
        assert inc is not None
        assert inc.resolved_at is not None and inc.recovering_since is not None
        assert inc.resolved_at - inc.recovering_since >= 60  # another minute on the clock
        resolved = await w.check(account="1007")
        assert resolved["status"] == "restored", resolved
        assert resolved["incident_id"] == recovering["incident_id"]
        assert resolved["message"] == recovering["message"]
        # After a restart too: the resolved incidents taken up keep when service returned.
        await w.flushed()
        found = await restore_db.load(w.pool, w.monitor.directory.topology, 0.0)
        (taken,) = found.resolved
        assert taken.recovering_since is not None
        assert abs(taken.recovering_since - inc.recovering_since) < 0.01


async def test_planned_works_over_are_not_called_an_outage_fixed(fresh_db: str) -> None:
    """The demo's sw-4-5, down inside its planned works: its callers heard "идут плановые
    работы", and once the switch answered again "Авария по адресу бульвар Пушкина ...
    устранена" (an outage fixed) though they had been told of works, never of an outage."""
    for language, said in [
        ("ru", "Плановые работы по адресу улица Садовая, дом 5, квартира 9 завершены в "),
        ("en", "The planned works at улица Садовая, дом 5, квартира 9 ended at "),
    ]:
        async with world(fresh_db, language=language) as w:
            w.monitor.add_maintenance(Maintenance(1, "sw-sad-5", w.net.now, w.net.now + 120,
                                                  "замена"), "noc")  # fmt: skip
            w.monitor.next_maintenance = 2
            w.net.fail("sw-sad-5")
            w.run(60)
            assert (await w.check(account="1007"))["status"] == "maintenance"
            w.net.repair("sw-sad-5")
            w.run(70)  # the switch answers: recovering
            recovering = await w.check(account="1007")
            assert recovering["status"] == "restored", recovering
            assert recovering["message"].startswith(said), recovering["message"]
            w.run(70)  # resolved
            resolved = await w.check(account="1007")
            assert resolved["status"] == "restored", resolved
            assert resolved["message"] == recovering["message"]
            node = await w.check(node="sw-sad-5")
            assert node["message"].startswith(
                {"ru": "Плановые работы на узле sw-sad-5 завершены",
                 "en": "The planned works at node sw-sad-5 ended"}[language]
            ), node["message"]  # fmt: skip


async def test_the_page_says_when_a_reopened_fault_began_as_a_time(fresh_db: str) -> None:
    """The demo's incident page: "reopened · since: 2026-12-01T06:40:37.151182+00:00", the
    stored text with its microseconds, where every other line says 01.12 06:40."""
    async with world(fresh_db) as w:
        w.net.fail("sw-sad-5")
        w.run(60)
        w.net.repair("sw-sad-5")
        w.run(90)  # resolved
        w.net.fail("sw-sad-5")
        w.run(60)  # reopened, within 10 minutes
        iid = (await w.check(account="1007"))["incident_id"]
        await w.flushed()
        async with w.session.get(w.url(f"/api/v1/incidents/{iid}"), headers=w.auth()) as r:
            timeline = (await r.json())["timeline"]
        (since,) = [e["detail"]["since"] for e in timeline if e["kind"] == "reopened"]
        async with w.session.get(w.url(f"/incidents/{iid}"), headers=w.auth()) as r:
            page = html.unescape(await r.text())
        assert since not in page
        said = datetime.fromisoformat(since).astimezone().strftime("%d.%m.%Y %H:%M")
        assert f"Its root failed again: this fault since {said}." in page


async def test_works_that_overran_are_an_outage_from_their_end_as_callers_hear_it(
    fresh_db: str,
) -> None:
    """sw-sadovaya-3 down inside planned works to 09:58:34, then cut short: callers heard
    "идут плановые работы" until then, and a minute later "авария ... Неисправность
    началась в 09:57" (the switch's failure inside the works, when they had been told of
    works). The outage they hear of began when the works ended; after a restart too."""
    async with world(fresh_db) as w:
        w.monitor.add_maintenance(Maintenance(1, "sw-sad-5", w.net.now, w.net.now + 100,
                                              "замена"), "noc")  # fmt: skip
        w.monitor.next_maintenance = 2
        failed = w.net.now
        w.net.fail("sw-sad-5")
        w.run(60)
        assert (await w.check(account="1007"))["status"] == "maintenance"
        w.run(120)  # past the works' end and resolve_hold: an outage now
        said = await w.check(account="1007")
        assert said["status"] == "outage", said
        await w.flushed()
        async with w.session.get(w.url(f"/api/v1/incidents/{said['incident_id']}"),
                                 headers=w.auth()) as r:  # fmt: skip
            timeline = (await r.json())["timeline"]
        (ended,) = [e["detail"]["works_ended"] for e in timeline if e["kind"] == "kind_changed"]
        works_end = datetime.fromisoformat(ended).timestamp()
        assert abs(works_end - (failed + 100)) < 1
        assert abs(datetime.fromisoformat(said["since"]).timestamp() - works_end) < 1, said
        heard = datetime.fromtimestamp(works_end).strftime("%H:%M")
        assert f"Неисправность началась в {heard}." in said["message"], said["message"]
        # Taken up after a restart, as the replica of the HTTP workers reads it too.
        found = await restore_db.load(w.pool, w.monitor.directory.topology, 0.0)
        (inc,) = found.incidents
        assert inc.works_ended is not None and abs(inc.works_ended - works_end) < 0.01
        assert abs(inc.heard_since - works_end) < 0.01
        # Repaired: "restored" names the same start of the outage.
        w.net.repair("sw-sad-5")
        w.run(20)
        restored = await w.check(account="1007")
        assert (restored["status"], restored["since"]) == ("restored", said["since"]), restored


async def test_works_declared_by_the_monitor_itself_are_listed_with_who_declared_them(
    fresh_db: str,
) -> None:
    """The demo's planned works were listed with "by": "" by /api/v1/maintenance (the
    database had them as the demo's: a restart would have named it)."""
    async with world(fresh_db) as w:
        w.monitor.add_maintenance(Maintenance(1, "sw-sad-5", w.net.now, time.time() + 3600,
                                              "demo: замена коммутатора"), "demo")  # fmt: skip
        async with w.session.get(w.url("/api/v1/maintenance"), headers=w.auth()) as r:
            (listed,) = (await r.json())["maintenance"]
        assert listed["by"] == "demo", listed
