"""The outage history: how long each subscriber was without service, per subscriber over
HTTP, for billing as a streamed CSV (API and command line alike), on a real PostgreSQL.

The first tests write a known history through the store's own writes (the ones the
journal makes from incident events) at chosen times, and read it back through the real
HTTP server; the later ones let the monitor record it from a simulated network's
failures, a blind spell and a restart.
"""

from __future__ import annotations

import asyncio
import csv
import io
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from outagemon.core import directory
from outagemon.core.directory import Directory
from outagemon.core.downtime import BadPeriod, Cause, Hit, downtime, minutes, period
from outagemon.db import store
from tests.world import SUBSCRIBERS, TOPOLOGY, World, restarted, world

T0 = datetime(2026, 3, 1, tzinfo=UTC)
DAY = (T0.isoformat(), (T0 + timedelta(days=1)).isoformat())
PERIOD = {"from": DAY[0], "to": DAY[1]}


def m(minute: float) -> datetime:
    return T0 + timedelta(minutes=minute)


@asynccontextmanager
async def history_world(dsn: str, **kw: Any) -> AsyncIterator[World]:
    """The HTTP test world, with the reports' own pool and the subscribers' periods."""
    async with world(dsn, **kw) as w:
        w.runtime.reports = await store.connect(dsn, min_size=1, max_size=2)
        try:
            await w.flushed()  # the inventory's nodes first: incidents refer to them
            yield w
        finally:
            await w.runtime.reports.close()


async def load(w: World, d: Directory, at: datetime) -> None:
    """An inventory load at `at`, as the daemon makes one at start and on SIGHUP."""
    w.monitor.journal.inventory(d, at=at.timestamp())
    await w.flushed()


def directory_with(csv_text: str) -> Directory:
    topo = w_topology()
    subs, problems = directory.parse_csv(csv_text, Path("subscribers.csv"), topo)
    assert problems == []
    return Directory(directory.with_cpes(topo, subs), subs)


def w_topology() -> Any:
    from outagemon.core import topology

    return topology.parse_text(textwrap.dedent(TOPOLOGY), Path("topology.yaml"))


# 1008 leaves and 1009 joins ул. Садовая, д. 5 at minute 130.
LATER = SUBSCRIBERS.replace(
    '1008,+79210000008;+79210000002,"ул. Садовая, д. 5",10,\n',
    '1009,+79210000009,"ул. Садовая, д. 5",11,\n',
)
MIRA = ["agg-n", "sw-lenina-5", "sw-mira-10", "seg-mira-1", "seg-mira-2"]


async def known_history(w: World) -> None:
    """Incidents at chosen minutes after T0, written as the journal writes them:

    9003 outage on agg-n and below, from a minute before the day to minute 5 (the day's
    edge); 9001 outage on sw-lenina-5, 10-30; 9002 planned works there 20-40 that overran
    and became an outage 40-50, the monitor blind 45-47; 9004 outage on sw-sad-5 100-160,
    1008 leaving and 1009 joining at 130; 9005 on sw-lenina-5 from 1430 past the day's end.
    """
    await load(w, w.runtime.directory, m(-2000))
    async with w.pool.acquire() as conn:
        for iid, kind, root in [
            (9001, "outage", "sw-lenina-5"),
            (9002, "maintenance", "sw-lenina-5"),
            (9003, "outage", "agg-n"),
            (9004, "outage", "sw-sad-5"),
            (9005, "outage", "sw-lenina-5"),
        ]:
            await store.insert_incident(conn, iid, kind, root, False, m(0), 0)  # fmt: skip
            await store.resolve_incident(conn, iid, m(1500))  # one open incident per root
        await store.impact_open(conn, 9003, ["agg-n"], "outage", m(-1))
        await store.impact_set_nodes(conn, 9003, [*MIRA, "cpe:1002"], "outage", m(-1))
        await store.impact_close(conn, 9003, m(5))
        await store.impact_open(conn, 9001, ["sw-lenina-5"], "outage", m(10))
        await store.impact_close(conn, 9001, m(30))
        await store.impact_open(conn, 9002, ["sw-lenina-5"], "maintenance", m(20))
        await store.impact_cause(conn, 9002, "outage", m(40))
        await store.blind_start(conn, "blind", m(45))
        await store.blind_start(conn, "blind", m(46))  # a replayed write changes nothing
        await store.blind_end(conn, "blind", m(47))
        await store.impact_close(conn, 9002, m(50))
        await store.impact_open(conn, 9004, ["sw-sad-5"], "outage", m(100))
        await store.impact_close(conn, 9004, m(160))
        await store.impact_open(conn, 9005, ["sw-lenina-5"], "outage", m(1430))
        await store.impact_close(conn, 9005, m(1500))
    await load(w, directory_with(LATER), m(130))


