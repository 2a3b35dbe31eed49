"""The calls' detector (core/calls.py): unit tests, and property tests on simulated call
streams (Poisson background at each building's usual rate, plus bursts from faults the
probes cannot see)."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from outagemon.core import directory as directory_mod
from outagemon.core import topology
from outagemon.core.calls import (
    DAY,
    Call,
    CallLog,
    CallWatch,
    Settings,
    Suspicion,
    building_text,
    caller_key,
    negbin_tail,
    poisson_threshold,
)
from outagemon.core.directory import Directory
from outagemon.core.incidents import EventKind, IncidentState, Kind
from outagemon.sim import citygen
from outagemon.sim.citygen import City


def city_directory(city: City) -> Directory:
    topo = topology.parse_text(city.topology_yaml(), Path("topology.yaml"))
    subs, problems = directory_mod.parse_csv(city.subscribers_csv(), Path("s.csv"), topo)
    assert not problems
    return Directory(directory_mod.with_cpes(topo, subs), subs)


@pytest.fixture(scope="module")
def town() -> Directory:
    # 4 aggregations x 10 buildings (access switches) x 2 entrances, 40 subscribers each.
    return city_directory(citygen.generate(subscribers_per_access=40, entrances=2))


def watch_of(d: Directory, **kw: object) -> CallWatch:
    return CallWatch(d.topology, d.counts, Settings(**kw), started=0.0)  # type: ignore[arg-type]


# The settings the scenarios below were written with (the defaults before the burst's):
# a window of half an hour at chance 1e-6, the constant-rate test at evidence 14.
BEFORE: dict[str, float] = {"window": 1800.0, "chance": 1e-6, "evidence": 14.0, "burst": 0.0}


class Ids:
    def __init__(self) -> None:
        self.n = 100

    def __call__(self) -> int:
        self.n += 1
        return self.n


def never(node: str) -> bool:
    return False


def calls_from(d: Directory, serving: str, at: list[float], status: str = "ok") -> list[Call]:
    subs = [s for s in d.subscribers if s.serving == serving]
    return [Call(t, serving, subs[i % len(subs)].address.key, f"c{serving}{i}", "ivr", status)
            for i, t in enumerate(at)]  # fmt: skip


def test_poisson_threshold() -> None:
    assert poisson_threshold(0.0, 1e-7, 3) == 3
    assert poisson_threshold(0.001, 1e-7, 3) == 3
    # P(X >= k) for a mean of 20: the threshold rises with the usual rate.
    k = poisson_threshold(20.0, 1e-7, 3)
    assert 40 <= k <= 50
    assert poisson_threshold(20.0, 1e-3, 3) < k


def test_five_callers_of_one_entrance_raise_a_suspicion_rooted_there(town: Directory) -> None:
    w = watch_of(town)
    w.tick(3600.0, calls_from(town, "seg-1-3-2", [3600, 3610, 3620]), never, Ids())
    (sus,) = w.open.values()
    assert sus.incident.kind is Kind.SUSPECTED and sus.incident.root == "seg-1-3-2"
    assert sus.incident.raised_by == "calls" and sus.first_call == 3600
    (opened,) = w.take_events()
    assert opened.kind is EventKind.OPENED and opened.detail["kind"] == "suspected"
    assert opened.detail["callers"] == 3
    assert w.covering("seg-1-3-2") is sus and w.covering("seg-1-3-1") is None


def test_two_callers_are_not_enough_and_the_same_caller_twice_counts_once(
    town: Directory,
) -> None:
    w = watch_of(town)
    calls = calls_from(town, "seg-1-3-2", [100, 110])
    again = Call(120, "seg-1-3-2", "", calls[0].caller, "ivr", "ok")
    w.tick(130.0, [*calls, again], never, Ids())
    assert not w.open


def test_two_callers_a_minute_apart_at_an_entrance_known_to_be_quiet_are_evidence_enough(
    town: Directory,
) -> None:
    """The sequential test: after two quiet weeks, two callers of one entrance a minute
    apart are far likelier from a fault than from its usual calls (about one in ten
    days), so it is suspected on two; two callers an hour apart are not. On the first
    day, with only the prior to go by (a rate learned from nothing is uncertain), the
    same pair is not enough."""
    early = watch_of(town)
    early.tick(130.0, calls_from(town, "seg-1-3-2", [100, 160]), never, Ids())
    assert not early.open
    w = watch_of(town)
    t = 14 * DAY
    w.tick(t, [], never, Ids())
    pair = calls_from(town, "seg-1-3-2", [t + 100, t + 160])
    apart = calls_from(town, "seg-2-5-1", [t + 100, t + 3700])
    ids = Ids()
    w.tick(t + 200, [*pair, apart[0]], never, ids)
    w.tick(t + 3700, apart[1:], never, ids)
    (sus,) = w.open.values()
    assert sus.incident.root == "seg-1-3-2" and len(sus.callers) == 2
    # The window's count alone would not: it needs min_callers.
    off = watch_of(town, evidence=0)
    off.tick(t, [], never, Ids())
    off.tick(t + 200, pair, never, Ids())
    assert not off.open


def test_a_busy_place_needs_more_than_a_pair(town: Directory) -> None:
    """A building whose subscribers call a hundred times a day: two callers a minute
    apart are its usual, and are not suspected."""
    w = watch_of(town)
    ids = Ids()
    rng = random.Random(5)
    t, n = 0.0, 0
    while t < 7 * DAY:
        t += rng.expovariate(100 / DAY)
        n += 1
        w.tick(t, [Call(t, "seg-3-1-1", "", f"bg{n}", "ivr", "ok")], never, ids)
    w.take_events()
    opened_before = len(w.open)
    w.tick(t + 70, calls_from(town, "seg-3-1-1", [t + 5, t + 65]), never, ids)
    assert len(w.open) == opened_before


def test_the_day_shape_is_learned_and_the_usual_rate_follows_the_hour(
    town: Directory,
) -> None:
    """Calls only in the evening for a week, from anywhere in the town: the shape says
    evenings are busy and mornings quiet, and the town's threshold is higher at 20:00
    than at 08:00; with `by_hour` off the rate is flat."""
    watches = [watch_of(town, window=600.0), watch_of(town, window=600.0, by_hour=False)]
    rng = random.Random(7)
    serving = sorted({s.serving for s in town.subscribers})
    calls, n = [], 0
    for day in range(7):
        t = day * DAY + 18 * 3600
        while t < day * DAY + 22 * 3600:
            t += rng.expovariate(100 / (4 * 3600))
            n += 1
            calls.append(Call(t, rng.choice(serving), "", f"bg{n}", "ivr", "ok"))
    for w in watches:
        ids = Ids()
        for c in calls:
            w.tick(c.at, [c], never, ids)
        w.tick(7 * DAY, [], never, ids)  # the last calls leave the window: learned
    shaped, flat = watches
    now, top = 7 * DAY, town.topology.roots[0]
    assert shaped.shape(now + 20 * 3600) > 2 and shaped.shape(now + 8 * 3600) < 0.5
    morning = shaped.threshold(top, now + 8 * 3600)
    evening = shaped.threshold(top, now + 20 * 3600)
    assert evening > morning + 3, (morning, evening)
    assert flat.shape(now + 20 * 3600) == flat.shape(now + 8 * 3600) == 1.0
    assert flat.threshold(top, now + 8 * 3600) == flat.threshold(top, now + 20 * 3600)


def test_a_wide_cluster_after_every_suspicion_ended_opens_a_new_one(town: Directory) -> None:
    """Two suspicions at entrances expire, leaving none open; then callers from eight
    buildings of their aggregation: a new suspicion there (the index of suspicions by
    root once still held the ended ones, and widening tried to merge them: KeyError)."""
    w = watch_of(town, **{**BEFORE, "evidence": 0})
    ids = Ids()
    w.tick(40.0, calls_from(town, "seg-1-1-1", [10, 20, 30])
           + calls_from(town, "seg-1-2-1", [10, 20, 30]), never, ids)  # fmt: skip
    assert len(w.open) == 2
    w.tick(2 * 3600.0, [], never, ids)
    assert not w.open
    t = 3 * 3600.0
    wide = [c for b in range(3, 11) for c in calls_from(town, f"seg-1-{b}-1", [t + b])]
    w.tick(t + 20, wide, never, ids)
    (sus,) = w.open.values()
    assert sus.incident.root == "agg-1" and len(sus.callers) == 8


def test_what_was_learned_is_taken_up_by_another_watch(town: Directory) -> None:
    """`baseline()` rows handed to a new watch's `take_baseline()`: the same rates and
    day's shape; nodes the topology no longer has are left out; added to what the new
    watch learned itself."""
    w = watch_of(town)
    rng = random.Random(11)
    t, n = 0.0, 0
    while t < 3 * DAY:
        t += rng.expovariate(60 / DAY)
        n += 1
        c = Call(t, "seg-3-1-1" if n % 2 else "seg-2-2-2", "", f"bg{n}", "ivr", "ok")
        w.tick(t, [c], never, Ids())
    w.tick(t + 3600, [], never, Ids())
    now = t + 3600
    rows = w.baseline()
    assert len(rows) <= len(town.topology) + 25
    again = CallWatch(town.topology, town.counts, Settings(), started=now)
    again.take_baseline([*rows, ("node", "gone-node", 5.0, now)])
    for node in ("seg-3-1-1", "seg-2-2-2", "sw-3-1", "seg-1-1-1"):
        assert again.rate(node, now) == pytest.approx(w.rate(node, now), rel=1e-9), node
    for h in range(24):  # (faded to the new watch's start: against the prior, a hair less)
        assert again.shape(h * 3600.0) == pytest.approx(w.shape(h * 3600.0), rel=1e-3)
    assert "gone-node" not in {key for _, key, _, _ in again.baseline()}
    # Taken up twice (a late restore on top of an early one would not be): twice the calls.
    again.take_baseline(rows)
    assert again.history("seg-3-1-1", now)[0] > 1.9 * w.history("seg-3-1-1", now)[0] - 1


def test_callers_spread_over_entrances_root_the_suspicion_at_their_switch(
    town: Directory,
) -> None:
    w = watch_of(town)
    calls = calls_from(town, "seg-2-4-1", [10, 20]) + calls_from(town, "seg-2-4-2", [30, 40])
    w.tick(50.0, calls, never, Ids())
    (sus,) = w.open.values()
    assert sus.incident.root == "sw-2-4"
    assert set(sus.incident.nodes) >= {"sw-2-4", "seg-2-4-1", "seg-2-4-2"}


def test_explained_calls_do_not_count(town: Directory) -> None:
    w = watch_of(town)
    for status in ("outage", "maintenance", "cpe_down", "restored", "unknown"):
        w.tick(50.0, calls_from(town, "seg-1-1-1", [10, 20, 30, 40], status), never, Ids())
    assert not w.open and not w.window


def test_no_suspicion_where_the_probes_explain_it(town: Directory) -> None:
    w = watch_of(town)
    explained = {"sw-3-3", "seg-3-3-1", "seg-3-3-2"}
    w.tick(50.0, calls_from(town, "seg-3-3-1", [10, 20, 30]), explained.__contains__, Ids())
    assert not w.open


def test_calls_outside_the_window_do_not_add_up(town: Directory) -> None:
    w = watch_of(town, window=600.0)
    ids = Ids()
    for t in (0.0, 700.0, 1400.0, 2100.0):
        w.tick(t, calls_from(town, "seg-1-2-1", [t], status="ok")[:1], never, ids)
    assert not w.open


def test_later_calls_join_it_and_a_quiet_one_expires(town: Directory) -> None:
    w = watch_of(town, expire_after=1800.0)
    ids = Ids()
    w.tick(40.0, calls_from(town, "seg-4-1-1", [10, 20, 30]), never, ids)
    (sus,) = w.open.values()
    later = Call(500, "seg-4-1-1", "", "late-caller", "ivr", "ok")
    w.tick(510.0, [later], never, ids)
    assert sus.count == 4 and len(sus.callers) == 4 and sus.last_call == 500
    w.take_events()
    w.tick(500 + 1799.0, [], never, ids)
    assert w.open
    w.tick(500 + 1800.0, [], never, ids)
    assert not w.open and sus.incident.state is IncidentState.RESOLVED
    (ended,) = w.take_events()
    assert ended.kind is EventKind.RESOLVED and ended.detail["expired"]


def test_a_helpdesk_looking_subscribers_up_is_no_caller(town: Directory) -> None:
    """An operator's lookups (`channel=helpdesk`, `outagemon lookup`) neither raise a
    suspicion nor join one: the subscribers' own calls do."""
    w = watch_of(town)
    ids = Ids()
    looked_up = [dataclasses.replace(c, channel="helpdesk")
                 for c in calls_from(town, "seg-4-1-1", [10, 20, 30, 40])]  # fmt: skip
    w.tick(50.0, looked_up, never, ids)
    assert not w.open
    w.tick(60.0, calls_from(town, "seg-4-1-1", [50, 52, 54]), never, ids)
    (sus,) = w.open.values()
    assert sus.distinct_callers == 3
    w.tick(70.0, [Call(65, "seg-4-1-1", "", "agent", "helpdesk", "ok")], never, ids)
    assert sus.count == 3 and sus.distinct_callers == 3


