"""The reports page in a real headless Chromium: it renders, what it draws is the API's
figures (bars, their subscribers and times, the worst buildings and nodes), and it is
reached from the incident page's navigation."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest

from tests.cdp import Browser, chromium
from tests.test_page_browser import SHOTS
from tests.test_reports import insert_incidents, reports_world
from tests.world import WRITE

pytestmark = pytest.mark.skipif(chromium() is None, reason="chromium is not installed")

# Minutes from BASE (20 hours ago): two overlapping outages, a merged one, planned works,
# and one that began before the last 24 hours.
HAND_MADE: list[tuple[Any, ...]] = [
    (1001, "outage", "resolved", "sw-lenina-5", ["sw-lenina-5"], 0, 90, None, 1, 4,
     0.75, 10, 60),
    (1002, "outage", "resolved", "agg-n",
     ["agg-n", "sw-lenina-5", "sw-mira-10", "seg-mira-1", "seg-mira-2"], 30, 95, None, 5, 40,
     31, None, None),
    (1003, "outage", "merged", "seg-mira-1", ["seg-mira-1"], 20, 30, 1002, 2, 0,
     20.5, None, None),
    (1004, "maintenance", "resolved", "sw-sad-5", ["sw-sad-5"], 300, 420, None, 2, 1,
     300, None, None),
    (1005, "outage", "resolved", "sw-sad-1", ["sw-sad-1"], -300, -200, None, 1, 3,
     -299, None, None),
]  # fmt: skip
BARS = """Array.from(document.querySelectorAll('svg.timeline rect.bar')).map(r => ({
  id: r.dataset.incident, kind: r.dataset.kind, subscribers: +r.dataset.subscribers,
  opened: +r.dataset.opened, resolved: r.dataset.resolved === '' ? null : +r.dataset.resolved,
  title: r.querySelector('title').textContent}))"""
PLACES = """Array.from(document.querySelectorAll('svg.worst[data-what=WHAT] g.place')).map(g => ({
  key: g.dataset.key, outage: +g.dataset.outageMinutes, planned: +g.dataset.plannedMinutes,
  incidents: +g.dataset.incidents}))"""

COLUMNS = """Array.from(document.querySelectorAll('svg.calls rect.open')).map(r => ({
  start: +r.dataset.start, calls: +r.dataset.calls, open: +r.dataset.open}))"""


def seconds(iso: str | None) -> int | None:
    return None if iso is None else int(datetime.fromisoformat(iso).timestamp())


async def api(session: aiohttp.ClientSession, url: str, **params: str) -> Any:
    async with session.get(url, params=params,
                           headers={"Authorization": f"Bearer {WRITE}"}) as r:  # fmt: skip
        assert r.status == 200, await r.text()
        return await r.json()


async def test_the_reports_page_draws_the_apis_figures(fresh_db: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with reports_world(fresh_db) as w, Browser() as b:
        await w.flushed()  # the nodes are stored: incidents refer to them
        base = datetime.now().astimezone() - timedelta(hours=20)
        async with w.pool.acquire() as conn:
            await insert_incidents(conn, HAND_MADE, base)
        w.net.fail("agg-s")  # and one open now, from the monitor itself
        w.run(120)
        (live,) = w.monitor.correlator.incidents.values()
        await w.flushed()

        # Reached from the incident page's navigation.
        await b.open(w.url("/"))
        await b.eval("document.querySelector('nav a[href=\"/reports\"]').click(); true")
        await b.wait_for("location.pathname === '/reports' && document.readyState === 'complete'")
        assert await b.eval("document.querySelectorAll('svg.chart').length") == 4

        for chosen in ("24h", "7d", "30d"):
            await b.open(w.url(f"/reports?range={chosen}"))
            period = await b.eval("({...document.querySelector('#period').dataset})")
            start, end = seconds(period["from"]), seconds(period["to"])
            assert start is not None and end is not None
            got = await api(w.session, w.url("/api/v1/reports/incidents"), **period)
            bars = await b.eval(BARS)
            expected = {r["id"]: r for r in got["incidents"]}
            # Every incident of the period is one bar, no more.
            assert sorted(x["id"] for x in bars) == sorted(expected)
            assert str(live.id) in expected and "1005" in expected
            assert len(bars) == 6 == await b.eval("+document.querySelector('svg.timeline')"
                                                  ".dataset.bars")  # fmt: skip
            for bar in bars:
                row = expected[bar["id"]]
                assert bar["kind"] == row["kind"]
                assert bar["subscribers"] == row["subscribers"]
                assert bar["opened"] == seconds(row["opened_at"])
                assert bar["resolved"] == seconds(row["resolved_at"])
                assert f"#{row['id']} {row['kind']} at {row['root_node']}" in bar["title"]
            # Taller bars for more subscribers: the 5-subscriber outage against the 1.
            heights = await b.eval("Object.fromEntries(Array.from(document.querySelectorAll("
                                   "'svg.timeline rect.bar')).map(r => [r.dataset.incident,"
                                   " r.getBBox().height]))")  # fmt: skip
            assert heights["1002"] > heights["1001"]
            # The worst buildings and nodes are the API's, in its order, with its minutes.
            for what, group in (("buildings", "building"), ("nodes", "node")):
                drawn = await b.eval(PLACES.replace("WHAT", what))
                rows = (await api(w.session, w.url("/api/v1/reports/availability"),
                                  group=group, **period))["rows"][:10]  # fmt: skip
                assert [d["key"] for d in drawn] == [r["key"] for r in rows]
                for d, r in zip(drawn, rows, strict=True):
                    # An open incident's minutes grow between the page and the API's answer.
                    assert abs(d["outage"] - r["outage_minutes"]) < 0.1, (d, r)
                    assert d["planned"] == r["planned_minutes"]
                    assert d["incidents"] == r["incidents"]
            lenina = next(d for d in await b.eval(PLACES.replace("WHAT", "buildings"))
                          if d["key"] == "ул. Ленина, д. 5")  # fmt: skip
            assert lenina["outage"] == 95 and lenina["incidents"] == 2  # 0..90 and 30..95
            # Calls against incidents open: one column per bucket, the API's figures.
            step = {"24h": 900, "7d": 7200, "30d": 6 * 3600}[chosen]
            series = await api(w.session, w.url("/api/v1/reports/calls"), step=str(step),
                               **period)  # fmt: skip
            columns = await b.eval(COLUMNS)
            assert len(columns) == len(series["buckets"]) == (end - start) // step
            for column, bucket in zip(columns, series["buckets"], strict=True):
                assert column["start"] == seconds(bucket["at"])
                assert column["open"] == bucket["open_incidents"]
                assert abs(column["calls"] - bucket["calls_per_minute"]) < 0.01
            assert max(c["open"] for c in columns) >= 2  # 1001, 1002 and 1003 overlap
            assert sum(c["calls"] for c in columns) > 0
            # The whole page in the picture, the charts below the fold too.
            height = await b.eval("document.documentElement.scrollHeight")
            await b.send("Emulation.setDeviceMetricsOverride", width=1200, height=height,
                         deviceScaleFactor=1, mobile=False)  # fmt: skip
            await b.screenshot(SHOTS / f"reports-{chosen}.png")
            await b.send("Emulation.clearDeviceMetricsOverride")


async def test_the_reports_page_and_api_follow_the_pages_and_apis_auth(fresh_db: str) -> None:
    async with reports_world(fresh_db, extra="[http]\npage_auth = true\n") as w:
        async with w.session.get(w.url("/reports?range=7d"), allow_redirects=False) as r:
            assert r.status == 303
            assert r.headers["Location"] == "/login?next=/reports"
        now = datetime.now().astimezone()
        period = {"from": (now - timedelta(days=1)).isoformat(), "to": now.isoformat()}
        url = w.url("/api/v1/reports/incidents")
        async with w.session.get(url, params=period) as r:
            assert r.status == 401 and "token" in (await r.json())["error"]
        async with w.session.get(url, params=period, headers=w.auth()) as r:
            assert r.status == 200 and (await r.json())["incidents"] == []
