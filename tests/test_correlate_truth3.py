"""The correlator's mistakes the truth oracle found in seeds 40000-42999 (session 13).

Pure: results are fed to the correlator by hand on a scripted clock. Each test is the
smallest form of one world the benchmark found (its seed named), and says what a caller or
an engineer would have seen wrong.
"""

from __future__ import annotations

from outagemon.core.incidents import Event, Kind, Maintenance
from outagemon.core.topology import Topology
from tests.test_correlate import n
from tests.test_correlate_truth import ANCHOR, fed, round_of


def two_ways_up() -> Topology:
    """A building (seg) fed by a switch under agg-a and by a switch without an address
    under agg-b."""
    return Topology([n("core", "core"), n("agg-a", "aggregation", ("core",)),
                     n("agg-b", "aggregation", ("core",)), n("sw-a", "access", ("agg-a",)),
                     n("sw-b", "access", ("agg-b",), probed=False),
                     n("seg", "segment", ("sw-b", "sw-a"))])  # fmt: skip


class Clock:
    """A correlator fed one round a second: each of `everyone` answers unless down."""

    def __init__(self, topo: Topology, everyone: list[str]) -> None:
        self.c, self.t = fed(topo)
        self.everyone = everyone
        self.events: list[Event] = []

    def rounds(self, count: int, down: set[str]) -> None:
        for _ in range(count):
            self.t += 1.0
            answers = {x: x not in down for x in self.everyone}
            self.events.extend(round_of(self.c, self.t, answers))


def test_a_root_with_another_dead_uplink_is_not_taken_in_by_a_root_above_one_of_them() -> None:
    # Seed 40711: sw-b (no address) broke unseen, then sw-a and agg-a above it: the
    # building, cut off from both sides, is a root of its own (its uplink through sw-b is
    # not known down). agg-a comes back: sw-a, still down, is a root again; it is above
    # the building on one side only and does not explain it. It took the building's
    # incident in and left the building out of it: the building in no incident, its
    # callers heard `ok` after the repair, not `restored`.
    w = Clock(two_ways_up(), ["core", "agg-b", ANCHOR, "agg-a", "sw-a", "seg"])
    c, rounds, events = w.c, w.rounds, w.events
    rounds(20, {"sw-a", "seg"})
    rounds(60, {"agg-a", "sw-a", "seg"})
    seg = c.incident_for("seg")
    assert seg is not None and seg.root == "seg"
    rounds(10, {"sw-a", "seg"})  # agg-a back: sw-a is a root again, above seg on one side
    assert seg.root == "seg" and seg.recovering_since is None, events[-6:]
    assert c.incident_for("seg") is seg
    rounds(80, set())  # sw-a is mended: the building answers through it
    resolved = [e for e in events if e.kind == "resolved" and e.incident == seg.id]
    assert len(resolved) == 1 and "seg" in resolved[0].nodes


def one_side_dead_other_passive() -> Topology:
    """A switch under agg-b (probed) and agg-p (without an address), on two cores."""
    return Topology([n("core", "core"), n("core-b", "core"),
                     n("agg-p", "aggregation", ("core",), probed=False),
                     n("agg-b", "aggregation", ("core-b",)),
                     n("sw", "access", ("agg-b", "agg-p"))])  # fmt: skip


def test_a_root_that_failed_before_works_began_is_an_outage_though_it_settled_inside() -> None:
    # Seed 41338 (--overlap): a switch with two uplinks, one of them (agg-b) long dead,
    # the other without an address. Works are booked on the switch from 17 s ahead; the
    # switch fails at once. Its silence may be its passive uplink's (a window to settle),
    # so its incident opens after the works began: it failed before them, an outage (it
    # said maintenance: callers heard the works' end as their repair).
    w = Clock(one_side_dead_other_passive(), ["core", "core-b", ANCHOR, "agg-b", "sw"])
    c, rounds = w.c, w.rounds
    rounds(120, {"agg-b"})
    c.set_maintenance([Maintenance(1, "sw", w.t + 17, w.t + 600, "works")], w.t)
    rounds(10, {"agg-b", "sw"})
    assert all(i.root != "sw" for i in c.incidents.values())  # settling; no works yet
    rounds(60, {"agg-b", "sw"})
    inc = c.incident_for("sw")
    assert inc is not None and inc.root == "sw" and inc.kind is Kind.OUTAGE


def test_a_root_that_failed_inside_works_is_maintenance_though_it_settled_later() -> None:
    w = Clock(one_side_dead_other_passive(), ["core", "core-b", ANCHOR, "agg-b", "sw"])
    c = w.c
    c.set_maintenance([Maintenance(1, "sw", w.t + 1, w.t + 600, "works")], w.t)
    w.rounds(120, {"agg-b"})
    w.rounds(70, {"agg-b", "sw"})
    inc = c.incident_for("sw")
    assert inc is not None and inc.root == "sw" and inc.kind is Kind.MAINTENANCE


