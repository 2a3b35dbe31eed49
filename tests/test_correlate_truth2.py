"""The correlator's mistakes the truth oracle still found in seeds 2000-9999 (issue 11).

Pure: results are fed to the correlator by hand on a scripted clock. Each test is the
smallest form of one world the benchmark found (its seed named), and says what a caller or
an engineer would have seen wrong.
"""

from __future__ import annotations

from outagemon.core.health import State
from outagemon.core.incidents import Event
from outagemon.core.topology import Topology
from tests.test_correlate import n
from tests.test_correlate_truth import ANCHOR, fed, round_of


def opened(events: list[Event]) -> list[str]:
    return [e.root or "" for e in events if e.kind in ("opened", "reopened", "root_moved")]


def passive_with_routers() -> Topology:
    return Topology([n("core", "core"), n("seg", "segment", ("core",), probed=False),
                     *(n(f"cpe{i}", "cpe", ("seg",)) for i in range(3))])  # fmt: skip


def test_a_cable_whose_router_answers_again_through_it_is_up_whatever_the_others_do() -> None:
    # Seed 9627: the cable of a passive segment is cut (its three routers fall silent: an
    # inferred incident); two routers break meanwhile (invisible behind the cut). The cable
    # is mended: the third router answers through it. The cable is up (a router with no
    # other uplink answered through it); the two broken routers are the callers' own.
    c, t = fed(passive_with_routers())
    events: list[Event] = []
    for _ in range(4):
        t += 1.0
        events += round_of(c, t, {"cpe0": False, "cpe1": False, "cpe2": False})
    for _ in range(40):
        t += 1.0
        events += round_of(c, t, {ANCHOR: True, "core": True})
    assert opened(events) == ["seg"] and "seg" in c.inferred
    for _ in range(3):  # the cable is back; cpe0 and cpe2 stay broken
        t += 1.0
        events += round_of(c, t, {"cpe1": True, "cpe0": False, "cpe2": False})
    assert c.state_of("cpe1") is State.UP
    assert "seg" not in c.inferred
    for _ in range(80):
        t += 1.0
        events += round_of(c, t, {ANCHOR: True, "core": True, "cpe1": True,
                                  "cpe0": False, "cpe2": False})  # fmt: skip
    assert c.incidents == {}, [(i.root, i.nodes) for i in c.incidents.values()]
    assert c.state_of("cpe0") is State.DOWN and c.state_of("cpe2") is State.DOWN


def test_children_that_failed_apart_are_not_a_fault_above_when_seen_again_together() -> None:
    # Seed 3718: three aggregations under the core (the monitor's anchor) fail one by one,
    # minutes apart. The monitor goes blind and sees again: the three are looked at afresh
    # and found down within seconds of each other. They did not fail together; the core,
    # which answers, did not fail.
    topo = Topology([n("core", "core"), *(n(f"agg{i}", "aggregation", ("core",))
                                          for i in range(3))])  # fmt: skip
    c, t = fed(topo, anchors=())
    everyone = ["core", "agg0", "agg1", "agg2"]
    broken: set[str] = set()
    for agg in ("agg0", "agg1", "agg2"):
        broken.add(agg)
        for _ in range(120):
            t += 1.0
            round_of(c, t, {x: x not in broken for x in everyone})
    assert sorted(i.root for i in c.incidents.values()) == ["agg0", "agg1", "agg2"]
    for _ in range(20):  # blind
        t += 1.0
        round_of(c, t, dict.fromkeys(everyone, False))
    assert c.blind
    events: list[Event] = []
    for _ in range(60):
        t += 1.0
        events += round_of(c, t, {x: x not in broken for x in everyone})
    assert not c.blind and "core" not in c.inferred
    assert sorted(i.root for i in c.incidents.values()) == ["agg0", "agg1", "agg2"]
    assert "core" not in opened(events)


