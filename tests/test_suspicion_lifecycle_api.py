"""A suspected incident the probes see come back, through the HTTP interface and the
database (real PostgreSQL, real HTTP client; the simulated network of tests/world.py).

seg-mira-1 (an entrance with no address) has three probed routers, 1002-1004's; 1020-1022
and 1030-1032 live there without one. Two of the three routers failing is no inferred
incident (infer_ratio 0.8), so only the calls see the place: the probes' routers coming
back say its service is back."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from outagemon.db import store
from tests.test_calls_api import NEIGHBOURS, incidents, post, three_callers_of_the_first_entrance
from tests.world import World, world

FAILING = ("cpe:1002", "cpe:1003")  # two of seg-mira-1's three routers


async def stored(w: World, iid: str) -> dict[str, Any]:
    w.monitor.tick()
    await w.flushed()
    row = await w.pool.fetchrow("select state, kind, raised_by, opened_at, resolved_at"
                                " from incident where id = $1", int(iid))  # fmt: skip
    return dict(row)


async def resolved_detail(w: World, iid: str) -> dict[str, Any]:
    detail = await w.pool.fetchval("select detail from incident_event where incident_id = $1"
                                   " and kind = 'resolved'", int(iid))  # fmt: skip
    found: dict[str, Any] = json.loads(detail) if isinstance(detail, str) else detail
    return found


async def test_a_confirmed_suspicion_is_repaired_when_its_routers_answer_again(
    fresh_db: str,
) -> None:
    """Confirmed; the entrance's routers go down with it (each caller whose router is down
    hears the outage, one whose router answers hears `ok`); repaired, they answer again:
    after resolve_hold it is resolved as the probes saw it, callers hear `restored`, and
    the database has it resolved when service came back, its history ending there."""
    async with world(fresh_db, subscribers=NEIGHBOURS) as w:
        await w.flushed()  # the inventory's nodes, then its subscribers' periods
        w.monitor.journal.inventory(w.monitor.directory, at=w.now)
        sus = await three_callers_of_the_first_entrance(w)
        iid = sus["id"]
        status, body = await post(w, iid, {"confirm": True})
        assert status == 200 and body["kind"] == "outage", body
        w.net.fail(*FAILING)
        w.run(40)
        for account, heard in (("1002", "outage"), ("1004", "ok"), ("1030", "outage")):
            a = await w.check(account=account)
            assert a["status"] == heard, (account, a)
        (open_one,) = await incidents(w)
        assert open_one["id"] == iid and open_one["raised_by"] == "calls"  # no probed one
        w.run(60)  # down resolve_hold: its evidence
        assert set(w.monitor.watch.open[int(iid)].failed) == set(FAILING)

        w.net.repair(*FAILING)
        w.run(30)  # they answer (up_after): back from the monitor's look here
        back = w.monitor.clock()
        assert (await w.check(account="1030"))["status"] == "outage"  # held resolve_hold
        w.run(70)
        assert await incidents(w) == []
        a = await w.check(account="1030")
        assert (a["status"], a["incident_id"]) == ("restored", iid), a
        assert (await w.check(account="1002"))["status"] == "restored"

        row = await stored(w, iid)
        assert (row["state"], row["kind"], row["raised_by"]) == ("resolved", "outage", "calls")
        assert abs(row["resolved_at"].timestamp() - back) < 1.0, (row, back)
        detail = await resolved_detail(w, iid)
        assert detail["repaired"] and detail["by"] == "probes", detail
        assert detail["answering"] == list(FAILING), detail
        # The history: seg-mira-1 out from the suspicion until service came back.
        impact = await w.pool.fetch("select node_id, cause, started_at, ended_at from impact"
                                    " where incident_id = $1", int(iid))  # fmt: skip
        assert [(r["node_id"], r["cause"]) for r in impact] == [("seg-mira-1", "outage")]
        assert impact[0]["started_at"] == row["opened_at"]
        assert impact[0]["ended_at"] == row["resolved_at"]
        w.runtime.reports = await store.connect(fresh_db, min_size=1, max_size=2)
        try:
            outages = await subscriber_outages(w, "1030")
        finally:
            await w.runtime.reports.close()
        assert outages["incidents"] == [iid], outages
        minutes = (row["resolved_at"] - row["opened_at"]).total_seconds() / 60
        assert abs(outages["outage_minutes"] - minutes) <= 0.1, (outages, minutes)
        # The page says how it ended.
        async with w.session.get(w.url(f"/incidents/{iid}"), headers=w.auth()) as r:
            page = await r.text()
        assert "Repaired: the probes see its place answering again (cpe:1002, cpe:1003)" in page
        assert 'outagemon_suspicions_total{outcome="repaired"} 1' in w.runtime.metrics.render()


async def subscriber_outages(w: World, account: str) -> dict[str, Any]:
    start = datetime.fromtimestamp(w.now).astimezone().isoformat(timespec="seconds")
    end = datetime.fromtimestamp(w.monitor.clock() + 60).astimezone().isoformat(timespec="seconds")
    async with w.session.get(w.url(f"/api/v1/subscribers/{account}/outages"),
                             params={"from": start, "to": end}, headers=w.auth()) as r:  # fmt: skip
        body: dict[str, Any] = await r.json()
        assert r.status == 200, body
        return body


async def test_a_suspicion_never_confirmed_ends_quietly_when_its_routers_answer_again(
    fresh_db: str,
) -> None:
    """Not confirmed: nobody heard an outage, so none is restored; it ends (`cleared`),
    stored as a resolved suspicion that cut nobody off."""
    async with world(fresh_db, subscribers=NEIGHBOURS) as w:
        sus = await three_callers_of_the_first_entrance(w)
        iid = sus["id"]
        w.net.fail(*FAILING)
        w.run(40)
        assert (await w.check(account="1002"))["status"] == "cpe_down"
        assert (await w.check(account="1030"))["status"] == "ok"
        w.run(60)
        w.net.repair(*FAILING)
        w.run(30)
        w.run(70)
        assert await incidents(w) == []
        assert (await w.check(account="1030"))["status"] == "ok"  # never told of an outage
        row = await stored(w, iid)
        assert (row["state"], row["kind"]) == ("resolved", "suspected"), row
        detail = await resolved_detail(w, iid)
        assert detail["cleared"] and not detail.get("repaired"), detail
        impact = await w.pool.fetchval("select count(*) from impact where incident_id = $1",
                                       int(iid))  # fmt: skip
        assert impact == 0
        async with w.session.get(w.url(f"/incidents/{iid}"), headers=w.auth()) as r:
            page = await r.text()
        assert "Ended, never confirmed: the probes see its place answering again" in page
        assert 'outagemon_suspicions_total{outcome="cleared"} 1' in w.runtime.metrics.render()


async def test_a_confirmed_suspicion_whose_routers_always_answered_stays_for_an_engineer(
    fresh_db: str,
) -> None:
    """The fault is its unmanaged subscribers' (the routers answer throughout): the probes
    say nothing of it, so it stays an outage (for those without an answering router)
    until an engineer says it is repaired."""
    async with world(fresh_db, subscribers=NEIGHBOURS) as w:
        sus = await three_callers_of_the_first_entrance(w)
        iid = sus["id"]
        status, _ = await post(w, iid, {"confirm": True})
        assert status == 200
        w.run(600)
        assert [i["id"] for i in await incidents(w)] == [iid]
        assert (await w.check(account="1030"))["status"] == "outage"
        assert (await w.check(account="1003"))["status"] == "ok"
        status, body = await post(w, iid, {"resolve": True})
        assert status == 200 and body["state"] == "resolved", body
        assert (await stored(w, iid))["state"] == "resolved"