async def get(w: World, path: str, **params: str) -> tuple[int, Any]:
    async with w.session.get(w.url(path), params=params, headers=w.auth()) as r:
        if r.content_type == "application/json":
            return r.status, await r.json()
        return r.status, await r.text()


async def test_a_subscribers_downtime_merges_overlaps_clips_the_period_and_keeps_kinds_apart(
    fresh_db: str,
) -> None:
    async with history_world(fresh_db) as w:
        await known_history(w)
        status, body = await get(w, "/api/v1/subscribers/1001/outages", **PERIOD)  # fmt: skip
        assert status == 200, body
        # 9003 0-5 (clipped at the day's start); 9001 10-30 and 9002 20-50 overlap into one
        # break 10-50: outage 10-30 and 40-50 less the blind 45-47, planned works 30-40
        # (20-30 was an outage too: counted once, as outage), unverified 45-47; 9005
        # 1430-1440 (clipped at the day's end).
        assert (body["outage_minutes"], body["planned_minutes"], body["unverified_minutes"],
                body["total_minutes"]) == (5 + 20 + 8 + 10, 10.0, 2.0, 55.0)  # fmt: skip
        assert body["incidents"] == ["9001", "9002", "9003", "9005"]
        spans = [(i["from"], i["to"], i["incidents"]) for i in body["intervals"]]
        assert spans == [
            (iso(m(0)), iso(m(5)), ["9003"]),
            (iso(m(10)), iso(m(50)), ["9001", "9002"]),
            (iso(m(1430)), iso(m(1440)), ["9005"]),
        ]
        middle = body["intervals"][1]
        kinds = ("outage_minutes", "planned_minutes", "unverified_minutes", "minutes")
        assert [middle[k] for k in kinds] == [28.0, 10.0, 2.0, 40.0]
        assert "55 мин (3 перерыва)" in body["message"], body["message"]
        assert "плановые работы 10 мин" in body["message"]
        assert "не подтверждено мониторингом 2 мин" in body["message"]
        _, en = await get(w, "/api/v1/subscribers/1001/outages", lang="en", **PERIOD)  # fmt: skip
        assert "account 1001 was without service for 55 min (3 breaks)" in en["message"]


def iso(t: datetime) -> str:
    return t.astimezone().isoformat(timespec="seconds")


async def test_subscribers_count_only_while_they_were_served(fresh_db: str) -> None:
    async with history_world(fresh_db) as w:
        await known_history(w)
        found = {}
        for account in ("1007", "1008", "1009", "1006"):
            status, body = await get(w, f"/api/v1/subscribers/{account}/outages",
                                     **PERIOD)  # fmt: skip
            assert status == 200, body
            found[account] = body["outage_minutes"]
        # 9004 cut ул. Садовая, д. 5 off 100-160: 1007 all of it; 1008, removed at 130,
        # keeps its first half; 1009, added at 130, has only the second.
        assert found == {"1007": 60.0, "1008": 30.0, "1009": 30.0, "1006": 0.0}
        _, gone = await get(w, "/api/v1/subscribers/1008/outages",
                            **PERIOD)  # fmt: skip
        assert gone["served"][-1]["to"] == iso(m(130))
        # Before 1009 joined, it has nothing at all.
        _, before = await get(
            w,
            "/api/v1/subscribers/1009/outages",
            **{"from": m(0).isoformat(), "to": m(130).isoformat()},
        )
        assert before["intervals"] == [] and before["served"] == []
        assert "перерывов в услуге по лицевому счёту 1009 не было" in before["message"]