def test_a_caller_naming_their_building_and_then_their_flat_is_one_caller(
    town: Directory,
) -> None:
    """`address=...` and then `address=...&flat=12` is one home: the call that named no
    flat is the home's that called in the window, whichever came first."""
    w = watch_of(town, **(BEFORE | {"evidence": 0.0, "scan_chance": 0.0}))  # 3 callers
    ids = Ids()
    seg = "seg-1-3-2"
    building = next(s.address.key for s in town.subscribers if s.serving == seg)
    unnamed = caller_key(b"salt", "building", building)
    flat = [caller_key(b"salt", "home", f"{building}\x00{n}") for n in (12, 13, 14)]
    # The building, then flat 12 (the same person), then flat 13: two callers.
    w.tick(30.0, [Call(10, seg, building, unnamed, "ivr", "ok"),
                  Call(20, seg, building, flat[0], "ivr", "ok"),
                  Call(25, seg, building, flat[1], "ivr", "ok")], never, ids)  # fmt: skip
    assert not w.open
    # Another call naming no flat is one of those homes, not a third caller.
    w.tick(40.0, [Call(35, seg, building, unnamed, "ivr", "ok")], never, ids)
    assert not w.open
    w.tick(50.0, [Call(45, seg, building, flat[2], "ivr", "ok")], never, ids)
    (sus,) = w.open.values()
    assert sus.callers == set(flat) and sus.first_call == 10
    # Once a suspicion holds it, an unnamed caller joins a home of theirs (none new).
    w.tick(60.0, [Call(55, seg, building, unnamed, "ivr", "ok")], never, ids)
    assert sus.callers == set(flat) and sus.count == 6


def test_a_home_taking_a_call_that_named_no_flat_is_kept_as_long_as_that_call(
    town: Directory,
) -> None:
    """A home that called with its flat, then twice naming none (the second just after
    the first call left the window): one caller throughout, not the home and a building's
    caller (the home was forgotten with its first call, its later one kept under it)."""
    w = watch_of(town, **(BEFORE | {"evidence": 0.0, "scan_chance": 0.0}))
    ids = Ids()
    seg = "seg-1-3-2"
    building = next(s.address.key for s in town.subscribers if s.serving == seg)
    home = caller_key(b"salt", "home", f"{building}\x00{12}")
    unnamed = caller_key(b"salt", "building", building)
    window = w.settings.window
    w.tick(11.0, [Call(10, seg, building, home, "ivr", "ok")], never, ids)
    w.tick(10 + window, [Call(9 + window, seg, building, unnamed, "ivr", "ok")], never, ids)
    w.tick(12 + window, [Call(11 + window, seg, building, unnamed, "ivr", "ok")], never, ids)
    assert set(w._counts[seg]) == {home}
    assert not w.open


def test_a_caller_naming_no_flat_counts_when_no_home_of_their_building_called(
    town: Directory,
) -> None:
    """A caller naming only their building is still a caller, once a building, when no
    home of that building called: here beside two homes of another building."""
    w = watch_of(town, **(BEFORE | {"evidence": 0.0, "scan_chance": 0.0}))
    ids = Ids()
    seg = "seg-1-3-2"
    building = next(s.address.key for s in town.subscribers if s.serving == seg)
    homes = [caller_key(b"salt", "home", f"{building}\x00{n}") for n in (12, 13)]
    other = "ул. Другая, д. 1"  # served by the same entrance
    unnamed = caller_key(b"salt", "building", other)
    w.tick(30.0, [Call(10, seg, other, unnamed, "ivr", "ok"),
                  Call(15, seg, other, unnamed, "ivr", "ok"),
                  Call(20, seg, building, homes[0], "ivr", "ok")], never, ids)  # fmt: skip
    assert not w.open
    w.tick(40.0, [Call(30, seg, building, homes[1], "ivr", "ok")], never, ids)
    (sus,) = w.open.values()
    assert sus.callers == {unnamed, *homes}


