"""Gaps between what is true and what callers and billing heard, each pinned: the
caller's own router asked about by address and flat; the history of a confirmed
suspicion; an estimate after a refailure; the nodes an incident gained and cuts off."""

from __future__ import annotations

from outagemon.core.assess import AnswerMemory, Status, assess
from outagemon.core.health import State
from tests.test_calls_api import NEIGHBOURS
from tests.test_suspicion_answers import ROUTERS, monitor_of, set_state
from tests.world import world

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

