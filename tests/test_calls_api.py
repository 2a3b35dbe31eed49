"""Suspected incidents through the HTTP interface and the database: /check feeds the
detector, the API lists the kind, confirm/dismiss/resolve are checked, the journal writes
them, and a restart takes them up (real PostgreSQL, real HTTP client; the network is the
simulated one of tests/world.py)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from outagemon.core.incidents import Incident, Kind
from outagemon.db import restore as restore_db
from outagemon.db import store
from outagemon.monitor import Monitor
from tests.world import READ, SUBSCRIBERS, WRITE, World, world

# Neighbours behind the first entrance of пр-т Мира, д. 10 without a probed router of
# their own: their calls are the detector's (a caller is a subscriber, or a building).
NEIGHBOURS = SUBSCRIBERS + "".join(
    f'{1000 + n},+792100000{n},"пр-т Мира, д. 10",{n},\n' for n in (20, 21, 22, 30, 31, 32)
)


async def post(w: World, iid: str, body: Any, token: str = WRITE) -> tuple[int, Any]:
    async with w.session.post(w.url(f"/api/v1/incidents/{iid}"), json=body,
                              headers=w.auth(token)) as r:  # fmt: skip
        return r.status, await r.json()


async def incidents(w: World, state: str = "open") -> list[dict[str, Any]]:
    async with w.session.get(w.url(f"/api/v1/incidents?state={state}"),
                             headers=w.auth()) as r:  # fmt: skip
        assert r.status == 200
        found: list[dict[str, Any]] = (await r.json())["incidents"]
        return found


async def three_callers_of_the_first_entrance(w: World) -> dict[str, Any]:
    for account in ("1020", "1021", "1022"):  # distinct callers: one building, one entrance
        answer = await w.check(account=account)
        assert answer["status"] == "ok" and answer["node"] == "seg-mira-1", answer
    w.run(2)  # the monitor's tick looks at the calls
    (sus,) = await incidents(w)
    return sus


async def test_callers_raise_a_suspected_incident_an_engineer_confirms(fresh_db: str) -> None:
    async with world(fresh_db, subscribers=NEIGHBOURS) as w:
        sus = await three_callers_of_the_first_entrance(w)
        assert (sus["kind"], sus["root_node"], sus["raised_by"]) == (
            "suspected", "seg-mira-1", "calls")  # fmt: skip
        assert sus["callers"] == 3 and sum(sus["calls_per_minute"]) == 3
        # Never said as an outage before it is confirmed.
        a = await w.check(account="1002")
        assert a["status"] == "ok" and a["incident_id"] == "", a
        # The page shows it, with the chart of its calls.
        async with w.session.get(w.url("/"), headers=w.auth()) as r:
            page = await r.text()
        assert "card suspected" in page and 'svg class="calls"' in page

        # Refusals, each with its sentence.
        iid = sus["id"]
        status, body = await post(w, iid, {"confirm": True}, READ)
        assert status == 403, body
        status, body = await post(w, iid, {"confirm": "yes"})
        assert status == 400 and "confirm must be true" in body["error"]
        status, body = await post(w, iid, {"confirm": True, "dismiss": True})
        assert status == 400 and "one of confirm, dismiss or resolve" in body["error"]
        status, body = await post(w, iid, {"resolve": True})
        assert status == 409 and "is only suspected: confirm it first" in body["error"]
        status, body = await post(w, "999", {"dismiss": True})
        assert status == 404, body

        status, body = await post(w, iid, {"confirm": True, "note": "a crushed cable"})
        assert status == 200 and body["kind"] == "outage" and body["id"] == iid, body
        a = await w.check(account="1030")  # no router of theirs the probes see
        assert (a["status"], a["incident_id"], a["root_node"]) == ("outage", iid, "seg-mira-1")
        # 1002's own router answers: the way to them works, not an outage of theirs.
        a = await w.check(account="1002")
        assert (a["status"], a["incident_id"]) == ("ok", ""), a
        assert (await w.check(account="1005"))["status"] == "ok"  # the other entrance
        status, body = await post(w, iid, {"dismiss": True})
        assert status == 409 and "only a suspected one" in body["error"]

        w.monitor.tick()
        await w.flushed()
        row = await w.pool.fetchrow("select kind, raised_by, state from incident where id = $1",
                                    int(iid))  # fmt: skip
        assert dict(row) == {"kind": "outage", "raised_by": "calls", "state": "open"}
        rows = await w.pool.fetch(
            "select kind from incident_event where incident_id = $1 order by id", int(iid)
        )
        kinds = [r["kind"] for r in rows]
        assert kinds == ["opened", "kind_changed", "note"], kinds
        # The history counts it from the suspicion on, as an outage, once confirmed.
        impact = await w.pool.fetch(
            "select i.node_id, i.cause, i.started_at = c.opened_at as since_raised"
            " from impact i join incident c on c.id = i.incident_id where i.incident_id = $1",
            int(iid),
        )
        assert [tuple(r) for r in impact] == [("seg-mira-1", "outage", True)], impact

        # A restart takes it up: an outage raised by calls, callers still hear it.
        found = await restore_db.load(w.pool, w.monitor.directory.topology, 0.0)
        again = Monitor(w.monitor.config, w.monitor.directory, w.runtime.metrics)
        again.resume(found)
        assert list(again.watch.open) == [int(iid)] and not again.correlator.incidents
        assert again.watch.open[int(iid)].confirmed

        status, body = await post(w, iid, {"resolve": True})
        assert status == 200 and body["state"] == "resolved", body
        assert (await w.check(account="1002"))["status"] == "restored"


async def test_a_dismissed_suspicion_ends_and_the_probes_take_over_another(
    fresh_db: str,
) -> None:
    async with world(fresh_db, subscribers=NEIGHBOURS) as w:
        sus = await three_callers_of_the_first_entrance(w)
        status, body = await post(w, sus["id"], {"dismiss": True})
        assert status == 200 and body["state"] == "resolved", body
        assert await incidents(w) == []
        assert (await w.check(address="Мира 10", flat="23"))["status"] == "ok"
        w.monitor.tick()
        await w.flushed()
        stored = {i["id"]: i for i in await incidents(w, "resolved")}
        assert stored[sus["id"]]["kind"] == "suspected"
        # A suspicion nobody confirmed cut nobody off in the history.
        impact = await w.pool.fetchval(
            "select count(*) from impact where incident_id = $1", int(sus["id"])
        )
        assert impact == 0

        # Suspected again, then the probes see the switch above it fail: their incident
        # takes the callers over, and the suspicion closes into it.
        again = await three_callers_of_the_first_entrance_again(w)
        w.net.fail("sw-mira-10")
        w.run(60)
        (inc,) = await incidents(w)
        assert inc["raised_by"] == "probes" and inc["root_node"] == "sw-mira-10"
        assert inc["id"] != again["id"]
        a = await w.check(account="1002")
        assert (a["status"], a["incident_id"]) == ("outage", inc["id"])
        metrics = w.runtime.metrics.render()
        assert 'outagemon_suspicions_total{outcome="dismissed"} 1' in metrics
        assert 'outagemon_suspicions_total{outcome="confirmed"} 1' in metrics
        assert 'outagemon_suspicion_delay_seconds{part="count"} 2' in metrics


async def three_callers_of_the_first_entrance_again(w: World) -> dict[str, Any]:
    for account in ("1030", "1031", "1032"):
        await w.check(account=account)
    w.run(2)
    (sus,) = await incidents(w)
    assert sus["kind"] == "suspected"
    return sus


async def test_an_estimate_on_a_confirmed_one_is_kept_and_spoken(fresh_db: str) -> None:
    async with world(fresh_db, language="en", subscribers=NEIGHBOURS) as w:
        sus = await three_callers_of_the_first_entrance(w)
        status, body = await post(w, sus["id"], {"confirm": True})
        assert status == 200, body
        eta = "2099-01-01T10:00:00+00:00"
        status, body = await post(w, sus["id"], {"eta": eta})
        assert status == 400  # more than a year ahead: the same checks as any incident
        soon = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 7200))
        status, body = await post(w, sus["id"], {"eta": soon})
        assert status == 200 and body["eta"], body
        w.monitor.prune(w.monitor.clock() + 120)  # pruning forgets only what ended
        a = await w.check(account="1030")  # no router of theirs (1002's answers: `ok`)
        assert a["status"] == "outage" and a["eta"], a
        assert w.monitor.calls.get(int(sus["id"]), 0) >= 1


async def test_callers_whose_routers_answer_raise_no_suspicion(fresh_db: str) -> None:
    async with world(fresh_db, subscribers=NEIGHBOURS) as w:
        # 1002-1004 are behind seg-mira-1, each with a probed router that answers.
        for account in ("1002", "1003", "1004"):
            answer = await w.check(account=account)
            assert answer["status"] == "ok" and answer["node"] == "seg-mira-1", answer
        w.run(2)
        assert await incidents(w) == []
        # Three callers there without a router of their own are a cluster.
        sus = await three_callers_of_the_first_entrance(w)
        assert sus["kind"] == "suspected" and sus["callers"] == 3


async def test_a_suspected_incident_is_said_as_one_and_a_dismissed_one_lost_nothing(
    fresh_db: str,
) -> None:
    from outagemon.alerting import payload

    async with world(fresh_db, language="en", subscribers=NEIGHBOURS) as w:
        w.runtime.reports = await store.connect(fresh_db, min_size=1, max_size=2)
        try:
            sus = await three_callers_of_the_first_entrance(w)
            iid = sus["id"]
            # The building as written, not its internal key.
            assert sus["buildings"] == ["пр-т Мира, д. 10"], sus
            status, body = await post(w, iid, {"resolve": True})
            assert status == 409, body
            assert body["error"] == (
                f"incident {iid} is only suspected: confirm it first (it is marked repaired once "
                "confirmed), or dismiss it."
            )
            w.monitor.tick()
            await w.flushed()
            async with w.session.get(w.url(f"/incidents/{iid}"), headers=w.auth()) as r:
                page = await r.text()
            assert "· пр-т Мира, д. 10" in page and "|" + "мира" not in page
            assert "Suspected from calls: 3 distinct callers" in page
            assert "raised_by" not in page and "['" not in page and "True" not in page

            # The alert: a suspicion, with its callers, awaiting an engineer.
            row = await w.pool.fetchval("select incident from alert_outbox where incident_id"
                                        " = $1 order by revision limit 1", int(iid))  # fmt: skip
            notes = payload.annotation_set(json.loads(row), w.monitor.directory.topology)
            assert notes["summary"].startswith("Suspected outage at seg-mira-1"), notes
            assert "3 callers from пр-т Мира, д. 10 in " in notes["summary"], notes
            assert notes["summary"].endswith("(not confirmed)"), notes
            assert "awaits an engineer" in notes["description"], notes
            assert "inferred from its children" not in notes["description"], notes

            status, body = await post(w, iid, {"dismiss": True})
            assert status == 200, body
            w.monitor.tick()
            await w.flushed()
            async with w.session.get(w.url(f"/incidents/{iid}"), headers=w.auth()) as r:
                assert "Dismissed by noc: not an outage." in await r.text()

            # No report counts it: it cut nobody off.
            start, end = w.now, w.monitor.clock() + 60
            period = {"from": _iso(start), "to": _iso(end)}
            for group in ("building", "node"):
                async with w.session.get(w.url("/api/v1/reports/availability"),
                                         params={"group": group, **period},
                                         headers=w.auth()) as r:  # fmt: skip
                    body = await r.json()
                    assert r.status == 200 and body["rows"] == [], body
            async with w.session.get(w.url("/api/v1/reports/incidents"), params=period,
                                     headers=w.auth()) as r:  # fmt: skip
                body = await r.json()
                assert r.status == 200 and body["incidents"] == [], body
                assert body["totals"]["incidents"] == 0, body
            async with w.session.get(w.url("/reports?range=24h"), headers=w.auth()) as r:
                page = await r.text()
                assert r.status == 200, page
            assert f'data-incident="{iid}"' not in page and "suspected" not in page
        finally:
            await w.runtime.reports.close()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="seconds")


async def test_the_learned_rates_survive_a_restart(fresh_db: str) -> None:
    """What the detector learned of the usual calls (each place's rate, the day's shape,
    since when) is written with the loss histories and taken up by the next run: its
    rates are the old run's, not the prior's."""
    from outagemon.core.calls import Call

    async with world(fresh_db) as w:
        watch = w.monitor.watch
        now = w.monitor.clock()
        # A busy entrance: forty usual calls over the last days, learned as they left
        # the window (the seconds between them keep any three from a cluster).
        calls = [Call(now - 3 * 86400 + i * 6000.0, "seg-mira-1", "", f"u{i}", "ivr", "ok")
                 for i in range(40)]  # fmt: skip
        for c in calls:
            watch.tick(c.at, [c], lambda _n: False, lambda: 10_000)
        watch.tick(now, [], lambda _n: False, lambda: 10_000)
        watch.started = min(watch.started, now - 3 * 86400)
        learned = watch.rate("seg-mira-1", now)
        assert learned > 2 * watch.rate("seg-mira-2", now)  # more than the prior's
        w.monitor.save_history()
        await w.flushed()
        async with w.pool.acquire() as conn:
            kinds = {r["kind"] for r in await conn.fetch("select kind from call_rate")}
        assert kinds == {"node", "hour", "since"}
        found = await restore_db.load(w.pool, w.monitor.directory.topology, 0.0)
        again = Monitor(w.monitor.config, w.monitor.directory, w.runtime.metrics)
        fresh = again.watch.rate("seg-mira-1", now)
        again.resume(found)
        restored = again.watch.rate("seg-mira-1", now)
        assert abs(restored - learned) < 0.02 * learned, (fresh, learned, restored)
        assert fresh < learned / 2
        # The day's shape too (the times went through the database's microseconds).
        hours = [now + h * 3600.0 for h in range(24)]
        assert max(abs(watch.shape(t) - 1.0) for t in hours) > 0.1  # learned, not flat
        assert all(abs(again.watch.shape(t) - watch.shape(t)) < 1e-3 for t in hours)


async def test_calls_made_before_the_probes_saw_the_fault_raise_nothing_after_it(
    fresh_db: str,
) -> None:
    """Two callers phone as their switch dies, before the probes decide: told `ok`, they
    wait in the callers' window. The probes' incident explains them: once it is repaired,
    a third caller of that entrance is one caller, not a cluster with those two."""
    async with world(fresh_db, subscribers=NEIGHBOURS) as w:
        for account in ("1020", "1021"):
            assert (await w.check(account=account))["status"] == "ok"
        w.run(2)  # the detector has them (two are not a cluster here)
        assert await incidents(w) == []
        w.net.fail("sw-mira-10")
        w.run(60)
        (inc,) = await incidents(w)
        assert inc["raised_by"] == "probes" and inc["root_node"] == "sw-mira-10"
        w.net.repair("sw-mira-10")
        w.run(180)  # (seconds since the world's start)
        assert await incidents(w) == []
        assert (await w.check(account="1022"))["status"] in ("ok", "restored")
        w.run(182)
        assert await incidents(w) == []
        metrics = w.runtime.metrics.render()
        assert "outagemon_calls_set_aside_total 2" in metrics


# Callers under agg-n with no router of their own: one of ул. Ленина, д. 5 (served by its
# access switch), one of each entrance of пр-т Мира, д. 10 (no address; its switch has one).
SPREAD = SUBSCRIBERS + (
    '2001,+79210002001,"ул. Ленина, д. 5",1,\n'
    '2002,+79210002002,"пр-т Мира, д. 10",2,\n'
    '2003,+79210002003,"пр-т Мира, д. 10",60,\n'
)


async def test_callers_under_answering_switches_are_never_raised_above_them(
    fresh_db: str,
) -> None:
    """Every node answers the probes; three callers under agg-n call within a minute, from
    three places below its two answering switches (a building one serves, two entrances
    below the other). The way to each switch works, so nothing above one is the fault:
    the caller of sw-lenina-5's building is one caller at their own place, and the two
    of пр-т Мира's entrances are a place of their own at their switch, which answering
    its pings does not clear (its ports may carry nothing): never one at agg-n."""
    async with world(fresh_db, subscribers=SPREAD) as w:
        for account in ("2001", "2002", "2003"):
            answer = await w.check(account=account)
            assert answer["status"] == "ok" and answer["node"] in (
                "sw-lenina-5", "seg-mira-1", "seg-mira-2")  # fmt: skip
        w.run(2)
        assert [i["root_node"] for i in await incidents(w)] == ["sw-mira-10"]
        (sus,) = w.monitor.watch.open.values()
        assert sus.distinct_callers == 2
        # Confirming: agg-n is cleared (its switches answer), sw-mira-10 is not (its
        # entrances have no address: an engineer who checked its ports may confirm).
        assert w.monitor.cleared("agg-n") and not w.monitor.cleared("sw-mira-10")


async def test_a_suspicion_at_a_node_answering_the_probes_is_not_confirmed(
    fresh_db: str,
) -> None:
    """One suspected at agg-s (taken up after a restart) while agg-s answers: confirming it
    is refused with a sentence, and callers below keep hearing `ok`."""
    async with world(fresh_db, subscribers=SPREAD) as w:
        now = w.monitor.clock()
        iid = w.monitor.correlator.book.next_id
        w.monitor.correlator.book.next_id += 1
        w.monitor.watch.restore([Incident(id=iid, root="agg-s", kind=Kind.SUSPECTED,
                                          inferred=True, opened_at=now, nodes=["agg-s"],
                                          raised_by="calls")], now)  # fmt: skip
        status, body = await post(w, str(iid), {"confirm": True})
        assert status == 409 and "answers the probes now" in body["error"], body
        (sus,) = await incidents(w)
        assert sus["kind"] == "suspected"
        assert (await w.check(account="1007"))["status"] == "ok"  # ул. Садовая, д. 5
        status, body = await post(w, str(iid), {"dismiss": True})
        assert status == 200, body


# The window's count alone (3 callers), so that two callers raise nothing.
COUNT_ALONE = "[callers]\nevidence = 0\nscan_chance = 0\n"


async def test_asking_by_the_address_then_with_the_flat_is_one_caller(fresh_db: str) -> None:
    async with world(fresh_db, subscribers=NEIGHBOURS, extra=COUNT_ALONE) as w:
        mira = "пр-т Мира, д. 10"
        for asked in ({"address": mira}, {"address": mira, "flat": "20"},
                      {"account": "1021"}):  # fmt: skip
            assert (await w.check(**asked))["status"] == "ok"
        w.run(2)
        assert await incidents(w) == [], "flat 20 asked without and with its flat: 2 callers"
        await w.check(account="1022")
        w.run(2)
        (sus,) = await incidents(w)
        assert sus["kind"] == "suspected" and sus["callers"] == 3, sus


async def test_helpdesk_lookups_are_not_callers(fresh_db: str) -> None:
    async with world(fresh_db, subscribers=NEIGHBOURS, extra=COUNT_ALONE) as w:
        for account in ("1020", "1021", "1022", "1030"):
            answer = await w.check(account=account, channel="helpdesk")
            assert answer["status"] == "ok", answer
        w.run(2)
        assert await incidents(w) == []
        sus = await three_callers_of_the_first_entrance(w)  # the subscribers themselves
        assert sus["callers"] == 3