async def test_the_billing_csv_agrees_with_each_subscribers_answer(fresh_db: str) -> None:
    async with history_world(fresh_db) as w:
        await known_history(w)
        status, text = await get(w, "/api/v1/reports/downtime", **PERIOD)  # fmt: skip
        assert status == 200, text
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [r["account"] for r in rows] == ["1001", "1002", "1003", "1004", "1005", "1007",
                                               "1008", "1009"]  # fmt: skip
        for row in rows:
            _, one = await get(w, f"/api/v1/subscribers/{row['account']}/outages",
                               **PERIOD)  # fmt: skip
            for kind in ("outage_minutes", "planned_minutes", "unverified_minutes"):
                assert float(row[kind]) == one[kind], (row, kind)
            assert row["incidents"].split(";") == one["incidents"]
        assert rows[0] == {"account": "1001", "outage_minutes": "43.0",
                           "planned_minutes": "10.0", "unverified_minutes": "2.0",
                           "incidents": "9001;9002;9003;9005"}  # fmt: skip
        # min_minutes keeps those with at least that much in all; JSON holds the same rows.
        _, big = await get(w, "/api/v1/reports/downtime", min_minutes="30", format="json",
                           **PERIOD)  # fmt: skip
        assert [r["account"] for r in big["rows"]] == ["1001", "1007", "1008", "1009"]
        assert big["rows"][0] == {"account": "1001", "outage_minutes": 43.0,
                                  "planned_minutes": 10.0, "unverified_minutes": 2.0,
                                  "incidents": ["9001", "9002", "9003", "9005"]}  # fmt: skip


async def test_the_command_line_export_is_the_apis_csv(fresh_db: str, tmp_path: Path) -> None:
    async with history_world(fresh_db) as w:
        await known_history(w)
        async with w.session.get(w.url("/api/v1/reports/downtime"), headers=w.auth(),
                                 params=PERIOD) as r:  # fmt: skip
            assert r.status == 200
            assert r.headers["Transfer-Encoding"] == "chunked"
            assert r.headers["Content-Type"].startswith("text/csv")
            api = await r.read()
        cfg = tmp_path / "outagemon.toml"
        cfg.write_text(f'[database]\ndsn = "{fresh_db}"\n')
        out = tmp_path / "billing.csv"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "outagemon", "report", "downtime", "-c", str(cfg),
            "--from", DAY[0], "--to", DAY[1], "--output", str(out),
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert out.read_bytes() == api
        assert api.count(b"\n") == 9  # the header and eight accounts
        # A bad period is a sentence and exit 2, and leaves no file behind.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "outagemon", "report", "downtime", "-c", str(cfg),
            "--from", DAY[1], "--to", DAY[0], "--output", str(tmp_path / "no.csv"),
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        assert proc.returncode == 2
        assert b"ends before it begins" in err
        assert not (tmp_path / "no.csv").exists()


async def test_callers_keys_find_the_subscriber_as_check_does(fresh_db: str) -> None:
    async with history_world(fresh_db) as w:
        await known_history(w)
        _, by_phone = await get(w, "/api/v1/outages", phone="8 (921) 000-00-01", **PERIOD)
        _, by_place = await get(w, "/api/v1/outages", address="Ленина 5", flat="12", **PERIOD)
        _, by_account = await get(w, "/api/v1/outages", account="1001", **PERIOD)
        assert by_phone["account"] == by_place["account"] == by_account["account"] == "1001"
        assert (by_phone["matched_by"], by_place["matched_by"]) == ("phone", "address")
        assert by_phone["total_minutes"] == by_place["total_minutes"] == 55.0
        # +79210000002 is given by 1002 and 1008 at different addresses: which one?
        status, shared = await get(w, "/api/v1/outages", phone="+79210000002", **PERIOD)
        assert status == 409 and "several places match" in shared["error"]
        status, nobody = await get(w, "/api/v1/outages", address="Ленина 5", flat="99", **PERIOD)
        assert status == 404 and "no subscriber was at" in nobody["error"]
        status, noflat = await get(w, "/api/v1/outages", address="Ленина 5", **PERIOD)
        assert status == 400 and "give the flat" in noflat["error"]


