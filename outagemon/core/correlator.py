"""From probe results to incidents: a pure state machine (no I/O, no clock).

Time is passed in; every decision can be replayed exactly in a test. The daemon feeds it
`observe()` for each probe result and `tick()` a few times a second, sends the probes it
asks for (`take_requests()`), and persists the events it returns.

Node state: hysteresis (`down_after` losses, adapted to the target's loss history so
random loss does not invent failures; `up_after` answers). Roots: failed nodes with a
surviving uplink; everything cut off behind a root is in the root's incident. Inferred
roots: a node whose children fail together. Incidents settle before they open (a
child's failure waits for fresh evidence about its ancestors), absorb incidents below a
new higher root, split when part stays down after the root recovers, resolve after the
root has been up `resolve_hold` seconds, and are not opened while the monitor is blind.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from outagemon.core.topology import Topology

# Chance per probe that random loss alone produces a false `down`: the streak of losses
# needed is chosen so that p ** streak stays below this (p: the target's loss estimate).
FALSE_DOWN_BOUND = 1e-7
MAX_STREAK = 15  # at most this many consecutive losses are ever required
HISTORY = 500.0  # probes the long loss estimate remembers (exponential decay)
SHORT_HISTORY = 20.0  # probes the degraded estimate remembers
DEGRADED_LOSS = 0.2  # short-term loss above this, while not down, is "degraded"
# Flapping, measured as Nagios and Icinga do (a weighted percent state change: 20 possible
# changes, newer ones weigh 1.2, the oldest 0.8), but over time rather than over checks,
# since our checks repeat every few seconds: the state changes of the last FLAP_PERIOD.
# It starts above 30 % (six changes in ten minutes) and stops below 25 %.
FLAP_PERIOD = 600.0
FLAP_HIGH = 30.0
FLAP_LOW = 25.0
# A root that fails again this soon after its incident resolved reopens that incident.
REOPEN_WITHIN = 600.0
# Random loss seen across the whole network (losses that turned out isolated), decaying
# over this many seconds: when loss starts everywhere at once, every target's history is
# still clean, and this is what stops a thousand coin flips from making one false outage.
NETWORK_LOSS_SECONDS = 10.0


class State(enum.Enum):
    UNKNOWN = "unknown"  # no result yet
    UP = "up"
    DOWN = "down"
    RECHECK = "recheck"  # was down; waits for a fresh probe (after a recovery or blindness)


@dataclass(frozen=True, slots=True)
class Settings:
    down_after: int = 3
    up_after: int = 2
    window: float = 30.0
    infer_min_children: int = 3
    infer_ratio: float = 0.8
    resolve_hold: float = 60.0
    timeout: float = 1.0  # the probe timeout: a loss seen at t was sent at t - timeout


@dataclass(slots=True)
class NodeState:
    state: State = State.UNKNOWN
    losses: int = 0  # consecutive
    answers: int = 0  # consecutive
    n: float = 0.0  # decayed count of results (long history)
    lost: float = 0.0  # decayed count of losses, excluding the current streak
    short_n: float = 0.0
    short_lost: float = 0.0
    changed_at: float = 0.0
    down_at: float = 0.0
    last_at: float = -math.inf  # time of the last result
    changes: deque[float] | None = None  # times of recent state changes, for flapping
    flapping: bool = False
    degraded: bool = False
    asked: bool = False  # ancestors were asked to be probed for this streak
    streak_at: float = 0.0  # when the current streak of losses began
    # Losses of probes sent before this time say nothing (they were in flight when a
    # parent came back, or the monitor regained its sight).
    stale_before: float = -math.inf

    def loss_estimate(self) -> float:
        """Pessimistic (upper) estimate of this target's random loss rate.

        Half a loss is assumed before any history, and one standard error added, so a new
        target needs a long streak (15) and a clean one with a few hundred answers needs
        `down_after`; one with 10 % loss needs about 8.
        """
        p = (self.lost + 0.5) / (self.n + 1)
        return min(0.95, p + math.sqrt(p * (1 - p) / (self.n + 1)))

    def record(self, lost: bool, times: int = 1) -> None:
        """Add results to the decayed loss history."""
        d = 1 - 1 / HISTORY
        for _ in range(times):
            self.n = self.n * d + 1
            self.lost = self.lost * d + lost


def needed_losses(ns: NodeState, down_after: int, network_loss: float = 0.0) -> int:
    """Consecutive losses that make this target `down`: more for a lossy or new one, and
    for every target while the network as a whole is losing packets at random."""
    p = max(ns.loss_estimate(), min(network_loss, 0.95))
    k = math.ceil(math.log(FALSE_DOWN_BOUND) / math.log(p))
    return max(down_after, min(k, MAX_STREAK))


def flap_percent(changes: Iterable[float], now: float) -> float:
    """Weighted percent state change over the last FLAP_PERIOD seconds (see FLAP_PERIOD)."""
    total = 0.0
    for at in changes:
        age = now - at
        if 0 <= age <= FLAP_PERIOD:
            total += 1.2 - 0.4 * age / FLAP_PERIOD
    return min(100.0, total / 20 * 100)


def update_flapping(ns: NodeState, now: float) -> bool:
    if ns.changes is None:
        return False
    percent = flap_percent(ns.changes, now)
    if ns.flapping and percent < FLAP_LOW:
        ns.flapping = False
    elif not ns.flapping and percent > FLAP_HIGH:
        ns.flapping = True
    return ns.flapping


class Kind(enum.Enum):
    OUTAGE = "outage"
    MAINTENANCE = "maintenance"


@dataclass(slots=True)
class Incident:
    id: int
    root: str
    kind: Kind
    inferred: bool
    opened_at: float
    nodes: list[str]  # root first
    state: str = "open"  # open, resolved, merged
    resolved_at: float | None = None
    merged_into: int | None = None
    recovering_since: float | None = None
    maintenance_until: float | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """Something to persist and show: `kind` names it, the rest is its detail."""

    kind: str  # opened, reopened, nodes, root_moved, merged, recovering, refailed,
    # resolved, kind_changed, split, blind, seeing
    at: float
    incident: int | None = None
    root: str | None = None
    nodes: tuple[str, ...] = ()
    detail: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Maintenance:
    id: int
    node: str
    starts_at: float
    ends_at: float
    reason: str = ""


class Correlator:
    def __init__(
        self,
        topology: Topology,
        settings: Settings,
        anchors: Iterable[str] = (),
        next_id: int = 1,
    ) -> None:
        self.topology = topology
        self.settings = settings
        # Only anchors that are probed can vouch for our view; with none, it is trusted.
        self.anchors: list[str] = list(anchors) or [
            r for r in topology.roots if topology.nodes[r].probed
        ]
        self.states: dict[str, NodeState] = {}
        self.inferred: dict[str, float] = {}  # node -> when it was inferred down
        self.incidents: dict[int, Incident] = {}  # open ones (and recovering)
        self.node_incident: dict[str, int] = {}  # node -> open incident that covers it
        self.next_id = next_id
        self.blind = False
        self.maintenance: list[Maintenance] = []
        self._scope: dict[str, Maintenance] = {}  # node -> active window covering it
        self._requests: list[str] = []
        self._events: list[Event] = []
        self._dirty = True
        self._changed: set[str] = set()  # nodes whose known state changed since last tick
        self._pending_since: dict[str, float] = {}  # root candidates waiting to settle
        self._resolved: dict[str, Incident] = {}  # root -> its last resolved incident
        self._down: set[str] = set()  # probed nodes in state DOWN
        self._cut_cache: set[str] = set()
        self._reconsider: set[str] = set()  # parents whose inference to evaluate again
        self._blocked: dict[str, tuple[str, float]] = {}  # pending root -> (ancestor, its last_at)
        self._added: set[str] = set()  # failed since the last decision
        self._removed = True  # something stopped failing: the next decision starts afresh
        # Bumped by every change a caller's answer could depend on (states of network
        # nodes, incidents, planned works, blindness; not routers' states, which /check
        # reads directly), so answers may be remembered until it moves.
        self.version = 0
        # (node, state, time) of each up/down change, kept only when someone stores them
        # (the daemon does, and empties the list every tick).
        self.record_transitions = False
        self.transitions: list[tuple[str, str, float]] = []
        self._roots_cache: list[str] = []
        self._net_results = 0.0
        self._net_lost = 0.0
        self._net_at = -math.inf

    # -- input -----------------------------------------------------------------------

    def observe(self, node: str, ok: bool, now: float) -> None:
        """One probe result for a node (or an anchor)."""
        ns = self.states.get(node)
        if ns is None:
            if node not in self.topology and node not in self.anchors:
                return  # a result for a node a reload removed
            ns = self.states[node] = NodeState(changed_at=now)
        if not ok and now - self.settings.timeout < ns.stale_before:
            return  # lost before the network changed under it: no evidence either way
        ns.last_at = now
        short = 1 - 1 / SHORT_HISTORY
        ns.short_n = ns.short_n * short + 1
        ns.short_lost = ns.short_lost * short + (0 if ok else 1)
        self._network(now, ns.losses if ok and ns.state is not State.DOWN else 0)
        if ok:
            if ns.state is not State.DOWN:
                # The streak that just ended was random loss after all: it joins the history.
                ns.record(True, ns.losses)
                if ns.losses and self.topology.nodes.get(node) is not None:
                    # It answers again: its children's changes, skipped while it was
                    # losing probes, may now make it inferred.
                    self._reconsider.add(node)
            ns.record(False)
            ns.losses = 0
            ns.answers += 1
            ns.asked = False
            if ns.state in (State.UNKNOWN, State.RECHECK) or (
                ns.state is State.DOWN and ns.answers >= self.settings.up_after
            ):
                self._set(node, ns, State.UP, now)
        else:
            ns.losses += 1
            ns.answers = 0
            if ns.losses == 1:
                ns.streak_at = now
            if ns.state is State.RECHECK:
                self._set(node, ns, State.DOWN, now)
            elif ns.state is not State.DOWN:
                if ns.losses >= needed_losses(ns, self.settings.down_after, self.network_loss):
                    self._set(node, ns, State.DOWN, now)
                else:
                    # Confirm quickly: probe it again, and its ancestors, now.
                    self._requests.append(node)
                    if not ns.asked:
                        ns.asked = True
                        self._ask_ancestors(node)
        ns.degraded = (
            ns.state is not State.DOWN
            and ns.short_n >= 10
            and ns.short_lost / ns.short_n >= DEGRADED_LOSS
        )

    def _network(self, now: float, random_losses: int) -> None:
        if now != self._net_at:
            decay = math.exp(-(now - self._net_at) / NETWORK_LOSS_SECONDS)
            self._net_results *= decay
            self._net_lost *= decay
            self._net_at = now
        self._net_results += 1 + random_losses
        self._net_lost += random_losses

    @property
    def network_loss(self) -> float:
        """The share of probes lost at random across the network lately (0 when none)."""
        if self._net_lost < 1:
            return 0.0
        return self._net_lost / self._net_results

    def _set(self, node: str, ns: NodeState, state: State, now: float) -> None:
        here = self.topology.nodes.get(node)  # None for an anchor outside the topology
        if here is None or here.kind != "cpe":  # a router's state is read, never cached
            self.version += 1
        if self.record_transitions:
            self.transitions.append((node, state.value, now))
        was_down = ns.state is State.DOWN
        if was_down or state is State.DOWN:
            if ns.changes is None:
                ns.changes = deque(maxlen=21)
            ns.changes.append(now)
            update_flapping(ns, now)
        if state is State.DOWN:
            ns.down_at = now
            self._fail(node)
        else:
            self._unfail(node)
        ns.state = state
        if was_down and state is State.UP:
            self._recheck_below(node, now)
        ns.changed_at = now
        if self._parent_may_infer(node):
            self._changed.add(node)
        # A node already cut off by a failure above it changes nothing when it, too, is
        # found down: the cut-off set and the incidents stay as they are. (During a core
        # failure that is every one of 100,000 nodes: without this, each tick would redo
        # the whole grouping.)
        if not (state is State.DOWN and node in self._cut_cache):
            self._dirty = True

    def _parent_may_infer(self, node: str) -> bool:
        """Whether a change of this node can change an inference above it: only a parent
        without an address, or one that answers, or one already inferred, is inferred."""
        topo = self.topology.nodes
        n = topo.get(node)
        if n is None:
            return False
        for p in n.parents:
            if not topo[p].probed or p in self.inferred:
                return True
            ps = self.states.get(p)
            if ps is None or (ps.state is State.UP and ps.losses == 0):
                return True
        return False

    # The failed set (nodes down by their own probes, or inferred down) changes only
    # through these four, so that a decision knows what was added since the last one.

    def _fail(self, node: str) -> None:
        if node in self.topology and node not in self._down:
            self._down.add(node)
            self._added.add(node)

    def _unfail(self, node: str) -> None:
        if node in self._down:
            self._down.discard(node)
            self._removed = True

    def _infer_down(self, node: str, since: float) -> None:
        self.version += 1
        self.inferred[node] = since
        self._added.add(node)

    def _infer_up(self, node: str) -> None:
        self.version += 1
        if self.inferred.pop(node, None) is not None:
            self._removed = True

    def _recheck_below(self, node: str, now: float) -> None:
        """A node came back: whatever below it looked down may only have been cut off.
        Each is probed again at once and counts as down only if a probe sent from now on
        is lost (a streak begun while cut off is forgotten), so a recovery raises no storm
        of child events, and a real second fault splits off."""
        if node not in self.topology:
            return
        for d in self.topology.descendants(node):
            ns = self.states.get(d)
            if ns is None:
                continue
            ns.stale_before = now
            if ns.state is not State.DOWN:
                ns.losses = 0
                ns.asked = False
            else:
                ns.state = State.RECHECK
                self.version += 1
                self._unfail(d)
                self._requests.append(d)
                self._dirty = True

    def _ask_ancestors(self, node: str) -> None:
        if node in self.topology:
            for a in self.topology.ancestors(node):
                if self.topology.nodes[a].probed:
                    self._requests.append(a)
        # The anchors too: a loss might be our own uplink's, and they must say so first.
        self._requests.extend(self.anchors)

    def take_requests(self) -> list[str]:
        """Nodes to probe now, ahead of their schedule (each once)."""
        out = list(dict.fromkeys(self._requests))
        self._requests.clear()
        return out

    def set_maintenance(self, windows: Iterable[Maintenance], now: float) -> None:
        self.version += 1
        self.maintenance = sorted(windows, key=lambda m: m.starts_at)
        self._refresh_scope(now)
        self._dirty = True

    def _refresh_scope(self, now: float) -> None:
        scope: dict[str, Maintenance] = {}
        for m in self.maintenance:
            if m.starts_at <= now < m.ends_at and m.node in self.topology:
                for n in (m.node, *self.topology.descendants(m.node)):
                    if n not in scope or scope[n].ends_at < m.ends_at:
                        scope[n] = m
        self._scope = scope

    def set_topology(self, topology: Topology) -> None:
        """A reloaded topology: nodes that still exist keep their state."""
        self.version += 1  # paths from callers to the core may have changed
        self.topology = topology
        for gone in [n for n in self.states if n not in topology and n not in self.anchors]:
            del self.states[gone]
        self.inferred = {n: t for n, t in self.inferred.items() if n in topology}
        self._down = {n for n in self._down if n in topology}
        self._removed = True
        self._changed.update(self.states)
        self._dirty = True

    def restore(self, incidents: Iterable[Incident], next_id: int) -> None:
        """Open incidents from the database after a restart: they continue with their ids.

        Their nodes are taken as down until a fresh probe says otherwise.
        """
        self.version += 1
        for inc in incidents:
            self.incidents[inc.id] = inc
            for n in inc.nodes:
                self.node_incident[n] = inc.id
                if n in self.topology and self.topology.nodes[n].probed:
                    ns = self.states.setdefault(n, NodeState(changed_at=inc.opened_at))
                    ns.state = State.RECHECK if n != inc.root else State.DOWN
                    ns.down_at = inc.opened_at
                    if ns.state is State.DOWN:
                        self._fail(n)
                    self._requests.append(n)
            root = self.topology.nodes.get(inc.root)
            if root is not None and not root.probed:
                self._infer_down(inc.root, inc.opened_at)
        self.next_id = max(self.next_id, next_id)
        self._dirty = True

    # -- the decision ----------------------------------------------------------------

    def tick(self, now: float) -> list[Event]:
        """Decide what the results so far mean; return the events since the last tick."""
        self._refresh_scope(now)
        self._vantage(now)
        if self._changed or self._reconsider:
            self._infer(now)
        self._decide(now)
        events, self._events = self._events, []
        if events:
            self.version += 1
        return events

    def _known(self, node: str) -> tuple[State, float]:
        """A node's state for its parent's inference, and since when."""
        ns = self.states.get(node)
        if self.topology.nodes[node].probed:
            if ns is None:
                return State.UNKNOWN, 0.0
            return ns.state, ns.down_at if ns.state is State.DOWN else ns.changed_at
        if node in self.inferred:
            return State.DOWN, self.inferred[node]
        return State.UP, 0.0

    def _infer(self, now: float) -> None:
        """Infer nodes down (or up again) from their children failing together."""
        s = self.settings
        nodes = self.topology.nodes
        queue = deque(dict.fromkeys(
            [*self._reconsider, *(p for n in self._changed if n in nodes for p in nodes[n].parents)]
        ))  # fmt: skip
        self._changed.clear()
        self._reconsider.clear()
        seen: set[str] = set()
        while queue:
            parent = queue.popleft()
            if parent in seen:
                continue
            seen.add(parent)
            own = self.states.get(parent) if nodes[parent].probed else None
            if own is not None and own.state is State.DOWN:
                # Down by its own probes: that is the better evidence, nothing to infer.
                if parent in self.inferred:
                    self._infer_up(parent)
                    self._dirty = True
                continue
            # A probed parent is inferred down only while it really answers; one that is
            # losing probes itself is about to be decided by its own evidence.
            answering = own is None or (own.state is State.UP and own.losses == 0)
            was = parent in self.inferred
            if not answering and not was:
                continue
            up = 0
            downs: list[float] = []
            for child in self.topology.nodes[parent].children:
                state, since = self._known(child)
                if state is State.UP:
                    up += 1
                elif state is State.DOWN:
                    downs.append(since)
            # Only children that failed together count; one long gone does not make a
            # cable cut, nor hide one.
            latest = max(downs, default=0.0)
            recent = [t for t in downs if t >= latest - s.window]
            base = up + len(recent)
            infer = (
                base >= s.infer_min_children
                and len(recent) / base >= s.infer_ratio
                and not self.blind
                and (answering or was)
            )
            if was and not infer:
                # Back up once most of the children that failed answer again.
                infer = base > 0 and len(recent) / base >= 0.5
            if infer and not was:
                self._infer_down(parent, max(recent))
            elif was and not infer:
                self._infer_up(parent)
                self._recheck_below(parent, now)
            if infer != was:
                self._dirty = True
                queue.extend(nodes[parent].parents)

    def _failed(self) -> set[str]:
        return self._down | self.inferred.keys()

    def _cut(self, failed: set[str], cut: set[str] | None = None) -> set[str]:
        """The failed nodes and all nodes whose every uplink leads into them; given the cut
        of a smaller failed set, only what the new failures add is walked."""
        if cut is None:
            cut = set(failed)
            queue = deque(failed)
        else:
            queue = deque(failed)  # each is expanded, even if already counted in the cut
            cut.update(queue)
        nodes = self.topology.nodes
        while queue:
            for child in nodes[queue.popleft()].children:
                if child in cut:
                    continue
                parents = nodes[child].parents
                # Most nodes have one uplink, and the node just taken from the queue is it.
                if len(parents) == 1 or all(p in cut for p in parents):
                    cut.add(child)
                    queue.append(child)
        return cut

    def _vantage(self, now: float) -> None:
        states = [self.states.get(a) for a in self.anchors]
        blind = bool(states) and all(ns is not None and ns.state is State.DOWN for ns in states)
        if blind and not self.blind:
            self.version += 1
            self.blind = True
            self._events.append(Event("blind", now, detail={"anchors": list(self.anchors)}))
        elif not blind and self.blind:
            self.version += 1
            self.blind = False
            # What failed while we could not see is not evidence: look again.
            for ns in self.states.values():
                ns.stale_before = now
                ns.losses = 0
            for node in list(self._down):
                if node not in self.anchors:
                    self.states[node].state = State.RECHECK
                    self._unfail(node)
                    self._requests.append(node)
            for node in list(self.inferred):
                self._infer_up(node)
            self._pending_since.clear()
            self._dirty = True
            self._events.append(Event("seeing", now))

    def _vantage_clean(self) -> bool:
        """At least one anchor answers with no loss streak: our own view can be trusted."""
        for a in self.anchors:
            ns = self.states.get(a)
            if ns is not None and ns.state is State.UP and ns.losses == 0:
                return True
        return False

    def _settled(self, root: str, since: float, now: float) -> bool:
        """Fresh evidence that nothing above this root failed too, or `window` has passed.

        Fresh means answered since the root's trouble began (its first lost probe, when
        its ancestors were asked to be probed too)."""
        if now - since >= self.settings.window:
            return True
        own = self.states.get(root)
        if own is not None and own.state is State.DOWN and own.streak_at:
            since = min(since, own.streak_at)
        blocked = self._blocked.get(root)
        if blocked is not None:
            # Nothing new about the ancestor that held it back last time: still held.
            ns = self.states.get(blocked[0])
            if ns is not None and ns.last_at == blocked[1]:
                return False
        for a in self.topology.ancestors(root):
            node = self.topology.nodes[a]
            if not node.probed:
                continue
            ns = self.states.get(a)
            if ns is None or ns.state is not State.UP or ns.losses > 0 or ns.last_at < since:
                self._blocked[root] = (a, ns.last_at if ns is not None else -math.inf)
                return False
        self._blocked.pop(root, None)
        return True

    def _decide(self, now: float) -> None:
        changed = self._dirty
        if self._dirty:
            # Work in proportion to what failed, never to the size of the network; and when
            # failures were only added, only to what they add.
            self._dirty = False
            nodes = self.topology.nodes
            added = [n for n in self._added if n in self._down or n in self.inferred]
            if self._removed:
                failed = self._failed()
                cut = self._cut(failed)
                candidates: Iterable[str] = failed
                keep: list[str] = []
            else:
                # Subscribers' routers are most of what fails in a mass outage: leaves of
                # kind cpe cut off nothing and are never roots, so they only join the cut.
                inner = [n for n in added if nodes[n].children or nodes[n].kind != "cpe"]
                cut = self._cut_cache
                cut.update(added)
                cut = self._cut(set(inner), cut) if inner else cut
                added = inner
                # Old roots stay roots unless a new failure could be above them (a node with
                # children); routers and other leaves explain nothing.
                old = self._roots_cache if any(nodes[n].children for n in added) else []
                if not old:
                    candidates = added
                    keep = self._roots_cache
                else:
                    candidates = [*old, *added]
                    keep = []
            self._added = set()
            self._removed = False
            self._cut_cache = cut
            self._roots_cache = keep + [
                n for n in dict.fromkeys(candidates)
                if nodes[n].kind != "cpe"
                and not (nodes[n].parents and all(p in cut for p in nodes[n].parents))
            ]  # fmt: skip
        cut, roots = self._cut_cache, self._roots_cache
        opened = False
        by_root = {inc.root: inc for inc in self.incidents.values()}
        can_open = not self.blind and self._vantage_clean()
        active: list[Incident] = []
        for root in sorted(roots, key=lambda r: (r not in by_root, r)):
            inc = by_root.get(root)
            if inc is None:
                since = self._pending_since.setdefault(root, self._failed_since(root))
                if not can_open or not self._settled(root, since, now):
                    continue
                inc = self._open(root, cut, by_root, now)
                by_root[root] = inc
                opened = True
            self._pending_since.pop(root, None)
            active.append(inc)
            if inc.recovering_since is not None:
                inc.recovering_since = None
                self._events.append(Event("refailed", now, inc.id, root))
        for gone in [r for r in self._pending_since if r not in roots]:
            del self._pending_since[gone]
            self._blocked.pop(gone, None)
        if opened or (changed and active):
            self._assign(active, cut, now)
        self._recover(set(roots), cut, now)
        self._maintenance_end(now)

    def _failed_since(self, root: str) -> float:
        if root in self.inferred:
            return self.inferred[root]
        ns = self.states.get(root)
        return ns.down_at if ns is not None else 0.0

    def _open(self, root: str, cut: set[str], by_root: dict[str, Incident], now: float) -> Incident:
        # Incidents whose roots this new root now explains (they are cut off, and it is
        # above them); found through their ancestors, which are few, not its descendants.
        absorbed = sorted(
            (inc for r, inc in by_root.items()
             if r != root and r in cut and r in self.topology
             and root in self.topology.ancestors(r)),
            key=lambda i: i.id,
        )  # fmt: skip
        window = self._scope.get(root)
        kind = Kind.MAINTENANCE if window is not None else Kind.OUTAGE
        previous = self._resolved.pop(root, None)
        if (
            not absorbed
            and previous is not None
            and now - (previous.resolved_at or 0) <= REOPEN_WITHIN
        ):
            # The same fault again, soon: the same incident, so callers and tickets keep
            # the id they have (a flapping link is one incident, not one an hour).
            previous.state = "open"
            previous.resolved_at = None
            previous.recovering_since = None
            self.incidents[previous.id] = previous
            self._events.append(Event("reopened", now, previous.id, root))
            return previous
        if absorbed:
            # The oldest incident below survives, re-rooted: callers keep the id they heard.
            inc = absorbed[0]
            old_root = inc.root
            del by_root[old_root]
            inc.root = root
            inc.inferred = root in self.inferred
            inc.recovering_since = None
            self._events.append(
                Event("root_moved", now, inc.id, root,
                      detail={"from": old_root, "absorbed": [i.id for i in absorbed[1:]]})
            )  # fmt: skip
            for other in absorbed[1:]:
                del by_root[other.root]
                other.state = "merged"
                other.merged_into = inc.id
                other.resolved_at = now
                del self.incidents[other.id]
                self._events.append(Event("merged", now, other.id, other.root,
                                          detail={"into": inc.id}))  # fmt: skip
            return inc
        inc = Incident(
            id=self.next_id,
            root=root,
            kind=kind,
            inferred=root in self.inferred,
            opened_at=self._failed_since(root) or now,
            nodes=[root],
            maintenance_until=window.ends_at if window else None,
        )
        self.next_id += 1
        self.incidents[inc.id] = inc
        recovering = [i for i in self.incidents.values() if i.recovering_since is not None]
        split_from = next((i.id for i in recovering if root in i.nodes), None)
        detail: dict[str, object] = {"inferred": inc.inferred, "kind": kind.value}
        if split_from is not None:
            detail["split_from"] = split_from
            self._events.append(Event("split", now, split_from, root, detail={"new": inc.id}))
        self._events.append(Event("opened", now, inc.id, root, detail=detail))
        return inc

    def _assign(self, active: list[Incident], cut: set[str], now: float) -> None:
        """Every cut-off node joins the incident of the root above it (the oldest, if two)."""
        nodes = self.topology.nodes
        owner: dict[str, int] = {}
        roots = {inc.root for inc in active}
        for inc in sorted(active, key=lambda i: i.id):
            owner.setdefault(inc.root, inc.id)
            members = [inc.root]
            queue = deque(members)
            while queue:
                for child in nodes[queue.popleft()].children:
                    if child in cut and child not in owner and child not in roots:
                        owner[child] = inc.id
                        members.append(child)
                        queue.append(child)
            old = inc.nodes
            # Lengths first: comparing as sets is needed only when they are equal.
            if len(members) != len(old) or members[0] != old[0] or set(members) != set(old):
                inc.nodes = members  # root first, then nearest first
                added = max(0, len(members) - len(old))
                self._events.append(Event("nodes", now, inc.id, inc.root, tuple(members),
                                          detail={"added": added}))  # fmt: skip
        # Recovering incidents keep their nodes (for `restored` answers) but own none.
        self.node_incident = owner
        for inc in self.incidents.values():
            if inc.recovering_since is not None:
                for n in inc.nodes:
                    self.node_incident.setdefault(n, inc.id)

    def _recover(self, roots: set[str], cut: set[str], now: float) -> None:
        hold = self.settings.resolve_hold
        for inc in list(self.incidents.values()):
            if inc.root in roots:
                continue
            if inc.root in cut:
                continue  # explained by a higher root that has not settled yet: wait
            ns = self.states.get(inc.root)
            if inc.recovering_since is None:
                inc.recovering_since = now
                for n in inc.nodes:  # callers behind it now hear "restored"
                    self.node_incident.setdefault(n, inc.id)
                self._events.append(Event("recovering", now, inc.id, inc.root))
                continue
            flapping = ns is not None and update_flapping(ns, now)
            if now - inc.recovering_since >= hold and not flapping:
                inc.state = "resolved"
                inc.resolved_at = now
                del self.incidents[inc.id]
                self._resolved[inc.root] = inc
                self._events.append(Event("resolved", now, inc.id, inc.root, tuple(inc.nodes)))

    def _maintenance_end(self, now: float) -> None:
        hold = self.settings.resolve_hold
        for inc in self.incidents.values():
            if inc.kind is Kind.MAINTENANCE and inc.maintenance_until is not None:
                window = self._scope.get(inc.root)
                if window is not None:
                    if inc.maintenance_until != window.ends_at:  # the works were extended
                        inc.maintenance_until = window.ends_at
                        self.version += 1
                elif now >= inc.maintenance_until + hold and inc.recovering_since is None:
                    inc.kind = Kind.OUTAGE
                    self._events.append(
                        Event("kind_changed", now, inc.id, inc.root,
                              detail={"from": "maintenance", "to": "outage",
                                      "works_ended": inc.maintenance_until})
                    )  # fmt: skip

    # -- queries for the API and the page --------------------------------------------

    def incident_for(self, node: str) -> Incident | None:
        iid = self.node_incident.get(node)
        return self.incidents.get(iid) if iid is not None else None

    def state_of(self, node: str) -> State:
        ns = self.states.get(node)
        return ns.state if ns is not None else State.UNKNOWN
