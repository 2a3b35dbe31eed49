"""Scenarios of the correlator on a simulated network with a scripted clock.

Each test builds the smallest network that shows one behaviour, warms it up (so every
target has a history of answers, as in steady operation), injects a fault and checks
the incidents a NOC engineer and a caller would see.
"""

from __future__ import annotations

import dataclasses

import pytest

from outagemon.core.correlator import Correlator
from outagemon.core.health import NodeState, Settings, State, needed_losses
from outagemon.core.incidents import Event, Incident, Kind, Maintenance
from outagemon.core.topology import Node, Topology
from outagemon.sim.simnet import SimNet

SETTINGS = Settings(down_after=3, up_after=2, window=30, infer_min_children=3,
                    infer_ratio=0.8, resolve_hold=60, interval=5.0)  # fmt: skip
WARM = 3600.0  # an hour of clean history before the fault


def n(id: str, kind: str, parents: tuple[str, ...] = (), probed: bool = True) -> Node:
    ip = f"127.9.{abs(hash(id)) % 250}.{abs(hash(id + 'x')) % 250}" if probed else None
    return Node(id=id, kind=kind, ip=ip, parents=parents)


def city(aggs: int = 2, access: int = 5, cpes: int = 0) -> Topology:
    nodes = [n("uplink", "core"), n("core", "core", ("uplink",))]
    for a in range(aggs):
        nodes.append(n(f"agg{a}", "aggregation", ("core",)))
        for s in range(access):
            nodes.append(n(f"sw{a}-{s}", "access", (f"agg{a}",)))
            for c in range(cpes):
                nodes.append(n(f"cpe{a}-{s}-{c}", "cpe", (f"sw{a}-{s}",)))
    return Topology(nodes)


def sim(topo: Topology, seed: int = 1, settings: Settings = SETTINGS) -> SimNet:
    c = Correlator(topo, settings)
    s = SimNet(topo, c, interval=5.0, timeout=1.0, seed=seed)
    s.run_for(WARM)
    assert c.incidents == {}, "a clean network must have no incident"
    return s


def kinds(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.kind == kind]


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_an_aggregation_with_50_switches_is_one_incident_whatever_the_order(seed: int) -> None:
    s = sim(city(aggs=2, access=50), seed=seed)
    s.fail("agg0")
    events = s.run_for(60)
    opened = kinds(events, "opened")
    assert [e.root for e in opened] == ["agg0"], [(e.kind, e.root) for e in events]
    (inc,) = s.correlator.incidents.values()
    assert inc.root == "agg0" and not inc.inferred
    assert set(inc.nodes) == {"agg0", *(f"sw0-{i}" for i in range(50))}
    assert inc.nodes[0] == "agg0"
    assert kinds(events, "merged") == [] and kinds(events, "root_moved") == []


def test_the_incident_is_visible_within_ten_seconds_of_the_fault() -> None:
    s = sim(city(aggs=1, access=5))
    fault = s.now
    s.fail("sw0-3")
    events = s.run_for(30)
    (opened,) = kinds(events, "opened")
    assert opened.root == "sw0-3"
    assert opened.at - fault <= 10.0


def test_two_uplinks_losing_one_is_nothing_losing_both_cuts_it_off() -> None:
    topo = Topology([
        n("uplink", "core"), n("core", "core", ("uplink",)),
        n("aggA", "aggregation", ("core",)), n("aggB", "aggregation", ("core",)),
        n("sw", "access", ("aggA", "aggB")),
        n("swA", "access", ("aggA",)),
    ])  # fmt: skip
    s = sim(topo)
    s.fail("aggA")
    events = s.run_for(60)
    assert [e.root for e in kinds(events, "opened")] == ["aggA"]
    inc_a = s.correlator.incident_for("aggA")
    assert inc_a is not None and "sw" not in inc_a.nodes and "swA" in inc_a.nodes
    assert s.correlator.incident_for("sw") is None
    s.fail("aggB")
    events = s.run_for(60)
    assert [e.root for e in kinds(events, "opened")] == ["aggB"]
    covering = s.correlator.incident_for("sw")
    assert covering is not None and covering.root in {"aggA", "aggB"}
    assert all(i.root != "sw" for i in s.correlator.incidents.values())


