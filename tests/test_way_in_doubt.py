"""A router down while the way to it is being decided: its entrance's routers falling
together, or its switch down with no incident yet. The caller heard "your router does not
answer, switch it off and on" in the seconds before their entrance's outage opened (the
thirteenth session's new user, in the demo); now `unknown` until the correlator has had
its time (assess.DOUBT_FOR), then what it decided.

The world is tests/world.py's: seg-mira-1 is an entrance with no address under the
switch sw-mira-10, its probed routers those of subscribers 1002-1004."""

from __future__ import annotations

from outagemon.core.assess import DOUBT_FOR, DOUBT_TOGETHER, AnswerMemory, Status, assess
from outagemon.core.health import State
from outagemon.monitor import Monitor
from tests.test_suspicion_answers import ROUTERS, hears, monitor_of, set_state
from tests.test_truthgaps import MIRA


def by_address(m: Monitor, flat: str) -> Status:
    match = m.directory.address(MIRA, flat)
    return assess(m, m.directory, match, m.clock(), 3600, AnswerMemory()).status


def test_a_router_down_alone_is_cpe_down_at_once() -> None:
    m, clock = monitor_of()
    set_state(m, ROUTERS[0], State.DOWN, clock.now)
    assert hears(m, "1002") is Status.CPE_DOWN
    assert by_address(m, "15") is Status.CPE_DOWN


def test_an_entrance_losing_its_routers_together_is_unknown_until_decided() -> None:
    m, clock = monitor_of()
    set_state(m, ROUTERS[0], State.DOWN, clock.now)
    set_state(m, ROUTERS[1], State.DOWN, clock.now + 2)
    assert hears(m, "1002") is Status.CPE_DOWN  # two routers: not yet the entrance's look
    set_state(m, ROUTERS[2], State.DOWN, clock.now + 4)
    clock.now += 5
    for account, flat in (("1002", "15"), ("1003", "16"), ("1004", "17")):
        assert hears(m, account) is Status.UNKNOWN, account
        assert by_address(m, flat) is Status.UNKNOWN, flat
    # No incident came of it within the correlator's time: each router's own answer.
    clock.now += DOUBT_FOR
    assert hears(m, "1002") is Status.CPE_DOWN
    assert by_address(m, "17") is Status.CPE_DOWN


def test_routers_off_one_by_one_are_each_cpe_down() -> None:
    m, clock = monitor_of()
    for i, router in enumerate(ROUTERS):
        set_state(m, router, State.DOWN, clock.now + i * (DOUBT_TOGETHER + 1))
    clock.now += 2 * (DOUBT_TOGETHER + 1)
    assert [hears(m, a) for a in ("1002", "1003", "1004")] == [Status.CPE_DOWN] * 3


def test_a_router_behind_its_switch_down_before_the_incident_opens_is_unknown() -> None:
    m, clock = monitor_of()
    set_state(m, "sw-mira-10", State.DOWN, clock.now)
    set_state(m, ROUTERS[0], State.DOWN, clock.now)
    assert hears(m, "1002") is Status.UNKNOWN
    set_state(m, "sw-mira-10", State.UP, clock.now)
    assert hears(m, "1002") is Status.CPE_DOWN
