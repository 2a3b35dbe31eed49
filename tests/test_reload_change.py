"""A reload's new topology reaches the correlator as what changed (issue 19): only the
nodes whose uplinks, children, kind or address changed are looked at again, and the
decisions are those of a correlator that looked at every node again."""

from __future__ import annotations

from outagemon.core import topology as topology_mod
from outagemon.core.calls import subscribers_below
from outagemon.core.correlator import Correlator
from outagemon.core.health import Settings, State
from outagemon.core.incidents import Event
from outagemon.core.topology import Node, Topology

SETTINGS = Settings(down_after=3, up_after=2, window=30, infer_min_children=3,
                    infer_ratio=0.8, resolve_hold=60, interval=5.0)  # fmt: skip


def building(entrance: bool, routers: int = 10) -> Topology:
    """A switch with routers; with `entrance`, the routers hang from an entrance without
    an address (a reload that adds what the operator left out)."""
    nodes = [Node("uplink", "core", "127.0.0.1"), Node("core", "core", "127.0.0.2", ("uplink",)),
             Node("sw", "access", "127.0.0.3", ("core",))]  # fmt: skip
    up = "sw"
    if entrance:
        nodes.append(Node("ent", "entrance", None, ("sw",)))
        up = "ent"
    nodes += [Node(f"cpe{i}", "cpe", f"127.0.1.{i + 1}", (up,)) for i in range(routers)]
    return Topology(nodes)


def warm(c: Correlator, now: float) -> float:
    for _ in range(60):
        now += 5
        for node in c.topology.by_ip.values():
            c.observe(node, True, now)
        c.tick(now)
        c.take_requests()
    return now


def test_the_change_names_new_moved_and_gone_nodes_and_nothing_else() -> None:
    old = building(entrance=False)
    assert topology_mod.change(old, building(entrance=False)).changed == frozenset()
    assert topology_mod.change(old, building(entrance=False)).gone == frozenset()
    moved = topology_mod.change(old, building(entrance=True))
    # the entrance is new, the routers' uplink moved, the switch's children changed
    assert moved.changed == {"ent", "sw", *(f"cpe{i}" for i in range(10))}
    fewer = topology_mod.change(old, building(entrance=False, routers=8))
    assert fewer.gone == {"cpe8", "cpe9"}
    assert fewer.changed == {"sw"}


def test_an_unchanged_reload_touches_no_node_and_keeps_every_state() -> None:
    old = building(entrance=False)
    c = Correlator(old, SETTINGS, anchors=["uplink"])
    now = warm(c, 1_000_000.0)
    states = dict(c.states)
    new = building(entrance=False)
    c.set_topology(new, topology_mod.change(old, new))
    # nothing to weigh again: nothing changed
    assert not c._changed and not c._reconsider and not c._reloaded
    assert c.states == states
    assert c.tick(now + 1) == []


def test_a_gone_node_loses_its_state() -> None:
    old = building(entrance=False)
    c = Correlator(old, SETTINGS, anchors=["uplink"])
    warm(c, 1_000_000.0)
    new = building(entrance=False, routers=8)
    c.set_topology(new, topology_mod.change(old, new))
    assert "cpe9" not in c.states and "cpe7" in c.states


def run(incremental: bool) -> tuple[list[Event], dict[str, int]]:
    """Routers fail together right after a reload puts them under a new entrance."""
    old = building(entrance=False)
    c = Correlator(old, SETTINGS, anchors=["uplink"])
    now = warm(c, 1_000_000.0)
    for i in range(10):  # half the routers had lost a probe before the reload
        if i % 2:
            c.observe(f"cpe{i}", False, now + 1)
    new = building(entrance=True)
    c.set_topology(new, topology_mod.change(old, new) if incremental else None)
    events: list[Event] = []
    for _ in range(20):
        now += 5
        for node in new.by_ip.values():
            c.observe(node, not node.startswith("cpe"), now)
        events += c.tick(now)
        c.take_requests()
    return events, dict(c.node_incident)


def test_the_decisions_after_a_reload_are_those_of_looking_at_every_node_again() -> None:
    events, owners = run(incremental=True)
    assert [(e.kind, e.root) for e in events if e.kind == "opened"] == [("opened", "ent")]
    assert (events, owners) == run(incremental=False)


