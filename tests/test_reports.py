"""The reports API against a real PostgreSQL: hand-made incidents on a small city, and
figures worked out by hand (below, in minutes from the period's start T0)."""

from __future__ import annotations

import asyncio
import html
import json
import re
import textwrap
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outagemon import clock, config
from outagemon.core import directory, messages, topology
from outagemon.core.directory import Directory
from outagemon.db import migrate, store
from outagemon.http import figures
from outagemon.http.app import make_app
from outagemon.http.runtime import Runtime
from tests.test_openapi import TEXT, query, validate
from tests.world import CONFIG, READ, SUBSCRIBERS, TOPOLOGY, World, world

T0 = datetime(2026, 11, 2, tzinfo=UTC)
DAY = 24 * 60  # minutes
# The world's city, with districts: agg-n's tree is north, agg-s's south (inherited).
LABELLED = TOPOLOGY.replace(
    "{id: agg-n, kind: aggregation, ip: 127.0.0.3, parents: [core]}",
    "{id: agg-n, kind: aggregation, ip: 127.0.0.3, parents: [core], labels: {district: north}}",
).replace(
    "{id: agg-s, kind: aggregation, ip: 127.0.0.4, parents: [core]}",
    "{id: agg-s, kind: aggregation, ip: 127.0.0.4, parents: [core], labels: {district: south}}",
)
LENINA, MIRA = "ул. Ленина, д. 5", "пр-т Мира, д. 10"
SAD_1, SAD_2, SAD_5 = ("ул. Садовая, д. 3, корп. 1", "ул. Садовая, д. 3, корп. 2",
                       "ул. Садовая, д. 5")  # fmt: skip


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def iso(minutes: float) -> str:
    return at(minutes).isoformat()


# id, kind, state, root, nodes, opened, resolved, merged into, subscribers, calls,
# opened event (detected), first ETA given at, first ETA.
INCIDENTS: list[tuple[Any, ...]] = [
    # Across the period's start: 60 of its 90 minutes are in the period.
    (1, "outage", "resolved", "sw-lenina-5", ["sw-lenina-5"], -30, 60, None, 1, 4,
     -29.25, -20, 30),
    # Overlaps #1 at Lenina 5 from 30 to 60: Lenina is out 0..90 once, not twice.
    (2, "outage", "resolved", "agg-n",
     ["agg-n", "sw-lenina-5", "sw-mira-10", "seg-mira-1", "seg-mira-2"], 30, 90, None, 5, 10,
     31, None, None),
    # A segment that failed first and was absorbed into #2 when its uplink failed.
    (6, "outage", "merged", "seg-mira-1", ["seg-mira-1"], 20, 30, 2, 2, 0, 20.5, None, None),
    # Planned works: counted apart, not against availability.
    (3, "maintenance", "resolved", "sw-sad-5", ["sw-sad-5"], 120, 180, None, 1, 1,
     120, None, None),
    # Across the period's end: 30 of its 90 minutes are in the period.
    (4, "outage", "resolved", "sw-sad-1", ["sw-sad-1"], DAY - 30, DAY + 60, None, 1, 2,
     DAY - 29, DAY - 25, DAY + 30),
    # After the period: not in it.
    (5, "outage", "resolved", "sw-sad-1", ["sw-sad-1"], 2 * DAY, 2 * DAY + 10, None, 1, 0,
     None, None, None),
]  # fmt: skip


# The impact record of #2 and #3 (the others have none, as history from before it was
# kept): seg-mira-2 joined #2 at 60 only, and #3's planned works overran at 150 (from
# then an outage).
IMPACT: list[tuple[Any, ...]] = [
    (2, "agg-n", "outage", 30, 90), (2, "sw-lenina-5", "outage", 30, 90),
    (2, "sw-mira-10", "outage", 30, 90), (2, "seg-mira-1", "outage", 30, 90),
    (2, "seg-mira-2", "outage", 60, 90),
    (3, "sw-sad-5", "maintenance", 120, 150), (3, "sw-sad-5", "outage", 150, 180),
]  # fmt: skip
BLIND = [(50, 70)]  # the monitor could not see: what was out then is unverified
# Calls per minute: (minute, incident named, 0 for none, calls).
CALLS = [(30, 2, 6), (31, 0, 3), (45, 2, 4), (DAY - 10, 4, 2)]


