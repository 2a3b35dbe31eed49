"""Defects found by the fourteenth new user's trial (a NOC engineer installing the service
on a server kept on UTC, with `[messages] timezone = "Europe/Moscow"`), each pinned through
the real HTTP interface, command or function it was found in."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from outagemon.core import messages
from outagemon.http import charts
from tests.test_newuser13_fixes import run_cli
from tests.world import READ, WRITE, world

# Far from any zone a test machine is kept in, so that the server's own zone cannot pass.
ZONE = "Asia/Vladivostok"


async def test_the_api_and_the_page_give_times_in_the_zone_callers_hear_them(
    fresh_db: str,
) -> None:
    """Callers heard "Неисправность началась в 07:55" while /check's `since`, the incident,
    its timeline and the page all said 04:55 (+00:00, the server's zone), the outage
    history 07:55+03:00, and the page's ETA field took 09:30 as the server's 09:30, which
    callers then heard as 12:30. All of them now follow `[messages] timezone`."""
    zone = ZoneInfo(ZONE)
    browser = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with world(fresh_db) as w, browser:
        w.runtime.texts = messages.load("ru", timezone=ZONE)  # as a reload sets it
        try:
            w.net.fail("sw-lenina-5")
            w.run(60)
            (inc,) = w.monitor.correlator.incidents.values()
            said = await w.check(account="1001")
            since = datetime.fromisoformat(said["since"])
            assert since.utcoffset() == zone.utcoffset(since), said["since"]
            assert f"Неисправность началась в {since:%H:%M}" in said["message"], said

            await w.flushed()  # the timeline is read from the database
            async with w.session.get(w.url(f"/api/v1/incidents/{inc.id}"),
                                     headers=w.auth()) as r:  # fmt: skip
                body = await r.json()
            assert body["opened_at"] == said["since"]
            opened = [e for e in body["timeline"] if e["kind"] == "opened"]
            assert datetime.fromisoformat(opened[0]["at"]).utcoffset() == since.utcoffset()

            page = w.url(f"/incidents/{inc.id}")
            async with browser.get(page) as r:
                text = await r.text()
            assert f"since {since:%d.%m.%Y %H:%M}" in text
            assert f"ETA (local time, {datetime.now(zone):%Z %z})" in text
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', text)
            assert csrf is not None

            # The form's field has no offset: the engineer's 09:30 is the page's zone's.
            later = (datetime.now(zone) + timedelta(hours=3)).replace(second=0, microsecond=0)
            form = {"token": WRITE, "csrf": csrf.group(1),
                    "eta": later.strftime("%Y-%m-%dT%H:%M")}  # fmt: skip
            async with browser.post(page, data=form, allow_redirects=False) as r:
                assert r.status == 303, await r.text()
            assert w.monitor.eta[inc.id] == pytest.approx(later.timestamp())
            said = await w.check(account="1001")
            assert said["eta"] == later.isoformat(timespec="seconds")
            assert f"в {later:%H:%M}" in said["message"], said["message"]
        finally:
            w.runtime.texts = messages.load("ru")


def test_the_reports_bars_say_the_planned_works_minutes_they_draw() -> None:
    """A building that lost only planned works was drawn a long blue bar labelled "0 min ·
    100 %": the minutes the bar stands for were in its hover title alone."""
    rows = [{"key": "пр-т Опытный, д. 3", "outage_minutes": 0.68, "planned_minutes": 0.0,
             "availability_pct": 99.9525, "incidents": 1},
            {"key": "ул. Садовая, д. 1", "outage_minutes": 0.0, "planned_minutes": 1.05,
             "availability_pct": 100.0, "incidents": 1}]  # fmt: skip
    values = re.findall(r'class="value">([^<]*)</text>', str(charts.worst(rows, "buildings")))
    assert values == ["0.68 min · 99.95 %", "0 min · 100 % · works 1.05 min"]


async def test_lookup_asks_by_node_and_says_where_a_flat_goes(fresh_db: str) -> None:
    """/check takes `node` (an engineer's "what do callers behind sw-x hear?") but
    `outagemon lookup` had no way to ask it; `--flat 3` alone was told "give --phone,
    --account or --address", not that a flat needs its address."""
    async with world(fresh_db) as w:
        w.net.fail("sw-lenina-5")
        w.run(60)
        base = w.url("/").rstrip("/")
        env = {"PATH": "/usr/bin:/bin", "OUTAGEMON_TOKEN": READ}
        node = await asyncio.to_thread(run_cli, "lookup", "--node", "sw-lenina-5", "--url", base,
                                       env=env)  # fmt: skip
        flat = await asyncio.to_thread(run_cli, "lookup", "--flat", "3", "--url", base, env=env)
    assert node.returncode == 0, node.stderr
    assert node.stdout.startswith("status: outage\n"), node.stdout
    assert "node: sw-lenina-5\n" in node.stdout
    assert flat.returncode == 2
    assert (
        flat.stderr == "outagemon lookup: --flat goes with --address (the flat of that address).\n"
    )
