"""The correlator's mistakes the truth oracle found in seeds 40000-42999 (session 13).

Pure: results are fed to the correlator by hand on a scripted clock. Each test is the
smallest form of one world the benchmark found (its seed named), and says what a caller or
an engineer would have seen wrong.
"""

from __future__ import annotations

from outagemon.core.incidents import Event
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


def test_a_root_with_another_dead_uplink_is_not_taken_in_by_a_root_above_one_of_them() -> None:
    # Seed 40711: sw-b (no address) broke unseen, then sw-a and agg-a above it: the
    # building, cut off from both sides, is a root of its own (its uplink through sw-b is
    # not known down). agg-a comes back: sw-a, still down, is a root again; it is above
    # the building on one side only and does not explain it. It took the building's
    # incident in and left the building out of it: the building in no incident, its
    # callers heard `ok` after the repair, not `restored`.
    c, t = fed(two_ways_up())
    everyone = ["core", "agg-b", ANCHOR, "agg-a", "sw-a", "seg"]
    events: list[Event] = []

    def rounds(count: int, down: set[str]) -> None:
        nonlocal t
        for _ in range(count):
            t += 1.0
            events.extend(round_of(c, t, {x: x not in down for x in everyone}))

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