def widened_from_an_entrance(
    before: Callable[[Suspicion], None] = lambda _: None,
) -> tuple[CallWatch, Suspicion, int]:
    """Callers of one entrance raise a suspicion there; callers of the building's other
    entrances, too few for either alone, widen it to the switch. The watch, the
    suspicion and how many nodes it had before widening (its events since then kept);
    `before` is given the suspicion before the widening."""
    town = city_directory(citygen.generate(aggregations=1, subscribers_per_access=30,
                                           entrances=3))  # fmt: skip
    # The window's count alone (the sequential test would raise on the pair of
    # seg-1-5-2 by itself).
    w = watch_of(town, min_callers=3, evidence=0)
    ids = Ids()
    w.tick(40.0, calls_from(town, "seg-1-5-1", [10, 20, 30]), never, ids)
    (first,) = w.open.values()
    had = len(first.incident.nodes)
    before(first)
    w.take_events()
    more = calls_from(town, "seg-1-5-2", [50, 60]) + calls_from(town, "seg-1-5-3", [70])
    w.tick(80.0, more, never, ids)
    return w, first, had


def test_a_wider_cluster_widens_the_suspicion_below_it_keeping_its_id() -> None:
    w, first, _ = widened_from_an_entrance()
    sid = first.incident.id
    assert w.open.keys() == {sid}
    assert first.incident.root == "sw-1-5"
    assert any(e.kind is EventKind.ROOT_MOVED for e in w.take_events())


def test_a_widening_says_how_many_nodes_joined_never_fewer_than_none() -> None:
    """The nodes a widening adds are those new to the suspicion: after a reload that took
    nodes out of the topology (its node list kept them), the page said "-N nodes joined"
    (the lengths' difference)."""
    kept: set[str] = set()

    def reloaded(sus: Suspicion) -> None:
        kept.update(sus.incident.nodes)
        sus.incident.nodes = [*sus.incident.nodes, *(f"gone-{i}" for i in range(500))]

    w, first, _ = widened_from_an_entrance(reloaded)
    (widened,) = [e for e in w.take_events() if e.kind is EventKind.NODES]
    assert first.incident.root == "sw-1-5"
    joined = [n for n in first.incident.nodes if n not in kept]
    assert joined and widened.detail == {"added": len(joined), "nodes": len(first.incident.nodes)}


def test_confirm_dismiss_and_the_probes_taking_over(town: Directory) -> None:
    w = watch_of(town)
    ids = Ids()
    w.tick(40.0, calls_from(town, "seg-2-2-1", [10, 20, 30]), never, ids)
    w.tick(40.0, calls_from(town, "seg-2-3-1", [11, 21, 31]), never, ids)
    w.tick(40.0, calls_from(town, "seg-2-5-1", [12, 22, 32]), never, ids)
    a, b, c = sorted(w.open)
    w.take_events()
    w.confirm(a, 50.0, "eng")
    assert w.open[a].confirmed and w.open[a].incident.kind is Kind.OUTAGE
    (changed,) = w.take_events()
    assert changed.kind is EventKind.KIND_CHANGED and changed.detail["to"] == "outage"
    w.dismiss(b, 60.0, "eng")
    assert b not in w.open and w.take_events()[0].detail["dismissed"]
    probes = w.open[c].incident  # any incident stands for the probes' own here
    w.taken_over(c, probes, 70.0)
    (merged,) = w.take_events()
    assert merged.kind is EventKind.MERGED and merged.detail["confirmed_by"] == "probes"
    # A confirmed one does not expire: it is an outage until repaired.
    w.tick(10 * DAY, [], never, ids)
    assert a in w.open
    w.resolve(a, 10 * DAY, "eng")
    assert not w.open


def test_the_baseline_is_learned_a_busy_building_needs_more_callers(town: Directory) -> None:
    # A building whose subscribers call (and are answered ok) a hundred times a day.
    w = watch_of(town, window=600.0, learn_for=7 * DAY)
    ids = Ids()
    rng = random.Random(3)
    t, n = 0.0, 0
    while t < 3 * DAY:
        t += rng.expovariate(100 / DAY)
        n += 1
        w.tick(t, [Call(t, "seg-3-1-1", "", f"bg{n}", "ivr", "ok")], never, ids)
    assert w.threshold("seg-3-1-1", t) >= 6  # ~0.7 calls a window on average
    assert w.threshold("seg-3-2-1", t) == 3  # a quiet neighbour keeps the floor


def test_a_busy_entrance_is_the_place_when_a_neighbours_usual_call_tips_its_building(
    town: Directory,
) -> None:
    """An entrance that calls more than most needs four callers; its building's switch,
    whose rate is little more, needs four too. Three callers of the entrance and one
    usual call of the other entrance reach the switch's threshold first: the cluster is
    the entrance's (the rest are too few to be one), so it is suspected there, not at
    the building (before: rooted at the switch, a wrong place and the fault missed)."""
    w = watch_of(town, **BEFORE)
    ids = Ids()
    rng = random.Random(7)
    t, n = 0.0, 0
    while t < 8 * DAY:  # ~2.5 calls a day from seg-2-6-1, answered ok: its usual rate
        t += rng.expovariate(2.5 / DAY)
        n += 1
        w.tick(t, [Call(t, "seg-2-6-1", "", f"bg{n}", "ivr", "ok")], never, ids)
    w.tick(t + 3600, [], never, ids)
    assert not w.open
    now = t + 4000
    assert w.threshold("seg-2-6-1", now) == 4 and w.threshold("sw-2-6", now) == 4
    burst = calls_from(town, "seg-2-6-1", [now - 300, now - 200, now - 100])
    usual = calls_from(town, "seg-2-6-2", [now - 50])
    w.tick(now, [*burst, *usual], never, ids)
    (sus,) = w.open.values()
    assert sus.incident.root == "seg-2-6-1"
    assert {c.caller for c in sus.calls} == {c.caller for c in burst}
    # The neighbour's call stays with its own entrance's counts, unsuspected.
    assert w.covering("seg-2-6-2") is None and len(w.window) == 4


def test_a_suspicion_raised_at_a_switch_moves_down_to_the_entrance_its_callers_come_from(
    town: Directory,
) -> None:
    """Two callers of an entrance and one usual call of its neighbour: the building's
    switch, the lowest node they share (right then). Two more callers of the entrance:
    its calls pass its own threshold and the neighbour's are too few to be a cluster, so
    the suspicion moves down to the entrance, keeping its id and only its callers (the
    window's count alone: the sequential test would raise on the first two callers)."""
    w = watch_of(town, **{**BEFORE, "evidence": 0})
    ids = Ids()
    a = calls_from(town, "seg-3-7-1", [10, 20, 30, 40])
    b = calls_from(town, "seg-3-7-2", [25])
    w.tick(30.0, [a[0], a[1], *b], never, ids)
    (sus,) = w.open.values()
    sid = sus.incident.id
    assert sus.incident.root == "sw-3-7" and len(sus.callers) == 3
    w.take_events()
    w.tick(45.0, a[2:], never, ids)
    assert list(w.open) == [sid] and w.open[sid] is sus
    assert sus.incident.root == "seg-3-7-1"
    assert set(sus.incident.nodes) == {"seg-3-7-1", *town.topology.descendants("seg-3-7-1")}
    assert sus.callers == {c.caller for c in a} and {c.node for c in sus.calls} == {"seg-3-7-1"}
    assert sus.count == 4 and sus.first_call == 10 and sus.last_call == 40
    moved, nodes = w.take_events()
    assert moved.kind is EventKind.ROOT_MOVED and moved.incident == sid
    assert moved.root == "seg-3-7-1" and moved.detail["from"] == "sw-3-7"
    assert moved.detail["narrowed"] and moved.detail["callers"] == 4
    assert nodes.kind is EventKind.NODES and nodes.root == "seg-3-7-1"
    # Who is behind it now: the entrance's callers, not the neighbour's.
    assert w.covering("seg-3-7-1") is sus and w.covering("seg-3-7-2") is None
    # The neighbour's call counts again as its entrance's usual call: one more caller
    # there makes two, fewer than a cluster, and nothing moves.
    w.tick(60.0, calls_from(town, "seg-3-7-2", [50, 55])[:2], never, ids)
    assert list(w.open) == [sid] and sus.incident.root == "seg-3-7-1"
    assert w.covering("seg-3-7-2") is None  # the same caller key c...0 twice: two callers
    # A third makes a cluster of that entrance beside the suspicion at its sibling: one
    # place, their building (before: a second suspicion at seg-3-7-2, the building's
    # fault raised as one suspicion per entrance).
    other = Call(58, "seg-3-7-2", "", "someone-else", "ivr", "ok")
    w.tick(60.0, [other], never, ids)
    assert list(w.open) == [sid] and sus.incident.root == "sw-3-7"
    assert len(sus.callers) == 7 and w.covering("seg-3-7-2") is sus