def entrance(cpes: int = 10) -> Topology:
    nodes = [n("uplink", "core"), n("core", "core", ("uplink",)),
             n("sw", "access", ("core",)), n("seg", "segment", ("sw",), probed=False)]  # fmt: skip
    nodes += [n(f"cpe{i}", "cpe", ("seg",)) for i in range(cpes)]
    return Topology(nodes)


def test_an_entrance_without_ip_whose_ten_routers_drop_together_is_inferred() -> None:
    s = sim(entrance())
    s.fail("seg")  # the cable to the entrance is cut; the switch still answers
    events = s.run_for(60)
    (opened,) = kinds(events, "opened")
    assert opened.root == "seg" and opened.detail["inferred"] is True
    (inc,) = s.correlator.incidents.values()
    assert inc.inferred and set(inc.nodes) == {"seg", *(f"cpe{i}" for i in range(10))}
    assert s.correlator.state_of("sw") is State.UP


def test_two_of_ten_routers_off_is_not_an_incident_only_cpe_down() -> None:
    s = sim(entrance())
    s.fail("cpe3", "cpe7")
    events = s.run_for(120)
    assert kinds(events, "opened") == []
    assert s.correlator.state_of("cpe3") is State.DOWN
    assert s.correlator.incident_for("cpe3") is None


def test_routers_switched_off_one_by_one_over_the_evening_are_not_an_outage() -> None:
    s = sim(entrance())
    for i in range(9):
        s.fail(f"cpe{i}")
        s.run_for(600)  # ten minutes apart: not together
    assert s.correlator.incidents == {}


def test_ten_percent_loss_everywhere_for_an_hour_invents_nothing() -> None:
    s = sim(city(aggs=4, access=25, cpes=0))
    s.default_loss = 0.10
    events = s.run_for(3600)
    assert kinds(events, "opened") == []
    degraded = [n for n, ns in s.correlator.states.items() if ns.state is State.DOWN]
    assert degraded == []


def test_a_real_failure_under_ten_percent_loss_is_still_found() -> None:
    s = sim(city(aggs=2, access=10))
    s.default_loss = 0.10
    s.run_for(3600)
    s.fail("sw1-4")
    events = s.run_for(60)
    assert [e.root for e in kinds(events, "opened")] == ["sw1-4"]


def test_losing_the_monitors_own_uplink_opens_nothing_and_says_blind() -> None:
    s = sim(city(aggs=2, access=10))
    s.uplink_down = True
    events = s.run_for(300)
    assert kinds(events, "opened") == []
    assert s.correlator.blind
    assert [e.kind for e in events if e.kind in ("blind", "seeing")] == ["blind"]
    s.uplink_down = False
    events = s.run_for(300)
    assert kinds(events, "opened") == [], "no burst of false incidents on recovery"
    assert not s.correlator.blind


def test_blind_keeps_the_open_incidents() -> None:
    s = sim(city(aggs=2, access=3))
    s.fail("agg1")
    s.run_for(60)
    (inc,) = s.correlator.incidents.values()
    s.uplink_down = True
    s.run_for(300)
    assert s.correlator.blind and inc.id in s.correlator.incidents


def test_a_flapping_switch_is_one_incident() -> None:
    # Down 15 s, up 15 s: more than six changes within the look-back (21 intervals).
    s = sim(city(aggs=1, access=3), settings=dataclasses.replace(SETTINGS, resolve_hold=10))
    events: list[Event] = []
    for _ in range(8):
        s.fail("sw0-1")
        events += s.run_for(15)
        s.repair("sw0-1")
        events += s.run_for(15)
    assert len(kinds(events, "opened")) == 1, [(e.kind, e.at) for e in events]
    assert s.correlator.states["sw0-1"].flapping
    # once flapping is seen the incident is held open rather than resolved and reopened
    last_resolved = max((e.at for e in kinds(events, "resolved")), default=0.0)
    assert last_resolved < s.now - 120
    assert len(s.correlator.incidents) == 1