def test_routers_behind_a_returning_aggregation_that_failed_apart_infer_no_segment() -> None:
    # Seed 3104: one router of a passive segment breaks; much later the segment's cable is
    # cut (two routers more, too few to infer it), then the aggregation above fails. When
    # the aggregation comes back, the three routers are looked at afresh and found down
    # together; they did not fail together, and no incident is the segment's.
    topo = Topology([n("core", "core"), n("agg", "aggregation", ("core",)),
                     n("seg", "segment", ("agg",), probed=False),
                     *(n(f"cpe{i}", "cpe", ("seg",)) for i in range(3))])  # fmt: skip
    c, t = fed(topo)
    everyone = ["core", "agg", "cpe0", "cpe1", "cpe2", ANCHOR]
    down: set[str] = {"cpe0"}
    for _ in range(300):
        t += 1.0
        round_of(c, t, {x: x not in down for x in everyone})
    down |= {"cpe1", "cpe2"}  # the segment's cable: its other two routers
    for _ in range(12):
        t += 1.0
        round_of(c, t, {x: x not in down for x in everyone})
    assert "seg" not in c.inferred
    down.add("agg")
    for _ in range(120):
        t += 1.0
        round_of(c, t, {x: x not in down for x in everyone})
    assert [i.root for i in c.incidents.values()] == ["agg"]
    down.discard("agg")
    events: list[Event] = []
    for _ in range(120):
        t += 1.0
        events += round_of(c, t, {x: x not in down for x in everyone})
    assert "seg" not in opened(events), [(e.kind, e.root) for e in events]
    assert c.incidents == {}


def test_a_switch_silent_while_its_aggregation_briefly_failed_is_no_fault_of_its_own() -> None:
    # Seed 2931: the aggregation (lossy before: it needs a long streak) fails for 3 s and
    # comes back before its streak is long enough; the switch below (clean history: three
    # losses) is down by then. Its silence was the aggregation's: it must not open its own
    # incident when the aggregation answers again.
    topo = Topology([n("core", "core"), n("agg", "aggregation", ("core",)),
                     n("sw", "access", ("agg",))])  # fmt: skip
    c, t = fed(topo)
    ns = c.states["agg"]
    ns.n, ns.lost = 200.0, 20.0  # 10 % loss in its history: it needs 8 losses
    events: list[Event] = []
    for _ in range(4):  # the aggregation fails: both are lost
        t += 1.0
        events += round_of(c, t, {"agg": False, "sw": False, ANCHOR: True, "core": True})
    assert c.state_of("sw") is State.DOWN and c.state_of("agg") is State.UP
    t += 0.5
    events += round_of(c, t, {"agg": True})  # back: the switch's next probe is not yet due
    for _ in range(60):
        t += 1.0
        events += round_of(c, t, {ANCHOR: True, "core": True, "agg": True, "sw": True})
    assert opened(events) == [], [(e.kind, e.root) for e in events]
    assert c.state_of("sw") is State.UP


def test_a_switch_looked_at_afresh_that_answers_again_clears_what_fell_silent_under_it() -> None:
    # Seed 3187: a switch fails, then the aggregation above it; the aggregation comes back
    # and the switch is looked at afresh (still down, not yet found so again); its routers
    # are found down once more, and the segment above them is inferred while the switch
    # is unknown. Then the switch comes back: the routers' silence was the switch's.
    topo = Topology([n("core", "core"), n("agg", "aggregation", ("core",)),
                     n("sw", "access", ("agg",)), n("seg", "segment", ("sw",), probed=False),
                     *(n(f"cpe{i}", "cpe", ("seg",)) for i in range(3))])  # fmt: skip
    c, t = fed(topo)
    routers = ["cpe0", "cpe1", "cpe2"]
    fine = {ANCHOR: True, "agg": True, "core": True}
    for _ in range(60):  # the switch is down, its routers cut off
        t += 1.0
        round_of(c, t, {"sw": False, **dict.fromkeys(routers, False), **fine})
    assert [i.root for i in c.incidents.values()] == ["sw"]
    # The aggregation comes back from a failure: everything below is looked at afresh.
    c._recheck_below("agg", t)
    assert c.state_of("sw") is State.RECHECK
    events: list[Event] = []
    for _ in range(4):  # the routers' fresh probes are lost; the switch's is not yet due
        t += 1.0
        events += round_of(c, t, {**dict.fromkeys(routers, False), **fine})
    t += 0.5
    events += round_of(c, t, {"sw": True})  # the switch answers: it is back
    for _ in range(60):
        t += 1.0
        events += round_of(c, t, {ANCHOR: True, "agg": True, "sw": True,
                                  **dict.fromkeys(routers, True)})  # fmt: skip
    assert "seg" not in opened(events), [(e.kind, e.root) for e in events]