def test_with_the_sequential_test_two_callers_of_an_entrance_place_the_cluster_there(
    town: Directory,
) -> None:
    """The same calls as above with the sequential test on: two callers of one entrance
    hold the building's cluster and the neighbour's one call is fewer, so it is raised at
    the entrance with only its two callers; the neighbour's call still counts as usual."""
    w = watch_of(town)
    a = calls_from(town, "seg-3-7-1", [10, 20])
    b = calls_from(town, "seg-3-7-2", [25])
    w.tick(30.0, [*a, *b], never, Ids())
    (sus,) = w.open.values()
    assert sus.incident.root == "seg-3-7-1" and sus.callers == {c.caller for c in a}
    assert w.covering("seg-3-7-2") is None


def test_a_building_whose_entrances_call_in_turn_is_one_suspicion_at_its_switch(
    town: Directory,
) -> None:
    """After two quiet weeks, two callers of one entrance a minute apart raise it there;
    one caller of the other entrance is a neighbour's usual call and changes nothing. A
    second caller there makes a cluster beside the suspicion: the building's switch,
    keeping the id (before: a second suspicion at that entrance, a building's fault
    raised once per entrance). A third caller of the first entrance does not move it
    back down: the other entrance's two are a cluster of their own, not usual calls."""
    w = watch_of(town)
    t = 14 * DAY
    ids = Ids()
    w.tick(t, [], never, ids)
    a = calls_from(town, "seg-4-2-1", [t + 100, t + 160, t + 400])
    b = calls_from(town, "seg-4-2-2", [t + 200, t + 260])
    w.tick(t + 170, a[:2], never, ids)
    (sus,) = w.open.values()
    sid = sus.incident.id
    assert sus.incident.root == "seg-4-2-1"
    w.tick(t + 210, b[:1], never, ids)
    assert list(w.open) == [sid] and sus.incident.root == "seg-4-2-1"
    assert w.covering("seg-4-2-2") is None
    w.tick(t + 270, b[1:], never, ids)
    assert list(w.open) == [sid] and sus.incident.root == "sw-4-2"
    assert sus.callers == {c.caller for c in [*a[:2], *b]}
    assert w.covering("seg-4-2-2") is sus
    w.take_events()
    w.tick(t + 410, a[2:], never, ids)
    assert list(w.open) == [sid] and sus.incident.root == "sw-4-2" and len(sus.callers) == 5
    assert not [e for e in w.take_events() if e.kind is EventKind.ROOT_MOVED]


def test_a_confirmed_suspicion_is_not_moved_down(town: Directory) -> None:
    w = watch_of(town, **{**BEFORE, "evidence": 0})  # raised at the switch (see above)
    ids = Ids()
    a = calls_from(town, "seg-3-8-1", [10, 20, 30, 40])
    w.tick(30.0, [a[0], a[1], *calls_from(town, "seg-3-8-2", [25])], never, ids)
    (sus,) = w.open.values()
    w.confirm(sus.incident.id, 31.0, "eng")
    w.take_events()
    w.tick(45.0, a[2:], never, ids)
    assert sus.incident.root == "sw-3-8" and sus.confirmed and len(sus.callers) == 5
    assert not [e for e in w.take_events() if e.kind is EventKind.ROOT_MOVED]


def test_a_suspicion_stays_at_its_switch_while_the_other_entrances_call_too(
    town: Directory,
) -> None:
    w = watch_of(town)
    ids = Ids()
    a = calls_from(town, "seg-3-9-1", [10, 20, 30, 40])
    b = calls_from(town, "seg-3-9-2", [12, 22, 32])
    w.tick(30.0, [a[0], a[1], b[0], b[1]], never, ids)
    (sus,) = w.open.values()
    assert sus.incident.root == "sw-3-9"
    # Three callers of the other entrance are a cluster of their own, not usual calls:
    # the building's four plus three stay one suspicion at the switch.
    w.tick(45.0, [*a[2:], b[2]], never, ids)
    assert sus.incident.root == "sw-3-9" and len(sus.callers) == 7


def test_callers_of_two_entrances_still_root_at_their_switch_when_neither_holds_a_cluster(
    town: Directory,
) -> None:
    w = watch_of(town)
    calls = calls_from(town, "seg-2-8-1", [10, 20]) + calls_from(town, "seg-2-8-2", [30, 40])
    w.tick(50.0, calls, never, Ids())
    (sus,) = w.open.values()
    assert sus.incident.root == "sw-2-8"


def test_the_call_log_is_bounded_and_keys_are_hashes() -> None:
    log = CallLog(100)
    for i in range(250):
        log.append(Call(float(i), "n", "", str(i), "ivr", "ok"))
    taken = log.take()
    assert len(taken) == 100 and taken[0].at == 150.0 and log.dropped == 150
    assert not log.take()
    key = caller_key(b"salt", "phone", "+79210000001")
    assert "+7921" not in key and len(key) == 16
    assert key == caller_key(b"salt", "phone", "+79210000001")
    assert key != caller_key(b"other", "phone", "+79210000001")


# -- simulated call streams --------------------------------------------------------------


def simulate(d: Directory, seed: int, per_sub_day: float, hours: float,
             faults: list[tuple[str, float]], share: float,
             delay: float) -> tuple[CallWatch, list[Call]]:  # fmt: skip
    """Poisson background at each serving node's rate, plus for each fault (node, start)
    a call from each subscriber behind it with probability `share` after an exponential
    delay; fed to the detector in ticks of 5 seconds."""
    rng = random.Random(seed)
    end = hours * 3600
    calls: list[Call] = []
    by_node: dict[str, list[str]] = {}
    for s in d.subscribers:
        by_node.setdefault(s.serving, []).append(s.account)
    for node, accounts in by_node.items():
        rate = per_sub_day * len(accounts) / DAY
        t = rng.expovariate(rate)
        while t < end:
            calls.append(Call(t, node, "", f"a{rng.choice(accounts)}", "ivr", "ok"))
            t += rng.expovariate(rate)
    topo = d.topology
    for node, start in faults:
        below = {node, *topo.descendants(node)}
        for s in d.subscribers:
            if s.serving in below and rng.random() < share:
                t = start + rng.expovariate(1 / delay)
                if t < end:
                    calls.append(Call(t, s.serving, "", f"a{s.account}", "ivr", "ok"))
    calls.sort(key=lambda c: c.at)
    w = CallWatch(topo, d.counts, Settings(prior_rate=per_sub_day), started=0.0)
    ids = Ids()
    i = 0
    t = 0.0
    while t < end:
        t += 5.0
        j = i
        while j < len(calls) and calls[j].at <= t:
            j += 1
        w.tick(t, calls[i:j], never, ids)
        i = j
    return w, calls


def all_raised(w: CallWatch) -> list[str]:
    return [e.root or "" for e in w.take_events() if e.kind is EventKind.OPENED]


def roots_over_time(w: CallWatch) -> dict[int, list[tuple[float, str]]]:
    """Each suspicion raised, with where it was rooted and from when (raised, widened or
    narrowed)."""
    roots: dict[int, list[tuple[float, str]]] = {}
    for e in w.take_events():
        if e.kind in (EventKind.OPENED, EventKind.ROOT_MOVED) and e.incident is not None:
            roots.setdefault(e.incident, []).append((e.at, e.root or ""))
    return roots


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), rate=st.floats(0.005, 0.05))
def test_background_alone_raises_at_most_one_suspicion_a_day(
    town: Directory, seed: int, rate: float
) -> None:
    """A day of calls at the usual rate, up to five times the city's: the thresholds
    are set so that luck reaches them about once in `1 / chance` windows of a place, so
    a false suspicion may happen, but not more than one a day (the issue's target)."""
    w, calls = simulate(town, seed, rate, hours=24, faults=[], share=0.0, delay=600)
    raised = all_raised(w)
    assert len(raised) <= 1, f"{raised} from {len(calls)} background calls"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000),
       fault=st.sampled_from(["seg-1-1-1", "seg-2-7-2", "sw-3-5", "seg-4-10-1"]),
       start=st.floats(3600, 6 * 3600))  # fmt: skip
