"""The truth harness's worlds of faults under faults (`truth_bench --nested`, `--uplinks`).

A node behind a fault dying while the fault is open, the fault repaired first
(outagemon/sim/worlds.py `_nested`), and the uplinks of a node with several failing at
different moments (`_uplinks`): each world kind is made only behind its flag, and the
real correlator and /check agree with the oracle on the small worlds that show each.
"""

from __future__ import annotations

import hashlib
import random

from outagemon.sim import truth, worlds
from outagemon.sim.oracle import Oracle
from outagemon.sim.worlds import Action, Step
from tests.test_truth import report, small


def test_new_world_kinds_leave_every_other_world_as_it_was() -> None:
    # The digest of seeds 0-39, plain and with --overlap --reload, from the generator
    # before `nested` and `uplinks` were added: the seeds already run stay the same worlds.
    h = hashlib.sha256()
    for seed in range(40):
        for more in (False, True):
            h.update(worlds.generate(random.Random(seed), seed, more, more).describe().encode())
    assert h.hexdigest() == "eabf6a411ac8b040f1bd3b23c9eedb70bba6bc8413528bfecfb159b8f2123b5f"


def test_nested_worlds_fail_a_node_below_a_fault_and_repair_the_fault_first() -> None:
    found = 0
    for seed in range(60):
        w = worlds.generate(random.Random(seed), seed, nested=True)
        parents = {d.id: d.parents for d in w.devices}
        for c in w.customers:
            parents[c.router_id] = (c.serving,)
        broken: set[str] = set()
        for s in sorted(w.steps, key=lambda s: s.at):
            if s.action is Action.FAIL:
                up = set(parents.get(s.node, ()))
                while up and not up & broken:
                    up = {a for u in up for a in parents.get(u, ())}
                if up & broken:  # fails while something above it is down
                    found += 1
                broken.add(s.node)
            elif s.action is Action.REPAIR:
                broken.discard(s.node)
    assert found > 20


def test_uplinks_worlds_fail_every_uplink_of_a_node_at_different_moments() -> None:
    found = 0
    for seed in range(60):
        w = worlds.generate(random.Random(seed), seed, uplinks=True)
        several = {d.id: set(d.parents) for d in w.devices if len(d.parents) > 1}
        fails = [(s.at, s.node) for s in w.steps if s.action is Action.FAIL]
        for ups in several.values():
            times = sorted(at for at, n in fails if n in ups)
            if len(times) >= len(ups) and times[0] < times[-1]:
                found += 1
    assert found > 10


def test_a_switch_dying_under_an_open_outage_is_its_own_once_the_outage_is_repaired() -> None:
    world = small([Step(0, Action.FAIL, "agg-a"), Step(300, Action.CHECK),
                   Step(320, Action.FAIL, "sw"), Step(600, Action.CHECK),
                   Step(610, Action.REPAIR, "agg-a"), Step(900, Action.CHECK),
                   Step(901, Action.REPAIR, "sw"), Step(1200, Action.CHECK)])  # fmt: skip
    o = Oracle(world)
    assert o.verdict(600).roots == {"agg-a": "outage"}
    assert o.verdict(900).roots == {"sw": "outage"}
    outcome = truth.run(world)
    assert outcome.checks == 4 and outcome.disagreements == [], report(outcome)


def test_the_second_uplink_failing_later_cuts_the_building_off_behind_both() -> None:
    world = small([Step(0, Action.FAIL, "agg-a"), Step(300, Action.CHECK),
                   Step(320, Action.FAIL, "agg-b"), Step(600, Action.CHECK),
                   Step(610, Action.REPAIR, "agg-a"), Step(900, Action.CHECK)],
                  dual=True)  # fmt: skip
    o = Oracle(world)
    assert o.verdict(300).answers["100"].statuses == {"ok"}
    assert o.verdict(600).answers["100"].roots == {"agg-a": "outage", "agg-b": "outage"}
    assert o.verdict(900).answers["100"].statuses == {"ok"}
    outcome = truth.run(world)
    assert outcome.checks == 3 and outcome.disagreements == [], report(outcome)