def test_subscribers_below_counts_each_node_and_its_ancestors() -> None:
    topo = building(entrance=True, routers=3)
    below = subscribers_below(topo, {"cpe0": 1, "cpe1": 2, "gone": 5})
    assert below == {"cpe0": 1, "cpe1": 2, "ent": 3, "sw": 3, "core": 3, "uplink": 3}


def test_the_change_gathers_what_weighs_its_inference_again_off_the_loop() -> None:
    old = building(entrance=False)
    moved = topology_mod.change(old, building(entrance=True))
    # the changed nodes, and their old parents still there: "sw" the routers', "core" sw's
    assert moved.reconsider == moved.changed | {"core"}
    fewer = topology_mod.change(old, building(entrance=False, routers=8))
    assert fewer.reconsider == {"sw", "core"}  # the gone routers' parent, and its own
    c = Correlator(old, SETTINGS, anchors=["uplink"])
    warm(c, 1_000_000.0)
    c.set_topology(fewer.new, fewer)
    # Kept as the change made them (off the loop), not copied at the swap, till the tick.
    ((reconsider, changed),) = c._reloaded
    assert reconsider is fewer.reconsider and changed is fewer.changed
    assert reconsider == {"sw", "core"} and changed == {"sw"}
    assert not c._changed and not c._reconsider
    c.tick(1_000_400.0)
    assert not c._reloaded


def test_a_gone_nodes_state_is_handed_back_to_be_freed_later_and_an_anchors_kept() -> None:
    old = building(entrance=False)
    c = Correlator(old, SETTINGS, anchors=["uplink", "cpe8"])
    warm(c, 1_000_000.0)
    gone = c.states["cpe9"]
    new = building(entrance=False, routers=8)
    freed = c.set_topology(new, topology_mod.change(old, new))
    # cpe9's state leaves at the swap, but is freed by the caller a slice at a time; cpe8,
    # gone from the topology but still an anchor, keeps its own.
    assert "cpe9" not in c.states and "cpe8" in c.states
    assert [list(f) for f in freed if isinstance(f, list)] == [[gone]]
    # An anchor no longer configured, and not in the topology, loses its state too.
    c.anchors = ["uplink"]
    again = building(entrance=False, routers=8)
    freed = c.set_topology(again, topology_mod.change(new, again))
    assert "cpe8" not in c.states and len(freed[0]) == 1  # type: ignore[arg-type]


def run_gone(incremental: bool) -> tuple[list[Event], dict[str, int], list[str], list[str]]:
    """Two routers fail and go down; a reload takes them out of the topology (their
    subscribers left) while they are down; then the switch fails. Returns the events, the
    incidents' nodes, the routers down at the reload and the probes asked for after it."""
    old = building(entrance=False)
    c = Correlator(old, SETTINGS, anchors=["uplink"])
    now = warm(c, 1_000_000.0)
    for _ in range(12):
        now += 5
        for node in old.by_ip.values():
            c.observe(node, node not in ("cpe8", "cpe9"), now)
        c.tick(now)
        c.take_requests()
    down = [n for n in ("cpe8", "cpe9") if c.state_of(n) is State.DOWN]
    new = building(entrance=False, routers=8)
    c.set_topology(new, topology_mod.change(old, new) if incremental else None)
    events, requests = switch_fails(c, now)
    return events, dict(c.node_incident), down, requests


def switch_fails(c: Correlator, now: float) -> tuple[list[Event], list[str]]:
    """The switch and all below it stop answering for 100 s: the events, the probes asked."""
    events: list[Event] = []
    requests: list[str] = []
    for _ in range(20):
        now += 5
        for node in c.topology.by_ip.values():
            c.observe(node, node in ("uplink", "core"), now)
        events += c.tick(now)
        requests += c.take_requests()
    return events, requests


def test_gone_nodes_are_not_decided_on_after_a_reload_as_when_every_node_is_looked_at() -> None:
    events, owners, down, requests = run_gone(incremental=True)
    assert down == ["cpe8", "cpe9"]  # down when the reload took them away
    assert [(e.kind, e.root) for e in events if e.kind == "opened"] == [("opened", "sw")]
    assert set(owners) == {"sw", *(f"cpe{i}" for i in range(8))}  # not the gone routers
    assert "cpe8" not in requests and "cpe9" not in requests  # nor probed again
    assert (events, owners, down, requests) == run_gone(incremental=False)
