"""The correlator's mistakes the truth oracle found (issue 11), each pinned where it lives.

Pure: results are fed to the correlator by hand on a scripted clock, or through the
simulated network (simulated time). Each test names what a caller or an engineer would
have seen wrong, on the smallest world the shrinker found for it.
"""

from __future__ import annotations

import dataclasses

import pytest

from outagemon.core.correlator import Correlator
from outagemon.core.health import State
from outagemon.core.incidents import Event, Kind, Maintenance
from outagemon.core.topology import Topology
from outagemon.sim.simnet import SimNet
from tests.test_correlate import SETTINGS, WARM, kinds, n

ANCHOR = "anchor:127.255.255.254"


def fed(topo: Topology, anchors: tuple[str, ...] = (ANCHOR,)) -> tuple[Correlator, float]:
    """A correlator that has seen every probed node (and the anchors) answer for 1000 s."""
    c = Correlator(topo, SETTINGS, anchors)
    targets = [*(x.id for x in topo.nodes.values() if x.probed), *anchors]
    t = 0.0
    for _ in range(200):
        t += 5.0
        for node in targets:
            c.observe(node, True, t)
        c.tick(t)
    assert c.incidents == {}
    return c, t


def round_of(c: Correlator, t: float, answers: dict[str, bool]) -> list[Event]:
    """One result for each of these nodes at t, then a decision."""
    for node, ok in answers.items():
        c.observe(node, ok, t)
    return c.tick(t)


def chain() -> Topology:
    return Topology([n("core", "core"), n("agg", "aggregation", ("core",)),
                     n("sw", "access", ("agg",)), n("cpe", "cpe", ("sw",))])  # fmt: skip


# -- case 3: what happened while the monitor could not see is no evidence ----------------------


def test_one_lost_probe_after_the_monitor_sees_again_is_not_a_failure() -> None:
    c, t = fed(chain())
    everyone = ["core", "agg", "sw", "cpe", ANCHOR]
    for _ in range(16):  # our own uplink is silent: everything is lost
        t += 1.0
        round_of(c, t, dict.fromkeys(everyone, False))
    assert c.blind
    for _ in range(2):
        t += 1.0
        round_of(c, t, {ANCHOR: True})
    assert not c.blind and c.state_of("agg") is State.RECHECK
    t += 1.0
    round_of(c, t, {"agg": False, "core": True, "sw": True, "cpe": True, ANCHOR: True})
    # Random loss on the first fresh probe: a streak must begin afresh, not end at once.
    assert c.state_of("agg") is State.RECHECK
    events = round_of(c, t + 0.5, {})
    assert kinds(events, "opened") == []


def test_an_anchor_still_down_when_another_answers_is_looked_at_afresh() -> None:
    topo = Topology([n("core-a", "core"), n("core-b", "core"),
                     n("agg", "aggregation", ("core-a", "core-b"))])  # fmt: skip
    c, t = fed(topo, anchors=())
    for _ in range(16):
        t += 1.0
        round_of(c, t, {"core-a": False, "core-b": False, "agg": False})
    assert c.blind
    for _ in range(2):  # core-a answers first; core-b's answer is still on its way
        t += 1.0
        events = round_of(c, t, {"core-a": True})
    assert not c.blind and c.state_of("core-b") is State.RECHECK
    for _ in range(5):
        t += 1.0
        events += round_of(c, t, {"core-a": True})
    assert kinds(events, "opened") == []


def test_an_uplink_silence_too_short_to_be_blind_opens_nothing() -> None:
    c, t = fed(chain())
    # Everything is lost for 4 s: the switch's streak completes, the anchor's does not.
    for i in range(4):
        t += 1.0
        round_of(c, t, {"sw": False, ANCHOR: False} if i else {"sw": False})
    assert c.state_of("sw") is State.DOWN and not c.blind
    t += 1.0
    events = round_of(c, t, {ANCHOR: True, "core": True, "agg": True})
    assert c.state_of("sw") is State.RECHECK
    for _ in range(5):
        t += 1.0
        events += round_of(c, t, {ANCHOR: True})
    assert kinds(events, "opened") == []


def test_a_switch_whose_router_answers_through_it_is_not_down() -> None:
    c, t = fed(chain())
    for _ in range(2):
        t += 1.0
        round_of(c, t, {"sw": False})
    t += 0.5
    round_of(c, t, {"cpe": True})  # sent after the switch's first lost probe
    t += 0.5
    round_of(c, t, {"sw": False})
    # The first two were random loss: the streak begins again with the third.
    assert c.state_of("sw") is State.UP and c.states["sw"].losses == 1


def test_blindness_does_not_make_every_node_flap() -> None:
    topo = Topology([n("core", "core"), n("agg", "aggregation", ("core",)),
                     *(n(f"sw{i}", "access", ("agg",)) for i in range(3))])  # fmt: skip
    settings = dataclasses.replace(SETTINGS, resolve_hold=10)
    c = Correlator(topo, settings, [ANCHOR])
    s = SimNet(topo, c, interval=5.0, timeout=1.0, extra_targets=[ANCHOR])
    s.run_for(WARM)
    for _ in range(3):  # three short blind spells: six "changes" of every node
        s.uplink_down = True
        s.run_for(25)
        s.uplink_down = False
        s.run_for(20)
    assert not any(ns.flapping for ns in c.states.values())
    s.fail("sw1")
    s.run_for(60)
    s.repair("sw1")
    events = s.run_for(60)
    assert [e.root for e in kinds(events, "resolved")] == ["sw1"]


# -- case 4: one fault, one incident -----------------------------------------------------------