# Raised at its switch by two of its callers and a neighbour's usual call; it must move
# down to the entrance when more of the entrance's callers come (it was left at the switch).
@example(seed=1, fault="seg-4-10-1", start=11807.0)
def test_an_invisible_fault_is_suspected_at_or_below_its_node(
    town: Directory, seed: int, fault: str, start: float
) -> None:
    """Whenever the fault's place drew enough distinct callers within one window to
    pass its threshold, it is suspected there (or below it), and no later than the
    call that passed it; a fault whose callers were too few or too spread out may go
    unheard. Elsewhere, at most the one false suspicion a day that luck allows."""
    w, calls = simulate(town, seed, 0.02, hours=8, faults=[(fault, start)], share=0.4,
                        delay=300)  # fmt: skip
    raised = roots_over_time(w)
    topo = town.topology
    place = {fault, *topo.descendants(fault)}
    ours = [c for c in calls if c.node in place and c.at >= start]
    window = Settings().window
    passed = None
    for i, c in enumerate(ours):
        inside = {o.caller for o in ours[: i + 1] if o.at > c.at - window}
        if len(inside) >= 3 and len(inside) >= w.threshold(fault, c.at):
            passed = c.at
            break
    # When each suspicion was first rooted in the fault's place: raised there, or moved
    # down into it (raised further up while the callers were too few to tell).
    reached = {i: min(at for at, r in h if r in place)
               for i, h in raised.items() if any(r in place for _, r in h)}  # fmt: skip
    if passed is not None:
        assert reached, f"fault at {fault} passed its threshold at {passed}; raised {raised}"
        assert min(reached.values()) <= passed + 5, (passed, raised)
        here = [s for s in w.open.values() if s.incident.root in place]
        assert all(s.raised_at <= passed + 5 for s in here), (passed, here)
    assert len([i for i in raised if i not in reached]) <= 1, raised


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 3000), st.integers(0, 39), st.integers(0, 5),
                          st.sampled_from(["ok", "ok", "ok", "outage", "cpe_down"])),
                max_size=60))  # fmt: skip
def test_invariants_on_any_call_stream(
    town: Directory, stream: list[tuple[float, int, int, str]]
) -> None:
    """Whatever the calls: suspicions are rooted at the lowest node shared by their
    callers, never raised on fewer than min_callers distinct callers (two with the
    sequential test), and ids are unique."""
    nodes = sorted({s.serving for s in town.subscribers})
    stream.sort()
    for evidence, fewest in ((0.0, 3), (Settings().evidence, 2)):
        w = watch_of(town, evidence=evidence)
        ids = Ids()
        for at, node, caller, status in stream:
            w.tick(at, [Call(at, nodes[node], "", f"k{caller}", "ivr", status)], never, ids)
        opened = [e for e in w.take_events() if e.kind is EventKind.OPENED]
        assert len({e.incident for e in opened}) == len(opened)
        for sus in w.open.values():
            assert len(sus.callers) >= fewest
            shared = w.lowest_shared({c.node for c in sus.calls})
            root = sus.incident.root
            assert root == shared or root in town.topology.ancestors(shared)
            assert all(c.status == "ok" for c in sus.calls)


# -- config ------------------------------------------------------------------------------


def test_the_callers_section_is_read_and_bad_values_are_named() -> None:
    from outagemon import config
    from outagemon.errors import ConfigError

    cfg = config.parse('[callers]\nwindow = 900\nmin_callers = 4\nchance = 1e-5\n'
                       'sentence = "We are checking."\n', Path("/etc/om.toml"))  # fmt: skip
    assert (cfg.callers.window, cfg.callers.min_callers, cfg.callers.chance) == (900, 4, 1e-5)
    assert cfg.callers.sentence == "We are checking." and cfg.callers.enabled
    assert config.parse("", Path("/etc/om.toml")).callers.sentence == ""  # default: off
    bad = ('[callers]\nwindow = -1\nmin_callers = 1\nchance = 0.7\nprior_rate = "lots"\n'
           'sentence = "two\\nlines"\nwindo = 3\n')  # fmt: skip
    with pytest.raises(ConfigError) as info:
        config.parse(bad, Path("/etc/om.toml"))
    text = "\n".join(info.value.problems)
    for named in ("[callers] window", "[callers] min_callers must be at least 2",
                  "[callers] chance", "[callers] prior_rate", "[callers] sentence",
                  "did you mean 'window'"):  # fmt: skip
        assert named in text, (named, text)


def test_the_sequential_tests_keys_are_read_and_bounded() -> None:
    from outagemon import config
    from outagemon.errors import ConfigError

    cfg = config.parse("[callers]\nevidence = 0\nfault_rate = 0.5\nby_hour = false\n",
                       Path("/etc/om.toml"))  # fmt: skip
    assert (cfg.callers.evidence, cfg.callers.fault_rate, cfg.callers.by_hour) == (0, 0.5, False)
    default = config.parse("", Path("/etc/om.toml")).callers
    assert (default.evidence, default.fault_rate, default.by_hour) == (16.1, 0.25, True)
    with pytest.raises(ConfigError) as bad:
        config.parse("[callers]\nevidence = -1\nfault_rate = 0\nby_hour = 2\n",
                     Path("/etc/om.toml"))  # fmt: skip
    for named in ("[callers] evidence", "[callers] fault_rate", "[callers] by_hour"):
        assert named in str(bad.value), bad.value


def test_the_example_config_parses_with_its_callers_section() -> None:
    from outagemon import config

    example = Path(__file__).parent.parent / "config" / "outagemon.toml"
    cfg = config.parse(example.read_text(), example)
    assert cfg.callers == config.CallersConfig()


def test_one_taken_up_after_a_restart_gets_a_whole_quiet_spell_before_it_expires(
    town: Directory,
) -> None:
    w = watch_of(town, expire_after=3600.0)
    w.tick(40.0, calls_from(town, "seg-1-4-1", [10, 20, 30]), never, Ids())
    (sus,) = w.open.values()
    again = watch_of(town, expire_after=3600.0)
    again.restore([sus.incident], now=10 * DAY)
    again.tick(10 * DAY + 3599, [], never, Ids())
    assert list(again.open) == [sus.incident.id]
    again.tick(10 * DAY + 3600, [], never, Ids())
    assert not again.open


def test_callers_whose_own_router_answers_do_not_make_their_entrance_suspected(
    town: Directory,
) -> None:
    # Their routers answer pings: the way to them works, whatever they call about.
    w = watch_of(town)
    answering = [dataclasses.replace(c, router_up=True)
                 for c in calls_from(town, "seg-1-2-1", [10, 20, 30, 40, 50])]  # fmt: skip
    w.tick(60.0, answering, never, Ids())
    assert not w.open and not w.window
    # Two such callers and two without a probed router: two unexplained, not a cluster.
    mixed = calls_from(town, "seg-1-2-2", [100, 110, 120, 130])
    mixed[0], mixed[1] = (dataclasses.replace(c, router_up=True) for c in mixed[:2])
    w.tick(140.0, mixed, never, Ids())
    assert not w.open and len(w.window) == 2
    # A third caller without an answering router makes three: suspected.
    third = dataclasses.replace(calls_from(town, "seg-1-2-2", [145])[0], caller="another")
    w.tick(150.0, [third], never, Ids())
    (sus,) = w.open.values()
    assert sus.incident.root == "seg-1-2-2" and len(sus.callers) == 3


def test_a_building_is_written_for_people_even_from_its_key() -> None:
    from outagemon.core.addresses import Address

    assert building_text("|пер|пушкина|1|||") == "пер. Пушкина, д. 1"
    key = Address("мира", "пр-т", "10", "2", city="казань").key
    assert building_text(key) == "г. Казань, пр-т Мира, д. 10, корп. 2"
    assert building_text("пр-т Мира, д. 10") == "пр-т Мира, д. 10"  # already written out


def test_the_page_says_a_suspicion_was_narrowed() -> None:
    from outagemon.http.page import _suspicion_text

    text = _suspicion_text("root_moved", {"from": "sw-3-7", "narrowed": True, "callers": 4})
    assert text.startswith("Narrowed from sw-3-7:")
    widened = _suspicion_text("root_moved", {"from": "seg-1-5-1", "absorbed": []})
    assert widened.startswith("Widened from seg-1-5-1")