def test_what_fails_as_the_monitor_goes_blind_joins_no_incident() -> None:
    # Seeds 3586 and 7855: a switch is down (its incident open); a building hangs from it
    # and from a second switch. The monitor's uplink goes silent: the second switch's
    # streak completes before the anchor's (its history is cleaner), the building is cut
    # off and joins the first switch's incident; after the blindness, that incident
    # resolves for a moment with the building in it, and its callers hear `restored`
    # for the rest of restored_for, though the building never lost service.
    topo = Topology([n("core", "core"), n("sw-a", "access", ("core",)),
                     n("sw-b", "access", ("core",)),
                     n("house", "segment", ("sw-a", "sw-b"), probed=False)])  # fmt: skip
    c, t = fed(topo)
    c.states[ANCHOR].n, c.states[ANCHOR].lost = 200.0, 40.0  # the anchor needs 11 losses,
    c.states["core"].n, c.states["core"].lost = 200.0, 20.0  # the core 8, sw-b 3
    for _ in range(60):
        t += 1.0
        round_of(c, t, {"sw-a": False, "sw-b": True, "core": True, ANCHOR: True})
    (inc,) = c.incidents.values()
    assert inc.nodes == ["sw-a"]
    seen: list[list[str]] = []
    for _ in range(20):  # blind: everything is lost
        t += 1.0
        round_of(c, t, dict.fromkeys(["sw-a", "sw-b", "core", ANCHOR], False))
        if c.blind:  # before, the monitor cannot know yet that it is its own uplink
            seen.extend(list(i.nodes) for i in c.incidents.values())
    assert c.blind
    events: list[Event] = []
    for _ in range(120):
        t += 1.0
        events += round_of(c, t, {"sw-a": False, "sw-b": True, "core": True, ANCHOR: True})
        seen.extend(list(i.nodes) for i in c.incidents.values())
    assert all("house" not in nodes for nodes in seen), seen
    assert all("house" not in e.nodes for e in events if e.kind == "resolved")
    assert [i.nodes for i in c.incidents.values()] == [["sw-a"]]


def test_after_blindness_a_cable_found_cut_is_inferred_from_all_its_routers() -> None:
    # Seed 8, the other side of seed 3718's rule: one router of a passive segment broke,
    # then the segment's cable was cut (two routers more: too few, apart, to infer it).
    # The monitor goes blind and sees again: it saw none of what failed before, and all
    # three routers are down now; under a cable without an address, that is the cable.
    c, t = fed(passive_with_routers())
    everyone = ["core", "cpe0", "cpe1", "cpe2", ANCHOR]
    down = {"cpe0"}
    for _ in range(200):
        t += 1.0
        round_of(c, t, {x: x not in down for x in everyone})
    down |= {"cpe1", "cpe2"}
    for _ in range(60):
        t += 1.0
        round_of(c, t, {x: x not in down for x in everyone})
    assert "seg" not in c.inferred and c.incidents == {}
    for _ in range(20):
        t += 1.0
        round_of(c, t, dict.fromkeys(everyone, False))
    assert c.blind
    events: list[Event] = []
    for _ in range(60):
        t += 1.0
        events += round_of(c, t, {x: x not in down for x in everyone})
    assert opened(events) == ["seg"]