@pytest.mark.parametrize(
    ("path", "params", "status", "says"),
    [
        ("/api/v1/subscribers/1001/outages", {"from": "2026-03-02", "to": "2026-03-01"}, 400,
         "ends before it begins"),
        ("/api/v1/subscribers/1001/outages", {"from": "2026-03-01"}, 400, "to missing"),
        ("/api/v1/subscribers/1001/outages", {}, 400, "from and to missing"),
        ("/api/v1/subscribers/1001/outages", {"from": "2020-01-01", "to": "2026-01-01"}, 400,
         "at most 366"),
        ("/api/v1/subscribers/1001/outages", {"from": "yesterday", "to": "2026-01-01"}, 400,
         "is not a date or an ISO 8601 time"),
        ("/api/v1/subscribers/1001/outages", {"from": "2026-03-01T00:00", "to": "2026-03-02"},
         400, "has no UTC offset"),
        ("/api/v1/subscribers/1001/outages", {"from": "0001-01-01T00:00+14:00",
                                              "to": "2026-03-02"}, 400, "is not a date"),
        ("/api/v1/subscribers/nobody/outages", {"from": DAY[0], "to": DAY[1]}, 404,
         "no account 'nobody'"),
        ("/api/v1/subscribers/1001/outages", {"from": DAY[0], "to": DAY[1], "lang": "de"}, 400,
         "lang must be"),
        ("/api/v1/subscribers/1001/outages", {"from": DAY[0], "to": DAY[1], "x": "1"}, 400,
         "unknown parameter(s): x"),
        ("/api/v1/outages", {"from": DAY[0], "to": DAY[1]}, 400, "given: none"),
        ("/api/v1/outages", {"from": DAY[0], "to": DAY[1], "phone": "123"}, 404,
         "no subscriber gives the phone number"),
        ("/api/v1/reports/downtime", {"from": DAY[0], "to": DAY[1], "format": "xml"}, 400,
         "format must be csv or json"),
        ("/api/v1/reports/downtime", {"from": DAY[0], "to": DAY[1], "min_minutes": "nan"}, 400,
         "min_minutes must be between"),
        ("/api/v1/reports/downtime", {"from": DAY[0], "to": DAY[1], "min_minutes": "lots"},
         400, "is not a number of minutes"),
        ("/api/v1/reports/downtime", {"to": DAY[1]}, 400, "from missing"),
    ],
)  # fmt: skip
async def test_bad_questions_get_a_4xx_with_a_sentence(
    fresh_db: str, path: str, params: dict[str, str], status: int, says: str
) -> None:
    async with history_world(fresh_db) as w:
        await load(w, w.runtime.directory, m(-10))
        got, body = await get(w, path, **params)
        assert got == status, body
        assert says in body["error"], body


async def test_an_unencoded_plus_and_an_empty_period_are_named_as_such(fresh_db: str) -> None:
    async with history_world(fresh_db) as w:
        await load(w, w.runtime.directory, m(-10))
        # As a user types it into a URL: the "+" of the offset arrives as a space.
        raw = "from=2026-03-01T00:00:00+03:00&to=2026-03-02T00:00:00%2B03:00"
        url = URL(w.url("/api/v1/reports/downtime") + "?" + raw, encoded=True)
        async with w.session.get(url, headers=w.auth()) as r:
            assert r.status == 400
            said = (await r.json())["error"]
        assert said == ("from '2026-03-01T00:00:00 03:00' has a space where a + offset was: "
                        "write + as %2B in a URL (from=2026-03-01T00:00:00%2B03:00).")  # fmt: skip
        status, body = await get(w, "/api/v1/subscribers/1001/outages",
                                 **{"from": "2026-03-01", "to": "2026-03-01"})  # fmt: skip
        assert status == 400
        assert body["error"] == ("the period is empty: to must be after from "
                                 "(from=2026-03-01, to=2026-03-01).")  # fmt: skip
        # Encoded as said, the same period is answered.
        status, _ = await get(w, "/api/v1/reports/downtime", **{
            "from": "2026-03-01T00:00:00+03:00", "to": "2026-03-02T00:00:00+03:00"})  # fmt: skip
        assert status == 200


async def test_the_longest_period_is_configured(fresh_db: str) -> None:
    async with history_world(fresh_db, extra="[history]\nmax_period_days = 7\n") as w:
        await load(w, w.runtime.directory, m(-10))
        week = {"from": "2026-03-01", "to": "2026-03-09"}
        status, body = await get(w, "/api/v1/reports/downtime", **week)
        assert status == 400 and "at most 7 ([history] max_period_days)" in body["error"]
        status, _ = await get(w, "/api/v1/reports/downtime", **{**week, "to": "2026-03-08"})
        assert status == 200


