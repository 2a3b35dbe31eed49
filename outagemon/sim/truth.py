"""Runs a world on the real correlator and /check, and compares them with the oracle.

The network is simulated (`outagemon/simnet.py`, simulated time); the monitor, the
correlator and the function the HTTP handler calls for `/check` are the real ones. At
every check point of the script that the oracle calls settled, each subscriber's answer
and the open incidents are compared with the oracle's; every incident opened or moved
during the run is checked against the true network at that time. A disagreement shrinks
to the smallest world (fewest steps, devices, subscribers) that still shows it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import textwrap
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from outagemon import config
from outagemon.core import addresses
from outagemon.core import assess as check
from outagemon.core.calls import subscribers_below
from outagemon.core.correlator import Correlator
from outagemon.core.directory import Directory, Subscriber, with_cpes
from outagemon.core.incidents import Event, Incident, Maintenance
from outagemon.core.topology import Node, Topology, change
from outagemon.db.restore import Restored
from outagemon.metrics import Registry
from outagemon.monitor import Monitor
from outagemon.sim.oracle import EXPLAIN, Oracle, Verdict
from outagemon.sim.simnet import SimNet
from outagemon.sim.worlds import Action, Device, World

START = 1_000_000.0
WARM = 600.0  # every target has a history of answers before the script starts
TICK = 0.25  # the correlator decides four times a second
ANCHOR_IP = "127.255.255.254"


class _Net(SimNet):
    """The simulated network with random loss drawn from (seed, target, time) rather than
    from one stream: the same world loses the same probes whatever order they are sent
    in, so a run replays exactly in any process (sets of strings iterate in an order that
    changes between processes)."""

    def __init__(self, topology: Topology, correlator: Correlator, seed: int,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(topology, correlator, seed=seed, **kwargs)
        self.seed = seed

    def answers(self, node: str) -> bool:
        if self.uplink_down or node in self._cut or node in self.broken:
            return False
        loss = self.loss.get(node, self.default_loss)
        if not loss:
            return True
        draw = zlib.crc32(f"{self.seed}|{node}|{self.now:.4f}".encode()) / 2**32
        return draw >= loss


class Kind(enum.Enum):
    WRONG_STATUS = "wrong status"  # a subscriber hears the wrong status once settled
    WRONG_ROOT = "wrong root"  # the right status, with an incident for another root
    WRONG_ETA = "wrong eta"  # planned works without their end in `eta`
    FALSE_INCIDENT = "false incident"  # an incident for a fault that does not exist
    MISSED_FAULT = "missed fault"  # a fault with no incident once settled
    SPLIT_FAULT = "fault split"  # one fault, several incidents
    STALE_INCIDENT = "stale incident"  # an incident still open long after its fault ended


@dataclass(frozen=True, slots=True)
class Disagreement:
    kind: Kind
    at: float  # script seconds
    subject: str  # a subscriber's account, or an incident's root
    expected: str
    got: str

    def __str__(self) -> str:
        return (f"{self.kind.value} at {self.at:.1f} s: {self.subject}: "
                f"expected {self.expected}, got {self.got}")  # fmt: skip


@dataclass(slots=True)
class Outcome:
    world: World
    disagreements: list[Disagreement] = field(default_factory=list)
    detections: list[tuple[float, str, float]] = field(default_factory=list)  # delay, root, at
    checks: int = 0  # settled check points compared

    def counts(self) -> dict[Kind, int]:
        out: dict[Kind, int] = {}
        for d in self.disagreements:
            out[d.kind] = out.get(d.kind, 0) + 1
        return out


# -- building the world ----------------------------------------------------------------


def _ip(n: int) -> str:
    n += 256
    return f"127.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def build(world: World) -> tuple[Directory, config.Config]:
    nodes = [Node(d.id, d.kind, _ip(i) if d.probed else None, d.parents)
             for i, d in enumerate(world.devices)]  # fmt: skip
    topo = Topology(nodes)
    subs: list[Subscriber] = []
    for i, c in enumerate(world.customers):
        address = addresses.parse(f"ул. Ленина, д. {1 + sorted(topo.nodes).index(c.serving)}")
        assert address is not None
        ip = _ip(100_000 + i) if c.router else None
        subs.append(Subscriber(c.account, c.phones, address, "", ip, c.serving, i + 2))
    directory = Directory(with_cpes(topo, subs), subs)
    anchors = f'anchors = ["{ANCHOR_IP}"]' if world.external_anchor else ""
    text = textwrap.dedent(f"""
        [probe]
        interval = {world.interval}
        timeout = {world.timeout}
        down_after = {world.down_after}
        up_after = {world.up_after}
        [correlation]
        window = {world.window}
        infer_min_children = {world.infer_min_children}
        infer_ratio = {world.infer_ratio}
        resolve_hold = {world.resolve_hold}
        [vantage]
        {anchors}
        [messages]
        restored_for = {world.restored_for}
    """)
    return directory, config.parse(text, Path("truth.toml"))


def restarted(old: Monitor, cfg: config.Config, directory: Directory,
              clock: Callable[[], float]) -> Monitor:  # fmt: skip
    """A new monitor from what the old one stored, as Monitor.restore reads it back and
    hands to Monitor.resume: open incidents (id, kind, root, nodes, opened, when a
    recovering one's root answered, when it last reopened or failed again, when works
    that overran ended, when a root it moved up to failed: each from its latest event of
    that kind, `store._REOPENED`), their ETAs, loss histories, planned works,
    incidents resolved within restored_for."""
    new = Monitor(cfg, directory, Registry(), clock=clock)
    since = clock() - cfg.messages.restored_for
    topo = directory.topology.nodes
    found = Restored(
        incidents=[Incident(i.id, i.root, i.kind, i.inferred, i.opened_at, list(i.nodes),
                            recovering_since=i.recovering_since, reopened_at=i.reopened_at,
                            works_ended=i.works_ended, root_since=i.root_since)
                   for i in old.correlator.incidents.values()],
        next_id=old.correlator.next_id,
        eta=dict(old.eta),
        calls=dict(old.calls),
        maintenance=list(old.maintenance),
        next_maintenance=old.next_maintenance,
        histories=[(n, ns.n, ns.lost) for n, ns in old.correlator.states.items()
                   if n in topo and ns.n > 0],
        resolved=sorted(
            {i.id: i for i in old.recent.values() if (i.resolved_at or 0) > since}.values(),
            key=lambda i: (i.resolved_at or 0, i.id),
        ),
    )  # fmt: skip
    new.resume(found)
    return new


# -- running and judging ---------------------------------------------------------------


def ask(monitor: Monitor, directory: Directory, account: str, now: float, restored_for: float,
        memory: check.AnswerMemory) -> tuple[str, str, float | None]:  # fmt: skip
    """(status, root, eta) as /check answers it for a subscriber's account: through the
    function the HTTP handler calls, with the answers it remembers."""
    match = directory.account(account)
    answer = check.assess(monitor, directory, match, now, restored_for, memory)
    root = answer.incident.root if answer.incident is not None else ""
    return str(answer.status), root, answer.eta


def run(world: World) -> Outcome:
    directory, cfg = build(world)
    out = Outcome(world)
    oracle = Oracle(world)
    clock = {"now": START}
    monitor = Monitor(cfg, directory, Registry(), clock=lambda: clock["now"])
    net = _Net(directory.topology, monitor.correlator, interval=world.interval,
                 timeout=world.timeout, seed=world.seed, start=START, tick=TICK,
                 extra_targets=list(monitor.anchors))  # fmt: skip
    events: list[Event] = []
    current = {"monitor": monitor}

    def on_event(e: Event) -> None:
        clock["now"] = e.at
        events.append(e)
        current["monitor"].handle(e)

    net.on_event = on_event
    memory = check.AnswerMemory()  # what the HTTP runtime remembers between callers
    net.run_for(WARM)
    monitor.first_round_done = True
    t0 = net.now
    works = 0
    booked: dict[tuple[str, float], int] = {}  # (node, start) -> the works' id
    for step in sorted(world.steps, key=lambda s: s.at):
        net.run_until(t0 + step.at)
        clock["now"] = net.now
        monitor = current["monitor"]
        a = step.action
        if a is Action.FAIL and step.node in directory.topology:
            net.fail(step.node)
        elif a is Action.REPAIR and step.node in directory.topology:
            net.repair(step.node)
        elif a is Action.LOSS:
            net.default_loss = step.value
        elif a is Action.BLIND:
            net.uplink_down = True
        elif a is Action.SEE:
            net.uplink_down = False
        elif a is Action.WORKS and step.node in directory.topology:
            works += 1
            booked[(step.node, step.value)] = works
            monitor.add_maintenance(
                Maintenance(works, step.node, t0 + step.value, t0 + step.until, "works"), "noc"
            )
        elif a is Action.AMEND and (step.node, step.value) in booked:
            # As POST /api/v1/maintenance/{id} does: withdrawn (None) or a new end.
            ends = None if step.until <= step.at else t0 + step.until
            with contextlib.suppress(KeyError):  # works that ended already: 404
                monitor.end_maintenance(booked[(step.node, step.value)], ends, "noc")
        elif a is Action.RELOAD:
            # As the daemon's reload does: the files read again into a new directory, what
            # changed in the running topology and the subscribers below each node made
            # beside it, the config and the directory handed to the monitor.
            directory, cfg = build(world)
            topo = directory.topology
            derived = (change(monitor.correlator.topology, topo),
                       subscribers_below(topo, directory.counts))  # fmt: skip
            monitor.config = cfg
            monitor.set_directory(directory, *derived)
        elif a is Action.RESTART:
            monitor = restarted(monitor, cfg, directory, lambda: clock["now"])
            memory = check.AnswerMemory()  # a new process remembers nothing
            current["monitor"] = monitor
            net.correlator = monitor.correlator
            net.run_for(world.interval + world.timeout)
            clock["now"] = net.now
            monitor.first_round_done = True
        elif a is Action.CHECK:
            verdict = oracle.verdict(step.at)
            if verdict.settled:
                out.checks += 1
                _compare(out, world, monitor, memory, directory, verdict, step.at, net.now, t0)
    _judge_events(out, oracle, events, t0)
    return out


def _compare(out: Outcome, world: World, monitor: Monitor, memory: check.AnswerMemory,
             directory: Directory,
             verdict: Verdict, at: float, now: float, t0: float) -> None:  # fmt: skip
    said = out.disagreements
    for c in world.customers:
        expected = verdict.answers[c.account]
        status, root, eta = ask(monitor, directory, c.account, now, world.restored_for, memory)
        if status not in expected.statuses:
            want = "|".join(sorted(expected.statuses))
            if expected.roots:
                want += f" ({'|'.join(sorted(expected.roots))})"
            said.append(Disagreement(Kind.WRONG_STATUS, at, c.account, want,
                                     f"{status} ({root})" if root else status))  # fmt: skip
            continue
        if (
            expected.roots
            and status in ("outage", "maintenance")
            and expected.roots.get(root) != status
        ):
            roots = "|".join(sorted(expected.roots))
            said.append(Disagreement(Kind.WRONG_ROOT, at, c.account, roots, root or "none"))
            continue
        if status == "maintenance" and expected.etas:
            got = None if eta is None else eta - t0
            if got not in expected.etas:
                said.append(Disagreement(Kind.WRONG_ETA, at, c.account,
                                         f"{min(expected.etas):.1f}", _t(got)))  # fmt: skip
    if verdict.blind:
        return
    incidents = list(monitor.correlator.incidents.values())
    by_root: dict[str, list[Incident]] = {}
    for inc in incidents:
        by_root.setdefault(inc.root, []).append(inc)
    for root, label in sorted(verdict.roots.items()):
        found = [i for i in by_root.get(root, []) if i.recovering_since is None]
        if not found:
            said.append(Disagreement(Kind.MISSED_FAULT, at, root, f"an open {label} incident",
                                     "none"))  # fmt: skip
    for inc in incidents:
        if inc.root in verdict.roots and inc.recovering_since is None:
            continue
        if inc.root in verdict.roots:
            kind, why = Kind.STALE_INCIDENT, "open, not recovering"
        elif inc.root in verdict.cut:
            kind, why = Kind.SPLIT_FAULT, "part of the incident of a node above"
        elif inc.root in verdict.down:
            kind, why = Kind.WRONG_ROOT, "no incident of its own"
        elif inc.root in verdict.ever_down:
            kind, why = Kind.STALE_INCIDENT, "resolved (its fault has ended)"
        else:
            kind, why = Kind.FALSE_INCIDENT, "no incident (never down)"
        state = "recovering" if inc.recovering_since is not None else "open"
        said.append(Disagreement(kind, at, inc.root, why, f"incident {inc.id} {state}"))


def _t(at: float | None) -> str:
    return "none" if at is None else f"{at:.1f}"


def _judge_events(out: Outcome, oracle: Oracle, events: list[Event], t0: float) -> None:
    """Every incident opened or moved names a node that was down, and a root, lately; and
    every fault the monitor could see got its incident (the time it took is kept)."""
    firsts: dict[str, float] = {}
    for e in events:
        if e.kind not in ("opened", "reopened", "root_moved") or e.root is None:
            continue
        at = e.at - t0
        firsts.setdefault(e.root, at)
        near = oracle.moments_within(at - EXPLAIN, at)
        if not any(e.root in m.down or e.root in m.seen for m in near):
            out.disagreements.append(
                Disagreement(
                    Kind.FALSE_INCIDENT, at, e.root, "no incident (up)", f"{e.kind} {e.incident}"
                )
            )
        elif not any(e.root in m.roots for m in near):
            out.disagreements.append(Disagreement(
                Kind.SPLIT_FAULT, at, e.root, "part of the incident above it",
                f"{e.kind} {e.incident}"))  # fmt: skip
    # Detection: from a node becoming a visible root to the first incident naming it
    # (skipped when its incident is still open from before, as while a link flaps).
    naming = ("opened", "reopened", "root_moved", "refailed")
    previous: frozenset[str] = frozenset()
    for m in oracle.moments:
        if m.blind:
            previous = frozenset()
            continue
        for root in m.roots - previous:
            about = [e for e in events if e.root == root and e.kind in (*naming, "recovering")]
            before = [e for e in about if e.at - t0 < m.at]
            if before and before[-1].kind in naming:
                continue
            later = [e.at - t0 for e in about if e.kind in naming and e.at - t0 >= m.at]
            if later:
                out.detections.append((min(later) - m.at, root, m.at))
        previous = m.roots


# -- shrinking -------------------------------------------------------------------------


def shrink(world: World, keep: Callable[[Outcome], bool], budget: int = 400) -> World:
    """The smallest world (fewest steps, then devices and subscribers) for which `keep`
    still holds: steps removed in halves then one by one, subscribers and leaf devices
    removed, extra uplinks dropped."""
    tries = 0

    def holds(w: World) -> bool:
        nonlocal tries
        tries += 1
        try:
            return keep(run(w))
        except Exception:  # a world made inconsistent by removal: not a smaller example
            return False

    best = world
    changed = True
    while changed and tries < budget:
        changed = False
        for candidate in _smaller(best):
            if tries >= budget:
                break
            if holds(candidate):
                best = candidate
                changed = True
                break
    return best


def _smaller(w: World) -> list[World]:
    """Smaller worlds to try, the biggest cuts first."""
    out: list[World] = []
    for chunk in _halves(len(w.steps)):
        for i in range(0, len(w.steps), chunk):
            rest = w.steps[:i] + w.steps[i + chunk :]
            if any(s.action is Action.CHECK for s in rest):
                out.append(replace(w, steps=rest))
    for d in w.devices:
        if d.parents:
            out.append(_without(w, {d.id}))
    for chunk in _halves(len(w.customers)):
        for i in range(0, len(w.customers), chunk):
            out.append(replace(w, customers=w.customers[:i] + w.customers[i + chunk :]))
    for i, c in enumerate(w.customers):
        if c.router:
            plain = dataclasses.replace(c, router=False)
            out.append(replace(w, customers=(*w.customers[:i], plain, *w.customers[i + 1 :])))
    for i, d in enumerate(w.devices):
        if len(d.parents) > 1:
            one = dataclasses.replace(d, parents=d.parents[:1])
            out.append(replace(w, devices=(*w.devices[:i], one, *w.devices[i + 1 :])))
    return out


def _halves(n: int) -> list[int]:
    out = []
    chunk = n // 2
    while chunk >= 1:
        out.append(chunk)
        chunk //= 2
    return out


def _without(w: World, gone: set[str]) -> World:
    """The world without these devices and whatever hangs only from them."""
    gone = set(gone)
    devices: list[Device] = []
    for d in w.devices:  # parents come before their children
        if d.id in gone:
            continue
        parents = tuple(p for p in d.parents if p not in gone)
        if d.parents and not parents:
            gone.add(d.id)
            continue
        devices.append(dataclasses.replace(d, parents=parents))
    customers = tuple(c for c in w.customers if c.serving not in gone)
    names = {d.id for d in devices} | {c.router_id for c in customers if c.router}
    steps = tuple(s for s in w.steps if not s.node or s.node in names)
    return replace(w, devices=tuple(devices), customers=customers, steps=steps)
