"""What a caller hears follows the correlator's own cut-off rule (issue 11, cases 1 and 2).

Pure, no event loop: a small network replayed in simulated time on the real correlator
and monitor, or planned works given directly; the answer is what /check's code path
(`assess`) says for a caller served by a node.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from outagemon import config
from outagemon.core import topology
from outagemon.core.assess import AnswerMemory, assess, cut_off_by, works_cover
from outagemon.core.directory import Directory, Match
from outagemon.core.incidents import Kind, Maintenance
from outagemon.metrics import Registry
from outagemon.monitor import Monitor
from outagemon.sim.simnet import SimNet

# core -> agg-a, agg-b; "dual" hangs off both, "single" off agg-a alone, "lone" off the
# core; "ent" is an entrance without an address behind "dual".
TOPOLOGY = """
nodes:
  - {id: core, kind: core, ip: 127.0.0.2}
  - {id: agg-a, kind: aggregation, ip: 127.0.0.3, parents: [core]}
  - {id: agg-b, kind: aggregation, ip: 127.0.0.4, parents: [core]}
  - {id: dual, kind: access, ip: 127.0.0.5, parents: [agg-a, agg-b]}
  - {id: single, kind: access, ip: 127.0.0.6, parents: [agg-a]}
  - {id: lone, kind: access, ip: 127.0.0.7, parents: [core]}
  - {id: ent, kind: segment, parents: [dual]}
