"""Gaps between what is true and what callers and billing heard, each pinned: the
caller's own router asked about by address and flat; the history of a confirmed
suspicion; an estimate after a refailure; the nodes an incident gained and cuts off."""

from __future__ import annotations

import html
import re
import time
from datetime import UTC, datetime, timedelta

from outagemon.alerting import payload
from outagemon.core.assess import AnswerMemory, Status, assess
from outagemon.core.health import State
from outagemon.core.incidents import EventKind, Maintenance
from outagemon.db import store
from tests.test_alerting import incident, topo
from tests.test_api_callers import agg_s_down, future, post, timeline
from tests.test_calls import widened_from_an_entrance
from tests.test_calls_api import NEIGHBOURS, three_callers_of_the_first_entrance
from tests.test_suspicion_answers import ROUTERS, monitor_of, set_state
from tests.test_suspicion_lifecycle_api import FAILING, stored, subscriber_outages
from tests.world import READ, world

MIRA = "пр-т Мира, д. 10"
# Two accounts of one flat, each with a router of theirs (one household).
HOUSEHOLD = NEIGHBOURS + (
    f'1040,+79210000040,"{MIRA}",30,127.0.1.40\n1041,+79210000041,"{MIRA}",30,127.0.1.41\n'
)


async def test_a_router_down_is_said_to_its_flat_asked_by_address(fresh_db: str) -> None:
    """Asked by address and flat, a caller whose router does not answer heard `ok`
    while the same subscriber asked by account heard `cpe_down`."""
    async with world(fresh_db) as w:
        w.net.fail("cpe:1002")
        w.run(120)
        mine = await w.check(account="1002")
        assert mine["status"] == "cpe_down"
        for flat in ("15", "015"):
            by_address = await w.check(address=MIRA, flat=flat)
            assert by_address["status"] == "cpe_down", by_address
            assert by_address["since"] == mine["since"]
            assert by_address["message"] == mine["message"]
        assert (await w.check(address=MIRA, flat="16"))["status"] == "ok"  # 1003's answers
        assert (await w.check(address=MIRA, flat="2"))["status"] == "ok"  # no one lives there


def test_a_household_hears_cpe_down_only_when_none_of_its_routers_answers() -> None:
    """Two accounts of one flat, one caller: "your router does not answer" is said by
    address only when it is true of whichever of the two is theirs."""
    m, clock = monitor_of(HOUSEHOLD)

    def by_address() -> Status:
        match = m.directory.address(MIRA, "30")
        return assess(m, m.directory, match, clock.now, 3600, AnswerMemory()).status

    memory = AnswerMemory()
    assert by_address() is Status.OK
    set_state(m, "cpe:1040", State.DOWN, clock.now - 60)
    assert by_address() is Status.OK  # 1041's answers: the caller may be theirs
    set_state(m, "cpe:1041", State.DOWN, clock.now)
    match = m.directory.address(MIRA, "30")
    said = assess(m, m.directory, match, clock.now, 3600, memory)
    assert said.status is Status.CPE_DOWN and said.since == clock.now  # since neither answers
    set_state(m, "cpe:1041", State.RECHECK, clock.now)
    assert by_address() is Status.OK  # not known to be down
    # Remembered per serving node: the next state is read again.
    set_state(m, ROUTERS[0], State.DOWN, clock.now)
    match = m.directory.address(MIRA, "15")
    assert assess(m, m.directory, match, clock.now, 3600, memory).status is Status.CPE_DOWN


