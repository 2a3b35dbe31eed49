"""Defects found by the eleventh new user's trial (a NOC engineer following the README),
each pinned."""

from __future__ import annotations

import html
import re

from outagemon.core.assess import AnswerMemory, Status, assess
from outagemon.core.health import State
from tests.test_page_form import incident_form
from tests.test_suspicion_answers import ROUTERS, monitor_of, set_state, suspected
from tests.world import READ, WRITE


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
    async with incident_form(fresh_db) as (w, browser, inc, page, csrf):

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