def entrance_under(switch_probed: bool) -> Topology:
    return Topology([
        n("core", "core"), n("agg", "aggregation", ("core",)),
        n("sw", "access", ("agg",), probed=switch_probed),
        n("seg-1", "segment", ("sw",), probed=False), n("seg-2", "segment", ("sw",), probed=False),
        *(n(f"cpe-{e}-{i}", "cpe", (f"seg-{e}",)) for e in (1, 2) for i in range(3)),
    ])  # fmt: skip


def test_entrances_inferred_while_the_aggregation_was_down_get_no_incident_when_it_returns() -> (
    None
):
    c = Correlator(entrance_under(switch_probed=False), SETTINGS)
    s = SimNet(c.topology, c, interval=5.0, timeout=1.0)
    s.run_for(WARM)
    s.fail("agg")
    events = s.run_for(140)
    s.repair("agg")
    events += s.run_for(120)
    assert {e.root for e in kinds(events, "opened")} == {"agg"}, [(e.kind, e.root) for e in events]
    assert kinds(events, "resolved")[0].root == "agg" and c.incidents == {}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_entrances_under_a_flapping_switch_get_no_incidents_of_their_own(seed: int) -> None:
    c = Correlator(
        entrance_under(switch_probed=True), dataclasses.replace(SETTINGS, resolve_hold=3)
    )
    s = SimNet(c.topology, c, interval=5.0, timeout=1.0, seed=seed)
    s.run_for(WARM)
    events: list[Event] = []
    for _ in range(6):  # the demo's sw-3-7: down 15 s, up 15 s
        s.fail("sw")
        events += s.run_for(15)
        s.repair("sw")
        events += s.run_for(15)
    events += s.run_for(300)
    roots = {e.root for e in events if e.kind in ("opened", "reopened", "root_moved")}
    assert roots == {"sw"}, [(e.kind, e.root, e.at - s.now) for e in events]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_switches_under_an_aggregation_without_ip_wait_for_it_to_be_inferred(seed: int) -> None:
    topo = Topology([n("core", "core"), n("agg", "aggregation", ("core",), probed=False),
                     *(n(f"sw{i}", "access", ("agg",)) for i in range(3))])  # fmt: skip
    c = Correlator(topo, SETTINGS)
    s = SimNet(topo, c, interval=5.0, timeout=1.0, seed=seed)
    s.run_for(WARM)
    s.fail("agg")
    events = s.run_for(60)
    assert [(e.kind, e.root) for e in events if e.kind != "nodes"] == [("opened", "agg")]


# -- planned works -----------------------------------------------------------------------------


def dual() -> Topology:
    return Topology([n("core", "core"), n("agg-a", "aggregation", ("core",)),
                     n("agg-b", "aggregation", ("core",)), n("sw", "access", ("agg-a", "agg-b")),
                     n("sw-a", "access", ("agg-a",))])  # fmt: skip


def test_works_on_one_uplink_of_a_dual_homed_switch_do_not_make_its_own_fault_maintenance() -> None:
    c = Correlator(dual(), SETTINGS)
    s = SimNet(c.topology, c, interval=5.0, timeout=1.0)
    s.run_for(WARM)
    c.set_maintenance([Maintenance(1, "agg-a", s.now, s.now + 3600)], s.now)
    s.fail("sw", "sw-a")
    s.run_for(60)
    kinds_by_root = {i.root: i.kind for i in c.incidents.values()}
    assert kinds_by_root == {"sw": Kind.OUTAGE, "sw-a": Kind.MAINTENANCE}


def test_a_failure_under_works_soon_after_an_outage_of_the_same_node_is_maintenance() -> None:
    c = Correlator(dual(), dataclasses.replace(SETTINGS, resolve_hold=10))
    s = SimNet(c.topology, c, interval=5.0, timeout=1.0)
    s.run_for(WARM)
    s.fail("sw-a")
    s.run_for(60)
    s.repair("sw-a")
    s.run_for(60)
    assert c.incidents == {}
    c.set_maintenance([Maintenance(1, "sw-a", s.now, s.now + 3600)], s.now)
    s.fail("sw-a")
    s.run_for(60)
    (inc,) = c.incidents.values()
    assert inc.kind is Kind.MAINTENANCE and inc.maintenance_until == s.now - 60 + 3600


def test_an_outage_below_taken_in_by_a_root_failing_under_works_becomes_maintenance() -> None:
    c = Correlator(dual(), SETTINGS)
    s = SimNet(c.topology, c, interval=5.0, timeout=1.0)
    s.run_for(WARM)
    s.fail("sw-a")
    s.run_for(60)
    (inc,) = c.incidents.values()
    assert inc.kind is Kind.OUTAGE
    ends = s.now + 3600
    c.set_maintenance([Maintenance(1, "agg-a", s.now, ends)], s.now)
    s.fail("agg-a")
    events = s.run_for(60)
    assert (inc.root, inc.kind, inc.maintenance_until) == ("agg-a", Kind.MAINTENANCE, ends)
    assert [e.detail for e in kinds(events, "kind_changed")] == [
        {"from": "outage", "to": "maintenance"}
    ]


def test_a_node_answering_while_our_only_anchor_was_losing_probes_is_not_down() -> None:
    # The anchor is the core (a topology root) and the only uplink of the aggregation: the
    # aggregation's answer ends the anchor's streak, which was our own uplink's silence.
    topo = Topology([n("core", "core"), n("agg", "aggregation", ("core",))])
    c, t = fed(topo, anchors=())
    for i in range(4):
        t += 1.0
        round_of(c, t, {"agg": False, "core": False} if i else {"agg": False})
    assert c.state_of("agg") is State.DOWN and not c.blind
    t += 1.0
    events = round_of(c, t, {"agg": True})
    assert c.state_of("agg") is State.UP
    for _ in range(5):
        t += 1.0
        events += round_of(c, t, {"core": True, "agg": True})
    assert kinds(events, "opened") == []