def test_calls_made_before_the_probes_saw_a_fault_raise_nothing_after_its_repair(
    town: Directory,
) -> None:
    # Two callers phone a minute before the probes open an incident at their switch; it
    # is repaired; a third caller phones just after. Those two called about that fault:
    # set aside while it was open, they do not make a cluster with the third.
    def run(set_aside: bool) -> bool:
        w = watch_of(town)
        ids = Ids()
        w.tick(3600.0, calls_from(town, "seg-3-3-1", [3590, 3595]), never, ids)
        down = {"sw-3-3", "seg-3-3-1", "seg-3-3-2"}
        if set_aside:
            assert w.set_aside(down.__contains__) == 2
            assert not w.window and w.set_aside(down.__contains__) == 0
        w.tick(3660.0, [], down.__contains__, ids)
        third = calls_from(town, "seg-3-3-1", [0, 0, 3700])[2:]
        w.tick(3700.0, third, never, ids)
        return bool(w.open)

    assert run(set_aside=False)  # without it, the old calls tip the place
    assert not run(set_aside=True)


def test_calls_told_ok_and_looked_at_once_their_place_is_explained_are_not_kept(
    town: Directory,
) -> None:
    w = watch_of(town)
    down = {"sw-3-3", "seg-3-3-1", "seg-3-3-2"}
    w.tick(3600.0, calls_from(town, "seg-3-3-1", [3590, 3595]), down.__contains__, Ids())
    assert not w.window


def usual_calls(d: Directory, until: float, quieter: str = "", share: float = 0.5) -> list[Call]:
    """Every entrance's usual calls from 0 to `until`, in time order: at the prior's rate
    (0.01 a subscriber a day; `share` of it at `quieter`), at random times of day, each
    from a caller of its own."""
    rng = random.Random(7)
    calls = []
    for serving, count in sorted(d.counts.items()):
        if not serving.startswith("seg-"):
            continue
        rate = Settings().prior_rate * count * (share if serving == quieter else 1.0)
        calls += [Call(rng.uniform(0, until), serving, "", f"usual{serving}{k}", "ivr", "ok")
                  for k in range(round(rate * until / DAY))]  # fmt: skip
    return sorted(calls, key=lambda c: c.at)


# The burst alternative as measured (README, "Callers as sensors"): a time constant of
# 10 minutes, its evidence 16 (14 plus about what its onset fitted to the first caller is
# worth); off by default.
BURST = {"burst": 600.0, "evidence": 16.0}


def test_two_callers_seconds_apart_at_an_entrance_that_calls_are_a_fault_s_burst(
    town: Directory,
) -> None:
    """A fault's callers come in a burst, most within minutes of it (`burst`): two
    callers 10 s apart at an entrance that calls every few days are far likelier so
    than from its usual calls; the constant-rate alternative (burst 0), which spreads a
    fault's calls over its hour, does not raise them at the same evidence, and neither
    raises the same two callers ten minutes apart."""
    t = 14 * DAY
    for burst, gap, raised in ((600.0, 10, True), (0.0, 10, False),
                               (600.0, 600, False), (0.0, 600, False)):  # fmt: skip
        w = watch_of(town, **{**BURST, "burst": burst})
        ids = Ids()
        w.tick(t, usual_calls(town, t, quieter="seg-2-5-1"), never, ids)
        pair = calls_from(town, "seg-2-5-1", [t + 3000, t + 3000 + gap])
        w.tick(t + 3000, pair[:1], never, ids)
        w.tick(t + 3000 + gap, pair[1:], never, ids)
        assert bool(w.open) is raised, (burst, gap)
        if raised:
            (sus,) = w.open.values()
            assert sus.incident.root == "seg-2-5-1" and len(sus.callers) == 2


def test_under_the_burst_callers_close_together_weigh_more_than_the_same_callers_spread(
    town: Directory,
) -> None:
    """The burst's evidence falls as its callers spread (a fault's calls thin out within
    minutes; the usual calls do not); at a constant rate the gap hardly counts. The same
    holds for three callers."""
    t = 14 * DAY
    spread: dict[float, list[float]] = {}
    for burst in (600.0, 0.0):
        w = watch_of(town, **{**BURST, "burst": burst})
        w.tick(t, usual_calls(town, t), never, Ids())
        spread[burst] = []
        for near, far in (([0, 60], [0, 600]), ([0, 30, 60], [0, 300, 600])):
            close = w.score("seg-2-5-1", [t + 3000 + x for x in near], t + 3000 + near[-1])
            apart = w.score("seg-2-5-1", [t + 3000 + x for x in far], t + 3000 + far[-1])
            spread[burst].append(close - apart)
    assert min(spread[600.0]) > 3 > 1 > max(spread[0.0])


def test_with_burst_off_the_score_is_the_constant_rate_test_as_before(town: Directory) -> None:
    """`burst = 0` (the default before the burst's) keeps the constant-rate test: the pair's
    score is 2 ln(fault / usual) less the fault's expected calls over the gap, as the rates
    say."""
    t = 14 * DAY
    w = watch_of(town, burst=0.0)
    w.tick(t, usual_calls(town, t), never, Ids())
    assert w.settings.burst == 0
    firsts = [t + 3000, t + 3060]
    calls, seen = w.history("seg-2-5-1", t + 3060)
    fault = w.settings.fault_rate * town.counts["seg-2-5-1"] / 3600
    expect = (sum(math.log(fault / w.shape(x)) for x in firsts) - fault * 60
              - math.lgamma(calls + 2) + math.lgamma(calls) - calls * math.log(seen)
              + (calls + 2) * math.log(seen + w.shaped(firsts[0], firsts[1])))  # fmt: skip
    assert w.score("seg-2-5-1", firsts, t + 3060) == pytest.approx(expect, rel=1e-12)


def test_the_burst_key_is_read_and_bounded() -> None:
    from outagemon import config
    from outagemon.errors import ConfigError
    from outagemon.monitor import call_settings

    read = config.parse("[callers]\nburst = 0\n", Path("/etc/om.toml")).callers
    assert read.burst == 0 and config.parse("", Path("/etc/om.toml")).callers.burst == 600
    assert call_settings(read).burst == 0
    for bad in ("-1", "86401", "nan", '"600"'):
        with pytest.raises(ConfigError, match=r"\[callers\] burst"):
            config.parse(f"[callers]\nburst = {bad}\n", Path("/etc/om.toml"))


# Both tests at once (`burst_evidence`): the constant one at `evidence`, the burst at its own.
EITHER = {"burst": 600.0, "evidence": 14.0, "burst_evidence": 16.0}


@pytest.fixture(scope="module")
def learned(town: Directory) -> tuple[float, list[Call]]:
    t = 14 * DAY
    return t, usual_calls(town, t, quieter="seg-2-5-1", share=0.2)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(gaps=st.lists(st.floats(1, 1700), min_size=1, max_size=3), offset=st.floats(0, DAY),
       node=st.sampled_from(["seg-2-5-1", "seg-1-3-2", "sw-3-3"]))  # fmt: skip
def test_with_both_tests_a_place_is_raised_when_either_test_holds_at_its_own_evidence(
    town: Directory, learned: tuple[float, list[Call]], gaps: list[float], offset: float,
    node: str,
) -> None:  # fmt: skip
    """`strong` with both is exactly the constant test at `evidence` or the burst at
    `burst_evidence`, for any callers, place and time of day (so it raises whatever
    either raises alone, and nothing else)."""
    t, usual = learned
    both = watch_of(town, **EITHER)
    constant = watch_of(town, evidence=EITHER["evidence"], burst=0.0)
    burst = watch_of(town, burst=EITHER["burst"], evidence=EITHER["burst_evidence"])
    for w in (both, constant, burst):
        w.tick(t, usual, never, Ids())
    firsts = [t + offset]
    for gap in gaps:
        firsts.append(firsts[-1] + gap)
    now = firsts[-1]
    alone = (constant.strong(node, firsts, now), burst.strong(node, firsts, now))
    assert both.strong(node, firsts, now) is any(alone), alone
    assert both.score(node, firsts, now, burst=0.0) == constant.score(node, firsts, now)
    assert both.score(node, firsts, now) == burst.score(node, firsts, now)


