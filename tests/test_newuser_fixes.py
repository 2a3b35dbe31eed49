"""Defects a new user met trying outagemon from its README, each pinned by what it broke."""

from __future__ import annotations

import re

import aiohttp

from tests.world import world


async def test_a_reopened_incident_is_open_on_the_live_page_not_also_recently_resolved(
    fresh_db: str,
) -> None:
    """The page listed a reopened incident twice: open, and under "Recently resolved" with
    its first resolution (the monitor keeps that for callers' "restored"). It is open, and
    its card says when it reopened (callers hear "since" from then)."""
    async with world(fresh_db) as w:
        w.net.fail("agg-s")
        w.run(60)
        (inc,) = w.monitor.correlator.incidents.values()
        iid = inc.id
        w.net.repair("agg-s")
        w.run(30)
        w.run(90)  # resolve_hold is 60 s: resolved
        assert iid not in w.monitor.correlator.incidents
        w.run(120)  # within REOPEN_WITHIN of the resolution
        w.net.fail("agg-s")
        w.run(120)
        assert w.monitor.correlator.incidents[iid] is inc and inc.reopened_at is not None
        async with w.session.get(w.url("/")) as r:
            assert r.status == aiohttp.web.HTTPOk.status_code
            page = await r.text()
        live, resolved = page.split("<h2>Recently resolved</h2>", 1)
        resolved = resolved.split("<h2>", 1)[0]
        assert f'data-incident="{iid}"' in live
        assert not re.search(rf'href="/incidents/{iid}"', resolved), resolved
        card = live.split(f'data-incident="{iid}"', 1)[1].split("</div>\n</div>", 1)[0]
        assert '<span class="badge">reopened ' in card, card