async def test_an_estimate_is_withdrawn_when_the_root_fails_again_while_recovering(
    fresh_db: str,
) -> None:
    """The root answered (callers heard "restored") and failed again before the incident
    resolved: the estimate was still spoken, as if the repair it promised were this
    fault's, while a reopening withdrew it; the API and the page now agree it is gone."""
    async with agg_s_down(fresh_db) as (w, inc):
        iid = inc.id
        status, body = await post(w, iid, {"eta": future(120)})
        assert status == 200 and body["eta"], body
        w.net.repair("agg-s")
        w.run(30)  # recovering: resolve_hold is 60 s
        assert inc.recovering_since is not None
        w.net.fail("agg-s")
        w.run(60)
        assert inc.recovering_since is None and inc.id in w.monitor.correlator.incidents
        heard = await w.check(account="1006")
        assert heard["status"] == "outage", heard
        assert heard["eta"] == "" and "Работы продолжаются" in heard["message"], heard
        listed = (await post(w, iid, {"note": "снова упал"}))[1]
        assert listed["eta"] is None, listed
        events = await timeline(w, iid)
        kinds = [e["kind"] for e in events]
        assert kinds[kinds.index("refailed") + 1] == "eta", kinds
        assert events[kinds.index("refailed") + 1]["detail"] == {
            "eta": None, "by": "outagemon", "withdrawn": "refailed"}  # fmt: skip
        async with w.session.get(w.url(f"/incidents/{iid}"), headers=w.auth(READ)) as r:
            page = html.unescape(await r.text())
        assert "ETA not set" in page and "root failed again while recovering" in page, page
        async with w.session.get(w.url("/"), headers=w.auth(READ)) as r:
            assert "ETA not set" in await r.text()


def _header(page: str) -> str:
    found = re.search(r'<p class="muted">((?:open|resolved|merged) ·.*?)</p>', page, re.S)
    assert found is not None, page
    return html.unescape(found.group(1))


async def test_a_resolved_incidents_page_shows_no_estimate(fresh_db: str) -> None:
    """The header of a resolved incident's page said "ETA 26.11 18:30", the estimate of a
    repair that is over."""
    async with agg_s_down(fresh_db) as (w, inc):
        iid = inc.id
        assert (await post(w, iid, {"eta": future(120)}))[0] == 200
        async with w.session.get(w.url(f"/incidents/{iid}"), headers=w.auth(READ)) as r:
            header = _header(await r.text())
        assert "ETA" in header and "not set" not in header, header  # open: said
        w.net.repair("agg-s")
        w.run(30)
        w.run(90)  # resolve_hold is 60 s: resolved
        assert iid not in w.monitor.correlator.incidents
        await w.flushed()
        async with w.session.get(w.url(f"/incidents/{iid}"), headers=w.auth(READ)) as r:
            header = _header(await r.text())
        assert "resolved" in header and "ETA" not in header, header


async def test_the_nodes_an_incident_gained_agree_with_what_it_cuts_off(fresh_db: str) -> None:
    """The timeline said "added: 2" (the root left out) beside "cuts off 3 nodes" on the
    page and 3 nodes in the API (the root counted): it now says both, root and all."""
    async with world(fresh_db) as w:
        w.net.fail("agg-n")
        w.run(60)
        (inc,) = w.monitor.correlator.incidents.values()
        total = len(inc.nodes)
        assert total > 2
        await w.flushed()
        async with w.session.get(w.url(f"/incidents/{inc.id}"), headers=w.auth(READ)) as r:
            page = html.unescape(await r.text())
        (line,) = re.findall(r"<td>nodes</td><td>(.*?)</td>", page)
        assert line == f"{total - 1} nodes joined the root: it cuts off {total}, the root included"
        async with w.session.get(w.url("/"), headers=w.auth(READ)) as r:
            assert f"cuts off {total} nodes" in await r.text()


def test_a_widened_suspicion_says_the_nodes_it_gained() -> None:
    """Widened from an entrance to its switch, a suspicion's `nodes` line said "added"
    the switch's whole subtree, the nodes it already had and its root counted."""
    w, first, had = widened_from_an_entrance()
    assert first.incident.root == "sw-1-5"
    (grew,) = [e for e in w.take_events() if e.kind is EventKind.NODES]
    now = len(first.incident.nodes)
    assert grew.detail == {"added": now - had, "nodes": now}, (grew.detail, had, now)


