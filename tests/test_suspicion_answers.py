"""What callers inside a suspected incident hear, and how the probes end one (pure core and
the monitor, no database: tests/test_calls_api.py has them through HTTP and PostgreSQL).

The world is tests/world.py's: seg-mira-1 is an entrance with no address, its probed
routers those of subscribers 1002-1004; 1020-1022 live there without a router of theirs.
"""

from __future__ import annotations

from pathlib import Path

from outagemon import config
from outagemon.core.assess import AnswerMemory, Status, assess
from outagemon.core.calls import Call
from outagemon.core.directory import Match
from outagemon.core.health import NodeState, State
from outagemon.core.incidents import EventKind, IncidentState, Maintenance
from outagemon.metrics import Registry
from outagemon.monitor import Monitor
from tests.test_calls_api import NEIGHBOURS
from tests.world import build_directory

ROUTERS = ("cpe:1002", "cpe:1003", "cpe:1004")  # behind seg-mira-1


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


def monitor_of(subscribers: str = NEIGHBOURS) -> tuple[Monitor, Clock]:
    """A monitor whose probed nodes all answer, its first round done."""
    d = build_directory(subscribers)
    cfg = config.parse("[correlation]\nresolve_hold = 60\n", Path("outagemon.toml"))
    clock = Clock()
    m = Monitor(cfg, d, Registry(), clock=clock)
    for node in d.topology.nodes.values():
        if node.probed:
            m.correlator.states[node.id] = NodeState(state=State.UP, changed_at=clock.now)
    m.first_round_done = True
    return m, clock


def router_of(m: Monitor, account: str) -> str:
    (sub,) = [s for s in m.directory.subscribers if s.account == account]
    return sub.node


def hears(m: Monitor, account: str) -> Status:
    match = m.directory.account(account)
    return assess(m, m.directory, match, m.clock(), 3600, AnswerMemory()).status


def set_state(m: Monitor, node: str, state: State, at: float) -> None:
    ns = m.correlator.states[node]
    ns.state = state
    if state is State.DOWN:
        ns.down_at = at
    m.correlator.version += 1


def suspected(m: Monitor, clock: Clock) -> int:
    """Three callers of seg-mira-1 without a router of their own: a suspicion there."""
    calls = [Call(clock.now - 60 + i, "seg-mira-1", "пр-т Мира, д. 10", f"c{i}", "ivr", "ok")
             for i in range(3)]  # fmt: skip
    for c in calls:
        m.call_log.append(c)
    m.watch_calls(clock.now)
    (iid,) = m.watch.open
    assert m.watch.open[iid].incident.root == "seg-mira-1"
    return iid


def test_routers_are_named_as_the_world_has_them() -> None:
    m, _ = monitor_of()
    assert tuple(router_of(m, a) for a in ("1002", "1003", "1004")) == ROUTERS


def test_a_caller_whose_router_answers_does_not_hear_a_confirmed_suspicion() -> None:
    """Confirmed at their entrance, an outage raised by calls is said to the callers the
    probes cannot see (no router of theirs, or one that does not answer), never to one
    whose own router answers: the way to them works, as a probed incident could never
    cut off a router that answers."""
    m, clock = monitor_of()
    iid = suspected(m, clock)
    assert m.confirm(iid, "eng")
    assert hears(m, "1020") is Status.OUTAGE  # no router of theirs
    assert hears(m, "1002") is Status.OK  # theirs answers
    set_state(m, ROUTERS[1], State.DOWN, clock.now)
    assert hears(m, "1003") is Status.OUTAGE  # theirs is down: the outage explains it
    set_state(m, ROUTERS[2], State.RECHECK, clock.now)
    assert hears(m, "1004") is Status.OUTAGE  # not known to answer
    # Their answer with its sentence, as before the confirmation.
    match = m.directory.account("1002")
    said = assess(m, m.directory, match, clock.now, 3600, AnswerMemory())
    assert said.incident is None and said.suspected is m.watch.open[iid].incident


def test_a_remembered_path_does_not_make_an_answering_router_hear_outage() -> None:
    """The answers remembered per serving node are the same for every router: the
    caller whose router answers and the one whose router is down, asked in turn."""
    m, clock = monitor_of()
    iid = suspected(m, clock)
    assert m.confirm(iid, "eng")
    memory = AnswerMemory()
    set_state(m, ROUTERS[1], State.DOWN, clock.now)
    for account, status in [("1003", Status.OUTAGE), ("1002", Status.OK),
                            ("1003", Status.OUTAGE), ("1002", Status.OK)]:  # fmt: skip
        match = m.directory.account(account)
        assert assess(m, m.directory, match, clock.now, 3600, memory).status is status