def test_with_both_tests_a_tight_pair_and_a_slow_pair_are_each_raised(town: Directory) -> None:
    """Two callers 10 s apart at an entrance calling at the usual rate: the burst's
    evidence, not the constant test's; two callers 10 minutes apart at an entrance that
    calls a twentieth of that: the constant test's, not the burst's (a fault's burst would
    have brought more callers by then). With both, each pair is raised; with
    `burst_evidence` 0 the burst alone decides, as before."""
    t = 14 * DAY
    raised = []
    for share, gap in ((1.0, 10.0), (0.05, 600.0)):
        usual = usual_calls(town, t, quieter="seg-2-5-1", share=share)
        for kw in ({"evidence": 14.0, "burst": 0.0}, {"burst": 600.0, "evidence": 16.0}, EITHER):
            w = watch_of(town, **kw)
            ids = Ids()
            w.tick(t, usual, never, ids)
            pair = calls_from(town, "seg-2-5-1", [t + 3000, t + 3000 + gap])
            w.tick(t + 3000, pair[:1], never, ids)
            w.tick(t + 3000 + gap, pair[1:], never, ids)
            raised.append(bool(w.open))
            if w.open:
                (sus,) = w.open.values()
                assert sus.incident.root == "seg-2-5-1" and len(sus.callers) == 2
    # (constant, burst, both) for the tight pair, then for the slow one.
    assert raised == [False, True, True, True, False, True]


def test_the_burst_evidence_key_is_read_and_bounded() -> None:
    from outagemon import config
    from outagemon.errors import ConfigError
    from outagemon.monitor import call_settings

    read = config.parse("[callers]\nburst = 600\nburst_evidence = 16.5\n",
                        Path("/etc/om.toml")).callers  # fmt: skip
    assert read.burst_evidence == 16.5 and call_settings(read).burst_evidence == 16.5
    assert config.parse("", Path("/etc/om.toml")).callers.burst_evidence == 0
    for bad in ("-1", "101", "nan", '"16"'):
        with pytest.raises(ConfigError, match=r"\[callers\] burst_evidence"):
            config.parse(f"[callers]\nburst_evidence = {bad}\n", Path("/etc/om.toml"))


def test_no_suspicion_at_a_node_the_probes_see_answering_but_below_it(town: Directory) -> None:
    # Every probed node answers (the aggregation, the access switches; the entrances have
    # no address). Three callers of three buildings under agg-1 within a minute: the way
    # through agg-1 and through each one's switch works, so each one's fault, if any, is
    # at their own entrance, one caller each: nothing is raised (before: at agg-1).
    def answering(node: str) -> bool:
        return town.topology.nodes[node].probed

    spread = [*calls_from(town, "seg-1-1-1", [3600]), *calls_from(town, "seg-1-3-1", [3620]),
              *calls_from(town, "seg-1-4-1", [3640])]  # fmt: skip
    w = watch_of(town)
    w.tick(3650.0, spread, never, Ids(), answering)
    assert not w.open and not w.take_events()
    before = watch_of(town)  # without the probes' states: raised at the aggregation
    before.tick(3650.0, spread, never, Ids())
    assert [s.incident.root for s in before.open.values()] == ["agg-1"]
    # Five callers of one entrance (no address) under an answering switch: raised there.
    w.tick(3700.0, calls_from(town, "seg-1-3-2", [3660, 3670, 3680, 3690, 3700]), never,
           Ids(), answering)  # fmt: skip
    (sus,) = w.open.values()
    assert sus.incident.root == "seg-1-3-2" and sus.distinct_callers == 5


def test_callers_of_two_entrances_under_an_answering_switch_are_raised_at_the_switch(
    town: Directory,
) -> None:
    # The building's switch answers its pings; its entrances have no address. Answering
    # proves the way to the switch, not through it (its management may answer while its
    # ports carry nothing): the callers of both entrances are one place, the switch, as
    # when its probe says nothing.
    calls = [
        *calls_from(town, "seg-2-4-1", [10, 20, 30]),
        *calls_from(town, "seg-2-4-2", [15, 25, 35]),
    ]
    for answering in (lambda n: n == "sw-2-4", lambda n: False):
        w = watch_of(town)
        w.tick(50.0, calls, never, Ids(), answering)
        assert [s.incident.root for s in w.open.values()] == ["sw-2-4"]


def test_callers_of_a_building_its_answering_switch_serves_raise_at_that_switch() -> None:
    # The switch serves the building itself (no entrance nodes): its wiring below has no
    # node of its own, so the answering switch stands for it and is the place.
    d = city_directory(citygen.generate(aggregations=1, access_per_aggregation=3,
                                        subscribers_per_access=20, entrances=1))  # fmt: skip
    w = watch_of(d)
    w.tick(3700.0, calls_from(d, "sw-1-2", [3600, 3620, 3640, 3660, 3680]), never, Ids(),
           lambda n: d.topology.nodes[n].probed)  # fmt: skip
    assert [s.incident.root for s in w.open.values()] == ["sw-1-2"]


# The defaults (calls_bench's seeds 1-40 at 25 % meet every target with them): the burst
# alternative at evidence 16.1 over a window of an hour at chance 1e-7, and the waking
# hour's constant test (from 07:00) at 10.5.
def test_the_defaults_are_the_burst_over_an_hour_and_the_config_says_the_same() -> None:
    from outagemon import config
    from outagemon.monitor import call_settings

    s = Settings()
    assert (s.window, s.chance, s.evidence, s.burst, s.burst_evidence) == (
        3600.0, 1e-7, 16.1, 600.0, 0.0)  # fmt: skip
    assert (s.wake_at, s.wake_evidence, s.scan_chance) == (7 * 3600.0, 10.5, 3e-7)
    assert call_settings(config.parse("", Path("/etc/om.toml")).callers) == s


def test_a_night_s_fault_noticed_over_the_morning_adds_up_within_the_hour(
    town: Directory,
) -> None:
    """A fault of the night is noticed as people wake: its callers come over the morning,
    not within minutes. Three callers of a quiet entrance 25 minutes apart (50 from the
    first to the third) raise it by the window's count with the hour's window (the
    default); within half an hour's (the earlier default) they never add up to three."""
    t = 14 * DAY + 7 * 3600
    for window, raised in ((Settings().window, True), (1800.0, False)):
        w = watch_of(town, window=window, evidence=0)
        ids = Ids()
        w.tick(t, [], never, ids)
        assert w.threshold("seg-1-3-2", t) == 3
        for c in calls_from(town, "seg-1-3-2", [t + 60, t + 1560, t + 3060]):
            w.tick(c.at + 1, [c], never, ids)
        assert bool(w.open) is raised, window
        if raised:
            (sus,) = w.open.values()
            assert sus.incident.root == "seg-1-3-2" and len(sus.callers) == 3


def test_by_default_a_pair_seconds_apart_is_a_burst_and_the_same_pair_spread_is_not(
    town: Directory,
) -> None:
    """With the defaults (the burst alternative), two callers of an entrance at its usual
    rate 20 s apart are raised, the same two 20 minutes apart are not (a fault's callers
    come within minutes of it by day; a pair that far apart is the usual calls' kind)."""
    t = 14 * DAY + 11 * 3600
    for gap, raised in ((20.0, True), (1200.0, False)):
        w = watch_of(town)
        ids = Ids()
        w.tick(t, usual_calls(town, t), never, ids)
        pair = calls_from(town, "seg-2-5-1", [t + 100, t + 100 + gap])
        for c in pair:
            w.tick(c.at + 1, [c], never, ids)
        assert bool(w.open) is raised, gap


def test_an_hour_the_history_has_not_lived_yet_is_not_a_quiet_hour(town: Directory) -> None:
    """The day's shape is each hour's calls over the time the history spent in that
    hour: after a first morning of a call a minute (00:00 to 12:00), the
    evening, not lived yet, is as busy as the morning (it said a tenth of it, as if
    nobody had called in the hours still to come, and a pair at 20:00 weighed more)."""
    w = watch_of(town, min_callers=1000, evidence=0.0)  # nothing raised: every call learned
    ids = Ids()
    serving = sorted(s for s in town.counts if s.startswith("seg-"))
    for k in range(12 * 60):  # a call a minute, each from a caller of its own
        c = Call(k * 60.0 + 30, serving[k % len(serving)], "", f"m{k}", "ivr", "ok")
        w.tick(c.at, [c], never, ids)
    w.tick(13 * 3600.0, [], never, ids)  # the morning's calls leave the window: learned
    for hour in (3, 9, 18, 21):
        assert w.shape(hour * 3600.0) == pytest.approx(1.0, abs=0.05), hour


