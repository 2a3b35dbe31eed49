"""Which incident covers each node (`IncidentBook.node_incident`, what /check reads).

A mass outage's routers (leaves with one uplink) have no entry of their own: they are in
their uplink's incident through it. Read as a dict, the map must say what one entry a
node would: every node of an active incident to it (the oldest, where two could claim
it), and the nodes of recovering incidents to them where no active incident covers them.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from outagemon.core.correlator import Correlator
from outagemon.core.health import NodeState
from outagemon.core.incidents import Cutoff, Incident, IncidentBook, Owners
from outagemon.core.topology import Topology
from outagemon.sim.simnet import SimNet
from tests.test_correlate import SETTINGS, WARM, city, n

ANCHOR = "anchor:127.255.255.254"


class FlatBook(IncidentBook):
    """The book with, beside its map, one entry a node made from the incidents' own node
    lists by the rules the map is documented with: at each assignment the active
    incidents' nodes, oldest first, then the recovering incidents' where free; an
    incident that begins to recover adds its free nodes at once. Entries stay until the
    next assignment (a resolved incident's too: `incident_for` finds it closed)."""

    def __init__(self) -> None:
        super().__init__()
        self.flat: dict[str, int] = {}

    def assign(self, active: list[Incident], cut: Cutoff, now: float, topology: Topology,
               grow: bool = True) -> None:  # fmt: skip
        super().assign(active, cut, now, topology, grow)
        flat: dict[str, int] = {}
        for inc in sorted(active, key=lambda i: i.id):
            for node in inc.nodes:
                flat.setdefault(node, inc.id)
        for inc in self.incidents.values():
            if inc.recovering_since is not None:
                for node in inc.nodes:
                    flat.setdefault(node, inc.id)
        self.flat = flat

    def recover(self, roots: set[str], cut: Cutoff, now: float,
                states: dict[str, NodeState], hold: float, flap_period: float) -> None:  # fmt: skip
        before = {i.id for i in self.incidents.values() if i.recovering_since is not None}
        super().recover(roots, cut, now, states, hold, flap_period)
        for inc in self.incidents.values():
            if inc.recovering_since is not None and inc.id not in before:
                for node in inc.nodes:
                    self.flat.setdefault(node, inc.id)


def check(c: Correlator, topo: Topology) -> None:
    owners = c.node_incident
    assert isinstance(c.book, FlatBook)
    flat = c.book.flat
    for node in topo.nodes:
        assert owners.get(node) == flat.get(node), node
        assert (node in owners) == (node in flat), node
        inc = c.incident_for(node)
        assert inc is (c.incidents.get(flat[node]) if node in flat else None), node
    assert dict(owners) == flat  # read whole, as the tests of a reload compare it
    assert len(owners) == len(flat)


def world() -> Topology:
    """Switches with routers below three aggregations, a building on two of them with
    routers of its own, a passive entrance (no address) with routers, and an access
    switch with nothing below it."""
    nodes = [n("uplink", "core"), n("core", "core", ("uplink",))]
    for a in range(3):
        nodes.append(n(f"agg{a}", "aggregation", ("core",)))
        for s in range(3):
            nodes.append(n(f"sw{a}-{s}", "access", (f"agg{a}",)))
            nodes += [n(f"cpe{a}-{s}-{r}", "cpe", (f"sw{a}-{s}",)) for r in range(4)]
    nodes.append(n("dual", "access", ("agg0", "agg1")))
    nodes += [n(f"cpe-dual-{r}", "cpe", ("dual",)) for r in range(4)]
    nodes.append(n("entrance", "entrance", ("sw2-0",), probed=False))
    nodes += [n(f"cpe-ent-{r}", "cpe", ("entrance",)) for r in range(4)]
    nodes.append(n("lone", "access", ("agg2",)))
    return Topology(nodes)


@pytest.mark.parametrize("seed", range(6))
def test_the_covering_incident_of_every_node_is_what_one_entry_a_node_would_say(
    seed: int,
) -> None:
    topo = world()
    c = Correlator(topo, SETTINGS, anchors=[ANCHOR])
    c.book = FlatBook()
    s = SimNet(topo, c, interval=5.0, timeout=1.0, seed=seed, extra_targets=[ANCHOR])
    s.run_for(WARM)
    rng = random.Random(seed)
    seen = {"through": 0, "recovering": 0, "blind": 0}
    tick = c.tick

    last: list[object] = [None, None]

    def checked(now: float) -> list:  # type: ignore[type-arg]
        events = tick(now)
        owners = c.book.node_incident
        flat = c.book.flat  # type: ignore[attr-defined]
        if events or owners is not last[0] or flat is not last[1]:  # else nothing changed
            last[:] = [owners, flat]
            check(c, topo)
            seen["through"] += any(owners.get(k) is not None and k not in owners.own
                                   for k in topo.nodes)  # fmt: skip
            seen["recovering"] += any(i.recovering_since is not None
                                      for i in c.incidents.values())  # fmt: skip
            seen["blind"] += c.blind
        return events

    c.tick = checked  # type: ignore[method-assign]
    candidates = [k for k in topo.nodes if k != "uplink" and topo.nodes[k].probed]
    for _ in range(30):
        roll = rng.random()
        if roll < 0.08:
            s.uplink_down = True  # the monitor's own uplink: it goes blind
            s.run_for(rng.uniform(20, 60))
            s.uplink_down = False
        elif roll < 0.5 or not s.broken:
            s.fail(*rng.sample(candidates, rng.choice((1, 1, 2, 3))))
        else:
            s.repair(rng.choice(sorted(s.broken)))
        s.run_for(rng.uniform(5, 120))
    s.repair(*s.broken)
    s.run_for(300)
    assert seen["through"] > 0 and seen["recovering"] > 0


def test_a_core_failure_gives_the_routers_no_entry_of_their_own() -> None:
    topo = city(aggs=3, access=4, cpes=20)
    c = Correlator(topo, SETTINGS)
    s = SimNet(topo, c, interval=5.0, timeout=1.0, seed=3)
    s.run_for(WARM)
    s.fail("core")
    s.run_for(60)
    (inc,) = c.incidents.values()
    assert inc.root == "core" and len(inc.nodes) == 1 + 3 + 12 + 240  # the list is whole
    owners = c.book.node_incident
    assert isinstance(owners, Owners)
    assert set(owners.own) == {"core", *(f"agg{a}" for a in range(3)),
                               *(f"sw{a}-{i}" for a in range(3) for i in range(4))}  # fmt: skip
    assert all(c.incident_for(f"cpe{a}-{i}-{r}") is inc
               for a in range(3) for i in range(4) for r in range(20))  # fmt: skip
    assert len(c.node_incident) == len(inc.nodes) and set(c.node_incident) == set(inc.nodes)
    assert c.incident_for("uplink") is None and "uplink" not in c.node_incident
    # Repaired: it recovers, and every router behind it hears "restored" from it.
    s.repair("core")
    s.run_for(20)
    assert inc.recovering_since is not None
    assert all(c.incident_for(f"cpe{a}-{i}-{r}") is inc
               for a in range(3) for i in range(4) for r in range(20))  # fmt: skip


def test_a_router_moved_by_a_reload_is_in_the_incident_until_the_next_tick() -> None:
    topo = city(aggs=2, access=2, cpes=3)
    c = Correlator(topo, SETTINGS)
    s = SimNet(topo, c, interval=5.0, timeout=1.0, seed=4)
    s.run_for(WARM)
    s.fail("sw0-0")
    s.run_for(60)
    (inc,) = c.incidents.values()
    assert set(inc.nodes) == {"sw0-0", "cpe0-0-0", "cpe0-0-1", "cpe0-0-2"}
    # The router cpe0-0-1 moves to a switch that answers: until the next decision the
    # incident still lists it, and so does the map; then neither does.
    moved = Topology([dataclasses.replace(node, parents=("sw1-0",) if node.id == "cpe0-0-1"
                                          else node.parents)
                      for node in topo.nodes.values()])  # fmt: skip
    c.set_topology(moved)
    assert c.incident_for("cpe0-0-1") is inc and "cpe0-0-1" in c.node_incident
    c.tick(s.now)
    assert "cpe0-0-1" not in inc.nodes and c.incident_for("cpe0-0-1") is None
    assert c.incident_for("cpe0-0-0") is inc
