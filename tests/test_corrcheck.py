"""What the correlator makes callers hear, as a new user's trial (the eleventh) found it:
a reload's [probe] and [correlation] reach the decisions, and `since` is the start of
the fault (or works) the caller is in now."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from outagemon import config
from outagemon.core.correlator import Correlator
from outagemon.core.directory import Directory
from outagemon.core.health import Settings
from outagemon.core.incidents import EventKind, Maintenance
from outagemon.core.topology import Node, Topology
from outagemon.db import restore as restore_db
from outagemon.http.runtime import iso
from outagemon.metrics import Registry
from outagemon.monitor import Monitor
from outagemon.sim.simnet import SimNet
from outagemon.testing.lab import Lab
from tests.test_api_callers import agg_s_down, timeline, wall
from tests.test_gc_freeze import source_of
from tests.test_lab_e2e import CONFIG as LAB_CONFIG
from tests.test_lab_e2e import WRITE, small_daemon
from tests.world import world

# The trial's south: agg-south feeds sw-sadovaya-3 alone and sw-mira-10 with agg-north.
SOUTH = [
    Node("core-1", "core", "127.0.9.1"),
    Node("agg-north", "aggregation", "127.0.9.10", ("core-1",)),
    Node("agg-south", "aggregation", "127.0.9.11", ("core-1",)),
    Node("sw-lenina-5", "access", "127.0.9.20", ("agg-north",)),
    Node("sw-mira-10", "access", "127.0.9.21", ("agg-north", "agg-south")),
    Node("sw-sadovaya-3", "access", "127.0.9.22", ("agg-south",)),
]
RELOADED = "[probe]\ninterval = 2\ntimeout = 0.5\n[correlation]\nresolve_hold = 15\n"


def test_a_reload_of_probe_and_correlation_reaches_the_decisions() -> None:
    # Before: the correlator kept the start's settings for good. After a reload to
    # resolve_hold 15 an incident whose root answered again was held open 60 s (the
    # default); the trial's root then failed again after 37 s of service, inside the
    # incident its callers had heard was over.
    topo = Topology(SOUTH)
    d = Directory(topo, [])
    monitor = Monitor(config.parse("", Path("om.toml")), d, Registry())
    monitor.config = config.parse(RELOADED, Path("om.toml"))  # as the daemon's reload does
    monitor.set_directory(d)
    c = monitor.correlator
    assert (c.settings.interval, c.settings.timeout, c.settings.resolve_hold) == (2, 0.5, 15)
    sim = SimNet(topo, c, interval=2.0, timeout=0.5)
    sim.run_for(3600)
    sim.fail("sw-sadovaya-3")
    sim.run_for(60)
    sim.repair("sw-sadovaya-3")
    events = sim.run_for(30)
    (back,) = [e for e in events if e.kind is EventKind.RECOVERING]
    (over,) = [e for e in events if e.kind is EventKind.RESOLVED]
    assert 15 <= over.at - back.at < 16


def test_a_reload_gives_the_probes_sent_after_it_the_new_timeout() -> None:
    source = source_of(Topology(SOUTH))
    source.engine.timeout = 1.0  # the start's
    source.retarget(Topology(SOUTH).by_ip, config.ProbeConfig(interval=2.0, timeout=0.5))
    assert source.engine.timeout == 0.5


class _Mute(SimNet):
    """Nodes that drop every probe to themselves and forward all the rest."""

    mute: frozenset[str] = frozenset()

    def answers(self, node: str) -> bool:
        return super().answers(node) and node not in self.mute


def _south(mute: bool) -> tuple[Correlator, _Mute, float]:
    """sw-sadovaya-3 down a minute, then up (its incident recovering, resolve_hold 60 s),
    then down again 37 s later; with `mute`, agg-south drops its own probes from just
    before the repair (sw-sadovaya-3 is the only child that shows it forwards). Returns
    the correlator, the network and when the second fault began."""
    topo = Topology(SOUTH)
    c = Correlator(topo, Settings(interval=2.0, timeout=0.5, resolve_hold=60))
    sim = _Mute(topo, c, interval=2.0, timeout=0.5)
    sim.run_for(3600)
    sim.fail("sw-sadovaya-3")
    sim.run_for(59)
    if mute:
        sim.mute = frozenset({"agg-south"})
    sim.run_for(1)
    sim.repair("sw-sadovaya-3")
    sim.run_for(37)
    again = sim.now
    sim.fail("sw-sadovaya-3")
    return c, sim, again


@pytest.mark.parametrize("mute", [False, True])
def test_a_recovering_incident_down_again_says_when_this_fault_began(mute: bool) -> None:
    # Before: callers heard the first fault's start ("began at 03:32") after 37 s of
    # service they had been told of ("restored"), whether the root itself failed again
    # or, its parent dropping its own probes, the root moved to that parent (and then
    # no `refailed` was written: the stored incident stayed recovering, and the history's
    # impact closed, while callers heard an outage).
    c, sim, again = _south(mute)
    events = sim.run_for(30)
    (inc,) = c.incidents.values()
    assert inc.recovering_since is None
    assert inc.root == ("agg-south" if mute else "sw-sadovaya-3")
    assert again <= inc.since <= again + 10 and inc.opened_at < again - 37
    assert EventKind.REFAILED in [e.kind for e in events if e.incident == inc.id]


async def test_a_root_down_again_while_recovering_is_heard_and_stored_from_this_fault(
    fresh_db: str,
) -> None:
    # Before: callers, the impact history's second break and a restart all took the first
    # fault's start (the stored "refailed" event said nothing of when this one began).
    async with agg_s_down(fresh_db) as (w, inc):
        w.net.repair("agg-s")
        w.run(30)  # recovering: resolve_hold is 60 s
        assert inc.recovering_since is not None
        second_fault = w.monitor.clock()
        w.net.fail("agg-s")
        w.run(60)
        assert inc.recovering_since is None and inc.id in w.monitor.correlator.incidents
        heard = await w.check(account="1006")
        assert (heard["status"], heard["incident_id"]) == ("outage", str(inc.id)), heard
        assert second_fault - 1 <= wall(heard["since"]) <= second_fault + 30, heard
        (refailed,) = [e for e in await timeline(w, inc.id) if e["kind"] == "refailed"]
        assert abs(wall(refailed["detail"]["since"]) - wall(heard["since"])) < 1, refailed
        await w.flushed()
        rows = await w.pool.fetch(
            "select started_at, ended_at from impact where incident_id = $1"
            " and node_id = 'agg-s' order by started_at",
            inc.id,
        )
        assert len(rows) == 2 and rows[1]["ended_at"] is None, rows
        assert abs(rows[1]["started_at"].timestamp() - wall(heard["since"])) < 1, rows
        found = await restore_db.load(w.pool, w.monitor.directory.topology, 0.0)
        restarted = Monitor(w.monitor.config, w.monitor.directory, w.runtime.metrics)
        restarted.resume(found)
        taken = restarted.correlator.incidents[inc.id]
        assert abs(taken.since - inc.since) < 1 and taken.opened_at != taken.since


async def test_a_maintenance_incident_is_heard_since_the_works_began(fresh_db: str) -> None:
    # Before: callers under works heard `since` the works' start, then, once the switch
    # under them failed and its maintenance incident opened, the incident's opening
    # (the trial: 03:32:31, then 03:32:36), for the same works.
    async with world(fresh_db) as w:
        start = w.net.now
        w.monitor.add_maintenance(Maintenance(1, "sw-sad-5", start, start + 3600), "noc")
        w.run(5)
        before = await w.check(account="1007")
        assert (before["status"], before["incident_id"]) == ("maintenance", ""), before
        w.net.fail("sw-sad-5")
        w.run(60)
        during = await w.check(account="1007")
        assert during["status"] == "maintenance" and during["incident_id"], during
        assert during["since"] == before["since"] == iso(start), (before, during)


SOUTH_YAML = "nodes:\n" + "".join(
    f"  - {{id: {n.id}, kind: {n.kind}, ip: {n.ip}"
    + (f", parents: [{', '.join(n.parents)}]" if n.parents else "")
    + (', serves: ["Садовая улица 3"]' if n.id == "sw-sadovaya-3" else "")
    + "}\n"
    for n in SOUTH
)
SLOW = LAB_CONFIG.replace("interval = 1.0", "interval = 10.0").replace(
    "timeout = 0.5", "timeout = 1.0"
).replace("resolve_hold = 5", "resolve_hold = 60")  # fmt: skip


def test_a_reloaded_resolve_hold_ends_the_incident_in_the_lab(lab: Lab) -> None:
    # The trial's steps with real ICMP: the daemon started with the defaults' probing and
    # hold, reloaded (SIGHUP) to interval 1 s, timeout 0.5 s and resolve_hold 5 s. Before,
    # sw-sadovaya-3's incident stayed open a minute after it answered again.
    daemon = small_daemon(lab, SOUTH_YAML,
                          'account,phones,address,flat,ip\n500001,,"Садовая улица 3",3,\n',
                          SLOW)  # fmt: skip
    state, port = daemon.state, daemon.port
    try:
        daemon.start()
        daemon.warm_up(20, interval=10.0)
        (state / "outagemon.toml").write_text(
            LAB_CONFIG.format(state=state, port=port, write=WRITE)
        )
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait("the reload", lambda: "config.reload_done" in daemon.log())
        daemon.warm_up(15)
        lab.down("127.0.9.22")
        (inc,) = daemon.wait("sw-sadovaya-3's incident", daemon.incidents)
        assert inc["root_node"] == "sw-sadovaya-3", inc
        lab.up("127.0.9.22")
        answered = time.monotonic()
        daemon.wait("the incident resolves", lambda: not daemon.incidents(), within=50)
        assert time.monotonic() - answered < 30, daemon.log()
        assert daemon.stop() == 0
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()