async def insert_incidents(conn: Any, incidents: Sequence[tuple[Any, ...]],
                           base: datetime = T0, impact: Sequence[tuple[Any, ...]] = (),
                           blind: Sequence[tuple[float, float]] = (),
                           calls: Sequence[tuple[float, int, int]] = ()) -> None:  # fmt: skip
    """Incidents, their impact record, blind periods and calls, times in minutes from
    `base`."""

    def t(minutes: float | None) -> datetime | None:
        return None if minutes is None else base + timedelta(minutes=minutes)

    for (iid, kind, state, root, nodes, opened, resolved, into, subs, n_calls, detected,
         eta_at, eta) in incidents:  # fmt: skip
        await conn.execute(
            "insert into incident (id, state, kind, root_node, opened_at, resolved_at,"
            " merged_into, subscribers, calls) values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            iid, state, kind, root, t(opened), t(resolved), into, subs, n_calls,
        )  # fmt: skip
        await conn.executemany("insert into incident_node values ($1, $2)",
                               [(iid, n) for n in nodes])  # fmt: skip
        if detected is not None:
            await conn.execute("insert into incident_event (incident_id, at, kind) "
                               "values ($1, $2, 'opened')", iid, t(detected))  # fmt: skip
        if eta_at is not None:
            await conn.execute(
                "insert into incident_event (incident_id, at, kind, detail)"
                " values ($1, $2, 'eta', $3::jsonb)",
                iid, t(eta_at), f'{{"eta": "{t(eta)}", "by": "noc"}}',
            )  # fmt: skip
    await conn.executemany(
        "insert into impact (incident_id, node_id, cause, started_at, ended_at)"
        " values ($1, $2, $3, $4, $5)",
        [(i, n, c, t(lo), t(hi)) for i, n, c, lo, hi in impact],
    )  # fmt: skip
    await conn.executemany(
        "insert into blind_period (reason, started_at, ended_at) values ('blind', $1, $2)",
        [(t(lo), t(hi)) for lo, hi in blind],
    )  # fmt: skip
    await conn.executemany(
        "insert into call_minute (minute, incident_id, calls) values ($1, $2, $3)",
        [(t(m), i, n) for m, i, n in calls],
    )  # fmt: skip


def labelled_directory() -> Directory:
    topo = topology.parse_text(textwrap.dedent(LABELLED), Path("topology.yaml"))
    subs, problems = directory.parse_csv(SUBSCRIBERS, Path("subscribers.csv"), topo)
    assert problems == []
    return Directory(directory.with_cpes(topo, subs), subs)


@asynccontextmanager
async def served(dsn: str, extra: str = "") -> AsyncIterator[tuple[TestServer, Runtime]]:
    """The HTTP app on a real port over a database holding the hand-made incidents."""
    await migrate.migrate(dsn)
    pool = await store.connect(dsn)
    d = labelled_directory()
    nodes = [(n.id, n.kind, n.ip, n.name, list(n.parents)) for n in d.topology.nodes.values()]
    async with pool.acquire() as conn, conn.transaction():
        await store.save_nodes(conn, nodes)
        await insert_incidents(conn, INCIDENTS, T0, IMPACT, BLIND, CALLS)
    cfg = config.parse(extra + CONFIG.format(language="en"), Path("/etc/outagemon/o.toml"))
    rt = Runtime(config=cfg, directory=d, texts=messages.load("en"))
    rt.pool, rt.not_ready = pool, None
    rt.reports = await store.connect(dsn, min_size=1, max_size=2)
    server = TestServer(make_app(rt), host="127.0.0.1")
    await server.start_server()
    try:
        yield server, rt
    finally:
        await server.close()
        await rt.reports.close()
        await pool.close()


@asynccontextmanager
async def reports_world(dsn: str, extra: str = "") -> AsyncIterator[World]:
    """The HTTP test world with the reports' own pool, as the daemon gives it."""
    async with world(dsn, extra=extra) as w:
        w.runtime.reports = await store.connect(dsn, min_size=1, max_size=2)
        try:
            yield w
        finally:
            await w.runtime.reports.close()


