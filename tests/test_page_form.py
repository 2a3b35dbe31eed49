"""The incident page's form checks an estimate and a note as the API does (one rule)."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

import aiohttp
import pytest

from outagemon.core.incidents import Incident, Kind
from tests.world import WRITE, World, world


@asynccontextmanager
async def incident_form(fresh_db: str) -> AsyncIterator[tuple[World, aiohttp.ClientSession,
                                                              Incident, str, str]]:  # fmt: skip
    """A world with sw-lenina-5's incident open, and a browser that has its page open: the
    world, the browser, the incident, the page's URL and its form's CSRF token."""
    # A browser keeps the page's cookie (on 127.0.0.1 too), which binds the form's CSRF token.
    browser = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with world(fresh_db) as w, browser:
        w.net.fail("sw-lenina-5")
        w.run(60)
        (inc,) = w.monitor.correlator.incidents.values()
        page = w.url(f"/incidents/{inc.id}")
        async with browser.get(page) as r:
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', await r.text())
        assert csrf is not None
        yield w, browser, inc, page, csrf.group(1)


async def test_the_form_refuses_what_the_api_refuses_and_saves_the_rest(fresh_db: str) -> None:
    async with incident_form(fresh_db) as (w, browser, inc, page, csrf):

        async def post(**form: str) -> str:
            """The sentence the page is sent back with (a code in the URL, the server's text
            on the page)."""
            async with browser.post(page, data={"token": WRITE, "csrf": csrf, **form},
                                    allow_redirects=False) as r:  # fmt: skip
                assert r.status == 303, await r.text()
                location = r.headers["Location"]
            async with browser.get(w.url(location)) as shown:
                said = re.search(r'<p class="card message">(.*?)</p>', await shown.text())
            assert said is not None, location
            return html.unescape(said.group(1))

        # A browser's datetime-local field: no offset, the server's local time.
        past = (datetime.now() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
        assert "eta is in the past" in await post(eta=past)
        assert "at most 2000 characters" in await post(note="x" * 2001)
        assert inc.id not in w.monitor.eta, "a refused estimate is never heard by callers"
        async with w.session.post(w.url(f"/api/v1/incidents/{inc.id}"),
                                  json={"note": "x" * 2001},
                                  headers=w.auth(WRITE)) as r:  # fmt: skip
            assert r.status == 400
            assert "at most 2000 characters" in (await r.json())["error"]
        later = (datetime.now() + timedelta(hours=3)).replace(second=0, microsecond=0)
        saved = await post(eta=later.strftime("%Y-%m-%dT%H:%M"), note="  бригада выехала ")
        assert saved == "Saved."
        assert w.monitor.eta[inc.id] == pytest.approx(later.astimezone().timestamp())
        await w.flushed()
        notes = await w.pool.fetch(
            "select detail->>'note' as note from incident_event"
            " where incident_id = $1 and kind = 'note'",
            inc.id,
        )
        assert [n["note"] for n in notes] == ["бригада выехала"]


async def test_the_page_says_why_a_suspicion_at_an_answering_node_is_not_confirmed(
    fresh_db: str,
) -> None:
    # One suspected at agg-s (taken up after a restart) while agg-s answers the probes.
    browser = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with world(fresh_db) as w, browser:
        now, book = w.monitor.clock(), w.monitor.correlator.book
        iid, book.next_id = book.next_id, book.next_id + 1
        w.monitor.watch.restore([Incident(id=iid, root="agg-s", kind=Kind.SUSPECTED,
                                          inferred=True, opened_at=now, nodes=["agg-s"],
                                          raised_by="calls")], now)  # fmt: skip
        page = w.url(f"/incidents/{iid}")
        async with browser.get(page) as r:
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', await r.text())
        assert csrf is not None
        async with browser.post(page, data={"token": WRITE, "csrf": csrf.group(1),
                                            "decision": "confirm"}) as shown:  # fmt: skip
            said = re.search(r'<p class="card message">(.*?)</p>', await shown.text())
        assert said is not None and "answers the probes now" in html.unescape(said.group(1))
        assert w.monitor.watch.open[iid].incident.kind is Kind.SUSPECTED


async def test_planned_works_are_withdrawn_from_the_page(fresh_db: str) -> None:
    # The live section links each works to its page, whose button withdraws them.
    browser = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with world(fresh_db) as w, browser:
        starts = datetime.now().astimezone().isoformat()
        ends = (datetime.now() + timedelta(hours=2)).astimezone().isoformat()
        works = {"node": "agg-s", "starts_at": starts, "ends_at": ends, "reason": "не тот узел"}
        async with w.session.post(w.url("/api/v1/maintenance"), headers=w.auth(WRITE),
                                  json=works) as r:  # fmt: skip
            wid = (await r.json())["id"]
        async with browser.get(w.url("/")) as r:
            assert f'href="/maintenance/{wid}"' in await r.text()
        page = w.url(f"/maintenance/{wid}")
        async with browser.get(page) as r:
            shown = await r.text()
        assert "не тот узел" in shown and "declared by noc" in shown
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', shown)
        assert csrf is not None
        assert (await w.check(account="1007"))["status"] == "maintenance"

        async def post(token: str) -> str:
            async with browser.post(page, data={"token": token, "csrf": csrf.group(1)},
                                    allow_redirects=False) as r:  # fmt: skip
                assert r.status == 303, await r.text()
                location = r.headers["Location"]
            async with browser.get(w.url(location)) as back:
                said = re.search(r'<p class="card message">(.*?)</p>', await back.text())
            assert said is not None, location
            return html.unescape(said.group(1))

        assert "not valid" in await post("wrong-token-0123456789")
        assert (await w.check(account="1007"))["status"] == "maintenance"
        assert (await post(WRITE)).startswith("Withdrawn")
        assert (await w.check(account="1007"))["status"] == "ok"
        async with browser.get(page) as r:
            assert r.status == 404  # nothing left to withdraw