def test_a_flapping_switchs_incident_resolves_once_stable_for_the_look_back() -> None:
    settings = dataclasses.replace(SETTINGS, resolve_hold=10)
    s = sim(city(aggs=1, access=3), settings=settings)
    for _ in range(8):
        s.fail("sw0-1")
        s.run_for(15)
        s.repair("sw0-1")
        s.run_for(15)
    (inc,) = s.correlator.incidents.values()
    stable_since = s.now - 15
    events = s.run_for(settings.flap_period + settings.resolve_hold + 3 * 5.0)
    (resolved,) = kinds(events, "resolved")
    assert resolved.incident == inc.id
    assert resolved.at - stable_since <= settings.flap_period + settings.resolve_hold + 2 * 5.0
    assert s.correlator.incidents == {} and not s.correlator.states["sw0-1"].flapping


def test_recovery_of_a_root_with_100_children_is_one_resolution_and_no_child_events() -> None:
    s = sim(city(aggs=1, access=100))
    s.fail("agg0")
    s.run_for(60)
    (inc,) = s.correlator.incidents.values()
    assert len(inc.nodes) == 101
    s.repair("agg0")
    events = s.run_for(200)
    assert [e.kind for e in events if e.kind != "nodes"] == ["recovering", "resolved"]
    assert s.correlator.incidents == {}


def test_a_higher_root_absorbs_incidents_below_it_keeping_the_oldest_id() -> None:
    s = sim(city(aggs=1, access=4))
    s.fail("sw0-1")
    s.run_for(60)
    (first,) = s.correlator.incidents.values()
    s.fail("agg0")
    events = s.run_for(60)
    assert kinds(events, "opened") == []
    (moved,) = kinds(events, "root_moved")
    assert moved.incident == first.id and moved.root == "agg0"
    (inc,) = s.correlator.incidents.values()
    assert inc.id == first.id and inc.root == "agg0" and "sw0-1" in inc.nodes


def test_part_staying_down_after_the_root_recovers_splits_off() -> None:
    s = sim(city(aggs=1, access=4))
    s.fail("agg0")
    s.run_for(60)
    (inc,) = s.correlator.incidents.values()
    s.fail("sw0-2")  # dies while cut off
    s.repair("agg0")
    events = s.run_for(200)
    (opened,) = kinds(events, "opened")
    assert opened.root == "sw0-2" and opened.detail.get("split_from") == inc.id
    assert [e.incident for e in kinds(events, "resolved")] == [inc.id]
    assert [i.root for i in s.correlator.incidents.values()] == ["sw0-2"]


def test_planned_works_make_a_maintenance_incident_that_becomes_an_outage_if_it_overruns() -> None:
    s = sim(city(aggs=1, access=3))
    start = s.now
    s.correlator.set_maintenance([Maintenance(1, "sw0-0", start, start + 600, "upgrade")], start)
    s.fail("sw0-0")
    s.run_for(60)
    (inc,) = s.correlator.incidents.values()
    assert inc.kind is Kind.MAINTENANCE and inc.maintenance_until == start + 600
    events = s.run_for(700)
    assert [e.detail["to"] for e in kinds(events, "kind_changed")] == ["outage"]
    assert s.correlator.incidents[inc.id].kind.value == "outage"


@pytest.mark.parametrize("second_on", ["sw0-0", "agg0"])
def test_works_booked_to_follow_on_make_the_incident_end_at_the_chains_end(second_on: str) -> None:
    # 15:40-17:00 on the switch, then 16:50-18:00 on it (or on the aggregation above):
    # its callers get service back at 18:00, and the incident says so from the start.
    s = sim(city(aggs=1, access=3))
    start = s.now
    s.correlator.set_maintenance([Maintenance(1, "sw0-0", start, start + 600, "upgrade"),
                                  Maintenance(2, second_on, start + 540, start + 1200, "more")],
                                 start)  # fmt: skip
    s.fail("sw0-0")
    s.run_for(60)
    (inc,) = s.correlator.incidents.values()
    assert inc.kind is Kind.MAINTENANCE and inc.maintenance_until == start + 1200
    events = s.run_for(1100)  # past the first works' end (and its hold): still works
    assert kinds(events, "kind_changed") == []
    assert inc.kind is Kind.MAINTENANCE and inc.maintenance_until == start + 1200


