"""What the correlator makes callers hear, as a new user's trial (the eleventh) found it:
a reload's [probe] and [correlation] reach the decisions, and `since` is the start of
the fault (or works) the caller is in now."""

from __future__ import annotations

from pathlib import Path

from outagemon import config
from outagemon.core.directory import Directory
from outagemon.core.incidents import EventKind
from outagemon.core.topology import Node, Topology
from outagemon.metrics import Registry
from outagemon.monitor import Monitor
from outagemon.sim.simnet import SimNet
from tests.test_gc_freeze import source_of

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