"""
TOPO = topology.parse_text(textwrap.dedent(TOPOLOGY), Path("t.yaml"))
START = 1_000_000.0
HOUR = 3600.0


def world() -> tuple[SimNet, Monitor]:
    """An hour of clean history on the real correlator, driven as the demo drives it."""
    cfg = config.parse("[correlation]\nresolve_hold = 10\n", Path("o.toml"))
    nets: list[SimNet] = []
    monitor = Monitor(
        cfg, Directory(TOPO, []), Registry(), clock=lambda: nets[0].now if nets else START - HOUR
    )
    net = SimNet(TOPO, monitor.correlator, interval=5.0, timeout=1.0, start=START - HOUR)
    nets.append(net)
    net.on_event = monitor.handle  # so resolved incidents are kept for "restored"
    net.run_for(HOUR)
    monitor.first_round_done = True
    return net, monitor


def hears(monitor: Monitor, node: str, now: float) -> tuple[str, str]:
    """(status, root of the incident named) for a caller served by `node`."""
    said = assess(monitor, monitor.directory, Match(nodes=(node,)), now, HOUR, AnswerMemory())
    return said.status, said.incident.root if said.incident is not None else ""


def test_one_dead_uplink_of_two_is_not_an_outage_for_the_building_behind_them() -> None:
    net, monitor = world()
    net.fail("agg-b")
    net.run_for(60)
    assert monitor.correlator.incident_for("agg-b") is not None
    for served in ("dual", "ent"):
        assert hears(monitor, served, net.now) == ("ok", ""), served
    assert hears(monitor, "single", net.now) == ("ok", "")  # agg-a is alive


def test_the_single_homed_building_is_in_the_outage_and_the_dual_homed_is_not() -> None:
    net, monitor = world()
    net.fail("agg-a")
    net.run_for(60)
    assert hears(monitor, "single", net.now) == ("outage", "agg-a")
    assert hears(monitor, "dual", net.now) == ("ok", "")
    assert hears(monitor, "lone", net.now) == ("ok", "")


def test_after_an_uplinks_incident_resolves_only_its_victims_hear_restored() -> None:
    net, monitor = world()
    net.fail("agg-a")
    net.run_for(60)
    net.repair("agg-a")
    net.run_for(60)
    assert monitor.correlator.incidents == {}
    assert hears(monitor, "single", net.now)[0] == "restored"
    assert hears(monitor, "dual", net.now) == ("ok", ""), "never cut off, nothing restored"


def test_both_uplinks_dead_is_an_outage_with_the_incident_that_cuts_it_off() -> None:
    net, monitor = world()
    net.fail("agg-a", "agg-b")
    net.run_for(60)
    status, root = hears(monitor, "ent", net.now)
    assert status == "outage" and root in ("agg-a", "agg-b")
    covering = monitor.correlator.incident_for("dual")
    assert covering is not None and covering.root == root


def test_cut_off_means_every_path_to_a_root_is_broken() -> None:
    assert not cut_off_by(TOPO, "dual", {"agg-a"})
    assert not cut_off_by(TOPO, "ent", {"agg-b"})
    assert cut_off_by(TOPO, "ent", {"agg-a", "agg-b"})
    assert cut_off_by(TOPO, "ent", {"core"})
    assert cut_off_by(TOPO, "single", {"agg-a"})
    assert cut_off_by(TOPO, "dual", {"dual"})
    assert not cut_off_by(TOPO, "lone", {"agg-a", "agg-b"})


def works(node: str, starts: float, ends: float, id: int = 1) -> Maintenance:
    return Maintenance(id, node, starts, ends, "works")


def test_works_on_one_of_two_uplinks_cover_nothing_behind_them() -> None:
    assert works_cover(TOPO, "dual", [works("agg-a", 0, 100)], 50) is None
    assert works_cover(TOPO, "single", [works("agg-a", 0, 100)], 50) == (0, 100)


def test_works_on_both_uplinks_cover_until_the_first_ends() -> None:
    ws = [works("agg-a", 0, 100), works("agg-b", 10, 200, 2)]
    assert works_cover(TOPO, "ent", ws, 50) == (0, 100)
    assert works_cover(TOPO, "ent", ws, 5) is None  # agg-b's have not started
    assert works_cover(TOPO, "ent", ws, 150) is None  # agg-a's have ended


def test_works_on_a_switch_and_the_aggregation_above_cover_until_the_last_ends() -> None:
    ws = [works("agg-a", 0, 100), works("single", 0, 300, 2)]
    assert works_cover(TOPO, "single", ws, 50) == (0, 300)


def test_planned_works_with_nothing_down_give_their_end_as_eta() -> None:
    net, monitor = world()
    ends = net.now + HOUR
    monitor.add_maintenance(works("single", net.now - 60, ends), "noc")
    said = assess(
        monitor, monitor.directory, Match(nodes=("single",)), net.now, HOUR, AnswerMemory()
    )
    assert (said.status, said.incident, said.eta, said.until) == ("maintenance", None, ends, ends)


def test_a_maintenance_incident_says_the_works_end_or_an_engineers_later_eta() -> None:
    net, monitor = world()
    ends = net.now + HOUR
    monitor.add_maintenance(works("single", net.now - 60, ends), "noc")
    net.fail("single")
    net.run_for(60)
    inc = monitor.correlator.incident_for("single")
    assert inc is not None and inc.kind is Kind.MAINTENANCE

    def eta() -> tuple[str, float | None, float | None]:
        said = assess(
            monitor, monitor.directory, Match(nodes=("single",)), net.now, HOUR, AnswerMemory()
        )
        return said.status, said.eta, said.until

    assert eta() == ("maintenance", ends, ends)
    monitor.set_eta(inc.id, ends - 600, "", "noc")
    assert eta() == ("maintenance", ends, ends), "an earlier estimate does not shorten works"
    monitor.set_eta(inc.id, ends + 1800, "", "noc")
    assert eta() == ("maintenance", ends + 1800, ends + 1800)


def test_an_outage_eta_is_the_engineers_alone() -> None:
    net, monitor = world()
    net.fail("lone")
    net.run_for(60)
    inc = monitor.correlator.incident_for("lone")
    assert inc is not None and inc.kind is Kind.OUTAGE
    said = assess(monitor, monitor.directory, Match(nodes=("lone",)), net.now, HOUR, AnswerMemory())
    assert (said.status, said.eta) == ("outage", None)
    monitor.set_eta(inc.id, net.now + 600, "", "noc")
    said = assess(monitor, monitor.directory, Match(nodes=("lone",)), net.now, HOUR, AnswerMemory())
    assert (said.status, said.eta) == ("outage", net.now + 600)
