"""A reload's gone nodes' states leave a slice a step (issue 19): the swap takes out the
first GONE_SLICE, the daemon the rest a slice a step after it (a tick, or whatever else
reads every state, any left when it comes); meanwhile each counts as gone already, and
the decisions are those of taking every one out at the swap."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from outagemon import daemon
from outagemon.core import correlator as correlator_mod
from outagemon.core import topology as topology_mod
from outagemon.core.correlator import Correlator
from outagemon.core.incidents import Event
from outagemon.core.topology import Topology
from tests import test_reload_change
from tests.test_reload_change import SETTINGS, switch_fails, warm


def building(routers: int) -> Topology:
    return test_reload_change.building(entrance=False, routers=routers)


def gone_left(c: Correlator) -> list[str]:
    return sorted(n for n in c.states if n not in c.topology and n not in c.anchors)


def test_the_swap_takes_out_a_slice_and_take_out_the_rest_a_slice_a_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(correlator_mod, "GONE_SLICE", 3)
    old, new = building(10), building(2)  # eight routers gone
    c = Correlator(old, SETTINGS, anchors=["uplink"])
    now = warm(c, 1_000_000.0)
    states = dict(c.states)
    (freed,) = c.set_topology(new, topology_mod.change(old, new))
    assert isinstance(freed, list)
    assert len(freed) == 3 and len(gone_left(c)) == 5
    # A result for a gone router whose state is still there changes nothing.
    (waiting, *_) = gone_left(c)
    kept = c.states[waiting]
    before = dataclasses.astuple(kept)
    c.record_transitions = True
    for _ in range(5):
        now += 1
        c.observe(waiting, False, now)
    assert dataclasses.astuple(kept) == before and c.transitions == []
    assert c.take_out(3) and len(freed) == 6
    assert not c.take_out(3) and len(freed) == 8 and gone_left(c) == []
    assert not c.take_out(3) and len(freed) == 8  # nothing more
    # Every gone router's own state, into the list the swap handed back, the rest kept.
    assert sorted(map(id, freed)) == sorted(id(states[f"cpe{i}"]) for i in range(2, 10))
    assert c.states == {n: ns for n, ns in states.items() if n in new}


def test_a_tick_takes_out_what_is_left(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(correlator_mod, "GONE_SLICE", 2)
    old, new = building(10), building(4)
    c = Correlator(old, SETTINGS, anchors=["uplink"])
    now = warm(c, 1_000_000.0)
    (freed,) = c.set_topology(new, topology_mod.change(old, new))
    assert len(gone_left(c)) == 4
    c.tick(now + 1)
    assert gone_left(c) == [] and len(freed) == 6  # type: ignore[arg-type]


Run = tuple[list[Event], dict[str, int], list[str], list[object]]


def run(slice_: int, monkeypatch: pytest.MonkeyPatch) -> Run:
    """Four routers fail and go down, a reload takes six away (three of the down ones),
    their results still coming in the steps after it (probes sent before), taken out
    `slice_` a step; then the switch fails."""
    monkeypatch.setattr(correlator_mod, "GONE_SLICE", slice_)
    old, new = building(10), building(4)
    c = Correlator(old, SETTINGS, anchors=["uplink"])
    c.record_transitions = True
    now = warm(c, 1_000_000.0)
    failing = ("cpe3", "cpe7", "cpe8", "cpe9")
    for _ in range(12):
        now += 5
        for node in old.by_ip.values():
            c.observe(node, node not in failing, now)
        c.tick(now)
        c.take_requests()
    c.set_topology(new, topology_mod.change(old, new))
    more = True
    for i, node in enumerate(["cpe5", "cpe8", "cpe9", "cpe6", "cpe7", "cpe8"]):
        c.observe(node, i % 2 == 0, now + 0.1 * (i + 1))  # late results of gone routers
        if more:
            more = c.take_out(slice_)
    events, requests = switch_fails(c, now)
    return events, dict(c.node_incident), requests, [*c.transitions, sorted(c.states)]


def test_the_decisions_are_those_of_taking_every_gone_state_out_at_the_swap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events, owners, requests, rest = run(1, monkeypatch)
    assert [(e.kind, e.root) for e in events if e.kind == "opened"] == [("opened", "sw")]
    assert not {"cpe5", "cpe6", "cpe7", "cpe8", "cpe9"} & {*owners, *requests}
    assert (events, owners, requests, rest) == run(1_000, monkeypatch)


async def test_the_daemon_takes_out_a_slice_a_step() -> None:
    calls: list[int] = []

    def take_out(count: int) -> bool:
        calls.append(count)
        return len(calls) < 3  # three slices

    task = asyncio.create_task(daemon._taking_out(take_out))
    await asyncio.sleep(0)
    assert calls == [correlator_mod.GONE_SLICE]  # one slice in this step, the next later
    await asyncio.sleep(0)
    assert len(calls) == 2
    await asyncio.wait_for(task, 1)
    assert len(calls) == 3