async def reports_totals_after(w: World, *incidents: tuple[Any, ...]) -> tuple[str, str]:
    """The /reports page once these incidents (`insert_incidents`' rows, from two hours
    ago) are stored, and its totals' line as read."""
    await w.flushed()  # the nodes are stored: incidents refer to them
    base = datetime.now().astimezone() - timedelta(hours=2)
    async with w.pool.acquire() as conn:
        await insert_incidents(conn, incidents, base)
    async with w.session.get(w.url("/reports")) as r:
        assert r.status == 200
        page = await r.text()
    totals = re.search(r'<p class="muted" id="totals">(.*?)</p>', page)
    assert totals is not None, page
    return page, html.unescape(totals.group(1))


async def get(server: TestServer, path: str, **params: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {READ}"}
    url = server.make_url(path)
    async with aiohttp.ClientSession() as s, s.get(url, params=params, headers=headers) as r:
        return r.status, await r.json()


def by_key(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in rows}


async def test_availability_by_building_counts_overlaps_once_and_clips_to_the_period(
    fresh_db: str,
) -> None:
    async with served(fresh_db) as (server, _):
        period = {"from": iso(0), "to": iso(DAY)}
        status, body = await get(server, "/api/v1/reports/availability", group="building",
                                 **period)  # fmt: skip
        assert status == 200, body
        assert body["period_minutes"] == DAY
        rows = by_key(body["rows"])
        # Lenina 5: #1 0..60 and #2 30..90 (overlapping): 90 minutes, 2 incidents; the
        # monitor was blind 50..70, so 20 of them are unverified.
        assert rows[LENINA] == {"key": LENINA, "outage_minutes": 90, "planned_minutes": 0,
                                "unverified_minutes": 20,
                                "availability_pct": round(100 * (1 - 90 / DAY), 4),
                                "incidents": 2}  # fmt: skip
        assert rows[LENINA]["availability_pct"] == 93.75
        # Mira 10 (two segments): #6 20..30 then #2 30..90: 70 minutes, 2 incidents.
        assert rows[MIRA]["outage_minutes"] == 70 and rows[MIRA]["incidents"] == 2
        assert rows[MIRA]["unverified_minutes"] == 20
        # Sadovaya 3 (both blocks, one switch): #4's last 30 minutes of the day.
        assert rows[SAD_1]["outage_minutes"] == 30 == rows[SAD_2]["outage_minutes"]
        assert rows[SAD_1]["unverified_minutes"] == 0
        # Sadovaya 5: planned works 120..150 that overran into an outage 150..180.
        assert rows[SAD_5] == {"key": SAD_5, "outage_minutes": 30, "planned_minutes": 30,
                               "unverified_minutes": 0, "availability_pct": 97.9167,
                               "incidents": 1}  # fmt: skip
        # Worst first; at equal outage, more planned works first.
        assert [r["key"] for r in body["rows"]] == [LENINA, MIRA, SAD_5, SAD_1, SAD_2]
        assert body["places"] == 5


async def test_availability_by_node_and_by_an_inherited_label(fresh_db: str) -> None:
    async with served(fresh_db) as (server, _):
        period = {"from": iso(0), "to": iso(DAY)}
        status, body = await get(server, "/api/v1/reports/availability", group="node", **period)
        assert status == 200, body
        rows = by_key(body["rows"])
        assert rows["sw-lenina-5"]["outage_minutes"] == 90
        assert rows["seg-mira-1"]["outage_minutes"] == 70  # #6 20..30, #2 30..90
        assert rows["seg-mira-2"]["outage_minutes"] == 30  # joined #2 at 60 (its impact)
        assert rows["agg-n"]["outage_minutes"] == 60 and rows["agg-n"]["incidents"] == 1
        assert rows["sw-sad-5"]["outage_minutes"] == 30 == rows["sw-sad-5"]["planned_minutes"]
        assert rows["sw-lenina-5"]["kind"] == "access"
        assert rows["sw-lenina-5"]["name"] == "Access switch, Lenina 5"
        assert "core" not in rows  # never cut off

        status, body = await get(server, "/api/v1/reports/availability", group="district",
                                 **period)  # fmt: skip
        assert status == 200, body
        rows = by_key(body["rows"])
        # North (labelled at agg-n, inherited by its switches and segments): 0..90 out.
        assert rows["north"]["outage_minutes"] == 90 and rows["north"]["incidents"] == 3
        assert rows["north"]["unverified_minutes"] == 20
        # South: #4's last 30 minutes and #3's overrun 150..180 out; 120..150 planned.
        assert rows["south"] == {"key": "south", "outage_minutes": 60, "planned_minutes": 30,
                                 "unverified_minutes": 0, "availability_pct": 95.8333,
                                 "incidents": 2}  # fmt: skip


async def test_calls_a_minute_against_incidents_open(fresh_db: str) -> None:
    async with served(fresh_db) as (server, _):
        status, body = await get(server, "/api/v1/reports/calls", step="3600",
                                 **{"from": iso(0), "to": iso(DAY)})  # fmt: skip
        assert status == 200, body
        assert body["source"] == "per_minute" and body["step_seconds"] == 3600
        buckets = body["buckets"]
        assert len(buckets) == 24
        assert buckets[0]["at"] == T0.astimezone().isoformat()
        # 0..60: 6 + 4 calls named #2 (the 3 that named none are not counted); #1, #6
        # and #2 open in it.
        assert buckets[0] == {"at": buckets[0]["at"], "calls_per_minute": round(10 / 60, 3),
                              "open_incidents": 3}  # fmt: skip
        assert [b["open_incidents"] for b in buckets[1:4]] == [1, 1, 0]  # #2; #3; none
        assert buckets[23]["calls_per_minute"] == round(2 / 60, 3)
        assert buckets[23]["open_incidents"] == 1  # #4
        assert sum(b["calls_per_minute"] for b in buckets[4:23]) == 0
        assert body["calls"] == 12
        status, body = await get(server, "/api/v1/reports/calls", step="1",
                                 **{"from": iso(0), "to": iso(DAY)})  # fmt: skip
        assert status == 400 and "step must be" in body["error"]


async def test_incident_figures_detect_eta_repair_and_subscriber_hours(fresh_db: str) -> None:
    async with served(fresh_db) as (server, _):
        status, body = await get(server, "/api/v1/reports/incidents",
                                 **{"from": iso(0), "to": iso(DAY)})  # fmt: skip
        assert status == 200, body
        rows = body["incidents"]
        assert [r["id"] for r in rows] == ["1", "6", "2", "3", "4"]  # by opening; not #5
        first = rows[0]
        assert first["detect_seconds"] == 45  # failed at -30, opened at -29.25
        assert first["first_eta_seconds"] == 600  # first ETA at -20
        assert first["repair_seconds"] == 90 * 60
        assert first["eta_error_seconds"] == 30 * 60  # told 30, repaired at 60
        assert first["subscriber_hours"] == 1.5  # 1 subscriber, 90 minutes
        assert first["first_eta"] == at(30).astimezone().isoformat()
        merged = rows[1]
        assert merged["state"] == "merged" and merged["merged_into"] == "2"
        assert merged["detect_seconds"] == 30
        assert merged["first_eta_seconds"] is None and merged["eta_error_seconds"] is None
        assert merged["subscriber_hours"] == round(2 * 10 / 60, 3)
        second = rows[2]
        assert second["subscriber_hours"] == 5.0 and second["detect_seconds"] == 60
        last = rows[4]
        assert last["eta_error_seconds"] == 30 * 60 and last["first_eta_seconds"] == 300
        totals = body["totals"]
        assert totals == {"incidents": 5, "outages": 4, "planned": 1, "calls": 17,
                          "subscriber_hours": round(1.5 + 2 * 10 / 60 + 5 + 1 + 1.5, 3),
                          "median_repair_seconds": 3600}  # fmt: skip
        assert "probe" in body["notes"]["detect_seconds"]


async def test_bad_periods_and_groups_get_a_sentence(fresh_db: str) -> None:
    async with served(fresh_db, "[history]\nmax_period_days = 31\n") as (server, _):
        cases = [
            ({"from": iso(DAY), "to": iso(0)}, "must be after from"),
            ({"from": iso(0)}, "give the period: to missing"),
            ({}, "give the period: from and to missing"),
            ({"from": iso(0), "to": iso(40 * DAY)}, "at most 31 ([history] max_period_days)"),
            ({"from": "2026-11-02T00:00:00", "to": iso(DAY)}, "has no UTC offset"),
            ({"from": "yesterday", "to": iso(DAY)}, "is not a date or an ISO 8601 time"),
            ({"from": "1969-12-01", "to": "1969-12-02"}, "before 1970"),
            ({"from": iso(0), "to": iso(DAY), "group": "street"}, "labels: district"),
            ({"from": iso(0), "to": iso(DAY), "limit": "0"}, "limit must be"),
            ({"from": iso(0), "to": iso(DAY), "format": "csv"}, "unknown parameter(s): format"),
            ({"from": "2099-01-01T00:00:00Z", "to": "2099-01-02T00:00:00Z"}, "in the future"),
        ]
        for params, sentence in cases:
            status, body = await get(server, "/api/v1/reports/availability", **params)
            assert status == 400, (params, body)
            assert sentence in body["error"], (params, body)
        status, body = await get(server, "/api/v1/reports/incidents", **cases[0][0])
        assert status == 400 and "must be after from" in body["error"]
        # A date is its local midnight, as the outage history reads it.
        status, body = await get(server, "/api/v1/reports/availability",
                                 **{"from": "2026-11-02", "to": "2026-11-03"})  # fmt: skip
        assert status == 200 and body["from"] == datetime(2026, 11, 2).astimezone().isoformat()


async def test_a_report_past_its_budget_is_refused_and_check_still_answers(
    fresh_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reports read on their own pool: with its connections all taken (billing exports
    running), a report waits figures.ACQUIRE seconds and answers 503 with a sentence,
    while /check, answered from memory, goes on answering at once, and the page's own
    reads (the writer's pool) are untouched."""
    monkeypatch.setattr(figures, "ACQUIRE", 1.0)
    async with reports_world(fresh_db) as w:
        pool = w.runtime.reports
        held = [await pool.acquire() for _ in range(pool.get_max_size())]
        period = {"from": iso(0), "to": iso(DAY)}
        try:
            report = asyncio.ensure_future(get(w.server, "/api/v1/reports/incidents", **period))
            checked = time.monotonic()
            for _ in range(20):
                assert (await w.check(phone="+79210000003"))["status"] == "ok"
            assert time.monotonic() - checked < 1.0
            async with w.session.get(w.url("/api/v1/incidents"), headers=w.auth(),
                                     params={"state": "all"}) as r:  # fmt: skip
                assert r.status == 200
            status, body = await report
            assert status == 503, body
            assert "every connection of the reports is busy" in body["error"]
        finally:
            for conn in held:
                await pool.release(conn)
        status, body = await get(w.server, "/api/v1/reports/incidents", **period)
        assert status == 200 and body["incidents"] == []


async def test_responses_match_the_openapi_description(fresh_db: str) -> None:
    async with served(fresh_db) as (server, _):
        period = {"from": iso(0), "to": iso(DAY)}
        cases = [
            ("/api/v1/reports/availability", {"group": "building", **period}),
            ("/api/v1/reports/availability", {"group": "node", "limit": "2", **period}),
            ("/api/v1/reports/availability", {"group": "district", **period}),
            ("/api/v1/reports/availability", {"group": "x", **period}),
            ("/api/v1/reports/incidents", period),
            ("/api/v1/reports/incidents", {"from": iso(0)}),
            ("/api/v1/reports/calls", period),
            ("/api/v1/reports/calls", {"step": "61", **period}),
        ]
        for path, params in cases:
            status, body = await get(server, path, **params)
            validate(path, "get", status, body)
        status, body = await get(server, "/api/v1/reports/availability", limit="2", **period)
        assert len(body["rows"]) == 2 and body["places"] == 5


REPORT_PARAMS = st.dictionaries(
    st.sampled_from(["from", "to", "group", "limit", "step", "x"]),
    st.one_of(TEXT, st.sampled_from([iso(0), iso(DAY), "0001-01-01T00:00:00+14:00",
                                     "9999-12-31T23:59:59-14:00", "1969-12-31T23:00:00Z",
                                     "building", "node", "district", "60", "0", "²"])),
    max_size=5,
)  # fmt: skip


async def test_generated_report_requests_never_get_a_5xx(fresh_db: str) -> None:
    async with served(fresh_db) as (server, _):
        seen: list[tuple[str, dict[str, str]]] = []

        @settings(max_examples=200, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(st.sampled_from(["availability", "incidents", "calls"]), REPORT_PARAMS)
        def plan(kind: str, params: dict[str, str]) -> None:
            seen.append((kind, params))

        plan()
        headers = {"Authorization": f"Bearer {READ}"}
        async with aiohttp.ClientSession() as session:
            for kind, params in seen:
                path = f"/api/v1/reports/{kind}"
                url = yarl.URL(str(server.make_url(path)) + "?" + query(params), encoded=True)
                async with session.get(url, headers=headers) as r:
                    assert r.status < 500, (kind, params, await r.text())
                    validate(path, "get", r.status, await r.json())


def gauge(text: str, series: str) -> float:
    (line,) = [x for x in text.splitlines() if x.startswith(series + " ")]
    return float(line.split()[1])


async def test_metrics_show_what_open_incidents_cost_now(fresh_db: str) -> None:
    async with reports_world(fresh_db) as w:

        async def scrape() -> str:
            async with w.session.get(w.url("/metrics")) as r:
                assert r.status == 200
                return await r.text()

        quiet = await scrape()
        assert gauge(quiet, 'outagemon_subscribers_cut_off{kind="outage"}') == 0
        assert gauge(quiet, 'outagemon_open_subscriber_minutes{kind="outage"}') == 0
        w.net.fail("agg-s")  # Sadovaya 3 and 5: subscribers 1006, 1007 and 1008
        w.run(120)
        (inc,) = w.monitor.correlator.incidents.values()
        w.run(600)  # ten minutes more
        text = await scrape()
        assert gauge(text, 'outagemon_subscribers_cut_off{kind="outage"}') == 3
        assert gauge(text, 'outagemon_subscribers_cut_off{kind="maintenance"}') == 0
        lost = 3 * (w.monitor.clock() - inc.opened_at) / 60
        assert lost > 30
        assert gauge(text, 'outagemon_open_subscriber_minutes{kind="outage"}') == round(lost, 1)
        assert gauge(text, 'outagemon_incidents_open{kind="outage"}') == 1


DASHBOARD = Path(__file__).parent.parent / "docs" / "grafana-dashboard.json"


async def test_the_grafana_dashboard_reads_metrics_that_exist(fresh_db: str) -> None:
    """docs/grafana-dashboard.json is valid JSON, its datasource is a variable, and every
    metric (and every label it groups by) is one a real /metrics serves."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    targets = [t for p in dashboard["panels"] for t in p["targets"]]
    assert len(targets) >= 10
    for p in dashboard["panels"]:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
    async with world(fresh_db) as w:
        w.net.fail("agg-s")
        w.run(120)
        await w.check(phone="+79210000007")
        async with w.session.get(w.url("/metrics")) as r:
            scraped = await r.text()
    series: dict[str, set[str]] = {}
    for line in scraped.splitlines():
        if line.startswith("# TYPE "):
            series.setdefault(line.split()[2], set())
        elif line and not line.startswith("#"):
            name, _, labels = line.split(" ")[0].partition("{")
            series.setdefault(name, set()).update(
                part.split("=")[0] for part in labels.rstrip("}").split(",") if part
            )
    checked = 0
    for target in targets:
        expr = target["expr"]
        names = set(re.findall(r"\b(outagemon_[a-z_]+)", expr))
        assert names, expr
        for name in names:
            assert name in series, f"{name} is not served by /metrics ({expr})"
            for grouped in re.findall(r"by \(([a-z_]+)\) \((?:\w+\()?" + name, expr):
                if series[name]:  # a counter never counted has no series to read labels of
                    assert grouped in series[name], (name, grouped, expr)
                    checked += 1
    assert checked >= 5


async def test_calls_that_name_an_incident_are_counted_per_minute(fresh_db: str) -> None:
    """The surge as it happened: each /check answer that names an incident is stored in
    its minute, and the calls report reads those rather than spreading the total."""
    async with reports_world(fresh_db) as w:
        w.net.fail("agg-s")  # Sadovaya 3 and 5
        w.run(120)
        (inc,) = w.monitor.correlator.incidents.values()
        for _ in range(7):
            assert (await w.check(phone="+79210000007"))["status"] == "outage"
        assert (await w.check(phone="+79210000003"))["status"] == "ok"  # names none
        w.run(1)  # a tick saves the calls
        await w.flushed()
        wall = clock.CLOCK.wall(w.monitor.clock())
        minute = wall - wall % 60
        async with w.pool.acquire() as conn:
            rows = await conn.fetch("select minute, incident_id, calls from call_minute")
        assert [(r["minute"].timestamp(), r["incident_id"], r["calls"]) for r in rows] == [
            (minute, inc.id, 7)
        ]
        now = datetime.now(UTC)
        period = {"from": (now - timedelta(hours=3)).isoformat(), "to": now.isoformat()}
        status, body = await get(w.server, "/api/v1/reports/calls", step="60", **period)
        assert status == 200, body
        assert body["source"] == "per_minute" and body["calls"] == 7
        hit = [b for b in body["buckets"] if b["calls_per_minute"]]
        assert [b["calls_per_minute"] for b in hit] == [7.0]
        assert seconds(hit[0]["at"]) <= minute < seconds(hit[0]["at"]) + 60  # its minute's
        assert hit[0]["open_incidents"] == 1


def seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def test_the_databases_sums_equal_the_cores_definition(fresh_db: str) -> None:
    """Random histories on the labelled city: what PostgreSQL adds up for each place
    (store.PLACES) equals what core/figures.py defines, group by group, minute by minute
    (overlaps, open stretches, planned works under outages, blind spells, incidents with
    no impact record, nodes the topology no longer has)."""
    import random

    from outagemon.core import figures as core

    await migrate.migrate(fresh_db)
    d = labelled_directory()
    topo = d.topology
    rt = Runtime(config=config.parse(CONFIG.format(language="en"), Path("/etc/o.toml")),
                 directory=d)  # fmt: skip
    names = [n for n in topo.nodes if not n.startswith("cpe:")] + ["gone-1", "gone-2"]
    conn = await store.connection(fresh_db)
    try:
        nodes = [(n.id, n.kind, n.ip, n.name, list(n.parents)) for n in topo.nodes.values()]
        nodes += [("gone-1", "access", None, "", ["agg-n"]), ("gone-2", "segment", None, "", [])]
        async with conn.transaction():
            await store.save_nodes(conn, nodes)
        seen: set[str] = set()  # that the worlds had what the test is about
        for seed in range(6):
            rng = random.Random(seed)
            await conn.execute("truncate incident, impact, blind_period cascade")
            incidents, impact, cuts = [], [], []
            for iid in range(1, 16):
                start = rng.uniform(-120, DAY + 60)
                end = None if rng.random() < 0.15 else start + rng.uniform(1, 300)
                kind = "maintenance" if rng.random() < 0.3 else "outage"
                hit = rng.sample(names, rng.randint(1, 4))
                incidents.append((iid, kind, "open" if end is None else "resolved", hit[0],
                                  hit, start, end, None, 1, 0, None, None, None))  # fmt: skip
                if rng.random() < 0.3:  # no impact record: its last nodes, its whole life
                    cuts += [core.Cut(iid, n, at(start).timestamp(),
                                      at(end).timestamp() if end is not None else None,
                                      kind == "maintenance") for n in hit]  # fmt: skip
                    continue
                for n in hit:
                    lo = start + rng.uniform(0, 30)
                    hi = None if end is None else max(lo, end - rng.uniform(0, 30))
                    cause = kind if rng.random() < 0.8 else rng.choice(["outage", "maintenance"])
                    impact.append((iid, n, cause, lo, hi))
                    cuts.append(core.Cut(iid, n, at(lo).timestamp(),
                                         at(hi).timestamp() if hi is not None else None,
                                         cause == "maintenance"))  # fmt: skip
            blind = [(a, a + rng.uniform(5, 200)) for a in
                     (rng.uniform(-60, DAY) for _ in range(rng.randint(0, 3)))]  # fmt: skip
            await insert_incidents(conn, incidents, T0, impact, blind)
            start_s, end_s = at(0).timestamp(), at(DAY).timestamp()
            now = at(DAY + 120).timestamp()
            windows = [(at(a).timestamp(), at(b).timestamp()) for a, b in blind]
            for group, keys_of in (
                ("building", lambda n: [s.address.text() for s in topo.nodes[n].serves]
                 if n in topo.nodes else []),
                ("node", lambda n: [n]),
                ("district", lambda n: [topology.inherited_label(topo, n, "district")
                                        or "(none)"]),
            ):  # fmt: skip
                expected = core.availability(cuts, start_s, end_s, now, keys_of, windows)
                mapped = figures.place_map(rt, group)
                rows = await store.places(conn, at(0), at(DAY), at(DAY + 120), *mapped, 10_000,
                                          60)  # fmt: skip
                report = figures.Report([], [], [], {group: rows})
                got = figures.availability(rt, report, start_s, end_s, group, 10_000)["rows"]
                for row in got:
                    row.pop("name", None)
                    row.pop("kind", None)
                assert got == expected, (seed, group)
                seen.update(k for r in got for k in ("unverified_minutes", "planned_minutes")
                            if r[k] > 0)  # fmt: skip
                seen.update(["(none)"] if any(r["key"] == "(none)" for r in got) else [])
        assert seen == {"unverified_minutes", "planned_minutes", "(none)"}
    finally:
        await conn.close()


async def test_a_bad_range_on_the_reports_page_is_a_page_with_the_sentence(fresh_db: str) -> None:
    async with reports_world(fresh_db) as w:
        async with w.session.get(w.url("/reports?range=1y")) as r:
            assert r.status == 400
            assert r.content_type == "text/html"
            text = await r.text()
        assert "range must be one of 24h, 7d, 30d, not &#39;1y&#39;." in text
        assert '<a href="/reports?range=7d"' in text  # the ranges to pick from, on the page
        async with w.session.get(w.url("/reports?range=<b>x</b>")) as r:
            assert r.status == 400 and "<b>x</b>" not in await r.text()


async def test_a_suspicion_never_confirmed_is_in_no_report(fresh_db: str) -> None:
    async with served(fresh_db) as (server, rt):
        period = {"from": iso(0), "to": iso(DAY)}
        paths = [("/api/v1/reports/availability", {"group": "building"}),
                 ("/api/v1/reports/availability", {"group": "node"}),
                 ("/api/v1/reports/incidents", {})]  # fmt: skip
        before = [await get(server, path, **params, **period) for path, params in paths]
        assert all(status == 200 for status, _ in before), before
        # Dismissed at Садовая 5 (after its planned works), and expired over Мира's
        # segment: raised by calls, never confirmed, so never an outage.
        dismissed = (7, "suspected", "resolved", "sw-sad-5", ["sw-sad-5"], 300, 330, None, 1,
                     3, 300, None, None)  # fmt: skip
        expired = (8, "suspected", "resolved", "seg-mira-2", ["seg-mira-2"], 400, 480, None, 1,
                   4, 400, None, None)  # fmt: skip
        assert rt.pool is not None
        async with rt.pool.acquire() as conn:
            await insert_incidents(conn, [dismissed, expired], T0)
            await conn.execute("update incident set raised_by = 'calls' where id in (7, 8)")
        after = [await get(server, path, **params, **period) for path, params in paths]
        assert after == before


def test_the_calls_buckets_begin_at_the_second_their_times_are_written_with() -> None:
    # A period asked from 04:52:00.6: the minute of 04:53:00 was counted in the bucket
    # written "04:52:00" (it began 0.6 s later than it said).
    from outagemon.http import figures as http_figures

    minute = datetime(2026, 12, 1, 4, 53, tzinfo=UTC).timestamp()
    report = http_figures.Report(incidents=[], blind=[], calls=[(minute, 9, 7)], places={})
    body = http_figures.calls(report, minute - 59.4, minute + 120, 60, minute + 120)
    hit = [b for b in body["buckets"] if b["calls_per_minute"]]
    assert [b["calls_per_minute"] for b in hit] == [7.0]
    assert seconds(hit[0]["at"]) <= minute < seconds(hit[0]["at"]) + 60