def test_works_starting_while_others_run_cover_their_node_from_their_start() -> None:
    # The works running do not change when sw0-1's begin (sw0-0's run on): a node that
    # fails inside sw0-1's works is still planned works, not an outage.
    s = sim(city(aggs=1, access=3))
    start = s.now
    s.correlator.set_maintenance([Maintenance(1, "sw0-0", start, start + 1200, "upgrade"),
                                  Maintenance(2, "sw0-1", start + 300, start + 900, "more")],
                                 start)  # fmt: skip
    s.run_for(400)
    s.fail("sw0-1")
    s.run_for(60)
    (inc,) = s.correlator.incidents.values()
    assert (inc.root, inc.kind, inc.maintenance_until) == ("sw0-1", Kind.MAINTENANCE,
                                                           start + 900)  # fmt: skip


def test_works_with_a_gap_end_at_the_first_works_end() -> None:
    s = sim(city(aggs=1, access=3))
    start = s.now
    s.correlator.set_maintenance([Maintenance(1, "sw0-0", start, start + 600, "upgrade"),
                                  Maintenance(2, "sw0-0", start + 601, start + 1200, "more")],
                                 start)  # fmt: skip
    s.fail("sw0-0")
    s.run_for(60)
    (inc,) = s.correlator.incidents.values()
    assert inc.kind is Kind.MAINTENANCE and inc.maintenance_until == start + 600


def test_works_withdrawn_make_their_incident_an_outage_at_once() -> None:
    # Works cut to the moment they are withdrawn (as the monitor does): the switch still
    # down is a fault now, not in `resolve_hold` after the planned end.
    s = sim(city(aggs=1, access=3))
    start = s.now
    window = Maintenance(1, "sw0-0", start, start + 3600, "upgrade")
    s.correlator.set_maintenance([window], start)
    s.fail("sw0-0")
    s.run_for(60)
    (inc,) = s.correlator.incidents.values()
    assert inc.kind is Kind.MAINTENANCE
    s.correlator.set_maintenance([dataclasses.replace(window, ends_at=s.now)], s.now)
    events = s.run_for(10)
    assert [e.detail["to"] for e in kinds(events, "kind_changed")] == ["outage"]
    assert s.correlator.incidents[inc.id].kind.value == "outage"


def restarted(s: SimNet) -> Correlator:
    """A new correlator that knows only what the database kept: the open incidents."""
    saved = [dataclasses.replace(i, nodes=list(i.nodes)) for i in s.correlator.incidents.values()]
    c = Correlator(s.topology, s.correlator.settings)
    c.restore(saved, next_id=s.correlator.next_id)
    s.correlator = c
    return c


def test_after_a_restart_an_incident_whose_root_is_still_down_keeps_its_id() -> None:
    s = sim(city(aggs=2, access=5))
    s.fail("agg1")
    s.run_for(60)
    (inc,) = s.correlator.incidents.values()
    restarted(s)
    events = s.run_for(120)
    assert kinds(events, "opened") == []
    (again,) = s.correlator.incidents.values()
    assert again.id == inc.id and again.root == "agg1" and len(again.nodes) == 6


def test_after_a_restart_a_recovered_root_resolves_once() -> None:
    s = sim(city(aggs=1, access=5))
    s.fail("agg0")
    s.run_for(60)
    (inc,) = s.correlator.incidents.values()
    restarted(s)
    s.repair("agg0")
    events = s.run_for(300)
    assert [e.incident for e in kinds(events, "resolved")] == [inc.id]
    assert kinds(events, "opened") == []


