"""What callers and the helpdesk hear when an incident's story turns: a fault that comes
back soon (the incident reopens), an estimate withdrawn, a restart under an incident
raised by calls (real HTTP client against the app, real PostgreSQL; the network is the
simulated one of tests/world.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from outagemon.core.incidents import Incident
from outagemon.db import restore as restore_db
from outagemon.http.api import caller_of
from outagemon.monitor import Monitor
from tests.test_calls_api import NEIGHBOURS
from tests.test_history import history_world, load
from tests.world import WRITE, World, build_directory, world


def future(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat()


async def post(w: World, iid: int | str, body: Any) -> tuple[int, Any]:
    async with w.session.post(w.url(f"/api/v1/incidents/{iid}"), json=body,
                              headers=w.auth(WRITE)) as r:  # fmt: skip
        return r.status, await r.json()


async def timeline(w: World, iid: int | str) -> list[dict[str, Any]]:
    await w.flushed()
    async with w.session.get(w.url(f"/api/v1/incidents/{iid}"), headers=w.auth()) as r:
        assert r.status == 200
        events: list[dict[str, Any]] = (await r.json())["timeline"]
        return events


def wall(iso_text: str) -> float:
    return datetime.fromisoformat(iso_text).timestamp()


@asynccontextmanager
async def agg_s_down(dsn: str) -> AsyncIterator[tuple[World, Incident]]:
    """The history world a minute after agg-s failed, with its incident."""
    async with history_world(dsn) as w:
        await load(w, w.monitor.directory, datetime.fromtimestamp(w.now, UTC))
        w.net.fail("agg-s")
        w.run(60)
        (inc,) = w.monitor.correlator.incidents.values()
        yield w, inc


async def test_a_reopened_incident_says_when_this_fault_began_and_no_old_estimate(
    fresh_db: str,
) -> None:
    async with agg_s_down(fresh_db) as (w, inc):
        iid, first_start = inc.id, inc.opened_at
        status, body = await post(w, iid, {"eta": future(120)})
        assert status == 200 and body["eta"], body
        heard = await w.check(account="1006")
        assert "Ориентировочно связь восстановится" in heard["message"], heard

        w.net.repair("agg-s")
        w.run(30)
        w.run(90)  # resolve_hold is 60 s: resolved
        assert iid not in w.monitor.correlator.incidents
        w.run(120)  # four minutes of service between the two faults
        second_fault = w.monitor.clock()
        w.net.fail("agg-s")
        w.run(60)
        again = w.monitor.correlator.incidents[iid]  # the same incident, reopened
        assert again.opened_at == first_start  # the history keeps the first fault's start

        heard = await w.check(account="1006")
        assert (heard["status"], heard["incident_id"]) == ("outage", str(iid)), heard
        assert second_fault - 1 <= wall(heard["since"]) <= second_fault + 60, heard
        texts, now = w.runtime.texts, datetime.now(UTC).timestamp()
        assert (
            f"Неисправность началась {texts.when(wall(heard['since']), now)}." in (heard["message"])
        )
        assert texts.when(first_start, now) not in heard["message"], heard
        # The estimate was for the repair that happened: withdrawn, never spoken again.
        assert heard["eta"] == "" and "Работы продолжаются" in heard["message"], heard
        listed = (await post(w, iid, {"note": "бригада снова выехала"}))[1]
        assert listed["eta"] is None and listed["opened_at"] == body["opened_at"], listed

        events = await timeline(w, iid)
        kinds = [e["kind"] for e in events]
        reopened = kinds.index("reopened")
        assert kinds[reopened + 1] == "eta", kinds
        assert events[reopened + 1]["detail"] == {"eta": None, "by": "outagemon",
                                                  "withdrawn": "reopened"}  # fmt: skip
        assert abs(wall(events[reopened]["detail"]["since"]) - wall(heard["since"])) < 1
        # Notified by the path of every estimate change, with the estimate gone.
        outbox = await w.pool.fetch("select event, incident->>'eta' as eta from alert_outbox"
                                    " where incident_id = $1 order by revision", iid)  # fmt: skip
        after = [(r["event"], r["eta"]) for r in outbox][[r["event"] for r in outbox].index(
            "reopened"):]  # fmt: skip
        assert after[:2] == [("reopened", after[0][1]), ("eta", None)], after

        # The history: cut off twice, with the four minutes between them as service.
        rows = await w.pool.fetch(
            "select started_at, ended_at from impact where incident_id = $1"
            " and node_id = 'agg-s' order by started_at",
            iid,
        )
        assert len(rows) == 2 and rows[1]["ended_at"] is None, rows
        gap = (rows[1]["started_at"] - rows[0]["ended_at"]).total_seconds()
        assert 200 <= gap <= 300, rows
        assert abs(rows[1]["started_at"].timestamp() - wall(heard["since"])) < 1, rows
        # A subscriber's own history (what billing reads): two breaks, the gap not one.
        period = {"from": datetime.fromtimestamp(w.now, UTC).isoformat(),
                  "to": datetime.now(UTC).isoformat()}  # fmt: skip
        async with w.session.get(w.url("/api/v1/subscribers/1006/outages"), params=period,
                                 headers=w.auth()) as r:  # fmt: skip
            mine = await r.json()
            assert r.status == 200, mine
        spans = [(wall(i["from"]), wall(i["to"])) for i in mine["intervals"]]
        assert len(spans) == 2 and spans[1][0] - spans[0][1] >= 200, mine
        assert abs(spans[1][0] - wall(heard["since"])) < 1, mine

        # A restart says the same: this fault's start, no estimate.
        found = await restore_db.load(w.pool, w.monitor.directory.topology, 0.0)
        restarted = Monitor(w.monitor.config, w.monitor.directory, w.runtime.metrics)
        restarted.resume(found)
        taken = restarted.correlator.incidents[iid]
        assert abs(taken.since - again.since) < 1 and taken.opened_at != taken.since
        assert iid not in restarted.eta


async def test_a_null_eta_withdraws_the_estimate(fresh_db: str) -> None:
    async with world(fresh_db, language="en") as w:
        w.net.fail("agg-s")
        w.run(60)
        (inc,) = w.monitor.correlator.incidents.values()
        status, body = await post(w, inc.id, {"eta": future(90)})
        assert status == 200 and body["eta"], body
        assert "Service should be back" in (await w.check(account="1006"))["message"]
        w.run(5)  # the simulated clock stands still between ticks

        # The timeline's estimate is written as every other time of the API (ISO, "T").
        (given,) = [e["detail"]["eta"] for e in await timeline(w, inc.id) if e["kind"] == "eta"]
        assert abs(wall(given) - wall(body["eta"])) < 1 and "T" in given, (given, body)

        status, body = await post(w, inc.id, {"eta": None})
        assert status == 200 and body["eta"] is None, body
        heard = await w.check(account="1006")
        assert heard["eta"] == "" and "Work continues" in heard["message"], heard
        async with w.session.get(w.url("/api/v1/check"), headers=w.auth(),
                                 params={"account": "1006", "format": "text"}) as r:  # fmt: skip
            assert await r.text() == f"outage|{inc.id}|\n"
        events = await timeline(w, inc.id)
        assert [e["detail"] for e in events if e["kind"] == "eta"][-1] == {
            "eta": None, "by": "noc", "withdrawn": "api"}  # fmt: skip
        stored = await w.pool.fetchval("select eta from incident where id = $1", inc.id)
        assert stored is None
        outbox = await w.pool.fetch("select event, incident from alert_outbox where"
                                    " incident_id = $1 order by revision", inc.id)  # fmt: skip
        assert [r["event"] for r in outbox][-2:] == ["eta", "eta"], (outbox, events)
        assert json.loads(outbox[-1]["incident"])["eta"] is None
        async with w.session.get(w.url(f"/incidents/{inc.id}"), headers=w.auth()) as r:
            assert "ETA withdrawn — noc" in await r.text()

        # Nothing to withdraw: nothing changes, and no line is added.
        status, body = await post(w, inc.id, {"eta": None})
        assert status == 200 and body["eta"] is None, body
        assert len([e for e in await timeline(w, inc.id) if e["kind"] == "eta"]) == 2


async def open_incidents(w: World) -> list[dict[str, Any]]:
    async with w.session.get(w.url("/api/v1/incidents"), headers=w.auth()) as r:
        assert r.status == 200
        found: list[dict[str, Any]] = (await r.json())["incidents"]
        return found


async def test_a_caller_is_the_home_they_ask_about(fresh_db: str) -> None:
    """A subscriber asking by phone, by account or by their address and flat is one
    caller (their home); another flat named is another home, with a subscriber or not."""
    async with world(fresh_db, subscribers=NEIGHBOURS) as w:
        for asked in ({"phone": "+79210000020"}, {"account": "1020"},
                      {"address": "Мира 10", "flat": "20"},
                      {"address": "Мира 10", "flat": "2"}):  # fmt: skip
            heard = await w.check(**asked)
            assert (heard["status"], heard["node"]) == ("ok", "seg-mira-1"), heard
        w.run(2)
        assert await open_incidents(w) == []
        # A third home: a cluster.
        await w.check(address="пр-т Мира, д. 10", flat="021")
        w.run(2)
        (sus,) = await open_incidents(w)
        assert (sus["kind"], sus["root_node"], sus["callers"]) == ("suspected", "seg-mira-1", 3)


async def test_a_restart_keeps_who_raised_an_incident_from_calls(fresh_db: str) -> None:
    async with world(fresh_db, subscribers=NEIGHBOURS) as w:
        for account in ("1020", "1021", "1022"):
            await w.check(account=account)
        w.run(2)
        (sus,) = await open_incidents(w)
        status, body = await post(w, sus["id"], {"confirm": True})
        assert status == 200, body
        (before,) = await open_incidents(w)
        assert (before["callers"], before["buildings"]) == (3, ["пр-т Мира, д. 10"]), before
        w.monitor.tick()
        await w.flushed()

        found = await restore_db.load(w.pool, w.monitor.directory.topology, 0.0)
        restarted = Monitor(w.monitor.config, w.monitor.directory, w.runtime.metrics)
        restarted.resume(found)
        w.runtime.monitor = restarted
        (after,) = await open_incidents(w)
        assert (after["id"], after["kind"], after["state"]) == (sus["id"], "outage", "open")
        assert (after["callers"], after["buildings"]) == (3, ["пр-т Мира, д. 10"]), after
        assert abs(wall(after["first_call_at"]) - wall(before["first_call_at"])) <= 1, after
        async with w.session.get(w.url(f"/incidents/{sus['id']}"), headers=w.auth()) as r:
            assert r.status == 200


def test_a_caller_is_their_home_however_named_or_else_their_building() -> None:
    d = build_directory(NEIGHBOURS)
    building = "пр-т Мира, д. 10"
    asked = [d.phone("+79210000020"), d.account("1020"), d.address("Мира 10", "20"),
             d.address("Мира 10", " 020 "), d.address("пр-т Мира, д. 10, кв. 20")]  # fmt: skip
    assert {caller_of(m, building) for m in asked} == {("home", f"{building}\x0020")}
    flats = [d.address("Мира 10", flat) for flat in ("2", "3", "4")]
    assert len({caller_of(m, building) for m in flats}) == 3
    assert caller_of(d.address("Мира 10"), building) == ("building", building)


def test_a_subscriber_of_no_flat_is_their_own_caller() -> None:
    """An office or a house without flats: each subscriber there is a caller of their
    own (by account, however asked), not one caller for the whole building."""
    rows = "".join(f'{2000 + n},+792100000{40 + n},"ул. Садовая, д. 5",,\n' for n in (0, 1))
    d = build_directory(NEIGHBOURS + rows)
    building = "ул. Садовая, д. 5"
    first = {caller_of(m, building) for m in (d.account("2000"), d.phone("+79210000040"))}
    assert first == {("account", "2000")}
    assert caller_of(d.account("2001"), building) == ("account", "2001")
