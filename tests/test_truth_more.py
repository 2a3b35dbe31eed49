"""The truth harness's further worlds (`truth_bench --overlap`, `--reload`).

Planned works overlapping a failure, changed or withdrawn while the node is down
(outagemon/sim/worlds.py `_overlapping`): the oracle's rules for them, and the harness
relaying an engineer's change as the API does. The daemon reloading its unchanged files in
the middle of an outage (`reloads`): nothing a caller hears may change.
"""

from __future__ import annotations

import random

import pytest

from outagemon.core.correlator import Correlator
from outagemon.core.topology import Change, Topology
from outagemon.monitor import Monitor
from outagemon.sim import truth, worlds
from outagemon.sim.oracle import Oracle
from outagemon.sim.worlds import Action, Step
from tests.test_truth import report, small

WORKS = Step(0, Action.WORKS, "agg-a", value=10, until=2000)
OFF = Step(20, Action.FAIL, "agg-a")


def test_the_oracle_hears_withdrawn_works_as_an_outage_at_once() -> None:
    o = Oracle(small([WORKS, OFF, Step(400, Action.CHECK),
                      Step(401, Action.AMEND, "agg-a", value=10, until=401),
                      Step(800, Action.CHECK)]))  # fmt: skip
    before, after = o.verdict(400).answers["100"], o.verdict(800).answers["100"]
    assert before.statuses == {"maintenance"} and before.etas == {2000}
    assert after.statuses == {"outage"} and after.roots == {"agg-a": "outage"}


def test_the_oracle_gives_extended_or_shortened_works_their_new_end() -> None:
    for end in (3000, 1500):
        o = Oracle(small([WORKS, OFF, Step(400, Action.CHECK),
                          Step(401, Action.AMEND, "agg-a", value=10, until=end),
                          Step(800, Action.CHECK)]))  # fmt: skip
        assert o.verdict(400).answers["100"].etas == {2000}
        after = o.verdict(800).answers["100"]
        assert after.statuses == {"maintenance"} and after.etas == {end}, end


def test_the_oracle_knows_no_works_before_they_are_booked() -> None:
    # Works that follow on make one chain, but only once someone books them: a caller at
    # 400 hears the first works' end (the oracle said the chain's, 2,500).
    world = small([Step(0, Action.WORKS, "agg-a", value=10, until=1000),
                   Step(400, Action.CHECK),
                   Step(500, Action.WORKS, "agg-a", value=990, until=2500),
                   Step(800, Action.CHECK)])  # fmt: skip
    o = Oracle(world)
    assert o.verdict(400).answers["100"].etas == {1000}
    assert o.verdict(800).answers["100"].etas == {2500}
    outcome = truth.run(world)
    assert outcome.checks == 2 and outcome.disagreements == [], report(outcome)


@pytest.mark.parametrize(
    ("booked", "starts", "hears"),
    [
        # Seed 40166 (--overlap): works booked on it much later do not make it maintenance
        # again: it failed before they began (the oracle said maintenance).
        (800, 810, "outage"),
        # Booked before the first works end, to follow on: one chain, maintenance to its end.
        (300, 400, "maintenance"),
    ],
)
def test_a_root_that_failed_inside_works_and_stays_down_after_them(
    booked: float, starts: float, hears: str
) -> None:
    world = small([Step(0, Action.WORKS, "agg-a", value=10, until=400),
                   Step(20, Action.FAIL, "agg-a"),
                   Step(booked, Action.WORKS, "agg-a", value=starts, until=1600),
                   Step(1200, Action.CHECK)])  # fmt: skip
    expected = Oracle(world).verdict(1200).answers["100"]
    assert expected.statuses == {hears} and expected.roots == {"agg-a": hears}
    assert expected.etas == ({1600} if hears == "maintenance" else set())
    outcome = truth.run(world)
    assert outcome.checks == 1 and outcome.disagreements == [], report(outcome)