def test_a_notification_counts_the_nodes_cut_off_as_the_page_does() -> None:
    """It said "131 node(s) cut off behind sw-1", the root counted among those behind
    it; the page says "cuts off 131" with the root among them."""
    said = payload.annotation_set(incident(nodes=131), topo())["description"]
    assert "131 nodes cut off: sw-1 and 130 nodes behind it" in said, said
    assert "behind sw-1" not in said


async def test_the_history_leaves_out_a_subscriber_whose_router_answered_throughout(
    fresh_db: str,
) -> None:
    """A confirmed suspicion at an entrance: 1004's own router answered from before it
    was raised to its end (1004 heard `ok` all along), yet billing counted 1004's minutes
    as for everyone served there. Counted: those whose router failed in it (1002) and
    those the probes cannot see (1030)."""
    async with world(fresh_db, subscribers=NEIGHBOURS) as w:
        await w.flushed()  # the inventory's nodes, then its subscribers' periods
        w.monitor.journal.inventory(w.monitor.directory, at=w.now)
        sus = await three_callers_of_the_first_entrance(w)
        iid = sus["id"]
        assert (await post(w, iid, {"confirm": True}))[0] == 200
        w.net.fail(*FAILING)
        w.run(40)
        assert (await w.check(account="1004"))["status"] == "ok"
        w.run(60)
        w.net.repair(*FAILING)
        w.run(30)
        w.run(70)
        row = await stored(w, iid)
        assert row["state"] == "resolved"
        w.runtime.reports = await store.connect(fresh_db, min_size=1, max_size=2)
        try:
            heard = {a: await subscriber_outages(w, a) for a in ("1002", "1004", "1030")}
        finally:
            await w.runtime.reports.close()
        minutes = (row["resolved_at"] - row["opened_at"]).total_seconds() / 60
        for account in ("1002", "1030"):
            assert heard[account]["incidents"] == [iid], heard[account]
            assert abs(heard[account]["outage_minutes"] - minutes) <= 0.1, heard[account]
        assert heard["1004"]["incidents"] == [] and heard["1004"]["outage_minutes"] == 0, heard
        # The billing export says the same.
        billed = await w.pool.fetch(store.DOWNTIME, row["opened_at"] - timedelta(minutes=1),
                                    row["resolved_at"] + timedelta(minutes=1),
                                    row["resolved_at"] + timedelta(minutes=1), 0)  # fmt: skip
        accounts = {r["account"] for r in billed}
        assert {"1002", "1030"} <= accounts and "1004" not in accounts, accounts


async def test_the_page_says_a_maintenance_incidents_estimate_as_the_api_does(
    fresh_db: str,
) -> None:
    """A node failed inside planned works: the API's `eta` was the works' end (callers
    hear it) while the page's card said "ETA not set"."""
    async with world(fresh_db) as w:
        ends = time.time() + 7200
        w.monitor.add_maintenance(Maintenance(1, "sw-sad-5", w.net.now, ends), "noc")
        w.net.fail("sw-sad-5")
        w.run(60)
        (inc,) = w.monitor.correlator.incidents.values()
        async with w.session.get(w.url(f"/api/v1/incidents/{inc.id}"), headers=w.auth()) as r:
            listed = await r.json()
        assert listed["kind"] == "maintenance" and listed["eta"], listed
        eta = datetime.fromisoformat(listed["eta"]).timestamp()
        async with w.session.get(w.url("/"), headers=w.auth(READ)) as r:
            page = html.unescape(await r.text())
        card = page[page.index(f'data-incident="{inc.id}"') :]
        card = card[: card.index("</div>\n</div>")]
        shown = datetime.fromtimestamp(eta, tz=UTC).astimezone().strftime("%d.%m %H:%M")
        assert f"ETA {shown}" in card, card
