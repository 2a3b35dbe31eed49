"""Going blind and seeing again at a city's size, without a step over every node (issue 19).

Pure: the simulated network (simulated time) or results fed by hand. As the monitor goes
blind, what the anchor cuts off (the whole city) is found when asked, not listed; as it
sees again, every node is looked at a slice a tick, the monitor blind till the last, each
node as of the moment an anchor answered. Callers hear "unknown" meanwhile, then what a
single look would have told them.
"""

from __future__ import annotations

import sys
import tracemalloc
from collections.abc import Iterable, Iterator

import pytest

from outagemon.core import correlator as correlator_module
from outagemon.core import failures as failures_module
from outagemon.core.correlator import Correlator
from outagemon.core.failures import Failures
from outagemon.core.health import NodeState, State
from outagemon.core.incidents import Event
from outagemon.sim.simnet import SimNet
from tests.test_correlate import SETTINGS, city, kinds, sim
from tests.test_correlate_truth import ANCHOR, chain, fed, round_of


def _listed(cut: object) -> set[str]:
    """The nodes the correlator holds listed as cut off (blind: only what is not the
    anchors' own)."""
    base = getattr(cut, "base", cut)
    assert isinstance(base, set)
    return base


def test_going_blind_lists_nothing_of_what_the_anchor_cuts_off() -> None:
    # The anchor is the topology's top (no anchors configured): its cut is every node.
    s = sim(city(aggs=3, access=10, cpes=5))
    c = s.correlator
    s.uplink_down = True
    while not c.blind:
        s.run_for(0.5)
    s.run_for(0.5)
    everyone = set(s.topology.nodes)
    assert all(x in c._cut_cache for x in everyone), "blind, the anchor cuts off every node"
    assert len(_listed(c._cut_cache)) < 10, "and the city is not listed to say so"


def _blind_then_back(s: SimNet, fault: str | None) -> tuple[list[Event], list[bool]]:
    """The uplink fails for 200 s (a switch, `fault`, breaks meanwhile); then it comes
    back. Returns the events from then on, and for each tick while looking at every node
    whether the monitor was still blind."""
    c = s.correlator
    s.uplink_down = True
    s.run_for(100)
    if fault is not None:
        s.fail(fault)
    s.run_for(100)
    assert c.blind and c.nodes_down > 20, "blind long enough for the city to be down"
    s.uplink_down = False
    events: list[Event] = []
    blind_while_looking: list[bool] = []
    while c.blind:
        events += s.run_for(0.25)
        if c.looking:
            blind_while_looking.append(c.blind)
            assert c.blind, "a caller must hear unknown until every node was looked at"
    events += s.run_for(120)
    return events, blind_while_looking