def withdrawn_inside() -> list[Step]:
    return [WORKS, OFF, Step(400, Action.CHECK),
            Step(401, Action.AMEND, "agg-a", value=10, until=401), Step(800, Action.CHECK),
            Step(801, Action.AMEND, "agg-a", value=10, until=801),  # ended already: a 404
            Step(900, Action.REPAIR, "agg-a"), Step(1300, Action.CHECK)]  # fmt: skip


def test_works_withdrawn_while_the_node_is_down_agree_with_the_oracle() -> None:
    outcome = truth.run(small(withdrawn_inside()))
    assert outcome.checks == 3
    assert outcome.disagreements == [], report(outcome)


def test_the_harness_relays_the_change_as_the_api_does(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without end_maintenance, callers keep hearing works the engineer withdrew (while the
    # node is down and after it is back): caught, each of the three callers at both.
    monkeypatch.setattr(Monitor, "end_maintenance", lambda *args, **kwargs: None)
    outcome = truth.run(small(withdrawn_inside()))
    said = sorted((d.at, d.kind.value, d.got) for d in outcome.disagreements)
    inside, after = (
        (800.0, "wrong status", "maintenance (agg-a)"),
        (1300.0, "wrong status", "maintenance"),
    )
    assert said == [inside] * 3 + [after] * 3


def test_overlap_worlds_hold_every_change_and_other_worlds_none() -> None:
    amends: set[str] = set()
    for seed in range(60):
        plain = worlds.generate(random.Random(seed), seed)
        assert all(s.action is not Action.AMEND for s in plain.steps)
        more = worlds.generate(random.Random(seed), seed, overlap=True)
        for s in more.steps:
            if s.action is Action.AMEND:
                amends.add(str(s).split(")")[-1].split()[0])
    assert amends == {"withdrawn", "now"}


# -- a reload mid-outage -----------------------------------------------------------------

RELOADED = [Step(0, Action.FAIL, "agg-a"), Step(6, Action.RELOAD), Step(60, Action.RELOAD),
            Step(400, Action.CHECK), Step(401, Action.REPAIR, "agg-a"),
            Step(403, Action.RELOAD), Step(800, Action.CHECK)]  # fmt: skip


def test_a_reload_while_a_fault_is_detected_and_open_changes_no_answer() -> None:
    outcome = truth.run(small(RELOADED, passive_sw=True))
    assert outcome.checks == 2
    assert outcome.disagreements == [], report(outcome)
    assert [root for _, root, _ in outcome.detections] == ["agg-a"]


def test_a_reload_that_forgets_what_the_correlator_knew_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A reload that dropped the inference of a passive switch (its routers silent behind
    # it): the callers behind it would hear their own routers were down.
    real = Correlator.set_topology

    def forgetful(self: Correlator, topology: Topology,
                  change: Change | None = None) -> list[object]:  # fmt: skip
        out = real(self, topology, change)
        self.inferred = {}
        return out

    monkeypatch.setattr(Correlator, "set_topology", forgetful)
    world = small([Step(0, Action.FAIL, "sw"), Step(60, Action.RELOAD),
                   Step(400, Action.CHECK)], passive_sw=True)  # fmt: skip
    assert truth.run(world).disagreements != []
    unreloaded = small([Step(0, Action.FAIL, "sw"), Step(400, Action.CHECK)], passive_sw=True)
    assert truth.run(unreloaded).disagreements == []


def test_reload_worlds_are_the_same_worlds_with_reloads_added() -> None:
    added = 0
    for seed in range(60):
        plain = worlds.generate(random.Random(seed), seed)
        reloaded = worlds.generate(random.Random(seed), seed, reload=True)
        rest = tuple(s for s in reloaded.steps if s.action is not Action.RELOAD)
        assert rest == plain.steps
        assert all(s.action is not Action.RELOAD for s in plain.steps)
        added += len(reloaded.steps) - len(rest)
    assert added > 60


@pytest.mark.parametrize("seed", [*range(40_000, 40_012), 40_166])
def test_every_caller_hears_the_truth_with_works_overlapping_failures_and_reloads(
    seed: int,
) -> None:
    world = worlds.generate(random.Random(seed), seed, overlap=True, reload=True)
    outcome = truth.run(world)
    assert outcome.disagreements == [], report(outcome)