def test_the_lived_hours_are_made_afresh_when_the_history_s_start_moves(
    town: Directory,
) -> None:
    """A history taken up from an earlier run begins earlier (`started` moves back): the
    hours it lived are counted from there, as a watch that learned it all itself does."""
    w = watch_of(town)
    ids = Ids()
    calls = usual_calls(town, 3 * DAY)
    for c in calls:
        w.tick(c.at, [c], never, ids)
    w.tick(3 * DAY + 3600, [], never, ids)
    again = CallWatch(town.topology, town.counts, Settings(), started=3 * DAY + 3600)
    again.take_baseline(w.baseline())
    assert again.started == 0.0
    for h in range(24):
        assert again.shape(h * 3600.0) == pytest.approx(w.shape(h * 3600.0), rel=1e-9), h


def test_a_pair_spread_over_the_waking_hour_is_a_night_s_fault_and_the_same_pair_by_day_not(
    town: Directory,
) -> None:
    """A night's faults are noticed as people wake (`wake_at`): their callers come over
    that hour at the constant rate, and every night hour's faults come then. Two callers
    of an entrance ten minutes apart just after 07:00 pass the constant test at
    `wake_evidence`; the same pair at 15:00 does not (by day a fault's callers come in a
    burst: this pair is the usual calls' kind), nor at 07:00 with `wake_evidence` 0."""
    base = 14 * DAY
    for hour, wake, raised in ((7, 10.0, True), (15, 10.0, False), (7, 0.0, False)):
        w = watch_of(town, wake_evidence=wake)
        ids = Ids()
        w.tick(base, usual_calls(town, base), never, ids)
        t = base + hour * 3600 + 300
        pair = calls_from(town, "seg-2-5-1", [t, t + 600])
        for c in pair:
            w.tick(c.at + 1, [c], never, ids)
        assert bool(w.open) is raised, (hour, wake)
        firsts = [c.at for c in pair]
        constant = w.score("seg-2-5-1", firsts, t + 601, burst=0.0)
        assert 10.0 <= constant < Settings().evidence, constant  # what the pair weighs
        if raised:
            (sus,) = w.open.values()
            assert sus.incident.root == "seg-2-5-1" and len(sus.callers) == 2


def test_the_waking_hour_holds_only_its_own_callers(town: Directory) -> None:
    """`waking()`: the first calls made since this morning's `wake_at`, while `now` is
    within `window` of it; none after the hour (or before it)."""
    w = watch_of(town, wake_evidence=10.0)
    day = 3 * DAY
    firsts = [day + 6 * 3600, day + 7 * 3600 + 60, day + 7 * 3600 + 120]
    assert w.waking(firsts, day + 7 * 3600 + 200) == firsts[1:]
    assert w.waking(firsts, day + 8 * 3600 + 1) == []
    assert w.waking(firsts[:1], day + 6 * 3600 + 1) == []


def test_the_waking_keys_are_read_and_bounded() -> None:
    from outagemon import config
    from outagemon.errors import ConfigError
    from outagemon.monitor import call_settings

    read = config.parse("[callers]\nwake_at = 21600\nwake_evidence = 11.5\n",
                        Path("/etc/om.toml")).callers  # fmt: skip
    assert (read.wake_at, read.wake_evidence) == (21600, 11.5)
    assert (call_settings(read).wake_at, call_settings(read).wake_evidence) == (21600, 11.5)
    for key, bad in (("wake_at", "-1"), ("wake_at", "86401"), ("wake_at", '"7"'),
                     ("wake_evidence", "-1"), ("wake_evidence", "101"),
                     ("wake_evidence", "nan")):  # fmt: skip
        with pytest.raises(ConfigError, match=rf"\[callers\] {key}"):
            config.parse(f"[callers]\n{key} = {bad}\n", Path("/etc/om.toml"))


def _learned_entrance(d: Directory, seg: str, per_day: float, days: float, **kw: object
                      ) -> tuple[CallWatch, Ids]:  # fmt: skip
    """A watch that has heard `seg` call `per_day` times a day for `days` days."""
    w, ids = watch_of(d, **kw), Ids()
    t, n = 0.0, 0
    while t < days * DAY:
        t += DAY / per_day
        n += 1
        w.tick(t, [Call(t, seg, "", f"bg{n}", "ivr", "ok")], never, ids)
    return w, ids


def test_the_scan_raises_three_callers_of_an_entrance_twenty_minutes_apart_by_day(
    town: Directory,
) -> None:
    """Three callers of an entrance that calls every other day, 10 and 12 minutes apart at
    13:00: the window's count wants four, the burst test's evidence is short (the gaps
    are long for a burst), so without the scan nothing is raised (calls_bench's seeds
    74 and 77 missed such faults); the scan finds three so soon after one another rarer
    than `scan_chance` from the usual calls, and raises it at the entrance."""
    seg = "seg-1-3-2"
    start = 15 * DAY + 13 * 3600
    at = [start + 100, start + 700, start + 1420]
    for chance, raised in ((0.0, []), (Settings().scan_chance, [seg])):
        w, ids = _learned_entrance(town, seg, 0.5, 14, scan_chance=chance)
        w.tick(start, [], never, ids)
        # The window wants four; the burst test is short of its evidence.
        assert w.threshold(seg, at[-1]) > 3 and w.score(seg, at, at[-1]) < w.settings.evidence
        for c in calls_from(town, seg, at):
            w.tick(c.at + 1, [c], never, ids)
        assert [s.incident.root for s in w.open.values()] == raised


def test_the_scan_weighs_the_span_and_the_place_s_usual_calls(town: Directory) -> None:
    """The same three callers spread over the hour, or at an entrance that calls several
    times a day, are its usual calls: the scan's chance is far above `scan_chance`, and
    it falls as the span shrinks (more short spans are looked at, so each counts for
    less, but the usual calls bring three in one much more rarely)."""
    seg = "seg-1-3-2"
    quiet, _ = _learned_entrance(town, seg, 0.5, 14)
    busy, _ = _learned_entrance(town, seg, 6, 14)
    now = 15 * DAY + 13 * 3600
    close = [now - 1320, now - 720, now]
    spread = [now - 3500, now - 1800, now]
    limit = Settings().scan_chance
    assert quiet.scan(seg, close, now) <= limit < quiet.scan(seg, spread, now)
    assert busy.scan(seg, close, now) > 100 * limit
    assert quiet.scan(seg, close[1:], now) == 1.0  # fewer than min_callers: no scan
    # At night (before wake_at) nobody notices a fault: the night's callers are not scanned,
    # nor those of the night before the waking hour.
    night = 16 * DAY + 3 * 3600
    assert quiet.scan(seg, [night - 1320, night - 720, night], night) == 1.0
    woke = 16 * DAY + 7 * 3600
    assert quiet.scan(seg, [woke - 60, woke + 600, woke + 1300], woke + 1300) == 1.0


def test_the_scan_chance_key_is_read_and_bounded() -> None:
    from outagemon import config
    from outagemon.errors import ConfigError
    from outagemon.monitor import call_settings

    read = config.parse("[callers]\nscan_chance = 1e-6\n", Path("/etc/om.toml"))
    assert read.callers.scan_chance == 1e-6 and call_settings(read.callers).scan_chance == 1e-6
    off = config.parse("[callers]\nscan_chance = 0\n", Path("/etc/om.toml"))
    assert call_settings(off.callers).scan_chance == 0
    for bad in ("-1e-9", "0.5", "nan"):
        with pytest.raises(ConfigError, match=r"\[callers\] scan_chance"):
            config.parse(f"[callers]\nscan_chance = {bad}\n", Path("/etc/om.toml"))


@given(st.floats(0.05, 50), st.floats(0.5, 0.999999), st.integers(1, 12))
def test_negbin_tail_is_one_less_the_counts_below(r: float, p: float, k: int) -> None:
    """The scan's tail against the sum of the chances of the counts below k (written from
    the negative binomial's definition), where that sum is not too close to one."""
    below = sum(math.exp(math.lgamma(r + n) - math.lgamma(r) - math.lgamma(n + 1)
                         + r * math.log(p) + n * math.log1p(-p)) for n in range(k))  # fmt: skip
    tail = negbin_tail(r, p, k)
    if r * (1 - p) / p >= k:
        assert tail == 1.0
    elif 1 - below > 1e-9:
        assert tail == pytest.approx(1 - below, rel=1e-6)
