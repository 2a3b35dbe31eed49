"""The demo's five-minute script, replayed in simulated time on the real correlator and
the real /check code path: one incident per scripted fault, rooted where the fault is.

What a new user watching `outagemon demo` should see, read from the script itself
(`outagemon/demo.py`), not from what the correlator happens to do: every device or cable
the script breaks is one incident rooted at it (a maintenance incident when planned works
cover it), a subscriber's router switched off is `cpe_down` for that subscriber and no
incident, nothing else ever opens, and a fault repaired long enough before the end of the
script (up_after probes + resolve_hold, with a probe interval to spare) has resolved.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from outagemon import config
from outagemon.core import directory
from outagemon.core.assess import AnswerMemory, assess
from outagemon.core.directory import Directory
from outagemon.core.incidents import Event
from outagemon.metrics import Registry
from outagemon.monitor import Monitor
from outagemon.sim import citygen, demo
from outagemon.sim.simnet import SimNet

START = 1_000_000.0  # the simulated clock when the script starts
TICK = 0.1  # as the daemon decides
HISTORY = 1800.0  # the demo gives its network half an hour of clean history first


class RecordingMonitor(Monitor):
    """The daemon's monitor, keeping every event it handles (from either tick path)."""

    events: list[Event]

    def handle(self, e: Event) -> None:
        self.events.append(e)
        super().handle(e)


