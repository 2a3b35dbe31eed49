"""The incident page in a real headless Chromium: renders, updates live, takes an ETA,
and shows a note with a script in it as text."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.cdp import Browser, chromium
from tests.world import WRITE, world

pytestmark = pytest.mark.skipif(chromium() is None, reason="chromium is not installed")
SHOTS = Path(os.environ.get("OUTAGEMON_SCREENSHOTS", "/tmp/outagemon-screenshots"))


async def test_the_page_renders_updates_live_takes_an_eta_and_escapes_notes(
    fresh_db: str,
) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with world(fresh_db) as w, Browser() as b:
        w.net.fail("agg-s")
        w.run(60)
        (first,) = w.monitor.correlator.incidents.values()
        await b.open(w.url("/"))
        assert await b.eval(f"!!document.querySelector('[data-incident=\"{first.id}\"]')")
        assert "agg-s" in await b.eval("document.body.innerText")
        await b.eval("window.__sameDocument = true")

        # A new incident appears without a reload.
        w.net.fail("agg-n")
        w.run(60)
        second = next(i for i in w.monitor.correlator.incidents.values() if i.root == "agg-n")
        await b.wait_for(f"!!document.querySelector('[data-incident=\"{second.id}\"]')")
        assert await b.eval("window.__sameDocument === true"), "the page was reloaded"
        await b.screenshot(SHOTS / "index.png")

        # An engineer sets an ETA and a note through the form.
        await b.open(w.url(f"/incidents/{second.id}"))
        when = datetime.now() + timedelta(days=1)
        tomorrow = when.strftime("%Y-%m-%dT%H:%M")
        await b.eval(
            f"document.querySelector('input[name=eta]').value = '{tomorrow}';"
            "document.querySelector('textarea[name=note]').value ="
            " '<script>window.__pwned = 1</script> бригада на месте';"
            f"document.querySelector('input[name=token]').value = '{WRITE}';"
            "document.querySelector('form').submit(); true"
        )
        await b.wait_for("location.search.includes('message=saved')")
        assert w.monitor.eta.get(second.id) is not None
        await w.flushed()
        await b.open(w.url(f"/incidents/{second.id}"))
        text = await b.eval("document.body.innerText")
        assert "<script>window.__pwned = 1</script> бригада на месте" in text
        assert await b.eval("window.__pwned === undefined"), "a note's script ran"
        assert f"ETA {when:%d.%m.%Y %H:%M}" in text  # the ETA, shown back
        await b.screenshot(SHOTS / "incident.png")


async def test_with_page_auth_a_browser_logs_in_and_its_session_cookie_is_out_of_reach(
    fresh_db: str,
) -> None:
    async with world(fresh_db, extra="[http]\npage_auth = true\n") as w, Browser() as b:
        w.net.fail("agg-s")
        w.run(60)
        (inc,) = w.monitor.correlator.incidents.values()
        # Asked for an incident, the browser lands on the login form, and after it, back.
        await b.send("Page.navigate", url=w.url(f"/incidents/{inc.id}"))
        await b.wait_for("location.pathname === '/login' && document.readyState === 'complete'")
        assert await b.eval("document.querySelector('input[name=token]').autocomplete") == "off"
        await b.eval(
            f"document.querySelector('input[name=token]').value = '{WRITE}';"
            "document.querySelector('form').submit(); true"
        )
        await b.wait_for(f"location.pathname === '/incidents/{inc.id}'")
        # Scripts on the page (an injected one included) cannot read the session.
        assert "om_session" not in await b.eval("document.cookie")
        # A write session signs the form by itself: no token field, and it saves.
        soon = (datetime.now() + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M")
        assert await b.eval("document.querySelector('input[name=token]') === null")
        await b.eval(
            f"document.querySelector('input[name=eta]').value = '{soon}';"
            "document.querySelector('form[action^=\"/incidents\"]').submit(); true"
        )
        await b.wait_for("location.search === '?message=saved'")
        assert "Saved." in await b.eval("document.body.innerText")
        assert w.monitor.eta.get(inc.id) is not None
        # The live page still updates under the CSP (its script is a file of its own).
        await b.open(w.url("/"))
        w.net.fail("agg-n")
        w.run(60)
        second = next(i for i in w.monitor.correlator.incidents.values() if i.root == "agg-n")
        await b.wait_for(f"!!document.querySelector('[data-incident=\"{second.id}\"]')")
        await b.screenshot(SHOTS / "logged-in.png")
