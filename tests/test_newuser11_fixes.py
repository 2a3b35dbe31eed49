"""Defects found by the eleventh new user's trial (a NOC engineer following the README),
each pinned."""

from __future__ import annotations

import html
import re
import time
from datetime import datetime

from outagemon.core.assess import AnswerMemory, Status, assess
from outagemon.core.health import State
from outagemon.http.page import period_text
from tests.test_maintenance_api import works_withdrawn_over_a_failed_node
from tests.test_page_form import incident_form
from tests.test_suspicion_answers import ROUTERS, monitor_of, set_state, suspected
from tests.world import READ, WRITE, world


def test_a_confirmed_suspicion_is_not_said_to_a_flat_asked_by_address_whose_router_answers() -> (
    None
):
    """The same household hears the same answer by account and by its address and flat:
    asked by address, a flat whose subscriber's router answers heard `outage` of a
    confirmed suspicion while the same subscriber asked by account heard `ok`."""
    m, clock = monitor_of()
    iid = suspected(m, clock)
    assert m.confirm(iid, "eng")
    set_state(m, ROUTERS[1], State.DOWN, clock.now)

    def by_address(flat: str) -> Status:
        match = m.directory.address("пр-т Мира, д. 10", flat)
        return assess(m, m.directory, match, clock.now, 3600, AnswerMemory()).status

    assert by_address("15") is Status.OK  # 1002's flat: its router answers
    assert by_address("015") is Status.OK  # the same flat, written with a zero
    assert by_address("16") is Status.OUTAGE  # 1003's: its router is down
    assert by_address("20") is Status.OUTAGE  # 1020's: no router of theirs
    assert by_address("2") is Status.OUTAGE  # no subscriber there: nothing says otherwise
    # The same, asked in turn through one memory (answers remembered per serving node).
    memory = AnswerMemory()
    for flat, status in [("16", Status.OUTAGE), ("15", Status.OK), ("16", Status.OUTAGE)]:
        match = m.directory.address("пр-т Мира, д. 10", flat)
        assert assess(m, m.directory, match, clock.now, 3600, memory).status is status


async def test_the_page_form_says_a_read_token_may_only_read(fresh_db: str) -> None:
    """A read token typed into the page's form was answered "The write token is not
    valid.", as if mistyped; the API names it as a token that may only read."""
    async with incident_form(fresh_db) as (w, browser, _inc, page, csrf):

        async def said(token: str) -> str:
            async with browser.post(page, data={"token": token, "csrf": csrf, "note": "x"},
                                    allow_redirects=False) as r:  # fmt: skip
                location = r.headers["Location"]
            async with browser.get(w.url(location)) as back:
                found = re.search(r'<p class="card message">(.*?)</p>', await back.text())
            assert found is not None, location
            return html.unescape(found.group(1))

        assert await said(READ) == "That token may only read; type a write token."
        assert await said("wrong-token-0123456789") == "The write token is not valid."
        assert (await said(WRITE)).startswith("Saved")


async def test_works_withdrawn_over_a_failed_node_say_when_they_ended_as_a_time(
    fresh_db: str,
) -> None:
    """The timeline said "works ended: 1796097151.0" (seconds since 1970, on the page too)
    and that number was the works' planned end, two hours ahead, not their withdrawal."""
    async with world(fresh_db) as w:
        iid = (await works_withdrawn_over_a_failed_node(w))["incident_id"]
        await w.flushed()
        async with w.session.get(w.url(f"/api/v1/incidents/{iid}"), headers=w.auth(READ)) as r:
            found = await r.json()
        (changed,) = [e["detail"] for e in found["timeline"] if e["kind"] == "kind_changed"]
        ended = datetime.fromisoformat(changed["works_ended"])
        assert ended.timestamp() < time.time() + 600  # withdrawn now, not 2 h ahead
        async with w.session.get(w.url(f"/incidents/{iid}"), headers=w.auth(READ)) as r:
            page = html.unescape(await r.text())
        said = ended.astimezone().strftime("%d.%m.%Y %H:%M")
        assert f"Planned works ended {said} with its root still down: an outage now." in page


async def test_the_page_says_how_long_it_lists_resolved_incidents_in_words(fresh_db: str) -> None:
    """The page said "None in the last 0.2 h." (the demo's restored_for, 600 s): a typo?"""
    assert [period_text(s) for s in (600, 3600, 7200, 5400)] == [
        "10 minutes", "hour", "2 hours", "90 minutes"]  # fmt: skip
    async with world(fresh_db) as w, w.session.get(w.url("/")) as r:
        assert "None in the last hour." in await r.text()