def test_the_pure_sum_counts_each_moment_once_with_blind_time_apart() -> None:
    """The core's merge, on its own: overlapping outages count once, planned works only
    where no outage is, blind time only as unverified; touching stretches join."""
    us = 60_000_000
    hits = [Hit(1, Cause.OUTAGE, 0, 10 * us), Hit(2, Cause.OUTAGE, 5 * us, 15 * us),
            Hit(3, Cause.MAINTENANCE, 12 * us, 30 * us), Hit(4, Cause.OUTAGE, 30 * us, 31 * us),
            Hit(5, Cause.OUTAGE, 40 * us, 41 * us)]  # fmt: skip
    d = downtime(hits, [(14 * us, 16 * us)])
    assert [(s.start // us, s.end // us, s.incidents) for s in d.stretches] == [
        (0, 31, (1, 2, 3, 4)), (40, 41, (5,))]  # fmt: skip
    kinds = (minutes(d.outage), minutes(d.planned), minutes(d.unverified))
    assert kinds == (Decimal(16), Decimal(14), Decimal(2))
    with pytest.raises(BadPeriod, match="ends before it begins"):
        period("2026-03-02", "2026-03-01", UTC, 366)
    assert period("2026-03-01", "2026-03-02", UTC, 366) == (T0, T0 + timedelta(days=1))


# -- recorded by the monitor -------------------------------------------------------------


async def minutes_of(w: World, account: str, start: float, end: float) -> dict[str, Any]:
    status, body = await get(
        w, f"/api/v1/subscribers/{account}/outages",
        **{"from": datetime.fromtimestamp(start, UTC).isoformat(),
           "to": datetime.fromtimestamp(end, UTC).isoformat()},
    )  # fmt: skip
    assert status == 200, body
    return dict(body)


async def test_the_monitor_records_an_outage_and_who_it_cut_off(fresh_db: str) -> None:
    async with history_world(fresh_db) as w:
        await load(w, w.runtime.directory, datetime.fromtimestamp(w.now, UTC))
        began = w.net.now
        w.net.fail("agg-n")
        w.run(600)
        (inc,) = w.monitor.correlator.incidents.values()
        w.net.repair("agg-n")
        w.run(300)  # recovers, then resolves after resolve_hold
        assert not w.monitor.correlator.incidents
        await w.flushed()
        body = await minutes_of(w, "1003", began - 60, w.net.now + 60)
        assert body["incidents"] == [str(inc.id)]
        (stretch,) = body["intervals"]
        # From the first lost probe (opened_at) until the root answered again (recovering),
        # within a probe interval or two of the failure's true 600 s.
        assert 9.0 <= stretch["outage_minutes"] <= 10.6, stretch
        assert body["unverified_minutes"] == body["planned_minutes"] == 0
        other = await minutes_of(w, "1007", began - 60, w.net.now + 60)  # behind agg-s
        assert other["intervals"] == []
        async with w.pool.acquire() as conn:
            open_rows = await conn.fetchval("select count(*) from impact where ended_at is null")
            cpe_rows = await conn.fetchval("select count(*) from impact where node_id like 'cpe:%'")
        assert open_rows == 0 and cpe_rows == 0


async def test_planned_works_that_overrun_become_outage_time(fresh_db: str) -> None:
    async with history_world(fresh_db) as w:
        from outagemon.core.incidents import Maintenance

        await load(w, w.runtime.directory, datetime.fromtimestamp(w.now, UTC))
        began = w.net.now
        window = Maintenance(w.monitor.next_maintenance, "sw-sad-5", began, began + 600)
        w.monitor.add_maintenance(window, "test")
        w.net.fail("sw-sad-5")
        w.run(900)  # the works end at 600; the switch is still down after resolve_hold
        w.net.repair("sw-sad-5")
        w.run(300)
        await w.flushed()
        body = await minutes_of(w, "1007", began - 60, w.net.now + 60)
        # ~10 min of planned works, then ~5 min of outage from the works' end (as callers hear).
        assert 9.0 <= body["planned_minutes"] <= 11.1, body
        assert 3.5 <= body["outage_minutes"] <= 6.1, body
        assert len(body["intervals"]) == 1


async def test_time_the_monitor_was_blind_is_unverified(fresh_db: str) -> None:
    async with history_world(fresh_db) as w:
        await load(w, w.runtime.directory, datetime.fromtimestamp(w.now, UTC))
        began = w.net.now
        w.net.fail("agg-n")
        w.run(300)
        assert w.monitor.correlator.incidents
        w.net.fail("core")  # the anchor: the monitor sees nothing
        w.run(300)
        assert w.monitor.correlator.blind
        w.net.repair("core")
        w.run(300)
        w.net.repair("agg-n")
        w.run(300)
        await w.flushed()
        async with w.pool.acquire() as conn:
            (blind,) = await conn.fetch("select * from blind_period")
        assert blind["reason"] == "blind" and blind["ended_at"] is not None
        spell = (blind["ended_at"] - blind["started_at"]).total_seconds() / 60
        assert 4.0 <= spell <= 5.5, spell
        body = await minutes_of(w, "1001", began - 60, w.net.now + 60)
        # Cut off about 15 minutes in all, of which the blind spell is unverified.
        assert body["unverified_minutes"] == pytest.approx(spell, abs=0.1)
        assert 13.0 <= body["total_minutes"] <= 16.5, body


async def test_a_restart_during_an_incident_continues_its_impact(fresh_db: str) -> None:
    async with history_world(fresh_db) as w:
        await load(w, w.runtime.directory, datetime.fromtimestamp(w.now, UTC))
        async with w.pool.acquire() as conn:
            first_run = await store.run_start(conn, datetime.fromtimestamp(w.now, UTC), 1.0)
        w.monitor.run_id = first_run
        began = w.net.now
        w.net.fail("sw-sad-5")
        w.run(600)
        (inc,) = w.monitor.correlator.incidents.values()
        w.monitor.save_seen(w.net.now, stopped=True)  # a clean stop
        await w.flushed()
        stopped_at = w.net.now
        # Two minutes later, another process starts: it takes the incident up from the
        # database, and the gap between the runs is time nobody watched.
        restart = stopped_at + 120
        async with restarted(w, restart) as again:
            assert again.taken == 1
            async with w.pool.acquire() as conn:
                again.monitor.run_id = await store.run_start(
                    conn, datetime.fromtimestamp(restart, UTC), 1.0
                )
            again.net.fail("sw-sad-5")
            again.run(300)
            assert inc.id in again.monitor.correlator.incidents  # the same incident continues
            again.net.repair("sw-sad-5")
            again.run(300)
            assert not again.monitor.correlator.incidents
        net = again.net
        body = await minutes_of(w, "1007", began - 60, net.now + 60)
        assert body["incidents"] == [str(inc.id)]
        (stretch,) = body["intervals"]  # one break across the restart, not two
        assert stretch["unverified_minutes"] == pytest.approx(2.0, abs=0.05)
        # 10 min before the stop, 2 unwatched, ~5 after the restart.
        assert 16.0 <= stretch["minutes"] <= 17.6, stretch
        async with w.pool.acquire() as conn:
            rows = await conn.fetch("select * from impact where incident_id = $1", inc.id)
        assert len(rows) == 1 and rows[0]["ended_at"] is not None


async def test_answers_match_the_openapi_description_and_odd_input_never_gets_a_5xx(
    fresh_db: str,
) -> None:
    from tests.test_openapi import TRICKY, validate

    async with history_world(fresh_db) as w:
        await known_history(w)
        cases = [
            ("/api/v1/subscribers/{account}/outages", "/api/v1/subscribers/1001/outages", PERIOD),
            ("/api/v1/subscribers/{account}/outages", "/api/v1/subscribers/x/outages", PERIOD),
            ("/api/v1/subscribers/{account}/outages", "/api/v1/subscribers/1001/outages", {}),
            ("/api/v1/outages", "/api/v1/outages", {**PERIOD, "phone": "+79210000003"}),
            ("/api/v1/outages", "/api/v1/outages", {**PERIOD, "phone": "+79210000002"}),
            ("/api/v1/reports/downtime", "/api/v1/reports/downtime", {**PERIOD, "format": "json"}),
            ("/api/v1/reports/downtime", "/api/v1/reports/downtime", {"from": "x"}),
        ]
        for described, path, params in cases:
            status, body = await get(w, path, **params)
            validate(described, "get", status, body)
        for odd in [*TRICKY, "2026-02-30", "9999-12-31T23:59:59-14:00", "1e309", "-0", " "]:
            for params in ({"from": odd, "to": DAY[1]}, {**PERIOD, "min_minutes": odd},
                           {**PERIOD, "phone": odd}, {**PERIOD, "address": odd, "flat": odd},
                           {**PERIOD, "account": odd}, {**PERIOD, "lang": odd}):  # fmt: skip
                for path in ("/api/v1/outages", "/api/v1/reports/downtime"):
                    async with w.session.get(w.url(path), params=params, headers=w.auth()) as r:
                        assert r.status < 500, (path, params, await r.text())
            async with w.session.get(
                w.url(f"/api/v1/subscribers/{odd.strip() or 'x'}/outages"),
                params=PERIOD, headers=w.auth(),
            ) as r:  # fmt: skip
                assert r.status < 500, (odd, await r.text())


# -- the daemon as a process ---------------------------------------------------------------


def _start_daemon(state: Path, dsn: str, port: int) -> Any:
    import subprocess

    from tests.test_daemon import GOOD

    config = state / "outagemon.toml"
    config.write_text(f'[database]\ndsn = "{dsn}"\n' + GOOD.format(state=state, port=port))
    with (state / "daemon.log").open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "outagemon", "run", "-c", str(config)],
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