@dataclass
class Replay:
    city: citygen.City
    directory: Directory
    monitor: Monitor
    steps: list[demo.Step]
    events: list[Event] = field(default_factory=list)
    # Subscriber's account -> statuses they heard, once a second, with the time.
    heard: dict[str, list[tuple[float, str, str]]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def replay() -> Iterator[Replay]:
    """One run of the whole script, as the daemon drives it (see Daemon._simulate)."""
    state, cfg_path, city = demo.prepare(0, "en", demo.Tokens.new())
    try:
        cfg = config.load(cfg_path)
        d = directory.load(cfg.topology.file, cfg.topology.subscribers).directory
    finally:
        shutil.rmtree(state, ignore_errors=True)
    clock = [START - HISTORY]
    monitor = RecordingMonitor(cfg, d, Registry(), clock=lambda: clock[0])
    monitor.events = []
    net = SimNet(d.topology, monitor.correlator, interval=cfg.probe.interval,
                 timeout=cfg.probe.timeout, start=START - HISTORY)  # fmt: skip
    run = Replay(city, d, monitor, demo.script(city), monitor.events)
    net.on_event = monitor.handle
    net.run_until(START)
    monitor.first_round_done = True
    scenario = demo.Scenario(city)
    callers = _callers(run)
    memory = AnswerMemory()  # as the HTTP side keeps it
    step = 0
    while True:
        now = START + step * TICK
        if now > START + demo.LOOP:
            break
        clock[0] = now
        scenario.apply(net, monitor, now)
        net.run_until(now)
        for node in monitor.tick():
            net.probe(node)
        if step % 10 == 0:
            for account in callers:
                said = assess(monitor, d, d.account(account), now, 600, memory)
                root = said.incident.root if said.incident is not None else ""
                run.heard.setdefault(account, []).append((now - START, said.status, root))
        step += 1
    yield run


def _callers(run: Replay) -> list[str]:
    """One subscriber behind each node the script breaks, and each router it switches off."""
    out = []
    for node in _faults(run.steps):
        if node.startswith("cpe:"):
            out.append(node.removeprefix("cpe:"))
        else:
            below = {node, *run.directory.topology.descendants(node)}
            out.append(next(s.account for s in run.directory.subscribers if s.serving in below))
    return out


def _faults(steps: list[demo.Step]) -> list[str]:
    return list(dict.fromkeys(s.node for s in steps if s.action == "fail"))


def _network_faults(run: Replay) -> list[str]:
    return [n for n in _faults(run.steps) if run.directory.topology.nodes[n].kind != "cpe"]


def _opened(run: Replay) -> dict[int, str]:
    """Incident id -> its root, for every incident that ever opened, as last rooted."""
    roots: dict[int, str] = {}
    for e in run.events:
        if e.kind in ("opened", "root_moved") and e.incident is not None and e.root is not None:
            roots[e.incident] = e.root
    return roots


def test_every_scripted_fault_is_exactly_one_incident_rooted_at_it(replay: Replay) -> None:
    roots = _opened(replay)
    by_root: dict[str, list[int]] = {}
    for iid, root in roots.items():
        by_root.setdefault(root, []).append(iid)
    faults = _network_faults(replay)
    extra = {r: ids for r, ids in by_root.items() if r not in faults}
    assert not extra, f"incidents for no scripted fault: {extra}"
    assert {r: len(ids) for r, ids in by_root.items()} == {f: 1 for f in faults}
    # A fault split off or merged away is also more than one incident for it.
    assert not [e for e in replay.events if e.kind in ("split", "merged")]


def test_each_incident_has_the_kind_and_evidence_the_script_implies(replay: Replay) -> None:
    topo = replay.directory.topology
    works = {s.node for s in replay.steps if s.action == "works"}
    opened = {e.root: e for e in replay.events if e.kind == "opened"}
    for fault in _network_faults(replay):
        e = opened.get(fault)
        assert e is not None, f"{fault}: never opened"
        assert e.detail["kind"] == ("maintenance" if fault in works else "outage"), e
        # Inferred means found from its children: only a node without an address is.
        assert e.detail["inferred"] == (not topo.nodes[fault].probed), e


def test_a_router_switched_off_is_heard_as_cpe_down_and_is_no_incident(replay: Replay) -> None:
    (router,) = [n for n in _faults(replay.steps) if n.startswith("cpe:")]
    off = next(s.at for s in replay.steps if s.node == router and s.action == "fail")
    heard = replay.heard[router.removeprefix("cpe:")]
    # Within three probe intervals (down_after) and one to spare of being switched off.
    after = [status for t, status, _ in heard if off + 20 <= t < off + 60]
    assert after and set(after) == {"cpe_down"}, heard
    assert router not in _opened(replay).values()


def test_callers_behind_each_fault_hear_its_incident(replay: Replay) -> None:
    works = {s.node for s in replay.steps if s.action == "works"}
    for fault, account in zip(_faults(replay.steps), _callers(replay), strict=True):
        if fault.startswith("cpe:"):
            continue
        failed = next(s.at for s in replay.steps if s.node == fault and s.action == "fail")
        status = "maintenance" if fault in works else "outage"
        # 20 s after the fault, for the next 10 s (inside sw-3-7's first 15 s down).
        said = {(s, root) for t, s, root in replay.heard[account] if failed + 10 <= t < failed + 15}
        assert said == {(status, fault)}, (fault, account, said)


def test_faults_repaired_long_enough_before_the_end_have_resolved(replay: Replay) -> None:
    cfg = replay.monitor.config
    settle = (cfg.probe.up_after + 1) * cfg.probe.interval + cfg.correlation.resolve_hold
    flapping = {n for n in _faults(replay.steps)
                if sum(s.node == n and s.action == "fail" for s in replay.steps) > 1}  # fmt: skip
    repaired: dict[str, float] = {}
    for s in replay.steps:
        if s.action == "repair":
            repaired[s.node] = s.at
        elif s.action == "repair_all":
            for n in _network_faults(replay):
                repaired.setdefault(n, s.at)
    resolved = {e.root for e in replay.events if e.kind == "resolved"}
    due = [n for n in _network_faults(replay)
           if n not in flapping and repaired[n] + settle + 5 <= demo.LOOP]  # fmt: skip
    assert due, "the script repairs something in time"
    assert set(due) <= resolved, (due, resolved)
