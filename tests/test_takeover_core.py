"""A standby's correlator taking up the leader's incidents (`Correlator.restore` over the
node states it probed itself): what it saw and what it was given stay one view."""

from __future__ import annotations

import pytest

from outagemon.core.correlator import Correlator
from outagemon.core.health import State
from outagemon.core.incidents import Event, Incident, Kind
from outagemon.sim.simnet import SimNet
from tests.test_correlate import SETTINGS, WARM, city


class Standby:
    """What SimNet drives: the correlator probes and keeps sight, and decides nothing
    (`Monitor.tick` of a node that does not lead)."""

    def __init__(self, c: Correlator) -> None:
        self.c = c

    def observe(self, node: str, ok: bool, at: float) -> None:
        self.c.observe(node, ok, at)

    def tick(self, now: float) -> list[Event]:
        self.c.keep_sight(now)
        return []

    def take_requests(self) -> list[str]:
        return self.c.take_requests()


def agg0_down_on_a_standby() -> tuple[Correlator, SimNet]:
    """A standby's correlator (and its simulated network) that saw agg0 down a minute."""
    topo = city(aggs=1, access=4)
    c = Correlator(topo, SETTINGS)
    s = SimNet(topo, Standby(c), interval=5.0, timeout=1.0, seed=1)  # type: ignore[arg-type]
    s.run_for(WARM)
    s.fail("agg0")
    s.run_for(60)
    return c, s


@pytest.mark.parametrize("back_by", ["a child's answer", "its own answers"])
def test_a_standby_taking_up_an_incident_opens_none_for_its_cut_off_children(back_by: str) -> None:
    # The cluster's paused leader (tests/test_cluster_e2e.py, 3 runs in 9): b, standing
    # by, saw agg0 and its switches down by its own probes and took up a's incident at
    # agg0. restore() made the switches RECHECK but left them in the failed set; agg0
    # repaired, the first switch's answer brought agg0 up (`Health._forwarded`), and the
    # rest, skipped by `_recheck_below` (not DOWN), were failed roots: three incidents
    # opened and recovered within a second, their callers told of a wrong root. On main
    # too, when the root's own two answers came before any switch's (rarer: a switch's
    # probe is asked for at once).
    c, s = agg0_down_on_a_standby()
    switches = [f"sw0-{i}" for i in range(4)]
    assert all(c.states[x].state is State.DOWN for x in ["agg0", *switches])
    since = c.states["agg0"].down_at
    c.restore([Incident(1, "agg0", Kind.OUTAGE, False, since, ["agg0", *switches])], 2)
    now = s.now
    assert c.tick(now) == []
    # Repaired: a switch's due probe answers first (or the root's own two), the others'
    # are still on their way.
    if back_by == "its own answers":
        c.observe("agg0", True, now + 0.1)
        c.observe("agg0", True, now + 0.2)
    else:
        c.observe("sw0-0", True, now + 0.2)
    assert c.states["agg0"].state is State.UP
    events = c.tick(now + 0.3)
    assert [e.kind for e in events if e.kind == "opened"] == [], events
    (inc,) = c.incidents.values()
    assert inc.id == 1 and inc.root == "agg0"
    # The others answer: the one incident resolves, none opens.
    for x in switches:
        c.observe(x, True, now + 0.4)
    events = []
    for i in range(1, 100):
        events += c.tick(now + 0.4 + i)
    assert [(e.kind, e.incident) for e in events if e.kind in ("opened", "resolved")] == [
        ("resolved", 1)
    ], events


@pytest.mark.parametrize("seen", ["down", "up"])
def test_a_standby_taking_up_a_recovering_incident_keeps_what_it_saw_of_its_root(
    seen: str,
) -> None:
    # The leader's incident at agg0 (opened 5 minutes before) was recovering (its root
    # answered the leader). The standby's own probes saw agg0 down: its incident is
    # active again at once (refailed), since the standby saw it fail (not since the
    # incident opened: the time it recovered counted twice), not "restored" for a streak
    # more; saw it up: it recovers still (looked at afresh).
    c, s = agg0_down_on_a_standby()
    since = c.states["agg0"].down_at
    if seen == "up":
        s.repair("agg0")
        s.run_for(30)
    switches = [f"sw0-{i}" for i in range(4)]
    inc = Incident(1, "agg0", Kind.OUTAGE, False, since - 300, ["agg0", *switches],
                   recovering_since=s.now - 10)  # fmt: skip
    c.restore([inc], 2)
    kinds = [e.kind for e in c.tick(s.now)]
    if seen == "down":
        assert kinds == ["refailed"] and inc.recovering_since is None, (kinds, inc)
        assert inc.reopened_at == since, (inc, since)
    else:
        assert kinds == [] and inc.recovering_since == s.now - 10, (kinds, inc)
        assert c.states["agg0"].state is State.RECHECK