async def _logged(state: Path, event: str, count: int = 1, within: float = 60) -> None:
    import json

    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        lines = (state / "daemon.log").read_text().splitlines()
        seen = [json.loads(x) for x in lines if x.startswith("{")]
        if sum(1 for r in seen if r.get("event") == event) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {event!r} x{count} in:\n{(state / 'daemon.log').read_text()}")


async def test_the_daemon_records_inventory_versions_and_the_time_it_was_stopped(
    fresh_db: str,
) -> None:
    import signal

    import aiohttp

    from outagemon.sim import citygen
    from tests.conftest import free_port, short_tmp_dir

    state, port = short_tmp_dir(), free_port()
    city = citygen.generate(aggregations=2, access_per_aggregation=3)
    city.write(state)
    first = _start_daemon(state, fresh_db, port)
    try:
        await _logged(state, "daemon.restored")
        await _logged(state, "inventory.saved")
        # A reload with one subscriber gone and one new: a second inventory version.
        gone, kept = city.rows[0], city.rows[1:]
        city.rows = [*kept, ("999999", "+79990000000", gone[2], gone[3], "")]
        city.write(state)
        first.send_signal(signal.SIGHUP)
        await _logged(state, "inventory.saved", count=2)
        today = datetime.now(UTC).date()
        period_ = {"from": today.isoformat(), "to": (today + timedelta(days=1)).isoformat()}
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{port}/api/v1/subscribers/{gone[0]}/outages"
            async with s.get(url, params=period_) as r:
                body = await r.json()
                assert r.status == 200, body
                assert len(body["served"]) == 1 and body["intervals"] == []
            url = f"http://127.0.0.1:{port}/api/v1/reports/downtime"
            async with s.get(url, params=period_) as r:
                assert r.status == 200
                assert (await r.text()).startswith("account,outage_minutes,")
        first.send_signal(signal.SIGTERM)
        assert first.wait(10) == 0
        await asyncio.sleep(1.5)  # the daemon was away a while
        second = _start_daemon(state, fresh_db, port)
        try:
            await _logged(state, "daemon.restored", count=2)
            await _logged(state, "inventory.saved", count=3)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(10) == 0
    finally:
        if first.poll() is None:
            first.kill()
    conn = await store.connection(fresh_db)
    try:
        versions = await conn.fetch("select * from inventory_version order by id")
        runs = await conn.fetch("select * from monitor_run order by id")
        stopped = await conn.fetch("select * from blind_period where reason = 'stopped'")
        current = await conn.fetchval(
            "select count(*) from subscriber_period where valid_to is null"
        )
    finally:
        await conn.close()
    # Start, SIGHUP (one left, one joined), the second start (nothing changed).
    assert [(v["added"], v["removed"]) for v in versions] == [(len(kept) + 1, 0), (1, 1), (0, 0)]
    assert current == len(kept) + 1
    assert len(runs) == 2 and runs[0]["stopped_at"] is not None
    (gap,) = stopped
    assert gap["started_at"] == runs[0]["stopped_at"] and gap["ended_at"] == runs[1]["started_at"]


