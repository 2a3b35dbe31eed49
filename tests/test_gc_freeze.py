"""A node's state and a target's history are made by their first result, after the
directory's objects were frozen: the ICMP source freezes them at the end of the first
rounds after the start and after a reload, so full collections no longer walk them."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator, Sequence
from types import SimpleNamespace

import pytest

from outagemon.config import ProbeConfig
from outagemon.core.correlator import Correlator
from outagemon.core.health import Settings
from outagemon.core.topology import Node, Topology
from outagemon.probing import icmp
from outagemon.probing.icmp import IcmpSource
from outagemon.probing.scheduler import Scheduler

SETTINGS = Settings(down_after=3, up_after=2, window=30)


class _Engine:
    on_result: object = None
    stats = SimpleNamespace(sent=0)

    def check_rcvbuf(self, targets: dict[int, int]) -> None:
        """No socket here: nothing to warn about."""


def town(routers: int, first: int = 0) -> Topology:
    nodes = [Node("uplink", "core", "127.0.0.1"), Node("sw", "access", "127.0.0.2", ("uplink",))]
    nodes += [Node(f"cpe{i}", "cpe", f"127.1.{i // 250}.{i % 250 + 1}", ("sw",))
              for i in range(first, first + routers)]  # fmt: skip
    return Topology(nodes)


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """What a test froze goes back to the collector's generations after it."""
    gc.collect()
    gc.freeze()  # the process so far, as the daemon's directory after its load
    try:
        yield
    finally:
        gc.unfreeze()


def walked(objects: Sequence[object]) -> int:
    """How many of `objects` a full collection walks (those in the generations)."""
    ids = {id(o) for o in objects}
    return sum(id(o) in ids for o in gc.get_objects())


def source_of(topo: Topology) -> IcmpSource:
    source = IcmpSource(ProbeConfig())
    source.engine = _Engine()  # type: ignore[assignment]
    source.scheduler = Scheduler(_Engine(), lambda o: None, 10.0, 1000.0,  # type: ignore[arg-type]
                                 clock=lambda: 1000.0)  # fmt: skip
    source.scheduler.set_targets(topo.by_ip)
    source.node_of = topo.by_ip
    return source


def test_the_first_rounds_states_leave_the_collectors_walks_once_each_round(
    unfrozen: None,
) -> None:
    topo = town(2_000)
    source = source_of(topo)
    c = Correlator(topo, SETTINGS, anchors=["uplink"])
    for node in topo.by_ip.values():  # the first round: every node's first result
        c.observe(node, True, 1_000_000.0)
    states = list(c.states.values())
    assert walked(states) == len(states) == 2_002
    assert not source.freeze_made()  # the first round is not over
    assert walked(states) == 2_002
    source.scheduler.rounds = 1
    assert source.freeze_made()
    assert walked(states) == 0 and list(c.states.values()) == states  # kept, not walked
    assert not source.freeze_made()  # once a round
    source.scheduler.rounds = 2
    assert source.freeze_made()
    source.scheduler.rounds = 5
    assert not source.freeze_made()  # FREEZE_ROUNDS rounds only, not for ever


def test_a_reloads_new_nodes_states_are_frozen_after_its_first_round(unfrozen: None) -> None:
    old, new = town(1_000), town(1_000, first=500)
    source = source_of(old)
    source.scheduler.rounds = 7
    assert source.freeze_made() and source.freeze_made() is False
    c = Correlator(old, SETTINGS, anchors=["uplink"])
    source.retarget(new.by_ip, ProbeConfig())
    c.set_topology(new)
    for node in new.by_ip.values():  # 500 new routers' first results after the reload
        c.observe(node, True, 1_000_000.0)
    made = [c.states[f"cpe{i}"] for i in range(1_000, 1_500)]
    assert not source.freeze_made() and walked(made) == 500
    source.scheduler.rounds = 8
    assert source.freeze_made() and walked(made) == 0


async def test_the_decision_loop_freezes_at_the_end_of_a_round(
    unfrozen: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    froze: list[int] = []
    topo = town(10)
    source = source_of(topo)
    monkeypatch.setattr(gc, "freeze", lambda: froze.append(source.scheduler.rounds))
    monkeypatch.setattr(icmp, "TICK", 0.001)
    feed = SimpleNamespace(first_round_done=False, tick=lambda: [], address=lambda n: None,
                           looking=False)  # fmt: skip
    shown = SimpleNamespace(not_ready="not yet", probe_rate=0.0)
    task = asyncio.create_task(source._correlate(feed, shown))
    try:
        await asyncio.sleep(0.02)
        assert froze == []
        source.scheduler.rounds = 1
        await asyncio.sleep(0.02)
        assert froze == [1] and feed.first_round_done
    finally:
        task.cancel()


def test_a_mass_outage_leaves_nothing_new_for_a_full_collection_to_walk(unfrozen: None) -> None:
    """Each node a failure takes down keeps the times of its state changes (for flapping):
    they must not be objects the cyclic collector tracks, or the 100,000 of a core failure
    are walked by a full collection inside one step of the results."""
    topo = town(2000)
    c = Correlator(topo, SETTINGS, anchors=["uplink"])
    now = 1_000.0
    for _ in range(5):
        now += 5
        for n in topo.nodes:
            c.observe(n, True, now)
    gc.collect()
    gc.freeze()
    for _ in range(16):  # every router lost 16 times (a new target needs 15): all down
        now += 1
        for n in topo.nodes:
            c.observe(n, n == "uplink", now)
        c.observe("sw", True, now)
    changes = [ns.changes for n, ns in c.states.items() if n.startswith("cpe")]
    assert all(times and len(times) == 1 for times in changes)  # each went down once
    gc.collect(0)  # a young collection: what it leaves untracked is never walked again
    assert walked(changes) == 0