@pytest.mark.parametrize("fault", [None, "sw1-3"])
def test_seeing_again_a_slice_a_tick_tells_what_one_look_would(
    fault: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    at_once = sim(city(aggs=3, access=10, cpes=5))
    whole, looks = _blind_then_back(at_once, fault)
    assert looks == [], "a small city is looked at in one tick"
    monkeypatch.setattr(correlator_module, "SIGHT_SLICE", 20)
    monkeypatch.setattr(correlator_module, "SIGHT_CHUNK", 7)
    sliced = sim(city(aggs=3, access=10, cpes=5))
    parts, looks = _blind_then_back(sliced, fault)
    assert len(looks) >= 2 and all(looks), "looked at over several ticks, blind meanwhile"
    c = sliced.correlator
    assert kinds(parts, "seeing") and not c.blind
    # The same incidents, for the same roots, with the same nodes: none from what was
    # seen while blind, the switch that broke meanwhile found again.
    said = [(e.kind, e.root, e.nodes) for e in parts if e.kind not in ("seeing",)]
    expected = [(e.kind, e.root, e.nodes) for e in whole if e.kind not in ("seeing",)]
    assert said == expected
    assert [e.root for e in kinds(parts, "opened")] == ([fault] if fault else [])
    assert not any(ns.flapping for ns in c.states.values()), "blindness is no flapping"


def test_a_slice_of_the_look_ends_when_its_time_is_spent(monkeypatch: pytest.MonkeyPatch) -> None:
    # On a loaded machine a node of the look costs more: a slice ends at its time
    # (SIGHT_TIME of the thread's CPU), a chunk at least, whatever its count left; the
    # same incidents as one look tells.
    whole, _ = _blind_then_back(sim(city(aggs=3, access=10, cpes=5)), "sw1-3")
    monkeypatch.setattr(correlator_module, "SIGHT_CHUNK", 7)
    monkeypatch.setattr(correlator_module, "SIGHT_TIME", 0.0)
    sliced = sim(city(aggs=3, access=10, cpes=5))
    nodes = len(sliced.correlator.topology.nodes)
    slices: list[bool] = []
    see = Correlator._see

    def counted(c: Correlator, now: float) -> bool:
        slices.append(see(c, now))
        return slices[-1]

    monkeypatch.setattr(Correlator, "_see", counted)
    parts, looks = _blind_then_back(sliced, "sw1-3")
    assert len(slices) >= nodes // 7 and all(looks), (len(slices), nodes)
    said = [(e.kind, e.root, e.nodes) for e in parts if e.kind != "seeing"]
    assert said == [(e.kind, e.root, e.nodes) for e in whole if e.kind != "seeing"]
    assert not sliced.correlator.blind


def test_a_streak_begun_with_the_uplinks_is_no_evidence_when_its_next_result_comes_blind() -> None:
    # The switch lost two probes with the uplink (its streak begun with the anchor's):
    # as the monitor goes blind that streak is void. The switch's next result comes
    # after: one more loss is one loss, not the third of a streak.
    c, t = fed(chain())
    everyone = ["core", "agg", "cpe", "anchor:127.255.255.254"]
    for _ in range(2):
        t += 1.0
        round_of(c, t, {"sw": False, **dict.fromkeys(everyone, False)})
    while not c.blind:
        t += 1.0
        round_of(c, t, dict.fromkeys(everyone, False))
    assert c.states["sw"].losses == 2, "not met since: looked at when next met"
    t += 1.5
    round_of(c, t, {"sw": False})
    assert c.state_of("sw") is not State.DOWN and c.states["sw"].losses == 1


def test_a_core_answering_before_the_uplink_leaves_what_is_below_to_the_look() -> None:
    # Blind, the core answers before our uplink does: what lies below it is looked at
    # afresh by the look as the monitor sees again, not walked in that step (a million
    # nodes below a city's core were one step of 1.7 s); after it, as before, each is
    # probed afresh, and a new streak asks for its ancestors at once.
    c, t = fed(chain())
    below = ["agg", "sw", "cpe"]
    for _ in range(16):
        t += 1.0
        round_of(c, t, dict.fromkeys(["core", *below, ANCHOR], False))
    assert c.blind and all(c.state_of(x) is State.DOWN for x in below)
    for _ in range(2):
        t += 1.0
        round_of(c, t, {"core": True})
    assert c.state_of("core") is State.UP and c.blind
    assert all(c.state_of(x) is State.DOWN for x in below), "left to the look"
    for _ in range(2):
        t += 1.0
        round_of(c, t, {ANCHOR: True, "core": True})
    assert not c.blind
    assert all(c.state_of(x) is State.RECHECK for x in below), "looked at afresh"
    assert set(below) <= set(c.take_requests()), "each probed afresh"
    t += 1.0
    round_of(c, t, {"sw": False})
    assert {"agg", "core"} <= set(c.take_requests()), "a new streak asks for its ancestors"
    for _ in range(3):
        t += 1.0
        round_of(c, t, {x: True for x in ["core", "agg", "cpe", ANCHOR]})
    assert c.incidents == {} and c.state_of("cpe") is State.UP


@pytest.mark.parametrize("listed", [0, failures_module.FAILING_LISTED])
def test_a_parent_none_of_whose_children_fails_is_not_weighed_child_by_child(
    listed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a city sees again every router answers, each a change its switch must weigh:
    # a switch none of whose children fails cannot be inferred, found without a look at
    # each child (100 each, 10,000 switches: 90 ms a tick).
    monkeypatch.setattr(failures_module, "FAILING_LISTED", listed)  # 0: never listed
    c = Correlator(city(aggs=2, access=3, cpes=5), SETTINGS)
    weighed: list[str] = []
    known = Failures._known

    def counted(self: Failures, node: str, probed_parent: bool) -> tuple[State, float, float]:
        weighed.append(node)
        return known(self, node, probed_parent)

    monkeypatch.setattr(Failures, "_known", counted)
    for node in c.topology.nodes:
        c.observe(node, True, 1.0)
    c.tick(1.0)
    assert weighed == [] and c.inferred == {}
    for s in range(3):
        for x in range(5):
            for t in range(2, 17):  # a new router's streak is 15 long
                c.observe(f"cpe0-{s}-{x}", False, float(t))
    c.tick(16.0)
    assert weighed, "a switch whose routers fail is weighed as before"
    assert set(c.inferred) == {"sw0-0", "sw0-1", "sw0-2"}


def test_a_parent_none_of_whose_children_fails_is_passed_by_before_its_state_is_read() -> None:
    # As a city sees again its routers answer, and the tick that sees queues every switch
    # (10,000): with the parents of what fails listed, one not among them, and not
    # inferred, is passed by without its own state looked up (36 ms in one tick).
    c = Correlator(city(aggs=2, access=3, cpes=5), SETTINGS)
    read: list[str] = []

    class Counted(dict[str, NodeState]):
        def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
            read.append(key)
            return super().get(key, default)

    c.states = Counted()
    for node in c.topology.nodes:
        c.observe(node, True, 1.0)
    assert c._reconsider, "the routers' first answers queue their switches"
    switches = {n for n, node in c.topology.nodes.items() if node.children} - set(c.anchors)
    read.clear()
    c.tick(1.0)
    assert not switches & set(read) and c.inferred == {}
    for x in range(5):
        for t in range(2, 17):  # a new router's streak is 15 long
            c.observe(f"cpe0-0-{x}", False, float(t))
    c.tick(16.0)
    assert set(c.inferred) == {"sw0-0"}, "a switch whose routers fail is weighed as before"


def test_a_city_going_down_grows_no_big_table_in_one_result() -> None:
    # Every node of a city found down, one result at a time (the uplink failed, the
    # monitor blind): no single table is grown past a city's small share. One set of
    # them all grew by copying into a table of twice their number at 157,000, 315,000
    # and 629,000 names down: 7-31 ms of one result at a million nodes, in one step of
    # results of the daemon's loop (issue 19). Here 30,000 routers: one set's table is
    # 1 MB, 64 parts' are 16 KB each.
    c = Correlator(city(aggs=3, access=100, cpes=100), SETTINGS)
    for t in (1.0, 2.0):
        for node in c.topology.nodes:
            c.observe(node, True, t)
    clean = NodeState()
    clean.record(False, 300)  # a clean history of 300 answers: down after 3 losses
    for ns in c.states.values():
        ns.n, ns.lost = clean.n, clean.lost
    c.tick(2.0)
    c.take_requests()
    nodes = [x for x in c.topology.nodes if x != "uplink"]
    tracemalloc.start()
    try:
        now = 10.0
        for _ in range(4):  # three losses each take every node down; one more, blind
            for at in range(0, len(nodes), 2000):  # a tick's results, then the tick
                for node in nodes[at : at + 2000]:
                    c.observe(node, False, now)
                c.observe("uplink", False, now)
                c.tick(now)
                c.take_requests()
                now += 0.1
        biggest = max(tracemalloc.take_snapshot().traces, key=lambda t: t.size)
    finally:
        tracemalloc.stop()
    assert c.blind and c.nodes_down > 20_000, "the city is down, the monitor blind"
    assert biggest.size < 256 * 1024, (biggest.size, biggest.traceback)


def test_the_parted_set_answers_as_one_set() -> None:
    names = [f"cpe{i}" for i in range(2000)]
    one, parted = set(names[:1500]), failures_module.Parted(names[:1500])
    for x in names[1000:1800]:
        one.discard(x)
        parted.discard(x)
    for x in names[1700:]:
        one.add(x)
        parted.add(x)
    parted.add(names[0])  # already in: counted once
    assert len(parted) == len(one) and set(parted) == one
    assert all((x in parted) == (x in one) for x in names)
    assert parted.isdisjoint(names[1000:1700]) and not parted.isdisjoint(names[1600:1701])
    assert parted.with_keys({"agg0": 1.0}) == one | {"agg0"}
    half = set(names[::2])
    kept = parted.within(half)
    assert len(kept) == len(one & half) and set(kept) == one & half


def test_a_part_the_city_left_is_walked_as_its_few_names() -> None:
    # A set's table never shrinks as names leave it: the 64 parts a city all down filled
    # were 32 MiB of empty slots as it saw again, each slot read by every walk of the set
    # (the parents of what fails, listed every tick: 5 ms a tick after seeing, under
    # load). A walk copies a part that shed most of its names into a table its size.
    names = [f"cpe{i}" for i in range(64 * 2000)]
    sparse = 1024  # bytes a name (failures.SPARSE_BYTES) a part's table may hold
    parted = failures_module.Parted(names)
    left = set(names[::1000])  # 128 of 128,000 stay down
    for x in names:
        if x not in left:
            parted.discard(x)
    assert set(parted) == left and len(parted) == len(left)
    slots = sum(sys.getsizeof(part) for part in parted.parts)
    assert slots < 64 * sparse * 8, slots
    assert all(sys.getsizeof(part) <= sparse * (len(part) + 8)
               for part in parted.parts)  # fmt: skip
    assert parted.with_keys({"sw0"}) == left | {"sw0"}
    assert set(parted.within(set(names[:64_000]))) == {x for x in left if x in names[:64_000]}
    for x in left:
        parted.discard(x)
    # Emptied, each part is a new table as its last name leaves (before any walk).
    assert all(sys.getsizeof(part) == sys.getsizeof(set()) for part in parted.parts)
    assert list(parted) == [] and len(parted) == 0


def test_a_part_of_the_down_set_is_a_new_table_as_its_last_node_comes_back() -> None:
    # As a city that was all down sees again every node leaves the down set, one at a
    # time in the look's slices: the 64 tables (32 MiB at a million nodes) are freed as
    # each empties, not all at once by the tick that sees again (3 ms).
    c = Correlator(city(aggs=2, access=10, cpes=100), SETTINGS)
    routers = [n for n, node in c.topology.nodes.items() if node.kind == "cpe"]
    for x in routers:
        c._fail(x)
    assert c.nodes_down == len(routers) and sys.getsizeof(c._down.parts[0]) > 2048
    for x in routers:
        c._unfail(x)
    assert c.nodes_down == 0
    assert all(sys.getsizeof(part) == sys.getsizeof(set()) for part in c._down.parts)


class _Unwalked(set[str]):
    """Parents queued to be weighed, which must not be walked one by one."""

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("walked")


def test_a_queue_of_parents_none_of_whose_children_fails_is_not_walked() -> None:
    # As a city sees again its routers answer and queue their switches (10,000), none of
    # whose children fails: none of them would be weighed, found by two set operations
    # on the queue, not by taking each out of it (5 ms of the tick that sees again).
    c = Correlator(city(aggs=2, access=3, cpes=5), SETTINGS)
    for node in c.topology.nodes:
        c.observe(node, True, 1.0)
    queued = set(c._reconsider)
    assert len(queued) >= 6, "the routers' first answers queue their switches"
    c._reconsider = _Unwalked(queued)
    c.tick(1.0)
    assert not c._reconsider and c.inferred == {}
    for x in range(5):
        for t in range(2, 17):  # a new router's streak is 15 long
            c.observe(f"cpe0-0-{x}", False, float(t))
    assert "sw0-0" in c._reconsider
    with pytest.raises(AssertionError, match="walked"):
        c.tick(16.0)  # a switch whose routers fail is weighed, from the queue as before


class _Counted(set[str]):
    """The queue of parents, counting the ticks it was found to hold none to weigh."""

    passed = 0

    def isdisjoint(self, other: Iterable[object]) -> bool:
        found = super().isdisjoint(other)
        type(self).passed += found
        return found


class _Walked(set[str]):
    """The queue of parents, always taken out and passed by one by one (as before)."""

    def isdisjoint(self, other: Iterable[object]) -> bool:
        return False


def _through_blindness(queue: type[set[str]]) -> list[Event]:
    """Blind with a switch broken meanwhile, then seeing again; a building's routers fail
    together (their switch inferred down) and come back; 3 % loss throughout."""
    s = sim(city(aggs=3, access=10, cpes=5))
    s.default_loss = 0.03
    c = s.correlator
    c._reconsider = queue(c._reconsider)
    events, _ = _blind_then_back(s, "sw1-3")
    building = [f"cpe2-4-{x}" for x in range(5)]
    s.fail(*building)
    events += s.run_for(120)
    s.repair(*building)
    events += s.run_for(180)
    return events


def test_the_queue_passed_by_at_once_decides_as_one_walked() -> None:
    _Counted.passed = 0
    at_once = _through_blindness(_Counted)
    walked = _through_blindness(_Walked)
    assert _Counted.passed > 10, "the queue was passed by at once, tick after tick"
    assert at_once == walked, "the same events, at the same times, with the same nodes"
    opened = {e.root: e.detail for e in kinds(at_once, "opened")}
    assert "sw1-3" in opened and "sw2-4" in opened, opened