def test_inside_a_suspicion_a_router_that_does_not_answer_is_said_with_the_sentence() -> None:
    m, clock = monitor_of()
    iid = suspected(m, clock)
    set_state(m, ROUTERS[0], State.DOWN, clock.now)
    match = m.directory.account("1002")
    said = assess(m, m.directory, match, clock.now, 3600, AnswerMemory())
    assert said.status is Status.CPE_DOWN and said.suspected is m.watch.open[iid].incident
    # Not inside one: no sentence.
    far = m.directory.account("1005")  # the other entrance
    set_state(m, router_of(m, "1005"), State.DOWN, clock.now)
    said = assess(m, m.directory, far, clock.now, 3600, AnswerMemory())
    assert said.status is Status.CPE_DOWN and said.suspected is None


def test_works_blindness_and_a_probed_incident_come_before_a_confirmed_suspicion() -> None:
    m, clock = monitor_of()
    iid = suspected(m, clock)
    assert m.confirm(iid, "eng")
    works = Maintenance(1, "sw-mira-10", clock.now - 10, clock.now + 600)
    m.maintenance = [works]
    m.correlator.set_maintenance([works], clock.now)
    assert hears(m, "1020") is Status.MAINTENANCE
    assert hears(m, "1002") is Status.MAINTENANCE
    m.maintenance = []
    m.correlator.set_maintenance([], clock.now)
    assert hears(m, "1020") is Status.OUTAGE
    m.correlator.blind = True
    m.correlator.version += 1
    assert hears(m, "1020") is Status.UNKNOWN and hears(m, "1002") is Status.UNKNOWN


def back_after_a_fault(m: Monitor, clock: Clock, iid: int) -> None:
    """The entrance's routers go down after its callers phoned, then answer again."""
    for r in ROUTERS:
        set_state(m, r, State.DOWN, clock.now + 5)
    clock.now += 30
    m.watch_calls(clock.now)
    assert not m.watch.open[iid].failed  # down for less than resolve_hold: not yet
    clock.now += 60
    m.watch_calls(clock.now)
    assert iid in m.watch.open and set(m.watch.open[iid].failed) == set(ROUTERS)
    for r in ROUTERS:
        set_state(m, r, State.UP, clock.now)
    clock.now += 5
    m.watch_calls(clock.now)  # all answer: back from here, held resolve_hold (60 s)
    clock.now += 59
    m.watch_calls(clock.now)
    assert iid in m.watch.open


def test_a_confirmed_suspicion_is_repaired_when_the_probes_see_its_place_answer_again() -> None:
    m, clock = monitor_of()
    iid = suspected(m, clock)
    assert m.confirm(iid, "eng")
    m.watch.take_events()
    back_after_a_fault(m, clock, iid)
    back = clock.now - 59
    clock.now += 1
    m.watch_calls(clock.now)
    assert iid not in m.watch.open
    inc = m.recent["seg-mira-1"]
    assert inc.id == iid and inc.state is IncidentState.RESOLVED and inc.resolved_at == back
    assert hears(m, "1020") is Status.RESTORED
    assert m._resolved[iid] is inc
    text = m.metrics.render()
    assert 'outagemon_suspicions_total{outcome="repaired"} 1' in text


def test_one_never_confirmed_ends_quietly_when_its_place_answers_again() -> None:
    m, clock = monitor_of()
    iid = suspected(m, clock)
    m.watch.take_events()
    back_after_a_fault(m, clock, iid)
    clock.now += 1
    ended = m.watch.service_back(clock.now, m.down_since, m.answering, lambda _n: False, 60)
    assert [s.incident.id for s in ended] == [iid]
    (e,) = m.watch.take_events()
    assert e.kind is EventKind.RESOLVED and e.detail["cleared"] and not e.detail.get("repaired")
    assert e.detail["answering"] == sorted(ROUTERS) and e.at == clock.now - 60
    assert "seg-mira-1" not in m.recent  # nobody heard an outage: no `restored`
    assert hears(m, "1020") is Status.OK


def test_a_router_failing_again_while_held_keeps_it_open() -> None:
    m, clock = monitor_of()
    iid = suspected(m, clock)
    assert m.confirm(iid, "eng")
    back_after_a_fault(m, clock, iid)
    set_state(m, ROUTERS[0], State.DOWN, clock.now)
    clock.now += 1
    m.watch_calls(clock.now)
    assert iid in m.watch.open and m.watch.open[iid].back_since is None
    set_state(m, ROUTERS[0], State.UP, clock.now)
    clock.now += 30
    m.watch_calls(clock.now)
    clock.now += 59
    m.watch_calls(clock.now)
    assert iid in m.watch.open  # held afresh from its return
    clock.now += 1
    m.watch_calls(clock.now)
    assert iid not in m.watch.open


def test_the_probes_say_nothing_of_a_place_whose_probed_nodes_never_failed() -> None:
    """Its routers answered all along (the fault is its unmanaged subscribers'): a
    confirmed one stays until an engineer says it is repaired."""
    m, clock = monitor_of()
    iid = suspected(m, clock)
    assert m.confirm(iid, "eng")
    clock.now += 3600
    m.watch_calls(clock.now)
    assert iid in m.watch.open and not m.watch.open[iid].failed