def test_restart_during_a_restored_fault_then_new_ids_continue_after_the_old() -> None:
    s = sim(city(aggs=2, access=2))
    s.fail("agg0")
    s.run_for(60)
    restarted(s)
    s.fail("agg1")
    events = s.run_for(60)
    (opened,) = kinds(events, "opened")
    assert opened.incident == 2


def test_a_lossy_target_needs_a_longer_streak_than_a_clean_one() -> None:
    clean, lossy, new = NodeState(), NodeState(), NodeState()
    for i in range(1000):
        clean.record(False)
        lossy.record(i % 10 == 0)
    assert needed_losses(clean, 3) == 3
    assert 7 <= needed_losses(lossy, 3) <= 10
    assert needed_losses(new, 3) == 15
    # the chance that 10 % loss alone reaches the streak stays below one in ten million
    assert 0.1 ** needed_losses(lossy, 3) < 1e-7


def test_a_switch_losing_most_of_its_routers_while_it_answers_is_inferred() -> None:
    nodes = [n("uplink", "core"), n("core", "core", ("uplink",)), n("sw", "access", ("core",))]
    nodes += [n(f"cpe{i}", "cpe", ("sw",)) for i in range(10)]
    s = sim(Topology(nodes))
    s.fail(*(f"cpe{i}" for i in range(9)))
    events = s.run_for(60)
    (opened,) = kinds(events, "opened")
    assert opened.root == "sw" and opened.detail["inferred"] is True


def test_restore_ignores_nothing_it_was_given() -> None:
    topo = city(aggs=1, access=2)
    c = Correlator(topo, SETTINGS)
    inc = Incident(7, "agg0", Kind.OUTAGE, False, 100.0, ["agg0", "sw0-0", "sw0-1"])
    c.restore([inc], next_id=8)
    assert c.incident_for("sw0-1") is inc and c.next_id == 8
    assert c.state_of("agg0") is State.DOWN and c.state_of("sw0-0") is State.RECHECK


def test_a_parent_losing_its_own_probes_is_not_inferred_when_its_children_go_first() -> None:
    """Children reach `down` before their parent's own streak does (a slow parent probe):
    the parent's incident is still found by its own probes, not inferred."""
    s = sim(city(aggs=1, access=10))
    ns = s.correlator.states["agg0"]
    ns.n, ns.lost = 30.0, 3.0  # a lossy history: the aggregation needs a long streak
    s.fail("agg0")
    events = s.run_for(60)
    (opened,) = kinds(events, "opened")
    assert opened.root == "agg0" and opened.detail["inferred"] is False


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_children_still_losing_when_the_root_returns_open_nothing(seed: int) -> None:
    """The aggregation's incident opens while its switches, with a shorter history (so a
    longer streak to reach `down`), are still part-way through their streaks; it comes
    back at once. The losses they had, and those in flight, were the aggregation's."""
    topo = city(aggs=1, access=30)
    c = Correlator(topo, dataclasses.replace(SETTINGS, timeout=0.9))
    s = SimNet(topo, c, interval=1.0, timeout=0.9, seed=seed)
    s.run_for(600)
    for i in range(30):
        ns = c.states[f"sw0-{i}"]
        ns.n, ns.lost = 15.0, 0.0  # needs about 7 losses in a row
    s.fail("agg0")
    events: list[Event] = []

    def almost_down() -> bool:  # some switch one loss short of `down`
        return any(0 < ns.losses == needed_losses(ns, 3, c.network_loss) - 1
                   for n, ns in c.states.items() if n.startswith("sw"))  # fmt: skip

    while not (kinds(events, "opened") and almost_down()):
        events += s.run_for(0.05)
    s.repair("agg0")
    events = s.run_for(120)
    assert kinds(events, "opened") == [], [(e.kind, e.root) for e in events]
    assert len(kinds(events, "resolved")) == 1