def settled_between_works(second_from: float) -> Kind:
    """sw fails 2 s before works on it end; other works on it begin `second_from` s after
    that end; it settles a window later, under those: the kind its incident opens as."""
    w = Clock(one_side_dead_other_passive(), ["core", "core-b", ANCHOR, "agg-b", "sw"])
    w.rounds(120, {"agg-b"})
    ends = w.t + 6
    c = w.c
    c.set_maintenance([Maintenance(1, "sw", w.t - 600, ends, "cable"),
                       Maintenance(2, "sw", ends + second_from, ends + 900, "other team")],
                      w.t)  # fmt: skip
    w.rounds(4, {"agg-b", "sw"})
    assert w.t < ends and all(i.root != "sw" for i in c.incidents.values())  # settling
    w.rounds(70, {"agg-b", "sw"})
    inc = c.incident_for("sw")
    assert inc is not None and inc.root == "sw", c.incidents
    return inc.kind


def test_a_root_that_failed_inside_works_that_ended_is_an_outage_under_later_works() -> None:
    # The first works ended with sw still down (a fault, not the works), and the second
    # began 10 s later: it settled under those, and opened as maintenance (its callers
    # would hear the second works' end as its repair). Works that follow on without a
    # break (a chain) still cover it.
    assert settled_between_works(10.0) is Kind.OUTAGE
    assert settled_between_works(0.0) is Kind.MAINTENANCE


def a_switch_after_a_minute() -> Clock:
    """core - agg - sw, every one answering for a minute."""
    topo = Topology([n("core", "core"), n("agg", "aggregation", ("core",)),
                     n("sw", "access", ("agg",))])  # fmt: skip
    w = Clock(topo, ["core", ANCHOR, "agg", "sw"])
    w.rounds(60, set())
    return w


def test_an_incident_of_works_that_ended_is_not_carried_by_later_works() -> None:
    # As above, opened at once inside the first works: when they ended with sw still down
    # and other works on it began 10 s later (inside resolve_hold), the incident stayed
    # maintenance to the second works' end (callers told of works for 15 more minutes),
    # where one that settled a moment later is an outage. Its fault outlived its works.
    w = a_switch_after_a_minute()
    ends = w.t + 30
    w.c.set_maintenance([Maintenance(1, "sw", w.t - 600, ends, "cable"),
                         Maintenance(2, "sw", ends + 10, ends + 900, "other team")],
                        w.t)  # fmt: skip
    w.rounds(20, {"sw"})
    (inc,) = w.c.incidents.values()
    assert inc.kind is Kind.MAINTENANCE and inc.maintenance_until == ends, inc
    w.rounds(100, {"sw"})  # past the first works' end and resolve_hold
    (later,) = w.c.incidents.values()
    assert later is inc and later.kind is Kind.OUTAGE and later.works_ended == ends, later


def test_an_incident_reopened_under_new_works_ends_with_them() -> None:
    # Seed 28 of --overlap: an aggregation switch failed inside works, came back just
    # after their end and resolved; within ten minutes it failed again inside new works,
    # reopening the same incident (maintenance both times) with the first works' end as
    # its own: it became an outage at once (callers heard "outage" inside the works).
    topo = Topology([n("core", "core"), n("agg", "aggregation", ("core",))])
    w = Clock(topo, ["core", ANCHOR, "agg"])
    w.rounds(60, set())
    first = w.t + 200
    w.c.set_maintenance([Maintenance(1, "agg", w.t + 10, first, "cable")], w.t)
    w.rounds(20, set())
    w.rounds(200, {"agg"})  # down from 20 s in the works to 20 s past their end
    w.rounds(80, set())  # back: resolved after resolve_hold
    assert not w.c.incidents
    works = Maintenance(2, "agg", w.t + 200, w.t + 900, "switch")
    w.c.set_maintenance([Maintenance(1, "agg", w.t - 300, first, "cable"), works], w.t)
    w.rounds(205, set())
    w.rounds(60, {"agg"})
    (inc,) = w.c.incidents.values()
    assert inc.reopened_at is not None, inc  # within REOPEN_WITHIN: the same incident
    assert inc.kind is Kind.MAINTENANCE and inc.maintenance_until == works.ends_at, inc


def test_works_extended_just_before_their_end_carry_their_incident_on() -> None:
    # The engineer extends the works 0.5 s before their end; the correlator's next round
    # comes after that end. The incident took the works' new end as "works begun after
    # its own ended" (its end not yet moved, the time past it) and became an outage
    # `resolve_hold` later, inside the works still running (the merge's review).
    w = a_switch_after_a_minute()
    ends = w.t + 30.5
    works = Maintenance(1, "sw", w.t - 600, ends, "cable")
    w.c.set_maintenance([works], w.t)
    w.rounds(30, {"sw"})
    (inc,) = w.c.incidents.values()
    assert inc.kind is Kind.MAINTENANCE and inc.maintenance_until == ends, inc
    assert ends - 1 < w.t < ends
    longer = Maintenance(1, "sw", works.starts_at, ends + 900, "cable")
    w.c.set_maintenance([longer], w.t)
    w.rounds(120, {"sw"})  # past the old end and resolve_hold, inside the new end
    (inc,) = w.c.incidents.values()
    assert inc.kind is Kind.MAINTENANCE and inc.maintenance_until == ends + 900, inc