def test_a_router_down_since_long_before_the_calls_is_no_part_of_it() -> None:
    """Its owner away for a week: its coming back repairs nothing."""
    m, clock = monitor_of()
    set_state(m, ROUTERS[0], State.DOWN, clock.now - 7 * 86400)
    iid = suspected(m, clock)
    assert m.confirm(iid, "eng")
    set_state(m, ROUTERS[0], State.UP, clock.now)
    for _ in range(3):
        clock.now += 60
        m.watch_calls(clock.now)
    assert iid in m.watch.open and not m.watch.open[iid].failed


def test_blind_the_probes_end_nothing_and_the_hold_starts_afresh_after() -> None:
    m, clock = monitor_of()
    iid = suspected(m, clock)
    assert m.confirm(iid, "eng")
    back_after_a_fault(m, clock, iid)
    m.correlator.blind = True
    clock.now += 120
    m.watch_calls(clock.now)
    assert iid in m.watch.open and m.watch.open[iid].back_since is None
    m.correlator.blind = False
    clock.now += 1
    m.watch_calls(clock.now)
    assert iid in m.watch.open  # back from here
    clock.now += 60
    m.watch_calls(clock.now)
    assert iid not in m.watch.open


def test_routers_down_for_a_moment_with_the_monitors_uplink_are_no_evidence() -> None:
    """A silence of the monitor's own uplink too short to be called blind: every router
    down for seconds, then looked at afresh and answering. Nothing failed there."""
    m, clock = monitor_of()
    iid = suspected(m, clock)
    assert m.confirm(iid, "eng")
    for r in ROUTERS:
        set_state(m, r, State.DOWN, clock.now)
    clock.now += 1
    m.watch_calls(clock.now)
    answering_for_minutes(m, clock, 3)
    assert iid in m.watch.open and not m.watch.open[iid].failed


def test_one_router_of_three_rebooting_repairs_nothing() -> None:
    """Fewer than half of its place's probed nodes failing and coming back is their own
    trouble (a reboot), not the place's repair."""
    m, clock = monitor_of()
    iid = suspected(m, clock)
    assert m.confirm(iid, "eng")
    down_and_back(m, clock, ROUTERS[0], looks=3)
    assert iid in m.watch.open and list(m.watch.open[iid].failed) == [ROUTERS[0]]
    # A second one failed too (two of three): the place's; back, it is repaired.
    down_and_back(m, clock, ROUTERS[1], looks=2)
    assert iid not in m.watch.open


def down_and_back(m: Monitor, clock: Clock, router: str, looks: int) -> None:
    """A router down for 75 s, then answering for `looks` minutes (the monitor looking
    each)."""
    set_state(m, router, State.DOWN, clock.now + 5)
    for _ in range(2):
        clock.now += 40
        m.watch_calls(clock.now)
    set_state(m, router, State.UP, clock.now)
    for _ in range(looks):
        clock.now += 60
        m.watch_calls(clock.now)


def test_routers_down_under_planned_works_repair_nothing_when_they_end() -> None:
    """Works on the entrance's switch take its routers down: their coming back after the
    works says nothing of the fault its callers reported."""
    m, clock = monitor_of()
    iid = suspected(m, clock)
    assert m.confirm(iid, "eng")
    works = Maintenance(1, "sw-mira-10", clock.now, clock.now + 600)
    m.maintenance = [works]
    m.correlator.set_maintenance([works], clock.now)
    for r in ROUTERS:
        set_state(m, r, State.DOWN, clock.now + 5)
    for _ in range(3):
        clock.now += 60
        m.watch_calls(clock.now)
    assert hears(m, "1020") is Status.MAINTENANCE
    clock.now += 600
    m.maintenance = []
    m.correlator.set_maintenance([], clock.now)
    answering_for_minutes(m, clock, 3)
    assert iid in m.watch.open and not m.watch.open[iid].failed
    assert hears(m, "1020") is Status.OUTAGE


def test_a_router_asked_about_by_its_node_is_the_callers_own() -> None:
    """The helpdesk asks `?node=cpe:…`: the router answering is not in a confirmed
    suspicion's outage; one that does not answer is `cpe_down`, as asked by account."""
    m, clock = monitor_of()

    def node_hears(node: str) -> Status:
        match = Match(nodes=(node,))
        return assess(m, m.directory, match, clock.now, 3600, AnswerMemory()).status

    set_state(m, ROUTERS[1], State.DOWN, clock.now)
    assert node_hears(ROUTERS[1]) is Status.CPE_DOWN
    assert node_hears(ROUTERS[0]) is Status.OK
    iid = suspected(m, clock)
    assert m.confirm(iid, "eng")
    assert node_hears(ROUTERS[0]) is Status.OK
    assert node_hears(ROUTERS[1]) is Status.OUTAGE
    assert node_hears("seg-mira-1") is Status.OUTAGE


def answering_for_minutes(m: Monitor, clock: Clock, minutes: int) -> None:
    """Every router of the entrance answers from now, the monitor looking each minute."""
    for r in ROUTERS:
        set_state(m, r, State.UP, clock.now)
    for _ in range(minutes):
        clock.now += 60
        m.watch_calls(clock.now)