async def test_the_export_and_the_per_subscriber_sum_agree_on_random_histories(
    fresh_db: str,
) -> None:
    """Two implementations, one in SQL (pieces in start order) and one in Python (a sweep
    over every boundary), on random overlapping histories with blind spells, subscribers
    joining and leaving, planned works and open incidents."""
    import random

    from outagemon.db import migrate

    await migrate.migrate(fresh_db)
    conn = await store.connection(fresh_db)
    try:
        await conn.execute("insert into node (id, kind) values ('a', 'x'), ('b', 'x'), ('c', 'x')")
        for seed in range(40):
            rng = random.Random(seed)
            await conn.execute("truncate impact, blind_period, subscriber_period, incident cascade")

            def t(r: random.Random = rng) -> datetime:
                return m(r.randrange(-30, 150))

            for n in range(4):  # one or two periods each, one after the other
                bounds = sorted(t() for _ in range(4))
                periods = [(bounds[0], bounds[1]), (bounds[2], bounds[3])][: rng.randrange(1, 3)]
                for k, (a, b) in enumerate(periods):
                    last = k == len(periods) - 1
                    await conn.execute(
                        "insert into subscriber_period (account, node_id, address, valid_from,"
                        " valid_to) values ($1, $2, '', $3, $4)",
                        f"s{n}", rng.choice("abc"), a,
                        None if last and rng.random() < 0.4 else b,
                    )  # fmt: skip
            for iid in range(1, rng.randrange(2, 9)):
                await store.insert_incident(conn, iid, "outage", "a", False, m(0), 0)
                await store.resolve_incident(conn, iid, m(0))
                for _ in range(rng.randrange(1, 3)):
                    a, b = sorted((t(), t()))
                    await conn.execute(
                        "insert into impact (incident_id, node_id, cause, started_at, ended_at)"
                        " values ($1, $2, $3, $4, $5)",
                        iid, rng.choice("abc"), rng.choice(["outage", "maintenance"]), a,
                        None if rng.random() < 0.15 else b,
                    )  # fmt: skip
            for _ in range(rng.randrange(0, 3)):
                a, b = sorted((t(), t()))
                await conn.execute(
                    "insert into blind_period (reason, started_at, ended_at) values ($1, $2, $3)",
                    rng.choice(["blind", "stopped"]), a, None if rng.random() < 0.2 else b,
                )  # fmt: skip
            start, end, now = m(0), m(100), m(rng.randrange(60, 140))
            async with conn.transaction():
                exported = {r["account"]: r async for r in
                            store.downtime_cursor(conn, start, end, now, 0)}  # fmt: skip
            for account in ("s0", "s1", "s2", "s3"):
                rows = await store.account_history(conn, account, start, end, now)
                one = downtime(
                    [Hit(r["incident_id"], Cause(r["cause"]), _us(r["started_at"]),
                         _us(r["ended_at"])) for r in rows if r["kind"] == "hit"],
                    [(_us(r["started_at"]), _us(r["ended_at"])) for r in rows
                     if r["kind"] == "blind"],
                )  # fmt: skip
                row = exported.get(account)
                if row is None:
                    assert one.total == 0, (seed, account, one)
                    continue
                got = (row["outage_minutes"], row["planned_minutes"], row["unverified_minutes"])
                want = (minutes(one.outage), minutes(one.planned), minutes(one.unverified))
                assert got == want, (seed, account, got, want)
                assert list(row["incidents"]) == list(one.incidents), (seed, account)
    finally:
        await conn.close()


def _us(t: datetime) -> int:
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


async def test_an_export_beyond_the_reports_budget_is_503_and_lookups_still_answer(
    fresh_db: str,
) -> None:
    async with history_world(fresh_db) as w:
        await known_history(w)
        w.runtime.exports = 1  # one export streaming: the second connection is the lookups'
        async with w.session.get(w.url("/api/v1/reports/downtime"), params=PERIOD,
                                 headers=w.auth()) as r:  # fmt: skip
            assert r.status == 503 and r.headers["Retry-After"] == "5"
            assert "every connection of the reports is busy" in (await r.json())["error"]
        status, body = await get(w, "/api/v1/subscribers/1001/outages", **PERIOD)
        assert status == 200 and body["total_minutes"] == 55.0
        w.runtime.exports = 0
        pool, w.runtime.reports = w.runtime.reports, None  # the database not connected yet
        status, body = await get(w, "/api/v1/subscribers/1001/outages", **PERIOD)
        assert status == 503 and "not connected yet" in body["error"]
        w.runtime.reports = pool