def test_a_fault_back_soon_reopens_the_incident_from_its_own_start() -> None:
    """Within REOPEN_WITHIN the same incident (callers keep its id), but what began is
    this fault: `since` is the reopening's, `opened_at` stays the first fault's."""
    s = sim(city(aggs=1, access=3))
    s.fail("sw0-1")
    s.run_for(60)
    (inc,) = s.correlator.incidents.values()
    first = inc.opened_at
    s.repair("sw0-1")
    s.run_for(120)  # recovered, then resolved after resolve_hold
    assert inc.id not in s.correlator.incidents and inc.since == first
    failed_again = s.now + 200
    s.run_for(200)
    s.fail("sw0-1")
    events = s.run_for(60)
    assert [e.incident for e in kinds(events, "reopened")] == [inc.id]
    assert s.correlator.incidents[inc.id] is inc and inc.opened_at == first
    assert failed_again <= inc.since <= failed_again + 30 and inc.reopened_at == inc.since


def test_the_cut_is_every_node_cut_off_from_scratch_and_by_what_failures_add() -> None:
    """The decisions' cut (one call a parent for children with that one uplink, the rest
    child by child) is the topology's own answer, whether made from scratch or grown from
    the cut of fewer failures, with dual-homed nodes, routers and inner routers."""
    import random

    rng = random.Random(4)
    nodes = [n("top", "core"), n("top2", "core")]
    for a in range(6):
        ups = ("top",) if a % 3 else ("top", "top2")  # some aggregations dual-homed
        nodes.append(n(f"agg{a}", "aggregation", ups))
        for s in range(5):
            ups = (f"agg{a}",) if s % 2 else (f"agg{a}", f"agg{(a + 1) % 6}")
            nodes.append(n(f"sw{a}-{s}", "access", ups))
            for c in range(4):
                nodes.append(n(f"cpe{a}-{s}-{c}", "cpe", (f"sw{a}-{s}",)))
            nodes.append(n(f"hub{a}-{s}", "cpe", (f"sw{a}-{s}",)))  # a router with children
            nodes.append(n(f"cpe{a}-{s}-h", "cpe", (f"hub{a}-{s}",)))
    t = Topology(nodes)
    corr = Correlator(t, SETTINGS)
    ids = list(t.nodes)
    for _ in range(200):
        failed = set(rng.sample(ids, rng.randint(0, 12)))
        more = failed | set(rng.sample(ids, rng.randint(1, 12)))
        assert corr._cut(set(failed)) == t.cut_off(failed)
        assert corr._cut(more - failed, corr._cut(set(failed))) == t.cut_off(more)


def test_nodes_coming_back_while_still_cut_off_keep_the_cut_without_starting_afresh() -> None:
    # The uplink comes back: the nodes below answer before the anchor (down, it needs
    # up_after answers) makes the monitor see again. Each that leaves the failed set is
    # still cut off by the anchor: the cut and its roots are the same, and the decision
    # does not walk the whole network again (at city scale a million nodes, every tick).
    s = sim(city(aggs=2, access=5, cpes=3))
    c = s.correlator
    s.fail("sw0-1", "sw1-2")
    s.run_for(60)
    assert {i.root for i in c.incidents.values()} == {"sw0-1", "sw1-2"}
    s.uplink_down = True
    s.run_for(120)
    assert c.blind and c.nodes_down >= 2
    s.repair("sw0-1", "sw1-2")
    s.uplink_down = False
    kept: list[bool] = []
    still_cut = c._still_cut

    def spied() -> bool:
        kept.append(still_cut())
        return kept[-1]

    c._still_cut = spied  # type: ignore[method-assign]
    while c.blind:
        s.run_for(0.5)
        if not c._dirty:
            # The cut kept is the one a fresh walk of the failed set finds (blind, what
            # the anchor cuts off is found when asked: each node is asked).
            assert {x for x in s.topology.nodes if x in c._cut_cache} == c._cut(c._failed())
    assert True in kept, "nodes left the failed set while cut off: the cut is kept"
    assert kinds(s.run_for(300), "opened") == []
